package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/policy"
	"nvi/session"
)

// state is where a session is in its life.
type state uint8

const (
	establishing state = iota // being agreed: packets are held, not turned into new sessions
	established               // both halves installed and acknowledged
	closing                   // being torn down: packets wait for a fresh session
)

func (s state) String() string {
	return [...]string{"establishing", "established", "closing"}[s]
}

// maxHeld bounds the packets kept per session while it is being set up or
// torn down; a workload that sends faster than that loses the surplus, as it
// would on a congested link.
const maxHeld = 64

// entry is one session in the agent's table. Fields are guarded by Agent.mu.
type entry struct {
	s          session.Session
	state      state
	held       [][]byte // frames waiting for the session, all from heldPort
	heldPort   uint32
	next       [][]byte // frames that arrived while closing, for the next session
	act        session.Activity
	created    time.Time
	peerName   string
	remoteName string // the remote workload's endpoint name
	// Where a setup's time went, for the log: resolve from the packet-in
	// to the peer call (look-ups, policy, key), handshake the peer call
	// (the peer's install included), install our half and its barrier.
	resolve, handshake, install time.Duration
	// reopening: this server holds the server workload, which answered in
	// a connection after the session idled out; the client's agent is
	// asked to set the session up again. replyPort is the client port the
	// answer went to.
	reopening bool
	replyPort uint16
	waiting   [][]byte // held answers, released once both halves exist
	// gone: the entry left the tables (forgetLocked); a setup still
	// running for it must take down whatever it installs.
	gone bool
	// keyed: e holds a key of a.keys; keyUnused: the peer refused the
	// session and installed nothing, so that key needs no rest.
	keyed, keyUnused bool
	endReason        string // why a teardown began, for its log line
	// counted is the local port this entry counts against (limits), 0
	// if none.
	counted uint32
	// The two directions' counters as expire last saw them, when packets
	// last came in from the peer, and when the session was last checked
	// with the peer (verifyWithPeer).
	lastIn, lastVerify    time.Time
	inPackets, outPackets uint64
}

func (e *entry) involves(l *local) bool {
	return e.s.Local.OFPort == l.ofport || e.s.Role == session.RoleLocal && e.s.Remote.OFPort == l.ofport
}

func (e *entry) wire() wireKey {
	return wireKey{peer: e.s.Peer.IP, proto: e.s.Proto, key: e.s.Key, role: e.s.Role}
}

// cookie names the entry's flows. A cross-server session always has an
// IPv4 peer (agree and the directory check it); should one ever not, it
// gets a cookie no flow carries rather than a panic under Agent.mu.
func (e *entry) cookie() pipeline.Cookie {
	if e.s.Role != session.RoleLocal && !e.s.Peer.IP.Is4() {
		return 0
	}
	return pipeline.SessionCookie(e.s)
}

// forgetLocked takes e out of the agent's tables, once: its key goes back
// to the pool (at once if the peer never used it, else to rest), and it
// stops counting against its workload. The caller holds a.mu.
func (a *Agent) forgetLocked(e *entry, now time.Time) {
	if e.gone {
		return
	}
	e.gone = true
	if a.sessions[e.s.Tuple] == e {
		delete(a.sessions, e.s.Tuple)
	}
	if e.s.Role != session.RoleLocal && a.byWire[e.wire()] == e {
		delete(a.byWire, e.wire())
	}
	if e.keyed {
		e.keyed = false
		if e.keyUnused {
			a.keys.ReleaseUnused(e.s.Peer.IP, e.s.Proto, e.s.Key)
		} else {
			a.keys.Release(e.s.Peer.IP, e.s.Proto, e.s.Key, now)
		}
	}
	if e.counted != 0 {
		a.lim.done(e.counted)
		e.counted = 0
	}
}

// liveLocked reports whether e is still the table's session for its tuple
// and still being set up: no teardown overtook its setup (a teardown of a
// session being set up only marks it closing, and leaves the rest to the
// setup's goroutine). The caller holds a.mu.
func (a *Agent) liveLocked(e *entry) bool {
	return !e.gone && e.state == establishing && a.sessions[e.s.Tuple] == e
}

// errAborted means a session was torn down while it was being set up.
var errAborted = errors.New("the session was torn down during its setup")

