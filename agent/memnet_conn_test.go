package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/net/nettest"
)

// TestMemConn holds the in-memory connection to what net.Conn promises
// (golang.org/x/net/nettest's conformance tests: I/O both ways at once,
// deadlines past, present and future, racy reads and writes, Close).
func TestMemConn(t *testing.T) {
	nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
		a, b := memPipe(&net.TCPAddr{}, &net.TCPAddr{})
		return a, b, func() { a.Close(); b.Close() }, nil
	})
}

// TestMemNet: a dial reaches the listener at the address, which sees the
// dialling host's address; without a listener, or after it closed, a dial
// is refused, and the address can be listened on again.
func TestMemNet(t *testing.T) {
	n := newMemNet()
	ctx := context.Background()
	from := netip.MustParseAddr("192.0.2.1")
	dial := n.dialer(from)
	refused := func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
	if _, err := dial(ctx, "tcp", "192.0.2.2:7470"); !refused(err) {
		t.Fatalf("dial with nobody listening: %v, want refused", err)
	}
	l, err := n.listen("192.0.2.2:7470")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.listen("192.0.2.2:7470"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a second listener on one address: %v, want in use", err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	c, err := dial(ctx, "tcp", "192.0.2.2:7470")
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if got := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != from {
		t.Errorf("the listener sees the dialler at %s, want %s", got, from)
	}
	if c.RemoteAddr().String() != "192.0.2.2:7470" {
		t.Errorf("the dialler is connected to %s", c.RemoteAddr())
	}
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	if _, err := dial(ctx, "tcp", "192.0.2.2:7470"); !refused(err) {
		t.Errorf("dial after the listener closed: %v, want refused", err)
	}
	if _, err := c.Write([]byte("still")); err != nil {
		t.Errorf("an accepted connection outlives its listener: %v", err)
	}
	l2, err := n.listen("192.0.2.2:7470")
	if err != nil {
		t.Fatalf("listening again: %v", err)
	}
	l2.Close()
}
