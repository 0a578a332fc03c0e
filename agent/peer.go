package agent

import (
	"context"
	"errors"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/session"
)

// peerService is the agent as other agents see it.
type peerService struct{ a *Agent }

// Accept installs the server half of a session a peer's client asks for.
// Nothing in the request is trusted: the client must be an endpoint of the
// tenant living on the calling server, the server workload must be bound
// here, and policy must allow it — checked here, again.
func (p peerService) Accept(ctx context.Context, req api.AcceptRequest) error {
	a := p.a
	t := req.Tuple
	switch {
	case t.Proto != session.TCP && t.Proto != session.UDP && t.Proto != session.ICMP:
		return api.Errorf(api.CodeInvalid, "protocol %s has no sessions", t.Proto)
	case !t.Client.Is4() || !t.Server.Is4():
		return api.Errorf(api.CodeInvalid, "session addresses must be IPv4")
	case !a.cfg.KeyRange.Contains(req.Key):
		return api.Errorf(api.CodeInvalid, "key %d is outside this server's key range %s", req.Key, a.cfg.KeyRange)
	case req.From == a.cfg.Name:
		return api.Errorf(api.CodeInvalid, "a server does not make sessions with itself")
	}
	if a.cache == nil {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	peer, err := a.cache.LookupServer(ctx, req.From)
	if err != nil {
		return apiError(err)
	}
	client, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Client)
	if err != nil {
		return apiError(err)
	}
	if client.Server != req.From {
		return api.Errorf(api.CodeDenied, "%s (%s) lives on %s, not on %s", client.Ref(), t.Client, client.Server, req.From)
	}
	a.mu.Lock()
	sl := a.byAddr[addrKey{t.Tenant, t.Server}]
	a.mu.Unlock()
	if sl == nil {
		return api.Errorf(api.CodeNotFound, "no endpoint %s of tenant %s is bound on %s", t.Server, t.Tenant, a.cfg.Name)
	}
	if v, err := a.decide(ctx, subjectOf(client), sl.subject(), t); err != nil {
		return apiError(err)
	} else if !v.Allow {
		return api.Errorf(api.CodeDenied, "policy: %s", v.Reason)
	}
	hop, err := a.nextHop(peer)
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "%v", err)
	}
	s := session.Session{
		Tuple: t, Role: session.RoleServer, Key: req.Key, Zone: sl.zone,
		Local:  sl.endpoint(),
		Remote: session.Endpoint{IP: t.Client},
		Peer:   session.Peer{Name: peer.Name, IP: peer.DataIP, NextHop: hop},
	}
	e := &entry{s: s, state: establishing, created: time.Now(), peerName: peer.Name, remoteName: client.Name}

	a.mu.Lock()
	if old := a.sessions[t]; old != nil && old.reopening && old.state == establishing {
		// The answer to our own Reopen. The held reply packets wait until
		// the client's half exists too: reopenSession releases them when
		// the Reopen call returns.
		old.s, old.peerName, old.remoteName = s, e.peerName, e.remoteName
		old.waiting, old.held = old.held, nil
		e = old
	} else if old != nil {
		if old.state == established && old.s.Role == session.RoleServer && old.s.Key == req.Key && old.s.Peer.IP == peer.DataIP {
			a.mu.Unlock()
			return nil // a retry of a setup we already completed
		}
		a.mu.Unlock()
		// The client's agent lost the old session (restart without its
		// flows); ours is stale.
		a.teardown(ctx, old, "replaced by a new setup", false)
		a.mu.Lock()
	}
	if other := a.byWire[e.wire()]; other != nil {
		a.mu.Unlock()
		return api.Errorf(api.CodeConflict, "key %d of %s from %s is in use by %s", req.Key, t.Proto, req.From, other.s.Tuple)
	}
	a.sessions[t] = e
	a.byWire[e.wire()] = e
	a.mu.Unlock()

	if err := a.installHalf(ctx, e); err != nil {
		a.mu.Lock()
		delete(a.sessions, t)
		delete(a.byWire, e.wire())
		a.mu.Unlock()
		_ = a.removeHalf(context.Background(), s)
		return api.Errorf(api.CodeUnavailable, "installing flows: %v", err)
	}
	a.established(e)
	return nil
}

