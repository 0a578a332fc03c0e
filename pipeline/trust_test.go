package pipeline

// Regression tests for the security audit's data-plane findings (issue 7).
// Each sends the attack frame of the audit's proof of concept through the
// real flows in flowsim and asserts that nothing is delivered, beside a
// legitimate frame that still is.

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"nvi/internal/flowsim"
	"nvi/openflow"
	"nvi/packet"
	"nvi/session"
)

var (
	// An attacker workload of another tenant ("evil") on server A.
	macW = mustMAC("02:ee:00:00:00:05")
	ipW  = netip.MustParseAddr("10.9.0.5")
	evil = Workload{OFPort: 30, MAC: macW, IP: ipW, Zone: 9, Nets: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}

	dataNet  = netip.MustParsePrefix("192.0.2.0/24") // both servers and the router
	mgmtNet  = netip.MustParsePrefix("198.51.100.0/28")
	routerIP = netip.MustParseAddr("192.0.2.254") // also the directory, as in the lab
)

// guarded is a bridge with a way out and its underlay declared, as the
// agent builds it.
func guarded(b Bridge) Bridge {
	b = withWay(b)
	b.Underlay = []netip.Prefix{dataNet, netip.PrefixFrom(routerIP, 32), mgmtNet}
	return b
}

func mustSim(t *testing.T, flows ...*openflow.FlowMod) *flowsim.Switch {
	t.Helper()
	sw, err := flowsim.New(flows...)
	if err != nil {
		t.Fatal(err)
	}
	return sw
}

func sessionFlows(t *testing.T, b Bridge, s session.Session) []*openflow.FlowMod {
	t.Helper()
	fms, err := SessionFlows(b, s)
	if err != nil {
		t.Fatal(err)
	}
	return fms
}

