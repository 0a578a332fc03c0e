package engine

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"nvi/internal/flowsim"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/session"
)

// A cloud of engines in one test process: each server has its own engine
// and an in-memory switch (internal/flowsim) running the real pipeline's
// flows; peer calls are function calls into the other server's engine, and
// the underlay carries a frame from one switch's uplink into the other's.
// The harness carries out effects the way the agent does, and checks
// invariant 1 at every install: a client half goes in only after its
// peer's half is on the peer's switch.

const uplink = 1

var tenantNet = netip.MustParsePrefix("10.1.0.0/24")

type simServer struct {
	name string
	br   pipeline.Bridge
	g    *Engine
	sw   *flowsim.Switch
	at   map[netip.Addr]Workload // workloads bound here
	// cookies of session halves on the switch, for invariant 1.
	installed map[pipeline.Cookie]bool
	got       map[uint32][][]byte // frames delivered to each workload port
	toHost    [][]byte
	drops     []Drop
	failures  []error
}

type cloud struct {
	t       *testing.T
	now     time.Time
	servers map[string]*simServer
	where   map[netip.Addr]string // the directory: workload address → server
	names   map[netip.Addr]string // workload address → endpoint name
	// wayBackLate carries a client's way-back install after its Accept,
	// as happens when the peer is quicker than the client's switch.
	wayBackLate bool
	// answer, if set, is called with each frame a workload receives (a
	// workload that answers at once).
	answer func(s *simServer, port uint32, frame []byte)
}

func newCloud(t *testing.T) *cloud {
	return &cloud{t: t, now: t0, servers: map[string]*simServer{}, where: map[netip.Addr]string{}, names: map[netip.Addr]string{}}
}

func (c *cloud) addServer(name string, n byte) *simServer {
	c.t.Helper()
	br := pipeline.Bridge{Uplink: uplink, DataIP: netip.AddrFrom4([4]byte{192, 0, 2, n}), DataMAC: net.HardwareAddr{2, 0, 0xc0, 0, 2, n},
		Keys: session.DefaultKeyRange, PuntMeter: 1, StrayMeter: 2, DenyTimeout: 5}
	sw, err := flowsim.New(pipeline.BaseFlows(br)...)
	if err != nil {
		c.t.Fatal(err)
	}
	s := &simServer{name: name, br: br, g: newEngine(c.t, 12), sw: sw, at: map[netip.Addr]Workload{},
		installed: map[pipeline.Cookie]bool{}, got: map[uint32][][]byte{}}
	c.servers[name] = s
	return s
}

func (c *cloud) bind(s *simServer, w Workload) {
	c.t.Helper()
	if err := s.sw.Add(pipeline.WorkloadFlows(s.br, pipeline.Workload{OFPort: w.Port, MAC: w.Endpoint.MAC, IP: w.Endpoint.IP, Nets: []netip.Prefix{tenantNet}})...); err != nil {
		c.t.Fatal(err)
	}
	s.at[w.Endpoint.IP] = w
	c.where[w.Endpoint.IP] = s.name
	c.names[w.Endpoint.IP] = w.Name
}

func (s *simServer) peer() session.Peer {
	return session.Peer{Name: s.name, IP: s.br.DataIP, NextHop: s.br.DataMAC}
}

// step feeds s's engine and carries out what it returns; it returns the
// Reply among the effects, if any.
func (c *cloud) step(s *simServer, ev Event) *Reply {
	c.t.Helper()
	var reply *Reply
	fx := s.g.Step(c.now, ev)
	if c.wayBackLate && len(fx) == 2 {
		if in, ok := fx[0].(Install); ok && in.Part == ReplyPath {
			fx[0], fx[1] = fx[1], fx[0]
		}
	}
	for _, f := range fx {
		if r := c.carry(s, f); r != nil {
			reply = r
		}
	}
	return reply
}