// errTooMany means a workload has its maximum of sessions.
var errTooMany = errors.New("the workload has its maximum of sessions")

// logLimited writes a line of kind key at most once per logEvery, saying
// how many were held back: refusals and failures come at the rate of a
// workload's (or an attacker's) packets.
func (a *Agent) logLimited(level slog.Level, key, msg string, args ...any) {
	ok, n := a.lim.logs.allow(key, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n, "per", logEvery)
	}
	a.log.Log(context.Background(), level, msg, args...)
}

// recoverSetup, deferred in a session's goroutine, turns a panic into the
// end of that one session: it is logged with the session and abandoned,
// and the agent carries on.
func (a *Agent) recoverSetup(e *entry, l *local, t session.Tuple) {
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
	a.abandon(e, l, fmt.Errorf("internal error: %v", r))
}

// goSafe runs fn in a goroutine that survives fn's panic, logging it as
// what went wrong.
func (a *Agent) goSafe(what string, fn func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				a.log.Error("goroutine panicked", "what", what, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		fn()
	}()
}

// handlePacketIn is the start of every session: the first packet of a
// (client, server, protocol, port) that no flow matched. It runs on the
// switch connection's reader and must not block: setups run in their own
// goroutines.
func (a *Agent) handlePacketIn(pi *openflow.PacketIn) {
	// A packet that trips a bug (the slow paths translate ICMP in
	// software) costs that packet, not the switch connection's reader.
	defer func() {
		if r := recover(); r != nil {
			a.logLimited(slog.LevelError, "packet-in-panic", "handling a packet-in panicked; the packet is dropped", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	in, ok := pi.Match.Lookup(openflow.IDInPort)
	if !ok {
		return
	}
	f, err := packet.Parse(pi.Data)
	if err != nil {
		a.log.Debug("unparsable packet-in", "err", err)
		return
	}
	a.mu.Lock()
	uplink := a.br.Uplink
	a.mu.Unlock()
	port := uint32(in.Uint())
	if port == uplink {
		a.fromPeer(&f)
		return
	}
	var ct uint32
	if st, ok := pi.Match.Lookup(openflow.IDCtState); ok {
		ct = uint32(st.Uint())
	}
	a.fromWorkload(port, &f, ct)
}

// answersEarlier reports whether conntrack saw the packet as the reply of
// a connection it tracked: the server's end of a session commits every
// connection the session carries.
func answersEarlier(ct uint32) bool {
	const want = openflow.CtStateTrk | openflow.CtStateEst | openflow.CtStateRpl
	return ct&want == want
}

// fromWorkload handles a packet a local workload sent that no flow matched.
func (a *Agent) fromWorkload(port uint32, f *packet.Frame, ct uint32) {
	a.mu.Lock()
	l := a.locals[port]
	a.mu.Unlock()
	if l == nil || f.EthType() != packet.EtherTypeIPv4 {
		return
	}
	t := session.Tuple{Tenant: l.ep.Tenant, Proto: session.Proto(f.IPProto()), Client: f.IPv4Src(), Server: f.IPv4Dst()}
	switch t.Proto {
	case session.TCP, session.UDP:
		if f.L4() == nil {
			return // a later fragment: nothing to key it on (flows drop them)
		}
		t.Port = f.L4Dst()
	case session.ICMP:
		if f.IsICMPError() {
			if !a.errorFromWorkload(l, f) {
				a.denyStray(port, f)
			}
			return
		}
		switch f.ICMPType() {
		case packet.ICMPEchoRequest:
			if t.Server == l.net.Gateway {
				a.answerGatewayPing(l, f)
				return
			}
			t.Port = f.ICMPID()
		case packet.ICMPEchoReply:
			// A server workload answering a ping: the session exists
			// already, made when the request came in.
			t.Client, t.Server, t.Port = t.Server, t.Client, f.ICMPID()
			a.mu.Lock()
			e := a.sessions[t]
			ok := e != nil && e.state == established
			a.mu.Unlock()
			if ok {
				a.forwardEcho(e, f, false, port)
			} else {
				a.denyStray(port, f)
			}
			return
		default:
			a.denyStray(port, f)
			return
		}
	default:
		a.denyStray(port, f)
		return
	}
	// Only what conntrack calls the answer of a connection the client
	// opened is a reply: anything else a server workload sends, even from
	// its session's port, is a session of its own, which policy judges.
	if t.Proto.HasPorts() && answersEarlier(ct) {
		reversed := session.Tuple{Tenant: t.Tenant, Proto: t.Proto, Client: t.Server, Server: t.Client, Port: f.L4Src()}
		if a.isReply(reversed) {
			// The reverse direction of a session this workload serves: its
			// flows exist, the switch's cache just has not caught up.
			a.resubmit(port, f.Bytes())
			return
		}
		// The server answers in a connection whose session idled out.
		a.reopen(l, reversed, t.Port, f.Bytes())
		return
	}
	a.submit(l, t, f.Bytes())
}

// isReply reports whether the session named by the reversed tuple exists
// with this server holding its server workload. Open vSwitch updates its
// datapath cache shortly after a barrier, not at it, so a reply can reach
// the agent for a few milliseconds after the session's flows are in place;
// it must not start a session of its own.
func (a *Agent) isReply(reversed session.Tuple) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.sessions[reversed]
	return e != nil && e.state == established && e.s.Role != session.RoleClient
}

// submit gives a packet to its session, making the session if it is new.
func (a *Agent) submit(l *local, t session.Tuple, frame []byte) {
	a.mu.Lock()
	e := a.sessions[t]
	if e == nil {
		if !a.lim.take(l.ofport) {
			br := a.br
			a.mu.Unlock()
			a.dropTuple(br, l, t, "the endpoint has "+fmt.Sprint(maxSessionsPerEndpoint)+" sessions", errTooMany)
			return
		}
		e = &entry{
			s:        session.Session{Tuple: t, Local: l.endpoint()},
			state:    establishing,
			held:     [][]byte{frame},
			heldPort: l.ofport,
			created:  time.Now(),
			counted:  l.ofport,
		}
		a.sessions[t] = e
		a.mu.Unlock()
		go a.establish(e, l, t)
		return
	}
	switch e.state {
	case establishing:
		if len(e.held) < maxHeld {
			e.held = append(e.held, frame)
		}
		a.mu.Unlock()
	case closing:
		if len(e.next) < maxHeld {
			e.next = append(e.next, frame)
		}
		a.mu.Unlock()
	case established:
		a.mu.Unlock()
		if t.Proto == session.ICMP {
			f, err := packet.Parse(frame)
			if err == nil {
				a.forwardEcho(e, &f, true, l.ofport)
			}
			return
		}
		// The flows exist; this packet was punted just before they did.
		a.resubmit(l.ofport, frame)
	}
}

// resubmit sends a frame through the pipeline again, as if it had just
// arrived on port.
func (a *Agent) resubmit(port uint32, frame []byte) {
	_ = a.sw.send(&openflow.PacketOut{
		BufferID: openflow.NoBuffer, InPort: port,
		Actions: []openflow.Action{openflow.ActionOutput{Port: openflow.PortTable}},
		Data:    frame,
	})
}

// sendOut sends a frame straight out of a port.
func (a *Agent) sendOut(inPort, outPort uint32, frame []byte) error {
	if outPort == inPort {
		outPort = openflow.PortInPort
	}
	return a.sw.send(&openflow.PacketOut{
		BufferID: openflow.NoBuffer, InPort: inPort,
		Actions: []openflow.Action{openflow.ActionOutput{Port: outPort}},
		Data:    frame,
	})
}

// errRefused marks a setup that policy or the directory refused: the
// destination gets a drop flow instead of being asked about again.
var errRefused = errors.New("refused")

// establish agrees a new session on behalf of a local client: resolve the
// server in the client's tenant, check policy, have the peer install its
// half first, install ours, wait for the barrier, then release the held
// packets (invariant 1).
func (a *Agent) establish(e *entry, l *local, t session.Tuple) {
	defer a.recoverSetup(e, l, t)
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SetupTimeout)
	defer cancel()
	if err := a.agree(ctx, e, l); err != nil {
		a.abandon(e, l, err)
		return
	}
	_ = a.established(e)
}

// established marks a session agreed and installed, and releases the
// packets it held. If the session was torn down while it was being set up
// (it is closing, or no longer the table's), nothing would track what the
// setup installed: established takes its half down again, and the peer's,
// finishes the teardown and returns errAborted (audit M3).
func (a *Agent) established(e *entry) error {
	now := time.Now()
	a.mu.Lock()
	if !a.liveLocked(e) {
		s, gone := e.s, e.gone
		a.mu.Unlock()
		if gone {
			// Already out of the tables (the peer's Accept failed and
			// took it out): only its flows are left to remove.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.cfg.SetupTimeout)
			defer cancel()
			_ = a.removeHalf(rctx, s)
			return errAborted
		}
		a.log.Info("session torn down during its setup; removing what the setup installed", "session", s.Tuple.String(), "role", s.Role, "key", s.Key)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.cfg.SetupTimeout)
		defer cancel()
		if s.Role == session.RoleClient {
			a.releasePeer(e, "torn down during setup")
		}
		if err := a.removeHalf(rctx, s); err != nil && !errors.Is(err, errNoSwitch) {
			a.logLimited(slog.LevelWarn, "remove-aborted", "cannot remove the flows of a session torn down during its setup", "session", s.Tuple.String(), "err", err)
		}
		a.finish(e)
		return errAborted
	}
	e.state = established
	e.act = session.NewActivity(now)
	e.lastIn = now
	held := e.held
	e.held = nil
	s, peerName, resolve, handshake, install, start := e.s, e.peerName, e.resolve, e.handshake, e.install, e.created
	a.mu.Unlock()
	a.log.Info("session established", "session", s.Tuple.String(), "role", s.Role, "key", s.Key,
		"peer", peerName, "setup", time.Since(start).Round(time.Microsecond), "resolve", resolve.Round(time.Microsecond),
		"handshake", handshake.Round(time.Microsecond), "install", install.Round(time.Microsecond))
	for _, fr := range held {
		if s.Proto == session.ICMP {
			if f, err := packet.Parse(fr); err == nil {
				a.forwardEcho(e, &f, true, e.heldPort)
			}
			continue
		}
		a.resubmit(e.heldPort, fr)
	}
	return nil
}