func run(t *testing.T, sw *flowsim.Switch, in uint32, fr []byte) flowsim.Result {
	t.Helper()
	res, err := sw.Run(in, fr)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// nothing fails unless the frame vanished: no output, no packet-in.
func nothing(t *testing.T, what string, res flowsim.Result) {
	t.Helper()
	if len(res.Outputs) != 0 || res.Punted {
		for _, o := range res.Outputs {
			if f, err := packet.Parse(o.Frame); err == nil {
				t.Errorf("%s: went out of port %d as %s:%d -> %s:%d", what, o.Port, f.IPv4Src(), f.L4Src(), f.IPv4Dst(), f.L4Dst())
			}
		}
		if res.Punted {
			t.Errorf("%s: punted to the agent (meter %d)", what, res.Meter)
		}
	}
}

// outOf requires exactly one copy out of port and returns it parsed.
func outOf(t *testing.T, what string, res flowsim.Result, port uint32) packet.Frame {
	t.Helper()
	if len(res.Outputs) != 1 || res.Outputs[0].Port != port || res.Punted {
		t.Fatalf("%s: want one copy out of port %d, got %+v", what, port, res)
	}
	f, err := packet.Parse(res.Outputs[0].Frame)
	if err != nil {
		t.Fatal(err)
	}
	if err := packet.Verify(f.Bytes()); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return f
}

// hairpin is what the underlay router does with a frame addressed to it
// for another server on its subnet: new MACs, same IP header.
func hairpin(t *testing.T, fr []byte, to []byte) []byte {
	t.Helper()
	f, err := packet.Parse(append([]byte(nil), fr...))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetEthSrc(routerMAC); err != nil {
		t.Fatal(err)
	}
	if err := f.SetEthDst(to); err != nil {
		t.Fatal(err)
	}
	return f.Bytes()
}

func tcpFrame(t *testing.T, src, dst net.HardwareAddr, sip, dip netip.Addr, sport, dport uint16, flags uint8, pl []byte) []byte {
	t.Helper()
	b, err := packet.BuildTCP(packet.Header{EthSrc: src, EthDst: dst, Src: sip, Dst: dip}, packet.TCP{SrcPort: sport, DstPort: dport, Seq: 1, Flags: flags, Window: 512}, pl)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWorkloadsDoNotReachTheUnderlay closes C1 point 2, C2's workload path
// and H1: a workload's egress leaves with its server's address, which
// peers trust, so it must never go to another server's peer API or key
// range, to the directory, to the router or to its own host. The internet
// stays reachable exactly as before.
func TestWorkloadsDoNotReachTheUnderlay(t *testing.T) {
	bA, bB := guarded(brA), guarded(brB)
	c := tenantWorkload(wlC)
	s := tenantWorkload(wlS)
	swA := mustSim(t, append(append(append(BaseFlows(bA), WorkloadFlows(bA, c)...), WorkloadFlows(bA, evil)...), sessionFlows(t, bA, clientHalf(session.UDP))...)...)
	swB := mustSim(t, append(append(BaseFlows(bB), WorkloadFlows(bB, s)...), sessionFlows(t, bB, serverHalf(session.UDP))...)...)

	// H1: evil sprays acme's live session key at B's address.
	pl := []byte("forged datagram from tenant evil")
	nothing(t, "egress to the peer's key (H1)", run(t, swA, evil.OFPort, frame(t, session.UDP, macW, GatewayMAC, ipW, ipB, 5000, key, pl)))
	// C1: a forged Accept to B's peer API, and the talk to a forged key.
	for _, dst := range []struct {
		name string
		ip   netip.Addr
		port uint16
	}{
		{"the peer API of another server", ipB, 7470},
		{"a key of another server", ipB, 61500},
		{"the directory on the router", routerIP, 2379},
		{"its own host's services", ipA, 22},
		{"a server elsewhere on the data subnet", netip.MustParseAddr("192.0.2.77"), 7470},
		{"the management network", netip.MustParseAddr("198.51.100.3"), 443},
	} {
		nothing(t, dst.name, run(t, swA, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, dst.ip, 40000, dst.port, packet.TCPSyn, nil)))
	}
	ping, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: routerIP}, packet.ICMPEchoRequest, 1, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	nothing(t, "a ping to the router", run(t, swA, evil.OFPort, ping))

	// The internet is reachable, and its answer comes back.
	out := outOf(t, "egress to the internet", run(t, swA, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, outside, 40000, 443, packet.TCPSyn, nil)), bA.Uplink)
	if out.IPv4Src() != ipA || out.L4Src()&NATPortMask != NATPortBase {
		t.Fatalf("egress left as %s:%d", out.IPv4Src(), out.L4Src())
	}
	back := outOf(t, "the internet's answer", run(t, swA, bA.Uplink, tcpFrame(t, routerMAC, macA, outside, ipA, 443, out.L4Src(), packet.TCPSyn|packet.TCPAck, nil)), evil.OFPort)
	if back.IPv4Dst() != ipW || back.L4Dst() != 40000 {
		t.Fatalf("answer delivered as %s:%d", back.IPv4Dst(), back.L4Dst())
	}
	// acme's own session keeps working: C -> S through both bridges.
	wire := outOf(t, "acme's session out of A", run(t, swA, c.OFPort, frame(t, session.UDP, macC, GatewayMAC, ipC, ipS, 5000, 80, pl)), bA.Uplink)
	got := outOf(t, "acme's session into B", run(t, swB, bB.Uplink, wire.Bytes()), s.OFPort)
	if got.IPv4Src() != ipC {
		t.Fatalf("S sees %s", got.IPv4Src())
	}

	// Without a declared underlay, the server's own address is still off
	// limits.
	bare := withWay(brA)
	sw := mustSim(t, append(BaseFlows(bare), WorkloadFlows(bare, evil)...)...)
	nothing(t, "its own host, no underlay declared", run(t, sw, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, ipA, 40000, 7470, packet.TCPSyn, nil)))
}

// TestForgedAcceptGetsNoChannel is the two-way channel of C1 with B's
// server half for a forged key in place: the attacker's request never
// leaves A, so S never answers it.
func TestForgedAcceptGetsNoChannel(t *testing.T) {
	bA := guarded(brA)
	swA := mustSim(t, append(append(BaseFlows(bA), WorkloadFlows(bA, tenantWorkload(wlC))...), WorkloadFlows(bA, evil)...)...)
	nothing(t, "GET to the forged key", run(t, swA, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, ipB, 40000, 61500, packet.TCPSyn, []byte("GET /secret"))))
}

