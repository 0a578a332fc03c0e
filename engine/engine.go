// Package engine is the session engine: the life cycle of every session of
// one server as a pure state machine, in the manner of etcd-io/raft. The
// agent feeds it events (a packet-in, a peer's request or answer, a barrier
// reply, a tick, a directory change) with the time, under one lock, and
// carries out the effects it returns (look-ups, peer calls, flow installs
// and removals, packets to release). Nothing here does I/O or reads a
// clock, so every rule of a session's life is a table test with a fixed
// clock, and several engines can run together in one test process.
//
// A session at the client's end goes Resolving → Agreeing → Installing →
// Established; at the server's end Installing → Established (or, when the
// server workload answers after the session idled out here, Reopening →
// Installing → Established). Any of them ends Closing → gone, its key then
// resting before reuse. The rules it keeps:
//
//   - Invariant 1: a client's packets are held until its own half is in
//     place and the peer's was acknowledged before (the peer installs first
//     and answers after its barrier).
//   - Invariant 2: a key is allocated only while no session of the same peer
//     and protocol holds it, and rests after its flows are removed (unless
//     the peer refused and installed nothing).
//   - Invariant 3: a session ends at both ends (the peer is released before
//     our half is removed); one that carried packets in either direction is
//     not idle.
//   - A session torn down while it is being set up keeps its place until the
//     step in flight answers; then whatever that step installed is removed
//     (audit M3).
//   - A live session is replaced or released only on its own peer's word.
//   - A client's way back goes in while the peer is asked (the peer delivers
//     the first packets itself); what the peer sends before the way back is
//     in is held and run through the pipeline again once it is.
package engine

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"nvi/pipeline"
	"nvi/session"
)

// State is where a session is in its life.
type State uint8

const (
	Resolving   State = iota + 1 // client: the server workload, its server and policy are being looked up
	Agreeing                     // client: the peer is installing its half
	Installing                   // this end's half is being installed
	Established                  // both halves in place
	Reopening                    // server end: the client's agent is asked to set the session up again
	Closing                      // ending: the peer is released, our half removed
)

func (s State) String() string {
	switch s {
	case Resolving:
		return "resolving"
	case Agreeing:
		return "agreeing"
	case Installing:
		return "installing"
	case Established:
		return "established"
	case Reopening:
		return "reopening"
	case Closing:
		return "closing"
	}
	return fmt.Sprintf("state%d", uint8(s))
}

// phase is the effect whose answer a session waits for.
type phase uint8

const (
	none phase = iota
	resolving
	accepting
	reopening
	installing
	removing
)

// Errors the engine answers requests with, and the reasons of its drops.
var (
	// ErrConflict: a session for the tuple exists with another peer, or
	// the key is another session's.
	ErrConflict = errors.New("conflict")
	// ErrBusy: the session is being set up or torn down; ask again.
	ErrBusy = errors.New("busy")
	// ErrTooMany: the workload has its maximum of sessions.
	ErrTooMany = errors.New("the workload has its maximum of sessions")
	// ErrNoKey: no key toward the peer is free for the tenant.
	ErrNoKey = errors.New("no session key free")
	// ErrAborted: the session was torn down during its setup.
	ErrAborted = errors.New("the session was torn down during its setup")
	// ErrRefused: policy, the directory or the peer refused the session.
	ErrRefused = errors.New("refused")
)

// Config holds the engine's limits and times.
type Config struct {
	Keys *session.KeyPool // keys toward each peer, by protocol and tenant
	// IdleTimeout ends a client half that carried nothing for that long;
	// the server half waits twice as long, a backstop for a dead client.
	IdleTimeout time.Duration
	// DeafAfter: a client half that keeps sending while hearing nothing
	// back for that long is checked with its peer (audit M4).
	DeafAfter time.Duration
	// MaxPerWorkload bounds the sessions of one local workload.
	MaxPerWorkload int
	// MaxHeld bounds the packets held per session while it is being set
	// up or torn down; a workload sending faster loses the surplus.
	MaxHeld int
	Logger  *slog.Logger
}

// back is where a client's way back (its session_in flow) is: it goes in
// while the peer is asked, not before.
type back uint8

const (
	noBack     back = iota // ICMP, a local session, a server half: no separate way back
	backGoing              // being installed; the peer's early answers are held
	backIn                 // installed
	backFailed             // its install failed
)

// Wire names a cross-server session on the underlay: the peer, the
// protocol, the key and this end's role.
type Wire struct {
	Peer  netip.Addr
	Proto session.Proto
	Key   uint16
	Role  session.Role
}

