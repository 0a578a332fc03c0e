// Command nvid is the NVI agent: one per server, the OpenFlow controller of
// that server's bridge only. "nvid directory" runs the embedded directory
// (a single-member etcd) for servers that have no etcd cluster of their own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"nvi/agent"
	"nvi/directory"
	"nvi/enroll"
	"nvi/pki"
	"nvi/session"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "directory" {
		err = runDirectory(ctx, os.Args[2:])
	} else {
		err = runAgent(ctx, os.Args[1:])
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nvid: %v\n", err)
		os.Exit(1)
	}
}

func logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runAgent(ctx context.Context, args []string) error {
	var cfg agent.Config
	fs := flag.NewFlagSet("nvid", flag.ContinueOnError)
	var dataIP, dataMAC, gateway, etcd, keys, level, identityDir, join, debugListen string
	fs.StringVar(&cfg.Name, "name", "", "this server's name in the directory (default: the name its certificate gives)")
	fs.StringVar(&identityDir, "identity-dir", "/var/lib/nvi/identity", "this server's key and certificate (key.pem, cert.pem, ca.pem)")
	fs.StringVar(&join, "join", "", "enroll with this join token ('nvictl server token NAME') if --identity-dir holds no identity yet")
	fs.StringVar(&cfg.Bridge, "bridge", "br-nvi", "the Open vSwitch bridge to control")
	fs.StringVar(&cfg.Uplink, "uplink", "", "the interface toward the underlay, added to the bridge (required)")
	fs.StringVar(&dataIP, "data-ip", "", "the server's underlay address with prefix, e.g. 198.18.0.1/24 (required)")
	fs.BoolVar(&cfg.ConfigIP, "configure-ip", true, "put --data-ip on the bridge's local port")
	fs.StringVar(&dataMAC, "data-mac", "", "MAC for the bridge's local port (default: chosen by Open vSwitch)")
	fs.StringVar(&gateway, "underlay-gateway", "", "underlay router toward servers outside the data subnet")
	fs.StringVar(&cfg.OVSDB, "ovsdb", "unix:/run/openvswitch/db.sock", "OVSDB server")
	fs.StringVar(&cfg.OVSRunDir, "ovs-rundir", "/run/openvswitch", "ovs-vswitchd's run directory, where the controller socket goes")
	fs.StringVar(&cfg.Socket, "socket", "/run/nvi/nvid.sock", "unix socket of the local API")
	fs.StringVar(&cfg.LocalAPI.SocketGroup, "socket-group", "", "group whose members may use the local API besides root (socket mode 0660; default: root only)")
	fs.StringVar(&cfg.PeerListen, "peer-listen", "", "address of the peer API, ip:port: on the data address, or on a management network declared in --underlay (required)")
	fs.StringVar(&etcd, "etcd", "", "directory (etcd) endpoints, comma-separated (required)")
	fs.StringVar(&cfg.Registrar, "registrar", "", "the registrar, HOST:PORT, that makes this server's endpoint and address-block claims in a directory with authentication (default: the enrollment service the identity renews at); \"none\": write them directly (a directory without authentication)")
	fs.StringVar(&cfg.Site, "site", "default", "the site this server belongs to")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "sessions idle this long are torn down (default 60s)")
	fs.StringVar(&keys, "key-range", session.DefaultKeyRange.String(), "ports reserved for session keys, an aligned power-of-two block")
	fs.DurationVar(&cfg.DenyTimeout, "deny-timeout", 0, "life of drop flows for refused destinations (default 5s)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", 0, "life of this server's directory record without renewal (default 10s)")
	var rate uint
	fs.UintVar(&rate, "punt-rate", 5000, "packet-ins per second each workload's meter lets through to the agent")
	var uplinkRate uint
	fs.UintVar(&uplinkRate, "uplink-punt-rate", 1000, "packet-ins per second the uplink's meter lets through (ICMP errors, peers' echoes)")
	var underlay string
	fs.StringVar(&underlay, "underlay", "", "more infrastructure prefixes workloads must not reach, comma-separated (the data subnet, router and directory are always in)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&cfg.InsecurePeerAPI, "insecure-peer-api", false, "serve and call the peer API without TLS: anyone who reaches it can hijack sessions (benchmark comparison only)")
	fs.StringVar(&debugListen, "debug-listen", "", "serve Go's profiler (/debug/pprof/) on this loopback address, e.g. 127.0.0.1:6060 (default: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var err error
	if cfg.Logger, err = logger(level); err != nil {
		return err
	}
	if debugListen != "" {
		if err := serveDebug(ctx, debugListen, cfg.Logger); err != nil {
			return err
		}
	}
	if dataIP != "" {
		if cfg.DataIP, err = netip.ParsePrefix(dataIP); err != nil {
			return fmt.Errorf("--data-ip %q: want ADDRESS/PREFIX, e.g. 198.18.0.1/24", dataIP)
		}
	}
	if dataMAC != "" {
		if cfg.DataMAC, err = net.ParseMAC(dataMAC); err != nil {
			return fmt.Errorf("--data-mac %q: %v", dataMAC, err)
		}
	}
	if gateway != "" {
		if cfg.Gateway, err = netip.ParseAddr(gateway); err != nil {
			return fmt.Errorf("--underlay-gateway %q: %v", gateway, err)
		}
	}
	if etcd != "" {
		cfg.Etcd = strings.Split(etcd, ",")
	}
	if cfg.KeyRange, err = session.ParseKeyRange(keys); err != nil {
		return fmt.Errorf("--key-range: %w", err)
	}
	if rate == 0 || rate > 1_000_000 || uplinkRate == 0 || uplinkRate > 1_000_000 {
		return fmt.Errorf("--punt-rate %d, --uplink-punt-rate %d: want 1..1000000 packets a second", rate, uplinkRate)
	}
	cfg.PuntRate, cfg.UplinkPuntRate = uint32(rate), uint32(uplinkRate)
	for _, p := range strings.Split(underlay, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return fmt.Errorf("--underlay %q: want IPv4 prefixes, e.g. 10.250.0.0/16", p)
		}
		cfg.Underlay = append(cfg.Underlay, pfx)
	}
	id, err := loadOrJoin(ctx, identityDir, join, cfg.Logger)
	if err != nil {
		return err
	}
	if cfg.Name == "" {
		cfg.Name = id.Name()
	} else if cfg.Name != id.Name() {
		return fmt.Errorf("--name %s, but the certificate in %s names %s: drop --name, or use the right --identity-dir", cfg.Name, identityDir, id.Name())
	}
	go func() {
		if err := enroll.KeepRenewed(ctx, id, cfg.Logger); err != nil && ctx.Err() == nil {
			cfg.Logger.Error("this server's certificate will not be renewed", "err", err, "expires", id.NotAfter())
		}
	}()
	if !cfg.InsecurePeerAPI {
		cfg.Identity = id
	}
	if etcdTLS(cfg.Etcd) {
		cfg.DirectoryTLS = id.DirectoryTLS()
	}
	if err := pickRegistrar(&cfg, id, identityDir); err != nil {
		return err
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// loadOrJoin returns the identity in dir. A server restarting finds it
// there; a new one enrolls with the join token first.
func loadOrJoin(ctx context.Context, dir, join string, log *slog.Logger) (*pki.Identity, error) {
	id, err := pki.LoadIdentity(dir)
	switch {
	case err == nil:
		if join != "" {
			log.Info("already enrolled, ignoring --join", "server", id.Name(), "identity_dir", dir)
		}
		return id, nil
	case !errors.Is(err, pki.ErrNoIdentity):
		return nil, fmt.Errorf("this server's identity: %w", err)
	case join == "":
		return nil, fmt.Errorf("%s holds no identity: enroll this server once with --join TOKEN (the operator makes one with 'nvictl server token NAME --enroll ADDR')", dir)
	}
	if err := enroll.Join(ctx, join, dir); err != nil {
		return nil, err
	}
	if id, err = pki.LoadIdentity(dir); err != nil {
		return nil, err
	}
	log.Info("enrolled", "server", id.Name(), "identity_dir", dir, "expires", id.NotAfter())
	return id, nil
}

func runDirectory(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nvid directory", flag.ContinueOnError)
	var cfg directory.EmbedConfig
	var listen, level string
	fs.StringVar(&cfg.Name, "name", "nvi", "member name")
	fs.StringVar(&cfg.DataDir, "data-dir", "/var/lib/nvi/etcd", "where etcd keeps its data")
	fs.StringVar(&listen, "listen", "http://127.0.0.1:2379", "client URLs, comma-separated (http://IP:PORT or unix:///PATH; https:// and unixs:// with --tls-cert)")
	fs.StringVar(&cfg.PeerURL, "peer", "http://127.0.0.1:2380", "peer URL (a single member needs one all the same)")
	fs.StringVar(&cfg.LogFile, "etcd-log", "", "file for etcd's own log (default: discarded)")
	fs.StringVar(&cfg.TLS.CertFile, "tls-cert", "", "the directory's serving certificate ('nvictl ca issue-directory'); with it, clients need certificates of --client-ca")
	fs.StringVar(&cfg.TLS.KeyFile, "tls-key", "", "the serving certificate's key")
	fs.StringVar(&cfg.TLS.ClientCAFile, "client-ca", "", "the CA whose client certificates the directory accepts (the cloud's ca.pem)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.Logger, err = logger(level); err != nil {
		return err
	}
	cfg.ClientURLs = strings.Split(listen, ",")
	m, err := directory.ServeEmbedded(ctx, cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	cfg.Logger.Info("directory serving", "endpoints", strings.Join(m.Endpoints(), ","))
	select {
	case <-ctx.Done():
		return nil
	case err := <-m.Err():
		return err
	}
}

// pickRegistrar settles who makes this server's claims: with a directory
// over TLS (so with authentication, where the server's credential may only
// read the claim spaces) the registrar — by default the enrollment service
// the identity renews at; without TLS, or with --registrar none, the agent
// itself.
func pickRegistrar(cfg *agent.Config, id *pki.Identity, identityDir string) error {
	switch {
	case cfg.Registrar == "none":
		cfg.Registrar = ""
		return nil
	case cfg.Registrar == "" && !etcdTLS(cfg.Etcd):
		return nil
	case cfg.Registrar == "":
		addr, err := enroll.ServiceAddr(identityDir)
		if err != nil {
			return fmt.Errorf("a directory over TLS needs the registrar for this server's endpoints and address blocks, and %w; pass --registrar HOST:PORT", err)
		}
		cfg.Registrar = addr
	}
	if _, _, err := net.SplitHostPort(cfg.Registrar); err != nil {
		return fmt.Errorf("--registrar %q: want HOST:PORT, e.g. 198.19.0.254:7471, or none", cfg.Registrar)
	}
	cfg.RegistrarTLS = id.EnrollClientTLS()
	return nil
}

// etcdTLS says whether the directory's endpoints speak TLS.
func etcdTLS(endpoints []string) bool {
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://") {
			return true
		}
	}
	return false
}
