package pipeline

import (
	"bytes"
	"cmp"
	"net"
	"net/netip"
	"strings"
	"testing"

	"nvi/internal/flowsim"
	"nvi/openflow"
	"nvi/packet"
	"nvi/session"
)

// The scenario of DESIGN.md: client C (10.1.0.2) on server A (192.0.2.1),
// server workload S (10.1.0.3) on server B (192.0.2.2), S listening on 80.
var (
	macA = mustMAC("02:00:c0:00:02:01")
	macB = mustMAC("02:00:c0:00:02:02")
	macC = mustMAC("02:aa:00:00:00:02")
	macS = mustMAC("02:aa:00:00:00:03")
	ipA  = netip.MustParseAddr("192.0.2.1")
	ipB  = netip.MustParseAddr("192.0.2.2")
	ipC  = netip.MustParseAddr("10.1.0.2")
	ipS  = netip.MustParseAddr("10.1.0.3")

	brA = Bridge{Uplink: 1, DataIP: ipA, DataMAC: macA, Keys: session.DefaultKeyRange, PuntMeter: 1, StrayMeter: 2, DenyTimeout: 5}
	brB = Bridge{Uplink: 1, DataIP: ipB, DataMAC: macB, Keys: session.DefaultKeyRange, PuntMeter: 1, StrayMeter: 2, DenyTimeout: 5}

	wlC = Workload{OFPort: 10, MAC: macC, IP: ipC}
	wlS = Workload{OFPort: 20, MAC: macS, IP: ipS}
)

const key = 61447

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func tuple(p session.Proto) session.Tuple {
	return session.Tuple{Tenant: "acme", Proto: p, Client: ipC, Server: ipS, Port: 80}
}

// The two halves of one cross-server session.
func clientHalf(p session.Proto) session.Session {
	return session.Session{
		Tuple: tuple(p), Role: session.RoleClient, Key: key,
		Local:  session.Endpoint{IP: ipC, MAC: macC, OFPort: wlC.OFPort},
		Remote: session.Endpoint{IP: ipS},
		Peer:   session.Peer{Name: "b", IP: ipB, NextHop: macB},
	}
}

func serverHalf(p session.Proto) session.Session {
	return session.Session{
		Tuple: tuple(p), Role: session.RoleServer, Key: key, Zone: 7,
		Local:  session.Endpoint{IP: ipS, MAC: macS, OFPort: wlS.OFPort},
		Remote: session.Endpoint{IP: ipC},
		Peer:   session.Peer{Name: "a", IP: ipA, NextHop: macA},
	}
}

func localSession(p session.Proto) session.Session {
	return session.Session{
		Tuple: tuple(p), Role: session.RoleLocal, Zone: 7,
		Local:  session.Endpoint{IP: ipC, MAC: macC, OFPort: wlC.OFPort},
		Remote: session.Endpoint{IP: ipS, MAC: macS, OFPort: wlS.OFPort},
	}
}