// entry is one session.
type entry struct {
	id      ID
	s       session.Session
	state   State
	pending phase    // the effect whose answer the session waits for
	from    Workload // the local workload whose packets it holds
	// held: packets waiting for the setup; next: packets that arrived
	// while it ended, for a fresh session; waiting: a reopened session's
	// answers, released once the client's agent confirms.
	held, next, waiting [][]byte
	// back: the client's way back; early: what the peer sent before it
	// was in; answer: the peer's Accepted, kept until it is.
	back                 back
	backErr              error
	early                [][]byte
	acc                  *Accepted
	peerName, remoteName string
	reopen               bool   // server end, set up again at our request
	answer               bool   // a peer's ReopenRequest waits for the setup's end
	injected             int    // server end: the first packets the peer passed, delivered with the flows
	replyPort            uint16 // the client port a reopen's answer went to
	keyed, keyUnused     bool
	counted              bool // counts against from.Port's sessions
	punted               bool // holds a reference on its peer's punt flow
	reason               string
	act                  session.Activity
	lastIn, lastVerify   time.Time
	in, out              uint64
	created, began       time.Time     // created; began the current step
	resolve, handshake   time.Duration // where the setup's time went
	install              time.Duration
}

func (e *entry) wire() Wire {
	return Wire{Peer: e.s.Peer.IP, Proto: e.s.Proto, Key: e.s.Key, Role: e.s.Role}
}

func (e *entry) cross() bool { return e.s.Role == session.RoleClient || e.s.Role == session.RoleServer }

// Engine is the session table of one server. It is not safe for concurrent
// use: the agent calls it under one lock.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	byID    map[ID]*entry
	byTuple map[session.Tuple]*entry
	byWire  map[Wire]*entry
	perPort map[uint32]int     // sessions counted against each local port
	punts   map[netip.Addr]int // ICMP sessions per peer sharing its punt flow
	tombs   *tombs             // server halves that ended here, for StrayKey
	last    ID
}

// New makes an empty engine.
func New(cfg Config) *Engine {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = 64
	}
	return &Engine{
		cfg: cfg, log: cfg.Logger,
		byID: map[ID]*entry{}, byTuple: map[session.Tuple]*entry{}, byWire: map[Wire]*entry{},
		perPort: map[uint32]int{}, punts: map[netip.Addr]int{}, tombs: newTombs(MaxTombs),
	}
}

// Step feeds one event at time now and returns the effects to carry out,
// in order.
func (g *Engine) Step(now time.Time, ev Event) []Effect {
	switch ev := ev.(type) {
	case Packet:
		return g.packet(now, ev)
	case Resolved:
		return g.resolved(now, ev)
	case Failed:
		return g.failed(now, ev)
	case Accepted:
		return g.accepted(now, ev)
	case Installed:
		return g.installed(now, ev)
	case KeyReply:
		return g.keyReply(ev)
	case StrayKey:
		return g.strayKey(now, ev)
	case UnknownKey:
		return g.unknownKey(now, ev)
	case Removed:
		return g.removed(now, ev)
	case AcceptRequest:
		return g.acceptRequest(now, ev)
	case ReplyWithoutSession:
		return g.replyWithoutSession(now, ev)
	case Reopened:
		return g.reopened(now, ev)
	case ReopenRequest:
		return g.reopenRequest(now, ev)
	case Teardown:
		if e := g.byID[ev.ID]; e != nil {
			return g.teardown(now, e, ev.Reason, ev.Notify)
		}
		return nil
	case ReleaseRequest:
		return g.releaseRequest(now, ev)
	case Tick:
		return g.tick(now, ev)
	case Verified:
		return g.verified(now, ev)
	case PeerGone:
		return g.peerGone(now, ev)
	case EndpointChanged:
		return g.endpointChanged(now, ev)
	case Unbound:
		return g.unbound(now, ev)
	case Touched:
		if e := g.byID[ev.ID]; e != nil {
			e.act.Touch(now)
			e.lastIn = now
		}
		return nil
	case Adopt:
		return []Effect{Adoption{Err: g.adopt(now, ev)}}
	case Abort:
		return g.abort(now, ev)
	}
	panic(fmt.Sprintf("engine: unknown event %T", ev))
}

// --- the client's end ---

func (g *Engine) packet(now time.Time, ev Packet) []Effect {
	e := g.byTuple[ev.Tuple]
	if e == nil {
		if !g.take(ev.From.Port) {
			return []Effect{Drop{Port: ev.From.Port, Tuple: ev.Tuple, Err: fmt.Errorf("%w (%d)", ErrTooMany, g.cfg.MaxPerWorkload)}}
		}
		e = g.add(now, session.Session{Tuple: ev.Tuple, Local: ev.From.Endpoint, Zone: ev.From.Zone}, Resolving, ev.From)
		e.counted = true
		e.held = [][]byte{ev.Frame}
		e.pending, e.began = resolving, now
		return []Effect{Resolve{ID: e.id, Tuple: ev.Tuple, From: ev.From}}
	}
	switch e.state {
	case Established:
		// The flows exist; this packet was punted just before they did
		// (or it is ICMP, which the agent carries itself).
		return []Effect{Deliver{ID: e.id, Session: e.s, Port: ev.From.Port, Frames: [][]byte{ev.Frame}}}
	case Closing:
		if len(e.next) < g.cfg.MaxHeld && e.from.Port == ev.From.Port {
			e.next = append(e.next, ev.Frame)
		}
	default:
		if len(e.held) < g.cfg.MaxHeld && e.from.Port == ev.From.Port {
			e.held = append(e.held, ev.Frame)
		}
	}
	return nil
}

