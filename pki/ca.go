// Package pki is the cloud's own certificate authority and the identities it
// issues: one key pair and certificate per server (for the peer API, both
// ways, and for the directory), the operator's certificate (the directory's
// root user) and the directory's serving certificate.
//
// Every certificate says what it is in its subject, so a verifier never has
// to guess from a host name or an address: servers are CN=server:<name>,
// O=nvi-server; the operator is CN=root, O=nvi-operator; the directory is
// O=nvi-directory; the enrollment service is O=nvi-enroll.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Organizations: the kind of a certificate, carried in its subject.
const (
	OrgCA        = "nvi-ca"
	OrgServer    = "nvi-server"
	OrgOperator  = "nvi-operator"
	OrgDirectory = "nvi-directory"
	OrgEnroll    = "nvi-enroll"
	OrgPlugin    = "nvi-plugin"
)

// OperatorName is the common name of the operator's certificate. The
// directory (etcd with client-certificate auth) takes its user name from the
// CN, so this is also etcd's root user.
const OperatorName = "root"

// serverPrefix starts the common name of a server certificate.
const serverPrefix = "server:"

// Skew is how far back a certificate's NotBefore is set, so that peers whose
// clocks run a little slow accept a certificate issued a moment ago.
const Skew = time.Minute

// MaxTTL bounds the lifetime of any certificate the CA issues but its own.
const MaxTTL = 5 * 365 * 24 * time.Hour

// caTTL is the CA certificate's own lifetime.
const caTTL = 10 * 365 * 24 * time.Hour

// File names in a CA directory and in an identity directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	KeyFile    = "key.pem"
	CertFile   = "cert.pem"
	CAFile     = "ca.pem"
)

// ErrCAExists: InitCA found a CA already there.
var ErrCAExists = errors.New("a CA already exists")

// ErrNoCA: LoadCA found no CA.
var ErrNoCA = errors.New("no CA")

// CA is the cloud's certificate authority: its certificate and private key.
// Only the operator's CA directory (and the enrollment service reading it)
// holds the key.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// InitCA creates a new CA in dir (made 0700) for the cloud named cloud. It
// refuses if a CA already exists there: replacing it would orphan every
// certificate the old one issued.
func InitCA(dir, cloud string) (*CA, error) {
	if cloud == "" {
		cloud = "nvi"
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%s: %w (%s); use it, or choose another --ca-dir", dir, ErrCAExists, f)
		}
	}
	if err := mkdirPrivate(dir); err != nil {
		return nil, err
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "nvi CA " + cloud, Organization: []string{OrgCA}},
		NotBefore:             now.Add(-Skew),
		NotAfter:              now.Add(caTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	// The key goes first, exclusively: two "ca init" racing cannot both win.
	if err := writeExclusive(filepath.Join(dir, CAKeyFile), keyPEM); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s: %w; use it, or choose another --ca-dir", dir, ErrCAExists)
		}
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := WriteFileAtomic(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key}, nil
}

// LoadCA reads the CA in dir. It refuses a key file others can read.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w there: create one with 'nvictl ca init --ca-dir %s'", dir, ErrNoCA, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the CA certificate: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CACertFile), err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to %s: restore the CA directory from its backup", CAKeyFile, CACertFile)
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key}, nil
}

// Dir is the CA's directory.
func (ca *CA) Dir() string { return ca.dir }

// CertPEM is the CA certificate, PEM-encoded.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Cert is the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// Pin is the CA certificate's SHA-256 pin, as join tokens carry it.
func (ca *CA) Pin() string { return Pin(ca.cert.Raw) }

// Pin is "sha256:" and the hex SHA-256 of a certificate's DER bytes.
func Pin(der []byte) string {
	h := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(h[:])
}

// SignServer issues the certificate of server name for the key in csrPEM,
// valid for ttl from now. The name comes from the caller (who checked a join
// token or the current certificate), never from the CSR.
func (ca *CA) SignServer(csrPEM []byte, name string, ttl time.Duration) ([]byte, error) {
	now := time.Now()
	return ca.SignServerWindow(csrPEM, name, now.Add(-Skew), now.Add(ttl))
}

// SignServerWindow is SignServer with an explicit validity window; the
// enrollment service uses it to start a certificate after a revocation.
func (ca *CA) SignServerWindow(csrPEM []byte, name string, notBefore, notAfter time.Time) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	pub, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	return ca.issue(serverTemplate(name), pub, notBefore, notAfter)
}

