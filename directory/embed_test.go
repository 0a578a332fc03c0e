package directory

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"nvi/policy"
)

// serveOwn starts a private embedded etcd for a test that needs to stop it.
func serveOwn(t *testing.T, dir string, clientURL string) *Embedded {
	t.Helper()
	e, err := ServeEmbedded(ctxT(t), EmbedConfig{DataDir: dir, ClientURLs: []string{clientURL}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestCacheServesHitsWhileEtcdDown is invariant 5 of the design: with the
// directory down, cached look-ups go on; only uncached ones fail, and fail
// fast. When the directory returns, the cache's watch resumes.
func TestCacheServesHitsWhileEtcdDown(t *testing.T) {
	dir := t.TempDir()
	e := serveOwn(t, dir, "http://127.0.0.1:0")
	url := e.Endpoints()[0]
	s := openOn(t, e.Endpoints(), "/down/")
	ctx := ctxT(t)
	reg, err := s.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close() // before the cleanups stop etcd
	// A second agent with a short lease, whose renewals will fail.
	log, logged := newCapture(t)
	s2 := openWith(t, e.Endpoints(), "/down/", log)
	reg2, err := s2.RegisterServer(ctx, Server{Name: "s2", DataIP: netip.MustParseAddr("192.0.2.2"), DataMAC: "02:00:00:00:00:02"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg2.Close()
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	a := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))

	c := NewCache(s, testLogger(t), WithLookupTimeout(500*time.Millisecond))
	defer runCache(t, c)()
	must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", a.IP))
	must[Server](t)(c.LookupServer(ctx, "s1"))
	must[Network](t)(c.LookupNetwork(ctx, "acme", "web"))
	rule := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Deny, From: policy.Selector{Kind: policy.AnyKind}, To: policy.Selector{Kind: policy.NetworkKind, Name: "web"}}))
	eventually(t, "policy with the rule in the cache", func() bool {
		p, err := c.LookupPolicy(ctx, "acme")
		return err == nil && len(p.Rules) == 1
	})
	zone := must[Tenant](t)(c.LookupTenant(ctx, "acme")).Zone

	start := time.Now()
	e.Close()
	t.Logf("embedded etcd stopped in %v", time.Since(start))

	start = time.Now()
	for range 1000 {
		if got, err := c.LookupEndpoint(ctx, "acme", a.IP); err != nil || got != a {
			t.Fatalf("cached endpoint with etcd down: %+v, %v", got, err)
		}
		if _, err := c.LookupServer(ctx, "s1"); err != nil {
			t.Fatalf("cached server with etcd down: %v", err)
		}
		if _, err := c.LookupNetwork(ctx, "acme", "web"); err != nil {
			t.Fatalf("cached network with etcd down: %v", err)
		}
		if p, err := c.LookupPolicy(ctx, "acme"); err != nil || len(p.Rules) != 1 || p.Rules[0] != rule {
			t.Fatalf("cached policy with etcd down: %+v, %v", p, err)
		}
		if tn, err := c.LookupTenant(ctx, "acme"); err != nil || tn.Zone != zone {
			t.Fatalf("cached tenant with etcd down: %+v, %v", tn, err)
		}
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("5000 cached look-ups took %v with etcd down", took)
	}

	start = time.Now()
	_, err = c.LookupEndpoint(ctx, "acme", netip.MustParseAddr("10.1.0.77"))
	took := time.Since(start)
	wantErr(t, err, ErrUnavailable, "10.1.0.77")
	if took > 2*time.Second {
		t.Fatalf("uncached look-up took %v with etcd down; want about the 500ms lookup timeout", took)
	}
	t.Logf("uncached look-up failed after %v: %v", took, err)
	// A caller's own shorter deadline wins.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = c.LookupServer(short, "s9")
	wantErr(t, err, ErrUnavailable)
	if took := time.Since(start); took > 400*time.Millisecond {
		t.Fatalf("look-up ignored the caller's deadline: %v", took)
	}

	// The directory comes back on the same address and data: the watch
	// resumes and changes flow into the cache again.
	e2 := serveOwn(t, dir, url)
	if e2.Endpoints()[0] != url {
		t.Fatalf("restarted on %v; want %s", e2.Endpoints(), url)
	}
	if !logged("lease renewal failed, retrying") {
		t.Error("the outage was not logged by the lease keep-alive")
	}
	// Either the restarted etcd still had the lease (it restores leases with
	// a fresh TTL) and renewal resumes, or it expired and the agent
	// registered again: both keep the record.
	eventually(t, "renewal or re-registration", func() bool {
		return logged("lease renewed again") || logged("server registered again")
	})
	must[Server](t)(s.Server(ctx, "s2"))
	must[Endpoint](t)(s.UpdateEndpointPort(ctx, "acme", "a", 5))
	eventually(t, "update after etcd restart", func() bool {
		got, err := c.LookupEndpoint(ctx, "acme", a.IP)
		return err == nil && got.Port == 5
	})
}

func TestEmbeddedAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	_, err = ServeEmbedded(ctxT(t), EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"http://" + l.Addr().String()}, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("ServeEmbedded on a used port = %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failing took %v", took)
	}
	t.Log(err)

	_, err = ServeEmbedded(ctxT(t), EmbedConfig{})
	wantErr(t, err, ErrInvalid, "needs a data directory")
	_, err = ServeEmbedded(ctxT(t), EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"127.0.0.1:2379"}})
	wantErr(t, err, ErrInvalid, "is not a URL")
}

func TestEmbeddedUnixSocket(t *testing.T) {
	dir := t.TempDir()
	sock := "unix://" + dir + "/run/etcd.sock" // the socket's directory is created
	e, err := ServeEmbedded(ctxT(t), EmbedConfig{DataDir: dir + "/data", ClientURLs: []string{sock}, LogFile: dir + "/etcd.log", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := os.Stat(dir + "/etcd.log"); err != nil {
		t.Fatalf("etcd log file: %v", err)
	}
	if eps := e.Endpoints(); len(eps) != 1 || eps[0] != sock {
		t.Fatalf("Endpoints = %v; want [%s]", eps, sock)
	}
	s := openOn(t, e.Endpoints(), "")
	if s.Prefix() != DefaultPrefix {
		t.Fatalf("Prefix = %q", s.Prefix())
	}
	must[Tenant](t)(s.CreateTenant(ctxT(t), "acme"))

	// A second member on the same live socket must not steal it.
	_, err = ServeEmbedded(ctxT(t), EmbedConfig{DataDir: dir + "/other", ClientURLs: []string{sock}, Logger: testLogger(t)})
	if !errors.Is(err, errAddrInUse) {
		t.Fatalf("second member on %s: %v", sock, err)
	}
	must[Tenant](t)(s.Tenant(ctxT(t), "acme"))
}