func (g *Engine) resolved(now time.Time, ev Resolved) []Effect {
	e := g.waiting(ev.ID, resolving)
	if e == nil {
		return nil
	}
	if e.state == Closing {
		return g.finish(now, e)
	}
	e.remoteName = ev.RemoteName
	e.resolve = now.Sub(e.created)
	switch {
	case ev.Here != nil && e.reopen:
		// Reopening a session whose client is here too.
		e.s.Role, e.s.Local, e.s.Remote, e.s.Zone = session.RoleLocal, ev.Here.Endpoint, e.from.Endpoint, ev.Here.Zone
		return g.startInstall(now, e)
	case ev.Here != nil:
		e.s.Role, e.s.Remote = session.RoleLocal, ev.Here.Endpoint
		return g.startInstall(now, e)
	case ev.Peer == nil || !ev.Peer.IP.Is4():
		return g.fail(now, e, fmt.Errorf("server of %s has no IPv4 data address", ev.RemoteName), true)
	case e.reopen:
		e.s.Peer, e.peerName = *ev.Peer, ev.Peer.Name
		e.state, e.pending, e.began = Reopening, reopening, now
		return []Effect{Reopen{ID: e.id, Tuple: e.s.Tuple, Peer: *ev.Peer}}
	}
	key, err := g.cfg.Keys.Allocate(ev.Peer.IP, e.s.Proto, e.s.Tenant, now)
	if err != nil {
		return g.fail(now, e, fmt.Errorf("%w: %v", ErrNoKey, err), true)
	}
	e.s.Role, e.s.Key, e.keyed = session.RoleClient, key, true
	e.s.Remote = session.Endpoint{IP: ev.RemoteIP}
	e.s.Peer, e.peerName = *ev.Peer, ev.Peer.Name
	g.byWire[e.wire()] = e
	if e.s.Proto.HasPorts() {
		// The way back goes in while the peer is asked, which delivers
		// the first packets itself: answers that come before it is in
		// are punted to us (KeyReply) and held until it is.
		e.back = backGoing
		return append([]Effect{Install{ID: e.id, Session: e.s, Flows: true, Part: ReplyPath}}, g.ask(now, e)...)
	}
	return g.ask(now, e)
}

// ask sends the Accept, with the first packets when the way back is in
// place.
func (g *Engine) ask(now time.Time, e *entry) []Effect {
	e.state, e.pending, e.began = Agreeing, accepting, now
	acc := Accept{ID: e.id, Session: e.s}
	if e.s.Proto.HasPorts() {
		size := 0
		for _, f := range e.held {
			if len(acc.Frames) == session.MaxFirstPackets || size+len(f) > session.MaxFirstPacketBytes {
				break
			}
			acc.Frames, size = append(acc.Frames, f), size+len(f)
		}
	}
	return []Effect{acc}
}

func (g *Engine) failed(now time.Time, ev Failed) []Effect {
	e := g.byID[ev.ID]
	if e == nil || e.pending != resolving && e.pending != reopening {
		return nil
	}
	if e.state == Closing {
		return g.finish(now, e)
	}
	return g.fail(now, e, ev.Err, ev.Refused)
}

// fail ends a setup that failed: a refused one gets a drop flow for a
// while, another is only logged (the next packet tries again). A peer
// waiting for the setup hears why.
func (g *Engine) fail(now time.Time, e *entry, err error, refused bool) []Effect {
	g.forget(now, e)
	var out []Effect
	if refused {
		out = append(out, g.drop(e, err))
		err = fmt.Errorf("%w: %w", ErrRefused, err)
	} else {
		out = append(out, SetupFailed{Session: e.s, Err: err})
	}
	if e.answer {
		e.answer = false
		out = append(out, Reply{Err: err})
	}
	return out
}

func (g *Engine) accepted(now time.Time, ev Accepted) []Effect {
	e := g.waiting(ev.ID, accepting)
	if e == nil {
		return nil
	}
	e.handshake = now.Sub(e.began)
	if e.back == backGoing {
		// The way back is still going in: its answer decides.
		e.acc = &ev
		return nil
	}
	return g.agreed(now, e, ev)
}

