package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/session"
)

// The agent's sessions live in a.eng, the session engine (package
// nvi/engine): the agent feeds it events under a.mu and carries out the
// effects it returns, outside the lock. A Resolve starts a session's setup
// goroutine, which carries out the rest of the setup's effects in order
// (but for the client's way back, which waits for its barrier in a
// goroutine beside the Accept); everything else is carried out by the
// goroutine that fed the event (the peer API's handler, the expiry loop,
// the directory watch).

// step feeds ev to the engine and carries out its effects. It returns the
// answer the effects gave to a peer's request or an adoption, if any.
func (a *Agent) step(ev engine.Event) error { return a.request(ev).Err }

// request is step for a peer's request: the whole answer.
func (a *Agent) request(ev engine.Event) engine.Reply {
	if r := a.feed(ev); r != nil {
		return *r
	}
	return engine.Reply{}
}

// feed feeds ev to the engine and carries out its effects; it returns the
// answer among them, nil if there is none.
func (a *Agent) feed(ev engine.Event) *engine.Reply {
	a.mu.Lock()
	fx := a.eng.Step(time.Now(), ev)
	a.mu.Unlock()
	return a.carryAll(fx)
}

// carryAll carries out effects in order and returns the last answer
// (Reply, Adoption) among them, nil if there is none. A client's way back
// goes in beside the effect that follows it (the Accept); carryAll returns
// once both are done, so a setup's answer still comes back to the goroutine
// that began it.
func (a *Agent) carryAll(fx []engine.Effect) (answer *engine.Reply) {
	var beside []<-chan *engine.Reply
	defer func() {
		for _, done := range beside {
			if r := <-done; r != nil {
				answer = r
			}
		}
	}()
	for _, f := range fx {
		switch f := f.(type) {
		case engine.Reply:
			answer = &f
		case engine.Adoption:
			answer = &engine.Reply{Err: f.Err}
		default:
			if in, ok := f.(engine.Install); ok && in.Part == engine.ReplyPath {
				beside = append(beside, a.carryBeside(in))
				continue
			}
			if r := a.carry(f); r != nil {
				answer = r
			}
		}
	}
	return answer
}

// carryBeside carries out a client's way-back install beside what follows
// (the Accept; the engine holds what the peer sends before the way back is
// in): its messages go to the switch now, and a goroutine of its own waits
// for the barrier and feeds the answer to the engine. The channel gives
// what that answered.
func (a *Agent) carryBeside(in engine.Install) <-chan *engine.Reply {
	wait := a.startHalf(in)
	done := make(chan *engine.Reply, 1)
	go func() {
		var r *engine.Reply
		defer func() { done <- r }()
		defer a.recoverSetup(in.ID, in.Session.Tuple)
		r = a.installed(in, wait)
	}()
	return done
}

// installed waits for an install the switch was sent and feeds its answer
// to the engine.
func (a *Agent) installed(f engine.Install, wait func(context.Context) error) *engine.Reply {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.cfg.SetupTimeout)
	defer cancel()
	return a.feed(engine.Installed{ID: f.ID, Err: wait(ctx)})
}

// carryApart carries out the effects of several sessions (a tick, a
// directory change), each session's in order in a goroutine of its own, so
// that one slow peer does not hold up the others.
func (a *Agent) carryApart(what string, fx []engine.Effect) {
	var order []session.Tuple
	bySession := map[session.Tuple][]engine.Effect{}
	for _, f := range fx {
		t := tupleOf(f)
		if _, ok := bySession[t]; !ok {
			order = append(order, t)
		}
		bySession[t] = append(bySession[t], f)
	}
	for _, t := range order {
		fs := bySession[t]
		a.goSafe(what, func() { a.carryAll(fs) })
	}
}

func tupleOf(f engine.Effect) session.Tuple {
	switch f := f.(type) {
	case engine.ReleasePeer:
		return f.Session.Tuple
	case engine.Remove:
		return f.Session.Tuple
	case engine.Install:
		return f.Session.Tuple
	case engine.Verify:
		return f.Session.Tuple
	case engine.Accept:
		return f.Session.Tuple
	case engine.Resolve:
		return f.Tuple
	case engine.Reopen:
		return f.Tuple
	case engine.Drop:
		return f.Tuple
	case engine.Deliver:
		return f.Session.Tuple
	case engine.Resubmit:
		return f.Session.Tuple
	}
	return session.Tuple{}
}

