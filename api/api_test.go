package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/session"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakePeer struct {
	got   AcceptRequest
	err   error
	block bool
}

func (f *fakePeer) Accept(ctx context.Context, req AcceptRequest) error {
	f.got = req
	if f.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return f.err
}

func (f *fakePeer) Release(ctx context.Context, req ReleaseRequest) error { return f.err }

func (f *fakePeer) Reopen(ctx context.Context, req ReopenRequest) error { return f.err }

func TestPeerRoundTrip(t *testing.T) {
	fp := &fakePeer{}
	srv := httptest.NewServer(PeerHandler(fp, quiet))
	defer srv.Close()
	c := NewPeerClient(strings.TrimPrefix(srv.URL, "http://"), time.Second)
	defer c.Close()
	req := AcceptRequest{From: "s1", Key: 61441, Tuple: session.Tuple{
		Tenant: "acme", Proto: session.UDP, Client: netip.MustParseAddr("10.1.0.2"),
		Server: netip.MustParseAddr("10.1.0.3"), Port: 53,
	}}
	if err := c.Accept(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if fp.got != req {
		t.Fatalf("server got %+v, want %+v", fp.got, req)
	}
}

func TestErrorsKeepTheirCode(t *testing.T) {
	fp := &fakePeer{err: Errorf(CodeDenied, "networks web and db are isolated")}
	srv := httptest.NewServer(PeerHandler(fp, quiet))
	defer srv.Close()
	c := NewPeerClient(strings.TrimPrefix(srv.URL, "http://"), time.Second)
	err := c.Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeDenied || !strings.Contains(err.Error(), "isolated") {
		t.Fatalf("err = %v (code %s), want denied with the reason", err, CodeOf(err))
	}
	fp.err = errors.New("plain failure")
	if err := c.Release(context.Background(), ReleaseRequest{}); CodeOf(err) != CodeInternal {
		t.Fatalf("plain error came back as %v (code %s)", err, CodeOf(err))
	}
}

func TestCallsHaveDeadlines(t *testing.T) {
	fp := &fakePeer{block: true}
	srv := httptest.NewServer(PeerHandler(fp, quiet))
	defer srv.Close()
	c := NewPeerClient(strings.TrimPrefix(srv.URL, "http://"), 100*time.Millisecond)
	start := time.Now()
	err := c.Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeUnavailable || time.Since(start) > 5*time.Second {
		t.Fatalf("blocked call: err = %v after %v, want unavailable after ~100ms", err, time.Since(start))
	}
}

func TestUnreachablePeer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	err := NewPeerClient(addr, time.Second).Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeUnavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

func TestBadBodyIsRejected(t *testing.T) {
	srv := httptest.NewServer(PeerHandler(&fakePeer{}, quiet))
	defer srv.Close()
	for _, body := range []string{"{", `{"from": 5}`, `{"bogus": 1}`, `{"tuple":{"proto":"sctp"}}`} {
		resp, err := http.Post(srv.URL+pathAccept, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %q: status %d, want 400", body, resp.StatusCode)
		}
	}
}

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