// agreed goes on from the peer's answer once the way back (if any) is in
// or failed.
func (g *Engine) agreed(now time.Time, e *entry, ev Accepted) []Effect {
	e.acc = nil
	// A refusal means the peer installed nothing: the key needs no rest.
	// A timeout or an unclear failure may have left its half in place.
	e.keyUnused = ev.Err != nil && ev.Refused
	wayBack := e.back != noBack
	if e.back == backFailed && ev.Err == nil && e.state != Closing {
		// The peer's half is in, ours cannot go in: undo both.
		e.keyUnused = false
		return append([]Effect{g.releasePeer(e, "setup failed"), g.removal(e)},
			g.fail(now, e, fmt.Errorf("installing flows: %w", e.backErr), false)...)
	}
	if e.state == Closing {
		var out []Effect
		if ev.Err == nil {
			out = append(out, g.releasePeer(e, "torn down during setup"))
		}
		if wayBack {
			e.pending, e.began = removing, now
			return append(out, g.removal(e))
		}
		return append(out, g.finish(now, e)...)
	}
	if ev.Err != nil {
		var out []Effect
		if wayBack {
			out = append(out, g.removal(e))
		}
		return append(out, g.fail(now, e, fmt.Errorf("peer %s: %w", e.peerName, ev.Err), ev.Refused)...)
	}
	if n := min(ev.Delivered, len(e.held)); n > 0 {
		e.held = e.held[n:]
	}
	if wayBack {
		e.state, e.pending, e.began = Installing, installing, now
		in := Install{ID: e.id, Session: e.s, Flows: true, Part: SendPath, Release: e.held, Port: e.from.Port}
		e.held = nil
		return []Effect{in}
	}
	return g.startInstall(now, e)
}

// --- both ends ---

func (g *Engine) startInstall(now time.Time, e *entry) []Effect {
	e.state, e.pending, e.began = Installing, installing, now
	in := Install{ID: e.id, Session: e.s, Flows: e.s.Proto.HasPorts()}
	if e.s.Proto == session.ICMP && e.cross() {
		e.punted = true
		if g.punts[e.s.Peer.IP]++; g.punts[e.s.Peer.IP] == 1 {
			in.Punt = e.s.Peer.IP
		}
	}
	return []Effect{in}
}

// removal is the Remove of e's half; it gives up e's punt reference.
func (g *Engine) removal(e *entry) Remove {
	rm := Remove{ID: e.id, Session: e.s, Flows: e.s.Proto.HasPorts()}
	if e.punted {
		e.punted = false
		if g.punts[e.s.Peer.IP]--; g.punts[e.s.Peer.IP] <= 0 {
			delete(g.punts, e.s.Peer.IP)
			rm.Punt = e.s.Peer.IP
		}
	}
	return rm
}

func (g *Engine) installed(now time.Time, ev Installed) []Effect {
	if e := g.byID[ev.ID]; e != nil && e.back == backGoing {
		return g.wayBackIn(now, e, ev.Err)
	}
	e := g.waiting(ev.ID, installing)
	if e == nil {
		return nil
	}
	e.install += now.Sub(e.began)
	if e.state == Closing {
		// Torn down while installing: take down what was installed, the
		// peer's half first (audit M3).
		g.log.Info("session torn down during its setup; removing what the setup installed", "session", e.s.Tuple.String(), "role", e.s.Role, "key", e.s.Key)
		var out []Effect
		if e.s.Role == session.RoleClient {
			out = append(out, g.releasePeer(e, "torn down during setup"))
		}
		e.pending, e.began = removing, now
		return append(out, g.removal(e))
	}
	if ev.Err != nil {
		var out []Effect
		if e.s.Role == session.RoleClient {
			out = append(out, g.releasePeer(e, "setup failed"))
		}
		out = append(out, g.removal(e))
		err := fmt.Errorf("installing flows: %w", ev.Err)
		if e.s.Role == session.RoleServer && !e.reopen {
			g.forget(now, e)
			return append(out, Reply{Err: err})
		}
		return append(out, g.fail(now, e, err, false)...)
	}
	e.state, e.pending = Established, none
	e.act = session.NewActivity(now)
	e.lastIn = now
	g.log.Info("session established", "session", e.s.Tuple.String(), "role", e.s.Role, "key", e.s.Key,
		"peer", e.peerName, "setup", now.Sub(e.created).Round(time.Microsecond), "resolve", e.resolve.Round(time.Microsecond),
		"handshake", e.handshake.Round(time.Microsecond), "install", e.install.Round(time.Microsecond))
	var out []Effect
	if len(e.held) > 0 {
		out = append(out, Deliver{ID: e.id, Session: e.s, Port: e.from.Port, Frames: e.held})
		e.held = nil
	}
	if e.s.Role == session.RoleServer && !e.reopen || e.answer {
		out = append(out, Reply{Delivered: e.injected})
		e.answer = false // answered
	}
	return out
}

// wayBackIn: the client's way back is in place (or failed to go in). The
// peer's answers that came before it go through the pipeline again; if the
// peer has answered, the setup goes on.
func (g *Engine) wayBackIn(now time.Time, e *entry, err error) []Effect {
	e.install = now.Sub(e.began)
	var out []Effect
	if err != nil {
		e.back, e.backErr, e.early = backFailed, err, nil
	} else {
		e.back = backIn
		if len(e.early) > 0 && e.state != Closing && (e.acc == nil || e.acc.Err == nil) {
			out = append(out, Resubmit{ID: e.id, Session: e.s, Frames: e.early})
		}
		e.early = nil
	}
	if e.acc != nil {
		out = append(out, g.agreed(now, e, *e.acc)...)
	}
	return out
}

