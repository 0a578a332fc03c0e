package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/openflow"
	"nvi/pipeline"
	"nvi/session"
)

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

// sessionCounts sums flow counters per cookie and direction: out are the
// packets a session_out flow sent (from our workload), in those its
// session_in flow took from the peer.
func sessionCounts(flows []pipeline.InstalledFlow) map[pipeline.Cookie]engine.Counts {
	m := map[pipeline.Cookie]engine.Counts{}
	for _, f := range flows {
		c := m[f.Cookie]
		if f.Table == pipeline.SessionIn {
			c.In += f.Packets
		} else {
			c.Out += f.Packets
		}
		m[f.Cookie] = c
	}
	return m
}

// expire feeds the engine a tick with the session flows' counters. When
// the flow dump fails (a slow or busy switch that is still connected),
// expiry still runs on the activity last seen, so that sessions and their
// keys always end (audit M6); the failure is logged once per logEvery.
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
	if err != nil && ctx.Err() == nil {
		a.logLimited(slog.LevelWarn, "expire-dump", "cannot read session counters; expiring sessions on the activity last seen", "err", err)
	}
	a.mu.Lock()
	fx := a.eng.Step(time.Now(), engine.Tick{Counts: sessionCounts(flows), Fresh: err == nil})
	a.mu.Unlock()
	a.carryApart("expiry", fx)
}

// onDirectoryChange ends sessions whose other end went away: a server whose
// lease expired, an endpoint deleted or moved.
func (a *Agent) onDirectoryChange(ev directory.Event) {
	a.onRevocation(ev)
	a.onTenantChange(ev)
	a.onEndpointRecord(ev)
	a.onPortMapChange(ev)
	switch {
	case ev.Kind == directory.Delete && ev.Server != nil:
		// A lease can lapse while the directory itself is unreachable; a
		// live server registers again at once. Only a server that stays
		// gone takes its sessions with it.
		last := *ev.Server
		a.goSafe("server "+last.Name+" left", func() { a.peerGone(last) })
	case ev.Endpoint != nil && (ev.Kind == directory.Delete || ev.Kind == directory.Put):
		ep := ev.Endpoint
		a.mu.Lock()
		fx := a.eng.Step(time.Now(), engine.EndpointChanged{Tenant: ep.Tenant, Name: ep.Name, Deleted: ev.Kind == directory.Delete, Server: ep.Server, IP: ep.IP})
		a.mu.Unlock()
		a.carryApart("directory teardown", fx)
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
	if err == nil {
		// Back at another address: its agent is told through its new record.
		a.mu.Lock()
		fx := a.eng.Step(time.Now(), engine.PeerGone{Name: name, NewIP: srv.DataIP, Reachable: srv.AgentAddr != ""})
		a.mu.Unlock()
		_ = a.carryAll(fx)
		return
	}
	// Gone from the directory: tell it at its last address while it answers.
	reason := "server " + name + " left the directory"
	reachable := last.AgentAddr != ""
	for _, v := range a.sessionsWith(name) {
		if !reachable {
			break
		}
		if err := a.releaseAt(last, v.Session, reason); err != nil {
			reachable = false
			a.log.Info("the server that left does not answer; ending its sessions here only", "server", name, "err", err)
		}
	}
	a.mu.Lock()
	fx := a.eng.Step(time.Now(), engine.PeerGone{Name: name})
	a.mu.Unlock()
	_ = a.carryAll(fx)
}

// sessionsWith lists the established cross-server sessions with server name.
func (a *Agent) sessionsWith(name string) []engine.View {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []engine.View
	for _, v := range a.eng.Sessions() {
		if v.PeerName == name && v.State == engine.Established && v.Session.Role != session.RoleLocal {
			out = append(out, v)
		}
	}
	return out
}

// releaseAt asks the agent of srv to drop its half of s.
func (a *Agent) releaseAt(srv directory.Server, s session.Session, reason string) error {
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
	for _, l := range a.workloads {
		msgs = append(msgs, flowMods(pipeline.WorkloadFlows(br, l.pipelineWorkload())...)...)
	}
	for _, v := range a.eng.Sessions() {
		if v.State != engine.Established || !v.Session.Proto.HasPorts() {
			continue
		}
		if fms, err := pipeline.SessionFlows(br, v.Session); err == nil {
			msgs = append(msgs, flowMods(fms...)...)
		}
	}
	for _, peer := range a.eng.Punts() {
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
	for _, v := range a.eng.Sessions() {
		known[sessionCookie(v.Session)] = true
	}
	a.mu.Unlock()
	var servers []directory.Server
	adopted, later := 0, 0
	var doomed []openflow.Message
	for c, fs := range groups {
		if known[c] {
			continue
		}
		ad, err := a.adoptOne(ctx, br, fs, &servers)
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
		if err := a.step(ad); err != nil {
			a.log.Info("removing session flows of a tuple or key already in use", "cookie", c, "session", ad.Session.Tuple.String(), "reason", err)
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
			needed := a.eng.Punts()
			a.mu.Unlock()
			for _, f := range punts {
				ip := uint32(f.Cookie)
				peer := netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)})
				if !slices.Contains(needed, peer) {
					doomed = append(doomed, pipeline.DeleteByCookie(f.Cookie, pipeline.FullMask))
				}
			}
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

// adoptOne reads the session a group of flows of one cookie make, for the
// engine to adopt.
func (a *Agent) adoptOne(ctx context.Context, br pipeline.Bridge, fs []pipeline.InstalledFlow, servers *[]directory.Server) (engine.Adopt, error) {
	s, err := pipeline.AdoptSession(br, fs)
	if err != nil {
		return engine.Adopt{}, err
	}
	a.mu.Lock()
	l := a.workloads[s.Local.OFPort]
	var rl *workload
	if s.Role == session.RoleLocal {
		rl = a.workloads[s.Remote.OFPort]
	}
	a.mu.Unlock()
	if l == nil || s.Role == session.RoleLocal && rl == nil {
		return engine.Adopt{}, errNotBound
	}
	s.Tenant, s.Zone = l.ep.Tenant, l.zone
	if s.Role == session.RoleLocal {
		return engine.Adopt{Session: s, RemoteName: rl.ep.Name}, nil
	}
	if *servers == nil {
		if !a.dirUp.Load() {
			return engine.Adopt{}, errAdoptLater
		}
		got, err := a.dir.Servers(ctx)
		if err != nil {
			return engine.Adopt{}, fmt.Errorf("%w: %w", errAdoptLater, err)
		}
		*servers = got
	}
	for _, sv := range *servers {
		if sv.DataIP == s.Peer.IP {
			s.Peer.Name = sv.Name
		}
	}
	if s.Peer.Name == "" {
		// No server has that address any more: the peer's half is gone,
		// and nobody could release or re-verify ours.
		return engine.Adopt{}, fmt.Errorf("no server in the directory has data address %s", s.Peer.IP)
	}
	ad := engine.Adopt{Session: s}
	if a.cache != nil {
		if ep, err := a.cache.LookupEndpoint(ctx, s.Tenant, s.Remote.IP); err == nil {
			ad.RemoteName = ep.Name
		}
	}
	return ad, nil
}

// sessionCookie names a session's flows. A cross-server session always has
// an IPv4 peer (the engine checks it); should one ever not, it gets a
// cookie no flow carries.
func sessionCookie(s session.Session) pipeline.Cookie {
	if s.Role != session.RoleLocal && !s.Peer.IP.Is4() {
		return 0
	}
	return pipeline.SessionCookie(s)
}