// carry carries out one effect; the answer of those that take time goes
// back into the engine, and what that gave a waiting peer is returned.
func (a *Agent) carry(f engine.Effect) *engine.Reply {
	then := a.feed
	switch f := f.(type) {
	case engine.Resolve:
		setup := func() *engine.Reply {
			defer a.recoverSetup(f.ID, f.Tuple)
			ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SetupTimeout)
			defer cancel()
			return then(a.resolve(ctx, f))
		}
		if f.Wait {
			return setup()
		}
		a.goSafe("session setup", func() { setup() })
	case engine.Accept:
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SetupTimeout)
		defer cancel()
		var reply api.AcceptReply
		err := a.callPeer(ctx, f.Session.Peer.Name, func(pc *api.PeerClient) error {
			var err error
			reply, err = pc.Accept(ctx, api.AcceptRequest{From: a.cfg.Name, Tuple: f.Session.Tuple, Key: f.Session.Key, Frames: f.Frames})
			return err
		})
		return then(engine.Accepted{ID: f.ID, Err: err, Refused: refusedCode(api.CodeOf(err)), Delivered: reply.Delivered})
	case engine.Install:
		return a.installed(f, a.startHalf(f))
	case engine.Remove:
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.cfg.SetupTimeout)
		defer cancel()
		err := a.removeHalf(ctx, f)
		if errors.Is(err, errNoSwitch) {
			err = nil // the flows' idle timeouts take them when it is back
		}
		return then(engine.Removed{ID: f.ID, Err: err})
	case engine.ReleasePeer:
		a.releasePeer(f.Session, f.PeerName, f.Reason)
	case engine.Deliver:
		for _, fr := range f.Frames {
			if f.Session.Proto == session.ICMP {
				if p, err := packet.Parse(fr); err == nil {
					a.forwardEcho(engine.View{ID: f.ID, Session: f.Session}, &p, true, f.Port)
				}
				continue
			}
			a.resubmit(f.Port, fr)
		}
	case engine.Resubmit:
		uplink := a.uplink()
		for _, fr := range f.Frames {
			a.resubmit(uplink, fr)
		}
	case engine.ToHost:
		_ = a.sendOut(a.uplink(), openflow.PortLocal, f.Frame)
	case engine.Retry:
		for _, fr := range f.Frames {
			if p, err := packet.Parse(fr); err == nil {
				a.fromWorkload(f.Port, &p, 0)
			}
		}
	case engine.Drop:
		a.dropTuple(f.Port, f.Tuple, f.Err)
	case engine.SetupFailed:
		a.logLimited(slog.LevelWarn, "setup-failed/"+f.Session.Tenant, "session setup failed", "session", f.Session.Tuple.String(), "err", f.Err)
	case engine.Verify:
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
		defer cancel()
		err := a.callPeer(ctx, f.PeerName, func(pc *api.PeerClient) error {
			_, err := pc.Accept(ctx, api.AcceptRequest{From: a.cfg.Name, Tuple: f.Session.Tuple, Key: f.Session.Key})
			return err
		})
		code := api.CodeOf(err)
		gone := err != nil && (refusedCode(code) || code == api.CodeConflict)
		if err != nil && !gone {
			a.logLimited(slog.LevelWarn, "verify", "cannot check a session with its peer", "session", f.Session.Tuple.String(), "peer", f.PeerName, "err", err)
		}
		return then(engine.Verified{ID: f.ID, Err: err, Gone: gone})
	case engine.TellUnknown:
		a.goSafe("tell unknown key", func() { a.tellUnknown(f) })
	case engine.Reopen:
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SetupTimeout)
		defer cancel()
		err := a.callPeer(ctx, f.Peer.Name, func(pc *api.PeerClient) error {
			return pc.Reopen(ctx, api.ReopenRequest{From: a.cfg.Name, Tuple: f.Tuple})
		})
		return then(engine.Reopened{ID: f.ID, Err: err, Refused: api.CodeOf(err) == api.CodeDenied})
	default:
		panic(fmt.Sprintf("agent: effect %T not carried out", f))
	}
	return nil
}