// keyReply: a packet from a peer's key that no session flow took. It is
// the early answer of a session whose way back is going in (held), one
// that met the switch's cache before the session's flow did (run through
// the pipeline again), or host traffic.
func (g *Engine) keyReply(ev KeyReply) []Effect {
	e := g.byWire[Wire{Peer: ev.Peer, Proto: ev.Proto, Key: ev.Key, Role: session.RoleClient}]
	switch {
	case e == nil:
		return []Effect{ToHost{Frame: ev.Frame}}
	case e.state == Closing || e.back == backFailed:
		return nil
	case e.back == backGoing:
		if len(e.early) < g.cfg.MaxHeld {
			e.early = append(e.early, ev.Frame)
		}
		return nil
	}
	return []Effect{Resubmit{ID: e.id, Session: e.s, Frames: [][]byte{ev.Frame}}}
}

// teardown ends e: at the peer's first when notify is set, then here. A
// session being set up is only marked: the step in flight, when it
// answers, undoes what it did.
func (g *Engine) teardown(now time.Time, e *entry, reason string, notify bool) []Effect {
	if e.state == Closing {
		return nil
	}
	was := e.state
	e.state, e.reason = Closing, reason
	if was != Established {
		return nil
	}
	var out []Effect
	if notify && e.cross() {
		out = append(out, g.releasePeer(e, reason))
	}
	e.pending, e.began = removing, now
	return append(out, g.removal(e))
}

func (g *Engine) removed(now time.Time, ev Removed) []Effect {
	e := g.waiting(ev.ID, removing)
	if e == nil {
		return nil
	}
	if ev.Err != nil {
		g.log.Warn("cannot remove a session's flows; their idle timeouts will", "session", e.s.Tuple.String(), "err", ev.Err)
	}
	return g.finish(now, e)
}

// finish takes a closing session out of the tables and gives the packets
// that waited for it to a fresh session.
func (g *Engine) finish(now time.Time, e *entry) []Effect {
	g.forget(now, e)
	g.log.Info("session ended", "session", e.s.Tuple.String(), "role", e.s.Role, "key", e.s.Key, "reason", e.reason)
	var out []Effect
	if e.answer {
		// Torn down before its setup ended: the peer waiting hears so.
		out = append(out, Reply{Err: ErrAborted})
	}
	if len(e.next) > 0 {
		out = append(out, Retry{Port: e.from.Port, Frames: e.next})
		e.next = nil
	}
	return out
}

// --- the server's end ---

func (g *Engine) acceptRequest(now time.Time, ev AcceptRequest) []Effect {
	s := ev.Session
	s.Role = session.RoleServer
	w := Wire{Peer: s.Peer.IP, Proto: s.Proto, Key: s.Key, Role: session.RoleServer}
	var out []Effect
	old := g.byTuple[s.Tuple]
	switch {
	case old == nil:
	case old.reopen && old.state == Reopening:
		// The answer to our own Reopen, from the client's server. The held
		// answers wait until the Reopen call returns.
		if other := g.byWire[w]; other != nil && other != old {
			return []Effect{Reply{Err: fmt.Errorf("%w: key %d of %s is in use by another session with %s", ErrConflict, s.Key, s.Proto, ev.Caller)}}
		}
		old.s, old.peerName, old.remoteName = s, ev.Caller, ev.RemoteName
		old.waiting, old.held = old.held, nil
		g.byWire[w] = old
		out = g.startInstall(now, old)
		// Installed answers the Reopen's Accept like any other.
		old.reopen = false
		return out
	case !(old.s.Role == session.RoleServer && old.peerName != "" && old.peerName == ev.Caller):
		// Live or being made, and not the caller's: no one's word but its
		// own peer's ends it.
		g.log.Info("peer call refused", "op", "accept", "caller", ev.Caller, "session", s.Tuple.String(),
			"why", "a session for the tuple exists with peer "+old.peerName+" ("+old.state.String()+")")
		return []Effect{Reply{Err: fmt.Errorf("%w: a session for this tuple exists; it ends first", ErrConflict)}}
	case old.state == Established && old.s.Key == s.Key && old.s.Peer.IP == s.Peer.IP:
		return []Effect{Reply{}} // a retry of a setup already completed
	case old.state != Established:
		return []Effect{Reply{Err: fmt.Errorf("%w: the session is %s", ErrBusy, old.state)}}
	default:
		// Its own peer sets it up anew: the peer lost the old session
		// (restarted without its flows), so ours is stale. Ours goes
		// first (same key, same cookie), then the new one is installed.
		out = g.teardown(now, old, "replaced by a new setup from its peer", false)
		g.detach(old)
	}
	if other := g.byWire[w]; other != nil {
		return append(out, Reply{Err: fmt.Errorf("%w: key %d of %s is in use by another session with %s", ErrConflict, s.Key, s.Proto, ev.Caller)})
	}
	e := g.add(now, s, Installing, Workload{Port: s.Local.OFPort, Endpoint: s.Local, Zone: s.Zone})
	e.peerName, e.remoteName = ev.Caller, ev.RemoteName

	if !ev.Received.IsZero() && ev.Received.Before(now) {
		e.created, e.resolve = ev.Received, now.Sub(ev.Received)
	}
	g.byWire[w] = e
	fx := g.startInstall(now, e)
	if s.Proto.HasPorts() && len(ev.Frames) <= session.MaxFirstPackets {
		in := fx[0].(Install)
		in.Inject, e.injected = ev.Frames, len(ev.Frames)
		fx[0] = in
	}
	return append(out, fx...)
}

