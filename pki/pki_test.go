package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// agentIdentity is the interface the agent's Config takes; *Identity must
// satisfy it.
type agentIdentity interface {
	ServerTLS() *tls.Config
	ClientTLS(peer string) *tls.Config
	PeerName(cs *tls.ConnectionState) (string, error)
}

var _ agentIdentity = (*Identity)(nil)

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, err := InitCA(filepath.Join(t.TempDir(), "ca"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// enrollServer makes an identity directory for server name, as enrollment does.
func enrollServer(t *testing.T, ca *CA, name string, ttl time.Duration) *Identity {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := GenerateKey(dir); err != nil {
		t.Fatal(err)
	}
	csr, err := CSRFromKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignServer(csr, name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	id, err := InstallIdentity(dir, cert, ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// rawServerCert is a server certificate with an arbitrary window, as a TLS
// certificate (LoadIdentity would refuse an expired one).
func rawServerCert(t *testing.T, ca *CA, name string, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := csr(key, pkixName())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignServerWindow(csrPEM, name, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

func operator(t *testing.T, ca *CA) *Identity {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "operator")
	if err := ca.IssueOperator(dir, time.Hour); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type result struct {
	serverErr, clientErr error
	peer                 string // the name the server's PeerName gave the client
	serverCert           *x509.Certificate
	resumed              bool
}

// exchange runs one TLS connection over loopback: the client sends "ping",
// the server answers "pong".
func exchange(t *testing.T, ln net.Listener, srv, cli *tls.Config, srvID *Identity) result {
	t.Helper()
	done := make(chan result, 1)
	go func() {
		var r result
		c, err := ln.Accept()
		if err != nil {
			r.serverErr = err
			done <- r
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if r.serverErr = tc.Handshake(); r.serverErr == nil {
			cs := tc.ConnectionState()
			r.peer, r.serverErr = srvID.PeerName(&cs)
		}
		if r.serverErr == nil {
			buf := make([]byte, 4)
			if _, r.serverErr = io.ReadFull(tc, buf); r.serverErr == nil {
				_, r.serverErr = tc.Write([]byte("pong"))
			}
		}
		done <- r
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cli)
	var clientErr error
	var cs tls.ConnectionState
	if clientErr = tc.Handshake(); clientErr == nil {
		cs = tc.ConnectionState()
		if _, clientErr = tc.Write([]byte("ping")); clientErr == nil {
			buf := make([]byte, 4)
			if _, clientErr = io.ReadFull(tc, buf); clientErr == nil && string(buf) != "pong" {
				clientErr = errors.New("bad answer " + string(buf))
			}
		}
	}
	r := <-done
	r.clientErr = clientErr
	if len(cs.PeerCertificates) > 0 {
		r.serverCert = cs.PeerCertificates[0]
	}
	r.resumed = cs.DidResume
	return r
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func withClientCert(c *tls.Config, cert *tls.Certificate) *tls.Config {
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return c
}

func withServerCert(c *tls.Config, cert *tls.Certificate) *tls.Config {
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	return c
}

func revokeNames(names ...string) func(string, time.Time) error {
	return func(name string, _ time.Time) error {
		for _, n := range names {
			if n == name {
				return errors.New("revoked")
			}
		}
		return nil
	}
}

// TestPeerTLS: s2 calls s1's peer API; every way of being someone else fails
// on the side that must refuse it, and the legitimate call beside it works.
func TestPeerTLS(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	s1 := enrollServer(t, ca, "s1", time.Hour)
	s2 := enrollServer(t, ca, "s2", time.Hour)
	s3 := enrollServer(t, ca, "s3", time.Hour)
	op := operator(t, ca)
	now := time.Now()
	expired2 := rawServerCert(t, ca, "s2", now.Add(-2*time.Hour), now.Add(-time.Hour))
	expired1 := rawServerCert(t, ca, "s1", now.Add(-2*time.Hour), now.Add(-time.Hour))
	foreign2 := rawServerCert(t, other, "s2", now.Add(-time.Minute), now.Add(time.Hour))
	foreign1 := rawServerCert(t, other, "s1", now.Add(-time.Minute), now.Add(time.Hour))

	tests := []struct {
		name      string
		srv       func() *tls.Config
		cli       func() *tls.Config
		srvRevoke func(string, time.Time) error
		cliRevoke func(string, time.Time) error
		refuser   string // "", "server" or "client"
	}{
		{name: "legitimate s2 to s1", srv: s1.ServerTLS, cli: func() *tls.Config { return s2.ClientTLS("s1") }},
		{name: "client cert from another CA", srv: s1.ServerTLS,
			cli: func() *tls.Config { return withClientCert(s2.ClientTLS("s1"), foreign2) }, refuser: "server"},
		{name: "expired client cert", srv: s1.ServerTLS,
			cli: func() *tls.Config { return withClientCert(s2.ClientTLS("s1"), expired2) }, refuser: "server"},
		{name: "operator cert on the peer API", srv: s1.ServerTLS,
			cli: func() *tls.Config { return withClientCert(s2.ClientTLS("s1"), op.current()) }, refuser: "server"},
		{name: "revoked client", srv: s1.ServerTLS, cli: func() *tls.Config { return s2.ClientTLS("s1") },
			srvRevoke: revokeNames("s2"), refuser: "server"},
		{name: "other revoked names do not matter", srv: s1.ServerTLS, cli: func() *tls.Config { return s2.ClientTLS("s1") },
			srvRevoke: revokeNames("s3"), cliRevoke: revokeNames("s3")},
		{name: "s3 answers where s1 is wanted", srv: s3.ServerTLS, cli: func() *tls.Config { return s2.ClientTLS("s1") }, refuser: "client"},
		{name: "server cert from another CA", srv: func() *tls.Config { return withServerCert(s1.ServerTLS(), foreign1) },
			cli: func() *tls.Config { return s2.ClientTLS("s1") }, refuser: "client"},
		{name: "expired server cert", srv: func() *tls.Config { return withServerCert(s1.ServerTLS(), expired1) },
			cli: func() *tls.Config { return s2.ClientTLS("s1") }, refuser: "client"},
		{name: "operator cert answering", srv: func() *tls.Config { return withServerCert(s1.ServerTLS(), op.current()) },
			cli: func() *tls.Config { return s2.ClientTLS("s1") }, refuser: "client"},
		{name: "revoked server", srv: s1.ServerTLS, cli: func() *tls.Config { return s2.ClientTLS("s1") },
			cliRevoke: revokeNames("s1"), refuser: "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s1.SetRevocationCheck(tt.srvRevoke)
			s3.SetRevocationCheck(tt.srvRevoke)
			s2.SetRevocationCheck(tt.cliRevoke)
			defer s1.SetRevocationCheck(nil)
			defer s2.SetRevocationCheck(nil)
			defer s3.SetRevocationCheck(nil)
			srvID := s1
			if tt.name == "s3 answers where s1 is wanted" {
				srvID = s3
			}
			r := exchange(t, listen(t), tt.srv(), tt.cli(), srvID)
			switch tt.refuser {
			case "":
				if r.serverErr != nil || r.clientErr != nil {
					t.Fatalf("want a working connection, got server %v, client %v", r.serverErr, r.clientErr)
				}
				if r.peer != "s2" {
					t.Fatalf("server sees peer %q, want s2", r.peer)
				}
			case "server":
				if r.serverErr == nil || r.clientErr == nil {
					t.Fatalf("want the server to refuse, got server %v, client %v", r.serverErr, r.clientErr)
				}
			case "client":
				if r.clientErr == nil {
					t.Fatalf("want the client to refuse, got server %v, client %v", r.serverErr, r.clientErr)
				}
			}
		})
	}
}

func TestPeerNameRefusesNonServers(t *testing.T) {
	ca := newCA(t)
	s1 := enrollServer(t, ca, "s1", time.Hour)
	op := operator(t, ca)
	other := enrollServer(t, newCA(t), "s2", time.Hour)
	dirOut := filepath.Join(t.TempDir(), "dir")
	if err := ca.IssueDirectory(dirOut, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	dirID, err := LoadIdentity(dirOut)
	if err != nil {
		t.Fatal(err)
	}
	s2 := enrollServer(t, ca, "s2", time.Hour)
	tests := []struct {
		name string
		cs   *tls.ConnectionState
		want string
	}{
		{"nil state", nil, ""},
		{"no certificate", &tls.ConnectionState{}, ""},
		{"operator", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{op.Leaf()}}, ""},
		{"directory", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{dirID.Leaf()}}, ""},
		{"other CA", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{other.Leaf()}}, ""},
		{"server s2", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{s2.Leaf()}}, "s2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s1.PeerName(tt.cs)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("want refusal, got %q", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if op.Name() != "root" || s1.Name() != "s1" {
		t.Fatalf("names: operator %q, server %q", op.Name(), s1.Name())
	}
}

// TestRotation: a connection up before Replace keeps working, new ones get
// the new certificate, resumed ones still check revocation.
func TestRotation(t *testing.T) {
	ca := newCA(t)
	s1 := enrollServer(t, ca, "s1", time.Hour)
	s2 := enrollServer(t, ca, "s2", time.Hour)
	ln := listen(t)
	old := s1.Leaf()

	// A long-lived connection from s2 to s1.
	srvConn := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(srvConn)
			return
		}
		srvConn <- tls.Server(c, s1.ServerTLS())
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cli := tls.Client(raw, s2.ClientTLS("s1"))
	defer cli.Close()
	srv := <-srvConn
	if srv == nil {
		t.Fatal("accept failed")
	}
	defer srv.Close()
	ping := func(round string) {
		t.Helper()
		errc := make(chan error, 1)
		go func() {
			buf := make([]byte, 4)
			if _, err := io.ReadFull(srv, buf); err != nil {
				errc <- err
				return
			}
			_, err := srv.Write(buf)
			errc <- err
		}()
		if _, err := cli.Write([]byte("ping")); err != nil {
			t.Fatalf("%s: write: %v", round, err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(cli, buf); err != nil {
			t.Fatalf("%s: read: %v", round, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: server: %v", round, err)
		}
	}
	ping("before rotation")

	csr, err := s1.CSR()
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := ca.SignServer(csr, "s1", 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Replace(renewed); err != nil {
		t.Fatal(err)
	}
	ping("after rotation, same connection")
	if s1.Leaf().SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatal("Replace did not swap the certificate")
	}

	r := exchange(t, ln, s1.ServerTLS(), s2.ClientTLS("s1"), s1)
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("new connection after rotation: server %v, client %v", r.serverErr, r.clientErr)
	}
	if r.serverCert.SerialNumber.Cmp(s1.Leaf().SerialNumber) != 0 {
		t.Fatal("a new connection did not get the renewed certificate")
	}
	reloaded, err := LoadIdentity(s1.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if reloaded.Leaf().SerialNumber.Cmp(s1.Leaf().SerialNumber) != 0 {
		t.Fatal("cert.pem on disk is not the renewed certificate")
	}

	// Reconnects to the same listener (one server config, as a listener
	// has) resume, and a resumed connection is still checked.
	srvCfg := s1.ServerTLS()
	r = exchange(t, ln, srvCfg, s2.ClientTLS("s1"), s1)
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("connect: server %v, client %v", r.serverErr, r.clientErr)
	}
	r = exchange(t, ln, srvCfg, s2.ClientTLS("s1"), s1)
	if r.serverErr != nil || r.clientErr != nil || !r.resumed {
		t.Fatalf("reconnect: server %v, client %v, resumed %v; want a resumed connection", r.serverErr, r.clientErr, r.resumed)
	}
	s1.SetRevocationCheck(revokeNames("s2"))
	r = exchange(t, ln, srvCfg, s2.ClientTLS("s1"), s1)
	if r.serverErr == nil {
		t.Fatal("a revoked client resumed its session")
	}
	s1.SetRevocationCheck(nil)
	s2.SetRevocationCheck(revokeNames("s1"))
	r = exchange(t, ln, srvCfg, s2.ClientTLS("s1"), s1)
	if r.clientErr == nil {
		t.Fatal("the client resumed a session with a revoked server")
	}
}

func TestReplaceRefuses(t *testing.T) {
	ca := newCA(t)
	s1 := enrollServer(t, ca, "s1", time.Hour)
	s3 := enrollServer(t, ca, "s3", time.Hour)
	csr, err := s1.CSR()
	if err != nil {
		t.Fatal(err)
	}
	asS3, err := ca.SignServer(csr, "s3", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := newCA(t).SignServer(csr, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s3csr, _ := s3.CSR()
	otherKey, err := ca.SignServer(s3csr, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good, err := ca.SignServer(csr, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pem  []byte
		ok   bool
	}{
		{"another name for the same key", asS3, false},
		{"from another CA", otherCA, false},
		{"for another key", otherKey, false},
		{"garbage", []byte("not a certificate"), false},
		{"renewal", good, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(filepath.Join(s1.Dir(), CertFile))
			err := s1.Replace(tt.pem)
			after, _ := os.ReadFile(filepath.Join(s1.Dir(), CertFile))
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(after, tt.pem) {
					t.Fatal("cert.pem not rewritten")
				}
				return
			}
			if err == nil {
				t.Fatal("want refusal")
			}
			if !bytes.Equal(before, after) || s1.Name() != "s1" {
				t.Fatal("a refused certificate changed the identity")
			}
		})
	}
}

func TestSignServerCSR(t *testing.T) {
	ca := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, err := csr(key, pkixName())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(good)
	tampered := bytes.Clone(b.Bytes)
	tampered[len(tampered)-70] ^= 0x01 // inside the public key or the signature
	tamperedPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})
	// A CSR signed by one key but carrying another's public key.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCSR, _ := csr(other, pkixName())
	ob, _ := pem.Decode(otherCSR)
	swapped := swapPublicKey(t, b.Bytes, ob.Bytes)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	tests := []struct {
		name string
		csr  []byte
		ok   bool
	}{
		{"valid", good, true},
		{"not PEM", []byte("hello"), false},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes}), false},
		{"tampered byte", tamperedPEM, false},
		{"public key swapped", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: swapped}), false},
		{"RSA key", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: rsaDER}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, err := ca.SignServer(tt.csr, "s1", time.Hour)
			if !tt.ok {
				if err == nil {
					t.Fatal("want refusal")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := parseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := ServerNameOf(c); err != nil || n != "s1" {
				t.Fatalf("issued certificate names %q (%v)", n, err)
			}
		})
	}
}

// swapPublicKey puts the public key of CSR b into CSR a, leaving a's signature.
func swapPublicKey(t *testing.T, a, b []byte) []byte {
	t.Helper()
	ca, _ := x509.ParseCertificateRequest(a)
	cb, _ := x509.ParseCertificateRequest(b)
	out := bytes.Replace(a, ca.RawSubjectPublicKeyInfo, cb.RawSubjectPublicKeyInfo, 1)
	if bytes.Equal(out, a) {
		t.Fatal("could not swap the key")
	}
	return out
}

func TestSignServerNameFromCaller(t *testing.T) {
	ca := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	n := pkixName()
	n.CommonName = "server:s9"
	n.Organization = []string{OrgServer}
	req, _ := csr(key, n)
	certPEM, err := ca.SignServer(req, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := parseCertPEM(certPEM)
	if got, _ := ServerNameOf(c); got != "s1" {
		t.Fatalf("the CSR chose the name: %q", got)
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"s1", true},
		{"a", true},
		{"edge-router-9", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"S1", false},
		{"1s", false},
		{"-s", false},
		{"s_1", false},
		{"s1/../ca", false},
		{"s1.example", false},
		{"root", true},
	}
	for _, tt := range tests {
		if err := ValidName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	ca := newCA(t)
	req, _ := csr(mustKey(t), pkixName())
	if _, err := ca.SignServer(req, "S1", time.Hour); err == nil {
		t.Error("SignServer took a bad name")
	}
}

func TestSignServerTTL(t *testing.T) {
	ca := newCA(t)
	req, _ := csr(mustKey(t), pkixName())
	for _, ttl := range []time.Duration{0, -time.Hour, MaxTTL + time.Hour} {
		if _, err := ca.SignServer(req, "s1", ttl); err == nil {
			t.Errorf("ttl %v accepted", ttl)
		}
	}
}

func TestCAFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := LoadCA(dir); !errors.Is(err, ErrNoCA) {
		t.Fatalf("LoadCA of nothing: %v, want ErrNoCA", err)
	}
	ca, err := InitCA(dir, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InitCA(dir, "acme"); !errors.Is(err, ErrCAExists) {
		t.Fatalf("second InitCA: %v, want ErrCAExists", err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, CAKeyFile): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
		}
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Pin() != ca.Pin() || !bytes.Equal(loaded.CertPEM(), ca.CertPEM()) {
		t.Fatal("LoadCA read another CA")
	}
	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("LoadCA with a world-readable key: %v", err)
	}
}

func TestIssueDirectory(t *testing.T) {
	ca := newCA(t)
	out := filepath.Join(t.TempDir(), "etcd")
	if err := ca.IssueDirectory(out, nil, nil, time.Hour); err == nil {
		t.Fatal("a directory certificate with no address was issued")
	}
	ip := netip.MustParseAddr("198.18.0.254")
	if err := ca.IssueDirectory(out, []netip.Addr{ip}, []string{"etcd.local"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(out)
	if err != nil {
		t.Fatal(err)
	}
	leaf := id.Leaf()
	if err := leaf.VerifyHostname("198.18.0.254"); err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("etcd.local"); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerNameOf(leaf); err == nil {
		t.Fatal("the directory's certificate passes as a server's")
	}
}

func TestExpiredIdentity(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "s1")
	if err := GenerateKey(dir); err != nil {
		t.Fatal(err)
	}
	csrPEM, _ := CSRFromKey(dir)
	now := time.Now()
	old, err := ca.SignServerWindow(csrPEM, "s1", now.Add(-2*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InstallIdentity(dir, old, ca.CertPEM()); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("installing an expired certificate: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CertFile), old, 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, CAFile), ca.CertPEM(), 0o644)
	if _, err := LoadIdentity(dir); err == nil || !strings.Contains(err.Error(), "enroll again") {
		t.Fatalf("loading an expired identity: %v", err)
	}
}

func TestIssueServer(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "s1")
	if err := ca.IssueServer(dir, "Bad", time.Hour); err == nil {
		t.Fatal("issued a bad name")
	}
	if err := ca.IssueServer(dir, "s1", time.Hour); err != nil {
		t.Fatal(err)
	}
	s1, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2 := enrollServer(t, ca, "s2", time.Hour)
	r := exchange(t, listen(t), s2.ServerTLS(), s1.ClientTLS("s2"), s2)
	if r.serverErr != nil || r.clientErr != nil || r.peer != "s1" {
		t.Fatalf("provisioned s1 to enrolled s2: server %v, client %v, peer %q", r.serverErr, r.clientErr, r.peer)
	}
}

func TestLoadIdentityMissing(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadIdentity(dir); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("empty dir: %v, want ErrNoIdentity", err)
	}
	if err := GenerateKey(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(dir); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("key only: %v, want ErrNoIdentity", err)
	}
	ca := newCA(t)
	csrPEM, _ := CSRFromKey(dir)
	cert, _ := ca.SignServer(csrPEM, "s1", time.Hour)
	if _, err := InstallIdentity(dir, cert, newCA(t).CertPEM()); err == nil {
		t.Fatal("installed a certificate under the wrong CA")
	}
	if _, err := InstallIdentity(dir, cert, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKey(dir); err == nil {
		t.Fatal("GenerateKey overwrote an enrolled identity's key")
	}
}

func TestEnrollServiceCert(t *testing.T) {
	ca := newCA(t)
	certPEM, keyPEM, err := ca.IssueEnrollService([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, _ := x509.ParseCertificate(der)
		chain = append(chain, c)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())
	if err := CheckEnrollService(chain, roots); err != nil {
		t.Fatal(err)
	}
	s1 := enrollServer(t, ca, "s1", time.Hour)
	if err := CheckEnrollService([]*x509.Certificate{s1.Leaf()}, roots); err == nil {
		t.Fatal("a server certificate passes as the enrollment service")
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(newCA(t).Cert())
	if err := CheckEnrollService(chain, otherRoots); err == nil {
		t.Fatal("an enrollment service of another CA passes")
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pkixName() pkix.Name { return pkix.Name{} }

// TestPeerNameOnLongConnections: a connection authenticated at its
// handshake keeps naming its server after the certificate it showed has
// expired (the peer rotated meanwhile), but not after a revocation; a
// foreign certificate never names anyone.
func TestPeerNameOnLongConnections(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	s1 := enrollServer(t, ca, "s1", time.Hour)
	now := time.Now()
	state := func(c *tls.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}}
	}
	old := rawServerCert(t, ca, "s2", now.Add(-90*time.Second), now.Add(-time.Second))
	if name, err := s1.PeerName(state(old)); err != nil || name != "s2" {
		t.Fatalf("PeerName on a connection whose certificate expired since: %q, %v; want s2", name, err)
	}
	if _, err := s1.PeerName(state(rawServerCert(t, other, "s2", now.Add(-time.Minute), now.Add(time.Hour)))); err == nil {
		t.Fatal("a foreign CA's certificate named a server")
	}
	s1.SetRevocationCheck(func(name string, notBefore time.Time) error {
		if name == "s2" {
			return errors.New("revoked")
		}
		return nil
	})
	if _, err := s1.PeerName(state(old)); err == nil {
		t.Fatal("a revoked server's old connection still names it")
	}
}
