package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/enroll"
	"nvi/pki"
)

func TestLoadOrJoin(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := pki.InitCA(caDir, "test"); err != nil {
		t.Fatal(err)
	}
	svc, err := enroll.NewService(enroll.Config{CADir: caDir})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Serve(sctx, ln, nil) }()
	defer func() { cancel(); <-done }()

	dir := filepath.Join(t.TempDir(), "identity")
	if _, err := loadOrJoin(ctx, dir, "", log); err == nil || !strings.Contains(err.Error(), "--join") {
		t.Fatalf("no identity, no token: %v", err)
	}
	tok, err := enroll.IssueToken(caDir, "s1", ln.Addr().String(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	id, err := loadOrJoin(ctx, dir, tok, log)
	if err != nil || id.Name() != "s1" {
		t.Fatalf("join: %v", err)
	}
	// A restart finds the identity; the used token given again does not matter.
	id, err = loadOrJoin(ctx, dir, tok, log)
	if err != nil || id.Name() != "s1" {
		t.Fatalf("restart: %v", err)
	}
	// A broken identity is an error, not a reason to enroll again.
	if err := os.Chmod(filepath.Join(dir, pki.KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrJoin(ctx, dir, tok, log); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: %v", err)
	}
}
