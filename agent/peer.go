package agent

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/session"
)

// peerService is the agent as other agents see it. Every method gets the
// caller as its certificate names it; nothing in a request body is taken
// on its word.
type peerService struct{ a *Agent }

// errNotAllowed is what a peer hears when what it names does not exist or
// is not its to name. Telling the two apart would let one server map other
// tenants' placement (audit L3); the reason goes to the log.
var errNotAllowed = api.Errorf(api.CodeDenied, "not found or not allowed")

// notAllowed logs why a peer's call was refused and answers errNotAllowed.
func (a *Agent) notAllowed(op, caller string, t session.Tuple, why string) error {
	a.log.Info("peer call refused", "op", op, "caller", caller, "session", t.String(), "why", why)
	return errNotAllowed
}

// lookupFailed turns a directory failure during a peer call into an
// answer: a missing record is not the caller's business (errNotAllowed),
// anything else means retry later.
func (a *Agent) lookupFailed(op, caller string, t session.Tuple, what string, err error) error {
	if errors.Is(err, directory.ErrNotFound) {
		return a.notAllowed(op, caller, t, what+": "+err.Error())
	}
	a.log.Warn("peer call: directory lookup failed", "op", op, "caller", caller, "session", t.String(), "lookup", what, "err", err)
	return api.Errorf(api.CodeUnavailable, "the directory cannot answer now; retry")
}

