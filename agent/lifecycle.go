package agent

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"nvi/directory"
	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/session"
)

// teardown ends a session at this end and, when notify is set, first at the
// peer's: the peer removes its half and confirms after its barrier, then we
// remove ours, so both halves go together (invariant 3). A released key
// rests before reuse (invariant 2). Packets that arrive meanwhile start a
// fresh session afterwards.
func (a *Agent) teardown(ctx context.Context, e *entry, reason string, notify bool) {
	a.mu.Lock()
	if e.state == closing {
		a.mu.Unlock()
		return
	}
	was := e.state
	e.state = closing
	s := e.s
	a.mu.Unlock()
	if notify && was == established {
		a.releasePeer(e, reason)
	}
	if was == established {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.SetupTimeout)
		if err := a.removeHalf(rctx, s); err != nil {
			a.log.Warn("cannot remove a session's flows", "session", s.Tuple.String(), "err", err)
		}
		cancel()
	}
	a.mu.Lock()
	if a.sessions[s.Tuple] == e {
		delete(a.sessions, s.Tuple)
	}
	if s.Role != session.RoleLocal && a.byWire[e.wire()] == e {
		delete(a.byWire, e.wire())
	}
	if s.Role == session.RoleClient {
		a.keys.Release(s.Peer.IP, s.Proto, s.Key, time.Now())
	}
	next, port := e.next, s.ClientEnd().OFPort
	a.mu.Unlock()
	a.log.Info("session ended", "session", s.Tuple.String(), "role", s.Role, "key", s.Key, "reason", reason)
	for _, fr := range next {
		if f, err := packet.Parse(fr); err == nil {
			a.fromWorkload(port, &f, 0)
		}
	}
}

// idleTimeout is how long e may be quiet. The client's agent decides; the
// server's waits twice as long, as a backstop for a client server that died.
func (a *Agent) idleTimeout(e *entry) time.Duration {
	if e.s.Role == session.RoleServer {
		return 2 * a.cfg.IdleTimeout
	}
	return a.cfg.IdleTimeout
}

// expireLoop reads the session flows' packet counters and ends sessions that
// carried nothing, in either direction, for the idle timeout.
func (a *Agent) expireLoop(ctx context.Context) {
	every := max(a.cfg.IdleTimeout/4, 250*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.expire(ctx)
	}
}

func (a *Agent) expire(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	flows, err := a.sw.flows(qctx, pipeline.FeatureCookie(pipeline.FeatureSession), pipeline.FeatureMask)
	cancel()
	if err != nil {
		return
	}
	counts := map[pipeline.Cookie]uint64{}
	for _, f := range flows {
		counts[f.Cookie] += f.Packets
	}
	now := time.Now()
	var idle []*entry
	a.mu.Lock()
	for _, e := range a.sessions {
		if e.state != established {
			continue
		}
		if e.s.Proto.HasPorts() {
			e.act.Observe(counts[e.cookie()], now)
		}
		if e.act.Idle(now, a.idleTimeout(e)) {
			idle = append(idle, e)
		}
	}
	a.mu.Unlock()
	for _, e := range idle {
		go a.teardown(ctx, e, "idle", true)
	}
}

// onDirectoryChange ends sessions whose other end went away: a server whose
// lease expired, an endpoint deleted or moved.
func (a *Agent) onDirectoryChange(ev directory.Event) {
	a.onRevocation(ev)
	a.onTenantChange(ev)
	a.onEndpointRecord(ev)
	a.onPortMapChange(ev)
	var doomed []*entry
	notify := true
	a.mu.Lock()
	switch {
	case ev.Kind == directory.Delete && ev.Server != nil:
		// A lease can lapse while the directory itself is unreachable; a
		// live server registers again at once. Only a server that stays
		// gone takes its sessions with it.
		a.mu.Unlock()
		go a.peerGone(ev.Server.Name)
		return
	case ev.Endpoint != nil && (ev.Kind == directory.Delete || ev.Kind == directory.Put):
		ep := ev.Endpoint
		for _, e := range a.sessions {
			if e.s.Tenant != ep.Tenant || e.remoteName != ep.Name {
				continue
			}
			moved := ev.Kind == directory.Put && (ep.Server != e.peerName && e.s.Role != session.RoleLocal || ep.IP != e.s.Remote.IP)
			if ev.Kind == directory.Delete || moved {
				doomed = append(doomed, e)
			}
		}
	}
	a.mu.Unlock()
	for _, e := range doomed {
		go a.teardown(a.ctx, e, "directory: "+ev.Kind.String()+" "+ev.Key, notify)
	}
}