func (a *Agent) agree(ctx context.Context, e *entry, l *local) error {
	t := e.s.Tuple
	if !a.dirUp.Load() {
		return errors.New("the directory is not connected yet")
	}
	// Sessions a peer asks for (Reopen) count against the workload too.
	a.mu.Lock()
	if e.counted == 0 {
		if !a.lim.take(l.ofport) {
			a.mu.Unlock()
			return fmt.Errorf("%w (%d)", errTooMany, maxSessionsPerEndpoint)
		}
		e.counted = l.ofport
	}
	a.mu.Unlock()
	srv, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Server)
	if errors.Is(err, directory.ErrNotFound) {
		return fmt.Errorf("%w: no endpoint %s in tenant %s", errRefused, t.Server, t.Tenant)
	}
	if err != nil {
		return err
	}
	v, err := a.decide(ctx, l.subject(), subjectOf(srv), t)
	if err != nil {
		return err
	}
	if !v.Allow {
		return fmt.Errorf("%w by policy: %s", errRefused, v.Reason)
	}
	a.mu.Lock()
	e.remoteName = srv.Name
	a.mu.Unlock()
	if srv.Server == a.cfg.Name {
		return a.agreeLocal(ctx, e, srv)
	}
	peer, err := a.cache.LookupServer(ctx, srv.Server)
	if err != nil {
		return fmt.Errorf("server %s of %s: %w", srv.Server, srv.Ref(), err)
	}
	if !peer.DataIP.Is4() {
		return fmt.Errorf("%w: server %s has data address %q in the directory, and sessions need IPv4; fix its record", errRefused, peer.Name, peer.DataIP)
	}
	hop, err := a.nextHop(peer)
	if err != nil {
		return err
	}
	pc, err := a.peer(peer)
	if err != nil {
		return err
	}
	a.mu.Lock()
	if !a.liveLocked(e) {
		a.mu.Unlock()
		return errAborted
	}
	key, err := a.keys.Allocate(peer.DataIP, t.Proto, t.Tenant, time.Now())
	if err == nil {
		e.s.Role, e.s.Key, e.s.Zone, e.keyed = session.RoleClient, key, l.zone, true
		e.s.Remote = session.Endpoint{IP: srv.IP}
		e.s.Peer = session.Peer{Name: peer.Name, IP: peer.DataIP, NextHop: hop}
		e.peerName = peer.Name
		a.byWire[e.wire()] = e
		e.resolve = time.Since(e.created)
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	// The peer installs its half first and answers after its barrier.
	start := time.Now()
	err = pc.Accept(ctx, api.AcceptRequest{From: a.cfg.Name, Tuple: t, Key: key})
	code := api.CodeOf(err)
	a.mu.Lock()
	e.handshake = time.Since(start)
	// An answer that refuses the request means the peer installed
	// nothing: the key needs no rest. A timeout or an unclear failure
	// may have left the peer's half in place, so that key rests.
	e.keyUnused = err != nil && refusedCode(code)
	a.mu.Unlock()
	if err != nil {
		if code == api.CodeDenied || code == api.CodeNotFound {
			err = fmt.Errorf("%w by %s: %v", errRefused, peer.Name, err)
		}
		return fmt.Errorf("peer %s: %w", peer.Name, err)
	}
	if err := a.installHalf(ctx, e); err != nil {
		// Our half failed: take the peer's down again.
		a.releasePeer(e, "setup failed")
		return err
	}
	return nil
}