// recoverSetup, deferred in a setup goroutine, turns a panic into the end
// of that one session: it is logged and failed, and the agent carries on.
func (a *Agent) recoverSetup(id engine.ID, t session.Tuple) {
	r := recover()
	if r == nil {
		return
	}
	a.log.Error("session goroutine panicked; abandoning the session", "session", t.String(), "panic", r, "stack", string(debug.Stack()))
	defer func() {
		if r := recover(); r != nil {
			a.log.Error("abandoning a session after a panic panicked too", "session", t.String(), "panic", r)
		}
	}()
	a.feed(engine.Abort{ID: id, Err: fmt.Errorf("internal error: %v", r)})
}

// resolve carries out a Resolve: the far end's endpoint, its server and
// policy's verdict. For a reopen, the far end is the client and policy is
// the client's agent's to ask, unless the client is here too.
func (a *Agent) resolve(ctx context.Context, f engine.Resolve) engine.Event {
	fail := func(err error, refused bool) engine.Event { return engine.Failed{ID: f.ID, Err: err, Refused: refused} }
	if !a.dirUp.Load() {
		return fail(errors.New("the directory is not connected yet"), false)
	}
	t := f.Tuple
	far := t.Server
	if f.Reopen {
		far = t.Client
	}
	ep, err := a.cache.LookupEndpoint(ctx, t.Tenant, far)
	switch {
	case errors.Is(err, directory.ErrNotFound):
		return fail(fmt.Errorf("no endpoint %s in tenant %s", far, t.Tenant), true)
	case err != nil:
		return fail(err, badRecord(err))
	}
	a.mu.Lock()
	l := a.workloads[f.From.Port]
	here := a.byAddr[addrKey{ep.Tenant, ep.IP}]
	a.mu.Unlock()
	if l == nil {
		return fail(errors.New("the workload left"), false)
	}
	if !f.Reopen || ep.Server == a.cfg.Name {
		from, to := l.subject(), subjectOf(ep)
		if f.Reopen {
			from, to = to, from
		}
		v, err := a.decide(ctx, from, to, t)
		if err != nil {
			return fail(err, false)
		}
		if !v.Allow {
			return fail(fmt.Errorf("refused by policy: %s", v.Reason), true)
		}
	}
	r := engine.Resolved{ID: f.ID, RemoteName: ep.Name, RemoteIP: ep.IP}
	if ep.Server == a.cfg.Name {
		if here == nil {
			return fail(fmt.Errorf("endpoint %s is not plugged in yet", ep.Ref()), false)
		}
		hl := here.engineWorkload()
		r.Here = &hl
		return r
	}
	peer, err := a.cache.LookupServer(ctx, ep.Server)
	if err != nil {
		return fail(fmt.Errorf("server %s of %s: %w", ep.Server, ep.Ref(), err), badRecord(err))
	}
	if !peer.DataIP.Is4() {
		return fail(fmt.Errorf("server %s has data address %q in the directory, and sessions need IPv4; fix its record", peer.Name, peer.DataIP), true)
	}
	hop, err := a.nextHop(peer)
	if err != nil {
		return fail(err, false)
	}
	r.Peer = &session.Peer{Name: peer.Name, IP: peer.DataIP, NextHop: hop}
	return r
}

// callPeer calls the agent of server name.
func (a *Agent) callPeer(ctx context.Context, name string, call func(*api.PeerClient) error) error {
	if !a.dirUp.Load() {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected")
	}
	srv, err := a.cache.LookupServer(ctx, name)
	if err != nil {
		return fmt.Errorf("finding peer %s: %w", name, err)
	}
	pc, err := a.peer(srv)
	if err != nil {
		return err
	}
	return call(pc)
}