func (c *cloud) carry(s *simServer, f Effect) *Reply {
	c.t.Helper()
	switch f := f.(type) {
	case Resolve:
		far := f.Tuple.Server
		if f.Reopen {
			far = f.Tuple.Client
		}
		name, ok := c.where[far]
		if !ok {
			c.step(s, Failed{ID: f.ID, Err: fmt.Errorf("no endpoint %s", far), Refused: true})
			return nil
		}
		r := Resolved{ID: f.ID, RemoteName: c.names[far], RemoteIP: far}
		if name == s.name {
			w := s.at[far]
			r.Here = &w
		} else {
			p := c.servers[name].peer()
			r.Peer = &p
		}
		c.step(s, r)
	case Accept:
		p := c.servers[f.Session.Peer.Name]
		half := session.Session{Tuple: f.Session.Tuple, Role: session.RoleServer, Key: f.Session.Key,
			Local: p.at[f.Session.Server].Endpoint, Remote: session.Endpoint{IP: f.Session.Client}, Peer: s.peer()}
		r := c.step(p, AcceptRequest{Caller: s.name, Session: half, RemoteName: c.names[f.Session.Client], Frames: f.Frames})
		if r == nil {
			r = &Reply{Err: errors.New("no answer")}
		}
		c.step(s, Accepted{ID: f.ID, Err: r.Err, Refused: errors.Is(r.Err, ErrConflict), Delivered: r.Delivered})
	case Install:
		ck := pipeline.SessionCookie(f.Session)
		if f.Session.Role == session.RoleClient && f.Part != ReplyPath {
			peerHalf := f.Session
			peerHalf.Role, peerHalf.Peer = session.RoleServer, s.peer()
			if !c.servers[f.Session.Peer.Name].installed[pipeline.SessionCookie(peerHalf)] {
				c.t.Fatalf("invariant 1: %s installs the client half of %s before %s has its half", s.name, f.Session.Tuple, f.Session.Peer.Name)
			}
		}
		if f.Flows {
			fms, err := pipeline.SessionFlows(s.br, f.Session)
			if f.Part != AllFlows {
				fms, err = pipeline.SessionPathFlows(s.br, f.Session, f.Part == ReplyPath)
			}
			if err != nil {
				c.t.Fatal(err)
			}
			if err := s.sw.Add(fms...); err != nil {
				c.t.Fatal(err)
			}
		}
		if f.Punt.IsValid() {
			if err := s.sw.Add(pipeline.Punt(s.br, f.Punt)); err != nil {
				c.t.Fatal(err)
			}
		}
		s.installed[ck] = true
		for _, fr := range f.Inject {
			wire, err := pipeline.FromPeer(s.br, f.Session, fr)
			if err != nil {
				c.t.Fatal(err)
			}
			c.send(s, uplink, wire)
		}
		for _, fr := range f.Release {
			c.send(s, f.Port, fr)
		}
		return c.step(s, Installed{ID: f.ID})
	case Remove:
		ck := pipeline.SessionCookie(f.Session)
		s.sw.Delete(uint64(ck), uint64(pipeline.FullMask))
		delete(s.installed, ck)
		return c.step(s, Removed{ID: f.ID})
	case ReleasePeer:
		p := c.servers[f.PeerName]
		c.step(p, ReleaseRequest{Caller: s.name, Tuple: f.Session.Tuple, Key: f.Session.Key, Role: f.Session.Role, Reason: f.Reason})
	case Deliver:
		for _, fr := range f.Frames {
			c.send(s, f.Port, fr)
		}
	case Resubmit:
		for _, fr := range f.Frames {
			c.send(s, uplink, fr)
		}
	case ToHost:
		s.toHost = append(s.toHost, f.Frame)
	case Retry:
		for _, fr := range f.Frames {
			c.send(s, f.Port, fr)
		}
	case Drop:
		s.drops = append(s.drops, f)
	case SetupFailed:
		s.failures = append(s.failures, f.Err)
	case Reply:
		return &f
	default:
		c.t.Fatalf("effect %T not carried out by the test cloud", f)
	}
	return nil
}

// send runs a frame a workload on port sent through s's switch, across the
// underlay and through the receiving switch; punted frames become Packet
// events of their server's engine.
func (c *cloud) send(s *simServer, port uint32, frame []byte) {
	c.t.Helper()
	res, err := s.sw.Run(port, frame)
	if err != nil {
		c.t.Fatal(err)
	}
	if res.Punted && port == uplink {
		f, err := packet.Parse(frame)
		if err != nil {
			c.t.Fatal(err)
		}
		c.step(s, KeyReply{Peer: f.IPv4Src(), Proto: session.Proto(f.IPProto()), Key: f.L4Src(), Frame: frame})
		return
	}
	if res.Punted {
		f, err := packet.Parse(frame)
		if err != nil {
			c.t.Fatal(err)
		}
		from := s.at[f.IPv4Src()]
		tu := session.Tuple{Tenant: "acme", Proto: session.Proto(f.IPProto()), Client: f.IPv4Src(), Server: f.IPv4Dst(), Port: f.L4Dst()}
		c.step(s, Packet{From: from, Tuple: tu, Frame: frame})
		return
	}
	for _, out := range res.Outputs {
		if out.Port != uplink {
			s.got[out.Port] = append(s.got[out.Port], out.Frame)
			if c.answer != nil {
				c.answer(s, out.Port, out.Frame)
			}
			continue
		}
		f, err := packet.Parse(out.Frame)
		if err != nil {
			c.t.Fatal(err)
		}
		for _, p := range c.servers {
			if p.br.DataIP == f.IPv4Dst() {
				c.send(p, uplink, out.Frame)
			}
		}
	}
}