// serverTemplate: a server certificate serves and calls the peer API (and
// calls the directory) with one certificate, so it has both usages.
func serverTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: serverPrefix + name, Organization: []string{OrgServer}},
		DNSNames:    []string{name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

// ParseCSR reads a PEM certificate request, checks its signature (the
// requester holds the key) and that the key is ECDSA P-256, and returns it.
func ParseCSR(csrPEM []byte) (*ecdsa.PublicKey, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("the certificate request is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the certificate request's signature does not verify (tampered, or not signed by its key): %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("the certificate request's key is not ECDSA P-256")
	}
	return pub, nil
}

// IssueOperator writes a new operator key and certificate (CN=root) with
// the CA certificate into dir: key.pem, cert.pem, ca.pem.
func (ca *CA) IssueOperator(dir string, ttl time.Duration) error {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: OperatorName, Organization: []string{OrgOperator}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issueInto(dir, tmpl, ttl)
}

// IssuePlugin writes the key and certificate of an orchestrator plugin
// that reads the directory and keeps records of its own there (the Docker
// driver): CN "plugin:<name>", its etcd user. Plugins that only talk to
// their agent (the CNI plugin) need none.
func (ca *CA) IssuePlugin(dir, name string, ttl time.Duration) error {
	if err := ValidName(name); err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: PluginUser(name), Organization: []string{OrgPlugin}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issueInto(dir, tmpl, ttl)
}

// PluginUser is the certificate CN (and etcd user) of plugin name.
func PluginUser(name string) string { return "plugin:" + name }

// IssueServer writes a new key and the certificate of server name with the
// CA certificate into dir, without a join token: for provisioning by whoever
// holds the CA (a lab, tests). Servers elsewhere enroll instead, so their
// key never leaves them.
func (ca *CA) IssueServer(dir, name string, ttl time.Duration) error {
	if err := ValidName(name); err != nil {
		return err
	}
	return ca.issueInto(dir, serverTemplate(name), ttl)
}

// IssueDirectory writes the directory's serving key and certificate, for the
// given addresses and names, with the CA certificate into dir.
func (ca *CA) IssueDirectory(dir string, ips []netip.Addr, dns []string, ttl time.Duration) error {
	if len(ips) == 0 && len(dns) == 0 {
		return errors.New("the directory's certificate needs at least one address or DNS name its clients dial")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "directory", Organization: []string{OrgDirectory}},
		DNSNames:    dns,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	return ca.issueInto(dir, tmpl, ttl)
}

// IssueEnrollService makes the enrollment service's own certificate (kept in
// memory only), chained with the CA certificate so that a joining server
// can find the CA it pins.
func (ca *CA) IssueEnrollService(ips []netip.Addr, dns []string, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "enroll", Organization: []string{OrgEnroll}},
		DNSNames:    dns,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	now := time.Now()
	certPEM, err = ca.issue(tmpl, &key.PublicKey, now.Add(-Skew), now.Add(ttl))
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return append(certPEM, ca.certPEM...), keyPEM, nil
}

func (ca *CA) issueInto(dir string, tmpl *x509.Certificate, ttl time.Duration) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	now := time.Now()
	certPEM, err := ca.issue(tmpl, &key.PublicKey, now.Add(-Skew), now.Add(ttl))
	if err != nil {
		return err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, CAFile), ca.certPEM, 0o644); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, CertFile), certPEM, 0o644)
}

// issue signs tmpl for pub, clamping the window to the CA's own.
func (ca *CA) issue(tmpl *x509.Certificate, pub *ecdsa.PublicKey, notBefore, notAfter time.Time) ([]byte, error) {
	if !notAfter.After(notBefore.Add(Skew)) {
		return nil, fmt.Errorf("certificate lifetime %v is too short: give a positive duration", notAfter.Sub(notBefore)-Skew)
	}
	if notAfter.Sub(notBefore) > MaxTTL+Skew {
		return nil, fmt.Errorf("certificate lifetime %v is longer than the %v allowed", notAfter.Sub(notBefore)-Skew, MaxTTL)
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = notBefore
	tmpl.NotAfter = notAfter
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// ValidName checks a server name: 1-63 characters, lowercase letters,
// digits and '-', starting with a letter (a DNS label, and safe in a path).
func ValidName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("server name %q: want 1 to 63 characters", name)
	}
	if name[0] < 'a' || name[0] > 'z' {
		return fmt.Errorf("server name %q: must start with a lowercase letter", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("server name %q: only lowercase letters, digits and '-' are allowed", name)
		}
	}
	return nil
}

// ServerNameOf is the server a certificate names, or an error when it is not
// a server certificate (the operator's, the directory's, a foreign one).
func ServerNameOf(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("no certificate")
	}
	o := cert.Subject.Organization
	if len(o) != 1 || o[0] != OrgServer {
		return "", fmt.Errorf("certificate %q is not a server certificate (organization %q)", cert.Subject.CommonName, strings.Join(o, ","))
	}
	name, ok := strings.CutPrefix(cert.Subject.CommonName, serverPrefix)
	if !ok {
		return "", fmt.Errorf("server certificate %q does not name a server (want CN=%s<name>)", cert.Subject.CommonName, serverPrefix)
	}
	if err := ValidName(name); err != nil {
		return "", fmt.Errorf("server certificate: %w", err)
	}
	return name, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a key: %w", err)
	}
	return k, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported systems; a time-based
		// serial is still unique enough for a single CA.
		return big.NewInt(time.Now().UnixNano())
	}
	return n.Add(n, big.NewInt(1))
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// readKey reads a PEM ECDSA key, refusing a file that others can read.
func readKey(path string) (*ecdsa.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): run 'chmod 600 %s'", path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", err)
	}
	return parseKeyPEM(data)
}

func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("the key file holds no PEM block")
	}
	var k any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("the key file holds a %q, not a private key", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing the key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("the key is not ECDSA P-256")
	}
	return ek, nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE found")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate: %w", err)
	}
	return c, nil
}

func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("making %s private: %w", dir, err)
	}
	return nil
}

func writeExclusive(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// WriteFileAtomic writes data to path through a temporary file and a rename,
// so a reader (or a crash) sees the old file or the new one, never half.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
