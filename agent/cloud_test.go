package agent

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"nvi/api"
	"nvi/engine"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/session"
)

// The tests here run a cloud (cloudharness_test.go) of whole agents in one
// process, without root, and look at what really happened: flows on the
// switches by cookie, frames out of the workloads' ports, packet-ins, and
// each engine's view of its sessions.

// TestTwoAgents: a workload's first datagram makes a session the way it
// does on Open vSwitch: packet-in, look-up, way back beside the Accept,
// the peer's flows and the first packet in one write, then the way out.
// The answer and the next datagrams go by the flows alone; a teardown at
// one end takes both halves down, the peer's first.
func TestTwoAgents(t *testing.T) {
	cl := newCloud(t, 2, nil)
	c, s := cl.srv[0], cl.srv[1]
	vc, vs := cl.connect(t, c, s, 40000, 53)
	if n := c.sw.punts.Load(); n != 1 {
		t.Errorf("%s's switch punted %d packets for the first datagram, want 1", c.name, n)
	}
	cl.exchange(t, c, s, 40000, 53, "next")

	// c leaves: both halves go, flows and all, the peer's first.
	c.a.unbindPort(cl.ctx, wlPort, "test")
	gone(t, c, s, vc, vs, s)
}

// TestCloudOneClientManyPeers: one workload talks to the workloads of
// three other servers at once; each pair of servers has its own session
// and key, and when the client leaves every peer's half goes too.
func TestCloudOneClientManyPeers(t *testing.T) {
	cl := newCloud(t, 4, nil)
	c := cl.srv[0]
	views := map[*server][2]engine.View{}
	for _, s := range cl.srv[1:] {
		vc, vs := cl.connect(t, c, s, 40000, 53)
		views[s] = [2]engine.View{vc, vs}
	}
	for _, s := range cl.srv[1:] {
		cl.exchange(t, c, s, 40000, 53, "to "+s.name)
		if n := len(s.a.eng.Sessions()); n != 1 {
			t.Errorf("%s has %d sessions, want only its own with %s", s.name, n, c.name)
		}
	}
	c.a.unbindPort(cl.ctx, wlPort, "test")
	for s, v := range views {
		gone(t, c, s, v[0], v[1], s)
	}
}

// TestCloudPolicyRefusal: a datagram to a workload that policy keeps from
// the sender gets a drop flow on the sender's switch, so that the next one
// costs no packet-in; the refused server's switch sees nothing, and the
// session the sender has beside it keeps flowing.
func TestCloudPolicyRefusal(t *testing.T) {
	cl := newCloud(t, 3, nil)
	c, s, x := cl.srv[0], cl.srv[1], cl.srv[2]
	if _, err := cl.store.Disconnect(cl.ctx, "acme", "c", "x"); err != nil {
		t.Fatal(err)
	}
	cl.connect(t, c, s, 40000, 53)

	punts := c.sw.punts.Load()
	c.send(t, x, 40000, 53, "refused")
	deny := pipeline.FeatureCookie(pipeline.FeatureDeny)
	if err := eventually(func() bool { return len(c.sw.flows(deny, pipeline.FeatureMask)) == 1 }); err != nil {
		t.Fatalf("no drop flow on %s's switch: %v", c.name, err)
	}
	c.send(t, x, 40000, 53, "refused again")
	if n := c.sw.punts.Load() - punts; n != 1 {
		t.Errorf("two refused datagrams made %d packet-ins, want 1", n)
	}
	if d := c.sw.flows(deny, pipeline.FeatureMask); len(d) != 1 || d[0].Packets != 1 {
		t.Errorf("the drop flow: %+v, want one that dropped the second datagram", d)
	}
	if _, ok := c.view(udp(c, x, 53)); ok {
		t.Errorf("%s keeps a session for the refused datagram", c.name)
	}
	for what, n := range map[string]int{
		"packet-ins":    int(x.sw.punts.Load()),
		"frames out":    len(x.sw.received(wlPort)),
		"session flows": len(x.sw.flows(pipeline.FeatureCookie(pipeline.FeatureSession), pipeline.FeatureMask)),
		"drop flows":    len(x.sw.flows(deny, pipeline.FeatureMask)),
		"sessions":      len(x.a.eng.Sessions()),
	} {
		if n != 0 {
			t.Errorf("the refused server %s: %d %s, want none", x.name, n, what)
		}
	}
	cl.exchange(t, c, s, 40000, 53, "beside")
}

