package agent

// Regression tests for the security audit's peer API findings (C1, the
// forged-Reopen part of H5, L3): the real api.PeerHandler and peerService
// behind the real TLS listener, callers holding certificates of a test CA,
// and a real embedded etcd on 127.0.0.1. The agents have no switch, so flow
// installs fail ("installing flows"): a call that gets that far passed
// every check.

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"nvi/packet"
	"nvi/pipeline"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/internal/testca"
	"nvi/session"
)

var (
	peerIPs1 = netip.MustParseAddr("192.0.2.1")
	peerIPs2 = netip.MustParseAddr("192.0.2.2")
	peerIPc  = netip.MustParseAddr("10.1.0.2") // acme/c on s1
	peerIPs  = netip.MustParseAddr("10.1.0.3") // acme/s on s2
	peerIPx  = netip.MustParseAddr("10.1.0.4") // acme/x on s3
)

var peerQuiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// peerWorld is a directory with servers s1..s3 and acme's endpoints c (on
// s1), s (on s2) and x (on s3), and the identities of the three servers.
type peerWorld struct {
	ctx        context.Context
	store      *directory.Store
	ca         *testca.CA
	s1, s2, s3 *testca.Identity
}

func newPeerWorld(t *testing.T, agentAddr map[string]string) *peerWorld {
	t.Helper()
	ctx, st := embeddedDirectory(t)
	populate(t, ctx, st, 3, agentAddr)
	ca := testca.New(t)
	return &peerWorld{ctx: ctx, store: st, ca: ca, s1: ca.Server(t, "s1"), s2: ca.Server(t, "s2"), s3: ca.Server(t, "s3")}
}

// agent makes the agent of id's server with the endpoint at ip bound on
// OpenFlow port 20, wired to the directory but with no switch.
func (w *peerWorld) agent(t *testing.T, id *testca.Identity, data netip.Prefix, ip netip.Addr, tune func(*Config)) *Agent {
	t.Helper()
	cfg := Config{Name: id.Name, DataIP: data, Identity: id, Logger: peerQuiet,
		PeerRate: 1e6, PeerBurst: 1e6} // the limits have their own test
	if tune != nil {
		tune(&cfg)
	}
	a := testAgent(t, w.ctx, w.store, cfg)
	bindLocal(t, a, w.ctx, w.store, addrKey{"acme", ip}, 20)
	return a
}

// servePeerAPI runs a's peer API as Run does, on loopback.
func servePeerAPI(t *testing.T, a *Agent) string {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	servePeerAPIOn(t, a, raw)
	return raw.Addr().String()
}

// servePeerAPIOn runs a's peer API on raw.
func servePeerAPIOn(t *testing.T, a *Agent, raw net.Listener) {
	t.Helper()
	conf, err := a.peerServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- api.ServePeer(ctx, api.PeerListener(raw, conf, api.ListenLimits{}, a.log), peerService{a}, a.peerOptions(), a.log)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func callerOf(t *testing.T, addr string, from *testca.Identity, server string) *api.PeerClient {
	c := api.NewPeerClient(addr, from.ClientTLS(server), 5*time.Second)
	t.Cleanup(c.Close)
	return c
}

// liveServerSession puts an established server half of tu with peer s1
// and key in a's engine.
func liveServerSession(t *testing.T, a *Agent, tu session.Tuple, key uint16) engine.View {
	return inject(t, a, time.Now(), session.Session{Tuple: tu, Role: session.RoleServer, Key: key, Local: a.byAddr[addrKey{"acme", tu.Server}].endpoint(),
		Remote: session.Endpoint{IP: tu.Client}, Peer: session.Peer{Name: "s1", IP: peerIPs1}}, "c")
}

// inject puts an established session in a's engine as of at, the way
// adoption does.
func inject(t *testing.T, a *Agent, at time.Time, s session.Session, remote string) engine.View {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.eng.Step(at, engine.Adopt{Session: s, RemoteName: remote})[0].(engine.Adoption).Err; err != nil {
		t.Fatal(err)
	}
	v, _ := a.eng.Lookup(s.Tuple)
	return v
}

// sessionIs reports whether v is still a's session for tu.
func sessionIs(a *Agent, tu session.Tuple, v engine.View) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	got, ok := a.eng.Lookup(tu)
	return ok && got.ID == v.ID
}

