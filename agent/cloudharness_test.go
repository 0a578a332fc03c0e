package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/internal/testca"
	"nvi/pipeline"
	"nvi/session"
)

// cloud is NVI in one test process, without root: servers s1..sN, each an
// agent that is the OpenFlow controller of a simulated switch (the real
// pipeline's flows run by internal/flowsim), the switches joined by an
// in-memory underlay, the agents' peer APIs served with mutual TLS on an
// in-memory network (memNet: the agents dial it through Config.PeerDial),
// and one embedded directory. Each server has one workload of tenant acme
// (network web) on OpenFlow port 20: c on s1, s on s2, x on s3, then w4...
// An agent runs as Run runs it: its switch link and packet-ins, the peer
// API, the directory watch and the expiry loop; it can be stopped and a new
// one started on the same switch.
type cloud struct {
	t     *testing.T
	ctx   context.Context
	store *directory.Store
	ca    *testca.CA
	net   *memNet
	under *underlay
	srv   []*server
	// switches is the switches' life: they run until every agent stopped.
	switches context.Context
	sent     atomic.Int64 // payloads made
}

// server is one server of the cloud.
type server struct {
	name string
	data netip.Prefix
	addr string // the peer API's
	id   *testca.Identity
	wl   netip.Addr // its workload's address, on port 20
	sw   *simSwitch
	tune func(*Config)

	a          *Agent // the running agent
	stop       func() // stops it, and returns once it has stopped
	stopExpiry func() // stops its expiry loop only
}

// wlPort is the OpenFlow port of each server's workload.
const wlPort = 20

// cloudServer is server i's (from 1) name, data address, and workload's
// name and address.
func cloudServer(i int) (name string, data netip.Addr, wlName string, wl netip.Addr) {
	wlName = fmt.Sprintf("w%d", i)
	if i <= 3 {
		wlName = []string{"c", "s", "x"}[i-1]
	}
	return fmt.Sprintf("s%d", i), netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), wlName, netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)})
}