// TestCloudPolicyChange: policy that changes reaches live traffic through
// the agents' directory watches: a pair disconnected loses its session at
// both ends and its next datagram is dropped by a flow; forgetting the rule
// clears the drop flow, and the next datagram makes the session again.
func TestCloudPolicyChange(t *testing.T) {
	cl := newCloud(t, 2, nil)
	c, s := cl.srv[0], cl.srv[1]
	vc, vs := cl.connect(t, c, s, 40000, 53)

	if _, err := cl.store.Disconnect(cl.ctx, "acme", "c", "s"); err != nil {
		t.Fatal(err)
	}
	gone(t, c, s, vc, vs, nil) // both agents end it, whichever first
	deny := pipeline.FeatureCookie(pipeline.FeatureDeny)
	if err := eventually(func() bool {
		c.send(t, s, 40000, 53, cl.payload("after the disconnect"))
		return len(c.sw.flows(deny, pipeline.FeatureMask)) == 1
	}); err != nil {
		t.Fatalf("no drop flow at %s for the disconnected pair: %v", c.name, err)
	}
	if n := len(s.sw.received(wlPort)); n != 1 {
		t.Errorf("%s's workload got %d datagrams, want only the one before the disconnect", s.name, n)
	}

	if err := cl.store.ForgetPair(cl.ctx, "acme", "c", "s"); err != nil {
		t.Fatal(err)
	}
	if err := eventually(func() bool { return len(c.sw.flows(deny, pipeline.FeatureMask)) == 0 }); err != nil {
		t.Fatalf("the drop flow stayed at %s after the rule went: %v", c.name, err)
	}
	v1, v2 := cl.connect(t, c, s, 40000, 53)
	if v1.ID == vc.ID || v2.ID == vs.ID {
		t.Errorf("the session was not made again: %+v, %+v", v1, v2)
	}
}

