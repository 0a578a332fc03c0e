package agent

// Tests of the agent's session life cycle against a real embedded etcd on
// 127.0.0.1, fake peers (the peer protocol without TLS) and, where flows matter, a fake switch.
// They started as the security audit's proofs of concept for the agent.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/pipeline"
	"nvi/session"
)

var (
	ipS1 = netip.MustParseAddr("192.0.2.1")
	ipS2 = netip.MustParseAddr("192.0.2.2")
	ipC  = netip.MustParseAddr("10.1.0.2") // acme/c on s1
	ipS  = netip.MustParseAddr("10.1.0.3") // acme/s on s2
	ipBC = netip.MustParseAddr("10.2.0.2") // beta/c on s1
	ipBS = netip.MustParseAddr("10.2.0.3") // beta/s on s2
)

type world struct {
	store *directory.Store
	ctx   context.Context
	regs  map[string]*directory.Registration
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// embeddedDirectory starts an embedded etcd on loopback for one test and
// opens a store on it.
func embeddedDirectory(t *testing.T) (context.Context, *directory.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	e, err := directory.ServeEmbedded(ctx, directory.EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1:0"}, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	st, err := directory.Open(ctx, directory.Config{Endpoints: e.Endpoints(), Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return ctx, st
}

// testAgent makes an agent from c (the switch-related fields filled in),
// wired to the directory but with no switch.
func testAgent(t *testing.T, ctx context.Context, st *directory.Store, c Config) *Agent {
	t.Helper()
	c.Uplink, c.OVSDB, c.OVSRunDir, c.Socket, c.Etcd = "up0", "unix:/nonexistent", t.TempDir(), t.TempDir()+"/s", []string{"x"}
	if c.Logger == nil {
		c.Logger = quietLog()
	}
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	a.ctx = ctx
	if a.claims, err = a.claimer(st); err != nil {
		t.Fatal(err)
	}
	a.dir = st
	a.cache = directory.NewCache(st, c.Logger)
	a.sw = newSwitchConn(a) // never run: no switch
	a.swUp.Store(true)
	a.dirUp.Store(true)
	a.br = pipelineBridge(c.DataIP.Addr(), a.cfg.KeyRange)
	return a
}

// bindLocal binds the endpoint of tenant at ip (network "web") on OpenFlow
// port, as the agent does when its workload is plugged in.
func bindLocal(t *testing.T, a *Agent, ctx context.Context, st *directory.Store, k addrKey, port uint32) *workload {
	t.Helper()
	ep, err := st.EndpointByIP(ctx, k.tenant, k.ip)
	if err != nil {
		t.Fatal(err)
	}
	nw, err := st.Network(ctx, k.tenant, "web")
	if err != nil {
		t.Fatal(err)
	}
	ten, err := a.tenantOf(ctx, k.tenant)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(ep.MAC)
	l := &workload{ep: ep, net: nw, mac: mac, ofport: port, iface: "veth", zone: ten.zone, nets: ten.nets}
	a.workloads[port], a.byAddr[k] = l, l
	return l
}

func newWorld(t *testing.T, agentAddr map[string]string) *world {
	t.Helper()
	ctx, st := embeddedDirectory(t)
	regs := map[string]*directory.Registration{}
	for name, ip := range map[string]netip.Addr{"s1": ipS1, "s2": ipS2} {
		var err error
		if regs[name], err = st.RegisterServer(ctx, directory.Server{Name: name, DataIP: ip, DataMAC: "02:00:c0:00:02:0" + name[1:], AgentAddr: agentAddr[name]}, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, nw := range []directory.Network{
		{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")},
		{Tenant: "beta", Name: "web", CIDR: netip.MustParsePrefix("10.2.0.0/24")},
	} {
		if _, err := st.CreateNetwork(ctx, nw); err != nil {
			t.Fatal(err)
		}
	}
	for _, ep := range []directory.Endpoint{
		{Tenant: "acme", Network: "web", Name: "c", IP: ipC, Server: "s1"},
		{Tenant: "acme", Network: "web", Name: "s", IP: ipS, Server: "s2"},
		{Tenant: "beta", Network: "web", Name: "c", IP: ipBC, Server: "s1"},
		{Tenant: "beta", Network: "web", Name: "s", IP: ipBS, Server: "s2"},
	} {
		if _, err := st.CreateEndpoint(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	return &world{store: st, ctx: ctx, regs: regs}
}

// agentOf makes the agent of server name, wired to the directory but with
// no switch, with the given workloads bound: endpoint of tenant at ip on
// OpenFlow port 20, 21, ...
func (w *world) agentOf(t *testing.T, name string, data netip.Prefix, cfg func(*Config), binds ...addrKey) *Agent {
	t.Helper()
	c := Config{Name: name, DataIP: data,
		// The fake peers here speak plain HTTP: these tests are about the
		// session life cycle; peer_test.go proves the authentication.
		InsecurePeerAPI: true}
	if cfg != nil {
		cfg(&c)
	}
	a := testAgent(t, w.ctx, w.store, c)
	for i, b := range binds {
		bindLocal(t, a, w.ctx, w.store, b, uint32(20+i))
	}
	return a
}

func pipelineBridge(ip netip.Addr, keys session.KeyRange) pipeline.Bridge {
	mac, _ := net.ParseMAC("02:00:c0:00:02:99")
	return pipeline.Bridge{Uplink: 1, DataIP: ip, DataMAC: mac, Keys: keys, PuntMeter: 1, StrayMeter: 2, DenyTimeout: 5}
}

// fakePeerAgent is another server's agent as the peer protocol shows it:
// it answers every Accept with code (success if empty), after onAccept if
// set, and counts calls. It runs without TLS, trusting the body's From.
type fakePeerAgent struct {
	addr              string
	code              api.Code
	onAccept          func()
	accepts, releases atomic.Int64
	stop              func()
}

func (p *fakePeerAgent) Accept(context.Context, string, api.AcceptRequest) (api.AcceptReply, error) {
	p.accepts.Add(1)
	if p.onAccept != nil {
		p.onAccept()
	}
	if p.code != "" {
		return api.AcceptReply{}, api.Errorf(p.code, "no")
	}
	return api.AcceptReply{}, nil
}

func (p *fakePeerAgent) Release(context.Context, string, api.ReleaseRequest) error {
	p.releases.Add(1)
	return nil
}
func (p *fakePeerAgent) Reopen(context.Context, string, api.ReopenRequest) error { return nil }
func (p *fakePeerAgent) UnknownKey(context.Context, string, api.UnknownKeyRequest) error {
	return nil
}

// Close stops it.
func (p *fakePeerAgent) Close() { p.stop() }

// servePeerService runs svc's peer protocol without TLS on loopback, the
// caller taken from the body; it returns the address and how to stop.
func servePeerService(t *testing.T, svc api.PeerService) (string, func()) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- api.ServePeer(ctx, api.PeerListener(raw, nil, api.ListenLimits{}, peerQuiet), svc, api.PeerOptions{InsecureTrustFrom: true}, peerQuiet)
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return raw.Addr().String(), stop
}

// peerAnswering is a fake peer agent that answers every Accept with code
// (success if empty) and counts calls.
func peerAnswering(t *testing.T, code api.Code) (*fakePeerAgent, *atomic.Int64, *atomic.Int64) {
	p := &fakePeerAgent{code: code}
	p.addr, p.stop = servePeerService(t, p)
	return p, &p.accepts, &p.releases
}

// TestLocalAPIBeforeReady is the audit's L2 case: before the switch and
// the directory exist, the local API answers "unavailable" instead of
// dereferencing nil.
func TestLocalAPIBeforeReady(t *testing.T) {
	a, err := New(Config{Name: "s1", Uplink: "up0", OVSDB: "unix:/nonexistent", OVSRunDir: t.TempDir(), Socket: t.TempDir() + "/s",
		DataIP: netip.MustParsePrefix("192.0.2.1/24"), Etcd: []string{"x"}, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	a.ctx = context.Background()
	for name, call := range map[string]func() error{
		"Sessions": func() error { _, err := localService{a}.Sessions(context.Background()); return err },
		"AttachEndpoint": func() error {
			_, err := localService{a}.AttachEndpoint(context.Background(), api.AttachRequest{Tenant: "acme", Name: "w", Interface: "veth0"})
			return err
		},
		"CreateEndpoint": func() error {
			_, err := localService{a}.CreateEndpoint(context.Background(), api.CreateEndpointRequest{Tenant: "acme", Network: "web", Name: "w"})
			return err
		},
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s before the agent is ready panics: %v", name, r)
				}
			}()
			if err := call(); api.CodeOf(err) != api.CodeUnavailable {
				t.Errorf("%s before the agent is ready: err = %v (code %s), want code unavailable", name, err, api.CodeOf(err))
			}
		}()
	}
	// Status, which always worked, still does.
	if st, err := (localService{a}).Status(context.Background()); err != nil || st.Ready {
		t.Errorf("Status before ready = %+v, %v; want not ready, no error", st, err)
	}
}

// TestForgedReopensCannotStarveOtherTenants is the audit's H5 proof of
// concept: Reopen requests (forged, or simply failing setups) make s1
// take keys toward s2. A tenant now holds at most its quota, so another
// tenant still gets keys; and keys the peer refused come back at once.
func TestForgedReopensCannotStarveOtherTenants(t *testing.T) {
	keys, err := session.ParseKeyRange("61440-61503") // 64 keys, quota 32
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		answer      api.Code
		acmeResting bool // the failed keys rest (the peer's answer was unclear)
	}{
		{"peer unavailable", api.CodeUnavailable, true},
		{"peer refuses", api.CodeDenied, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, accepts, _ := peerAnswering(t, tc.answer)
			defer peer.Close()
			w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": peer.addr})
			a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), func(c *Config) { c.KeyRange = keys },
				addrKey{"acme", ipC}, addrKey{"beta", ipBC})
			connectFakeSwitch(t, a) // the way back goes in before the peer is asked
			addr, stop := servePeerService(t, peerService{a})
			defer stop()
			pc := api.NewPeerClient(addr, nil, 5*time.Second)
			defer pc.Close()
			for p := 1; p <= keys.Size(); p++ {
				_ = pc.Reopen(context.Background(), api.ReopenRequest{From: "s2", Tuple: session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: uint16(p)}})
			}
			quota := a.keys.TenantQuota()
			a.mu.Lock()
			held := a.keys.Held(ipS2, session.TCP, "acme", time.Now())
			_, betaErr := a.keys.Allocate(ipS2, session.TCP, "beta", time.Now())
			_, acmeErr := a.keys.Allocate(ipS2, session.TCP, "acme", time.Now())
			left := len(a.eng.Sessions())
			counted := a.eng.PerWorkload(a.byAddr[addrKey{"acme", ipC}].ofport)
			a.mu.Unlock()
			if betaErr != nil {
				t.Errorf("after %d failed acme setups, beta cannot get a key toward s2: %v", keys.Size(), betaErr)
			}
			if held > quota {
				t.Errorf("acme holds %d keys toward s2, over its quota of %d", held, quota)
			}
			if tc.acmeResting {
				if !errors.Is(acmeErr, session.ErrKeyQuota) {
					t.Errorf("acme's next key: err = %v, want its quota used up by resting keys", acmeErr)
				}
				if n := accepts.Load(); n > int64(quota) {
					t.Errorf("%d Accept calls reached s2; once acme's quota is used no more should (quota %d)", n, quota)
				}
			} else if acmeErr != nil || held != 0 {
				t.Errorf("the peer refused every setup, yet acme holds %d keys and cannot get one: %v", held, acmeErr)
			}
			if left != 0 {
				t.Errorf("%d failed sessions are left in the table", left)
			}
			if counted != 0 {
				t.Errorf("%d failed sessions still count against the workload", counted)
			}
		})
	}
}

