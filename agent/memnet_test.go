package agent

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// memNet is an in-memory TCP/IP network for the peer API: listeners by
// "ip:port", and connections that are pairs of in-memory streams. No
// socket is opened. Each direction buffers what is written, as a socket
// does, so a writer waits for the reader only when the buffer is full.
// net.Pipe has no buffer: each write waits until the other end has read
// all of it, so two ends writing at once wait on each other. TLS 1.3 does
// that: a server that asked for a client certificate writes its session
// tickets before it reads the client's Finished, which the client wrote
// in the same flight as its certificate. Over net.Pipe the peer API works
// only as long as the server's first read happens to take the client's
// whole flight (it does with today's certificates; a longer chain would
// hang the handshake). Deadlines work as on a socket, which net/http and
// crypto/tls rely on.
type memNet struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	port      atomic.Uint32 // the last ephemeral port handed out
}

func newMemNet() *memNet {
	n := &memNet{listeners: map[string]*memListener{}}
	n.port.Store(32767)
	return n
}

// listen listens on addr ("ip:port") until the listener is closed.
func (n *memNet) listen(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners[addr] != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: syscall.EADDRINUSE}
	}
	l := &memListener{n: n, addr: net.TCPAddrFromAddrPort(ap), conns: make(chan net.Conn), done: make(chan struct{})}
	n.listeners[addr] = l
	return l, nil
}

// dialer is the dial function of the host at from: its connections come
// from there, so a listener sees each server at its own address.
func (n *memNet) dialer(from netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Err: err}
		}
		to := net.TCPAddrFromAddrPort(ap)
		n.mu.Lock()
		l := n.listeners[addr]
		n.mu.Unlock()
		if l == nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: to, Err: syscall.ECONNREFUSED}
		}
		local := net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, uint16(n.port.Add(1))))
		client, server := memPipe(local, to)
		select {
		case l.conns <- server:
			return client, nil
		case <-l.done:
			return nil, &net.OpError{Op: "dial", Net: network, Addr: to, Err: syscall.ECONNREFUSED}
		case <-ctx.Done():
			return nil, &net.OpError{Op: "dial", Net: network, Addr: to, Err: ctx.Err()}
		}
	}
}

type memListener struct {
	n     *memNet
	addr  *net.TCPAddr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops listening and frees the address; accepted connections stay.
func (l *memListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.n.mu.Lock()
		if l.n.listeners[l.addr.String()] == l {
			delete(l.n.listeners, l.addr.String())
		}
		l.n.mu.Unlock()
	})
	return nil
}

func (l *memListener) Addr() net.Addr { return l.addr }

// memPipe makes the two ends of a connection from a to b.
func memPipe(a, b net.Addr) (*memConn, *memConn) {
	ab, ba := newMemStream(), newMemStream()
	ca := &memConn{in: ba, out: ab, local: a, remote: b, done: make(chan struct{})}
	cb := &memConn{in: ab, out: ba, local: b, remote: a, done: make(chan struct{})}
	ca.rd.init()
	ca.wd.init()
	cb.rd.init()
	cb.wd.init()
	ca.peer, cb.peer = cb, ca
	return ca, cb
}

// memBuffer is how much one direction of a connection holds before its
// writer waits for the reader, as a socket's buffers do.
const memBuffer = 256 << 10

// memStream is one direction of a connection.
type memStream struct {
	mu       sync.Mutex
	buf      []byte
	eof      bool          // the writing end closed
	readable chan struct{} // a token: data or the end arrived
	writable chan struct{} // a token: room was made
}

func newMemStream() *memStream {
	return &memStream{readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func token(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// memConn is one end of an in-memory connection.
type memConn struct {
	in, out       *memStream
	local, remote net.Addr
	peer          *memConn
	rd, wd        deadline
	done          chan struct{} // closed by Close
	once          sync.Once
}

func (c *memConn) Read(p []byte) (int, error) {
	s := c.in
	for {
		select {
		case <-c.done:
			return 0, net.ErrClosed
		case <-c.rd.passed():
			return 0, os.ErrDeadlineExceeded
		default:
		}
		s.mu.Lock()
		if len(s.buf) > 0 {
			n := copy(p, s.buf)
			s.buf = s.buf[n:]
			if len(s.buf) > 0 {
				token(s.readable) // for another reader
			}
			s.mu.Unlock()
			token(s.writable)
			return n, nil
		}
		eof := s.eof
		s.mu.Unlock()
		if eof {
			return 0, io.EOF
		}
		select {
		case <-s.readable:
		case <-c.done:
		case <-c.rd.passed():
		}
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	s := c.out
	n := 0
	for {
		select {
		case <-c.done:
			return n, net.ErrClosed
		case <-c.wd.passed():
			return n, os.ErrDeadlineExceeded
		case <-c.peer.done:
			return n, syscall.ECONNRESET // the other end is gone
		default:
		}
		s.mu.Lock()
		if k := min(memBuffer-len(s.buf), len(p)-n); k > 0 {
			s.buf = append(s.buf, p[n:n+k]...)
			n += k
			token(s.readable)
		}
		room := len(s.buf) < memBuffer
		s.mu.Unlock()
		if n == len(p) {
			if room {
				token(s.writable) // for another writer
			}
			return n, nil
		}
		select {
		case <-s.writable:
		case <-c.done:
		case <-c.wd.passed():
		case <-c.peer.done:
		}
	}
}

// Close ends this end: its reads and writes fail, and the other end reads
// what was written and then EOF.
func (c *memConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.out.mu.Lock()
		c.out.eof = true
		c.out.mu.Unlock()
		token(c.out.readable)
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}
func (c *memConn) SetReadDeadline(t time.Time) error  { c.rd.set(t); return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { c.wd.set(t); return nil }

// deadline is a settable deadline whose channel is closed once it has
// passed; setting it again wakes whoever waits on the old one if the new
// one has passed too.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait until it has closed the channel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) passed() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
