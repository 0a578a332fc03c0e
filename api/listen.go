package api

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ListenLimits bound what connections can cost before they are
// authenticated: a TLS handshake is expensive for the server, and anyone
// who reaches the port can start one.
type ListenLimits struct {
	PerIP            int           // open connections per remote address; 0: DefaultPerIP
	Handshakes       int           // TLS handshakes in progress at once; 0: DefaultHandshakes
	HandshakeTimeout time.Duration // 0: DefaultHandshakeTimeout
	// NewPerIP bounds how fast one address may open connections (per
	// second, with NewBurst at once): peers keep theirs open and resume
	// TLS sessions, so only a flood opens many. 0: DefaultNewPerIP.
	NewPerIP rate.Limit
	NewBurst int // 0: DefaultNewBurst
}

// Defaults of ListenLimits.
const (
	DefaultPerIP            = 64
	DefaultHandshakes       = 64
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultNewPerIP         = 50
	DefaultNewBurst         = 100
	maxTrackedAddrs         = 4096 // bounds the per-address rate table
)

func (l *ListenLimits) defaults() {
	if l.PerIP == 0 {
		l.PerIP = DefaultPerIP
	}
	if l.Handshakes == 0 {
		l.Handshakes = DefaultHandshakes
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.NewPerIP == 0 {
		l.NewPerIP = DefaultNewPerIP
	}
	if l.NewBurst == 0 {
		l.NewBurst = DefaultNewBurst
	}
}

// PeerListener wraps l for the peer API: it refuses connections beyond
// lim.PerIP per remote address or faster than lim.NewPerIP, and, when
// conf is set, completes each TLS
// handshake (at most lim.Handshakes at once, each within
// lim.HandshakeTimeout) before Accept returns the connection, so only
// connections with a verified certificate reach the HTTP server. A
// connection that finds every handshake slot taken is closed at once: the
// caller retries, and an attacker cannot queue work.
func PeerListener(l net.Listener, conf *tls.Config, lim ListenLimits, log *slog.Logger) net.Listener {
	lim.defaults()
	p := &peerListener{
		Listener: l, conf: conf, lim: lim, log: log,
		slots: make(chan struct{}, lim.Handshakes),
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
		perIP: map[netip.Addr]int{},
		rates: map[netip.Addr]*rate.Limiter{},
	}
	go p.acceptLoop()
	return p
}

type peerListener struct {
	net.Listener
	conf  *tls.Config
	lim   ListenLimits
	log   *slog.Logger
	slots chan struct{} // handshakes in progress
	conns chan net.Conn // ready for the HTTP server
	done  chan struct{} // closed by Close
	once  sync.Once

	mu    sync.Mutex
	perIP map[netip.Addr]int
	rates map[netip.Addr]*rate.Limiter
	err   error // why the inner listener stopped
}

func (p *peerListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.err != nil {
			return nil, p.err
		}
		return nil, net.ErrClosed
	}
}

func (p *peerListener) Close() error {
	err := p.Listener.Close()
	p.once.Do(func() { close(p.done) })
	return err
}

func (p *peerListener) acceptLoop() {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			p.once.Do(func() { close(p.done) })
			return
		}
		ip := remoteIP(c)
		if !p.enter(ip) {
			p.log.Debug("peer API: too many connections from one address, or too fast", "remote", ip)
			c.Close()
			continue
		}
		cc := &countedConn{Conn: c, leave: func() { p.leave(ip) }}
		if p.conf == nil {
			p.deliver(cc)
			continue
		}
		select {
		case p.slots <- struct{}{}:
			go p.handshake(cc)
		default:
			p.log.Debug("peer API: every handshake slot is taken", "remote", ip)
			cc.Close()
		}
	}
}

func (p *peerListener) handshake(c net.Conn) {
	defer func() { <-p.slots }()
	tc := tls.Server(c, p.conf)
	_ = c.SetDeadline(time.Now().Add(p.lim.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		p.log.Debug("peer API: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	p.deliver(tc)
}

func (p *peerListener) deliver(c net.Conn) {
	select {
	case p.conns <- c:
	case <-p.done:
		c.Close()
	}
}

// enter admits a new connection from ip: under its count and its rate.
func (p *peerListener) enter(ip netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perIP[ip] >= p.lim.PerIP {
		return false
	}
	r := p.rates[ip]
	if r == nil {
		if len(p.rates) >= maxTrackedAddrs {
			for other, l := range p.rates {
				if l.Tokens() >= float64(p.lim.NewBurst) {
					delete(p.rates, other)
				}
			}
			if len(p.rates) >= maxTrackedAddrs {
				return false
			}
		}
		r = rate.NewLimiter(p.lim.NewPerIP, p.lim.NewBurst)
		p.rates[ip] = r
	}
	if !r.Allow() {
		return false
	}
	p.perIP[ip]++
	return true
}

func (p *peerListener) leave(ip netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perIP[ip]--; p.perIP[ip] <= 0 {
		delete(p.perIP, ip)
	}
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// countedConn gives its slot back when closed, once.
type countedConn struct {
	net.Conn
	once  sync.Once
	leave func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.leave)
	return err
}
