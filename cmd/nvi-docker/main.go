// Command nvi-docker is NVI's Docker plugin: a libnetwork remote network
// driver and IPAM driver, served on a socket in /run/docker/plugins, that
// gives containers NVI endpoints through the local nvid (see package
// nvi/docker).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/docker"
	"nvi/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nvi-docker: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("nvi-docker", flag.ContinueOnError)
	socket := fs.String("socket", "/run/docker/plugins/nvi.sock", "the plugin socket; its file name is the plugin's name (-d and --ipam-driver)")
	agentSock := fs.String("agent", "/run/nvi/nvid.sock", "the local nvid's API socket")
	etcd := fs.String("etcd", os.Getenv("NVI_ETCD"), "directory (etcd) endpoints, comma-separated (default $NVI_ETCD)")
	netns := fs.String("bridge-netns", "", "named network namespace of the bridge (default: this process's own)")
	statePrefix := fs.String("state-prefix", docker.DefaultStatePrefix, "etcd prefix of the plugin's records")
	etcdID := fs.String("etcd-identity", os.Getenv("NVI_ETCD_IDENTITY"), "the plugin's directory credential ('nvictl ca issue-plugin'): a directory with key.pem, cert.pem, ca.pem; needed when the directory speaks TLS")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	record := fs.String("record", "", "append every exchange with Docker to this file, one JSON object a line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if *etcd == "" {
		return errors.New("no directory given: pass --etcd URL[,URL...] or set NVI_ETCD")
	}
	if *netns != "" {
		if _, err := os.Stat("/run/netns/" + *netns); err != nil {
			return fmt.Errorf("--bridge-netns %s: %w", *netns, err)
		}
	}
	var tc *tls.Config
	if *etcdID != "" {
		id, err := pki.LoadIdentity(*etcdID)
		if err != nil {
			return fmt.Errorf("--etcd-identity: %w", err)
		}
		tc = id.DirectoryTLS()
	}
	dir, err := directory.Open(ctx, directory.Config{Endpoints: strings.Split(*etcd, ","), TLS: tc, Logger: log})
	if err != nil {
		return err
	}
	defer dir.Close()
	agent := api.NewLocalClient(*agentSock, 30*time.Second)
	defer agent.Close()
	name := docker.PluginName(*socket)
	d, err := docker.New(docker.Config{
		Name:      name,
		Agent:     agent,
		Directory: dir,
		State:     docker.NewEtcdState(dir.Client(), *statePrefix),
		Links:     docker.IPLinks{BridgeNetns: *netns},
		Log:       log,
	})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if n, err := d.Collect(cctx); err != nil {
		log.Warn("cannot collect stale reservations (will try at the next start)", "err", err)
	} else if n > 0 {
		log.Info("stale reservations deleted", "count", n)
	}
	cancel()
	l, err := docker.Listen(*socket)
	if err != nil {
		return err
	}
	h := d.Handler()
	if *record != "" {
		f, err := os.OpenFile(*record, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			l.Close()
			return fmt.Errorf("--record: %w", err)
		}
		defer f.Close()
		h = docker.Record(h, f)
	}
	log.Info("serving Docker", "plugin", name, "socket", *socket, "agent", *agentSock, "bridge_netns", *netns)
	return docker.Serve(ctx, l, h, log)
}
