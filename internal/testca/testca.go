// Package testca makes throwaway certificate authorities and server
// identities for tests of the peer API: the shape pki issues (servers are
// CN=server:<name>, O=nvi-server, for both server and client use), made in
// memory with crypto/x509.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

// Organization and CN prefix of server certificates.
const (
	OrgServer    = "nvi-server"
	ServerPrefix = "server:"
)

// CA is a test certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

// New makes a CA valid from an hour ago for a day.
func New(t testing.TB) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "test cloud CA", Organization: []string{"nvi-ca"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: key, pool: pool}
}

// Pool holds the CA's certificate.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// Options change a server certificate from the ordinary one.
type Options struct {
	NotBefore, NotAfter time.Time // zero: an hour ago, a day from now
	CommonName          string    // zero: server:<name>
	Organization        string    // zero: nvi-server
}

// Server issues the identity of server name, trusting ca for its peers.
func (ca *CA) Server(t testing.TB, name string) *Identity {
	return ca.ServerWith(t, name, Options{})
}

// ServerWith issues a server identity with opts.
func (ca *CA) ServerWith(t testing.TB, name string, opts Options) *Identity {
	t.Helper()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = time.Now().Add(-time.Hour)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if opts.CommonName == "" {
		opts.CommonName = ServerPrefix + name
	}
	if opts.Organization == "" {
		opts.Organization = OrgServer
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: opts.CommonName, Organization: []string{opts.Organization}},
		NotBefore:    opts.NotBefore,
		NotAfter:     opts.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{
		Name: name,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		pool: ca.pool,
	}
}

// Identity is one server's certificate and the CA it trusts; it
// implements agent.Identity.
type Identity struct {
	Name string
	cert tls.Certificate
	pool *x509.CertPool
}

// Certificate is the identity's certificate with its key.
func (id *Identity) Certificate() tls.Certificate { return id.cert }

// ServerTLS requires and verifies client certificates.
func (id *Identity) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.pool,
	}
}

// ClientTLS presents the identity's certificate and accepts only peer's.
func (id *Identity) ClientTLS(peer string) *tls.Config {
	pool := id.pool
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		// The peer is named by its certificate's subject, not by a host
		// name: VerifyConnection does the whole verification.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the peer sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			name, err := ServerName(leaf)
			if err != nil {
				return err
			}
			if name != peer {
				return fmt.Errorf("the peer's certificate is %s's, not %s's", name, peer)
			}
			return nil
		},
	}
}

// PeerName is the server a verified connection's client certificate names.
func (id *Identity) PeerName(cs *tls.ConnectionState) (string, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", errors.New("the connection has no verified certificate")
	}
	return ServerName(cs.VerifiedChains[0][0])
}

// ServerName is the server a certificate names.
func ServerName(c *x509.Certificate) (string, error) {
	name, ok := strings.CutPrefix(c.Subject.CommonName, ServerPrefix)
	if !ok || name == "" || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != OrgServer {
		return "", fmt.Errorf("certificate %q is not a server's", c.Subject.CommonName)
	}
	return name, nil
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