// agreeLocal sets up a session whose two workloads are both ours: no key,
// no peer, only MACs change.
func (a *Agent) agreeLocal(ctx context.Context, e *entry, srv directory.Endpoint) error {
	a.mu.Lock()
	if !a.liveLocked(e) {
		a.mu.Unlock()
		return errAborted
	}
	rl := a.byAddr[addrKey{srv.Tenant, srv.IP}]
	if rl != nil {
		e.s.Role, e.s.Zone = session.RoleLocal, rl.zone
		e.s.Remote = rl.endpoint()
	}
	a.mu.Unlock()
	if rl == nil {
		return fmt.Errorf("endpoint %s is not plugged in yet", srv.Ref())
	}
	return a.installHalf(ctx, e)
}

// installHalf puts this server's half of a session on the bridge and waits
// for the barrier: two flows for TCP and UDP, the peer's punt flow for ICMP.
func (a *Agent) installHalf(ctx context.Context, e *entry) error {
	start := time.Now()
	defer func() {
		a.mu.Lock()
		e.install = time.Since(start)
		a.mu.Unlock()
	}()
	a.mu.Lock()
	br := a.br
	s := e.s
	a.mu.Unlock()
	if s.Proto == session.ICMP {
		if s.Role == session.RoleLocal {
			return nil
		}
		return a.addPunt(ctx, s.Peer.IP)
	}
	fms, err := pipeline.SessionFlows(br, s)
	if err != nil {
		return err
	}
	return a.sw.apply(ctx, flowMods(fms...)...)
}