// TestSessionFlows pins the flow formulation of DESIGN.md: two flows per
// client half, in the tables and with the rewrites the table there lists;
// where this server holds the server workload, the way back goes through
// the reply gate and forwards only replies.
func TestSessionFlows(t *testing.T) {
	tests := []struct {
		name string
		br   Bridge
		s    session.Session
		want [][3]string // table, match, actions
	}{
		{"A out/in, tcp", brA, clientHalf(session.TCP), [][3]string{
			{"session_out", "in_port=10,tcp,nw_src=10.1.0.2,nw_dst=10.1.0.3,tcp_dst=80",
				"set_field:02:00:c0:00:02:01->eth_src,set_field:02:00:c0:00:02:02->eth_dst,set_field:192.0.2.1->ip_src,set_field:192.0.2.2->ip_dst,set_field:61447->tcp_dst,output:1"},
			{"session_in", "in_port=1,vlan_vid=0x0/0x1000,tcp,nw_src=192.0.2.2,nw_dst=192.0.2.1,tcp_src=61447",
				"set_field:02:00:00:4e:56:49->eth_src,set_field:02:aa:00:00:00:02->eth_dst,set_field:10.1.0.3->ip_src,set_field:10.1.0.2->ip_dst,set_field:80->tcp_src,output:10"},
		}},
		{"B in/out, udp", brB, serverHalf(session.UDP), [][3]string{
			{"session_in", "in_port=1,vlan_vid=0x0/0x1000,udp,nw_src=192.0.2.1,nw_dst=192.0.2.2,udp_dst=61447",
				"set_field:02:00:00:4e:56:49->eth_src,set_field:02:aa:00:00:00:03->eth_dst,set_field:10.1.0.2->ip_src,set_field:10.1.0.3->ip_dst,set_field:80->udp_dst,ct(commit,zone=7),output:20"},
			{"reply_gate", "in_port=20,udp,nw_src=10.1.0.3,nw_dst=10.1.0.2,udp_src=80", "ct(table=27,zone=7)"},
			{"reply_check", "in_port=20,udp,nw_src=10.1.0.3,nw_dst=10.1.0.2,udp_src=80,ct_state=+est+rpl-inv+trk",
				"set_field:02:00:c0:00:02:02->eth_src,set_field:02:00:c0:00:02:01->eth_dst,set_field:192.0.2.2->ip_src,set_field:192.0.2.1->ip_dst,set_field:61447->udp_src,output:1"},
		}},
		{"same server, MACs only", brA, localSession(session.TCP), [][3]string{
			{"session_out", "in_port=10,tcp,nw_src=10.1.0.2,nw_dst=10.1.0.3,tcp_dst=80",
				"set_field:02:00:00:4e:56:49->eth_src,set_field:02:aa:00:00:00:03->eth_dst,ct(commit,zone=7),output:20"},
			{"reply_gate", "in_port=20,tcp,nw_src=10.1.0.3,nw_dst=10.1.0.2,tcp_src=80", "ct(table=27,zone=7)"},
			{"reply_check", "in_port=20,tcp,nw_src=10.1.0.3,nw_dst=10.1.0.2,tcp_src=80,ct_state=+est+rpl-inv+trk",
				"set_field:02:00:00:4e:56:49->eth_src,set_field:02:aa:00:00:00:02->eth_dst,output:10"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fms, err := SessionFlows(tt.br, tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if len(fms) != len(tt.want) {
				t.Fatalf("got %d flows, want %d", len(fms), len(tt.want))
			}
			for i, fm := range fms {
				got := [3]string{Table(fm.TableID).String(), fm.Match.String(), openflow.InstructionsString(fm.Instructions)}
				if got != tt.want[i] {
					t.Errorf("flow %d:\n got  %q\n want %q", i, got, tt.want[i])
				}
				if fm.Cookie != uint64(SessionCookie(tt.s)) || fm.Priority != prioSession || fm.Command != openflow.FlowAdd {
					t.Errorf("flow %d: cookie %#x priority %d command %d", i, fm.Cookie, fm.Priority, fm.Command)
				}
				if fm.IdleTimeout != 0 || fm.HardTimeout != 0 {
					t.Errorf("flow %d has a timeout: the agent, not the switch, expires sessions", i)
				}
			}
		})
	}
	if _, err := SessionFlows(brA, clientHalf(session.ICMP)); err == nil {
		t.Error("ICMP session got flows; it must take the slow path")
	}
}

func TestCookies(t *testing.T) {
	for _, s := range []session.Session{clientHalf(session.TCP), serverHalf(session.UDP), localSession(session.UDP), clientHalf(session.ICMP)} {
		c := SessionCookie(s)
		if c.Feature() != FeatureSession {
			t.Fatalf("%s: feature %v", s.Role, c.Feature())
		}
		id, err := ParseSessionCookie(c)
		if err != nil {
			t.Fatal(err)
		}
		if id.Role != s.Role || id.Proto != s.Proto {
			t.Errorf("%s: cookie %s reads back as %+v", s.Role, c, id)
		}
		if s.Role == session.RoleLocal {
			if id.Port != s.Port || id.ClientOFPort != s.Local.OFPort || id.ServerOFPort != s.Remote.OFPort {
				t.Errorf("local cookie %s reads back as %+v", c, id)
			}
		} else if id.Key != s.Key || id.Peer != s.Peer.IP {
			t.Errorf("%s cookie %s reads back as %+v", s.Role, c, id)
		}
	}
	// The two ends of one session, and two roles toward one peer with one
	// key, never share a cookie.
	a, b := clientHalf(session.TCP), serverHalf(session.TCP)
	b.Peer.IP = a.Peer.IP
	if SessionCookie(a) == SessionCookie(b) {
		t.Error("client and server roles share a cookie")
	}
	if _, err := ParseSessionCookie(EndpointCookie(3)); err == nil {
		t.Error("an endpoint cookie parsed as a session cookie")
	}
}

// TestAdoptSession reads every kind of half back from its flows, as an agent
// does after a restart.
func TestAdoptSession(t *testing.T) {
	for _, tc := range []struct {
		br Bridge
		s  session.Session
	}{
		{brA, clientHalf(session.TCP)}, {brB, serverHalf(session.UDP)}, {brA, localSession(session.UDP)},
	} {
		fms, err := SessionFlows(tc.br, tc.s)
		if err != nil {
			t.Fatal(err)
		}
		var installed []InstalledFlow
		for i := len(fms) - 1; i >= 0; i-- { // the switch's order is not ours
			installed = append(installed, InstalledFlow{Cookie: Cookie(fms[i].Cookie), Table: Table(fms[i].TableID), Match: fms[i].Match, Instructions: fms[i].Instructions})
		}
		got, err := AdoptSession(tc.br, installed)
		if err != nil {
			t.Fatalf("%s: %v", tc.s.Role, err)
		}
		want := tc.s
		want.Tenant = "" // the caller fills it from the workload's port
		want.Peer.Name = ""
		if tc.s.Role == session.RoleClient {
			want.Remote.MAC = nil
		}
		if !sameSession(got, want) {
			t.Errorf("%s: adopted\n %+v\nwant\n %+v", tc.s.Role, got, want)
		}
		if _, err := AdoptSession(tc.br, installed[:1]); err == nil {
			t.Errorf("%s: adopted a session from one flow", tc.s.Role)
		}
	}
}

func sameSession(a, b session.Session) bool {
	eq := func(x, y session.Endpoint) bool {
		return x.IP == y.IP && bytes.Equal(x.MAC, y.MAC) && x.OFPort == y.OFPort
	}
	return a.Tuple == b.Tuple && a.Role == b.Role && a.Key == b.Key && eq(a.Local, b.Local) && eq(a.Remote, b.Remote) &&
		a.Peer.IP == b.Peer.IP && bytes.Equal(a.Peer.NextHop, b.Peer.NextHop) && a.Peer.Name == b.Peer.Name
}

// bridgeA and bridgeB are the two servers' switches with their full
// pipelines and the session installed.
func bridges(t *testing.T, p session.Proto) (*flowsim.Switch, *flowsim.Switch) {
	t.Helper()
	a := append(BaseFlows(brA), WorkloadFlows(brA, wlC)...)
	b := append(BaseFlows(brB), WorkloadFlows(brB, wlS)...)
	if p.HasPorts() {
		ca, err := SessionFlows(brA, clientHalf(p))
		if err != nil {
			t.Fatal(err)
		}
		sb, err := SessionFlows(brB, serverHalf(p))
		if err != nil {
			t.Fatal(err)
		}
		a, b = append(a, ca...), append(b, sb...)
	}
	swA, err := flowsim.New(a...)
	if err != nil {
		t.Fatal(err)
	}
	swB, err := flowsim.New(b...)
	if err != nil {
		t.Fatal(err)
	}
	return swA, swB
}

func frame(t *testing.T, p session.Proto, ethSrc, ethDst net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	h := packet.Header{EthSrc: ethSrc, EthDst: ethDst, Src: src, Dst: dst, DF: true, ID: 0x1234}
	var b []byte
	var err error
	if p == session.TCP {
		b, err = packet.BuildTCP(h, packet.TCP{SrcPort: sport, DstPort: dport, Seq: 7, Flags: packet.TCPSyn | packet.TCPAck, Window: 512}, payload)
	} else {
		b, err = packet.BuildUDP(h, sport, dport, payload)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// want describes every header a frame must have after translation.
type want struct {
	port           uint32
	ethSrc, ethDst net.HardwareAddr
	src, dst       netip.Addr
	sport, dport   uint16
}

// one runs a frame through a switch, requires exactly one output, and checks
// every header, every checksum and the untouched payload.
func one(t *testing.T, sw *flowsim.Switch, in uint32, fr []byte, w want, payload []byte) []byte {
	t.Helper()
	res, err := sw.Run(in, fr)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outputs) != 1 || res.Punted {
		t.Fatalf("got %d outputs (punted %v), want exactly one; path %x", len(res.Outputs), res.Punted, res.Path)
	}
	out := res.Outputs[0]
	if err := packet.Verify(out.Frame); err != nil {
		t.Fatalf("translated frame is broken: %v", err)
	}
	f, err := packet.Parse(out.Frame)
	if err != nil {
		t.Fatal(err)
	}
	got := want{out.Port, f.EthSrc(), f.EthDst(), f.IPv4Src(), f.IPv4Dst(), f.L4Src(), f.L4Dst()}
	if got.port != w.port || !bytes.Equal(got.ethSrc, w.ethSrc) || !bytes.Equal(got.ethDst, w.ethDst) ||
		got.src != w.src || got.dst != w.dst || got.sport != w.sport || got.dport != w.dport {
		t.Fatalf("translated frame\n got  %+v\n want %+v", got, w)
	}
	if !bytes.Equal(f.Payload(), payload) {
		t.Fatalf("payload changed")
	}
	if len(out.Frame) != len(fr) {
		t.Fatalf("frame grew from %d to %d bytes: no encapsulation, ever", len(fr), len(out.Frame))
	}
	return out.Frame
}

// TestTranslation sends real frames through both servers' pipelines, both
// ways, and checks that the underlay sees only server addresses and the key,
// that the workloads see only each other, and that checksums stay right.
func TestTranslation(t *testing.T) {
	for _, p := range []session.Proto{session.TCP, session.UDP} {
		t.Run(p.String(), func(t *testing.T) {
			swA, swB := bridges(t, p)
			payload := bytes.Repeat([]byte("nvi!"), 300) // a full-size 1500-byte IP packet, almost
			const sport = 40123
			// C -> S: leaves A as A -> B, to the key, client port unchanged.
			c2s := frame(t, p, macC, GatewayMAC, ipC, ipS, sport, 80, payload)
			wire := one(t, swA, wlC.OFPort, c2s, want{brA.Uplink, macA, macB, ipA, ipB, sport, key}, payload)
			// ... and reaches S as C -> S:80.
			one(t, swB, brB.Uplink, wire, want{wlS.OFPort, GatewayMAC, macS, ipC, ipS, sport, 80}, payload)
			// S -> C: leaves B as B -> A from the key.
			s2c := frame(t, p, macS, GatewayMAC, ipS, ipC, 80, sport, payload)
			wire = one(t, swB, wlS.OFPort, s2c, want{brB.Uplink, macB, macA, ipB, ipA, key, sport}, payload)
			// ... and reaches C as S:80 -> C.
			one(t, swA, brA.Uplink, wire, want{wlC.OFPort, GatewayMAC, macC, ipS, ipC, 80, sport}, payload)
		})
	}
}

// TestFirstPacketFromThePeer: the server's end delivers a session's first
// packet, passed in the Accept as the client sent it, exactly as if the
// client's session_out flow had sent it over the underlay; anything that is
// not the session's first packet is refused.
func TestFirstPacketFromThePeer(t *testing.T) {
	for _, p := range []session.Proto{session.TCP, session.UDP} {
		t.Run(p.String(), func(t *testing.T) {
			swA, swB := bridges(t, p)
			payload := []byte("first")
			c2s := frame(t, p, macC, GatewayMAC, ipC, ipS, 40123, 80, payload)
			viaA := one(t, swA, wlC.OFPort, c2s, want{brA.Uplink, macA, macB, ipA, ipB, 40123, key}, payload)
			wire, err := FromPeer(brB, serverHalf(p), c2s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(wire, viaA) {
				t.Fatalf("the peer's translation differs from the client's session_out flow:\n got %x\nwant %x", wire, viaA)
			}
			one(t, swB, brB.Uplink, wire, want{wlS.OFPort, GatewayMAC, macS, ipC, ipS, 40123, 80}, payload)
			for name, bad := range map[string][]byte{
				"another port":   frame(t, p, macC, GatewayMAC, ipC, ipS, 40123, 81, payload),
				"another client": frame(t, p, macC, GatewayMAC, netip.MustParseAddr("10.1.0.9"), ipS, 40123, 80, payload),
				"garbage":        []byte("not a frame"),
			} {
				if _, err := FromPeer(brB, serverHalf(p), bad); err == nil {
					t.Errorf("%s: accepted as the session's first packet", name)
				}
			}
			if _, err := FromPeer(brA, clientHalf(p), c2s); err == nil {
				t.Error("a client half delivered a first packet")
			}
		})
	}
}

// TestSessionPathFlows: a client half goes in one way at a time, the way
// back (session_in) before the peer is asked, the way out after.
func TestSessionPathFlows(t *testing.T) {
	back, err := SessionPathFlows(brA, clientHalf(session.TCP), true)
	if err != nil || len(back) != 1 || Table(back[0].TableID) != SessionIn {
		t.Fatalf("the way back: %v, %v", back, err)
	}
	out, err := SessionPathFlows(brA, clientHalf(session.TCP), false)
	if err != nil || len(out) != 1 || Table(out[0].TableID) != SessionOut {
		t.Fatalf("the way out: %v, %v", out, err)
	}
	if _, err := SessionPathFlows(brB, serverHalf(session.TCP), true); err == nil {
		t.Error("a server half split into ways")
	}
}

func TestLocalTranslation(t *testing.T) {
	fms, err := SessionFlows(brA, localSession(session.UDP))
	if err != nil {
		t.Fatal(err)
	}
	sw, err := flowsim.New(append(append(BaseFlows(brA), WorkloadFlows(brA, wlC)...), append(WorkloadFlows(brB, wlS), fms...)...)...)
	if err != nil {
		t.Fatal(err)
	}
	pl := []byte("same server")
	one(t, sw, wlC.OFPort, frame(t, session.UDP, macC, GatewayMAC, ipC, ipS, 5353, 80, pl), want{wlS.OFPort, GatewayMAC, macS, ipC, ipS, 5353, 80}, pl)
	one(t, sw, wlS.OFPort, frame(t, session.UDP, macS, GatewayMAC, ipS, ipC, 80, 5353, pl), want{wlC.OFPort, GatewayMAC, macC, ipS, ipC, 80, 5353}, pl)
}

// TestBasePipeline checks what happens to frames that no session covers.
func TestBasePipeline(t *testing.T) {
	swA, swB := bridges(t, session.ICMP) // no session flows at all
	pl := []byte("x")
	tests := []struct {
		name   string
		sw     *flowsim.Switch
		in     uint32
		fr     []byte
		punted bool
		meter  uint32 // of a punt; 0: the in port's own
		out    uint32 // 0: dropped
	}{
		{"first packet of a new session is punted", swA, wlC.OFPort, frame(t, session.TCP, macC, GatewayMAC, ipC, ipS, 1000, 80, pl), true, 0, 0},
		{"spoofed source address is dropped", swA, wlC.OFPort, frame(t, session.TCP, macC, GatewayMAC, netip.MustParseAddr("10.1.0.9"), ipS, 1000, 80, pl), false, 0, 0},
		{"spoofed source MAC is dropped", swA, wlC.OFPort, frame(t, session.TCP, macS, GatewayMAC, ipC, ipS, 1000, 80, pl), false, 0, 0},
		{"unknown port is dropped", swA, 99, frame(t, session.TCP, macC, GatewayMAC, ipC, ipS, 1000, 80, pl), false, 0, 0},
		{"broadcast is dropped", swA, wlC.OFPort, frame(t, session.UDP, macC, GatewayMAC, ipC, netip.MustParseAddr("255.255.255.255"), 68, 67, pl), false, 0, 0},
		{"host traffic leaves untouched", swA, openflow.PortLocal, frame(t, session.TCP, macA, macB, ipA, ipB, 40000, 2379, pl), false, 0, brA.Uplink},
		{"underlay traffic reaches the host untouched", swB, brB.Uplink, frame(t, session.TCP, macA, macB, ipA, ipB, 40000, 2379, pl), false, 0, openflow.PortLocal},
		{"traffic to a key without a session goes to the agent through the stray meter, not to the host", swB, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, 40000, key, pl), true, brB.StrayMeter, 0},
		{"traffic from a key to a key is dropped", swB, brB.Uplink, frame(t, session.UDP, macA, macB, ipA, ipB, key, key, pl), false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tt.sw.Run(tt.in, tt.fr)
			if err != nil {
				t.Fatal(err)
			}
			if res.Punted != tt.punted {
				t.Errorf("punted = %v, want %v", res.Punted, tt.punted)
			}
			if meter := cmp.Or(tt.meter, WorkloadMeter(tt.in)); tt.punted && res.Meter != meter {
				t.Errorf("punt went through meter %d, want %d", res.Meter, meter)
			}
			switch {
			case tt.out == 0 && len(res.Outputs) != 0:
				t.Errorf("frame went out of port %d, want dropped", res.Outputs[0].Port)
			case tt.out != 0 && (len(res.Outputs) != 1 || res.Outputs[0].Port != tt.out || !bytes.Equal(res.Outputs[0].Frame, tt.fr)):
				t.Errorf("want the frame unchanged out of port %d, got %+v", tt.out, res.Outputs)
			}
		})
	}
}

func TestDenyFlowDrops(t *testing.T) {
	tu := tuple(session.TCP)
	sw, err := flowsim.New(append(append(BaseFlows(brA), WorkloadFlows(brA, wlC)...), Deny(brA, wlC.OFPort, tu))...)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := sw.Run(wlC.OFPort, frame(t, session.TCP, macC, GatewayMAC, ipC, ipS, 1000, 80, nil))
	if !res.Dropped || res.Punted {
		t.Fatalf("denied destination: %+v, want dropped without a punt", res)
	}
	res, _ = sw.Run(wlC.OFPort, frame(t, session.TCP, macC, GatewayMAC, ipC, ipS, 1000, 443, nil))
	if !res.Punted {
		t.Fatalf("another port of the same destination was not asked about: %+v", res)
	}
	if d := Deny(brA, wlC.OFPort, tu); d.HardTimeout != brA.DenyTimeout || d.IdleTimeout != 0 {
		t.Fatalf("drop flow lives %d/%d s, want hard %d", d.IdleTimeout, d.HardTimeout, brA.DenyTimeout)
	}
}

// TestARPResponder: every ARP request a workload sends is answered by flows
// with the gateway MAC; its own address is not answered; forged ARP is
// dropped.
func TestARPResponder(t *testing.T) {
	sw, err := flowsim.New(append(BaseFlows(brA), WorkloadFlows(brA, wlC)...)...)
	if err != nil {
		t.Fatal(err)
	}
	req, err := packet.BuildARPRequest(macC, ipC, ipS)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sw.Run(wlC.OFPort, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outputs) != 1 || res.Outputs[0].Port != wlC.OFPort {
		t.Fatalf("ARP request not answered back to the asker: %+v", res)
	}
	f, err := packet.Parse(res.Outputs[0].Frame)
	if err != nil {
		t.Fatal(err)
	}
	if f.ARPOp() != 2 || !bytes.Equal(f.ARPSHA(), GatewayMAC) || f.ARPSPA() != ipS ||
		!bytes.Equal(f.ARPTHA(), macC) || f.ARPTPA() != ipC ||
		!bytes.Equal(f.EthSrc(), GatewayMAC) || !bytes.Equal(f.EthDst(), macC) {
		t.Fatalf("bad ARP reply: op %d %s is-at %s, to %s/%s; eth %s -> %s",
			f.ARPOp(), f.ARPSPA(), f.ARPSHA(), f.ARPTPA(), f.ARPTHA(), f.EthSrc(), f.EthDst())
	}
	for name, fr := range map[string][]byte{
		"probe for its own address":    mustARP(t, macC, ipC, ipC),
		"request for a forged address": mustARP(t, macC, netip.MustParseAddr("10.1.0.77"), ipS),
		"request with a forged MAC":    mustARP(t, macS, ipC, ipS),
	} {
		res, err := sw.Run(wlC.OFPort, fr)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Outputs) != 0 || res.Punted {
			t.Errorf("%s: answered or punted: %+v", name, res)
		}
	}
}

func mustARP(t *testing.T, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	b, err := packet.BuildARPRequest(sha, spa, tpa)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTranslateEcho runs an ICMP echo through both agents' slow paths and
// checks that it ends up exactly as a flow would leave it, plus the echo
// identifier: the key on the underlay, the client's own at the workloads.
func TestTranslateEcho(t *testing.T) {
	const id, seq = 0x4242, 3
	c, s := clientHalf(session.ICMP), serverHalf(session.ICMP)
	c.Port, s.Port = id, id
	c.Tuple.Port, s.Tuple.Port = id, id
	step := func(br Bridge, ss session.Session, fr []byte, toServer bool, w want, wantID uint16) []byte {
		t.Helper()
		f, err := packet.Parse(fr)
		if err != nil {
			t.Fatal(err)
		}
		out, err := TranslateEcho(br, ss, &f, toServer)
		if err != nil {
			t.Fatal(err)
		}
		if err := packet.Verify(f.Bytes()); err != nil {
			t.Fatal(err)
		}
		got := want{out, f.EthSrc(), f.EthDst(), f.IPv4Src(), f.IPv4Dst(), 0, 0}
		if got.port != w.port || !bytes.Equal(got.ethSrc, w.ethSrc) || !bytes.Equal(got.ethDst, w.ethDst) || got.src != w.src || got.dst != w.dst || f.ICMPID() != wantID || f.ICMPSeq() != seq {
			t.Fatalf("echo translated to %+v id %#x, want %+v id %#x", got, f.ICMPID(), w, wantID)
		}
		return f.Bytes()
	}
	req, err := packet.BuildICMPEcho(packet.Header{EthSrc: macC, EthDst: GatewayMAC, Src: ipC, Dst: ipS}, packet.ICMPEchoRequest, id, seq, []byte("ping"))
	if err != nil {
		t.Fatal(err)
	}
	wire := step(brA, c, req, true, want{port: brA.Uplink, ethSrc: macA, ethDst: macB, src: ipA, dst: ipB}, key)
	step(brB, s, wire, true, want{port: wlS.OFPort, ethSrc: GatewayMAC, ethDst: macS, src: ipC, dst: ipS}, id)
	rep, err := packet.BuildICMPEcho(packet.Header{EthSrc: macS, EthDst: GatewayMAC, Src: ipS, Dst: ipC}, packet.ICMPEchoReply, id, seq, []byte("ping"))
	if err != nil {
		t.Fatal(err)
	}
	wire = step(brB, s, rep, false, want{port: brB.Uplink, ethSrc: macB, ethDst: macA, src: ipB, dst: ipA}, key)
	step(brA, c, wire, false, want{port: wlC.OFPort, ethSrc: GatewayMAC, ethDst: macC, src: ipS, dst: ipC}, id)
}

func TestGatewayEchoReply(t *testing.T) {
	gw := netip.MustParseAddr("10.1.0.1")
	req, _ := packet.BuildICMPEcho(packet.Header{EthSrc: macC, EthDst: GatewayMAC, Src: ipC, Dst: gw}, packet.ICMPEchoRequest, 7, 1, []byte("abc"))
	f, _ := packet.Parse(req)
	b, err := GatewayEchoReply(&f)
	if err != nil {
		t.Fatal(err)
	}
	if err := packet.Verify(b); err != nil {
		t.Fatal(err)
	}
	r, _ := packet.Parse(b)
	if r.ICMPType() != packet.ICMPEchoReply || r.IPv4Src() != gw || r.IPv4Dst() != ipC || r.ICMPID() != 7 || !bytes.Equal(r.EthDst(), macC) || string(r.Payload()) != "abc" {
		t.Fatalf("bad gateway reply: %s -> %s type %d id %d", r.IPv4Src(), r.IPv4Dst(), r.ICMPType(), r.ICMPID())
	}
}

func TestBridgeValidate(t *testing.T) {
	if err := brA.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := brA
	bad.Uplink = openflow.PortLocal
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "uplink") {
		t.Fatalf("local port as uplink: %v", err)
	}
}

// TestNoAmbiguousFlows: two flows of one table and one priority that can
// match the same packet match it in no defined order (Open vSwitch picks
// one). Every such pair in a full pipeline must be disjoint (some field
// both match on disagrees under both masks), or every packet both match
// must be taken by a flow of higher priority in the same table. The bridge
// is client and server of sessions with the same peer at once, the case
// where a packet from one key to another would match both halves.
func TestNoAmbiguousFlows(t *testing.T) {
	br := guarded(brA)
	wl2 := tenantWorkload(Workload{OFPort: 11, MAC: mustMAC("02:aa:00:00:00:09"), IP: netip.MustParseAddr("10.1.0.9")})
	wl2.Nets = append(wl2.Nets, netip.MustParsePrefix("10.2.0.0/24"))
	srv := tenantWorkload(Workload{OFPort: 12, MAC: mustMAC("02:aa:00:00:00:0a"), IP: netip.MustParseAddr("10.1.0.10")})
	flows := append(BaseFlows(br), WorkloadFlows(br, tenantWorkload(wlC))...)
	flows = append(flows, WorkloadFlows(br, wl2)...)
	flows = append(flows, WorkloadFlows(br, srv)...)
	flows = append(flows, WorkloadFlows(br, evil)...)
	for _, p := range []uint16{8080, 8081} {
		pm, err := PortMapFlows(br, PortMap{Proto: session.TCP, Port: p, Target: wl2, TargetPort: p - 8000})
		if err != nil {
			t.Fatal(err)
		}
		flows = append(flows, pm...)
	}
	local := localSession(session.TCP)
	local.Port = 81 // one tuple is either a local or a cross-server session, never both
	// Server halves on this bridge, from the same peer as the client
	// halves go to: srv serves a client on B, with other keys.
	served := func(p session.Proto, k uint16, port uint16) session.Session {
		s := serverHalf(p)
		s.Key, s.Port, s.Tuple.Port = k, port, port
		s.Local = session.Endpoint{IP: srv.IP, MAC: srv.MAC, OFPort: srv.OFPort}
		s.Server = srv.IP
		s.Peer = session.Peer{Name: "b", IP: ipB, NextHop: macB}
		return s
	}
	// A second local session served by the same workload as the first.
	local2 := localSession(session.UDP)
	local2.Port, local2.Tuple.Port = 53, 53
	evilClient := session.Session{
		Tuple: session.Tuple{Tenant: "evil", Proto: session.UDP, Client: ipW, Server: netip.MustParseAddr("10.9.0.7"), Port: 80},
		Role:  session.RoleClient, Key: 61450, Local: session.Endpoint{IP: ipW, MAC: macW, OFPort: evil.OFPort}, Remote: session.Endpoint{IP: netip.MustParseAddr("10.9.0.7")},
		Peer: session.Peer{Name: "b", IP: ipB, NextHop: macB},
	}
	for _, s := range []session.Session{clientHalf(session.TCP), clientHalf(session.UDP), local, local2, evilClient,
		served(session.TCP, 61447, 80), served(session.UDP, 61448, 80), served(session.TCP, 61449, 443)} {
		fms, err := SessionFlows(br, s)
		if err != nil {
			t.Fatal(err)
		}
		flows = append(flows, fms...)
	}
	flows = append(flows, Deny(brA, wlC.OFPort, session.Tuple{Proto: session.TCP, Client: ipC, Server: netip.MustParseAddr("10.2.0.2"), Port: 5432}),
		Deny(brA, wlC.OFPort, session.Tuple{Proto: session.ICMP, Client: ipC, Server: netip.MustParseAddr("10.2.0.2")}),
		DenyICMP(brA, wlC.OFPort, ipC, netip.MustParseAddr("10.2.0.2"), 0),
		Punt(brA, ipB))
	checked := 0
	for i, a := range flows {
		for _, b := range flows[i+1:] {
			if a.TableID != b.TableID || a.Priority != b.Priority || disjoint(a.Match, b.Match) {
				continue
			}
			shadowed := false
			for _, h := range flows {
				if h.TableID == a.TableID && h.Priority > a.Priority && covers(h.Match, a.Match, b.Match) {
					shadowed = true
					break
				}
			}
			checked++
			if !shadowed {
				t.Errorf("table %s priority %d: %s and %s can match the same packet", Table(a.TableID), a.Priority, a.Match, b.Match)
			}
		}
	}
	if checked == 0 {
		t.Error("no client and server half overlapped: the test no longer covers the key-pair case")
	}
}

// covers reports whether every packet that matches both a and b also
// matches h: each of h's fields is implied by a field of a or of b.
func covers(h, a, b openflow.Match) bool {
	for _, fh := range h.Fields {
		implied := false
		for _, m := range []openflow.Match{a, b} {
			f, ok := m.Lookup(fh.ID())
			if !ok || len(f.Value) != len(fh.Value) {
				continue
			}
			good := true
			for i := range fh.Value {
				hm, fm := byte(0xff), byte(0xff)
				if fh.Mask != nil {
					hm = fh.Mask[i]
				}
				if f.Mask != nil {
					fm = f.Mask[i]
				}
				if hm&^fm != 0 || f.Value[i]&hm != fh.Value[i]&hm {
					good = false
					break
				}
			}
			if good {
				implied = true
				break
			}
		}
		if !implied {
			return false
		}
	}
	return true
}

func disjoint(a, b openflow.Match) bool {
	for _, fa := range a.Fields {
		fb, ok := b.Lookup(fa.ID())
		if !ok || len(fa.Value) != len(fb.Value) {
			continue
		}
		for i := range fa.Value {
			m := byte(0xff)
			if fa.Mask != nil {
				m &= fa.Mask[i]
			}
			if fb.Mask != nil {
				m &= fb.Mask[i]
			}
			if fa.Value[i]&m != fb.Value[i]&m {
				return true
			}
		}
	}
	return false
}

// TestTranslateError follows an ICMP error through both agents' slow paths:
// S's kernel refuses C's datagram; C must see "port unreachable" from S about
// the datagram it sent, in its own addresses, with every checksum right.
func TestTranslateError(t *testing.T) {
	const sport = 41000
	c, s := clientHalf(session.UDP), serverHalf(session.UDP)
	// The datagram as S received it.
	orig := frame(t, session.UDP, GatewayMAC, macS, ipC, ipS, sport, 80, []byte("knock"))
	of, _ := packet.Parse(orig)
	unreach := packet.ICMPError{Type: 3, Code: 3}
	errFrame, err := packet.BuildICMPError(packet.Header{EthSrc: macS, EthDst: GatewayMAC, Src: ipS, Dst: ipC}, unreach, of.L3())
	if err != nil {
		t.Fatal(err)
	}
	type quoted struct {
		outSrc, outDst, inSrc, inDst netip.Addr
		inSport, inDport             uint16
		port                         uint32
	}
	step := func(br Bridge, ss session.Session, fr []byte, toward bool, w quoted) []byte {
		t.Helper()
		f, err := packet.Parse(fr)
		if err != nil {
			t.Fatal(err)
		}
		out, err := TranslateError(br, ss, &f, toward)
		if err != nil {
			t.Fatal(err)
		}
		if err := packet.Verify(f.Bytes()); err != nil {
			t.Fatalf("translated error is broken: %v", err)
		}
		got := quoted{f.IPv4Src(), f.IPv4Dst(), f.InnerIPv4Src(), f.InnerIPv4Dst(), f.InnerL4Src(), f.InnerL4Dst(), out}
		if got != w {
			t.Fatalf("translated error\n got  %+v\n want %+v", got, w)
		}
		return f.Bytes()
	}
	// Is it the error's tuple? QuotedTuple finds the session at B.
	ef, _ := packet.Parse(errFrame)
	if tu, ok := QuotedTuple(&ef, true); !ok || tu.Client != ipC || tu.Server != ipS || tu.Port != 80 || tu.Proto != session.UDP {
		t.Fatalf("quoted tuple at B: %+v %v", tu, ok)
	}
	// B sends it over the underlay, quoting the datagram as the underlay carried it...
	wire := step(brB, s, errFrame, true, quoted{ipB, ipA, ipA, ipB, sport, key, brB.Uplink})
	// ... and A gives it back to C in C's terms.
	step(brA, c, wire, true, quoted{ipS, ipC, ipC, ipS, sport, 80, wlC.OFPort})

	// The other way: C refuses S's reply.
	reply := frame(t, session.UDP, GatewayMAC, macC, ipS, ipC, 80, sport, []byte("late"))
	rf, _ := packet.Parse(reply)
	errFrame, err = packet.BuildICMPError(packet.Header{EthSrc: macC, EthDst: GatewayMAC, Src: ipC, Dst: ipS}, unreach, rf.L3())
	if err != nil {
		t.Fatal(err)
	}
	ef, _ = packet.Parse(errFrame)
	if tu, ok := QuotedTuple(&ef, false); !ok || tu.Client != ipC || tu.Server != ipS || tu.Port != 80 {
		t.Fatalf("quoted tuple at A: %+v %v", tu, ok)
	}
	wire = step(brA, c, errFrame, false, quoted{ipA, ipB, ipB, ipA, key, sport, brA.Uplink})
	step(brB, s, wire, false, quoted{ipC, ipS, ipS, ipC, 80, sport, wlS.OFPort})

	// A router on the underlay keeps its own address: traceroute and
	// path-MTU discovery see the real hop.
	router := netip.MustParseAddr("192.0.2.254")
	onWire := frame(t, session.UDP, macA, macB, ipA, ipB, sport, key, []byte("big"))
	wf, _ := packet.Parse(onWire)
	fragNeeded, err := packet.BuildICMPError(packet.Header{EthSrc: macB, EthDst: macA, Src: router, Dst: ipA},
		packet.ICMPError{Type: 3, Code: 4, MTU: 1400}, wf.L3())
	if err != nil {
		t.Fatal(err)
	}
	out := step(brA, c, fragNeeded, true, quoted{router, ipC, ipC, ipS, sport, 80, wlC.OFPort})
	if f, _ := packet.Parse(out); f.ICMPNextHopMTU() != 1400 {
		t.Fatalf("next-hop MTU became %d", f.ICMPNextHopMTU())
	}
}

var (
	routerMAC = mustMAC("02:00:c0:00:02:fe")
	webNet    = netip.MustParsePrefix("10.1.0.0/24")
	outside   = netip.MustParseAddr("203.0.113.9")
)

// withWay gives a bridge a router, which turns egress and port maps on.
func withWay(b Bridge) Bridge { b.RouterMAC = routerMAC; return b }

func tenantWorkload(w Workload) Workload { w.Zone, w.Nets = 7, []netip.Prefix{webNet}; return w }

// TestReplyAfterSessionEnded: the server's end tracks connections, so once
// a session's flows are gone, a packet the server sends in answer reaches
// the agent marked as a reply of an established connection, and a packet
// that starts something new does not.
func TestReplyAfterSessionEnded(t *testing.T) {
	s := tenantWorkload(wlS)
	half := serverHalf(session.TCP)
	fms, err := SessionFlows(brB, half)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := flowsim.New(append(append(BaseFlows(brB), WorkloadFlows(brB, s)...), fms...)...)
	if err != nil {
		t.Fatal(err)
	}
	const sport = 40500
	pl := []byte("x")
	one(t, sw, brB.Uplink, frame(t, session.TCP, macA, macB, ipA, ipB, sport, key, pl), want{wlS.OFPort, GatewayMAC, macS, ipC, ipS, sport, 80}, pl)
	sw.Delete(uint64(SessionCookie(half)), uint64(FullMask)) // the session idled out
	res, err := sw.Run(wlS.OFPort, frame(t, session.TCP, macS, GatewayMAC, ipS, ipC, 80, sport, pl))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Punted || res.CtState&openflow.CtStateRpl == 0 || res.CtState&openflow.CtStateEst == 0 {
		t.Fatalf("the server's answer: punted %v with ct_state %#x, want a punt marked est+rpl", res.Punted, res.CtState)
	}
	res, _ = sw.Run(wlS.OFPort, frame(t, session.TCP, macS, GatewayMAC, ipS, ipC, 5000, 22, pl))
	if !res.Punted || res.CtState&openflow.CtStateNew == 0 {
		t.Fatalf("a new connection from the server: punted %v with ct_state %#x, want new", res.Punted, res.CtState)
	}
}

// TestEgress: traffic to outside every tenant network leaves with the
// server's address and a NAT port; the answer comes back to the workload.
// Two tenants' workloads with one address never mix up their answers.
func TestEgress(t *testing.T) {
	br := withWay(brA)
	c := tenantWorkload(wlC)
	twin := tenantWorkload(Workload{OFPort: 11, MAC: mustMAC("02:bb:00:00:00:02"), IP: ipC}) // same address, other tenant
	twin.Zone = 8
	sw, err := flowsim.New(append(append(BaseFlows(br), WorkloadFlows(br, c)...), WorkloadFlows(br, twin)...)...)
	if err != nil {
		t.Fatal(err)
	}
	pl := []byte("GET /")
	const sport = 43000
	run := func(w Workload) uint16 {
		t.Helper()
		res, err := sw.Run(w.OFPort, frame(t, session.TCP, w.MAC, GatewayMAC, ipC, outside, sport, 443, pl))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Outputs) != 1 || res.Outputs[0].Port != br.Uplink {
			t.Fatalf("egress: %+v", res)
		}
		f, _ := packet.Parse(res.Outputs[0].Frame)
		if err := packet.Verify(f.Bytes()); err != nil {
			t.Fatal(err)
		}
		if f.IPv4Src() != br.DataIP || f.IPv4Dst() != outside || f.L4Src()&NATPortMask != NATPortBase || f.L4Dst() != 443 ||
			!bytes.Equal(f.EthSrc(), br.DataMAC) || !bytes.Equal(f.EthDst(), routerMAC) {
			t.Fatalf("egress left as %s:%d -> %s:%d, %s -> %s", f.IPv4Src(), f.L4Src(), f.IPv4Dst(), f.L4Dst(), f.EthSrc(), f.EthDst())
		}
		return f.L4Src()
	}
	natC, natTwin := run(c), run(twin)
	if natC == natTwin {
		t.Fatalf("both workloads got NAT port %d", natC)
	}
	for _, tc := range []struct {
		w   Workload
		nat uint16
	}{{c, natC}, {twin, natTwin}} {
		one(t, sw, br.Uplink, frame(t, session.TCP, routerMAC, br.DataMAC, outside, br.DataIP, 443, tc.nat, pl),
			want{tc.w.OFPort, GatewayMAC, tc.w.MAC, outside, ipC, 443, sport}, pl)
	}
	// The tenant's own networks are not egress: they ask the agent.
	res, _ := sw.Run(c.OFPort, frame(t, session.TCP, macC, GatewayMAC, ipC, netip.MustParseAddr("10.1.0.77"), sport, 80, pl))
	if !res.Punted || len(res.Outputs) != 0 {
		t.Fatalf("traffic to the tenant's network: %+v", res)
	}
	// Host traffic on a NAT port that conntrack does not know reaches the host untouched.
	host := frame(t, session.UDP, routerMAC, br.DataMAC, outside, br.DataIP, 53, NATPortBase+9, pl)
	res, _ = sw.Run(br.Uplink, host)
	if len(res.Outputs) != 1 || res.Outputs[0].Port != openflow.PortLocal || !bytes.Equal(res.Outputs[0].Frame, host) {
		t.Fatalf("host traffic on a NAT port: %+v", res)
	}
}

