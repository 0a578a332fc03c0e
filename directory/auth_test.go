package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/policy"
	"nvi/session"
)

// tlsDirectory is an embedded etcd serving only mutual TLS, with auth
// enabled by root, and servers s1 and s2 granted.
type tlsDirectory struct {
	e       *Embedded
	ca      *testCA
	root    *Store
	prefix  string
	sockURL string
}

func newTLSDirectory(t *testing.T) *tlsDirectory {
	t.Helper()
	ca := newTestCA(t, "nvi test CA")
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "nvi-etcd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e, err := ServeEmbedded(ctxT(t), EmbedConfig{
		DataDir:    dir + "/etcd",
		ClientURLs: []string{"https://127.0.0.1:0", "unixs://" + sockDir + "/etcd.sock"},
		TLS:        ca.serveTLS(dir),
		Logger:     quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	d := &tlsDirectory{e: e, ca: ca, prefix: "/nvi/v1/"}
	for _, ep := range e.Endpoints() {
		if strings.HasPrefix(ep, "unixs://") {
			d.sockURL = ep
		}
	}
	d.root = d.open(t, RootUser)
	ctx := ctxT(t)
	if err := d.root.EnableAuth(ctx); err != nil {
		t.Fatal(err)
	}
	// A directory set up by an earlier version gave servers write access
	// to the claim spaces; enabling auth again takes it back.
	old := d.prefix + "endpoints/"
	if _, err := d.root.Client().RoleGrantPermission(ctx, SharedServerRole, old, clientv3.GetPrefixRangeEnd(old), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	if err := d.root.EnableAuth(ctx); err != nil {
		t.Fatalf("EnableAuth again (idempotent): %v", err)
	}
	role, err := d.root.Client().RoleGet(ctx, SharedServerRole)
	if err != nil {
		t.Fatal(err)
	}
	if len(role.Perm) != 1 || string(role.Perm[0].Key) != d.prefix || role.Perm[0].PermType != clientv3.PermRead {
		t.Fatalf("the shared server role holds %v; want only read on %s", role.Perm, d.prefix)
	}
	for _, s := range []string{"s1", "s2"} {
		if err := d.root.GrantServer(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// tcp is the directory's https endpoint.
func (d *tlsDirectory) tcp() []string {
	for _, ep := range d.e.Endpoints() {
		if strings.HasPrefix(ep, "https://") {
			return []string{ep}
		}
	}
	return nil
}

func (d *tlsDirectory) open(t *testing.T, cn string) *Store {
	t.Helper()
	s, err := d.openErr(t, d.tcp(), d.ca.clientTLS(cn, d.ca))
	if err != nil {
		t.Fatalf("open as %s: %v", cn, err)
	}
	return s
}

func (d *tlsDirectory) openErr(t *testing.T, endpoints []string, tc *tls.Config) (*Store, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s, err := Open(ctx, Config{Endpoints: endpoints, TLS: tc, Prefix: d.prefix, DialTimeout: 2 * time.Second, Logger: testLogger(t)})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// TestTLSDirectoryRefusesStrangers: only clients with a certificate of the
// directory's CA get in, and a plain connection gets nothing.
func TestTLSDirectoryRefusesStrangers(t *testing.T) {
	d := newTLSDirectory(t)
	other := newTestCA(t, "someone else's CA")
	for _, c := range []struct {
		name      string
		endpoints []string
		tls       *tls.Config
	}{
		{"no client certificate", d.tcp(), &tls.Config{RootCAs: d.ca.pool(), MinVersion: tls.VersionTLS12}},
		{"certificate of another CA", d.tcp(), other.clientTLS(RootUser, d.ca)},
		{"no client certificate on the unix socket", []string{d.sockURL}, &tls.Config{RootCAs: d.ca.pool(), MinVersion: tls.VersionTLS12}},
		{"plain http", []string{strings.Replace(d.tcp()[0], "https://", "http://", 1)}, nil},
	} {
		_, err := d.openErr(t, c.endpoints, c.tls)
		if err == nil {
			t.Errorf("%s: Open succeeded; want the directory to refuse", c.name)
			continue
		}
		t.Logf("%s: refused: %v", c.name, err)
	}
	// The legitimate client beside them works, on both listeners.
	if _, err := d.open(t, RootUser).Servers(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	s, err := d.openErr(t, []string{d.sockURL}, d.ca.clientTLS(RootUser, d.ca))
	if err != nil {
		t.Fatalf("root over the unixs socket: %v", err)
	}
	if _, err := s.Tenants(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// Config mistakes are caught before dialing.
	_, err = Open(ctxT(t), Config{Endpoints: d.tcp()})
	wantErr(t, err, ErrInvalid, "needs TLS")
	_, err = Open(ctxT(t), Config{Endpoints: []string{"http://127.0.0.1:1"}, TLS: d.ca.clientTLS(RootUser, d.ca)})
	wantErr(t, err, ErrInvalid, "not https:// or unixs://")
	_, err = ServeEmbedded(ctxT(t), EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1:0"}, TLS: d.ca.serveTLS(t.TempDir())})
	wantErr(t, err, ErrInvalid, "not https:// or unixs://")
}

// TestServerRole: what server:s1 may and may not write, and that root may
// do everything.
func TestServerRole(t *testing.T) {
	d := newTLSDirectory(t)
	ctx := ctxT(t)
	root := d.root

	// Root sets up a tenant, a network, a rule; s2 registers.
	must[Network](t)(root.CreateNetwork(ctx, Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}))
	rule := must[policy.Rule](t)(root.AddRule(ctx, "acme", policy.Rule{Action: policy.Deny, From: policy.Selector{Kind: policy.AnyKind}, To: policy.Selector{Kind: policy.NetworkKind, Name: "web"}, Ports: policy.Ports{Proto: session.TCP, First: 22, Last: 22}}))
	s2 := d.open(t, ServerUser("s2"))
	reg2, err := s2.RegisterServer(ctx, Server{Name: "s2", DataIP: netip.MustParseAddr("192.0.2.2"), DataMAC: "02:00:00:00:00:02"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()

	s1 := d.open(t, ServerUser("s1"))
	// Allowed: its own record, its own port maps, and reading everything
	// (including through the watch). Its endpoints and blocks it cannot
	// write itself: the registrar makes those claims for it, with root's
	// credential ([Store.ClaimsFor]).
	reg1, err := s1.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01", AgentAddr: "192.0.2.1:7470"}, 30*time.Second)
	if err != nil {
		t.Fatalf("s1 registering itself: %v", err)
	}
	defer reg1.Close()
	if _, err := reg1.ClaimBlock(ctx, "acme", "web"); !errors.Is(err, ErrDenied) {
		t.Fatalf("s1 claiming a block with its own credential: %v; want ErrDenied", err)
	}
	_, err = s1.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "w0", IP: netip.MustParseAddr("10.1.0.9"), Server: "s1"})
	wantErr(t, err, ErrDenied)
	byRegistrar := must[*Claims](t)(root.ClaimsFor("s1"))
	reg1.UseClaimer(byRegistrar)
	b := must[netip.Prefix](t)(reg1.ClaimBlock(ctx, "acme", "web"))
	if l := leaseOf(t, root, root.k.block("acme", "web", b)); l != 0 {
		t.Fatalf("the registrar put s1's block under lease %x; a block lives under no lease (s1 could not renew its own)", l)
	}
	must[Endpoint](t)(byRegistrar.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "w1", IP: b.Addr().Next().Next(), Server: "s1", IfaceID: "vm-1"}))
	must[Endpoint](t)(byRegistrar.UpdateEndpointPort(ctx, "acme", "w1", 7))
	_, err = s1.UpdateEndpointPort(ctx, "acme", "w1", 8)
	wantErr(t, err, ErrDenied)
	wantErr(t, s1.DeleteEndpoint(ctx, "acme", "w1"), ErrDenied)
	if p := must[policy.Policy](t)(s1.Policy(ctx, "acme")); len(p.Rules) != 1 || p.Rules[0].ID != rule.ID {
		t.Fatalf("s1 reads policy %+v", p)
	}
	if _, err := s1.Client().Put(ctx, d.prefix+"portmaps/s1/tcp/8080", mustJSON(PortMap{Server: "s1", Proto: session.TCP, Port: 8080, Tenant: "acme", Endpoint: "w1", TargetPort: 80})); err != nil {
		t.Fatalf("s1 writing its own port map: %v", err)
	}
	c := NewCache(s1, testLogger(t))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Run(cctx)
	if got := must[Server](t)(c.LookupServer(ctx, "s2")); got.DataIP != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("s1's cache sees s2 as %+v", got)
	}

	// Refused: everything that is not its own, the claim spaces included.
	raw := s1.Client()
	for _, key := range []string{
		"servers/s2", "tenants/acme", "tenants/evil", "zones/99", "networks/acme/web", "networks/acme/new",
		"rules/acme/" + rule.ID, "rules/acme/00000001", "groups/acme/g", "pairs/acme/a/b",
		"revoked/s2", "revoked/s1", "portmaps/s2/tcp/8080", "elsewhere",
		"endpoints/acme/w1", "endpoints/acme/new", "addrs/acme/10.1.0.2", "addrs/acme/10.1.0.200",
		"ifaces/vm-1", "ifaces/vm-9", "blocks/acme/web/" + b.String(), "blocks/acme/web/10.1.0.240/28",
	} {
		if _, err := raw.Put(ctx, d.prefix+key, "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("s1 writing %s: err = %v; want permission denied", key, err)
		}
		if _, err := raw.Delete(ctx, d.prefix+key); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("s1 deleting %s: err = %v; want permission denied", key, err)
		}
	}
	if _, err := raw.Put(ctx, "/outside/the/prefix", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("s1 writing outside the prefix: err = %v", err)
	}
	if _, err := raw.Get(ctx, "/outside/the/prefix"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("s1 reading outside the prefix: err = %v", err)
	}
	_, err = s1.RegisterServer(ctx, Server{Name: "s2", DataIP: netip.MustParseAddr("192.0.2.9"), DataMAC: "02:00:00:00:00:09"}, 30*time.Second)
	wantErr(t, err, ErrConflict, "already registered by another agent at data address 192.0.2.2")
	_, err = s1.RegisterServer(ctx, Server{Name: "s9", DataIP: netip.MustParseAddr("192.0.2.9"), DataMAC: "02:00:00:00:00:09"}, 30*time.Second)
	wantErr(t, err, ErrDenied)
	_, err = s1.AddRule(ctx, "acme", policy.Rule{Action: policy.Allow, From: policy.Selector{Kind: policy.AnyKind}, To: policy.Selector{Kind: policy.AnyKind}})
	wantErr(t, err, ErrDenied)
	_, err = s1.CreateNetwork(ctx, Network{Tenant: "evil", Name: "x", CIDR: netip.MustParsePrefix("10.9.0.0/24")})
	wantErr(t, err, ErrDenied)
	_, err = s1.Expose(ctx, PortMap{Proto: session.TCP, Port: 9090, Tenant: "acme", Endpoint: "w1", TargetPort: 80})
	if err != nil {
		t.Fatalf("s1 exposing its own workload (its own port-map space): %v", err)
	}
	wantErr(t, s1.GrantServer(ctx, "s3"), ErrDenied, "only the root credential")
	wantErr(t, s1.RevokeServer(ctx, "s2", time.Now()), ErrDenied)
	wantErr(t, s1.EnableAuth(ctx), ErrDenied)

	// Root does everything.
	if _, err := root.Client().Put(ctx, d.prefix+"pairs/acme/a/b", mustJSON(policy.Pair{A: "a", B: "b"})); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Client().Delete(ctx, d.prefix+"pairs/acme/a/b"); err != nil {
		t.Fatal(err)
	}
	if err := root.DeleteEndpoint(ctx, "acme", "w1"); err != nil {
		t.Fatal(err)
	}

	// Revocation: s1's credential is refused from the next request on,
	// peers' caches learn it without asking, and s2 is unaffected.
	at := time.Now().Truncate(time.Second)
	if err := root.RevokeServer(ctx, "s1", at); err != nil {
		t.Fatal(err)
	}
	if err := root.RevokeServer(ctx, "s1", at); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	if _, err := raw.Get(ctx, d.prefix+"servers/s2"); err == nil {
		t.Error("s1 still reads after its revocation")
	} else {
		t.Logf("s1 after revocation: %v", err)
	}
	if _, err := raw.Put(ctx, d.prefix+"servers/s1", "{}"); err == nil {
		t.Error("s1 still writes its record after its revocation")
	}
	if _, err := s1.Servers(ctx); !errors.Is(err, ErrDenied) {
		t.Errorf("s1 listing servers after revocation: %v; want ErrDenied", err)
	}
	if got, ok, err := root.Revoked(ctx, "s1"); err != nil || !ok || !got.Equal(at) {
		t.Fatalf("Revoked(s1) = %v %v %v; want %v", got, ok, err, at)
	}
	if _, ok, err := root.Revoked(ctx, "s2"); err != nil || ok {
		t.Fatalf("Revoked(s2) = %v %v", ok, err)
	}
	if _, err := root.Server(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("s1's record after revocation: %v", err)
	}
	c2 := NewCache(s2, testLogger(t))
	go c2.Run(cctx)
	eventually(t, "s2's cache to know s1 is revoked", func() bool { got, ok := c2.Revoked("s1"); return ok && got.Equal(at) })
	if _, ok := c2.Revoked("s2"); ok {
		t.Fatal("s2 reported revoked")
	}
	if _, err := s2.Servers(ctx); err != nil {
		t.Fatalf("s2 after s1's revocation: %v", err)
	}
	// A revocation made while the cache runs arrives through the watch.
	if err := root.GrantServer(ctx, "s3"); err != nil {
		t.Fatal(err)
	}
	if err := root.RevokeServer(ctx, "s3", at.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "s2's cache to hear of s3's revocation", func() bool { _, ok := c2.Revoked("s3"); return ok })
}

// TestPluginRole: an orchestrator plugin (the Docker driver) reads NVI's
// records and keeps its own under its prefix, and writes nothing else.
func TestPluginRole(t *testing.T) {
	d := newTLSDirectory(t)
	ctx := ctxT(t)
	must[Network](t)(d.root.CreateNetwork(ctx, Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}))
	for _, bad := range []string{"nvi/docker/", "/nvi/docker", "/nvi/v1/docker/", "/"} {
		if err := d.root.GrantPlugin(ctx, "docker-s1", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("GrantPlugin with state prefix %q: err = %v, want ErrInvalid", bad, err)
		}
	}
	if err := d.root.GrantPlugin(ctx, "docker-s1", "/nvi/docker/v1/"); err != nil {
		t.Fatal(err)
	}
	p := d.open(t, PluginUser("docker-s1"))
	if nw := must[Network](t)(p.Network(ctx, "acme", "web")); nw.CIDR != netip.MustParsePrefix("10.1.0.0/24") {
		t.Fatalf("the plugin reads %+v", nw)
	}
	raw := p.Client()
	if _, err := raw.Put(ctx, "/nvi/docker/v1/networks/n1", "{}"); err != nil {
		t.Fatalf("the plugin writing its own records: %v", err)
	}
	for _, key := range []string{d.prefix + "servers/s1", d.prefix + "endpoints/acme/x", d.prefix + "networks/acme/web", "/nvi/other"} {
		if _, err := raw.Put(ctx, key, "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("the plugin writing %s: err = %v; want permission denied", key, err)
		}
	}
}

// TestServerLeaseWithClaimedBlocks: a server renews its own lease although
// the registrar (root) wrote its address blocks. etcd refuses a lease
// keep-alive to a client that may not write every key under the lease, so
// a block written under the server's lease made the server's own renewal
// fail with "permission denied", and its record expired.
func TestServerLeaseWithClaimedBlocks(t *testing.T) {
	d := newTLSDirectory(t)
	ctx := ctxT(t)
	must[Network](t)(d.root.CreateNetwork(ctx, Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}))
	s1 := d.open(t, ServerUser("s1"))
	reg, err := s1.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.UseClaimer(must[*Claims](t)(d.root.ClaimsFor("s1")))
	b := must[netip.Prefix](t)(reg.ClaimBlock(ctx, "acme", "web"))
	if err := reg.renew(ctx); err != nil {
		t.Fatalf("s1 renewing its lease after the registrar claimed block %s for it: %v", b, err)
	}
	if bs := must[map[netip.Prefix]string](t)(d.root.Blocks(ctx, "acme", "web")); bs[b] != "s1" {
		t.Fatalf("blocks after renewal = %v", bs)
	}
}