// removeHalf takes this server's half of a session off the bridge.
func (a *Agent) removeHalf(ctx context.Context, s session.Session) error {
	if s.Proto == session.ICMP {
		if s.Role == session.RoleLocal {
			return nil
		}
		return a.dropPunt(ctx, s.Peer.IP)
	}
	return a.sw.apply(ctx, pipeline.DeleteSessionFlows(s))
}

func (a *Agent) addPunt(ctx context.Context, peer netip.Addr) error {
	a.mu.Lock()
	a.punts[peer]++
	first := a.punts[peer] == 1
	br := a.br
	a.mu.Unlock()
	if !first {
		return nil
	}
	return a.sw.apply(ctx, pipeline.Punt(br, peer))
}

func (a *Agent) dropPunt(ctx context.Context, peer netip.Addr) error {
	a.mu.Lock()
	a.punts[peer]--
	last := a.punts[peer] <= 0
	if last {
		delete(a.punts, peer)
	}
	a.mu.Unlock()
	if !last {
		return nil
	}
	return a.sw.apply(ctx, pipeline.DeletePunt(peer))
}

// refusedCode reports whether a peer's answer refuses a request outright,
// which means it changed nothing.
func refusedCode(c api.Code) bool {
	return c == api.CodeDenied || c == api.CodeNotFound || c == api.CodeInvalid
}

// noKey reports whether err says no key toward the peer was free.
func noKey(err error) bool {
	return errors.Is(err, session.ErrKeysExhausted) || errors.Is(err, session.ErrKeyQuota)
}

