package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"
)

// ErrNoIdentity: the identity directory holds no key or no certificate yet.
var ErrNoIdentity = errors.New("no identity")

// Identity is a key, its current certificate and the CA that issued it: what
// a server (or the operator) shows and checks on every TLS connection. The
// certificate can be replaced while connections use it (rotation); all
// methods are safe for concurrent use.
type Identity struct {
	dir      string
	key      *ecdsa.PrivateKey
	caPEM    []byte
	roots    *x509.CertPool
	cur      atomic.Pointer[tls.Certificate]
	revoked  atomic.Pointer[func(name string, notBefore time.Time) error]
	sessions tls.ClientSessionCache
}

// LoadIdentity reads key.pem, cert.pem and ca.pem from dir and checks that
// they belong together and that the certificate is still valid.
func LoadIdentity(dir string) (*Identity, error) {
	for _, f := range []string{KeyFile, CertFile, CAFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w (%s missing)", dir, ErrNoIdentity, f)
		}
	}
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CAFile), err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("reading the certificate: %w", err)
	}
	id := &Identity{dir: dir, key: key, caPEM: caPEM, roots: x509.NewCertPool(), sessions: tls.NewLRUClientSessionCache(256)}
	id.roots.AddCert(ca)
	leaf, err := id.check(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CertFile), err)
	}
	id.set(leaf)
	return id, nil
}

// InstallIdentity checks certPEM against the key already in dir (from
// GenerateKey) and against caPEM, writes ca.pem and cert.pem, and loads the
// identity.
func InstallIdentity(dir string, certPEM, caPEM []byte) (*Identity, error) {
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	ca, err := parseCertPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("the CA certificate: %w", err)
	}
	id := &Identity{dir: dir, key: key, caPEM: caPEM, roots: x509.NewCertPool()}
	id.roots.AddCert(ca)
	if _, err := id.check(certPEM); err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(filepath.Join(dir, CAFile), caPEM, 0o644); err != nil {
		return nil, err
	}
	if err := WriteFileAtomic(filepath.Join(dir, CertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	return LoadIdentity(dir)
}

// GenerateKey writes a new key.pem (0600) into dir (made 0700), the first
// step of enrollment. It refuses a directory that already holds an identity.
func GenerateKey(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, CertFile)); err == nil {
		return fmt.Errorf("%s already holds an identity (%s): remove the directory to enroll again", dir, CertFile)
	}
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	data, err := encodeKey(key)
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, KeyFile), data, 0o600)
}

// CSRFromKey is a PEM certificate request for the key in dir. The subject
// is left empty: the CA decides the name.
func CSRFromKey(dir string) ([]byte, error) {
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	return csr(key, pkix.Name{})
}

// CSR is a PEM certificate request for the identity's own key, for renewal
// (the key stays, the certificate changes).
func (id *Identity) CSR() ([]byte, error) {
	return csr(id.key, id.Leaf().Subject)
}

func csr(key *ecdsa.PrivateKey, subject pkix.Name) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		return nil, fmt.Errorf("creating a certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// check parses certPEM and makes sure it is for our key, issued by our CA,
// and currently valid.
func (id *Identity) check(certPEM []byte) (*x509.Certificate, error) {
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !id.key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("the certificate is not for this identity's key")
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("the certificate expired at %s: enroll again (remove %s, then start nvid with --join and a new token from 'nvictl server token')",
			leaf.NotAfter.Format(time.RFC3339), CertFile)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the certificate does not verify against the CA (expired, or from another CA): %w", err)
	}
	return leaf, nil
}

func (id *Identity) set(leaf *x509.Certificate) {
	id.cur.Store(&tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: id.key, Leaf: leaf})
}

func (id *Identity) current() *tls.Certificate { return id.cur.Load() }

// Dir is the identity's directory.
func (id *Identity) Dir() string { return id.dir }

// Leaf is the current certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.current().Leaf }

// CAPEM is the CA certificate the identity trusts.
func (id *Identity) CAPEM() []byte { return bytes.Clone(id.caPEM) }

// Roots is a pool holding only the CA certificate.
func (id *Identity) Roots() *x509.CertPool { return id.roots.Clone() }

// Name is the server the certificate names ("s1"), or its common name for
// other kinds ("root" for the operator).
func (id *Identity) Name() string {
	leaf := id.Leaf()
	if n, err := ServerNameOf(leaf); err == nil {
		return n
	}
	return leaf.Subject.CommonName
}

// NotAfter is when the current certificate expires.
func (id *Identity) NotAfter() time.Time { return id.Leaf().NotAfter }

// Replace swaps in a renewed certificate: it must be for the same key and
// name and verify against the CA. cert.pem is rewritten atomically first, so
// a restart finds the new one; connections already up are not touched, new
// handshakes present the new certificate.
func (id *Identity) Replace(certPEM []byte) error {
	leaf, err := id.check(certPEM)
	if err != nil {
		return fmt.Errorf("refusing the renewed certificate: %w", err)
	}
	old := id.Leaf()
	if leaf.Subject.CommonName != old.Subject.CommonName || !slices.Equal(leaf.Subject.Organization, old.Subject.Organization) {
		return fmt.Errorf("refusing the renewed certificate: it names %q, not %q", leaf.Subject.CommonName, old.Subject.CommonName)
	}
	if err := WriteFileAtomic(filepath.Join(id.dir, CertFile), certPEM, 0o644); err != nil {
		return err
	}
	id.set(leaf)
	return nil
}

// SetRevocationCheck installs f, asked about every server certificate this
// identity accepts (by PeerName and in ServerTLS/ClientTLS handshakes): a
// non-nil error refuses the certificate of name issued at notBefore.
func (id *Identity) SetRevocationCheck(f func(name string, notBefore time.Time) error) {
	if f == nil {
		id.revoked.Store(nil)
		return
	}
	id.revoked.Store(&f)
}

