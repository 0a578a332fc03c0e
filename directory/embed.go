package directory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EmbedConfig describes the single-member etcd NVI runs itself when no
// external directory is given.
type EmbedConfig struct {
	// Name of the member (default "nvi").
	Name string
	// DataDir holds etcd's data; created if missing. Required.
	DataDir string
	// ClientURLs to serve clients on, e.g. "https://10.0.0.1:2379" or
	// "unixs:///run/nvi/etcd.sock" with TLS, "http://127.0.0.1:2379" or
	// "unix:///run/nvi/lab/etcd.sock" without (default
	// "https://127.0.0.1:2379", or "http://127.0.0.1:2379" without TLS).
	// A TCP port of 0 picks a free port; Endpoints reports the real one.
	ClientURLs []string
	// TLS makes the member serve clients only over mutual TLS. Leave it
	// empty only for tests and single-host labs: without it anyone who
	// reaches a client URL reads and writes everything.
	TLS ServeTLS
	// PeerURL for raft traffic (default "http://127.0.0.1:0": a single
	// member never receives peer traffic, but etcd insists on a listener, and
	// an ephemeral port cannot collide with anything).
	PeerURL string
	// StartTimeout bounds the wait for the member to be ready (default 30s).
	StartTimeout time.Duration
	// LogFile receives etcd's own log at error level; "" discards it.
	LogFile string
	// Logger receives our start and stop lines (default slog.Default()).
	Logger *slog.Logger
}

// ServeTLS are the files of the directory's serving side. When it is set,
// every client URL must be https:// or unixs:// (etcd would serve a plain
// URL in the clear, ignoring the certificate, so a plain one is refused),
// and every client must present a certificate signed by ClientCAFile: etcd
// then takes the client's etcd user name from the certificate's CN (see
// [Store.EnableAuth]). That holds for unixs:// sockets too, so local tools
// need a certificate like everyone else; etcd's client checks a socket's
// serving certificate against the socket's file name, so the certificate
// must also carry that name (e.g. "etcd.sock") as a DNS name.
type ServeTLS struct {
	CertFile     string // the directory's serving certificate (IP SANs of its addresses)
	KeyFile      string // its private key
	ClientCAFile string // CA(s) whose client certificates are accepted
	CRLFile      string // optional revocation list of that CA
}

func (t ServeTLS) enabled() bool { return t != ServeTLS{} }

// check says what is missing from a partly filled ServeTLS.
func (t ServeTLS) check() error {
	if t.CertFile == "" || t.KeyFile == "" || t.ClientCAFile == "" {
		return errorf(ErrInvalid, "directory: embedded etcd TLS needs a certificate, its key and the client CA (got cert %q, key %q, client CA %q)", t.CertFile, t.KeyFile, t.ClientCAFile)
	}
	for _, f := range []string{t.CertFile, t.KeyFile, t.ClientCAFile, t.CRLFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return errorf(ErrInvalid, "directory: embedded etcd TLS: %w", err)
		}
	}
	return nil
}

// Embedded is a running embedded etcd member.
type Embedded struct {
	etcd      *embed.Etcd
	endpoints []string
	log       *slog.Logger
	closeOnce sync.Once
}

