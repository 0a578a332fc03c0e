package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"time"

	"github.com/vishvananda/netns"

	"nvi/directory"
	"nvi/enroll"
	"nvi/pki"
)

// Trust is the lab cloud's identity: its own certificate authority, the
// operator's certificate that nvictl uses with the directory, and the
// enrollment service through which every server gets its certificate, as
// an operator would set them up (nvictl ca init, ca serve, server token).
type Trust struct {
	CA         string `json:"ca"`          // the CA directory (its key never leaves it)
	Operator   string `json:"operator"`    // the operator's identity: key.pem, cert.pem, ca.pem
	Directory  string `json:"directory"`   // the directory's serving identity
	EnrollAddr string `json:"enroll_addr"` // where servers enroll and renew
	EnrollPID  int    `json:"enroll_pid,omitempty"`
}

// EnrollPort is the enrollment service's TCP port on the management network.
const EnrollPort = 7471

// DefaultCertTTL is the life of the lab servers' certificates: short, so
// that rotation happens while a lab is up (renewal at two thirds).
const DefaultCertTTL = time.Hour

// makeCA creates the lab's CA, the operator's certificate and the
// directory's serving certificate.
func makeCA(cfg *Config, st *State) error {
	st.Trust = Trust{
		CA:         filepath.Join(st.RunDir, "ca"),
		Operator:   filepath.Join(st.RunDir, "ca", "operator"),
		Directory:  filepath.Join(st.RunDir, "directory-tls"),
		EnrollAddr: netip.AddrPortFrom(lastHost(MgmtSubnet), EnrollPort).String(),
	}
	if err := st.save(); err != nil {
		return err
	}
	ca, err := pki.InitCA(st.Trust.CA, "lab "+st.Prefix)
	if err != nil {
		return err
	}
	const year = 365 * 24 * time.Hour
	if err := ca.IssueOperator(st.Trust.Operator, year); err != nil {
		return err
	}
	if err := ca.IssueDirectory(st.Trust.Directory, []netip.Addr{lastHost(MgmtSubnet), netip.MustParseAddr("127.0.0.1")}, []string{"localhost"}, year); err != nil {
		return err
	}
	cfg.logf("certificate authority: %s (pin %s); the operator's certificate in %s", st.Trust.CA, ca.Pin(), st.Trust.Operator)
	return nil
}

// OperatorTLS is what nvictl shows the lab's directory: the operator's
// certificate. It is nil for a lab on an external, plain etcd.
func (s *State) OperatorTLS() (*tls.Config, error) {
	if !s.Directory.TLS {
		return nil, nil
	}
	id, err := pki.LoadIdentity(s.Trust.Operator)
	if err != nil {
		return nil, fmt.Errorf("the lab operator's certificate: %w", err)
	}
	return id.DirectoryTLS(), nil
}

// enableAuth turns on the directory's authentication: from here on only
// certificates of the lab's CA with a role get in.
func enableAuth(ctx context.Context, st *State) error {
	tc, err := st.OperatorTLS()
	if err != nil {
		return err
	}
	d, err := directory.Open(ctx, directory.Config{Endpoints: st.Directory.Local, TLS: tc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer d.Close()
	return d.EnableAuth(ctx)
}

// startEnroll runs the enrollment service ("nvictl ca serve") on the
// management network: the only process besides the operator's files that
// holds the CA key.
func startEnroll(ctx context.Context, cfg *Config, st *State, nvictl string) error {
	ttl := cfg.CertTTL
	if ttl == 0 {
		ttl = DefaultCertTTL
	}
	pid, err := spawnEnv(st.Mgmt, filepath.Join(st.RunDir, "enroll.log"), []string{"NVI_LAB=" + st.Prefix}, nvictl,
		"ca", "serve", "--ca-dir", st.Trust.CA, "--listen", st.Trust.EnrollAddr, "--cert-ttl", ttl.String())
	if err != nil {
		return err
	}
	st.Trust.EnrollPID = pid
	if err := st.save(); err != nil {
		return err
	}
	cfg.logf("enrollment service and registrar on %s (server certificates live %v)", st.Trust.EnrollAddr, ttl)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitFor(wctx, 50*time.Millisecond, func() error {
		if !alive(pid) {
			return errors.New("the enrollment service exited: " + tail(filepath.Join(st.RunDir, "enroll.log")))
		}
		c, err := dialIn(st.Mgmt, st.Trust.EnrollAddr)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}

// joinToken issues a server's single-use join token, as
// "nvictl server token" does.
func joinToken(st *State, name string) (string, error) {
	return enroll.IssueToken(st.Trust.CA, name, st.Trust.EnrollAddr, 15*time.Minute)
}

// dialIn opens a TCP connection from inside a network namespace: the
// socket is made on a thread that has joined it.
func dialIn(ns, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	own, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer own.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, err
	}
	defer netns.Set(own)
	return net.DialTimeout("tcp", addr, time.Second)
}
