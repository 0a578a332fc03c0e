// Command nvictl is NVI's command-line client: it manages tenants, networks,
// endpoints, policy and port maps in the directory, shows servers and live
// sessions, and runs the lab cloud.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/lab"
	"nvi/pki"
)

// env is what every command can reach: the global flags and the outputs.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	etcd   string     // --etcd, or NVI_ETCD
	etcdID string     // --etcd-identity, or NVI_ETCD_IDENTITY: the certificate shown to etcd
	lab    string     // --lab, or NVI_LAB
	mu     sync.Mutex // guards store: the enrollment service grants roles from many requests at once
	store  *directory.Store
}

// directory opens the directory named by --etcd, NVI_ETCD, or the lab.
func (e *env) directory() (*directory.Store, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.store != nil {
		return e.store, nil
	}
	var eps []string
	var tc *tls.Config
	switch {
	case e.etcd != "":
		eps = strings.Split(e.etcd, ",")
		if tlsEndpoints(eps) {
			dir := e.etcdID
			if dir == "" {
				dir = operatorDir(defaultCADir())
			}
			id, err := pki.LoadIdentity(dir)
			if err != nil {
				return nil, fmt.Errorf("the directory speaks TLS and wants a certificate: %w (pass --etcd-identity DIR with key.pem, cert.pem and ca.pem, e.g. the operator's from 'nvictl ca init')", err)
			}
			tc = id.DirectoryTLS()
		}
	default:
		st, err := lab.Load(e.lab)
		if err != nil {
			return nil, fmt.Errorf("no directory given: pass --etcd URL[,URL...], set NVI_ETCD, or bring up a lab with 'nvictl lab up' (%v)", err)
		}
		eps = st.Directory.Local
		if tc, err = st.OperatorTLS(); err != nil {
			return nil, err
		}
	}
	s, err := directory.Open(e.ctx, directory.Config{
		Endpoints:   eps,
		TLS:         tc,
		DialTimeout: 5 * time.Second,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return nil, err
	}
	e.store = s
	return s, nil
}

// tlsEndpoints says whether directory endpoints speak TLS.
func tlsEndpoints(eps []string) bool {
	for _, ep := range eps {
		if strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://") {
			return true
		}
	}
	return false
}

// agent returns a client for the local API of a server's agent: the lab's,
// or the one at --socket.
func (e *env) agent(server, socket string) (*api.LocalClient, error) {
	if socket == "" {
		if server == "" {
			return nil, usagef("say which server: --server NAME (or --socket PATH)")
		}
		st, err := lab.Load(e.lab)
		if err != nil {
			return nil, fmt.Errorf("cannot find the agent of %s: %w (outside a lab, pass --socket PATH)", server, err)
		}
		sv, err := st.Server(server)
		if err != nil {
			return nil, err
		}
		socket = sv.Socket
	}
	return api.NewLocalClient(socket, 10*time.Second), nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("nvictl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&e.etcd, "etcd", os.Getenv("NVI_ETCD"), "directory (etcd) endpoints, comma-separated; default: the lab's")
	fs.StringVar(&e.etcdID, "etcd-identity", os.Getenv("NVI_ETCD_IDENTITY"), "directory holding the certificate for a TLS directory (key.pem, cert.pem, ca.pem); default: the operator's under --ca-dir")
	fs.StringVar(&e.lab, "lab", envOr("NVI_LAB", "nvi"), "lab prefix: names its namespaces and /run directory")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "nvictl: %v\n", err)
		fmt.Fprintln(stderr, "global flags:")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return 2
	}
	err := dispatch(e, "nvictl", topCommands(), fs.Args())
	if e.store != nil {
		e.store.Close()
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "nvictl: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "nvictl: %v\n", err)
		return 1
	}
}

func topCommands() []command {
	return []command{
		group("tenant", "create, list and delete tenants", tenantCommands()),
		group("net", "create, list and delete networks", netCommands()),
		group("endpoint", "create, list and delete endpoints", endpointCommands()),
		group("group", "create, delete, fill and list groups of networks whose workloads reach each other", groupCommands()),
		pairCmd("connect", "let two workloads of a tenant reach each other, whatever other rules say", setPair((*directory.Store).Connect)),
		pairCmd("disconnect", "keep two workloads of a tenant apart, whatever other rules say", setPair((*directory.Store).Disconnect)),
		group("pair", "forget pair rules", []command{
			pairCmd("forget", "remove the pair rule of two workloads: other rules apply again", (*directory.Store).ForgetPair),
		}),
		group("rule", "add, list and delete rules with ports and protocols", ruleCommands()),
		group("policy", "show a tenant's policy", []command{policyShowCmd()}),
		exposeCmd(),
		unexposeCmd(),
		group("portmap", "list port maps", portMapCommands()),
		listCmd("servers", "", "list the servers registered in the directory", nil,
			[]string{"NAME", "DATA IP", "DATA MAC", "SITE", "ROLE", "AGENT"},
			func(e *env, s *directory.Store, _ []string) ([]directory.Server, error) { return s.Servers(e.ctx) },
			func(sv directory.Server) []string {
				return []string{sv.Name, sv.DataIP.String(), sv.DataMAC, sv.Site, sv.Role, sv.AgentAddr}
			}),
		sessionsCommand(),
		group("ca", "create and run the cloud's certificate authority", caCommands()),
		group("server", "issue join tokens for servers and revoke them", serverCommands()),
		group("lab", "run a cloud of NVI servers on this machine", labCommands()),
	}
}

// group makes a command that has subcommands of its own.
func group(name, help string, cmds []command) command {
	return command{name: name, args: "COMMAND ...", help: help, sub: cmds}
}