// populate records servers s1..sN (agent addresses from agentAddr) and
// acme/web with a workload endpoint on each.
func populate(t *testing.T, ctx context.Context, st *directory.Store, n int, agentAddr map[string]string) {
	t.Helper()
	if _, err := st.CreateNetwork(ctx, directory.Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		name, data, wlName, wl := cloudServer(i)
		if _, err := st.RegisterServer(ctx, directory.Server{Name: name, DataIP: data, DataMAC: fmt.Sprintf("02:00:c0:00:02:%02x", i), AgentAddr: agentAddr[name]}, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := st.CreateEndpoint(ctx, directory.Endpoint{Tenant: "acme", Network: "web", Name: wlName, IP: wl, Server: name}); err != nil {
			t.Fatal(err)
		}
	}
}

// newCloud starts a cloud of n servers; tune, if set, adjusts each
// agent's configuration.
func newCloud(t *testing.T, n int, tune func(*Config)) *cloud {
	t.Helper()
	ctx, st := embeddedDirectory(t)
	cl := &cloud{t: t, ctx: ctx, store: st, ca: testca.New(t), net: newMemNet(), under: newUnderlay()}
	addrs := map[string]string{}
	for i := 1; i <= n; i++ {
		name, data, _, wl := cloudServer(i)
		s := &server{name: name, data: netip.PrefixFrom(data, 24), addr: data.String() + ":7470", wl: wl, id: cl.ca.Server(t, name), tune: tune}
		addrs[name] = s.addr
		cl.srv = append(cl.srv, s)
	}
	populate(t, ctx, st, n, addrs)
	swctx, stopSwitches := context.WithCancel(context.Background())
	cl.switches = swctx
	t.Cleanup(func() {
		for _, s := range cl.srv {
			if s.stop != nil {
				s.stop()
			}
		}
		stopSwitches() // after every agent
	})
	for _, s := range cl.srv {
		cl.start(s)
	}
	return cl
}

// start runs a new agent for s: on s's switch (made for the first), with
// its workload bound, adopting whatever sessions it finds there.
func (cl *cloud) start(s *server) {
	t := cl.t
	t.Helper()
	ctx, cancel := context.WithCancel(cl.ctx)
	cfg := Config{Name: s.name, DataIP: s.data, Identity: s.id, Logger: peerQuiet,
		PeerRate: 1e6, PeerBurst: 1e6, // the limits have their own test
		PeerDial: cl.net.dialer(s.data.Addr())}
	if s.tune != nil {
		s.tune(&cfg)
	}
	a := testAgent(t, ctx, cl.store, cfg)
	bindLocal(t, a, ctx, cl.store, addrKey{"acme", s.wl}, wlPort)
	if s.sw == nil {
		s.sw = newSimSwitch(t, cl.switches, a, cl.under)
	}
	var wg sync.WaitGroup
	link := s.sw.attach(ctx, a)
	a.cache.OnChange(a.onDirectoryChange)
	a.watchRevocations(a.cache)
	wg.Go(func() { _ = a.cache.Run(ctx) })
	a.adoptSessions(ctx, true)
	a.synced.Store(true)
	l, err := cl.net.listen(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := a.peerServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		_ = api.ServePeer(ctx, api.PeerListener(l, conf, api.ListenLimits{}, a.log), peerService{a}, a.peerOptions(), a.log)
	})
	ectx, cancelExpiry := context.WithCancel(ctx)
	var expiry sync.WaitGroup
	expiry.Go(func() { a.expireLoop(ectx) })
	s.stopExpiry = func() { cancelExpiry(); expiry.Wait() }
	stopped := false
	s.a, s.stop = a, func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		wg.Wait()
		expiry.Wait()
		<-link
		a.mu.Lock()
		for _, pc := range a.peers {
			pc.Close()
		}
		a.mu.Unlock()
	}
}

// send has s's workload send a datagram to to's workload, from port
// sport to dport.
func (s *server) send(t *testing.T, to *server, sport, dport uint16, payload string) {
	t.Helper()
	s.a.mu.Lock()
	mac := s.a.workloads[wlPort].mac
	s.a.mu.Unlock()
	s.sw.in(wlPort, udpFrame(t, mac, s.wl, to.wl, sport, dport, payload))
}

// got reports whether s's workload received payload from from's workload.
func (s *server) got(t *testing.T, from *server, payload string) bool {
	return delivered(t, s.sw, wlPort, from.wl, payload)
}

// view is s's engine's view of tu.
func (s *server) view(tu session.Tuple) (engine.View, bool) {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	return s.a.eng.Lookup(tu)
}

// flowCount is the number of flows of v's session on s's switch.
func (s *server) flowCount(v engine.View) int {
	return s.sw.flowCount(pipeline.SessionCookie(v.Session))
}

// udp is the UDP session tuple from c's workload to s's, port port.
func udp(c, s *server, port uint16) session.Tuple {
	return session.Tuple{Tenant: "acme", Proto: session.UDP, Client: c.wl, Server: s.wl, Port: port}
}

// established waits until tu is established at both its client's server c
// and its server's s, agreeing on the key, with their flows on both
// switches (two at the client, three at the server); it returns both
// views.
func established(t *testing.T, c, s *server, tu session.Tuple) (engine.View, engine.View) {
	t.Helper()
	var vc, vs engine.View
	if err := eventually(func() bool {
		vc, _ = c.view(tu)
		vs, _ = s.view(tu)
		return vc.State == engine.Established && vs.State == engine.Established && c.flowCount(vc) == 2 && s.flowCount(vs) == 3
	}); err != nil {
		t.Fatalf("%s not established at both ends: %s has %+v (%d flows), %s %+v (%d flows)", tu, c.name, vc, c.flowCount(vc), s.name, vs, s.flowCount(vs))
	}
	if vc.Session.Key != vs.Session.Key || vc.Session.Role != session.RoleClient || vs.Session.Role != session.RoleServer || vc.PeerName != s.name || vs.PeerName != c.name {
		t.Fatalf("the halves disagree: %s has %+v (peer %s), %s %+v (peer %s)", c.name, vc.Session, vc.PeerName, s.name, vs.Session, vs.PeerName)
	}
	return vc, vs
}

