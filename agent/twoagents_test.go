package agent

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"nvi/engine"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/session"
)

// TestTwoAgents runs two whole agents in one process, without root: each
// the controller of a simulated switch running the real pipeline (package
// internal/flowsim behind OpenFlow), both on one embedded directory, the
// peer API between them over mutual TLS on loopback, and an in-memory
// underlay between the switches. A workload's first datagram makes a
// session the way it does on Open vSwitch: packet-in, look-up, way back
// beside the Accept, the peer's flows and the first packet in one write,
// then the way out. The answer comes back through the flows; a teardown at
// one end takes both halves down.
func TestTwoAgents(t *testing.T) {
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
	c, s := a1.workloads[20], a2.workloads[20]

	sw1.in(20, udpFrame(t, c.mac, peerIPc, peerIPs, 40000, 53, "question"))
	if err := eventually(func() bool { return delivered(t, sw2, 20, peerIPc, "question") }); err != nil {
		t.Fatalf("s never got the first datagram: %v (got %d frames)", err, len(sw2.received(20)))
	}
	tu := session.Tuple{Tenant: "acme", Proto: session.UDP, Client: peerIPc, Server: peerIPs, Port: 53}
	var v1, v2 engine.View
	if err := eventually(func() bool {
		v1, v2 = view(a1, tu), view(a2, tu)
		return v1.State == engine.Established && v2.State == engine.Established
	}); err != nil {
		t.Fatalf("not established at both ends: s1 %+v, s2 %+v", v1, v2)
	}
	if v1.Session.Key != v2.Session.Key || v1.Session.Role != session.RoleClient || v2.PeerName != "s1" {
		t.Fatalf("the halves disagree: s1 %+v, s2 %+v", v1.Session, v2.Session)
	}
	if n := sw1.punts.Load(); n != 1 {
		t.Errorf("s1's switch punted %d packets for the first datagram, want 1", n)
	}
	if n1, n2 := sw1.flowCount(pipeline.SessionCookie(v1.Session)), sw2.flowCount(pipeline.SessionCookie(v2.Session)); n1 != 2 || n2 != 3 {
		t.Errorf("session flows: %d on s1 (want its two ways), %d on s2 (want three)", n1, n2)
	}

	// The answer and the next datagram go by the flows alone.
	punts := sw1.punts.Load() + sw2.punts.Load()
	sw2.in(20, udpFrame(t, s.mac, peerIPs, peerIPc, 53, 40000, "answer"))
	sw1.in(20, udpFrame(t, c.mac, peerIPc, peerIPs, 40000, 53, "more"))
	if err := eventually(func() bool {
		return delivered(t, sw1, 20, peerIPs, "answer") && delivered(t, sw2, 20, peerIPc, "more")
	}); err != nil {
		t.Fatalf("the session's flows did not carry the answer and the next datagram: %v", err)
	}
	if n := sw1.punts.Load() + sw2.punts.Load(); n != punts {
		t.Errorf("%d packet-ins for an established session's datagrams", n-punts)
	}

	// c leaves: both halves go, flows and all.
	a1.unbindPort(w.ctx, 20, "test")
	if err := eventually(func() bool {
		_, ok1 := a1.eng.Lookup(tu)
		_, ok2 := a2.eng.Lookup(tu)
		return !ok1 && !ok2 && sw1.flowCount(pipeline.SessionCookie(v1.Session)) == 0 && sw2.flowCount(pipeline.SessionCookie(v2.Session)) == 0
	}); err != nil {
		t.Fatalf("after c left: s1 has %+v, s2 %+v", view(a1, tu), view(a2, tu))
	}
}

func view(a *Agent, tu session.Tuple) engine.View {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, _ := a.eng.Lookup(tu)
	return v
}

// delivered reports whether sw sent out of port a datagram from src with
// payload.
func delivered(t *testing.T, sw *simSwitch, port uint32, src netip.Addr, payload string) bool {
	for _, fr := range sw.received(port) {
		f, err := packet.Parse(fr)
		if err != nil {
			t.Errorf("a frame out of port %d does not parse: %v", port, err)
			continue
		}
		if f.IPv4Src() == src && bytes.Equal(f.Payload(), []byte(payload)) {
			return true
		}
	}
	return false
}

func udpFrame(t *testing.T, mac net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload string) []byte {
	t.Helper()
	b, err := packet.BuildUDP(packet.Header{EthSrc: mac, EthDst: pipeline.GatewayMAC, Src: src, Dst: dst, ID: 1}, sport, dport, []byte(payload))
	if err != nil {
		t.Fatal(fmt.Errorf("building a datagram: %w", err))
	}
	return b
}