// startHalf sends this server's half of a session to the bridge, then the
// packets that go with it, then a barrier; the function it returns waits
// for the barrier. The half is its two flows (TCP, UDP), and the peer's
// punt flow when the first ICMP session toward it needs one. Everything
// goes in one write, so the switch takes the flows and the packets that
// need them in one go.
func (a *Agent) startHalf(f engine.Install) (wait func(context.Context) error) {
	msgs, err := a.halfMessages(f)
	if err != nil || len(msgs) == 0 {
		return func(context.Context) error { return err }
	}
	return a.sw.start(msgs...)
}

// halfMessages is what startHalf sends.
func (a *Agent) halfMessages(f engine.Install) ([]openflow.Message, error) {
	a.mu.Lock()
	br := a.br
	a.mu.Unlock()
	var fms []*openflow.FlowMod
	if f.Punt.IsValid() {
		fms = append(fms, pipeline.Punt(br, f.Punt))
	}
	if f.Flows {
		var path []*openflow.FlowMod
		var err error
		if f.Part == engine.AllFlows {
			path, err = pipeline.SessionFlows(br, f.Session)
		} else {
			path, err = pipeline.SessionPathFlows(br, f.Session, f.Part == engine.ReplyPath)
		}
		if err != nil {
			return nil, err
		}
		fms = append(fms, path...)
	}
	msgs := flowMods(fms...)
	for _, fr := range f.Inject {
		wire, err := pipeline.FromPeer(br, f.Session, fr)
		if err != nil {
			a.logLimited(slog.LevelWarn, "inject/"+f.Session.Peer.Name, "dropping a first packet the peer passed", "session", f.Session.Tuple.String(), "peer", f.Session.Peer.Name, "err", err)
			continue
		}
		msgs = append(msgs, resubmission(br.Uplink, wire))
	}
	for _, fr := range f.Release {
		msgs = append(msgs, resubmission(f.Port, fr))
	}
	return msgs, nil
}

// removeHalf takes this server's half of a session off the bridge.
func (a *Agent) removeHalf(ctx context.Context, f engine.Remove) error {
	var msgs []*openflow.FlowMod
	if f.Flows {
		msgs = append(msgs, pipeline.DeleteSessionFlows(f.Session))
	}
	if f.Punt.IsValid() {
		msgs = append(msgs, pipeline.DeletePunt(f.Punt))
	}
	if len(msgs) == 0 {
		return nil
	}
	return a.sw.apply(ctx, flowMods(msgs...)...)
}

// releasePeer asks the peer to drop its half of s, and waits for its
// answer (after its barrier).
func (a *Agent) releasePeer(s session.Session, peerName, reason string) {
	if s.Role == session.RoleLocal || peerName == "" {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
	defer cancel()
	err := a.callPeer(ctx, peerName, func(pc *api.PeerClient) error {
		return pc.Release(ctx, api.ReleaseRequest{From: a.cfg.Name, Role: s.Role, Tuple: s.Tuple, Key: s.Key, Reason: reason})
	})
	if err != nil {
		a.log.Warn("peer did not release its half", "session", s.Tuple.String(), "peer", peerName, "err", err)
	}
}

// tellUnknown tells a peer that its packets with a key reach us and no
// session here takes them.
func (a *Agent) tellUnknown(f engine.TellUnknown) {
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
	defer cancel()
	err := a.callPeer(ctx, f.PeerName, func(pc *api.PeerClient) error {
		return pc.UnknownKey(ctx, api.UnknownKeyRequest{From: a.cfg.Name, Proto: f.Proto, Key: f.Key})
	})
	if err != nil {
		a.logLimited(slog.LevelInfo, "tell-unknown/"+f.PeerName, "cannot tell a peer its key is dead here", "peer", f.PeerName, "key", f.Key, "err", err)
		return
	}
	a.log.Info("told a peer its key is dead here", "peer", f.PeerName, "proto", f.Proto, "key", f.Key)
}

// uplink is the bridge's port toward the underlay.
func (a *Agent) uplink() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.br.Uplink
}

// engineWorkload is the workload as the engine knows it.
func (l *workload) engineWorkload() engine.Workload {
	return engine.Workload{Port: l.ofport, Endpoint: l.endpoint(), Zone: l.zone, Name: l.ep.Name}
}
