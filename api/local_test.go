package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeLocalChecksCredentials: ServeLocal gives authorize the real
// credentials of the caller, serves the callers it allows, and answers
// the others "denied" without running the handler.
func TestServeLocalChecksCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	served := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served++
		if c, ok := PeerCredOf(r.Context()); !ok || c.UID != uint32(os.Getuid()) {
			t.Errorf("handler sees credentials %+v, %v", c, ok)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"server":"s1"}`))
	})
	allow := true
	var got PeerCred
	authorize := func(c PeerCred) error {
		got = c
		if !allow {
			return errors.New("permission denied: uid is not in the group")
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ServeLocal(ctx, l, h, authorize, quiet) }()

	c := NewLocalClient(path, 5*time.Second)
	defer c.Close()
	if st, err := c.Status(ctx); err != nil || st.Server != "s1" {
		t.Fatalf("allowed caller: %+v, %v", st, err)
	}
	if got.UID != uint32(os.Getuid()) || got.GID != uint32(os.Getgid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("authorize saw %+v; want uid %d gid %d pid %d", got, os.Getuid(), os.Getgid(), os.Getpid())
	}
	allow = false
	c2 := NewLocalClient(path, 5*time.Second)
	defer c2.Close()
	_, err = c2.Status(ctx)
	if CodeOf(err) != CodeDenied || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("refused caller: err = %v (code %s), want denied with the reason", err, CodeOf(err))
	}
	if served != 1 {
		t.Fatalf("the handler ran %d times, want once (for the allowed caller)", served)
	}
}

// TestServeLocalRefusesNonUnixConnections: over TCP nobody can be
// identified, so nobody is served.
func TestServeLocalRefusesNonUnixConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("the handler ran for an unidentified caller") })
	go func() { _ = ServeLocal(ctx, l, h, func(PeerCred) error { return nil }, quiet) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("HTTP %d, want 403", resp.StatusCode)
	}
}
