package registrar_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/directory"
	"nvi/enroll"
	"nvi/pki"
	"nvi/registrar"
)

var quiet = slog.New(slog.DiscardHandler)

// cloud is a registrar served beside a real enrollment service, over a
// real CA, writing to a real embedded etcd.
type cloud struct {
	caDir string
	ca    *pki.CA
	addr  string
	dir   *directory.Store
}

func start(t *testing.T, rate float64, burst int) *cloud {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &cloud{caDir: filepath.Join(t.TempDir(), "ca")}
	var err error
	if c.ca, err = pki.InitCA(c.caDir, "test"); err != nil {
		t.Fatal(err)
	}
	sock, err := os.MkdirTemp("", "nvi-reg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	e, err := directory.ServeEmbedded(ctx, directory.EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"unix://" + sock + "/etcd.sock"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	if c.dir, err = directory.Open(ctx, directory.Config{Endpoints: e.Endpoints(), Prefix: "/nvi/test/", Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.dir.Close() })

	routes := map[string]http.Handler{}
	svc, err := enroll.NewService(enroll.Config{CADir: c.caDir, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registrar.New(registrar.Config{Directory: c.dir, Caller: svc.Caller, Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	routes[registrar.Prefix] = reg.Handler()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	if _, err := c.dir.CreateNetwork(ctx, directory.Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	return c
}

// server enrolls server name (its certificate from the CA), registers it
// in the directory, and returns its registrar client.
func (c *cloud) server(t *testing.T, name string, n byte) *registrar.Client {
	t.Helper()
	idDir := filepath.Join(t.TempDir(), name)
	if err := enroll.Provision(c.ca, name, idDir, c.addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	id, err := pki.LoadIdentity(idDir)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.dir.RegisterServer(context.Background(), directory.Server{Name: name, DataIP: netip.AddrFrom4([4]byte{192, 0, 2, n}), DataMAC: "02:00:00:00:00:0" + string('0'+n)}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	cl := registrar.NewClient(c.addr, id.EnrollClientTLS())
	t.Cleanup(cl.Close)
	return cl
}

func wantKind(t *testing.T, err, kind error, text string) {
	t.Helper()
	if !errors.Is(err, kind) || !strings.Contains(fmtErr(err), text) {
		t.Fatalf("err = %v; want %v containing %q", err, kind, text)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestClaimsSpeakForTheCaller: a server's certificate decides whose claims
// it makes; another server's records stay as they were, whatever it asks.
func TestClaimsSpeakForTheCaller(t *testing.T) {
	c := start(t, 1000, 1000)
	ctx := context.Background()
	s1, s2 := c.server(t, "s1", 1), c.server(t, "s2", 2)

	b, err := s1.ClaimBlock(ctx, "acme", "web")
	if err != nil {
		t.Fatal(err)
	}
	w1 := directory.Endpoint{Tenant: "acme", Network: "web", Name: "w1", IP: b.Addr().Next().Next(), Server: "s1", IfaceID: "vm-1"}
	got, err := s1.CreateEndpoint(ctx, w1)
	if err != nil {
		t.Fatal(err)
	}
	if got.IP != w1.IP || got.Server != "s1" {
		t.Fatalf("created %+v", got)
	}
	if _, err := s1.UpdateEndpointPort(ctx, "acme", "w1", 5); err != nil {
		t.Fatal(err)
	}

	// s2 in s1's name, or on s1's records: refused, with the reason.
	_, err = s2.CreateEndpoint(ctx, directory.Endpoint{Tenant: "acme", Network: "web", Name: "w2", IP: netip.MustParseAddr("10.1.0.200"), Server: "s1"})
	wantKind(t, err, directory.ErrDenied, `server s2 cannot create endpoint acme/w2 on server "s1"`)
	_, err = s2.UpdateEndpointPort(ctx, "acme", "w1", 9)
	wantKind(t, err, directory.ErrDenied, "it lives on server s1")
	wantKind(t, s2.DeleteEndpoint(ctx, "acme", "w1"), directory.ErrDenied, "it lives on server s1")
	wantKind(t, s2.ReleaseBlock(ctx, directory.BlockRef{Tenant: "acme", Network: "web", Block: b}), directory.ErrConflict, "held by server s1, not s2")
	lost, err := s2.KeepBlocks(ctx, []directory.BlockRef{{Tenant: "acme", Network: "web", Block: b}})
	if err != nil || len(lost) != 1 {
		t.Fatalf("s2 keeping s1's block: lost %v, %v", lost, err)
	}
	// The directory's own refusals come back as the same kinds.
	_, err = s2.CreateEndpoint(ctx, directory.Endpoint{Tenant: "acme", Network: "web", Name: "w2", IP: w1.IP, Server: "s2"})
	wantKind(t, err, directory.ErrConflict, "address "+w1.IP.String()+" is already used by acme/w1")
	_, err = s2.ClaimBlock(ctx, "acme", "nope")
	wantKind(t, err, directory.ErrNotFound, "network acme/nope does not exist")

	if e, err := c.dir.Endpoint(ctx, "acme", "w1"); err != nil || e.Port != 5 || e.Server != "s1" {
		t.Fatalf("s1's endpoint after s2's attempts: %+v, %v", e, err)
	}
	if bs, err := c.dir.Blocks(ctx, "acme", "web"); err != nil || len(bs) != 1 || bs[b] != "s1" {
		t.Fatalf("blocks after s2's attempts: %v, %v", bs, err)
	}
	if bs, err := s1.AdoptBlocks(ctx, "acme", "web"); err != nil || len(bs) != 1 || bs[0] != b {
		t.Fatalf("s1's blocks: %v, %v", bs, err)
	}
	if err := s1.DeleteEndpoint(ctx, "acme", "w1"); err != nil {
		t.Fatal(err)
	}

	// Revoked: refused from then on, and nothing it asks is done.
	if _, err := enroll.Revoke(ctx, enroll.Config{CADir: c.caDir}, "s2"); err != nil {
		t.Fatal(err)
	}
	_, err = s2.CreateEndpoint(ctx, directory.Endpoint{Tenant: "acme", Network: "web", Name: "w3", IP: netip.MustParseAddr("10.1.0.201"), Server: "s2"})
	wantKind(t, err, directory.ErrDenied, "revoked")
	if _, err := c.dir.Endpoint(ctx, "acme", "w3"); !errors.Is(err, directory.ErrNotFound) {
		t.Fatalf("a revoked server's endpoint exists: %v", err)
	}
}

// TestStrangersAreRefused: no certificate, or a certificate that is not a
// server's, makes no claim at all.
func TestStrangersAreRefused(t *testing.T) {
	c := start(t, 1000, 1000)
	ctx := context.Background()
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert())

	anon := registrar.NewClient(c.addr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1"})
	defer anon.Close()
	_, err := anon.ClaimBlock(ctx, "acme", "web")
	wantKind(t, err, directory.ErrDenied, "needs the server's certificate")

	opDir := filepath.Join(t.TempDir(), "operator")
	if err := c.ca.IssueOperator(opDir, time.Hour); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(opDir, "cert.pem"), filepath.Join(opDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	op := registrar.NewClient(c.addr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}})
	defer op.Close()
	_, err = op.ClaimBlock(ctx, "acme", "web")
	wantKind(t, err, directory.ErrDenied, "registrar:")
	if bs, err := c.dir.Blocks(ctx, "acme", "web"); err != nil || len(bs) != 0 {
		t.Fatalf("blocks after strangers' attempts: %v, %v", bs, err)
	}
}

// TestRateIsPerServer: a server over its rate is told to come back, and
// another server is not slowed by it.
func TestRateIsPerServer(t *testing.T) {
	c := start(t, 0.001, 3)
	ctx := context.Background()
	s1, s2 := c.server(t, "s1", 1), c.server(t, "s2", 2)
	for i := range 3 {
		if _, err := s1.AdoptBlocks(ctx, "acme", "web"); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := s1.AdoptBlocks(ctx, "acme", "web")
	wantKind(t, err, directory.ErrUnavailable, "too many requests from server s1")
	if _, err := s2.AdoptBlocks(ctx, "acme", "web"); err != nil {
		t.Fatalf("s2 beside a busy s1: %v", err)
	}
}
