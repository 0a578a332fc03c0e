package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"nvi/internal/testca"
	"nvi/session"
)

// fakePeer records what reaches the service; block makes calls wait for
// release (or their deadline).
type fakePeer struct {
	mu      sync.Mutex
	calls   int
	callers []string
	got     AcceptRequest
	err     error
	block   chan struct{}
	entered chan struct{}
}

func (f *fakePeer) record(ctx context.Context, caller string) error {
	f.mu.Lock()
	f.calls++
	f.callers = append(f.callers, caller)
	block, entered, err := f.block, f.entered, f.err
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *fakePeer) Accept(ctx context.Context, caller string, req AcceptRequest) (AcceptReply, error) {
	f.mu.Lock()
	f.got = req
	f.mu.Unlock()
	return AcceptReply{Delivered: len(req.Frames)}, f.record(ctx, caller)
}

func (f *fakePeer) Release(ctx context.Context, caller string, req ReleaseRequest) error {
	return f.record(ctx, caller)
}

func (f *fakePeer) Reopen(ctx context.Context, caller string, req ReopenRequest) error {
	return f.record(ctx, caller)
}

func (f *fakePeer) UnknownKey(ctx context.Context, caller string, req UnknownKeyRequest) error {
	return f.record(ctx, caller)
}

func (f *fakePeer) seen() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]string(nil), f.callers...)
}

// cloud is a test CA with the identities of servers s1, s2 and s3.
type cloud struct {
	ca         *testca.CA
	s1, s2, s3 *testca.Identity
}

func newCloud(t *testing.T) *cloud {
	ca := testca.New(t)
	return &cloud{ca: ca, s1: ca.Server(t, "s1"), s2: ca.Server(t, "s2"), s3: ca.Server(t, "s3")}
}

// servePeer runs svc as server id on loopback with the peer API's TLS
// listener; it returns the address and the listener.
func servePeer(t *testing.T, svc PeerService, id *testca.Identity, opts PeerOptions, lim ListenLimits) (string, *peerListener) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conf *tls.Config
	if id != nil {
		conf = id.ServerTLS()
		if opts.Caller == nil && !opts.InsecureTrustFrom {
			opts.Caller = TLSCaller(id.PeerName)
		}
	}
	l := PeerListener(raw, conf, lim, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServePeer(ctx, l, svc, opts, quiet) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return raw.Addr().String(), l.(*peerListener)
}

// client is from's client toward server s2.
func peerClient(t *testing.T, addr string, from *testca.Identity, timeout time.Duration) *PeerClient {
	c := NewPeerClient(addr, from.ClientTLS("s2"), timeout)
	t.Cleanup(c.Close)
	return c
}

var acceptReq = AcceptRequest{From: "s1", Key: 61441, Tuple: session.Tuple{
	Tenant: "acme", Proto: session.UDP, Client: netip.MustParseAddr("10.1.0.2"),
	Server: netip.MustParseAddr("10.1.0.3"), Port: 53,
}}

func TestPeerRoundTripOverMutualTLS(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	c := peerClient(t, addr, cl.s1, time.Second)
	if _, err := c.Accept(context.Background(), acceptReq); err != nil {
		t.Fatal(err)
	}
	// The first packets ride along, and the reply says how many the peer
	// took on.
	withFrames := acceptReq
	withFrames.Frames = [][]byte{[]byte("first"), []byte("second")}
	if r, err := c.Accept(context.Background(), withFrames); err != nil || r.Delivered != 2 {
		t.Fatalf("Accept with two frames: %+v, %v", r, err)
	}
	if fp.mu.Lock(); len(fp.got.Frames) != 2 || string(fp.got.Frames[1]) != "second" {
		t.Errorf("the peer got frames %q", fp.got.Frames)
	}
	fp.mu.Unlock()
	noFrom := acceptReq
	noFrom.From = ""
	if _, err := c.Accept(context.Background(), noFrom); err != nil {
		t.Fatal(err)
	}
	n, callers := fp.seen()
	if n != 3 || callers[0] != "s1" || callers[2] != "s1" {
		t.Fatalf("service saw %d calls from %v, want 3 from s1", n, callers)
	}
	if !reflect.DeepEqual(fp.got, noFrom) {
		t.Fatalf("server got %+v, want %+v", fp.got, noFrom)
	}
}