// abandon ends a setup that failed. A refusal, and a setup that found no
// free key, leave a short-lived drop flow so that a flood toward that
// destination costs no more packet-ins (invariant 4); other failures just
// drop the held packets, and the next packet tries again. Every kind of
// line is logged once per logEvery at most (audit L9).
func (a *Agent) abandon(e *entry, l *local, err error) {
	a.mu.Lock()
	gone, closing := e.gone, e.state == closing
	if !closing {
		a.forgetLocked(e, time.Now())
	}
	br, s, reopening, replyPort := a.br, e.s, e.reopening, e.replyPort
	a.mu.Unlock()
	switch {
	case gone:
		return // finished already
	case closing:
		// A teardown overtook the setup, which failed anyway: the
		// teardown ends here.
		a.finish(e)
		return
	}
	drop := s.Tuple
	if reopening {
		// What keeps coming is the server's answer.
		drop.Client, drop.Server, drop.Port = drop.Server, drop.Client, replyPort
	}
	switch {
	case errors.Is(err, errAborted):
		a.log.Debug("session setup given up", "session", s.Tuple.String(), "err", err)
	case errors.Is(err, errRefused) || noKey(err) || errors.Is(err, errTooMany) || badRecord(err):
		a.dropTuple(br, l, drop, err.Error(), err)
	default:
		a.logLimited(slog.LevelWarn, "setup-failed/"+s.Tenant, "session setup failed", "session", s.Tuple.String(), "err", err)
	}
}

// badRecord says whether a setup failed on a directory record that is
// missing or malformed: retrying it at every packet would not help, so it
// is dropped for a while like a refusal.
func badRecord(err error) bool {
	return errors.Is(err, directory.ErrMalformed) || errors.Is(err, directory.ErrNotFound)
}

// dropTuple installs the short-lived drop flow for t from l's port and logs
// why, at most once per logEvery for each kind of reason and tenant (the
// tenants of this server's workloads: a bounded set).
func (a *Agent) dropTuple(br pipeline.Bridge, l *local, t session.Tuple, reason string, kind error) {
	switch {
	case noKey(kind):
		a.logLimited(slog.LevelWarn, "no-key/"+t.Tenant, "no session key free; dropping the destination for a while", "session", t.String(), "reason", reason)
	case errors.Is(kind, errTooMany):
		a.logLimited(slog.LevelWarn, "too-many/"+t.Tenant, "workload has too many sessions; dropping the destination for a while", "session", t.String(), "reason", reason)
	default:
		a.logLimited(slog.LevelInfo, "refused/"+t.Tenant, "session refused", "session", t.String(), "reason", reason)
	}
	if l == nil {
		return
	}
	if err := a.sw.send(pipeline.Deny(br, l.ofport, t)); err != nil && !errors.Is(err, errNoSwitch) {
		a.logLimited(slog.LevelWarn, "drop-flow", "cannot install drop flow", "err", err)
	}
}

// forwardEcho carries one ICMP echo of an established session; in is the
// port it arrived on.
func (a *Agent) forwardEcho(e *entry, f *packet.Frame, toServer bool, in uint32) {
	a.slowForward(e, f, in, func(br pipeline.Bridge, s session.Session) (uint32, error) {
		return pipeline.TranslateEcho(br, s, f, toServer)
	})
}

// forwardError carries an ICMP error about one of a session's packets.
func (a *Agent) forwardError(e *entry, f *packet.Frame, towardClient bool, in uint32) {
	a.slowForward(e, f, in, func(br pipeline.Bridge, s session.Session) (uint32, error) {
		return pipeline.TranslateError(br, s, f, towardClient)
	})
}

// slowForward translates a frame of an established session in software and
// sends it on; it counts as the session's activity.
func (a *Agent) slowForward(e *entry, f *packet.Frame, in uint32, translate func(pipeline.Bridge, session.Session) (uint32, error)) {
	a.mu.Lock()
	br, s := a.br, e.s
	e.act.Touch(time.Now())
	a.mu.Unlock()
	out, err := translate(br, s)
	if err != nil {
		a.logLimited(slog.LevelWarn, "translate", "cannot translate a slow-path packet", "session", s.Tuple.String(), "err", err)
		return
	}
	if err := a.sendOut(in, out, f.Bytes()); err != nil {
		a.log.Debug("cannot send a slow-path packet", "err", err)
	}
}

