package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"nvi/pki"
)

type fixture struct {
	caDir  string
	ca     *pki.CA
	addr   string
	grants atomic.Int32
	now    atomic.Pointer[time.Time]
	cfg    Config
}

// start runs an enrollment service on 127.0.0.1 over a fresh CA.
func start(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{caDir: filepath.Join(t.TempDir(), "ca")}
	var err error
	if f.ca, err = pki.InitCA(f.caDir, "test"); err != nil {
		t.Fatal(err)
	}
	f.cfg = Config{
		CADir:   f.caDir,
		CertTTL: time.Hour,
		Grant:   func(context.Context, string) error { f.grants.Add(1); return nil },
		Rate:    1000, Burst: 1000,
		now: func() time.Time {
			if p := f.now.Load(); p != nil {
				return *p
			}
			return time.Now()
		},
	}
	if mod != nil {
		mod(&f.cfg)
	}
	svc, err := NewService(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

func (f *fixture) token(t *testing.T, name string, ttl time.Duration) string {
	t.Helper()
	tok, err := IssueToken(f.caDir, name, f.addr, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) join(t *testing.T, name string) *pki.Identity {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := Join(context.Background(), f.token(t, name, time.Minute), dir); err != nil {
		t.Fatal(err)
	}
	id, err := pki.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func refusedWith(err error, status int) bool {
	var re *RefusedError
	return errors.As(err, &re) && re.Status == status
}

func TestJoinOnce(t *testing.T) {
	f := start(t, nil)
	tok := f.token(t, "s1", 15*time.Minute)
	dir := filepath.Join(t.TempDir(), "id")
	if err := Join(context.Background(), tok, dir); err != nil {
		t.Fatal(err)
	}
	id, err := pki.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name() != "s1" {
		t.Fatalf("enrolled as %q, want s1", id.Name())
	}
	if f.grants.Load() != 1 {
		t.Fatalf("Grant called %d times, want 1", f.grants.Load())
	}
	st, err := os.Stat(filepath.Join(dir, pki.KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v", st, err)
	}
	if s, err := readState(dir); err != nil || s.Addr != f.addr {
		t.Fatalf("enroll.json: %+v %v", s, err)
	}
	// The token is used up, whoever presents it next.
	err = Join(context.Background(), tok, filepath.Join(t.TempDir(), "again"))
	if !refusedWith(err, http.StatusForbidden) {
		t.Fatalf("second use of the token: %v, want a refusal", err)
	}
	if f.grants.Load() != 1 {
		t.Fatal("a refused enrollment granted access")
	}
	// Joining again into an enrolled directory is refused locally.
	if err := Join(context.Background(), f.token(t, "s1", time.Minute), dir); err == nil {
		t.Fatal("Join overwrote an existing identity")
	}
}

func TestJoinRace(t *testing.T) {
	f := start(t, nil)
	tok := f.token(t, "s1", time.Minute)
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if Join(context.Background(), tok, filepath.Join(t.TempDir(), "id", string(rune('a'+i)))) == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d joins succeeded with one token, want 1", ok.Load())
	}
}

func TestJoinRefused(t *testing.T) {
	f := start(t, nil)
	other, err := pki.InitCA(filepath.Join(t.TempDir(), "other"), "x")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Token)
		// after: is the original token still good afterwards?
		stillGood bool
		want      string // in the error
	}{
		{"wrong pin", func(tk *Token) { tk.Pin = other.Pin() }, true, "does not present the CA the token pins"},
		{"wrong secret", func(tk *Token) { tk.Secret = strings.Repeat("A", 43) }, true, "unknown or already used"},
		{"unknown id", func(tk *Token) { tk.ID = "0123456789abcdef" }, true, "unknown or already used"},
		{"altered name", func(tk *Token) { tk.Name = "s2" }, false, "the token was altered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := f.token(t, "s1", time.Minute)
			tk, err := ParseToken(orig)
			if err != nil {
				t.Fatal(err)
			}
			tt.mod(&tk)
			dir := filepath.Join(t.TempDir(), "id")
			if err := Join(context.Background(), tk.String(), dir); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("join: %v, want an error saying %q", err, tt.want)
			}
			if _, err := pki.LoadIdentity(dir); err == nil {
				t.Fatal("a failed join left an identity behind")
			}
			err = Join(context.Background(), orig, filepath.Join(t.TempDir(), "id2"))
			if tt.stillGood && err != nil {
				t.Fatalf("the genuine token no longer works: %v", err)
			}
			if !tt.stillGood && err == nil {
				t.Fatal("the token worked twice")
			}
		})
	}
}