// TestPeerHandshakeRefusals: whoever cannot show a current certificate of
// the cloud's CA never reaches the service.
func TestPeerHandshakeRefusals(t *testing.T) {
	cl := newCloud(t)
	other := testca.New(t).Server(t, "s1")
	expired := cl.ca.ServerWith(t, "s1", testca.Options{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	noCert := cl.s1.ClientTLS("s2")
	noCert.Certificates = nil
	withCert := func(id *testca.Identity) *tls.Config {
		conf := cl.s1.ClientTLS("s2")                           // trusts the right CA for the server...
		conf.Certificates = []tls.Certificate{id.Certificate()} // ...but shows id's certificate
		return conf
	}
	for _, tc := range []struct {
		name string
		conf *tls.Config
	}{
		{"no client certificate", noCert},
		{"a certificate of another CA", withCert(other)},
		{"an expired certificate", withCert(expired)},
		{"plain TCP", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewPeerClient(addr, tc.conf, time.Second)
			defer c.Close()
			_, err := c.Accept(context.Background(), acceptReq)
			if err == nil || CodeOf(err) != CodeUnavailable {
				t.Fatalf("err = %v (code %s), want the connection refused", err, CodeOf(err))
			}
		})
	}
	if n, _ := fp.seen(); n != 0 {
		t.Fatalf("%d refused callers reached the service", n)
	}
	// Beside them, s1's real certificate works.
	if _, err := peerClient(t, addr, cl.s1, time.Second).Accept(context.Background(), acceptReq); err != nil {
		t.Fatalf("legitimate call: %v", err)
	}
}

// TestPeerClientChecksTheServer: a client asks for s2 and refuses whoever
// else answers, even with a valid certificate of the cloud.
func TestPeerClientChecksTheServer(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s3, PeerOptions{}, ListenLimits{}) // s3 answers at "s2's" address
	_, err := peerClient(t, addr, cl.s1, time.Second).Accept(context.Background(), acceptReq)
	if err == nil {
		t.Fatal("the client accepted s3 answering for s2")
	}
	if n, _ := fp.seen(); n != 0 {
		t.Fatalf("the request reached the wrong server (%d calls)", n)
	}
}

// TestPeerCertificateThatIsNotAServer: the CA's certificate for something
// other than a server passes the handshake but speaks for no server.
func TestPeerCertificateThatIsNotAServer(t *testing.T) {
	cl := newCloud(t)
	op := cl.ca.ServerWith(t, "root", testca.Options{CommonName: "root", Organization: "nvi-operator"})
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	_, err := peerClient(t, addr, op, time.Second).Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeDenied {
		t.Fatalf("err = %v (code %s), want denied", err, CodeOf(err))
	}
	if n, _ := fp.seen(); n != 0 {
		t.Fatalf("%d calls reached the service", n)
	}
}

// TestPeerFromMustBeTheCaller: s3's valid certificate cannot speak for s1.
func TestPeerFromMustBeTheCaller(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	c3 := peerClient(t, addr, cl.s3, time.Second)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"accept":  func() error { _, err := c3.Accept(ctx, acceptReq); return err },
		"release": func() error { return c3.Release(ctx, ReleaseRequest{From: "s1", Tuple: acceptReq.Tuple, Key: 61441}) },
		"reopen":  func() error { return c3.Reopen(ctx, ReopenRequest{From: "s1", Tuple: acceptReq.Tuple}) },
	} {
		if err := call(); CodeOf(err) != CodeDenied {
			t.Errorf("%s from s3 claiming s1: err = %v (code %s), want denied", name, err, CodeOf(err))
		}
	}
	if n, _ := fp.seen(); n != 0 {
		t.Fatalf("%d forged calls reached the service", n)
	}
	own := acceptReq
	own.From = "s3"
	if _, err := c3.Accept(ctx, own); err != nil {
		t.Fatalf("s3 speaking for itself: %v", err)
	}
	if _, callers := fp.seen(); len(callers) != 1 || callers[0] != "s3" {
		t.Fatalf("callers = %v, want [s3]", callers)
	}
}

// servePlain runs svc without TLS on loopback and returns its address.
func servePlain(t *testing.T, svc PeerService, opts PeerOptions) string {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServePeer(ctx, PeerListener(raw, nil, ListenLimits{}, quiet), svc, opts, quiet) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return raw.Addr().String()
}