// TestPortMap: a client outside reaches an exposed workload port at the
// server's address; the workload sees the client's real address, and its
// answer leaves from the exposed address and port.
func TestPortMap(t *testing.T) {
	br := withWay(brB)
	s := tenantWorkload(wlS)
	pm, err := PortMapFlows(br, PortMap{Proto: session.TCP, Port: 8080, Target: s, TargetPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	sw, err := flowsim.New(append(append(BaseFlows(br), WorkloadFlows(br, s)...), pm...)...)
	if err != nil {
		t.Fatal(err)
	}
	pl := []byte("hello")
	one(t, sw, br.Uplink, frame(t, session.TCP, routerMAC, br.DataMAC, outside, br.DataIP, 5555, 8080, pl),
		want{s.OFPort, GatewayMAC, macS, outside, ipS, 5555, 80}, pl)
	one(t, sw, s.OFPort, frame(t, session.TCP, macS, GatewayMAC, ipS, outside, 80, 5555, pl),
		want{br.Uplink, br.DataMAC, routerMAC, br.DataIP, outside, 8080, 5555}, pl)
	// Its answers inside the tenant are tenant traffic, not port-map traffic.
	res, _ := sw.Run(s.OFPort, frame(t, session.TCP, macS, GatewayMAC, ipS, ipC, 80, 5555, pl))
	if !res.Punted || len(res.Outputs) != 0 {
		t.Fatalf("tenant traffic from the mapped port: %+v", res)
	}
	if _, err := PortMapFlows(brB, PortMap{Proto: session.TCP, Port: 8080, Target: s, TargetPort: 80}); err == nil {
		t.Error("a port map without a router was accepted")
	}
}