// TestPortMapRepliesStayOffTheUnderlay: a workload with a port map could
// otherwise send from the mapped port to the underlay as the server.
func TestPortMapRepliesStayOffTheUnderlay(t *testing.T) {
	br := guarded(brB)
	s := tenantWorkload(wlS)
	pm, err := PortMapFlows(br, PortMap{Proto: session.TCP, Port: 8080, Target: s, TargetPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	sw := mustSim(t, append(append(BaseFlows(br), WorkloadFlows(br, s)...), pm...)...)
	nothing(t, "from the mapped port to the directory", run(t, sw, s.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, routerIP, 80, 2379, packet.TCPSyn, nil)))
	nothing(t, "from the mapped port to a peer API", run(t, sw, s.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, ipA, 80, 7470, packet.TCPSyn, nil)))
	outOf(t, "the answer to an internet client", run(t, sw, s.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, outside, 80, 5555, packet.TCPAck, nil)), br.Uplink)
}

func TestUnderlayPrefixes(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		b    Bridge
		want []netip.Prefix
	}{
		{Bridge{DataIP: ipA}, []netip.Prefix{p("192.0.2.1/32")}},
		{Bridge{DataIP: ipA, Underlay: []netip.Prefix{p("192.0.2.9/24"), p("192.0.2.254/32"), p("192.0.2.0/24")}}, []netip.Prefix{p("192.0.2.0/24")}},
		{Bridge{DataIP: ipA, Underlay: []netip.Prefix{p("10.0.0.0/8"), p("2001:db8::/32")}}, []netip.Prefix{p("10.0.0.0/8"), p("192.0.2.1/32")}},
	} {
		got := UnderlayPrefixes(tc.b)
		if len(got) != len(tc.want) {
			t.Errorf("%v: got %v, want %v", tc.b.Underlay, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%v: got %v, want %v", tc.b.Underlay, got, tc.want)
			}
		}
	}
	bad := brA
	bad.Underlay = []netip.Prefix{p("2001:db8::/32")}
	if err := bad.Validate(); err == nil {
		t.Error("an IPv6 underlay prefix was accepted")
	}
}

// TestKeyRangePortsCannotCrossSessions closes H2: on B, one session's
// client half (evil, key 61450) and another's server half (acme, key 61447)
// both match A:61450 -> B:61447. That frame is now dropped above both, and
// no workload may send tenant traffic from a key-range port.
func TestKeyRangePortsCannotCrossSessions(t *testing.T) {
	victim := serverHalf(session.UDP)
	w2 := Workload{OFPort: 31, MAC: mustMAC("02:ee:00:00:00:06"), IP: netip.MustParseAddr("10.9.0.6"), Zone: 9, Nets: evil.Nets}
	w3 := netip.MustParseAddr("10.9.0.7")
	mine := session.Session{
		Tuple: session.Tuple{Tenant: "evil", Proto: session.UDP, Client: w2.IP, Server: w3, Port: 80},
		Role:  session.RoleClient, Key: 61450, Local: session.Endpoint{IP: w2.IP, MAC: w2.MAC, OFPort: w2.OFPort}, Remote: session.Endpoint{IP: w3},
		Peer: session.Peer{Name: "a", IP: ipA, NextHop: macA},
	}
	s := tenantWorkload(wlS)
	fv, fm := sessionFlows(t, brB, victim), sessionFlows(t, brB, mine)
	for _, order := range [][]*openflow.FlowMod{append(fm, fv...), append(fv, fm...)} {
		sw := mustSim(t, append(append(append(BaseFlows(brB), WorkloadFlows(brB, s)...), WorkloadFlows(brB, w2)...), order...)...)
		nothing(t, "A:61450 -> B:61447", run(t, sw, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, 61450, 61447, []byte("payload chosen by evil's W3"))))
		// Both sessions still carry their own traffic.
		got := outOf(t, "acme's C to S", run(t, sw, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, 40000, 61447, []byte("x"))), s.OFPort)
		if got.IPv4Src() != ipC || got.L4Dst() != 80 {
			t.Fatalf("S got %s:%d", got.IPv4Src(), got.L4Dst())
		}
		got = outOf(t, "evil's answer to W2", run(t, sw, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, 61450, 40000, []byte("x"))), w2.OFPort)
		if got.IPv4Src() != w3 || got.L4Src() != 80 {
			t.Fatalf("W2 got %s:%d", got.IPv4Src(), got.L4Src())
		}
		// W2 may not start the attack: tenant traffic from a key-range port.
		nothing(t, "W2 from source port 61447", run(t, sw, w2.OFPort, frame(t, session.UDP, w2.MAC, GatewayMAC, w2.IP, w3, 61447, 80, nil)))
		outOf(t, "W2 from an ordinary port", run(t, sw, w2.OFPort, frame(t, session.UDP, w2.MAC, GatewayMAC, w2.IP, w3, 40000, 80, nil)), brB.Uplink)
	}
	// A server whose service port lies in the key range still answers in
	// its live sessions.
	hi := serverHalf(session.UDP)
	hi.Port, hi.Tuple.Port = 62000, 62000
	sw := mustSim(t, append(append(BaseFlows(brB), WorkloadFlows(brB, s)...), sessionFlows(t, brB, hi)...)...)
	outOf(t, "C to S:62000", run(t, sw, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, 40000, key, nil)), s.OFPort)
	outOf(t, "S:62000 answers", run(t, sw, s.OFPort, frame(t, session.UDP, macS, GatewayMAC, ipS, ipC, 62000, 40000, nil)), brB.Uplink)
}