// fromPeer handles ICMP that reached the agent from the underlay (punt
// flows send it here): an echo of one of our ICMP sessions, an error about
// one of our sessions' packets, or the host's own traffic, which is passed
// to the host untouched.
func (a *Agent) fromPeer(f *packet.Frame) {
	a.mu.Lock()
	br := a.br
	a.mu.Unlock()
	uplink := br.Uplink
	if f.EthType() == packet.EtherTypeIPv4 && f.IPProto() == uint8(session.ICMP) {
		if f.IsICMPError() {
			if err := errors.Join(pipeline.CheckError(f), pipeline.CheckErrorSource(br, f)); err != nil {
				a.log.Debug("ICMP error from the underlay ignored", "from", f.IPv4Src(), "reason", err)
				return
			}
			if e, toward := a.sessionOfWireError(f); e != nil {
				a.forwardError(e, f, toward, uplink)
				return
			}
		} else if e, toServer := a.sessionOfWireEcho(f); e != nil {
			a.forwardEcho(e, f, toServer, uplink)
			return
		}
	}
	_ = a.sendOut(uplink, openflow.PortLocal, f.Bytes())
}

// establishedByWire returns the established session named by w, or nil.
func (a *Agent) establishedByWire(w wireKey) *entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.byWire[w]; e != nil && e.state == established {
		return e
	}
	return nil
}

// sessionOfWireEcho finds the session of an echo from a peer: the key is
// the echo identifier.
func (a *Agent) sessionOfWireEcho(f *packet.Frame) (e *entry, toServer bool) {
	w := wireKey{peer: f.IPv4Src(), proto: session.ICMP, key: f.ICMPID()}
	switch f.ICMPType() {
	case packet.ICMPEchoRequest:
		w.role, toServer = session.RoleServer, true
	case packet.ICMPEchoReply:
		w.role = session.RoleClient
	default:
		return nil, false
	}
	return a.establishedByWire(w), toServer
}

// sessionOfWireError finds the session of an ICMP error that quotes a
// packet this server sent to a peer: to the key if we are the client (the
// error travels toward our client), from the key if we are the server.
func (a *Agent) sessionOfWireError(f *packet.Frame) (e *entry, towardClient bool) {
	proto := session.Proto(f.InnerProto())
	var src, dst uint16
	switch proto {
	case session.TCP, session.UDP:
		src, dst = f.InnerL4Src(), f.InnerL4Dst()
	case session.ICMP:
		src, dst = f.InnerICMPID(), f.InnerICMPID()
	default:
		return nil, false
	}
	peer := f.InnerIPv4Dst()
	if e := a.establishedByWire(wireKey{peer: peer, proto: proto, key: dst, role: session.RoleClient}); e != nil {
		return e, true
	}
	return a.establishedByWire(wireKey{peer: peer, proto: proto, key: src, role: session.RoleServer}), false
}

// errorFromWorkload handles an ICMP error a local workload sent about a
// packet it received: from the session's client (the error goes back to
// the server) or from its server (back to the client). It reports whether
// the error belonged to a session.
func (a *Agent) errorFromWorkload(l *local, f *packet.Frame) bool {
	if pipeline.CheckError(f) != nil {
		return false
	}
	for _, towardClient := range []bool{true, false} {
		t, ok := pipeline.QuotedTuple(f, towardClient)
		if !ok {
			return false
		}
		t.Tenant = l.ep.Tenant
		a.mu.Lock()
		e := a.sessions[t]
		// The reporting workload must be the end the quoted packet went to.
		reporter := session.Endpoint{}
		if e != nil {
			reporter = e.s.ClientEnd()
			if towardClient {
				reporter = e.s.ServerEnd()
			}
		}
		ok = e != nil && e.state == established && reporter.OFPort == l.ofport
		a.mu.Unlock()
		if ok {
			a.forwardError(e, f, towardClient, l.ofport)
			return true
		}
	}
	return false
}

func (a *Agent) answerGatewayPing(l *local, f *packet.Frame) {
	reply, err := pipeline.GatewayEchoReply(f)
	if err != nil {
		return
	}
	_ = a.sendOut(l.ofport, l.ofport, reply)
}

// decide asks the tenant's policy.
func (a *Agent) decide(ctx context.Context, from, to policy.Subject, t session.Tuple) (policy.Verdict, error) {
	pol, err := a.policyOf(ctx, t.Tenant)
	if err != nil {
		return policy.Verdict{}, err
	}
	return pol.Decide(policy.Request{From: from, To: to, Proto: t.Proto, Port: t.Port}), nil
}