func (g *Engine) replyWithoutSession(now time.Time, ev ReplyWithoutSession) []Effect {
	if e := g.byTuple[ev.Tuple]; e != nil {
		if e.state != Established && len(e.held) < g.cfg.MaxHeld && e.from.Port == ev.From.Port {
			e.held = append(e.held, ev.Frame)
		}
		return nil
	}
	reply := session.Tuple{Tenant: ev.Tuple.Tenant, Proto: ev.Tuple.Proto, Client: ev.Tuple.Server, Server: ev.Tuple.Client, Port: ev.ReplyPort}
	if !g.take(ev.From.Port) {
		return []Effect{Drop{Port: ev.From.Port, Tuple: reply, Err: fmt.Errorf("%w (%d)", ErrTooMany, g.cfg.MaxPerWorkload)}}
	}
	e := g.add(now, session.Session{Tuple: ev.Tuple, Local: ev.From.Endpoint, Zone: ev.From.Zone}, Resolving, ev.From)
	e.counted, e.reopen, e.replyPort = true, true, ev.ReplyPort
	e.held = [][]byte{ev.Frame}
	e.pending, e.began = resolving, now
	return []Effect{Resolve{ID: e.id, Tuple: ev.Tuple, From: ev.From, Reopen: true}}
}

func (g *Engine) reopened(now time.Time, ev Reopened) []Effect {
	e := g.byID[ev.ID]
	if e == nil {
		return nil
	}
	switch {
	case e.pending == reopening && e.state == Closing:
		return g.finish(now, e)
	case e.state == Established && ev.Err == nil:
		// The client's agent called Accept, and our half is in place.
		var out []Effect
		if len(e.waiting) > 0 {
			out = append(out, Deliver{ID: e.id, Session: e.s, Port: e.from.Port, Frames: e.waiting})
			e.waiting = nil
		}
		return out
	case e.pending != reopening:
		return nil // its Accept came and is being installed, or it ended
	}
	err := ev.Err
	if err == nil {
		err = errors.New("the client's agent never installed the session")
	}
	return g.fail(now, e, err, ev.Refused)
}

// reopenRequest: the server workload's server asks us, the client's, to
// set the session up again; it is set up like a new one, without packets.
func (g *Engine) reopenRequest(now time.Time, ev ReopenRequest) []Effect {
	if g.byTuple[ev.Tuple] != nil {
		return []Effect{Reply{}} // a session for it exists or is being made
	}
	if !g.take(ev.From.Port) {
		return []Effect{Reply{Err: fmt.Errorf("%w (%d)", ErrTooMany, g.cfg.MaxPerWorkload)}}
	}
	e := g.add(now, session.Session{Tuple: ev.Tuple, Local: ev.From.Endpoint, Zone: ev.From.Zone}, Resolving, ev.From)
	e.counted, e.answer = true, true
	e.pending, e.began = resolving, now
	return []Effect{Resolve{ID: e.id, Tuple: ev.Tuple, From: ev.From, Wait: true}}
}

func (g *Engine) releaseRequest(now time.Time, ev ReleaseRequest) []Effect {
	var mine session.Role
	switch ev.Role {
	case session.RoleClient:
		mine = session.RoleServer
	case session.RoleServer:
		mine = session.RoleClient
	default:
		return []Effect{Reply{Err: fmt.Errorf("a release comes from a session's client or server, not %s", ev.Role)}}
	}
	e := g.byTuple[ev.Tuple]
	match := e != nil && e.s.Role == mine && e.s.Key == ev.Key &&
		(e.peerName == ev.Caller || e.peerName == "" && ev.CallerIP.IsValid() && ev.CallerIP == e.s.Peer.IP)
	if !match {
		// Ignored like a session already gone: releasing stays
		// idempotent and tells a guesser nothing.
		if e != nil {
			g.log.Info("peer call ignored", "op", "release", "caller", ev.Caller, "session", ev.Tuple.String(),
				"key", ev.Key, "why", "it does not match the session's peer, key or role")
		}
		return []Effect{Reply{}}
	}
	return append(g.teardown(now, e, "peer: "+ev.Reason, false), Reply{})
}

// --- time and the directory ---

func (g *Engine) tick(now time.Time, ev Tick) []Effect {
	g.tombs.expire(now)
	var out []Effect
	for _, e := range g.matching(func(e *entry) bool { return e.state == Established }) {
		if ev.Fresh && e.s.Proto.HasPorts() {
			c := ev.Counts[pipeline.SessionCookie(e.s)]
			e.act.Observe(c.In+c.Out, now)
			if g.deaf(e, c, now) {
				out = append(out, Verify{ID: e.id, Session: e.s, PeerName: e.peerName})
			}
		}
		timeout := g.cfg.IdleTimeout
		if e.s.Role == session.RoleServer {
			timeout *= 2
		}
		if e.act.Idle(now, timeout) {
			out = append(out, g.teardown(now, e, "idle", true)...)
		}
	}
	return out
}