// TestCloudThirdServerCannotTouchSession: s3, with a valid certificate of
// the cloud, tries to release or take over the session between s1 and s2
// through their peer APIs, and to inject into it on the underlay. Nothing
// gets through: the session stays at both ends, its flows untouched, and
// it keeps carrying traffic.
func TestCloudThirdServerCannotTouchSession(t *testing.T) {
	cl := newCloud(t, 3, nil)
	c, s, x := cl.srv[0], cl.srv[1], cl.srv[2]
	vc, vs := cl.connect(t, c, s, 40000, 53)
	tu, key := vc.Session.Tuple, vc.Session.Key

	dial := cl.net.dialer(x.data.Addr())
	toC := api.NewPeerClientDial(c.addr, x.id.ClientTLS(c.name), 2*time.Second, dial)
	toS := api.NewPeerClientDial(s.addr, x.id.ClientTLS(s.name), 2*time.Second, dial)
	defer toC.Close()
	defer toS.Close()
	ctx := cl.ctx
	release := func(from string, role session.Role) api.ReleaseRequest {
		return api.ReleaseRequest{From: from, Role: role, Tuple: tu, Key: key, Reason: "attack"}
	}
	for _, a := range []struct {
		name string
		call func() error
		want api.Code // "": answered as for a session already gone, and ignored
	}{
		{"release at s2 as the client", func() error { return toS.Release(ctx, release("", session.RoleClient)) }, ""},
		{"release at s1 as the server", func() error { return toC.Release(ctx, release("", session.RoleServer)) }, ""},
		{"release at s2 saying it is s1", func() error { return toS.Release(ctx, release("s1", session.RoleClient)) }, api.CodeDenied},
		{"accept at s2: take the session over", func() error {
			_, err := toS.Accept(ctx, api.AcceptRequest{Tuple: tu, Key: key})
			return err
		}, api.CodeDenied},
		{"accept at s2 saying it is s1", func() error {
			_, err := toS.Accept(ctx, api.AcceptRequest{From: "s1", Tuple: tu, Key: key + 1})
			return err
		}, api.CodeDenied},
		{"reopen at s1", func() error { return toC.Reopen(ctx, api.ReopenRequest{Tuple: tu}) }, api.CodeDenied},
	} {
		err := a.call()
		if a.want == "" && err != nil || a.want != "" && api.CodeOf(err) != a.want {
			t.Errorf("%s: err = %v, want %q", a.name, err, a.want)
		}
	}

	// On the underlay, s3 sends as if it were each end of the session.
	forged := func(to *server, sport, dport uint16) []byte {
		b, err := packet.BuildUDP(packet.Header{EthSrc: net.HardwareAddr{2, 0, 0xc0, 0, 2, 3}, EthDst: to.sw.br.DataMAC,
			Src: x.data.Addr(), Dst: to.data.Addr(), ID: 1}, sport, dport, []byte("forged"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	s.sw.do(func() { s.sw.run(s.sw.br.Uplink, forged(s, 40000, key)) })
	c.sw.do(func() { c.sw.run(c.sw.br.Uplink, forged(c, key, 40000)) })

	for _, end := range []struct {
		srv   *server
		v     engine.View
		flows int
	}{{c, vc, 2}, {s, vs, 3}} {
		v, ok := end.srv.view(tu)
		if !ok || v.ID != end.v.ID || v.State != engine.Established || v.Session.Key != end.v.Session.Key || v.PeerName != end.v.PeerName {
			t.Errorf("%s's session after the attack: %+v, want it as it was: %+v", end.srv.name, v, end.v)
		}
		if n := end.srv.flowCount(end.v); n != end.flows {
			t.Errorf("%s has %d of the session's flows after the attack, want %d", end.srv.name, n, end.flows)
		}
		if n := len(end.srv.a.eng.Sessions()); n != 1 {
			t.Errorf("%s has %d sessions after the attack, want its one", end.srv.name, n)
		}
		for _, fr := range end.srv.sw.received(wlPort) {
			if bytes.Contains(fr, []byte("forged")) {
				t.Errorf("a forged datagram reached %s's workload", end.srv.name)
			}
		}
	}
	if n := len(x.a.eng.Sessions()); n != 0 {
		t.Errorf("%s has %d sessions", x.name, n)
	}
	cl.exchange(t, c, s, 40000, 53, "after the attack")
}

// TestCloudAgentRestartAdopts: an agent stops and a new one starts on the
// same switch, whose flows stayed. Meanwhile the session carries traffic
// on its flows; the new agent adopts it from the flows' cookies, it keeps
// carrying traffic both ways without a packet-in, and a later teardown
// still takes both halves down.
func TestCloudAgentRestartAdopts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		restarts int // which server
	}{{"client", 0}, {"server", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCloud(t, 2, nil)
			c, s := cl.srv[0], cl.srv[1]
			vc, vs := cl.connect(t, c, s, 40000, 53)
			r, was := cl.srv[tc.restarts], map[*server]engine.View{c: vc, s: vs}[cl.srv[tc.restarts]]
			old := r.a

			r.stop()
			cl.exchange(t, c, s, 40000, 53, "while the agent is down")
			cl.start(r)
			if r.a == old {
				t.Fatal("the agent did not change")
			}
			v, ok := r.view(vc.Session.Tuple)
			if !ok || v.State != engine.Established || v.Session.Key != was.Session.Key || v.Session.Role != was.Session.Role || v.PeerName != was.PeerName {
				t.Fatalf("the new agent's view: %+v (found: %v), want it adopted as %+v", v, ok, was)
			}
			if n1, n2 := c.flowCount(vc), s.flowCount(vs); n1 != 2 || n2 != 3 {
				t.Errorf("after the restart: %d session flows at the client, %d at the server", n1, n2)
			}
			cl.exchange(t, c, s, 40000, 53, "after the restart")

			c.a.unbindPort(cl.ctx, wlPort, "test")
			gone(t, c, s, vc, vs, s)
		})
	}
}

// TestCloudIdleExpiry: the expiry loops read the session flows' counters
// from the switches: a session that carries nothing for the idle timeout
// ends at both ends, the peer's half first; one beside it that carries
// traffic lives on past both ends' timeouts.
func TestCloudIdleExpiry(t *testing.T) {
	const idle = time.Second
	cl := newCloud(t, 2, func(c *Config) { c.IdleTimeout = idle })
	c, s := cl.srv[0], cl.srv[1]
	ic, is := cl.connect(t, c, s, 40000, 53)
	bc, bs := cl.connect(t, c, s, 40001, 123)

	// The busy session carries a datagram each way at every look.
	n := 0
	busy := func() {
		n++
		c.send(t, s, 40001, 123, fmt.Sprint("busy ", n))
		s.send(t, c, 123, 40001, fmt.Sprint("busy back ", n))
	}
	if err := eventually(func() bool {
		busy()
		_, ok1 := c.view(ic.Session.Tuple)
		_, ok2 := s.view(is.Session.Tuple)
		return !ok1 && !ok2 && c.flowCount(ic) == 0 && s.flowCount(is) == 0
	}); err != nil {
		t.Fatalf("the idle session did not expire at both ends")
	}
	gone(t, c, s, ic, is, s)
	// Past the server half's timeout (twice the client's) and a tick.
	if err := eventually(func() bool { busy(); return time.Since(bc.Created) > 2*idle+idle/4 }); err != nil {
		t.Fatal(err)
	}
	for _, end := range []struct {
		srv *server
		v   engine.View
	}{{c, bc}, {s, bs}} {
		v, ok := end.srv.view(end.v.Session.Tuple)
		if !ok || v.ID != end.v.ID || v.State != engine.Established {
			t.Errorf("the busy session at %s: %+v, want it as it was", end.srv.name, v)
		}
		var pkts uint64
		for _, f := range end.srv.sw.flows(pipeline.SessionCookie(end.v.Session), pipeline.FullMask) {
			pkts += f.Packets
		}
		if pkts < uint64(2*n) {
			t.Errorf("the busy session's flows at %s counted %d packets, want at least %d", end.srv.name, pkts, 2*n)
		}
	}
	cl.exchange(t, c, s, 40001, 123, "still")
}