// passedChecks: the call got as far as installing flows, which fails here
// for lack of a switch.
func passedChecks(err error) bool {
	return api.CodeOf(err) == api.CodeUnavailable && strings.Contains(err.Error(), "installing flows")
}

// TestPeerForgedAcceptKeepsLiveSession is the audit's
// TestAuditForgedAcceptReplacesLiveSession: nobody but the session's own
// peer can replace it, whatever its certificate or body says.
func TestPeerForgedAcceptKeepsLiveSession(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: 5432}
	legit := liveServerSession(t, a, tu, 61447)
	addr := servePeerAPI(t, a)
	ctx := context.Background()

	// Without a certificate of the cloud, not even a handshake.
	for name, conf := range map[string]*tls.Config{"plain HTTP": nil, "a certificate of another CA": testca.New(t).Server(t, "s1").ClientTLS("s2")} {
		c := api.NewPeerClient(addr, conf, 2*time.Second)
		_, err := c.Accept(ctx, api.AcceptRequest{From: "s1", Tuple: tu, Key: 61999})
		c.Close()
		if err == nil || api.CodeOf(err) != api.CodeUnavailable {
			t.Errorf("%s: err = %v, want the connection refused", name, err)
		}
	}
	s3 := callerOf(t, addr, w.s3, "s2")
	// s3's valid certificate cannot speak for s1...
	if _, err := s3.Accept(ctx, api.AcceptRequest{From: "s1", Tuple: tu, Key: 61999}); api.CodeOf(err) != api.CodeDenied {
		t.Errorf("s3 claiming s1: err = %v, want denied", err)
	}
	// ...nor, as itself, for s1's client; and the answer does not say
	// where the client lives (L3).
	_, err := s3.Accept(ctx, api.AcceptRequest{Tuple: tu, Key: 61999})
	if api.CodeOf(err) != api.CodeDenied || strings.Contains(err.Error(), "s1") || strings.Contains(err.Error(), "lives") {
		t.Errorf("s3 for s1's client: err = %v, want a generic denial", err)
	}
	// A tuple the caller may not name at all gets the very same answer.
	ghost := tu
	ghost.Client = netip.MustParseAddr("10.1.0.99")
	if _, err2 := s3.Accept(ctx, api.AcceptRequest{Tuple: ghost, Key: 61999}); err == nil || err2 == nil || err2.Error() != err.Error() {
		t.Errorf("unknown client: %v; placed elsewhere: %v; want one answer for both", err2, err)
	}
	if !sessionIs(a, tu, legit) {
		t.Fatal("a forged Accept replaced the live session")
	}

	// Beside the forgeries, s3's own client is served (up to the flows).
	mine := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPx, Server: peerIPs, Port: 5432}
	if _, err := s3.Accept(ctx, api.AcceptRequest{From: "s3", Tuple: mine, Key: 61999}); !passedChecks(err) {
		t.Errorf("s3 for its own client: err = %v, want it to pass every check", err)
	}
	// And s1, the session's own peer, may still replace it.
	s1 := callerOf(t, addr, w.s1, "s2")
	if _, err := s1.Accept(ctx, api.AcceptRequest{From: "s1", Tuple: tu, Key: 61999}); !passedChecks(err) {
		t.Errorf("s1 replacing its own session: err = %v, want it to pass every check", err)
	}
	if sessionIs(a, tu, legit) {
		t.Error("the session's own peer could not replace it")
	}
}

// TestPeerAcceptKeepsSessionBeingMade: a session that is still being set
// up, with no peer agreed yet, is not replaced by anyone either.
func TestPeerAcceptKeepsSessionBeingMade(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPx, Server: peerIPs, Port: 80}
	a.mu.Lock()
	making := a.eng.Step(time.Now(), engine.Packet{From: a.byAddr[addrKey{"acme", peerIPs}].engineWorkload(), Tuple: tu, Frame: []byte{0}})[0].(engine.Resolve).ID
	a.mu.Unlock()
	_, err := peerService{a}.Accept(context.Background(), "s3", api.AcceptRequest{Tuple: tu, Key: 61500})
	if api.CodeOf(err) != api.CodeConflict {
		t.Fatalf("err = %v, want conflict", err)
	}
	a.mu.Lock()
	v, _ := a.eng.Lookup(tu)
	a.mu.Unlock()
	still := v.ID == making
	if !still {
		t.Fatal("a session being made was replaced")
	}
}

