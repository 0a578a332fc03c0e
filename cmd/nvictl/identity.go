package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"nvi/directory"
	"nvi/enroll"
	"nvi/lab"
	"nvi/pki"
	"nvi/registrar"
)

// defaultCADir is where the operator keeps the cloud's CA: NVI_CA_DIR, the
// lab's own CA when a lab is up, or /etc/nvi/ca.
func defaultCADir() string {
	if d := os.Getenv("NVI_CA_DIR"); d != "" {
		return d
	}
	if st, err := lab.Load(envOr("NVI_LAB", "nvi")); err == nil && st.Trust.CA != "" {
		return st.Trust.CA
	}
	return "/etc/nvi/ca"
}

// operatorDir is where 'ca init' puts the operator's own certificate (for
// nvictl with the directory).
func operatorDir(caDir string) string { return filepath.Join(caDir, "operator") }

func caCommands() []command {
	return []command{caInitCmd(), caServeCmd(), caIssueDirectoryCmd(), caIssuePluginCmd()}
}

func serverCommands() []command {
	return []command{serverTokenCmd(), serverRevokeCmd()}
}

func caDirFlag(fs *flag.FlagSet, dir *string) {
	fs.StringVar(dir, "ca-dir", defaultCADir(), "the CA directory (or set NVI_CA_DIR)")
}

func positive(flagName string, d time.Duration) error {
	if d <= 0 {
		return usagef("--%s %v: want a positive duration, e.g. 15m or 24h", flagName, d)
	}
	return nil
}

func caInitCmd() command {
	var dir, cloud string
	var opTTL time.Duration
	return command{
		name: "init", help: "create the cloud's certificate authority, and the operator's certificate under it",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.StringVar(&cloud, "cloud", "nvi", "the cloud's name, written into the CA certificate")
			fs.DurationVar(&opTTL, "operator-ttl", 365*24*time.Hour, "life of the operator's certificate")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 0, "no arguments"); err != nil {
				return err
			}
			if err := positive("operator-ttl", opTTL); err != nil {
				return err
			}
			ca, err := pki.InitCA(dir, cloud)
			if err != nil {
				return err
			}
			if err := ca.IssueOperator(operatorDir(dir), opTTL); err != nil {
				return fmt.Errorf("the CA is created, but the operator's certificate is not: %w", err)
			}
			fmt.Fprintf(e.stdout, "CA created in %s (pin %s)\noperator certificate (CN=%s) in %s\nkeep %s secret: it signs every server's identity\n",
				dir, ca.Pin(), pki.OperatorName, operatorDir(dir), filepath.Join(dir, pki.CAKeyFile))
			return nil
		},
	}
}

func caServeCmd() command {
	var dir, listen, dns, level string
	var ttl time.Duration
	var inDir bool
	return command{
		name: "serve", help: "run the enrollment service and the registrar: servers join with tokens, renew their certificates, and claim endpoints and address blocks here",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.StringVar(&listen, "listen", "", "address to listen on, IP:PORT (required)")
			fs.StringVar(&dns, "dns", "", "DNS names of the service, comma-separated, for its certificate")
			fs.DurationVar(&ttl, "cert-ttl", enroll.DefaultCertTTL, "life of the server certificates it issues (renewed at 2/3)")
			fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
			fs.BoolVar(&inDir, "directory", true, "give each enrolled server its directory role and make servers' claims (endpoints, address blocks) as the registrar (the directory: --etcd, or the lab's); false for a directory without authentication")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 0, "no arguments"); err != nil {
				return err
			}
			if listen == "" {
				return usagef("--listen IP:PORT is required")
			}
			if _, err := netip.ParseAddrPort(listen); err != nil {
				return usagef("--listen %q: want IP:PORT, e.g. 198.18.0.254:7471", listen)
			}
			if err := positive("cert-ttl", ttl); err != nil {
				return err
			}
			var l slog.Level
			if err := l.UnmarshalText([]byte(level)); err != nil {
				return usagef("--log-level %q: want debug, info, warn or error", level)
			}
			cfg := enroll.Config{
				CADir:   dir,
				CertTTL: ttl,
				Logger:  slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l})),
			}
			var d *directory.Store
			if inDir {
				// Fail now, not at the first enrollment, if the directory
				// cannot be reached.
				var err error
				if d, err = e.directory(); err != nil {
					return fmt.Errorf("the enrollment service grants servers their directory roles: %w (or pass --directory=false)", err)
				}
				cfg.Grant = func(ctx context.Context, name string) error { return grantInDirectory(ctx, e, name) }
				cfg.Routes = map[string]http.Handler{}
			}
			svc, err := enroll.NewService(cfg)
			if err != nil {
				return err
			}
			if d != nil {
				reg, err := registrar.New(registrar.Config{Directory: d, Caller: svc.Caller, Logger: cfg.Logger})
				if err != nil {
					return err
				}
				cfg.Routes[registrar.Prefix] = reg.Handler()
			}
			ln, err := listenTCP(listen)
			if err != nil {
				return err
			}
			return svc.Serve(e.ctx, ln, splitList(dns))
		},
	}
}