// ServeEmbedded starts an embedded etcd member and waits until it serves
// clients. Failures come back as errors that say what to fix (an address in
// use, a data directory that cannot be created, a start that timed out)
// rather than as etcd's log lines, which are kept quiet.
func ServeEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errorf(ErrInvalid, "directory: embedded etcd needs a data directory")
	}
	if cfg.Name == "" {
		cfg.Name = "nvi"
	}
	withTLS := cfg.TLS.enabled()
	if withTLS {
		if err := cfg.TLS.check(); err != nil {
			return nil, err
		}
	}
	if len(cfg.ClientURLs) == 0 {
		cfg.ClientURLs = []string{"http://127.0.0.1:2379"}
		if withTLS {
			cfg.ClientURLs = []string{"https://127.0.0.1:2379"}
		}
	}
	if err := checkSchemes(cfg.ClientURLs, withTLS); err != nil {
		return nil, err
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:0"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("directory: embedded etcd data directory: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	var err error
	if ec.ListenClientUrls, err = parseURLs(cfg.ClientURLs); err != nil {
		return nil, err
	}
	ec.AdvertiseClientUrls = ec.ListenClientUrls
	if ec.ListenPeerUrls, err = parseURLs([]string{cfg.PeerURL}); err != nil {
		return nil, err
	}
	ec.AdvertisePeerUrls = ec.ListenPeerUrls
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.EnableGRPCGateway = false
	if withTLS {
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile:       cfg.TLS.CertFile,
			KeyFile:        cfg.TLS.KeyFile,
			TrustedCAFile:  cfg.TLS.ClientCAFile,
			CRLFile:        cfg.TLS.CRLFile,
			ClientCertAuth: true,
		}
		ec.ClientAutoTLS = false
	}
	// Keep an hour of history for watchers that reconnect, then compact so
	// the database does not grow with every lease renewal.
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"
	zl, err := etcdLogger(cfg.LogFile)
	if err != nil {
		return nil, err
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	ec.LogLevel = "error"
	for _, u := range ec.ListenClientUrls {
		if err := checkUnixSocketFree(u); err != nil {
			return nil, err
		}
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("directory: starting embedded etcd on %v: %w", cfg.ClientURLs, err)
	}
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("directory: embedded etcd failed while starting: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("directory: embedded etcd not ready after %v (data directory %s)", cfg.StartTimeout, cfg.DataDir)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("directory: starting embedded etcd: %w", ctx.Err())
	}
	m := &Embedded{etcd: e, log: log}
	unix, tcp := "unix://", "http://"
	if withTLS {
		unix, tcp = "unixs://", "https://"
	}
	for _, l := range e.Clients {
		a := l.Addr()
		if a.Network() == "unix" {
			m.endpoints = append(m.endpoints, unix+a.String())
		} else {
			m.endpoints = append(m.endpoints, tcp+a.String())
		}
	}
	log.Info("directory: embedded etcd started", "name", cfg.Name, "endpoints", m.endpoints, "data", cfg.DataDir, "tls", withTLS)
	return m, nil
}

// Endpoints returns the client URLs the member actually listens on (with
// real ports where port 0 was asked for), ready for Config.Endpoints.
func (m *Embedded) Endpoints() []string { return append([]string(nil), m.endpoints...) }

// Err reports a fatal error of the running member (the channel closes once
// it stopped).
func (m *Embedded) Err() <-chan error { return m.etcd.Err() }

// Close stops the member. Clients still connected see it as unreachable.
func (m *Embedded) Close() {
	m.closeOnce.Do(func() {
		start := time.Now()
		m.etcd.Close()
		m.log.Info("directory: embedded etcd stopped", "endpoints", m.endpoints, "took", time.Since(start).Round(time.Millisecond))
	})
}

func parseURLs(ss []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return nil, errorf(ErrInvalid, "directory: %q is not a URL like http://10.0.0.1:2379 or unix:///path/etcd.sock", s)
		}
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			if p := u.Host + u.Path; p != "" {
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return nil, fmt.Errorf("directory: socket directory for %s: %w", s, err)
				}
			}
		}
		out = append(out, *u)
	}
	return out, nil
}

// checkUnixSocketFree refuses to start on a socket some live process
// serves: etcd would silently remove the file and steal the name.
func checkUnixSocketFree(u url.URL) error {
	if u.Scheme != "unix" && u.Scheme != "unixs" {
		return nil
	}
	p := u.Host + u.Path
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	c, err := net.DialTimeout("unix", p, time.Second)
	if err != nil {
		return nil // a stale file from a dead process: etcd replaces it
	}
	c.Close()
	return fmt.Errorf("directory: starting embedded etcd: unix socket %s: %w", p, errAddrInUse)
}

var errAddrInUse = errors.New("address already in use")

// etcdLogger returns a zap logger for etcd's own lines: errors only, to a
// file or nowhere. Our own start/stop lines go through slog.
func etcdLogger(file string) (*zap.Logger, error) {
	if file == "" {
		return zap.NewNop(), nil
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("directory: etcd log file: %w", err)
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(f), zapcore.ErrorLevel)), nil
}