// payload is a datagram's payload, never sent before in the cloud.
func (cl *cloud) payload(what string) string {
	return fmt.Sprintf("%s #%d", what, cl.sent.Add(1))
}

// connect makes the UDP session from c's workload to s's, port dport,
// with a first datagram and its answer, and returns both ends' views.
func (cl *cloud) connect(t *testing.T, c, s *server, sport, dport uint16) (engine.View, engine.View) {
	t.Helper()
	q, r := cl.payload("question"), cl.payload("answer")
	c.send(t, s, sport, dport, q)
	if err := eventually(func() bool { return s.got(t, c, q) }); err != nil {
		t.Fatalf("%s never got the first datagram to port %d: %v", s.name, dport, err)
	}
	vc, vs := established(t, c, s, udp(c, s, dport))
	s.send(t, c, dport, sport, r)
	if err := eventually(func() bool { return c.got(t, s, r) }); err != nil {
		t.Fatalf("%s never got the answer from port %d: %v", c.name, dport, err)
	}
	return vc, vs
}

// exchange sends a datagram each way on a session that exists and waits
// for both; it fails if that took a packet-in anywhere in the cloud.
func (cl *cloud) exchange(t *testing.T, c, s *server, sport, dport uint16, tag string) {
	t.Helper()
	before := cl.punts()
	q, r := cl.payload(tag), cl.payload(tag+", answered")
	c.send(t, s, sport, dport, q)
	s.send(t, c, dport, sport, r)
	if err := eventually(func() bool { return s.got(t, c, q) && c.got(t, s, r) }); err != nil {
		t.Fatalf("%s: the session's flows did not carry a datagram each way: %v", tag, err)
	}
	if n := cl.punts() - before; n != 0 {
		t.Errorf("%s: %d packet-ins for an established session's datagrams", tag, n)
	}
}

// punts is the number of packet-ins all switches sent.
func (cl *cloud) punts() int64 {
	var n int64
	for _, s := range cl.srv {
		n += s.sw.punts.Load()
	}
	return n
}

// gone waits until the session of vc (c's view) and vs (s's) is gone at
// both ends, flows and all. If first is c or s, its switch must have lost
// its half before the other's: the other's agent ended the session, and
// it releases its peer first.
func gone(t *testing.T, c, s *server, vc, vs engine.View, first *server) {
	t.Helper()
	if err := eventually(func() bool {
		_, ok1 := c.view(vc.Session.Tuple)
		_, ok2 := s.view(vs.Session.Tuple)
		return !ok1 && !ok2 && c.flowCount(vc) == 0 && s.flowCount(vs) == 0
	}); err != nil {
		v1, _ := c.view(vc.Session.Tuple)
		v2, _ := s.view(vs.Session.Tuple)
		t.Fatalf("%s not gone: %s has %+v (%d flows), %s %+v (%d flows)", vc.Session.Tuple, c.name, v1, c.flowCount(vc), s.name, v2, s.flowCount(vs))
	}
	at := map[*server]int64{c: c.sw.removedAt(pipeline.SessionCookie(vc.Session)), s: s.sw.removedAt(pipeline.SessionCookie(vs.Session))}
	if other := map[*server]*server{c: s, s: c}[first]; first != nil && at[first] >= at[other] {
		t.Errorf("%s: %s's half came off (at %d) before %s's (at %d)", vc.Session.Tuple, other.name, at[other], first.name, at[first])
	}
}