func caIssueDirectoryCmd() command {
	var dir, ips, dns, out string
	var ttl time.Duration
	return command{
		name: "issue-directory", help: "issue the directory's (etcd's) serving certificate",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.StringVar(&ips, "ip", "", "addresses clients dial the directory at, comma-separated")
			fs.StringVar(&dns, "dns", "", "DNS names clients dial the directory at, comma-separated")
			fs.StringVar(&out, "out", "", "directory to write key.pem, cert.pem and ca.pem into (required)")
			fs.DurationVar(&ttl, "ttl", 365*24*time.Hour, "life of the certificate")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 0, "no arguments"); err != nil {
				return err
			}
			if out == "" {
				return usagef("--out DIR is required")
			}
			if err := positive("ttl", ttl); err != nil {
				return err
			}
			var addrs []netip.Addr
			for _, s := range splitList(ips) {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return usagef("--ip %q: not an IP address", s)
				}
				addrs = append(addrs, a)
			}
			if len(addrs) == 0 && dns == "" {
				return usagef("give the directory's addresses (--ip) or names (--dns)")
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			if err := ca.IssueDirectory(out, addrs, splitList(dns), ttl); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "directory certificate in %s\n", out)
			return nil
		},
	}
}

func caIssuePluginCmd() command {
	var dir, out, state string
	var ttl time.Duration
	var inDir bool
	return command{
		name: "issue-plugin", args: "NAME", help: "issue an orchestrator plugin's directory credential (the Docker driver's) and grant its role",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.StringVar(&out, "out", "", "directory to write key.pem, cert.pem and ca.pem into (required)")
			fs.StringVar(&state, "state-prefix", "/nvi/docker/v1/", "the plugin's own records in the directory, which it may write")
			fs.DurationVar(&ttl, "ttl", 365*24*time.Hour, "life of the certificate")
			fs.BoolVar(&inDir, "directory", true, "grant its role in the directory (the directory: --etcd, or the lab's)")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 1, "the plugin's NAME, e.g. docker-s2"); err != nil {
				return err
			}
			if err := pki.ValidName(args[0]); err != nil {
				return usagef("%v", err)
			}
			if out == "" {
				return usagef("--out DIR is required")
			}
			if err := positive("ttl", ttl); err != nil {
				return err
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			if inDir {
				d, err := e.directory()
				if err != nil {
					return err
				}
				if err := d.GrantPlugin(e.ctx, args[0], state); err != nil {
					return err
				}
			}
			if err := ca.IssuePlugin(out, args[0], ttl); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "plugin %s: credential (CN=%s) in %s; it may read the directory and write %s\n", args[0], pki.PluginUser(args[0]), out, state)
			return nil
		},
	}
}

func serverTokenCmd() command {
	var dir, addr string
	var ttl time.Duration
	return command{
		name: "token", args: "NAME", help: "issue a single-use join token for a new server: nvid --join TOKEN",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.DurationVar(&ttl, "ttl", 15*time.Minute, "how long the token can be used")
			fs.StringVar(&addr, "enroll", "", "address of the enrollment service ('nvictl ca serve'), HOST:PORT as the server dials it (required)")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 1, "the server's NAME"); err != nil {
				return err
			}
			if err := pki.ValidName(args[0]); err != nil {
				return usagef("%v", err)
			}
			if addr == "" {
				return usagef("--enroll HOST:PORT is required: where 'nvictl ca serve' listens")
			}
			if err := positive("ttl", ttl); err != nil {
				return err
			}
			if ttl > enroll.MaxTokenTTL {
				return usagef("--ttl %v: a join token lives at most %v", ttl, enroll.MaxTokenTTL)
			}
			tok, err := enroll.IssueToken(dir, args[0], addr, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, tok)
			fmt.Fprintf(e.stderr, "single use, valid until %s: on %s run  nvid --join TOKEN ...\n",
				time.Now().Add(ttl).UTC().Format(time.RFC3339), args[0])
			return nil
		},
	}
}

func serverRevokeCmd() command {
	var dir string
	var inDir bool
	return command{
		name: "revoke", args: "NAME", help: "revoke a server's identity: it can no longer renew, and its peers refuse it",
		flags: func(fs *flag.FlagSet) {
			caDirFlag(fs, &dir)
			fs.BoolVar(&inDir, "directory", true, "also remove its directory role and tell every agent (the directory: --etcd, or the lab's)")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 1, "the server's NAME"); err != nil {
				return err
			}
			if err := pki.ValidName(args[0]); err != nil {
				return usagef("%v", err)
			}
			cfg := enroll.Config{CADir: dir}
			if inDir {
				cfg.OnRevoke = func(ctx context.Context, name string, at time.Time) error { return revokeInDirectory(ctx, e, name, at) }
			}
			at, err := enroll.Revoke(e.ctx, cfg, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "server %s revoked at %s\n", args[0], at.Format(time.RFC3339))
			return nil
		},
	}
}

// revokeInDirectory is the directory side of 'nvictl server revoke', after
// the CA side (revoked.json, unused tokens): the server's directory user and
// role go, its record goes, and the revocation is published under revoked/
// where every agent's cache sees it and refuses the server's certificates
// from then on.
func revokeInDirectory(ctx context.Context, e *env, name string, at time.Time) error {
	d, err := e.directory()
	if err != nil {
		return fmt.Errorf("publishing the revocation in the directory: %w", err)
	}
	return d.RevokeServer(ctx, name, at)
}

// grantInDirectory is called by the enrollment service when server name
// has redeemed its token, before it gets its certificate: the server's
// directory user and role, which let it write its own records only.
func grantInDirectory(ctx context.Context, e *env, name string) error {
	d, err := e.directory()
	if err != nil {
		return fmt.Errorf("granting %s its directory role: %w", name, err)
	}
	return d.GrantServer(ctx, name)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func listenTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("enrollment service: %w", err)
	}
	return ln, nil
}