// reopen handles a packet a local server workload sent in answer in a
// connection whose session idled out (conntrack remembers the connection):
// the session t is made again — by this agent if the client is local, else
// by the client's agent, asked to — and the answer is held until it exists.
// Policy decides on t as for any new session, so a connection whose
// session policy now refuses stays cut.
func (a *Agent) reopen(l *local, t session.Tuple, replyPort uint16, frame []byte) {
	a.mu.Lock()
	if e := a.sessions[t]; e != nil {
		if e.state != established && len(e.held) < maxHeld && e.heldPort == l.ofport {
			e.held = append(e.held, frame)
		}
		a.mu.Unlock()
		return
	}
	if !a.lim.take(l.ofport) {
		br := a.br
		a.mu.Unlock()
		drop := session.Tuple{Tenant: t.Tenant, Proto: t.Proto, Client: t.Server, Server: t.Client, Port: replyPort}
		a.dropTuple(br, l, drop, "the endpoint has "+fmt.Sprint(maxSessionsPerEndpoint)+" sessions", errTooMany)
		return
	}
	e := &entry{
		s:     session.Session{Tuple: t, Local: l.endpoint()},
		state: establishing, held: [][]byte{frame}, heldPort: l.ofport,
		created: time.Now(), reopening: true, replyPort: replyPort, counted: l.ofport,
	}
	a.sessions[t] = e
	a.mu.Unlock()
	go a.reopenSession(e, l, t)
}

func (a *Agent) reopenSession(e *entry, l *local, t session.Tuple) {
	defer a.recoverSetup(e, l, t)
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SetupTimeout)
	defer cancel()
	if err := a.reopenVia(ctx, e, l); err != nil {
		a.abandon(e, l, err)
		return
	}
	a.mu.Lock()
	done := e.state == established && !e.gone
	waiting := e.waiting
	e.waiting = nil
	a.mu.Unlock()
	if !done {
		a.abandon(e, l, errors.New("the client's agent never installed the session"))
		return
	}
	for _, fr := range waiting {
		a.resubmit(e.heldPort, fr)
	}
}

func (a *Agent) reopenVia(ctx context.Context, e *entry, l *local) error {
	t := e.s.Tuple
	if !a.dirUp.Load() {
		return errors.New("the directory is not connected yet")
	}
	client, err := a.cache.LookupEndpoint(ctx, t.Tenant, t.Client)
	if errors.Is(err, directory.ErrNotFound) {
		return fmt.Errorf("%w: the client %s is gone", errRefused, t.Client)
	}
	if err != nil {
		return err
	}
	if client.Server == a.cfg.Name {
		a.mu.Lock()
		cl := a.byAddr[addrKey{t.Tenant, t.Client}]
		a.mu.Unlock()
		if cl == nil {
			return fmt.Errorf("the client %s is not plugged in", t.Client)
		}
		v, err := a.decide(ctx, cl.subject(), l.subject(), t)
		if err != nil {
			return err
		}
		if !v.Allow {
			return fmt.Errorf("%w by policy: %s", errRefused, v.Reason)
		}
		a.mu.Lock()
		if !a.liveLocked(e) {
			a.mu.Unlock()
			return errAborted
		}
		e.s.Role, e.s.Zone, e.s.Local, e.s.Remote = session.RoleLocal, l.zone, cl.endpoint(), l.endpoint()
		e.remoteName = client.Name
		a.mu.Unlock()
		if err := a.installHalf(ctx, e); err != nil {
			return err
		}
		return a.established(e)
	}
	peer, err := a.cache.LookupServer(ctx, client.Server)
	if err != nil {
		return err
	}
	if !peer.DataIP.Is4() {
		return fmt.Errorf("%w: server %s has data address %q in the directory, and sessions need IPv4; fix its record", errRefused, peer.Name, peer.DataIP)
	}
	pc, err := a.peer(peer)
	if err != nil {
		return err
	}
	err = pc.Reopen(ctx, api.ReopenRequest{From: a.cfg.Name, Tuple: t})
	if api.CodeOf(err) == api.CodeDenied {
		return fmt.Errorf("%w by %s: %v", errRefused, peer.Name, err)
	}
	return err
}