// ServerTLS is the peer API's server side: TLS 1.3, a client certificate
// from the CA is required, and it must be a server certificate that is not
// revoked. The certificate presented is always the current one. Session
// tickets are keyed per config: make one per listener, so reconnects resume.
func (id *Identity) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.current(), nil
		},
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  id.roots,
		// Also runs on resumed sessions, so a revocation takes effect there.
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := id.verifyServer(cs.PeerCertificates, time.Now(), x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientTLS is the peer API's client side toward server peer: TLS 1.3, the
// current certificate is presented, and the answer must be the (unrevoked)
// server certificate of peer from the CA, whatever host name or address was
// dialled. Sessions are cached so reconnects resume.
func (id *Identity) ClientTLS(peer string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.current(), nil
		},
		// The standard check would compare the dialled host with the
		// certificate; VerifyConnection checks the server name instead, on
		// full and resumed handshakes alike.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			name, err := id.verifyServer(cs.PeerCertificates, time.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if name != peer {
				return fmt.Errorf("the peer answered as server %s, not %s", name, peer)
			}
			return nil
		},
		ClientSessionCache: id.sessions,
	}
}

// PeerName is the server a TLS connection's peer speaks for, asked at each
// request. It verifies the peer's certificate against the CA itself (so it
// can be called on either side of a connection), refuses certificates that
// are not server certificates, and asks the revocation check every time.
// Expiry was checked at the handshake: a connection stays authenticated
// while it lasts, also past its certificate's rotation and expiry, unless
// the server is revoked.
func (id *Identity) PeerName(cs *tls.ConnectionState) (string, error) {
	if cs == nil {
		return "", errors.New("not a TLS connection")
	}
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("the peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if len(cs.VerifiedChains) > 0 && cs.VerifiedChains[0][0] == leaf {
		// The serving side's handshake verified this chain against our
		// CA and its kind (ServerTLS): per request, only the name and
		// the revocation are asked again — no signature to check on the
		// way of every session's Accept.
		name, err := ServerNameOf(leaf)
		if err != nil {
			return "", err
		}
		return name, id.checkRevoked(name, leaf)
	}
	// Verify as of a moment inside the leaf's validity, so that only
	// expiry is not judged again.
	at := time.Now()
	if at.After(leaf.NotAfter) {
		at = leaf.NotAfter
	}
	return id.verifyServer(cs.PeerCertificates, at, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// checkRevoked asks the revocation check about a verified certificate.
func (id *Identity) checkRevoked(name string, leaf *x509.Certificate) error {
	if f := id.revoked.Load(); f != nil {
		if err := (*f)(name, leaf.NotBefore); err != nil {
			return fmt.Errorf("server %s: %w", name, err)
		}
	}
	return nil
}

func (id *Identity) verifyServer(certs []*x509.Certificate, at time.Time, usages ...x509.ExtKeyUsage) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("the peer presented no certificate")
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.roots, Intermediates: inter, KeyUsages: usages, CurrentTime: at}); err != nil {
		return "", fmt.Errorf("the peer's certificate does not verify against this cloud's CA: %w", err)
	}
	name, err := ServerNameOf(leaf)
	if err != nil {
		return "", err
	}
	if err := id.checkRevoked(name, leaf); err != nil {
		return "", err
	}
	return name, nil
}

// EnrollClientTLS is the client side toward the enrollment service (for
// renewals): TLS 1.3, the current certificate is presented, and the answer
// must be an enrollment-service certificate from the CA.
func (id *Identity) EnrollClientTLS() *tls.Config {
	return id.serviceTLS(CheckEnrollService)
}

// serviceTLS is the client side toward one of the cloud's services: TLS
// 1.3, the current certificate presented, and the answer checked by check
// (its kind, not a host name).
func (id *Identity) serviceTLS(check func([]*x509.Certificate, *x509.CertPool) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.current(), nil
		},
		InsecureSkipVerify: true, // VerifyConnection checks the kind, not a host name
		VerifyConnection: func(cs tls.ConnectionState) error {
			return check(cs.PeerCertificates, id.roots)
		},
	}
}

// CheckEnrollService verifies that certs (as a TLS server sent them) are an
// enrollment service's certificate issued by a CA in roots. A server
// certificate, which also allows serving TLS, does not pass.
func CheckEnrollService(certs []*x509.Certificate, roots *x509.CertPool) error {
	return checkService(certs, roots, OrgEnroll, "the enrollment service")
}

// CheckDirectory verifies that certs are the directory's (etcd's) serving
// certificate from a CA in roots.
func CheckDirectory(certs []*x509.Certificate, roots *x509.CertPool) error {
	return checkService(certs, roots, OrgDirectory, "the directory")
}

// checkService verifies a service's certificate by its kind (the subject's
// organization), not by a host name: the same check holds whether the
// service was dialled by address, name or unix socket.
func checkService(certs []*x509.Certificate, roots *x509.CertPool, org, what string) error {
	if len(certs) == 0 {
		return fmt.Errorf("%s presented no certificate", what)
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		if !c.IsCA {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%s's certificate does not verify against the CA: %w", what, err)
	}
	if o := leaf.Subject.Organization; len(o) != 1 || o[0] != org {
		return fmt.Errorf("certificate %q is not %s's", leaf.Subject.CommonName, what)
	}
	return nil
}

// DirectoryTLS is the client side toward the directory (etcd): TLS 1.3, the
// current certificate is presented (etcd takes the user from its common
// name), and the answer must be the directory's certificate from the CA.
func (id *Identity) DirectoryTLS() *tls.Config {
	return id.serviceTLS(CheckDirectory)
}