// peerGone ends the sessions with a server whose directory record went
// away, unless it is back (at the same address) within two lease times.
func (a *Agent) peerGone(name string) {
	select {
	case <-a.ctx.Done():
		return
	case <-time.After(2 * a.cfg.LeaseTTL):
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
	srv, err := a.cache.LookupServer(ctx, name)
	cancel()
	if err != nil && !errors.Is(err, directory.ErrNotFound) {
		return // the directory cannot tell: keep the sessions
	}
	var doomed []*entry
	a.mu.Lock()
	for _, e := range a.sessions {
		if e.peerName == name && e.s.Role != session.RoleLocal && (err != nil || srv.DataIP != e.s.Peer.IP) {
			doomed = append(doomed, e)
		}
	}
	a.mu.Unlock()
	for _, e := range doomed {
		a.teardown(a.ctx, e, "server "+name+" left the directory", false)
	}
}

// knownFlows is every flow the agent's memory says the bridge should have
// beyond the base pipeline: workloads, established sessions, punts.
func (a *Agent) knownFlows(br pipeline.Bridge) []openflow.Message {
	a.mu.Lock()
	var msgs []openflow.Message
	for _, l := range a.locals {
		msgs = append(msgs, flowMods(pipeline.WorkloadFlows(br, l.workload())...)...)
	}
	for _, e := range a.sessions {
		if e.state != established || !e.s.Proto.HasPorts() {
			continue
		}
		if fms, err := pipeline.SessionFlows(br, e.s); err == nil {
			msgs = append(msgs, flowMods(fms...)...)
		}
	}
	for peer := range a.punts {
		msgs = append(msgs, pipeline.Punt(br, peer))
	}
	a.mu.Unlock()
	return append(msgs, a.portMapFlows(br)...)
}

// adoptSessions takes over session flows found on the bridge that the agent
// does not know: those of a previous agent on this server. They keep
// carrying traffic throughout (invariant 5). When final, flows that cannot be
// adopted (their workload is gone) and punts nobody needs are removed.
func (a *Agent) adoptSessions(ctx context.Context, final bool) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	flows, err := a.sw.flows(qctx, pipeline.FeatureCookie(pipeline.FeatureSession), pipeline.FeatureMask)
	if err != nil {
		a.log.Warn("cannot read session flows to adopt them", "err", err)
		return
	}
	groups := map[pipeline.Cookie][]pipeline.InstalledFlow{}
	for _, f := range flows {
		groups[f.Cookie] = append(groups[f.Cookie], f)
	}
	known := map[pipeline.Cookie]bool{}
	a.mu.Lock()
	br := a.br
	for _, e := range a.sessions {
		known[e.cookie()] = true
	}
	a.mu.Unlock()
	var servers []directory.Server
	adopted := 0
	var doomed []openflow.Message
	for c, fs := range groups {
		if known[c] {
			continue
		}
		e, err := a.adoptOne(ctx, br, fs, &servers)
		if err != nil {
			if final {
				a.log.Info("removing session flows that cannot be adopted", "cookie", c, "reason", err)
				doomed = append(doomed, pipeline.DeleteByCookie(c, pipeline.FullMask))
			}
			continue
		}
		a.mu.Lock()
		if a.sessions[e.s.Tuple] == nil {
			a.sessions[e.s.Tuple] = e
			if e.s.Role != session.RoleLocal {
				a.byWire[e.wire()] = e
			}
			if e.s.Role == session.RoleClient {
				_ = a.keys.Adopt(e.s.Peer.IP, e.s.Proto, e.s.Key)
			}
			adopted++
		}
		a.mu.Unlock()
	}
	if final {
		punts, err := a.sw.flows(qctx, pipeline.FeatureCookie(pipeline.FeaturePunt), pipeline.FeatureMask)
		if err == nil {
			a.mu.Lock()
			for _, f := range punts {
				ip := uint32(f.Cookie)
				peer := netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)})
				if a.punts[peer] == 0 {
					doomed = append(doomed, pipeline.DeleteByCookie(f.Cookie, pipeline.FullMask))
				}
			}
			a.mu.Unlock()
		}
	}
	if len(doomed) > 0 {
		if err := a.sw.apply(qctx, doomed...); err != nil {
			a.log.Warn("cannot remove stale flows", "err", err)
		}
	}
	if adopted > 0 {
		a.log.Info("adopted sessions left on the bridge", "count", adopted)
	}
}

func (a *Agent) adoptOne(ctx context.Context, br pipeline.Bridge, fs []pipeline.InstalledFlow, servers *[]directory.Server) (*entry, error) {
	s, err := pipeline.AdoptSession(br, fs)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	l := a.locals[s.Local.OFPort]
	var rl *local
	if s.Role == session.RoleLocal {
		rl = a.locals[s.Remote.OFPort]
	}
	a.mu.Unlock()
	if l == nil || s.Role == session.RoleLocal && rl == nil {
		return nil, errNotBound
	}
	s.Tenant, s.Zone = l.ep.Tenant, l.zone
	e := &entry{s: s, state: established, created: time.Now(), act: session.NewActivity(time.Now())}
	if s.Role == session.RoleLocal {
		e.remoteName = rl.ep.Name
		return e, nil
	}
	if *servers == nil && a.dir != nil {
		*servers, _ = a.dir.Servers(ctx)
	}
	for _, sv := range *servers {
		if sv.DataIP == s.Peer.IP {
			e.peerName = sv.Name
			e.s.Peer.Name = sv.Name
		}
	}
	if a.cache != nil {
		if ep, err := a.cache.LookupEndpoint(ctx, s.Tenant, s.Remote.IP); err == nil {
			e.remoteName = ep.Name
		}
	}
	return e, nil
}