// deaf records a session's counters by direction and reports whether it is
// a client half that keeps sending while nothing came back for DeafAfter,
// and was not checked for as long.
func (g *Engine) deaf(e *entry, c Counts, now time.Time) bool {
	if c.In != e.in {
		e.in, e.lastIn = c.In, now
	}
	sent := c.Out != e.out
	e.out = c.Out
	if e.s.Role != session.RoleClient || !sent || now.Sub(e.lastIn) < g.cfg.DeafAfter || now.Sub(e.lastVerify) < g.cfg.DeafAfter {
		return false
	}
	e.lastVerify = now
	return true
}

func (g *Engine) verified(now time.Time, ev Verified) []Effect {
	e := g.byID[ev.ID]
	if e == nil || e.state != Established || !ev.Gone {
		return nil
	}
	return g.teardown(now, e, fmt.Sprintf("the peer no longer takes the session: %v", ev.Err), true)
}

func (g *Engine) peerGone(now time.Time, ev PeerGone) []Effect {
	var out []Effect
	for _, e := range g.matching(func(e *entry) bool {
		return e.peerName == ev.Name && e.cross() && (!ev.NewIP.IsValid() || ev.NewIP != e.s.Peer.IP)
	}) {
		out = append(out, g.teardown(now, e, cmp.Or(ev.Reason, "server "+ev.Name+" left the directory"), ev.Reachable)...)
	}
	return out
}

func (g *Engine) endpointChanged(now time.Time, ev EndpointChanged) []Effect {
	var out []Effect
	for _, e := range g.matching(func(e *entry) bool { return e.s.Tenant == ev.Tenant && e.remoteName == ev.Name }) {
		moved := e.s.Role != session.RoleLocal && ev.Server != e.peerName || ev.IP != e.s.Remote.IP
		if ev.Deleted || moved {
			what := "moved"
			if ev.Deleted {
				what = "deleted"
			}
			out = append(out, g.teardown(now, e, "directory: endpoint "+ev.Tenant+"/"+ev.Name+" "+what, true)...)
		}
	}
	return out
}

func (g *Engine) unbound(now time.Time, ev Unbound) []Effect {
	var out []Effect
	for _, e := range g.matching(func(e *entry) bool {
		return e.s.Local.OFPort == ev.Port || e.s.Role == session.RoleLocal && e.s.Remote.OFPort == ev.Port
	}) {
		out = append(out, g.teardown(now, e, cmp.Or(ev.Reason, "workload unbound"), true)...)
	}
	return out
}

func (g *Engine) adopt(now time.Time, ev Adopt) error {
	s := ev.Session
	if old := g.byTuple[s.Tuple]; old != nil {
		return fmt.Errorf("the agent has that session already, with key %d (%s)", old.s.Key, old.state)
	}
	cross := s.Role == session.RoleClient || s.Role == session.RoleServer
	w := Wire{Peer: s.Peer.IP, Proto: s.Proto, Key: s.Key, Role: s.Role}
	if cross && g.byWire[w] != nil {
		return fmt.Errorf("its key is in use by %s", g.byWire[w].s.Tuple)
	}
	if s.Role == session.RoleClient {
		if err := g.cfg.Keys.Adopt(s.Peer.IP, s.Proto, s.Tenant, s.Key); err != nil {
			return err
		}
	}
	e := g.add(now, s, Established, Workload{Port: s.Local.OFPort, Endpoint: s.Local, Zone: s.Zone})
	e.keyed = s.Role == session.RoleClient
	e.peerName, e.remoteName = s.Peer.Name, ev.RemoteName
	e.act, e.lastIn = session.NewActivity(now), now
	if cross {
		g.byWire[w] = e
	}
	if s.Proto == session.ICMP && cross {
		e.punted = true
		g.punts[s.Peer.IP]++
	}
	return nil
}

// abort forgets a session whatever it waits for, taking down what its
// setup may have put in place.
func (g *Engine) abort(now time.Time, ev Abort) []Effect {
	e := g.byID[ev.ID]
	if e == nil {
		return nil
	}
	var out []Effect
	if e.s.Role == session.RoleClient && (e.pending == accepting || e.pending == installing || e.state == Established) {
		out = append(out, g.releasePeer(e, "setup aborted"))
	}
	if e.pending == installing || e.pending == removing || e.state == Established || e.back != noBack {
		out = append(out, g.removal(e))
	}
	e.reason = ev.Err.Error()
	return append(out, g.fail(now, e, ev.Err, false)...)
}

// --- the tables ---

func (g *Engine) add(now time.Time, s session.Session, st State, from Workload) *entry {
	g.last++
	e := &entry{id: g.last, s: s, state: st, from: from, created: now, began: now}
	g.byID[e.id] = e
	g.byTuple[s.Tuple] = e
	return e
}