func TestPeerWithoutCallerIsRefused(t *testing.T) {
	for name, opts := range map[string]PeerOptions{
		"no caller function":         {},
		"no TLS on the connection":   {Caller: TLSCaller(func(*tls.ConnectionState) (string, error) { return "s1", nil })},
		"caller function refuses":    {Caller: func(*tls.ConnectionState) (string, error) { return "", errors.New("who?") }},
		"caller function names none": {Caller: func(*tls.ConnectionState) (string, error) { return "", nil }},
	} {
		t.Run(name, func(t *testing.T) {
			fp := &fakePeer{}
			c := NewPeerClient(servePlain(t, fp, opts), nil, time.Second)
			defer c.Close()
			_, err := c.Accept(context.Background(), acceptReq)
			if c := CodeOf(err); c != CodeUnauthenticated && c != CodeDenied {
				t.Fatalf("err = %v (code %s), want unauthenticated or denied", err, c)
			}
			if n, _ := fp.seen(); n != 0 {
				t.Fatalf("%d calls reached the service", n)
			}
		})
	}
}

// TestPeerInsecureTrustsFrom: the benchmark's unauthenticated mode takes
// the caller from the body, and needs one.
func TestPeerInsecureTrustsFrom(t *testing.T) {
	fp := &fakePeer{}
	c := NewPeerClient(servePlain(t, fp, PeerOptions{InsecureTrustFrom: true}), nil, time.Second)
	defer c.Close()
	if _, err := c.Accept(context.Background(), acceptReq); err != nil {
		t.Fatal(err)
	}
	if err := c.Reopen(context.Background(), ReopenRequest{Tuple: acceptReq.Tuple}); CodeOf(err) != CodeInvalid {
		t.Fatalf("no From: err = %v, want invalid", err)
	}
	if n, callers := fp.seen(); n != 1 || callers[0] != "s1" {
		t.Fatalf("service saw %d calls from %v, want 1 from s1", n, callers)
	}
}

// TestPeerRateLimitPerCaller: beyond its bucket a caller is told to come
// back later; another caller beside it is served.
func TestPeerRateLimitPerCaller(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{Rate: 0.01, Burst: 3}, ListenLimits{})
	c1, c3 := peerClient(t, addr, cl.s1, time.Second), peerClient(t, addr, cl.s3, time.Second)
	ctx := context.Background()
	for i := range 3 {
		if err := c1.Release(ctx, ReleaseRequest{}); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	if err := c1.Release(ctx, ReleaseRequest{}); CodeOf(err) != CodeUnavailable {
		t.Fatalf("call beyond the burst: err = %v (code %s), want unavailable", err, CodeOf(err))
	}
	if err := c3.Release(ctx, ReleaseRequest{}); err != nil {
		t.Fatalf("another caller beside it: %v", err)
	}
	if n, _ := fp.seen(); n != 4 {
		t.Fatalf("service saw %d calls, want 4", n)
	}
}

// TestPeerConcurrencyBound: with every slot busy the next call is refused
// at once, and served again once a slot frees.
func TestPeerConcurrencyBound(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{block: make(chan struct{}), entered: make(chan struct{}, 2)}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{MaxInFlight: 2}, ListenLimits{})
	c1 := peerClient(t, addr, cl.s1, 5*time.Second)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() { _, err := c1.Accept(ctx, acceptReq); errs <- err })
	}
	<-fp.entered
	<-fp.entered
	start := time.Now()
	if err := c1.Release(ctx, ReleaseRequest{}); CodeOf(err) != CodeUnavailable {
		t.Fatalf("third call while two are served: err = %v (code %s), want unavailable", err, CodeOf(err))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the refusal took %v; it should not wait", d)
	}
	fp.mu.Lock()
	close(fp.block)
	fp.block, fp.entered = nil, nil
	fp.mu.Unlock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a call within the bound: %v", err)
		}
	}
	if err := c1.Release(ctx, ReleaseRequest{}); err != nil {
		t.Fatalf("after the slots freed: %v", err)
	}
}

// stall opens n connections that never start a handshake.
func stall(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestPeerListenerBoundsHandshakes: connections that stall their handshake
// hold at most Handshakes slots, for at most HandshakeTimeout.
func TestPeerListenerBoundsHandshakes(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, l := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{PerIP: 100, Handshakes: 2, HandshakeTimeout: 500 * time.Millisecond})
	stall(t, addr, 2)
	waitFor(t, "two handshakes in progress", func() bool { return len(l.slots) == 2 })
	c1 := NewPeerClient(addr, cl.s1.ClientTLS("s2"), time.Second)
	defer c1.Close()
	if _, err := c1.Accept(context.Background(), acceptReq); CodeOf(err) != CodeUnavailable {
		t.Fatalf("with every handshake slot taken: err = %v, want the connection refused", err)
	}
	waitFor(t, "the stalled handshakes to time out", func() bool { return len(l.slots) == 0 })
	if _, err := c1.Accept(context.Background(), acceptReq); err != nil {
		t.Fatalf("after the stalled handshakes timed out: %v", err)
	}
}

