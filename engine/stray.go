package engine

import (
	"net/netip"
	"time"

	"nvi/session"
)

// A server half can end here without its client hearing of it: the peer
// was unreachable when it left the directory, or the Release was lost. The
// client then keeps sending with a key nobody takes (audit M4). Its first
// such packet reaches us (the switch punts traffic to a key that no session
// takes, through a meter of its own) and we tell the client's agent, which
// checks its session with us by repeating its Accept: we set the half up
// again if policy still allows it, or the client ends its half and the next
// packet makes a fresh session. The client acts on its own authenticated
// check, never on our word alone, so a forged hint costs one Accept at
// most once per StrayEvery.
//
// To know whom to tell, the engine remembers the server halves that ended
// here (a tombstone: the wire and the peer's name) for TombLife, at most
// MaxTombs of them, the oldest forgotten first.

// Bounds of the tombstones and of how often a peer is told.
const (
	TombLife   = 10 * time.Minute
	MaxTombs   = 16384
	StrayEvery = time.Second // at most one hint per wire, and one check per session, this often
)

type tomb struct {
	wire     Wire
	peerName string
	ended    time.Time
	told     time.Time
}

// tombs is a FIFO of ended server halves with an index by wire: a ring
// that grows as needed up to max.
type tombs struct {
	ring       []tomb
	head, size int
	max        int
	byWire     map[Wire]int // index into ring
}

func newTombs(max int) *tombs {
	return &tombs{ring: make([]tomb, min(64, max)), max: max, byWire: map[Wire]int{}}
}

// grow doubles the ring (up to max), oldest first.
func (t *tombs) grow() {
	ring := make([]tomb, min(2*len(t.ring), t.max))
	for i := range t.size {
		ring[i] = t.ring[(t.head+i)%len(t.ring)]
		if j, ok := t.byWire[ring[i].wire]; ok && j == (t.head+i)%len(t.ring) {
			t.byWire[ring[i].wire] = i
		}
	}
	t.ring, t.head = ring, 0
}

func (t *tombs) add(w Wire, peerName string, now time.Time) {
	if i, ok := t.byWire[w]; ok {
		// A wire ended again: its newer end starts a new life, at the back.
		t.ring[i].peerName = "" // the stale slot no longer answers
		delete(t.byWire, w)
	}
	if t.size == len(t.ring) && len(t.ring) < t.max {
		t.grow()
	}
	if t.size == len(t.ring) {
		t.pop()
	}
	i := (t.head + t.size) % len(t.ring)
	t.ring[i] = tomb{wire: w, peerName: peerName, ended: now}
	t.byWire[w] = i
	t.size++
}

func (t *tombs) pop() {
	old := t.ring[t.head]
	if i, ok := t.byWire[old.wire]; ok && i == t.head {
		delete(t.byWire, old.wire)
	}
	t.ring[t.head] = tomb{}
	t.head = (t.head + 1) % len(t.ring)
	t.size--
}

// expire forgets the tombstones older than TombLife: from the front, so a
// tick costs only what expires.
func (t *tombs) expire(now time.Time) {
	for t.size > 0 && now.Sub(t.ring[t.head].ended) >= TombLife {
		t.pop()
	}
}

func (t *tombs) find(w Wire, now time.Time) *tomb {
	i, ok := t.byWire[w]
	if !ok || now.Sub(t.ring[i].ended) >= TombLife || t.ring[i].peerName == "" {
		return nil
	}
	return &t.ring[i]
}

// strayKey: a packet from Peer to one of our keys that no session flow
// took. If it is the client of a server half that ended here, tell it.
func (g *Engine) strayKey(now time.Time, ev StrayKey) []Effect {
	w := Wire{Peer: ev.Peer, Proto: ev.Proto, Key: ev.Key, Role: session.RoleServer}
	if g.byWire[w] != nil {
		return nil // being set up or torn down: its flows come or go
	}
	t := g.tombs.find(w, now)
	if t == nil || !t.told.IsZero() && now.Sub(t.told) < StrayEvery {
		return nil
	}
	t.told = now
	return []Effect{TellUnknown{Peer: ev.Peer, PeerName: t.peerName, Proto: ev.Proto, Key: ev.Key}}
}

// unknownKey: the peer says our packets with a key reach it and no session
// of its own takes them. Our session of that wire, if the caller is its
// peer, is checked with it now.
func (g *Engine) unknownKey(now time.Time, ev UnknownKey) []Effect {
	e := g.byWire[Wire{Peer: ev.CallerIP, Proto: ev.Proto, Key: ev.Key, Role: session.RoleClient}]
	if e == nil || e.state != Established || e.peerName != ev.Caller && e.peerName != "" {
		return nil
	}
	if !e.lastVerify.IsZero() && now.Sub(e.lastVerify) < StrayEvery {
		return nil
	}
	e.lastVerify = now
	g.log.Info("peer says it no longer holds the session; checking", "session", e.s.Tuple.String(), "peer", ev.Caller, "key", ev.Key)
	return []Effect{Verify{ID: e.id, Session: e.s, PeerName: ev.Caller}}
}

// StrayKey: a TCP or UDP packet came over the underlay from Peer to one
// of our keys (its destination port) and no session flow took it: a peer
// still sending on a server half this end no longer has.
type StrayKey struct {
	Peer  netip.Addr
	Proto session.Proto
	Key   uint16
}

// UnknownKey: the peer Caller (data address CallerIP) says packets of ours
// reach it with Key and no session of its own takes them. Not answered:
// the session is checked with the peer ([Verify]) if it is one of ours.
type UnknownKey struct {
	Caller   string
	CallerIP netip.Addr
	Proto    session.Proto
	Key      uint16
}

// TellUnknown: tell the server PeerName (at data address Peer) that its
// packets with Key reach us and no session here takes them; it answers
// nothing that the engine waits for.
type TellUnknown struct {
	Peer     netip.Addr
	PeerName string
	Proto    session.Proto
	Key      uint16
}

func (StrayKey) event()     {}
func (UnknownKey) event()   {}
func (TellUnknown) effect() {}