// waiting returns the session of id if it waits for the answer of step.
func (g *Engine) waiting(id ID, st phase) *entry {
	e := g.byID[id]
	if e == nil || e.pending != st {
		return nil
	}
	e.pending = none
	return e
}

// detach takes e out of the tuple's place (a new session takes it) while
// its removal is under way.
func (g *Engine) detach(e *entry) {
	if g.byTuple[e.s.Tuple] == e {
		delete(g.byTuple, e.s.Tuple)
	}
	if e.cross() && g.byWire[e.wire()] == e {
		delete(g.byWire, e.wire())
	}
}

// forget takes e out of the tables, once: its key goes back to the pool
// (at once if the peer never used it, else to rest), and it stops counting
// against its workload.
func (g *Engine) forget(now time.Time, e *entry) {
	if g.byID[e.id] != e {
		return
	}
	delete(g.byID, e.id)
	g.detach(e)
	if e.s.Role == session.RoleServer && e.peerName != "" {
		g.tombs.add(e.wire(), e.peerName, now)
	}
	if e.punted {
		// Only a session that never had its Remove holds a reference
		// still; its punt flow stays for the others.
		e.punted = false
		if g.punts[e.s.Peer.IP]--; g.punts[e.s.Peer.IP] <= 0 {
			delete(g.punts, e.s.Peer.IP)
		}
	}
	if e.keyed {
		e.keyed = false
		if e.keyUnused {
			g.cfg.Keys.ReleaseUnused(e.s.Peer.IP, e.s.Proto, e.s.Key)
		} else {
			g.cfg.Keys.Release(e.s.Peer.IP, e.s.Proto, e.s.Key, now)
		}
	}
	if e.counted {
		e.counted = false
		if g.perPort[e.from.Port]--; g.perPort[e.from.Port] <= 0 {
			delete(g.perPort, e.from.Port)
		}
	}
}

func (g *Engine) take(port uint32) bool {
	if g.cfg.MaxPerWorkload > 0 && g.perPort[port] >= g.cfg.MaxPerWorkload {
		return false
	}
	g.perPort[port]++
	return true
}

func (g *Engine) releasePeer(e *entry, reason string) ReleasePeer {
	return ReleasePeer{Session: e.s, PeerName: e.peerName, Reason: reason}
}

// drop is the drop flow for a refused setup of e. What keeps coming to a
// reopening session is the server's answer, so that is what is dropped.
func (g *Engine) drop(e *entry, err error) Drop {
	t := e.s.Tuple
	if e.reopen {
		t.Client, t.Server, t.Port = t.Server, t.Client, e.replyPort
	}
	return Drop{Port: e.from.Port, Tuple: t, Err: err}
}

// matching lists the sessions keep accepts (all, if nil) in the order they
// were made, so that the effects of one event come out the same every time.
// Only the matches are sorted: a directory event that concerns one session
// costs one pass over the table, not a sort of it.
func (g *Engine) matching(keep func(*entry) bool) []*entry {
	var out []*entry
	for _, e := range g.byID {
		if keep == nil || keep(e) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *entry) int { return cmp.Compare(a.id, b.id) })
	return out
}

// --- queries ---

// View is what the engine knows of one session.
type View struct {
	ID         ID
	Session    session.Session
	State      State
	PeerName   string
	RemoteName string
	Created    time.Time
	Activity   session.Activity
	// Setup is where the setup's time went: look-ups, the peer's
	// handshake, our install.
	Resolve, Handshake, Install time.Duration
}

func (e *entry) view() View {
	return View{ID: e.id, Session: e.s, State: e.state, PeerName: e.peerName, RemoteName: e.remoteName,
		Created: e.created, Activity: e.act, Resolve: e.resolve, Handshake: e.handshake, Install: e.install}
}

// Lookup returns the session of a tuple.
func (g *Engine) Lookup(t session.Tuple) (View, bool) {
	if e := g.byTuple[t]; e != nil {
		return e.view(), true
	}
	return View{}, false
}

// LookupWire returns the established session a packet from the underlay
// names.
func (g *Engine) LookupWire(w Wire) (View, bool) {
	if e := g.byWire[w]; e != nil && e.state == Established {
		return e.view(), true
	}
	return View{}, false
}

// Sessions lists every session, oldest first.
func (g *Engine) Sessions() []View {
	es := g.matching(nil)
	out := make([]View, len(es))
	for i, e := range es {
		out[i] = e.view()
	}
	return out
}

// Punts lists the peers whose ICMP punt flow some session needs.
func (g *Engine) Punts() []netip.Addr {
	out := make([]netip.Addr, 0, len(g.punts))
	for p := range g.punts {
		out = append(out, p)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Len is the number of sessions.
func (g *Engine) Len() int { return len(g.byID) }

// PerWorkload returns how many sessions count against a local port.
func (g *Engine) PerWorkload(port uint32) int { return g.perPort[port] }