func TestJoinExpired(t *testing.T) {
	f := start(t, nil)
	tok := f.token(t, "s1", time.Minute)
	tk, _ := ParseToken(tok)
	later := time.Now().Add(2 * time.Minute)
	f.now.Store(&later)
	err := Join(context.Background(), tok, filepath.Join(t.TempDir(), "id"))
	if !refusedWith(err, http.StatusForbidden) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.caDir, "tokens", tk.ID+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the expired token was not cleaned up: %v", err)
	}
	f.now.Store(nil)
	if f.join(t, "s2").Name() != "s2" {
		t.Fatal("a fresh token beside it failed")
	}
}

func TestGrantFailureKeepsToken(t *testing.T) {
	var fails atomic.Int32
	fails.Store(1)
	f := start(t, func(c *Config) {
		c.Grant = func(context.Context, string) error {
			if fails.Add(-1) >= 0 {
				return errors.New("directory down")
			}
			return nil
		}
	})
	tok := f.token(t, "s1", time.Minute)
	if err := Join(context.Background(), tok, filepath.Join(t.TempDir(), "a")); !refusedWith(err, http.StatusBadGateway) {
		t.Fatalf("join while Grant fails: %v", err)
	}
	if err := Join(context.Background(), tok, filepath.Join(t.TempDir(), "b")); err != nil {
		t.Fatalf("retry with the same token: %v", err)
	}
}

