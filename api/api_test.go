package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakeLocal struct{ LocalService }

func (fakeLocal) Status(context.Context) (Status, error) {
	return Status{Server: "s1", Ready: true}, nil
}

func (fakeLocal) DeleteEndpoint(_ context.Context, tenant, name string) error {
	return Errorf(CodeNotFound, "endpoint %s/%s not found", tenant, name)
}

func (fakeLocal) ServerEndpoints(context.Context) ([]Endpoint, error) {
	return []Endpoint{{Tenant: "acme", Name: "cni-1-eth0"}}, nil
}

func TestLocalOverUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nvid.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Serve(ctx, l, LocalHandler(fakeLocal{}, quiet), quiet) }()
	c := NewLocalClient(sock, time.Second)
	st, err := c.Status(context.Background())
	if err != nil || st.Server != "s1" || !st.Ready {
		t.Fatalf("status = %+v, %v", st, err)
	}
	eps, err := c.ServerEndpoints(context.Background())
	if err != nil || len(eps) != 1 || eps[0].Name != "cni-1-eth0" || eps[0].Bound {
		t.Fatalf("server endpoints = %+v, %v", eps, err)
	}
	err = c.DeleteEndpoint(context.Background(), "acme", "w/1")
	if CodeOf(err) != CodeNotFound || !strings.Contains(err.Error(), "acme/w/1") {
		t.Fatalf("delete: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}