// TestPeerAcceptFromUnregisteredCaller: a caller with no server record
// now (a directory outage outlived its lease, and it has not registered
// again) is told to retry, not that the session is refused: a refusal
// would make its agent take its live sessions for gone (the checks of a
// deaf client are Accepts too).
func TestPeerAcceptFromUnregisteredCaller(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	tu := session.Tuple{Tenant: "acme", Proto: session.UDP, Client: peerIPx, Server: peerIPs, Port: 53}
	_, err := peerService{a}.Accept(w.ctx, "s4", api.AcceptRequest{Tuple: tu, Key: 61500})
	if api.CodeOf(err) != api.CodeUnavailable {
		t.Fatalf("Accept from an unregistered caller: err = %v, want unavailable", err)
	}
	// A registered caller that is not the client's server is refused.
	svc := peerService{a}
	if _, err := svc.Accept(w.ctx, "s1", api.AcceptRequest{Tuple: tu, Key: 61500}); !refusedCode(api.CodeOf(err)) {
		t.Fatalf("Accept from s1 for s3's client: err = %v, want a refusal", err)
	}
}

// TestPeerForgedReleaseKeepsLiveSession is the audit's
// TestAuditForgedReleaseEndsLiveSession, with the attacker knowing the
// key: only the session's own peer ends it, and only with tuple, key and
// role all right.
func TestPeerForgedReleaseKeepsLiveSession(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: 5432}
	legit := liveServerSession(t, a, tu, 61447)
	addr := servePeerAPI(t, a)
	ctx := context.Background()
	s1, s3 := callerOf(t, addr, w.s1, "s2"), callerOf(t, addr, w.s3, "s2")
	right := api.ReleaseRequest{Role: session.RoleClient, Tuple: tu, Key: 61447, Reason: "x"}

	claim := right
	claim.From = "s1"
	if err := s3.Release(ctx, claim); api.CodeOf(err) != api.CodeDenied {
		t.Errorf("s3 claiming s1: err = %v, want denied", err)
	}
	if err := s3.Release(ctx, right); err != nil {
		t.Errorf("s3 as itself: err = %v, want the quiet answer of a session already gone", err)
	}
	otherPort, wrongKey, wrongRole := right, right, right
	otherPort.Tuple.Port = 5433
	wrongKey.Key = 61448
	wrongRole.Role = session.RoleServer
	for name, req := range map[string]api.ReleaseRequest{"another tuple": otherPort, "a wrong key": wrongKey, "a wrong role": wrongRole} {
		if err := s1.Release(ctx, req); err != nil {
			t.Errorf("s1 with %s: %v", name, err)
		}
	}
	if !sessionIs(a, tu, legit) {
		t.Fatal("a Release that did not match ended the live session")
	}
	if err := s1.Release(ctx, right); err != nil {
		t.Fatalf("the session's own peer: %v", err)
	}
	if !sessionGone(a, tu) {
		t.Fatal("the session's own peer could not release it")
	}
}

// TestPeerReleaseOfAdoptedSession: a session adopted without its peer's
// name is released by the server that owns the peer's address, and only
// by it.
func TestPeerReleaseOfAdoptedSession(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: 5432}
	e := inject(t, a, time.Now(), session.Session{Tuple: tu, Role: session.RoleServer, Key: 61447, Local: a.byAddr[addrKey{"acme", tu.Server}].endpoint(),
		Remote: session.Endpoint{IP: tu.Client}, Peer: session.Peer{IP: peerIPs1}}, "c")
	req := api.ReleaseRequest{Role: session.RoleClient, Tuple: tu, Key: 61447}
	if err := (peerService{a}).Release(context.Background(), "s3", req); err != nil {
		t.Fatal(err)
	}
	if !sessionIs(a, tu, e) {
		t.Fatal("s3 released a session whose peer address is s1's")
	}
	if err := (peerService{a}).Release(context.Background(), "s1", req); err != nil {
		t.Fatal(err)
	}
	if !sessionGone(a, tu) {
		t.Fatal("s1 could not release it")
	}
}