// TestServerCannotOpenConnectionsToClient closes H3: while C -> S:80
// lives, S's SYN from port 80 to C:22 no longer leaves S's bridge. It goes
// to the agent, marked new, as any new session S -> C would (and policy
// then decides); an invalid packet is dropped; S's real answers still flow.
func TestServerCannotOpenConnectionsToClient(t *testing.T) {
	swA, swB := bridges(t, session.TCP)
	const sport = 40000
	// C's SYN reaches S and S's SYN-ACK reaches C: the session works.
	wire := outOf(t, "C's SYN out of A", run(t, swA, wlC.OFPort, tcpFrame(t, macC, GatewayMAC, ipC, ipS, sport, 80, packet.TCPSyn, nil)), brA.Uplink)
	outOf(t, "C's SYN into S", run(t, swB, brB.Uplink, wire.Bytes()), wlS.OFPort)
	wire = outOf(t, "S's SYN-ACK out of B", run(t, swB, wlS.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, ipC, 80, sport, packet.TCPSyn|packet.TCPAck, nil)), brB.Uplink)
	outOf(t, "S's SYN-ACK into C", run(t, swA, brA.Uplink, wire.Bytes()), wlC.OFPort)

	// The attack of the proof of concept.
	res := run(t, swB, wlS.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, ipC, 80, 22, packet.TCPSyn, nil))
	if len(res.Outputs) != 0 {
		t.Fatalf("S's own SYN to C:22 left B: %+v", res.Outputs)
	}
	if !res.Punted || res.CtState&openflow.CtStateNew == 0 || res.Meter != WorkloadMeter(wlS.OFPort) {
		t.Fatalf("S's SYN to C:22 should ask the agent as new, through S's meter: punted %v ct %#x meter %d", res.Punted, res.CtState, res.Meter)
	}
	// Invalid: a reset for a connection conntrack never saw.
	nothing(t, "S's stray reset", run(t, swB, wlS.OFPort, tcpFrame(t, macS, GatewayMAC, ipS, ipC, 80, 41000, packet.TCPRst, nil)))
}

// TestLocalServerCannotOpenConnectionsToClient: the same on one server.
func TestLocalServerCannotOpenConnectionsToClient(t *testing.T) {
	c, s := tenantWorkload(wlC), tenantWorkload(wlS)
	sw := mustSim(t, append(append(append(BaseFlows(brA), WorkloadFlows(brA, c)...), WorkloadFlows(brA, s)...), sessionFlows(t, brA, localSession(session.UDP))...)...)
	pl := []byte("q")
	outOf(t, "C to S:80", run(t, sw, c.OFPort, frame(t, session.UDP, macC, GatewayMAC, ipC, ipS, 5353, 80, pl)), s.OFPort)
	outOf(t, "S answers C", run(t, sw, s.OFPort, frame(t, session.UDP, macS, GatewayMAC, ipS, ipC, 80, 5353, pl)), c.OFPort)
	res := run(t, sw, s.OFPort, frame(t, session.UDP, macS, GatewayMAC, ipS, ipC, 80, 9999, []byte("pwned")))
	if len(res.Outputs) != 0 {
		t.Fatalf("S's datagram to C:9999 was delivered: %+v", res.Outputs)
	}
	if !res.Punted || res.CtState&openflow.CtStateNew == 0 {
		t.Fatalf("S's datagram to C:9999 should ask the agent as new: %+v", res)
	}
}

