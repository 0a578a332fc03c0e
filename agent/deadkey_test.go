package agent

import (
	"net"
	"net/netip"
	"testing"

	"nvi/engine"
	"nvi/pipeline"
	"nvi/session"
)

// TestDeadKeyHeals (audit M4), on two whole agents: s2's half of a session
// ends without s1 hearing of it (as when s1 was unreachable); the next
// datagram c sends meets no session on s2's switch, which punts it through
// its stray meter; s2 tells s1, whose agent checks the session by repeating
// its Accept; s2 sets its half up again and the datagram after goes through
// on flows alone.
func TestDeadKeyHeals(t *testing.T) {
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := newPeerWorld(t, map[string]string{"s1": l1.Addr().String(), "s2": l2.Addr().String()})
	a1 := w.agent(t, w.s1, netip.MustParsePrefix("192.0.2.1/24"), peerIPc, nil)
	a2 := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	servePeerAPIOn(t, a1, l1)
	servePeerAPIOn(t, a2, l2)
	u := newUnderlay()
	sw1, sw2 := connectSimSwitch(t, a1, u), connectSimSwitch(t, a2, u)
	c := a1.workloads[20]
	tu := session.Tuple{Tenant: "acme", Proto: session.UDP, Client: peerIPc, Server: peerIPs, Port: 53}

	sw1.in(20, udpFrame(t, c.mac, peerIPc, peerIPs, 40000, 53, "one"))
	if err := eventually(func() bool {
		return delivered(t, sw2, 20, peerIPc, "one") && view(a1, tu).State == engine.Established && view(a2, tu).State == engine.Established
	}); err != nil {
		t.Fatalf("no session: s1 %+v, s2 %+v", view(a1, tu), view(a2, tu))
	}
	v1, v2 := view(a1, tu), view(a2, tu)

	// s2's half ends, s1 untold.
	if err := a2.step(engine.Teardown{ID: v2.ID, Reason: "test: the client was unreachable"}); err != nil {
		t.Fatal(err)
	}
	if err := eventually(func() bool {
		_, ok := a2.eng.Lookup(tu)
		return !ok && sw2.flowCount(pipeline.SessionCookie(v2.Session)) == 0
	}); err != nil {
		t.Fatalf("s2's half did not go: %+v", view(a2, tu))
	}
	if v := view(a1, tu); v.ID != v1.ID || v.State != engine.Established {
		t.Fatalf("s1 heard of it: %+v", v)
	}

	// The next datagram is lost (s1's flow sends it to a dead key) but
	// tells; the half comes back with the same key.
	punts := sw2.punts.Load()
	sw1.in(20, udpFrame(t, c.mac, peerIPc, peerIPs, 40000, 53, "lost"))
	if err := eventually(func() bool { return view(a2, tu).State == engine.Established }); err != nil {
		t.Fatalf("s2's half was not set up again: s1 %+v, s2 %+v", view(a1, tu), view(a2, tu))
	}
	if n := sw2.punts.Load() - punts; n != 1 {
		t.Errorf("s2's switch punted %d packets, want the one to the dead key", n)
	}
	if v := view(a2, tu); v.Session.Key != v1.Session.Key || v.PeerName != "s1" {
		t.Fatalf("s2's new half: %+v; s1's key %d", v.Session, v1.Session.Key)
	}
	if v := view(a1, tu); v.ID != v1.ID {
		t.Fatalf("s1's session was replaced (%+v), not checked", v)
	}
	if delivered(t, sw2, 20, peerIPc, "lost") {
		t.Errorf("the datagram to the dead key was delivered")
	}
	punts = sw1.punts.Load() + sw2.punts.Load()
	sw1.in(20, udpFrame(t, c.mac, peerIPc, peerIPs, 40000, 53, "two"))
	if err := eventually(func() bool { return delivered(t, sw2, 20, peerIPc, "two") }); err != nil {
		t.Fatalf("the session did not heal: %v", err)
	}
	if n := sw1.punts.Load() + sw2.punts.Load() - punts; n != 0 {
		t.Errorf("%d packet-ins after the session healed", n)
	}
}
