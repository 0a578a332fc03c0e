package engine

import (
	"testing"
	"time"

	"nvi/session"
)

// TestDeadKeyTellsTheClient (audit M4): a server half that ended here
// without its client hearing of it (the peer was unreachable) is told of
// by the first packet to its dead key; the client checks its session with
// the server by repeating the Accept, which sets the half up again.
func TestDeadKeyTellsTheClient(t *testing.T) {
	srv := newEngine(t, 12)
	id := acceptAt(t, srv, 0, "a", 61447)
	stray := StrayKey{Peer: ipA, Proto: session.TCP, Key: 61447}

	// While the half lives, a packet that beat its flow is nobody's news.
	step(t, srv, time.Second, stray, "")
	// The peer left the directory, unreachable: our half goes, untold.
	step(t, srv, 2*time.Second, PeerGone{Name: "a"}, "Remove")
	step(t, srv, 2*time.Second, Removed{ID: id}, "")
	tell := only[TellUnknown](t, step(t, srv, 3*time.Second, stray, "TellUnknown"))
	if tell.PeerName != "a" || tell.Peer != ipA || tell.Key != 61447 || tell.Proto != session.TCP {
		t.Fatalf("told %+v", tell)
	}
	// One hint per wire a second, however fast the client sends.
	step(t, srv, 3*time.Second+500*time.Millisecond, stray, "")
	step(t, srv, 4*time.Second, stray, "TellUnknown")
	// Another key, another peer, another protocol: nobody to tell.
	step(t, srv, 5*time.Second, StrayKey{Peer: ipA, Proto: session.TCP, Key: 61448}, "")
	step(t, srv, 5*time.Second, StrayKey{Peer: ipB, Proto: session.TCP, Key: 61447}, "")
	step(t, srv, 5*time.Second, StrayKey{Peer: ipA, Proto: session.UDP, Key: 61447}, "")
	// The client's check is its Accept: the half is set up again, and
	// its packets are no longer stray.
	again := acceptAt(t, srv, 6*time.Second, "a", 61447)
	step(t, srv, 7*time.Second, stray, "")
	// Tombstones last TombLife.
	step(t, srv, 8*time.Second, PeerGone{Name: "a"}, "Remove")
	step(t, srv, 8*time.Second, Removed{ID: again}, "")
	step(t, srv, 8*time.Second+TombLife, Tick{}, "")
	step(t, srv, 9*time.Second+TombLife, stray, "")
}

// TestUnknownKeyChecksTheSession: told by its peer that a key is dead, the
// client checks that session (once a second at most); a hint from another
// server, or about a key of no session, changes nothing.
func TestUnknownKeyChecksTheSession(t *testing.T) {
	g := newEngine(t, 12)
	id, key := client(t, g, session.UDP, Established)
	hint := UnknownKey{Caller: "b", CallerIP: ipB, Proto: session.UDP, Key: key}

	step(t, g, time.Second, UnknownKey{Caller: "x", CallerIP: ipB, Proto: session.UDP, Key: key}, "")
	step(t, g, time.Second, UnknownKey{Caller: "b", CallerIP: ipA, Proto: session.UDP, Key: key}, "")
	step(t, g, time.Second, UnknownKey{Caller: "b", CallerIP: ipB, Proto: session.TCP, Key: key}, "")
	step(t, g, time.Second, UnknownKey{Caller: "b", CallerIP: ipB, Proto: session.UDP, Key: key + 1}, "")
	v := only[Verify](t, step(t, g, time.Second, hint, "Verify"))
	if v.ID != id || v.PeerName != "b" || v.Session.Key != key {
		t.Fatalf("checked %+v", v)
	}
	step(t, g, time.Second+100*time.Millisecond, hint, "")
	// The peer took the Accept again: the session stays.
	step(t, g, time.Second+200*time.Millisecond, Verified{ID: id}, "")
	if s := state(t, g, tuple(session.UDP, 80)); s != Established {
		t.Fatalf("after a good check the session is %s", s)
	}
	// Next time it refuses: the session ends here, and the next packet
	// makes a fresh one.
	step(t, g, 3*time.Second, hint, "Verify")
	step(t, g, 3*time.Second, Verified{ID: id, Err: ErrRefused, Gone: true}, "ReleasePeer Remove")
}

// TestTombs: the tombstones are a FIFO that grows to its bound and then
// forgets the oldest; a wire that ends again is remembered once, from its
// newest end.
func TestTombs(t *testing.T) {
	w := func(k int) Wire { return Wire{Peer: ipA, Proto: session.TCP, Key: uint16(k), Role: session.RoleServer} }
	tb := newTombs(100)
	for k := range 150 {
		tb.add(w(k), "a", t0.Add(time.Duration(k)*time.Second))
	}
	if tb.size != 100 || len(tb.ring) != 100 {
		t.Fatalf("size %d, ring %d; want 100, 100", tb.size, len(tb.ring))
	}
	now := t0.Add(150 * time.Second)
	for k := range 150 {
		if got := tb.find(w(k), now) != nil; got != (k >= 50) {
			t.Fatalf("wire %d remembered: %v", k, got)
		}
	}
	tb.add(w(60), "b", now) // ended again
	if f := tb.find(w(60), now); f == nil || f.peerName != "b" {
		t.Fatalf("wire 60 after it ended again: %+v", f)
	}
	// Its old slot, now the oldest but one, leaves without taking it along.
	tb.add(w(1000), "a", now)
	tb.expire(t0.Add(58*time.Second + TombLife))
	if tb.find(w(60), now) == nil || tb.find(w(58), now) != nil || tb.find(w(59), now) == nil {
		t.Fatalf("after expiry: 58 %v, 59 %v, 60 %v", tb.find(w(58), now), tb.find(w(59), now), tb.find(w(60), now))
	}
	if len(tb.byWire) != tb.size-1 { // the stale slot of 60 has no index
		t.Fatalf("%d indexed, %d in the ring", len(tb.byWire), tb.size)
	}
}