func TestRenew(t *testing.T) {
	f := start(t, nil)
	s1 := f.join(t, "s1")
	s2 := f.join(t, "s2")
	old := s1.Leaf()
	if err := Renew(context.Background(), s1); err != nil {
		t.Fatal(err)
	}
	if s1.Name() != "s1" || s1.Leaf().SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatalf("after renewal: %q serial %v (was %v)", s1.Name(), s1.Leaf().SerialNumber, old.SerialNumber)
	}

	// A CSR that asks for another name still yields s1.
	key := s1KeyFromDir(t, s1.Dir())
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "server:s2", Organization: []string{pki.OrgServer}}}, key)
	var resp renewResponse
	if err := post(context.Background(), s1.EnrollClientTLS(), f.addr, pathRenew,
		renewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}, &resp); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(resp.Cert))
	c, _ := x509.ParseCertificate(b.Bytes)
	if n, _ := pki.ServerNameOf(c); n != "s1" {
		t.Fatalf("renewal with a CSR naming s2 gave %q", n)
	}

	// Another key is refused.
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, otherKey)
	err := post(context.Background(), s1.EnrollClientTLS(), f.addr, pathRenew,
		renewRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}, &resp)
	if !refusedWith(err, http.StatusBadRequest) {
		t.Fatalf("renewal for another key: %v", err)
	}

	// Without a client certificate there is nothing to renew.
	err = post(context.Background(), pinnedTLS(f.ca.Pin()), f.addr, pathRenew, renewRequest{CSR: "x"}, &resp)
	if !refusedWith(err, http.StatusUnauthorized) {
		t.Fatalf("renewal without a certificate: %v", err)
	}

	// Revoked: s1 cannot renew, s2 beside it can, and the hook heard of it.
	var heard string
	cfg := f.cfg
	cfg.OnRevoke = func(_ context.Context, name string, _ time.Time) error { heard = name; return nil }
	at, err := Revoke(context.Background(), cfg, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if heard != "s1" {
		t.Fatalf("OnRevoke heard %q", heard)
	}
	if err := Renew(context.Background(), s1); !refusedWith(err, http.StatusForbidden) {
		t.Fatalf("revoked s1 renewed: %v", err)
	}
	if err := Renew(context.Background(), s2); err != nil {
		t.Fatalf("s2 beside the revoked s1: %v", err)
	}
	list, err := LoadRevocations(f.caDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckRevoked(list, "s1", s1.Leaf().NotBefore); err == nil {
		t.Fatal("CheckRevoked passes s1's revoked certificate")
	}
	// Enrolled again with a new token, s1 is itself again.
	again := f.join(t, "s1")
	if !again.Leaf().NotBefore.After(at) {
		t.Fatalf("re-enrolled certificate starts %v, not after the revocation at %v", again.Leaf().NotBefore, at)
	}
	if err := CheckRevoked(list, "s1", again.Leaf().NotBefore); err != nil {
		t.Fatalf("re-enrolled s1: %v", err)
	}
	if err := Renew(context.Background(), again); err != nil {
		t.Fatalf("re-enrolled s1 cannot renew: %v", err)
	}
}

func TestProvision(t *testing.T) {
	f := start(t, nil)
	dir := filepath.Join(t.TempDir(), "s5")
	if err := Provision(f.ca, "s5", dir, "nowhere", time.Hour); err == nil {
		t.Fatal("a bad address was accepted")
	}
	if err := Provision(f.ca, "s5", dir, f.addr, time.Hour); err != nil {
		t.Fatal(err)
	}
	id, err := pki.LoadIdentity(dir)
	if err != nil || id.Name() != "s5" {
		t.Fatalf("provisioned identity: %v", err)
	}
	if err := Renew(context.Background(), id); err != nil {
		t.Fatalf("a provisioned identity cannot renew: %v", err)
	}
}

func TestRevokeDropsTokens(t *testing.T) {
	f := start(t, nil)
	tok := f.token(t, "s1", time.Minute)
	keep := f.token(t, "s2", time.Minute)
	if _, err := Revoke(context.Background(), Config{CADir: f.caDir}, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := Join(context.Background(), tok, filepath.Join(t.TempDir(), "a")); err == nil {
		t.Fatal("a token issued before the revocation still works")
	}
	if err := Join(context.Background(), keep, filepath.Join(t.TempDir(), "b")); err != nil {
		t.Fatalf("another server's token: %v", err)
	}
	if _, err := Revoke(context.Background(), Config{CADir: f.caDir}, "Bad/Name"); err == nil {
		t.Fatal("revoked a bad name")
	}
}

func TestKeepRenewed(t *testing.T) {
	f := start(t, func(c *Config) { c.CertTTL = 3 * time.Second })
	s1 := f.join(t, "s1")
	first := s1.Leaf().SerialNumber
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- KeepRenewed(ctx, s1, slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(10 * time.Second)
	for s1.Leaf().SerialNumber.Cmp(first) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("KeepRenewed returned %v", err)
	}
	if s1.Leaf().SerialNumber.Cmp(first) == 0 {
		t.Fatal("the certificate was not renewed")
	}
	if s1.Name() != "s1" {
		t.Fatalf("renewed as %q", s1.Name())
	}
}

func TestRateLimit(t *testing.T) {
	f := start(t, func(c *Config) { c.Rate = 0.001; c.Burst = 20 }) // 5 per source
	var last error
	for range 3 {
		last = Join(context.Background(), "nvi1.x", t.TempDir()) // refused locally, never sent
	}
	if last == nil {
		t.Fatal("a malformed token was accepted")
	}
	var resp enrollResponse
	var codes []int
	for range 7 {
		err := post(context.Background(), pinnedTLS(f.ca.Pin()), f.addr, pathEnroll, enrollRequest{}, &resp)
		var re *RefusedError
		if !errors.As(err, &re) {
			t.Fatalf("want a refusal, got %v", err)
		}
		codes = append(codes, re.Status)
	}
	if codes[0] != http.StatusBadRequest || codes[4] != http.StatusBadRequest || codes[6] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v: want bad request first and too many requests at the end", codes)
	}
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name  string
		b     bucket
		now   time.Time
		rate  float64
		burst int
		ok    bool
	}{
		{"fresh bucket is full", bucket{}, t0, 1, 3, true},
		{"empty", bucket{tokens: 0.5, last: t0}, t0, 1, 3, false},
		{"refilled", bucket{tokens: 0, last: t0}, t0.Add(time.Second), 1, 3, true},
		{"not yet refilled", bucket{tokens: 0, last: t0}, t0.Add(500 * time.Millisecond), 1, 3, false},
		{"clock went back", bucket{tokens: 0, last: t0}, t0.Add(-time.Hour), 1, 3, false},
	}
	for _, tt := range tests {
		got, ok := tt.b.take(tt.now, tt.rate, tt.burst)
		if ok != tt.ok {
			t.Errorf("%s: ok %v, want %v", tt.name, ok, tt.ok)
		}
		if got.tokens > float64(tt.burst) || got.tokens < 0 {
			t.Errorf("%s: %v tokens", tt.name, got.tokens)
		}
	}
	l := newLimiter(100, 100, 1, 2)
	a, b := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	if !l.allow(a, t0) || !l.allow(a, t0) || l.allow(a, t0) {
		t.Error("per-source burst of 2 not enforced")
	}
	if !l.allow(b, t0) {
		t.Error("one source's flood blocked another")
	}
}

func TestParseToken(t *testing.T) {
	good := Token{Addr: "127.0.0.1:7471", Pin: "sha256:" + strings.Repeat("ab", 32), ID: "0123456789abcdef", Secret: strings.Repeat("A", 43), Name: "s1"}
	tests := []struct {
		name string
		s    string
		ok   bool
	}{
		{"good", good.String(), true},
		{"with spaces", " " + good.String() + "\n", true},
		{"no prefix", strings.TrimPrefix(good.String(), tokenPrefix), false},
		{"truncated", good.String()[:20], false},
		{"bad id", func() string { g := good; g.ID = "../../ca.key"; return g.String() }(), false},
		{"bad pin", func() string { g := good; g.Pin = "md5:00"; return g.String() }(), false},
		{"bad name", func() string { g := good; g.Name = "S1"; return g.String() }(), false},
		{"bad addr", func() string { g := good; g.Addr = "nowhere"; return g.String() }(), false},
		{"short secret", func() string { g := good; g.Secret = "abc"; return g.String() }(), false},
	}
	for _, tt := range tests {
		got, err := ParseToken(tt.s)
		if (err == nil) != tt.ok {
			t.Errorf("%s: %v, want ok=%v", tt.name, err, tt.ok)
		}
		if tt.ok && got != good {
			t.Errorf("%s: round trip gave %+v", tt.name, got)
		}
	}
}

