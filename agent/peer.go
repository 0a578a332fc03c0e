package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
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
func (p peerService) Accept(ctx context.Context, caller string, req api.AcceptRequest) (api.AcceptReply, error) {
	a := p.a
	received := time.Now()
	t := req.Tuple
	switch {
	case t.Proto != session.TCP && t.Proto != session.UDP && t.Proto != session.ICMP:
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "protocol %s has no sessions", t.Proto)
	case !t.Client.Is4() || !t.Server.Is4():
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "session addresses must be IPv4")
	case !a.cfg.KeyRange.Contains(req.Key):
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "key %d is outside this server's key range %s", req.Key, a.cfg.KeyRange)
	case caller == a.cfg.Name:
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "a server does not make sessions with itself")
	case len(req.Frames) > 0 && !t.Proto.HasPorts():
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "only tcp and udp sessions pass their first packets")
	case len(req.Frames) > api.MaxAcceptFrames || framesSize(req.Frames) > api.MaxAcceptFrameBytes:
		return api.AcceptReply{}, api.Errorf(api.CodeInvalid, "at most %d first packets of %d bytes in all", api.MaxAcceptFrames, api.MaxAcceptFrameBytes)
	}
	if !a.dirUp.Load() {
		return api.AcceptReply{}, api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	peer, err := a.cache.LookupServer(ctx, caller)
	switch {
	case errors.Is(err, directory.ErrNotFound):
		// The caller proved who it is, but has no record now: its lease
		// ran out (a directory outage outlives leases) and it has not
		// registered again yet. That passes: "not found" would make its
		// agent take live sessions for gone.
		a.logLimited(slog.LevelInfo, "unregistered/"+caller, "peer call deferred: the caller is not registered now", "op", "accept", "caller", caller, "session", t.String())
		return api.AcceptReply{}, api.Errorf(api.CodeUnavailable, "server %s is not registered in the directory now; retry once it is", caller)
	case err != nil:
		return api.AcceptReply{}, a.lookupFailed("accept", caller, t, "the caller's server record", err)
	}
	client, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Client)
	if err != nil {
		return api.AcceptReply{}, a.lookupFailed("accept", caller, t, "the client endpoint", err)
	}
	if client.Server != caller {
		return api.AcceptReply{}, a.notAllowed("accept", caller, t, client.Ref()+" lives on "+client.Server)
	}
	a.mu.Lock()
	sl := a.byAddr[addrKey{t.Tenant, t.Server}]
	a.mu.Unlock()
	if sl == nil {
		return api.AcceptReply{}, a.notAllowed("accept", caller, t, "no such endpoint is bound here")
	}
	if v, err := a.decide(ctx, subjectOf(client), sl.subject(), t); err != nil {
		return api.AcceptReply{}, apiError(err)
	} else if !v.Allow {
		return api.AcceptReply{}, api.Errorf(api.CodeDenied, "policy: %s", v.Reason)
	}
	hop, err := a.nextHop(peer)
	if err != nil {
		return api.AcceptReply{}, api.Errorf(api.CodeUnavailable, "%v", err)
	}
	s := session.Session{
		Tuple: t, Role: session.RoleServer, Key: req.Key, Zone: sl.zone,
		Local:  sl.endpoint(),
		Remote: session.Endpoint{IP: t.Client},
		Peer:   session.Peer{Name: peer.Name, IP: peer.DataIP, NextHop: hop},
	}
	r := a.request(engine.AcceptRequest{Caller: caller, Session: s, RemoteName: client.Name, Received: received, Frames: req.Frames})
	return api.AcceptReply{Delivered: r.Delivered}, engineError(r.Err)
}

func framesSize(fs [][]byte) int {
	n := 0
	for _, f := range fs {
		n += len(f)
	}
	return n
}

// engineError is the peer API's error for the engine's answer.
func engineError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, engine.ErrConflict):
		return api.Errorf(api.CodeConflict, "%v", err)
	case errors.Is(err, engine.ErrTooMany):
		return api.Errorf(api.CodeDenied, "%v", err)
	}
	return api.Errorf(api.CodeUnavailable, "%v", err)
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
	a.mu.Unlock()
	if l == nil {
		return a.notAllowed("reopen", caller, t, "no such client endpoint is bound here")
	}
	// The setup runs as for a packet of the client, checks and all; the
	// caller hears whether it was started.
	return engineError(a.step(engine.ReopenRequest{Caller: caller, From: l.engineWorkload(), Tuple: t}))
}

// Release removes our half of a session at its peer's request and answers
// after the barrier, so the peer knows both halves are gone. Only the
// session's own peer may release it, and tuple, key and roles must all
// match; anything else is ignored like a session already gone, so that
// releasing stays idempotent and tells a guesser nothing.
func (p peerService) Release(ctx context.Context, caller string, req api.ReleaseRequest) error {
	a := p.a
	if req.Role != session.RoleClient && req.Role != session.RoleServer {
		return api.Errorf(api.CodeInvalid, "a release comes from a session's client or server, not %s", req.Role)
	}
	a.mu.Lock()
	v, ok := a.eng.Lookup(req.Tuple)
	a.mu.Unlock()
	var callerIP netip.Addr
	if ok && v.PeerName == "" {
		// An adopted session whose peer's name was not known: the caller
		// must at least own the peer's data address.
		callerIP = a.callerAddr(ctx, caller)
	}
	return engineError(a.step(engine.ReleaseRequest{Caller: caller, CallerIP: callerIP, Tuple: req.Tuple, Key: req.Key, Role: req.Role, Reason: req.Reason}))
}

// UnknownKey: the caller says our packets with a key reach it and no
// session there takes them. If a session of ours with that key has the
// caller for its peer, it is checked with the caller (by repeating its
// Accept), in the background: the caller hears nothing of our sessions.
func (p peerService) UnknownKey(ctx context.Context, caller string, req api.UnknownKeyRequest) error {
	a := p.a
	switch {
	case !req.Proto.HasPorts():
		return api.Errorf(api.CodeInvalid, "only tcp and udp sessions have keys")
	case caller == a.cfg.Name:
		return api.Errorf(api.CodeInvalid, "a server does not make sessions with itself")
	}
	ip := a.callerAddr(ctx, caller)
	if !ip.IsValid() {
		return api.Errorf(api.CodeUnavailable, "server %s has no record in the directory now; retry once it has", caller)
	}
	a.goSafe("unknown key", func() {
		_ = a.step(engine.UnknownKey{Caller: caller, CallerIP: ip, Proto: req.Proto, Key: req.Key})
	})
	return nil
}

// callerAddr is the data address the directory gives server caller.
func (a *Agent) callerAddr(ctx context.Context, caller string) netip.Addr {
	if !a.dirUp.Load() {
		return netip.Addr{}
	}
	srv, err := a.cache.LookupServer(ctx, caller)
	if err != nil {
		return netip.Addr{}
	}
	return srv.DataIP
}