// Accept installs the server half of a session the caller's client asks
// for. The client must be an endpoint of the tenant living on the caller,
// the server workload must be bound here, and policy must allow it —
// checked here, again. A session that exists for the tuple is replaced
// only when the caller is that session's own peer.
func (p peerService) Accept(ctx context.Context, caller string, req api.AcceptRequest) error {
	a := p.a
	t := req.Tuple
	switch {
	case t.Proto != session.TCP && t.Proto != session.UDP && t.Proto != session.ICMP:
		return api.Errorf(api.CodeInvalid, "protocol %s has no sessions", t.Proto)
	case !t.Client.Is4() || !t.Server.Is4():
		return api.Errorf(api.CodeInvalid, "session addresses must be IPv4")
	case !a.cfg.KeyRange.Contains(req.Key):
		return api.Errorf(api.CodeInvalid, "key %d is outside this server's key range %s", req.Key, a.cfg.KeyRange)
	case caller == a.cfg.Name:
		return api.Errorf(api.CodeInvalid, "a server does not make sessions with itself")
	}
	if !a.dirUp.Load() {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	peer, err := a.cache.LookupServer(ctx, caller)
	if err != nil {
		return a.lookupFailed("accept", caller, t, "the caller's server record", err)
	}
	client, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Client)
	if err != nil {
		return a.lookupFailed("accept", caller, t, "the client endpoint", err)
	}
	if client.Server != caller {
		return a.notAllowed("accept", caller, t, client.Ref()+" lives on "+client.Server)
	}
	a.mu.Lock()
	sl := a.byAddr[addrKey{t.Tenant, t.Server}]
	a.mu.Unlock()
	if sl == nil {
		return a.notAllowed("accept", caller, t, "no such endpoint is bound here")
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
	old := a.sessions[t]
	switch {
	case old == nil:
	case old.reopening && old.state == establishing:
		// The answer to our own Reopen, from the client's server (checked
		// above). The held reply packets wait until the client's half
		// exists too: reopenSession releases them when the Reopen call
		// returns.
		old.s, old.peerName, old.remoteName = s, e.peerName, e.remoteName
		old.waiting, old.held = old.held, nil
		e = old
	case !mayReplace(old, caller):
		// Live or being made, and not the caller's: no one's word but its
		// own peer's ends it.
		a.mu.Unlock()
		a.log.Info("peer call refused", "op", "accept", "caller", caller, "session", t.String(),
			"why", "a session for the tuple exists with peer "+old.peerName+" ("+old.state.String()+")")
		return api.Errorf(api.CodeConflict, "a session for this tuple exists; it ends first")
	case old.state == established && old.s.Key == req.Key && old.s.Peer.IP == peer.DataIP:
		a.mu.Unlock()
		return nil // a retry of a setup we already completed
	default:
		a.mu.Unlock()
		// The session's own peer sets it up anew: its agent lost the old
		// session (restart without its flows), so ours is stale.
		a.teardown(ctx, old, "replaced by a new setup from its peer", false)
		a.mu.Lock()
	}
	if other := a.byWire[e.wire()]; other != nil && other != e {
		a.mu.Unlock()
		return api.Errorf(api.CodeConflict, "key %d of %s is in use by another session with %s", req.Key, t.Proto, caller)
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

// mayReplace reports whether caller may replace the session old with a new
// setup: only old's own peer may, and only a server half it agreed.
// Called with Agent.mu held.
func mayReplace(old *entry, caller string) bool {
	return old.s.Role == session.RoleServer && old.peerName != "" && old.peerName == caller
}

// Reopen sets up, as its client's agent, a session that the server's end
// saw answered after it idled out. Only the server workload's own server
// may ask, and everything is checked as for a new session: policy must
// allow the client to reach the server now.
func (p peerService) Reopen(ctx context.Context, caller string, req api.ReopenRequest) error {
	a := p.a
	t := req.Tuple
	switch {
	case !t.Proto.HasPorts():
		return api.Errorf(api.CodeInvalid, "only tcp and udp sessions are reopened")
	case !t.Client.Is4() || !t.Server.Is4():
		return api.Errorf(api.CodeInvalid, "session addresses must be IPv4")
	case caller == a.cfg.Name:
		return api.Errorf(api.CodeInvalid, "a server does not make sessions with itself")
	}
	if !a.dirUp.Load() {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	srv, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Server)
	if err != nil {
		return a.lookupFailed("reopen", caller, t, "the server endpoint", err)
	}
	if srv.Server != caller {
		return a.notAllowed("reopen", caller, t, srv.Ref()+" lives on "+srv.Server)
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
		return a.notAllowed("reopen", caller, t, "no such client endpoint is bound here")
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

// Release removes our half of a session at its peer's request and answers
// after the barrier, so the peer knows both halves are gone. Only the
// session's own peer may release it, and tuple, key and roles must all
// match; anything else is ignored like a session already gone, so that
// releasing stays idempotent and tells a guesser nothing.
func (p peerService) Release(ctx context.Context, caller string, req api.ReleaseRequest) error {
	a := p.a
	var mine session.Role
	switch req.Role {
	case session.RoleClient:
		mine = session.RoleServer
	case session.RoleServer:
		mine = session.RoleClient
	default:
		return api.Errorf(api.CodeInvalid, "a release comes from a session's client or server, not %s", req.Role)
	}
	a.mu.Lock()
	e := a.sessions[req.Tuple]
	var match, unnamed bool
	peerIP := e.peerIPLocked()
	if e != nil && e.s.Role == mine && e.s.Key == req.Key {
		match, unnamed = e.peerName == caller, e.peerName == ""
	}
	a.mu.Unlock()
	if unnamed {
		// An adopted session whose peer's name was not known: the caller
		// must at least own the peer's data address.
		match = a.callerHasAddr(ctx, caller, peerIP)
	}
	if !match {
		if e != nil {
			a.log.Info("peer call ignored", "op", "release", "caller", caller, "session", req.Tuple.String(),
				"key", req.Key, "why", "it does not match the session's peer, key or role")
		}
		return nil
	}
	a.teardown(ctx, e, "peer: "+req.Reason, false)
	return nil
}

// peerIPLocked is the session's peer address, or none; Agent.mu held.
func (e *entry) peerIPLocked() netip.Addr {
	if e == nil {
		return netip.Addr{}
	}
	return e.s.Peer.IP
}

// callerHasAddr reports whether the directory puts server caller at ip.
func (a *Agent) callerHasAddr(ctx context.Context, caller string, ip netip.Addr) bool {
	if !a.dirUp.Load() || !ip.IsValid() {
		return false
	}
	srv, err := a.cache.LookupServer(ctx, caller)
	return err == nil && srv.DataIP == ip
}

// releasePeer asks the peer to drop its half of e.
func (a *Agent) releasePeer(e *entry, reason string) {
	a.mu.Lock()
	s, peerName := e.s, e.peerName
	a.mu.Unlock()
	if s.Role == session.RoleLocal || !a.dirUp.Load() {
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