func TestIssueTokenChecks(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := IssueToken(caDir, "s1", "127.0.0.1:7471", time.Minute); err == nil || !strings.Contains(err.Error(), "ca init") {
		t.Fatalf("token without a CA: %v", err)
	}
	if _, err := pki.InitCA(caDir, ""); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, addr string
		ttl        time.Duration
	}{{"S1", "127.0.0.1:1", time.Minute}, {"s1", "127.0.0.1", time.Minute}, {"s1", "127.0.0.1:1", 0}, {"s1", "127.0.0.1:1", 48 * time.Hour}} {
		if _, err := IssueToken(caDir, c.name, c.addr, c.ttl); err == nil {
			t.Errorf("IssueToken(%q, %q, %v) accepted", c.name, c.addr, c.ttl)
		}
	}
	tok, err := IssueToken(caDir, "s1", "127.0.0.1:7471", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tk, _ := ParseToken(tok)
	st, err := os.Stat(filepath.Join(caDir, "tokens", tk.ID+".json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token record: %v %v", st, err)
	}
	data, _ := os.ReadFile(filepath.Join(caDir, "tokens", tk.ID+".json"))
	if strings.Contains(string(data), tk.Secret) {
		t.Fatal("the token record holds the secret itself")
	}
}

func TestRenewAt(t *testing.T) {
	t0 := time.Unix(0, 0)
	tests := []struct {
		nb, na, want time.Time
	}{
		{t0.Add(-pki.Skew), t0.Add(3 * time.Hour), t0.Add(2 * time.Hour)},
		{t0, t0.Add(30 * time.Second), t0.Add(20 * time.Second)}, // shorter than the skew: from notBefore
	}
	for _, tt := range tests {
		if got := renewAt(tt.nb, tt.na); !got.Equal(tt.want) {
			t.Errorf("renewAt(%v, %v) = %v, want %v", tt.nb, tt.na, got, tt.want)
		}
	}
	if backoff(0) != time.Second || backoff(3) != 8*time.Second || backoff(100) != 5*time.Minute {
		t.Errorf("backoff: %v %v %v", backoff(0), backoff(3), backoff(100))
	}
}

func s1KeyFromDir(t *testing.T, dir string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, pki.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &limitListener{Listener: inner, slots: make(chan struct{}, 1)}
	defer ln.Close()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			second <- c
		}
	}()
	select {
	case <-second:
		t.Fatal("a second connection was accepted while the only slot is taken")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	first.Close() // a second Close must not free a second slot
	select {
	case c := <-second:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("closing the first connection did not let the second in")
	}
	if len(ln.slots) != 0 {
		t.Fatalf("%d slots still taken after both closed", len(ln.slots))
	}
}

func TestCheckRecord(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rec := record{ID: "0123456789abcdef", Name: "s1", Hash: hashSecret("right"), Expires: t0.Add(time.Minute)}
	tests := []struct {
		name   string
		secret string
		now    time.Time
		want   error
	}{
		{"good", "right", t0, nil},
		{"wrong secret", "wrong", t0, ErrTokenSecret},
		{"empty secret", "", t0, ErrTokenSecret},
		{"at expiry", "right", t0.Add(time.Minute), ErrTokenExpired},
		{"expired, wrong secret too", "wrong", t0.Add(time.Hour), ErrTokenExpired},
	}
	for _, tt := range tests {
		err := checkRecord(rec, tt.secret, tt.now)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

// FuzzParseToken: any string is refused with an error or is a token that
// passes its checks and prints as the same token again. Nothing panics.
func FuzzParseToken(f *testing.F) {
	f.Add(Token{Addr: "198.19.0.254:7471", Pin: "sha256:" + strings.Repeat("ab", 32), ID: "0123456789abcdef", Secret: strings.Repeat("x", 43), Name: "s1"}.String())
	f.Add("nvi1.")
	f.Add("nvi1.e30")
	f.Add("not a token")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("token %q parsed to %+v, which prints as %q and parses to %+v, %v", s, tok, tok.String(), again, err)
		}
	})
}