// TestNonIPv4ServerRecordIsRefused is the audit's H6 proof of concept: a
// server record with an IPv6 data address no longer panics the setup.
func TestNonIPv4ServerRecordIsRefused(t *testing.T) {
	peer, _, _ := peerAnswering(t, "")
	defer peer.Close()
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	if _, err := w.store.RegisterServer(w.ctx, directory.Server{Name: "v6", DataIP: netip.MustParseAddr("2001:db8::9"), DataMAC: "02:00:00:00:00:09", AgentAddr: peer.addr}, 30*time.Second); err != nil {
		t.Logf("the directory refuses the record itself: %v", err)
		return // nothing can reach the agent then
	}
	x := netip.MustParseAddr("10.1.0.9")
	if _, err := w.store.CreateEndpoint(w.ctx, directory.Endpoint{Tenant: "acme", Network: "web", Name: "x", IP: x, Server: "v6"}); err != nil {
		t.Fatal(err)
	}
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
	l := a.byAddr[addrKey{"acme", ipC}]
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: x, Port: 80}
	ev := a.resolve(w.ctx, engine.Resolve{ID: 1, Tuple: tu, From: l.engineWorkload()})
	if f, ok := ev.(engine.Failed); !ok || !f.Refused {
		t.Fatalf("resolving toward an IPv6 server: %+v, want a refusal", ev)
	}
}

// TestSetupPanicEndsOnlyThatSession: a panic in a setup goroutine is
// recovered; the session is abandoned, and the agent carries on.
func TestSetupPanicEndsOnlyThatSession(t *testing.T) {
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 80}
	l := a.byAddr[addrKey{"acme", ipC}]
	a.mu.Lock()
	fx := a.eng.Step(time.Now(), engine.Packet{From: l.engineWorkload(), Tuple: tu, Frame: []byte("syn")})
	a.mu.Unlock()
	id := fx[0].(engine.Resolve).ID
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverSetup(id, tu)
		panic("a bug in the setup")
	}()
	<-done
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.eng.Lookup(tu); ok || a.eng.PerWorkload(l.ofport) != 0 {
		t.Fatalf("after a panicking setup: in table %v, counted %d; want it abandoned", ok, a.eng.PerWorkload(l.ofport))
	}
}