func tcpFrame(t *testing.T, from, to Workload, sport, dport uint16, flags uint8, payload string) []byte {
	t.Helper()
	b, err := packet.BuildTCP(packet.Header{EthSrc: from.Endpoint.MAC, EthDst: pipeline.GatewayMAC, Src: from.Endpoint.IP, Dst: to.Endpoint.IP, DF: true, ID: 1},
		packet.TCP{SrcPort: sport, DstPort: dport, Seq: 1, Flags: flags, Window: 512}, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// delivered returns what workload w on s received since the last call, as
// (source address, payload) pairs.
func delivered(t *testing.T, s *simServer, w Workload) []string {
	t.Helper()
	var out []string
	for _, fr := range s.got[w.Port] {
		f, err := packet.Parse(fr)
		if err != nil {
			t.Fatal(err)
		}
		if f.IPv4Dst() != w.Endpoint.IP {
			t.Fatalf("%s got a frame for %s", w.Name, f.IPv4Dst())
		}
		out = append(out, f.IPv4Src().String()+" "+string(f.Payload()))
	}
	s.got[w.Port] = nil
	return out
}

// TestCloudOfEngines: two servers' engines set up a session over their
// switches, the first packet arrives, the answer comes back through the
// session, a stranger's release is ignored, and a teardown at one end
// takes both halves down.
func TestCloudOfEngines(t *testing.T) {
	c := newCloud(t)
	a, b := c.addServer("a", 1), c.addServer("b", 2)
	c.bind(a, wlC)
	c.bind(b, wlS)
	c.bind(a, wlD)

	c.send(a, wlC.Port, tcpFrame(t, wlC, wlS, 40000, 80, packet.TCPSyn, "hello"))
	if got := delivered(t, b, wlS); len(got) != 1 || got[0] != "10.1.0.2 hello" {
		t.Fatalf("S received %q", got)
	}
	// The answer goes back through the session, no agent involved.
	c.send(b, wlS.Port, tcpFrame(t, wlS, wlC, 80, 40000, packet.TCPSyn|packet.TCPAck, "world"))
	if got := delivered(t, a, wlC); len(got) != 1 || got[0] != "10.1.0.3 world" {
		t.Fatalf("C received %q", got)
	}
	// The next packet of the connection goes by the flows alone.
	c.send(a, wlC.Port, tcpFrame(t, wlC, wlS, 40000, 80, packet.TCPAck, "more"))
	if got := delivered(t, b, wlS); len(got) != 1 || got[0] != "10.1.0.2 more" {
		t.Fatalf("S received %q", got)
	}
	va, _ := a.g.Lookup(tuple(session.TCP, 80))
	vb, _ := b.g.Lookup(tuple(session.TCP, 80))
	if va.State != Established || vb.State != Established || va.Session.Key != vb.Session.Key || vb.PeerName != "a" {
		t.Fatalf("a: %+v\nb: %+v", va, vb)
	}

	// A third server's word does not end the session at b.
	x := c.addServer("x", 3)
	c.step(b, ReleaseRequest{Caller: x.name, Tuple: va.Session.Tuple, Key: va.Session.Key, Role: session.RoleClient, Reason: "forged"})
	if s := state(t, b.g, va.Session.Tuple); s != Established {
		t.Fatalf("after x's release, b's half is %s", s)
	}

	// C's workload goes away: both halves go.
	c.step(a, Unbound{Port: wlC.Port})
	if len(a.g.Sessions()) != 0 || len(b.g.Sessions()) != 0 || len(a.installed) != 0 || len(b.installed) != 0 {
		t.Fatalf("left after the teardown: a %+v b %+v", a.g.Sessions(), b.g.Sessions())
	}
	// Frames still on their way with the old key reach nobody.
	out, err := b.sw.Run(uplink, wireFrame(t, va.Session, "late"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Outputs) != 0 {
		t.Fatalf("a frame with the dead key went out on %+v", out.Outputs)
	}

	// A local session: D reaches S's neighbour C... here D → C on a.
	c.bind(a, wlC)
	local := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: wlD.Endpoint.IP, Server: wlC.Endpoint.IP, Port: 22}
	c.send(a, wlD.Port, tcpFrame(t, wlD, wlC, 50000, 22, packet.TCPSyn, "ssh"))
	if got := delivered(t, a, wlC); len(got) != 1 || got[0] != "10.1.0.4 ssh" {
		t.Fatalf("C received %q", got)
	}
	if v, _ := a.g.Lookup(local); v.Session.Role != session.RoleLocal {
		t.Fatalf("local session %+v", v)
	}
	if len(a.drops)+len(b.drops)+len(a.failures)+len(b.failures) != 0 {
		t.Fatalf("drops %v %v failures %v %v", a.drops, b.drops, a.failures, b.failures)
	}
}

// wireFrame is a frame of session s as the underlay carries it from the
// client's server: server addresses and the key.
func wireFrame(t *testing.T, s session.Session, payload string) []byte {
	t.Helper()
	b, err := packet.BuildTCP(packet.Header{EthSrc: macA, EthDst: s.Peer.NextHop, Src: ipA, Dst: s.Peer.IP, DF: true, ID: 1},
		packet.TCP{SrcPort: s.Key, DstPort: s.Key, Seq: 1, Flags: packet.TCPAck, Window: 512}, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCloudEarlyAnswer: the server workload answers the first packet,
// which its server delivered itself, before the client's way back is on
// the client's switch. The answer is punted, held, and delivered once the
// way back is in; nothing reaches the client's host.
func TestCloudEarlyAnswer(t *testing.T) {
	for _, proto := range []session.Proto{session.TCP, session.UDP} {
		t.Run(proto.String(), func(t *testing.T) {
			c := newCloud(t)
			a, b := c.addServer("a", 1), c.addServer("b", 2)
			c.bind(a, wlC)
			c.bind(b, wlS)
			c.wayBackLate = true
			answered := 0
			c.answer = func(s *simServer, port uint32, fr []byte) {
				if s != b || port != wlS.Port || answered > 0 {
					return
				}
				answered++
				c.send(b, wlS.Port, frameOf(t, proto, wlS, wlC, 80, 40000, "answer"))
			}
			c.send(a, wlC.Port, frameOf(t, proto, wlC, wlS, 40000, 80, "hello"))
			if got := delivered(t, b, wlS); len(got) != 1 || got[0] != "10.1.0.2 hello" {
				t.Fatalf("S received %q", got)
			}
			if got := delivered(t, a, wlC); len(got) != 1 || got[0] != "10.1.0.3 answer" {
				t.Fatalf("C received %q; want the early answer", got)
			}
			if len(a.toHost) != 0 {
				t.Fatalf("%d frames went to a's host", len(a.toHost))
			}
			va, _ := a.g.Lookup(tuple(proto, 80))
			if va.State != Established {
				t.Fatalf("a: %+v", va)
			}
			// Once the way back is in, answers take it without the agent.
			c.send(b, wlS.Port, frameOf(t, proto, wlS, wlC, 80, 40000, "again"))
			if got := delivered(t, a, wlC); len(got) != 1 || got[0] != "10.1.0.3 again" {
				t.Fatalf("C received %q", got)
			}
			// A frame from a key no session holds is the host's.
			stray := va.Session
			stray.Key ^= 1
			c.send(a, uplink, wireReply(t, proto, stray, ipB, "stray"))
			if len(a.toHost) != 1 {
				t.Fatalf("a stray key's frame: %d to the host", len(a.toHost))
			}
		})
	}
}

func frameOf(t *testing.T, proto session.Proto, from, to Workload, sport, dport uint16, payload string) []byte {
	t.Helper()
	if proto == session.TCP {
		return tcpFrame(t, from, to, sport, dport, packet.TCPAck, payload)
	}
	b, err := packet.BuildUDP(packet.Header{EthSrc: from.Endpoint.MAC, EthDst: pipeline.GatewayMAC, Src: from.Endpoint.IP, Dst: to.Endpoint.IP, ID: 1}, sport, dport, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wireReply is what the peer at from sends back to a client half s on the
// underlay: from its key to the client's port.
func wireReply(t *testing.T, proto session.Proto, s session.Session, from netip.Addr, payload string) []byte {
	t.Helper()
	h := packet.Header{EthSrc: macB, EthDst: macA, Src: from, Dst: ipA, ID: 1}
	var b []byte
	var err error
	if proto == session.TCP {
		b, err = packet.BuildTCP(h, packet.TCP{SrcPort: s.Key, DstPort: 40000, Seq: 1, Flags: packet.TCPAck, Window: 512}, []byte(payload))
	} else {
		b, err = packet.BuildUDP(h, s.Key, 40000, []byte(payload))
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}