// Reopen sets up, as its client's agent, a session that the server's end
// saw answered after it idled out. Everything is checked as for a new
// session: the caller must host the server workload, and policy must allow
// the client to reach it now.
func (p peerService) Reopen(ctx context.Context, req api.ReopenRequest) error {
	a := p.a
	t := req.Tuple
	if !t.Proto.HasPorts() {
		return api.Errorf(api.CodeInvalid, "only tcp and udp sessions are reopened")
	}
	if a.cache == nil {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	srv, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Server)
	if err != nil {
		return apiError(err)
	}
	if srv.Server != req.From {
		return api.Errorf(api.CodeDenied, "%s (%s) lives on %s, not on %s", srv.Ref(), t.Server, srv.Server, req.From)
	}
	a.mu.Lock()
	l := a.byAddr[addrKey{t.Tenant, t.Client}]
	var e *entry
	if l != nil && a.sessions[t] == nil {
		e = &entry{s: session.Session{Tuple: t, Local: l.endpoint()}, state: establishing, heldPort: l.ofport, created: time.Now()}
		a.sessions[t] = e
	}
	a.mu.Unlock()
	switch {
	case l == nil:
		return api.Errorf(api.CodeNotFound, "no endpoint %s of tenant %s is bound on %s", t.Client, t.Tenant, a.cfg.Name)
	case e == nil:
		return nil // a session for it exists or is being made already
	}
	if err := a.agree(ctx, e, l); err != nil {
		a.abandon(e, l, err)
		if errors.Is(err, errRefused) {
			return api.Errorf(api.CodeDenied, "%v", err)
		}
		return api.Errorf(api.CodeUnavailable, "%v", err)
	}
	a.established(e)
	return nil
}

// Release removes our half of a session at the peer's request and answers
// after the barrier, so the peer knows both halves are gone.
func (p peerService) Release(ctx context.Context, req api.ReleaseRequest) error {
	a := p.a
	if a.cache == nil {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	peer, err := a.cache.LookupServer(ctx, req.From)
	if err != nil && !errors.Is(err, directory.ErrNotFound) {
		return apiError(err)
	}
	mine := session.RoleServer
	if req.Role == session.RoleServer {
		mine = session.RoleClient
	}
	a.mu.Lock()
	e := a.byWire[wireKey{peer: peer.DataIP, proto: req.Tuple.Proto, key: req.Key, role: mine}]
	a.mu.Unlock()
	if e == nil || e.s.Tuple != req.Tuple {
		return nil // already gone: releasing is idempotent
	}
	a.teardown(ctx, e, "peer: "+req.Reason, false)
	return nil
}

// releasePeer asks the peer to drop its half of e.
func (a *Agent) releasePeer(e *entry, reason string) {
	a.mu.Lock()
	s, peerName := e.s, e.peerName
	a.mu.Unlock()
	if s.Role == session.RoleLocal || a.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
	defer cancel()
	srv, err := a.cache.LookupServer(ctx, peerName)
	if err != nil {
		a.log.Warn("cannot find the peer to release a session", "session", s.Tuple.String(), "peer", peerName, "err", err)
		return
	}
	pc, err := a.peer(srv)
	if err == nil {
		err = pc.Release(ctx, api.ReleaseRequest{From: a.cfg.Name, Role: s.Role, Tuple: s.Tuple, Key: s.Key, Reason: reason})
	}
	if err != nil {
		a.log.Warn("peer did not release its half", "session", s.Tuple.String(), "peer", peerName, "err", err)
	}
}