// countingPeer is s2's agent as s1 sees it: it counts Accepts and answers
// that it is busy.
type countingPeer struct{ accepts atomic.Int64 }

func (p *countingPeer) Accept(context.Context, string, api.AcceptRequest) (api.AcceptReply, error) {
	p.accepts.Add(1)
	return api.AcceptReply{}, api.Errorf(api.CodeUnavailable, "busy")
}
func (p *countingPeer) Release(context.Context, string, api.ReleaseRequest) error { return nil }
func (p *countingPeer) Reopen(context.Context, string, api.ReopenRequest) error   { return nil }
func (p *countingPeer) UnknownKey(context.Context, string, api.UnknownKeyRequest) error {
	return nil
}

// TestPeerForgedReopenCannotExhaustKeys is the audit's
// TestAuditForgedReopenExhaustsKeys: Reopens from a server that does not
// host the server endpoint cost no key and no call to anyone, while s2's
// own Reopen still makes s1 set the session up (with s2).
func TestPeerForgedReopenCannotExhaustKeys(t *testing.T) {
	ca := testca.New(t)
	s2 := &countingPeer{}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s2id := ca.Server(t, "s2")
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- api.ServePeer(sctx, api.PeerListener(raw, s2id.ServerTLS(), api.ListenLimits{}, peerQuiet),
			s2, api.PeerOptions{Caller: api.TLSCaller(s2id.PeerName)}, peerQuiet)
	}()
	t.Cleanup(func() { cancel(); <-done })

	w := newPeerWorld(t, map[string]string{"s2": raw.Addr().String()})
	w.ca, w.s1, w.s2, w.s3 = ca, ca.Server(t, "s1"), s2id, ca.Server(t, "s3")
	a := w.agent(t, w.s1, netip.MustParsePrefix("192.0.2.1/24"), peerIPc, nil)
	connectFakeSwitch(t, a) // the way back goes in before the peer is asked
	addr := servePeerAPI(t, a)
	ctx := context.Background()
	s3 := callerOf(t, addr, w.s3, "s1")
	const forged = 512
	for p := 1; p <= forged; p++ {
		tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: uint16(p)}
		from := ""
		if p%2 == 0 {
			from = "s2" // half of them also claim to be s2
		}
		if err := s3.Reopen(ctx, api.ReopenRequest{From: from, Tuple: tu}); api.CodeOf(err) != api.CodeDenied {
			t.Fatalf("forged reopen %d: err = %v, want denied", p, err)
		}
	}
	if n := s2.accepts.Load(); n != 0 {
		t.Fatalf("%d forged Reopens became %d Accept calls to s2", forged, n)
	}
	a.mu.Lock()
	left := len(a.eng.Sessions())
	_, kerr := a.keys.Allocate(peerIPs2, session.TCP, "acme", time.Now())
	a.mu.Unlock()
	if left != 0 || kerr != nil {
		t.Fatalf("after the forged Reopens: %d sessions left, allocating a key: %v", left, kerr)
	}

	// s2's own Reopen is carried out: s1 asks s2 to accept.
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: 8080}
	err = callerOf(t, addr, w.s2, "s1").Reopen(ctx, api.ReopenRequest{From: "s2", Tuple: tu})
	if api.CodeOf(err) != api.CodeUnavailable || s2.accepts.Load() != 1 {
		t.Fatalf("s2's own reopen: err = %v, %d Accepts at s2; want one Accept, answered busy", err, s2.accepts.Load())
	}
}

// TestPeerAPILimits: a caller beyond its rate is told to come back, and a
// caller beside it is served.
func TestPeerAPILimits(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, func(c *Config) { c.PeerRate, c.PeerBurst = 0.01, 2 })
	addr := servePeerAPI(t, a)
	ctx := context.Background()
	s1, s3 := callerOf(t, addr, w.s1, "s2"), callerOf(t, addr, w.s3, "s2")
	req := api.ReleaseRequest{Role: session.RoleClient}
	for i := range 2 {
		if err := s3.Release(ctx, req); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	if err := s3.Release(ctx, req); api.CodeOf(err) != api.CodeUnavailable {
		t.Fatalf("beyond the burst: err = %v, want unavailable", err)
	}
	if err := s1.Release(ctx, req); err != nil {
		t.Fatalf("another caller beside it: %v", err)
	}
}

