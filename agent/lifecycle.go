package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"nvi/api"
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
//
// A session still being set up is only marked closing: its setup's
// goroutine owns what it installs, sees the mark when it ends, takes its
// flows (and the peer's) down and finishes the teardown (audit M3).
func (a *Agent) teardown(ctx context.Context, e *entry, reason string, notify bool) {
	a.mu.Lock()
	if e.state == closing || e.gone {
		a.mu.Unlock()
		return
	}
	was := e.state
	e.state = closing
	e.endReason = reason
	s := e.s
	a.mu.Unlock()
	if was != established {
		return
	}
	if notify {
		a.releasePeer(e, reason)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.SetupTimeout)
	if err := a.removeHalf(rctx, s); err != nil {
		a.logLimited(slog.LevelWarn, "remove-flows", "cannot remove a session's flows", "session", s.Tuple.String(), "err", err)
	}
	cancel()
	a.finish(e)
}

// finish takes a closing session out of the tables and gives the packets
// that waited for it to a fresh session.
func (a *Agent) finish(e *entry) {
	a.mu.Lock()
	if e.gone {
		a.mu.Unlock()
		return
	}
	a.forgetLocked(e, time.Now())
	s, reason, next := e.s, e.endReason, e.next
	e.next = nil
	port := s.ClientEnd().OFPort
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

// counts are a session's packet counters on this bridge by direction:
// out are the packets its session-out flow sent (from our workload), in
// those its session-in flow took from the peer.
type counts struct{ in, out uint64 }

// sessionCounts sums flow counters per cookie and direction.
func sessionCounts(flows []pipeline.InstalledFlow) map[pipeline.Cookie]counts {
	m := map[pipeline.Cookie]counts{}
	for _, f := range flows {
		c := m[f.Cookie]
		if f.Table == pipeline.SessionIn {
			c.in += f.Packets
		} else {
			c.out += f.Packets
		}
		m[f.Cookie] = c
	}
	return m
}

// expire ends idle sessions. When the flow dump fails (a slow or busy
// switch that is still connected), expiry still runs on the activity last
// seen, so that sessions
// and their keys always end (audit M6); the failure is logged once per
// logEvery. It also picks the client halves that send and hear nothing
// back, and has them checked with their peer (audit M4).
func (a *Agent) expire(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, expireDumpTimeout)
	flows, err := a.sw.flows(qctx, pipeline.FeatureCookie(pipeline.FeatureSession), pipeline.FeatureMask)
	cancel()
	if errors.Is(err, errNoSwitch) {
		// Nothing flows and nothing could be removed: ending sessions
		// now would leave their flows behind, keyless, for the switch's
		// return.
		return
	}
	fresh := err == nil
	if err != nil && ctx.Err() == nil {
		a.logLimited(slog.LevelWarn, "expire-dump", "cannot read session counters; expiring sessions on the activity last seen", "err", err)
	}
	cs := sessionCounts(flows)
	now := time.Now()
	var idle, deaf []*entry
	a.mu.Lock()
	for _, e := range a.sessions {
		if e.state != established {
			continue
		}
		if fresh && e.s.Proto.HasPorts() {
			c := cs[e.cookie()]
			e.act.Observe(c.in+c.out, now)
			if observeDirections(e, c, now) {
				deaf = append(deaf, e)
			}
		}
		if e.act.Idle(now, a.idleTimeout(e)) {
			idle = append(idle, e)
		}
	}
	a.mu.Unlock()
	for _, e := range idle {
		a.goSafe("idle teardown", func() { a.teardown(ctx, e, "idle", true) })
	}
	for _, e := range deaf {
		a.goSafe("checking a session with its peer", func() { a.verifyWithPeer(ctx, e) })
	}
}

// observeDirections records a session's counters by direction and reports
// whether it is a client half that keeps sending while nothing came back
// for clientDeafAfter, and was not checked for as long. The caller holds
// a.mu.
func observeDirections(e *entry, c counts, now time.Time) bool {
	if c.in != e.inPackets {
		e.inPackets, e.lastIn = c.in, now
	}
	sent := c.out != e.outPackets
	e.outPackets = c.out
	if e.s.Role != session.RoleClient || !sent || now.Sub(e.lastIn) < clientDeafAfter || now.Sub(e.lastVerify) < clientDeafAfter {
		return false
	}
	e.lastVerify = now
	return true
}

// verifyWithPeer checks that the peer still has the server half of client
// session e by repeating its Accept with the same key: the peer answers
// at once if it has the session, and otherwise runs every check again and
// installs its half, which ends the black hole of a one-sided teardown. A
// refusal ends the session here too. One-way traffic (a UDP stream nobody
// answers) costs one such call per clientDeafAfter.
func (a *Agent) verifyWithPeer(ctx context.Context, e *entry) {
	a.mu.Lock()
	s, peerName, ok := e.s, e.peerName, e.state == established && !e.gone
	a.mu.Unlock()
	if !ok || !a.dirUp.Load() || peerName == "" {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, a.cfg.PeerTimeout)
	defer cancel()
	srv, err := a.cache.LookupServer(cctx, peerName)
	if err != nil {
		return // peerGone deals with servers that left
	}
	pc, err := a.peer(srv)
	if err == nil {
		err = pc.Accept(cctx, api.AcceptRequest{From: a.cfg.Name, Tuple: s.Tuple, Key: s.Key})
	}
	switch code := api.CodeOf(err); {
	case err == nil:
		a.log.Debug("peer confirmed a session that hears nothing back", "session", s.Tuple.String(), "peer", peerName)
	case refusedCode(code) || code == api.CodeConflict:
		a.teardown(ctx, e, "the peer no longer takes the session: "+err.Error(), true)
	default:
		a.logLimited(slog.LevelWarn, "verify", "cannot check a session with its peer", "session", s.Tuple.String(), "peer", peerName, "err", err)
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
		last := *ev.Server
		a.goSafe("server "+last.Name+" left", func() { a.peerGone(last) })
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
		a.goSafe("directory teardown", func() { a.teardown(a.ctx, e, "directory: "+ev.Kind.String()+" "+ev.Key, notify) })
	}
}

