package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/enroll"
	"nvi/pki"
)

func TestIdentityCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := "--ca-dir=" + dir
	fails(t, 1, "server token s1 --enroll 127.0.0.1:7471 "+ca, "no CA", "nvictl ca init")
	out := ok(t, "ca", "init", ca, "--cloud", "test")
	if !strings.Contains(out, "sha256:") {
		t.Fatalf("ca init does not show the pin: %q", out)
	}
	if _, err := pki.LoadIdentity(operatorDir(dir)); err != nil {
		t.Fatalf("operator identity: %v", err)
	}
	fails(t, 1, "ca init "+ca, "already exists")
	fails(t, 2, "server token S1 --enroll 127.0.0.1:7471 "+ca, "server name")
	fails(t, 2, "server token s1 "+ca, "--enroll")
	fails(t, 2, "server token s1 --ttl 0s --enroll 127.0.0.1:7471 "+ca, "positive")
	fails(t, 2, "server token s1 --ttl 48h --enroll 127.0.0.1:7471 "+ca, "at most")
	fails(t, 2, "server revoke bad_name "+ca, "server name")
	fails(t, 2, "ca serve "+ca, "--listen")
	fails(t, 2, "ca issue-directory --ip 198.18.0.254 "+ca, "--out")
	fails(t, 2, "ca issue-directory --ip nope --out x "+ca, "not an IP")

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"server", "token", "s1", "--ttl", "soon", ca}, &stdout, &stderr); code != 2 {
		t.Fatalf("--ttl soon: exit %d, want 2", code)
	}

	etcdDir := filepath.Join(t.TempDir(), "etcd")
	ok(t, "ca", "issue-directory", ca, "--ip", "198.18.0.254,127.0.0.1", "--out", etcdDir)
	id, err := pki.LoadIdentity(etcdDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Leaf().VerifyHostname("198.18.0.254"); err != nil {
		t.Fatal(err)
	}

	// The enrollment service, a token, a join, a revocation.
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan int, 1)
	var serveErr bytes.Buffer
	go func() {
		served <- run(ctx, []string{"ca", "serve", ca, "--listen", addr, "--log-level", "error", "--directory=false"}, &bytes.Buffer{}, &serveErr)
	}()
	defer func() {
		cancel()
		if code := <-served; code != 0 {
			t.Errorf("ca serve exited %d: %s", code, serveErr.String())
		}
	}()
	tok := strings.TrimSpace(ok(t, "server", "token", "s1", "--enroll", addr, ca))
	idDir := filepath.Join(t.TempDir(), "s1")
	var joinErr error
	for range 50 { // until the service listens
		if joinErr = enroll.Join(context.Background(), tok, idDir); joinErr == nil || !strings.Contains(joinErr.Error(), "connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if joinErr != nil {
		t.Fatal(joinErr)
	}
	s1, err := pki.LoadIdentity(idDir)
	if err != nil || s1.Name() != "s1" {
		t.Fatalf("joined identity: %v %v", s1, err)
	}
	if err := enroll.Join(context.Background(), tok, filepath.Join(t.TempDir(), "again")); err == nil {
		t.Fatal("the token worked twice")
	}
	if err := enroll.Renew(context.Background(), s1); err != nil {
		t.Fatal(err)
	}
	ok(t, "server", "revoke", "s1", ca, "--directory=false")
	if err := enroll.Renew(context.Background(), s1); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("renewal after revoke: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "revoked.json")); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