func TestCheckPeerListen(t *testing.T) {
	for _, tc := range []struct {
		listen string
		ok     bool
	}{
		{"198.18.0.1:7470", true},
		{"198.19.0.1:7470", true}, // a management network
		{"0.0.0.0:7470", false},   // peers cannot dial that
		{"224.0.0.1:7470", false},
		{"[2001:db8::1]:7470", false}, // the directory keeps IPv4 agent addresses
		{"198.18.0.1:0", false},
		{"198.18.0.1", false},
		{"peer:7470", false},
		{":7470", false},
	} {
		if err := checkPeerListen(tc.listen); (err == nil) != tc.ok {
			t.Errorf("checkPeerListen(%q) = %v, want ok=%v", tc.listen, err, tc.ok)
		}
	}
}

func TestCheckServing(t *testing.T) {
	id := testca.New(t).Server(t, "s1")
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"identity", Config{PeerListen: "198.18.0.1:7470", Identity: id}, true},
		{"insecure by choice", Config{PeerListen: "198.18.0.1:7470", InsecurePeerAPI: true}, true},
		{"neither", Config{PeerListen: "198.18.0.1:7470"}, false},
		{"both", Config{PeerListen: "198.18.0.1:7470", Identity: id, InsecurePeerAPI: true}, false},
		{"no peer address", Config{Identity: id}, false},
	} {
		if err := tc.cfg.checkServing(); (err == nil) != tc.ok {
			t.Errorf("%s: checkServing = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestRunRefusesUnauthenticatedPeerAPI: without an identity nvid does not
// start at all (before it touches OVS or the directory).
func TestRunRefusesUnauthenticatedPeerAPI(t *testing.T) {
	a, err := New(Config{Name: "s1", Uplink: "up0", OVSDB: "unix:/nonexistent", OVSRunDir: t.TempDir(), Socket: t.TempDir() + "/s",
		DataIP: netip.MustParsePrefix("192.0.2.1/24"), PeerListen: "192.0.2.1:7470", Etcd: []string{"x"}, Logger: peerQuiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "insecure-peer-api") {
		t.Fatalf("Run = %v, want a refusal naming --insecure-peer-api", err)
	}
}

// openServer is an identity whose server side does not ask for client
// certificates.
type openServer struct{ *testca.Identity }

func (o openServer) ServerTLS() *tls.Config {
	c := o.Identity.ServerTLS()
	c.ClientAuth = tls.NoClientCert
	return c
}

func TestPeerServerTLSMustBeMutual(t *testing.T) {
	id := testca.New(t).Server(t, "s1")
	a := &Agent{cfg: Config{Identity: openServer{id}}}
	if _, err := a.peerServerTLS(); err == nil {
		t.Fatal("a server TLS configuration without client certificates was accepted")
	}
	a.cfg.Identity = id
	conf, err := a.peerServerTLS()
	if err != nil || conf.MinVersion != tls.VersionTLS13 {
		t.Fatalf("peerServerTLS = %v, %v; want TLS 1.3 only", conf, err)
	}
}

// TestPeerClientsPerNameAndAddress: one client per (server, address),
// reused; a server that moves gets a new one; no identity, no client.
func TestPeerClientsPerNameAndAddress(t *testing.T) {
	id := testca.New(t).Server(t, "s1")
	a := &Agent{cfg: Config{Identity: id, PeerTimeout: time.Second}, peers: map[peerAddr]*api.PeerClient{}}
	s2 := directory.Server{Name: "s2", AgentAddr: "192.0.2.2:7470"}
	c1, err := a.peer(s2)
	if err != nil {
		t.Fatal(err)
	}
	if c2, _ := a.peer(s2); c2 != c1 {
		t.Fatal("a second call made a second client")
	}
	moved := s2
	moved.AgentAddr = "192.0.2.22:7470"
	if c3, _ := a.peer(moved); c3 == c1 || len(a.peers) != 1 {
		t.Fatalf("after s2 moved: same client %v, %d clients; want a new one replacing the old", c3 == c1, len(a.peers))
	}
	if c4, _ := a.peer(directory.Server{Name: "s3", AgentAddr: "192.0.2.2:7470"}); c4 == c1 || len(a.peers) != 2 {
		t.Fatal("s3 at s2's old address shares s2's client")
	}
	a.cfg.Identity = nil
	if _, err := a.peer(directory.Server{Name: "s4", AgentAddr: "192.0.2.4:7470"}); err == nil {
		t.Fatal("a client without identity or --insecure-peer-api")
	}
}

// TestInsecurePeerAPI: the benchmark's comparison mode serves plain HTTP
// and takes the body's From, as before authentication existed.
func TestInsecurePeerAPI(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, func(c *Config) { c.Identity, c.InsecurePeerAPI = nil, true })
	addr := servePeerAPI(t, a)
	c := api.NewPeerClient(addr, nil, 5*time.Second)
	defer c.Close()
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: peerIPc, Server: peerIPs, Port: 5432}
	if _, err := c.Accept(context.Background(), api.AcceptRequest{From: "s1", Tuple: tu, Key: 61999}); !passedChecks(err) {
		t.Fatalf("insecure Accept from s1: err = %v, want it to pass every check", err)
	}
	if _, err := c.Accept(context.Background(), api.AcceptRequest{From: "s3", Tuple: tu, Key: 61999}); api.CodeOf(err) != api.CodeDenied {
		t.Fatalf("insecure Accept claiming s3 for s1's client: err = %v, want denied", err)
	}
}

// sessionGone says whether a holds no session for tu.
func sessionGone(a *Agent, tu session.Tuple) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.eng.Lookup(tu)
	return !ok
}

// TestPeerFirstPacketsAreTheSessions: the first packets a client's server
// passes in its Accept are delivered, from the uplink through our own
// pipeline, only when they are the session's own; anything else the caller
// slips in is dropped, and a request with too many is refused outright.
func TestPeerFirstPacketsAreTheSessions(t *testing.T) {
	w := newPeerWorld(t, nil)
	a := w.agent(t, w.s2, netip.MustParsePrefix("192.0.2.2/24"), peerIPs, nil)
	fs := connectFakeSwitch(t, a)
	tu := session.Tuple{Tenant: "acme", Proto: session.UDP, Client: peerIPc, Server: peerIPs, Port: 53}
	mk := func(src, dst netip.Addr, dport uint16) []byte {
		b, err := packet.BuildUDP(packet.Header{EthSrc: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthDst: pipeline.GatewayMAC, Src: src, Dst: dst, ID: 1}, 40000, dport, []byte("q"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	own, forged := mk(peerIPc, peerIPs, 53), mk(netip.MustParseAddr("10.1.0.99"), peerIPs, 22)
	reply, err := peerService{a}.Accept(context.Background(), "s1", api.AcceptRequest{Tuple: tu, Key: 61999, Frames: [][]byte{own, forged}})
	if err != nil || reply.Delivered != 2 {
		t.Fatalf("Accept with one own and one forged frame: %+v, %v", reply, err)
	}
	// Whatever the agent sent before a barrier, the switch has read after it.
	if err := a.sw.apply(context.Background(), pipeline.DeleteByCookie(0xdead, pipeline.FullMask)); err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	outs := fs.outs
	fs.mu.Unlock()
	if len(outs) != 1 || outs[0].InPort != a.br.Uplink {
		t.Fatalf("%d packet-outs (want 1, from the uplink): %+v", len(outs), outs)
	}
	f, err := packet.Parse(outs[0].Data)
	if err != nil || f.IPv4Src() != peerIPs1 || f.IPv4Dst() != peerIPs2 || f.L4Dst() != 61999 {
		t.Fatalf("delivered %v as %s -> %s:%d; want the underlay's form of the session's packet", err, f.IPv4Src(), f.IPv4Dst(), f.L4Dst())
	}
	many := api.AcceptRequest{Tuple: tu, Key: 61998, Frames: make([][]byte, api.MaxAcceptFrames+1)}
	if _, err := (peerService{a}).Accept(context.Background(), "s1", many); api.CodeOf(err) != api.CodeInvalid {
		t.Fatalf("an Accept with %d frames: %v, want invalid", len(many.Frames), err)
	}
}