// peerGone ends the sessions with a server whose directory record went
// away, unless it is back (at the same address) within two lease times.
// The peer is told while it answers (at its new record's agent address, or
// its last one), so that its halves do not linger one-sided (audit M4);
// after the first call that fails, the rest are ended here only.
func (a *Agent) peerGone(last directory.Server) {
	name := last.Name
	select {
	case <-a.ctx.Done():
		return
	case <-time.After(2 * a.cfg.LeaseTTL):
	}
	if !a.dirUp.Load() {
		return
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
	at := last
	if err == nil {
		at = srv
	}
	reachable := at.AgentAddr != ""
	reason := "server " + name + " left the directory"
	for _, e := range doomed {
		if reachable {
			if err := a.releaseAt(at, e, reason); err != nil {
				reachable = false
				a.log.Info("the server that left does not answer; ending its sessions here only", "server", name, "err", err)
			}
		}
		a.teardown(a.ctx, e, reason, false)
	}
}

// releaseAt asks the agent of srv to drop its half of e.
func (a *Agent) releaseAt(srv directory.Server, e *entry, reason string) error {
	a.mu.Lock()
	s, ok := e.s, e.state == established && !e.gone
	a.mu.Unlock()
	if !ok {
		return nil
	}
	pc, err := a.peer(srv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PeerTimeout)
	defer cancel()
	return pc.Release(ctx, api.ReleaseRequest{From: a.cfg.Name, Role: s.Role, Tuple: s.Tuple, Key: s.Key, Reason: reason})
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

// errAdoptLater marks a session that cannot be adopted yet because the
// directory cannot tell its peer: its flows stay, and a later pass tries
// again.
var errAdoptLater = errors.New("the directory cannot name the peer yet")

// adoptSessions takes over session flows found on the bridge that the agent
// does not know: those of a previous agent on this server. They keep
// carrying traffic throughout (invariant 5). When final, flows that cannot be
// adopted (their workload or peer is gone) and punts nobody needs are
// removed. Flows of a tuple the agent already has under another cookie are
// orphans (of a setup a teardown overtook, audit M3, or of a key that
// collides) and are removed at once: nobody would ever expire them.
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
	adopted, later := 0, 0
	var doomed []openflow.Message
	for c, fs := range groups {
		if known[c] {
			continue
		}
		e, err := a.adoptOne(ctx, br, fs, &servers)
		if errors.Is(err, errAdoptLater) {
			later++
			continue
		}
		if err != nil {
			if final {
				a.log.Info("removing session flows that cannot be adopted", "cookie", c, "reason", err)
				doomed = append(doomed, pipeline.DeleteByCookie(c, pipeline.FullMask))
			}
			continue
		}
		if err := a.adoptEntry(e); err != nil {
			a.log.Info("removing session flows of a tuple or key already in use", "cookie", c, "session", e.s.Tuple.String(), "reason", err)
			doomed = append(doomed, pipeline.DeleteByCookie(c, pipeline.FullMask))
			continue
		}
		adopted++
	}
	if later > 0 {
		a.log.Warn("session flows left for a later adoption: the directory could not name their peers", "count", later)
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

// adoptEntry puts an adopted session in the tables, with its key, unless
// its tuple already has a session or its key is taken.
func (a *Agent) adoptEntry(e *entry) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.sessions[e.s.Tuple]; old != nil {
		return fmt.Errorf("the agent has that session already, with key %d (%s)", old.s.Key, old.state)
	}
	if e.s.Role != session.RoleLocal {
		if other := a.byWire[e.wire()]; other != nil {
			return fmt.Errorf("its key is in use by %s", other.s.Tuple)
		}
	}
	if e.s.Role == session.RoleClient {
		if err := a.keys.Adopt(e.s.Peer.IP, e.s.Proto, e.s.Tenant, e.s.Key); err != nil {
			return err
		}
		e.keyed = true
	}
	a.sessions[e.s.Tuple] = e
	if e.s.Role != session.RoleLocal {
		a.byWire[e.wire()] = e
	}
	return nil
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
	now := time.Now()
	e := &entry{s: s, state: established, created: now, act: session.NewActivity(now), lastIn: now}
	if s.Role == session.RoleLocal {
		e.remoteName = rl.ep.Name
		return e, nil
	}
	if *servers == nil {
		if !a.dirUp.Load() {
			return nil, errAdoptLater
		}
		got, err := a.dir.Servers(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errAdoptLater, err)
		}
		*servers = got
	}
	for _, sv := range *servers {
		if sv.DataIP == s.Peer.IP {
			e.peerName = sv.Name
			e.s.Peer.Name = sv.Name
		}
	}
	if e.peerName == "" {
		// No server has that address any more: the peer's half is gone,
		// and nobody could release or re-verify ours.
		return nil, fmt.Errorf("no server in the directory has data address %s", s.Peer.IP)
	}
	if a.cache != nil {
		if ep, err := a.cache.LookupEndpoint(ctx, s.Tenant, s.Remote.IP); err == nil {
			e.remoteName = ep.Name
		}
	}
	return e, nil
}