// TestCloudReopen: the server's agent expires an idle session (its own
// idle timeout is short, the client's long) and both halves go; then the
// server workload answers in the connection anyway. Its switch punts the
// answer (conntrack knows the connection), the server's agent asks the
// client's to set the session up again, and the answer reaches the client.
func TestCloudReopen(t *testing.T) {
	cl := newCloud(t, 2, func(c *Config) {
		if c.Name == "s2" {
			c.IdleTimeout = time.Second
		}
	})
	c, s := cl.srv[0], cl.srv[1]
	vc, vs := cl.connect(t, c, s, 40000, 53)
	gone(t, c, s, vc, vs, c) // s's agent ended it
	// The session made again stays while the test looks at it.
	s.stopExpiry()

	punts := s.sw.punts.Load()
	s.send(t, c, 53, 40000, "late answer")
	if err := eventually(func() bool { return c.got(t, s, "late answer") }); err != nil {
		t.Fatalf("the late answer never reached %s: %v", c.name, err)
	}
	v1, v2 := established(t, c, s, vc.Session.Tuple)
	if v1.ID == vc.ID || v2.ID == vs.ID {
		t.Errorf("the session was not made again: %+v, %+v", v1, v2)
	}
	if n := s.sw.punts.Load() - punts; n != 1 {
		t.Errorf("the late answer made %d packet-ins at %s, want 1", n, s.name)
	}
	cl.exchange(t, c, s, 40000, 53, "after the reopen")
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

// TestCloudDeadKeyHeals (audit M4): s's half of a session ends without c
// hearing of it (as when c was unreachable); the next datagram c sends
// meets no session on s's switch, which punts it through its stray-key
// meter; s tells c, whose agent checks the session by repeating its
// Accept; s sets its half up again with the same key and the datagrams
// after go through on flows alone.
func TestCloudDeadKeyHeals(t *testing.T) {
	cl := newCloud(t, 2, nil)
	c, s := cl.srv[0], cl.srv[1]
	vc, vs := cl.connect(t, c, s, 40000, 53)

	if err := s.a.step(engine.Teardown{ID: vs.ID, Reason: "test: the client was unreachable"}); err != nil {
		t.Fatal(err)
	}
	if err := eventually(func() bool { _, ok := s.view(vs.Session.Tuple); return !ok && s.flowCount(vs) == 0 }); err != nil {
		t.Fatalf("%s's half did not go", s.name)
	}
	if v, _ := c.view(vc.Session.Tuple); v.ID != vc.ID || v.State != engine.Established {
		t.Fatalf("%s heard of it: %+v", c.name, v)
	}

	// The next datagram is lost (c's flow sends it to a dead key) but
	// tells; the half comes back with the same key, c's session unchanged.
	punts := s.sw.punts.Load()
	lost := cl.payload("to the dead key")
	c.send(t, s, 40000, 53, lost)
	v1, v2 := established(t, c, s, vc.Session.Tuple)
	if v1.ID != vc.ID || v2.Session.Key != vc.Session.Key {
		t.Errorf("healed as %+v / %+v; want %s's session kept and %s's half back with key %d", v1, v2.Session, c.name, s.name, vc.Session.Key)
	}
	if n := s.sw.punts.Load() - punts; n != 1 {
		t.Errorf("%s's switch punted %d packets, want the one to the dead key", s.name, n)
	}
	if s.got(t, c, lost) {
		t.Errorf("the datagram to the dead key was delivered")
	}
	cl.exchange(t, c, s, 40000, 53, "healed")
}