// TestTaggedFramesAreDropped closes H7: 802.1Q and QinQ frames, and any
// ethertype but IPv4 and ARP, never pass the spoof guard.
func TestTaggedFramesAreDropped(t *testing.T) {
	bA := guarded(brA)
	sw := mustSim(t, append(BaseFlows(bA), WorkloadFlows(bA, evil)...)...)
	h := packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: outside}
	plain, err := packet.BuildUDP(h, 5000, 53, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	h.VLANs = []uint16{42}
	tagged, err := packet.BuildUDP(h, 5000, 53, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	h.VLANs = []uint16{42, 7}
	qinq, err := packet.BuildUDP(h, 5000, 53, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	arpReq := mustARP(t, macW, ipW, netip.MustParseAddr("10.9.0.1"))
	taggedARP := append(append(append([]byte{}, arpReq[:12]...), 0x81, 0x00, 0x00, 42), arpReq[12:]...)
	ipv6 := append(append([]byte{}, plain[:12]...), 0x86, 0xdd)
	ipv6 = append(ipv6, make([]byte, 40)...)
	for name, fr := range map[string][]byte{"802.1Q": tagged, "QinQ": qinq, "tagged ARP": taggedARP, "IPv6": ipv6} {
		nothing(t, name, run(t, sw, evil.OFPort, fr))
	}
	outOf(t, "the same datagram untagged", run(t, sw, evil.OFPort, plain), bA.Uplink)
	outOf(t, "an untagged ARP request", run(t, sw, evil.OFPort, arpReq), evil.OFPort)

	// From the underlay, a tagged frame reaches no workload through a
	// session; the host gets it, as any frame no NVI flow claims.
	swA, _ := bridges(t, session.UDP)
	h = packet.Header{EthSrc: macB, EthDst: macA, Src: ipB, Dst: ipA}
	fromPeer, err := packet.BuildUDP(h, key, 40000, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	h.VLANs = []uint16{42}
	taggedFromPeer, err := packet.BuildUDP(h, key, 40000, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	outOf(t, "a peer's untagged session frame", run(t, swA, brA.Uplink, fromPeer), wlC.OFPort)
	outOf(t, "a peer's tagged session frame", run(t, swA, brA.Uplink, taggedFromPeer), openflow.PortLocal)
}

// TestFairSlowPath closes H4 and M9's meter: every workload punts through
// its own meter and the uplink through another; what the agent would not
// handle is dropped by flows and never punted.
func TestFairSlowPath(t *testing.T) {
	bA := guarded(brA)
	c := tenantWorkload(wlC)
	sw := mustSim(t, append(append(BaseFlows(bA), WorkloadFlows(bA, c)...), WorkloadFlows(bA, evil)...)...)
	acme := run(t, sw, c.OFPort, frame(t, session.TCP, macC, GatewayMAC, ipC, netip.MustParseAddr("10.1.0.77"), 1000, 80, nil))
	ev := run(t, sw, evil.OFPort, frame(t, session.TCP, macW, GatewayMAC, ipW, netip.MustParseAddr("10.9.0.77"), 1000, 80, nil))
	orig := frame(t, session.UDP, macA, routerMAC, ipA, outside, 1, 2, nil)
	icmp, err := packet.BuildICMPError(packet.Header{EthSrc: routerMAC, EthDst: macA, Src: netip.MustParseAddr("198.51.100.66"), Dst: ipA}, packet.ICMPError{Type: 3, Code: 3}, orig[14:])
	if err != nil {
		t.Fatal(err)
	}
	up := run(t, sw, bA.Uplink, icmp)
	if !acme.Punted || !ev.Punted || !up.Punted {
		t.Fatalf("punted: acme %v evil %v uplink %v", acme.Punted, ev.Punted, up.Punted)
	}
	if acme.Meter != WorkloadMeter(c.OFPort) || ev.Meter != WorkloadMeter(evil.OFPort) || up.Meter != bA.PuntMeter {
		t.Fatalf("meters: acme %d, evil %d, uplink %d", acme.Meter, ev.Meter, up.Meter)
	}
	if acme.Meter == ev.Meter || ev.Meter == up.Meter || acme.Meter == up.Meter {
		t.Fatalf("meters shared: acme %d, evil %d, uplink %d", acme.Meter, ev.Meter, up.Meter)
	}
	// Punted, each through evil's own meter: what the agent handles.
	dst := netip.MustParseAddr("10.9.0.77")
	echo, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst}, packet.ICMPEchoRequest, 7, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := packet.BuildUDP(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst, MF: true, ID: 9}, 5000, 53, bytes.Repeat([]byte("f"), 64))
	if err != nil {
		t.Fatal(err)
	}
	for name, fr := range map[string][]byte{"echo request": echo, "first fragment": first} {
		res := run(t, sw, evil.OFPort, fr)
		if !res.Punted || res.Meter != WorkloadMeter(evil.OFPort) {
			t.Errorf("%s: punted %v through meter %d", name, res.Punted, res.Meter)
		}
	}
	// Dropped by flows: what the agent used to ignore, punt after punt.
	h := packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst}
	proto253, err := packet.BuildIPv4(h, 253, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	h.FragOffset, h.ID = 8, 9
	later, err := packet.BuildIPv4(h, 17, bytes.Repeat([]byte("l"), 16))
	if err != nil {
		t.Fatal(err)
	}
	h.FragOffset = 0
	timestamp, err := packet.BuildIPv4(h, 1, []byte{13, 0, 0xf2, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	if err != nil {
		t.Fatal(err)
	}
	for name, fr := range map[string][]byte{"protocol 253": proto253, "later fragment": later, "ICMP timestamp": timestamp} {
		nothing(t, name, run(t, sw, evil.OFPort, fr))
	}
}

// TestFragNeededBelowMinimumIsIgnored closes M9's forged path-MTU clamp.
func TestFragNeededBelowMinimumIsIgnored(t *testing.T) {
	onWire := frame(t, session.UDP, macA, macB, ipA, ipB, 41000, key, []byte("big"))
	wf, _ := packet.Parse(onWire)
	for _, tc := range []struct {
		mtu uint16
		ok  bool
	}{{68, false}, {575, false}, {576, true}, {1400, true}} {
		fr, err := packet.BuildICMPError(packet.Header{EthSrc: routerMAC, EthDst: macA, Src: routerIP, Dst: ipA},
			packet.ICMPError{Type: 3, Code: 4, MTU: tc.mtu}, wf.L3())
		if err != nil {
			t.Fatal(err)
		}
		f, _ := packet.Parse(fr)
		if err := CheckError(&f); (err == nil) != tc.ok {
			t.Errorf("MTU %d: CheckError = %v, want ok %v", tc.mtu, err, tc.ok)
		}
		if _, err := TranslateError(brA, clientHalf(session.UDP), &f, true); (err == nil) != tc.ok {
			t.Errorf("MTU %d: TranslateError = %v, want ok %v", tc.mtu, err, tc.ok)
		}
	}
}

// TestEgressNeverLeaksInternalAddresses closes L1: what conntrack calls
// invalid leaves no more, with or without the internal 100.127/16 source.
func TestEgressNeverLeaksInternalAddresses(t *testing.T) {
	bA := guarded(brA)
	sw := mustSim(t, append(BaseFlows(bA), WorkloadFlows(bA, evil)...)...)
	reply, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: outside}, packet.ICMPEchoReply, 0xffff, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	nothing(t, "an unsolicited echo reply", run(t, sw, evil.OFPort, reply))
	nothing(t, "a stray reset", run(t, sw, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, outside, 40000, 443, packet.TCPRst, nil)))
	// A connection's first and later packets leave NATed alike.
	var nat uint16
	for i, flags := range []uint8{packet.TCPSyn, packet.TCPAck, packet.TCPAck | packet.TCPPsh} {
		f := outOf(t, "egress", run(t, sw, evil.OFPort, tcpFrame(t, macW, GatewayMAC, ipW, outside, 40000, 443, flags, []byte("x"))), bA.Uplink)
		if f.IPv4Src() != ipA || (i > 0 && f.L4Src() != nat) || internalPrefix.Contains(f.IPv4Src()) {
			t.Fatalf("packet %d left as %s:%d", i, f.IPv4Src(), f.L4Src())
		}
		nat = f.L4Src()
	}
	// An echo request and its answer still work.
	req, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: outside}, packet.ICMPEchoRequest, 5, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := outOf(t, "ping out", run(t, sw, evil.OFPort, req), bA.Uplink); f.IPv4Src() != ipA {
		t.Fatalf("ping left as %s", f.IPv4Src())
	}
}

// TestDenyStray: what the agent will not make a session of gets a drop
// flow, and the drop flow stops exactly that traffic.
func TestDenyStray(t *testing.T) {
	bA := guarded(brA)
	dst := netip.MustParseAddr("10.9.0.77")
	reply, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst}, packet.ICMPEchoReply, 1, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	request, err := packet.BuildICMPEcho(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst}, packet.ICMPEchoRequest, 1, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	gre, err := packet.BuildIPv4(packet.Header{EthSrc: macW, EthDst: GatewayMAC, Src: ipW, Dst: dst}, 47, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	parse := func(b []byte) *packet.Frame {
		f, err := packet.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		return &f
	}
	if DenyStray(bA, evil.OFPort, parse(frame(t, session.UDP, macW, GatewayMAC, ipW, dst, 1, 2, nil))) != nil {
		t.Error("a UDP packet got a stray drop flow; sessions and Deny handle those")
	}
	for name, fr := range map[string][]byte{"stray echo reply": reply, "GRE": gre} {
		fm := DenyStray(bA, evil.OFPort, parse(fr))
		if fm == nil || fm.HardTimeout != bA.DenyTimeout || fm.Cookie != uint64(DenyCookie(evil.OFPort)) {
			t.Fatalf("%s: drop flow %+v", name, fm)
		}
		sw := mustSim(t, append(append(BaseFlows(bA), WorkloadFlows(bA, evil)...), fm)...)
		if name == "GRE" {
			nothing(t, name, run(t, sw, evil.OFPort, fr))
			continue
		}
		nothing(t, name+" after its drop flow", run(t, sw, evil.OFPort, fr))
		if res := run(t, sw, evil.OFPort, request); !res.Punted {
			t.Errorf("an echo request to the same address is no longer punted: %+v", res)
		}
	}
}

// TestErrorSourceMustBeThePeerOrTheUnderlay closes the rest of M9: an ICMP
// error about a session's packet counts only from the peer itself or from
// the underlay's own routers.
func TestErrorSourceMustBeThePeerOrTheUnderlay(t *testing.T) {
	onWire := frame(t, session.UDP, macA, macB, ipA, ipB, 41000, key, []byte("x"))
	wf, _ := packet.Parse(onWire)
	br := brA
	br.Underlay = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.250.0.0/16")}
	for _, tc := range []struct {
		src string
		ok  bool
	}{
		{ipB.String(), true},      // the peer
		{routerIP.String(), true}, // the data subnet's router
		{"10.250.3.1", true},      // a router of another underlay prefix
		{"203.0.113.2", false},    // the internet
		{"100.127.0.9", false},    // an egress address
	} {
		fr, err := packet.BuildICMPError(packet.Header{EthSrc: routerMAC, EthDst: macA, Src: netip.MustParseAddr(tc.src), Dst: ipA},
			packet.ICMPError{Type: 3, Code: 4, MTU: 1400}, wf.L3())
		if err != nil {
			t.Fatal(err)
		}
		f, _ := packet.Parse(fr)
		if err := CheckErrorSource(br, &f); (err == nil) != tc.ok {
			t.Errorf("error from %s: CheckErrorSource = %v, want ok %v", tc.src, err, tc.ok)
		}
	}
}