// TestPeerListenerBoundsConnectionsPerIP: one address cannot hold more
// than PerIP connections; closing them frees the room.
func TestPeerListenerBoundsConnectionsPerIP(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, l := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{PerIP: 2, Handshakes: 10, HandshakeTimeout: time.Minute})
	held := stall(t, addr, 2)
	count := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.perIP[netip.MustParseAddr("127.0.0.1")]
	}
	waitFor(t, "two connections counted", func() bool { return count() == 2 })
	extra := stall(t, addr, 1)[0]
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a third connection from the same address was kept open (read: %v)", err)
	}
	for _, c := range held {
		c.Close()
	}
	waitFor(t, "the closed connections to leave", func() bool { return count() == 0 })
	c1 := peerClient(t, addr, cl.s1, time.Second)
	if _, err := c1.Accept(context.Background(), acceptReq); err != nil {
		t.Fatalf("after the held connections closed: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPeerConnectionsPersist: calls share one connection, calls at once
// share it too, and a new connection resumes the TLS session instead of a
// full handshake.
func TestPeerConnectionsPersist(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	conf := cl.s1.ClientTLS("s2")
	conf.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	c1 := NewPeerClient(addr, conf, time.Second)
	defer c1.Close()
	ctx := context.Background()
	if _, err := c1.Accept(ctx, acceptReq); err != nil {
		t.Fatal(err)
	}
	first := c1.conn
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c1.Accept(ctx, acceptReq); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if c1.conn != first || first.resumed {
		t.Fatalf("calls made new connections (same: %v) or the first resumed a session it never had (%v)", c1.conn == first, first.resumed)
	}
	if n, _ := fp.seen(); n != 21 {
		t.Fatalf("the service saw %d calls, want 21", n)
	}
	c2 := NewPeerClient(addr, conf, time.Second) // shares the session cache
	defer c2.Close()
	if _, err := c2.Accept(ctx, acceptReq); err != nil {
		t.Fatal(err)
	}
	if !c2.conn.resumed {
		t.Fatal("a new connection negotiated a full TLS handshake instead of resuming")
	}
}

// TestPeerConnectionEndsCalls: when the connection ends under calls in
// flight, each hears so at once, and the next call dials a new one.
func TestPeerConnectionEndsCalls(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	c := peerClient(t, addr, cl.s1, 30*time.Second)
	errc := make(chan error, 1)
	go func() { _, err := c.Accept(context.Background(), acceptReq); errc <- err }()
	<-fp.entered
	c.mu.Lock()
	c.conn.c.Close()
	c.mu.Unlock()
	if err := <-errc; CodeOf(err) != CodeUnavailable {
		t.Fatalf("the call in flight: err = %v, want unavailable", err)
	}
	fp.mu.Lock()
	close(fp.block)
	fp.block, fp.entered = nil, nil
	fp.mu.Unlock()
	if _, err := c.Accept(context.Background(), acceptReq); err != nil {
		t.Fatalf("the next call: %v", err)
	}
}

func TestErrorsKeepTheirCode(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{err: Errorf(CodeDenied, "networks web and db are isolated")}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	c := peerClient(t, addr, cl.s1, time.Second)
	_, err := c.Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeDenied || !strings.Contains(err.Error(), "isolated") {
		t.Fatalf("err = %v (code %s), want denied with the reason", err, CodeOf(err))
	}
	fp.mu.Lock()
	fp.err = errors.New("plain failure")
	fp.mu.Unlock()
	if err := c.Release(context.Background(), ReleaseRequest{}); CodeOf(err) != CodeInternal {
		t.Fatalf("plain error came back as %v (code %s)", err, CodeOf(err))
	}
}

func TestCallsHaveDeadlines(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{block: make(chan struct{})}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	c := peerClient(t, addr, cl.s1, 300*time.Millisecond)
	start := time.Now()
	_, err := c.Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeUnavailable || time.Since(start) > 5*time.Second {
		t.Fatalf("blocked call: err = %v after %v, want unavailable after ~300ms", err, time.Since(start))
	}
}

func TestUnreachablePeer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	_, err := NewPeerClient(addr, newCloud(t).s1.ClientTLS("s2"), time.Second).Accept(context.Background(), AcceptRequest{})
	if CodeOf(err) != CodeUnavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

// TestBadFramesAreRejected: malformed bodies and unknown calls are
// answered "invalid" and reach nothing; a frame that is not one ends the
// connection; calls on the same connection go on after an invalid one.
func TestBadFramesAreRejected(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{})
	conf := cl.s1.ClientTLS("s2")
	conf.NextProtos = []string{PeerALPN}
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	ask := func(op uint8, body []byte) error {
		t.Helper()
		b := append(frame(7, op), body...).finish()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		id, aop, ab, err := readFrame(r, nil)
		if err != nil || id != 7 || aop != opAnswer {
			t.Fatalf("answer: id %d op %d err %v", id, aop, err)
		}
		_, err = decodeAnswer(ab)
		return err
	}
	good, _ := encodeRequest(7, &acceptReq)
	for name, tc := range map[string]struct {
		op   uint8
		body []byte
	}{
		"empty accept":         {opAccept, nil},
		"truncated accept":     {opAccept, good[frameHeader : len(good)-1]},
		"accept with trailing": {opAccept, append(good[frameHeader:len(good):len(good)], 0)},
		"unknown call":         {42, good[frameHeader:]},
		"five first packets":   {opAccept, append(wbuf(good[frameHeader:len(good)-1:len(good)-1]).u8(5), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)},
		"address of 5 bytes":   {opReopen, wbuf(nil).str("s1").str("acme").u8(17).u8(5)},
	} {
		if err := ask(tc.op, tc.body); CodeOf(err) != CodeInvalid {
			t.Errorf("%s: err = %v (code %s), want invalid", name, err, CodeOf(err))
		}
	}
	if n, _ := fp.seen(); n != 0 {
		t.Fatalf("%d bad frames reached the service", n)
	}
	if err := ask(opAccept, good[frameHeader:]); err != nil {
		t.Fatalf("a good call after the bad ones: %v", err)
	}
	// A length beyond any frame ends the connection.
	if _, err := c.Write([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("the connection stayed open after a frame of 4 GiB (read: %v)", err)
	}
}

// TestPeerListenerBoundsNewConnectionsPerIP: one address cannot open
// connections (and make the server pay for handshakes) faster than its
// rate; connections it keeps open are not affected.
func TestPeerListenerBoundsNewConnectionsPerIP(t *testing.T) {
	cl := newCloud(t)
	fp := &fakePeer{}
	addr, _ := servePeer(t, fp, cl.s2, PeerOptions{}, ListenLimits{NewPerIP: 0.01, NewBurst: 2})
	kept := peerClient(t, addr, cl.s1, time.Second)
	if _, err := kept.Accept(context.Background(), acceptReq); err != nil { // connection 1
		t.Fatal(err)
	}
	fresh := func() error {
		c := NewPeerClient(addr, cl.s1.ClientTLS("s2"), time.Second)
		defer c.Close()
		_, err := c.Accept(context.Background(), acceptReq)
		return err
	}
	if err := fresh(); err != nil { // connection 2
		t.Fatalf("a second connection within the burst: %v", err)
	}
	if err := fresh(); CodeOf(err) != CodeUnavailable {
		t.Fatalf("a third new connection at once: err = %v, want it refused", err)
	}
	if _, err := kept.Accept(context.Background(), acceptReq); err != nil {
		t.Fatalf("the connection kept open beside it: %v", err)
	}
}

// TestSilentPeerIsRedialled: a peer that takes a connection and then never
// answers (gone without a word, no FIN) fails the call at its deadline, and
// the next call dials anew instead of waiting on the same connection.
func TestSilentPeerIsRedialled(t *testing.T) {
	cl := newCloud(t)
	conf := cl.s2.ServerTLS()
	conf.NextProtos = []string{PeerALPN}
	l, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }() // reads, never answers
			conns <- c
		}
	}()
	c := peerClient(t, l.Addr().String(), cl.s1, 200*time.Millisecond)
	for i := range 2 {
		if _, err := c.Accept(context.Background(), acceptReq); CodeOf(err) != CodeUnavailable {
			t.Fatalf("call %d to a silent peer: err = %v, want unavailable", i+1, err)
		}
		select {
		case nc := <-conns:
			defer nc.Close()
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d made no connection of its own", i+1)
		}
	}
}
