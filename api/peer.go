package api

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"nvi/session"
)

// AcceptRequest asks the server workload's agent to install its half of a
// session. The receiving agent re-checks everything itself (that the client
// lives on the calling server, that policy allows it) and never trusts the
// body: who calls is what the caller's certificate says.
type AcceptRequest struct {
	From  string        `json:"from,omitempty"` // the client's server; if set, it must be the caller
	Tuple session.Tuple `json:"tuple"`          // for ICMP, Port is the client's echo identifier
	Key   uint16        `json:"key"`            // chosen by the client's server, unique per (peer, protocol)
	// Frames are the session's first packets as the client workload sent
	// them (at most MaxAcceptFrames, TCP and UDP only). The peer delivers
	// them itself once its half is in place, through its own pipeline as
	// if they had come from the client's server, which has installed the
	// way back before asking; so the first packet does not wait for the
	// answer and the client's other half.
	Frames [][]byte `json:"frames,omitempty"`
}

// MaxAcceptFrames bounds the frames an Accept carries, and
// MaxAcceptFrameBytes their total size.
const (
	MaxAcceptFrames     = session.MaxFirstPackets
	MaxAcceptFrameBytes = session.MaxFirstPacketBytes
)

// AcceptReply says how many of the request's frames the peer took on
// (delivered, or dropped as not the session's); the client delivers the
// rest itself.
type AcceptReply struct {
	Delivered int `json:"delivered,omitempty"`
}

// ReleaseRequest asks the peer to remove its half of a session. It is sent
// by whichever end decides the session is over; the receiver removes its
// flows, waits for the barrier, and only then answers, so both halves go
// together. Only the session's own peer may release it.
type ReleaseRequest struct {
	From   string        `json:"from,omitempty"` // if set, it must be the caller
	Role   session.Role  `json:"role"`           // the sender's role in the session
	Tuple  session.Tuple `json:"tuple"`
	Key    uint16        `json:"key"`
	Reason string        `json:"reason"`
}

// ReopenRequest asks a client workload's agent to set its session up again
// because the server workload answers in a connection the session carried
// before it idled out. The client's agent re-checks policy and runs an
// ordinary setup; it answers once the session is established.
type ReopenRequest struct {
	From  string        `json:"from,omitempty"` // the server workload's server; if set, it must be the caller
	Tuple session.Tuple `json:"tuple"`
}

// UnknownKeyRequest tells a client's agent that its packets with Key reach
// the caller and no session there takes them: the caller's half of that
// session is gone (it ended while this server could not be told). The
// receiver checks its session of that key with the caller, by repeating
// its Accept; it answers at once, before the check.
type UnknownKeyRequest struct {
	From  string        `json:"from,omitempty"` // if set, it must be the caller
	Proto session.Proto `json:"proto"`
	Key   uint16        `json:"key"`
}

// peerRequest is one of the requests above; from is what it says of its
// sender.
type peerRequest interface{ from() string }

func (r *AcceptRequest) from() string     { return r.From }
func (r *ReleaseRequest) from() string    { return r.From }
func (r *ReopenRequest) from() string     { return r.From }
func (r *UnknownKeyRequest) from() string { return r.From }

// PeerService is what an agent offers other agents. caller is the server
// the request comes from as its certificate proves it, never as the body
// claims it.
type PeerService interface {
	Accept(ctx context.Context, caller string, req AcceptRequest) (AcceptReply, error)
	Release(ctx context.Context, caller string, req ReleaseRequest) error
	Reopen(ctx context.Context, caller string, req ReopenRequest) error
	UnknownKey(ctx context.Context, caller string, req UnknownKeyRequest) error
}

// CallerFunc names the server on the other end of a connection from its
// verified TLS state (nil for a connection without TLS). It fails with
// CodeUnauthenticated when the connection carries no identity, and with
// CodeDenied when the identity is not a server's. It is asked at every
// request, so a revocation takes effect on connections already open.
type CallerFunc func(*tls.ConnectionState) (string, error)

// TLSCaller derives the caller from the verified client certificate of the
// connection; peerName maps a verified connection to the server it speaks
// for (pki.Identity.PeerName does).
func TLSCaller(peerName func(*tls.ConnectionState) (string, error)) CallerFunc {
	return func(st *tls.ConnectionState) (string, error) {
		if st == nil || len(st.PeerCertificates) == 0 || len(st.VerifiedChains) == 0 {
			return "", Errorf(CodeUnauthenticated, "the peer API needs a verified client certificate")
		}
		name, err := peerName(st)
		if err != nil || name == "" {
			return "", Errorf(CodeDenied, "the client certificate is refused: %v", err)
		}
		return name, nil
	}
}

// Defaults of PeerOptions.
const (
	DefaultPeerRate        = 20000 // calls per second per caller
	DefaultPeerBurst       = 20000
	DefaultPeerMaxInFlight = 256
	maxLimitedCallers      = 4096 // bounds the per-caller table
)

// PeerOptions say who may call the peer API and how much.
type PeerOptions struct {
	// Caller names the server a request comes from. With none, and
	// InsecureTrustFrom unset, every call is refused.
	Caller CallerFunc
	// InsecureTrustFrom takes the caller from the body's From, unproven:
	// anyone who reaches the port can then speak for any server. Only for
	// measuring what authentication costs.
	InsecureTrustFrom bool
	Rate              rate.Limit // calls per second per caller; 0: DefaultPeerRate
	Burst             int        // 0: DefaultPeerBurst
	MaxInFlight       int        // calls served at once, all callers together; 0: DefaultPeerMaxInFlight
}

func (o *PeerOptions) defaults() {
	if o.Rate == 0 {
		o.Rate = DefaultPeerRate
	}
	if o.Burst == 0 {
		o.Burst = DefaultPeerBurst
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultPeerMaxInFlight
	}
}

// Connection times of the peer protocol. A client drops a connection idle
// for peerClientIdle and the server one idle for longer, so a request never
// meets a connection the server is closing.
const (
	peerClientIdle = 4 * time.Minute
	peerServerIdle = 10 * time.Minute
	peerBodyWait   = 10 * time.Second // for the rest of a frame once its header came
	peerWriteWait  = 10 * time.Second
)

// peerServer admits calls: caller identified, under its rate, under the
// concurrency bound, body consistent with the caller.
type peerServer struct {
	svc      PeerService
	opts     PeerOptions
	log      *slog.Logger
	inFlight chan struct{}

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

// ServePeer serves svc on l (a PeerListener's connections) to the callers
// opts admits, until ctx ends.
func ServePeer(ctx context.Context, l net.Listener, svc PeerService, opts PeerOptions, log *slog.Logger) error {
	opts.defaults()
	s := &peerServer{svc: svc, opts: opts, log: log, inFlight: make(chan struct{}, opts.MaxInFlight), limiters: map[string]*rate.Limiter{}}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.serveConn(ctx, c) }()
	}
}

// peerConnServer is the server's side of one connection.
type peerConnServer struct {
	s     *peerServer
	c     net.Conn
	state *tls.ConnectionState
	wmu   sync.Mutex
}

func (s *peerServer) serveConn(ctx context.Context, c net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	pc := &peerConnServer{s: s, c: c}
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		pc.state = &st
	}
	var calls sync.WaitGroup
	defer calls.Wait()
	r := bufio.NewReaderSize(c, 16<<10)
	for {
		_ = c.SetReadDeadline(time.Now().Add(peerServerIdle))
		id, op, body, err := readFrame(r, c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				s.log.Debug("peer connection closed", "remote", c.RemoteAddr().String(), "err", err)
			}
			return
		}
		if op == opAnswer {
			s.log.Debug("peer sent an answer to a server", "remote", c.RemoteAddr().String())
			return
		}
		pc.handle(ctx, &calls, id, op, body)
	}
}

// handle admits one request and serves it in a goroutine of its own, so
// that a slow call holds up no other on the connection.
func (pc *peerConnServer) handle(ctx context.Context, calls *sync.WaitGroup, id uint32, op uint8, body []byte) {
	s := pc.s
	caller := ""
	if !s.opts.InsecureTrustFrom {
		var err error
		if caller, err = s.caller(pc.state); err != nil {
			s.log.Info("peer API call refused", "op", op, "remote", pc.c.RemoteAddr().String(), "err", err)
			pc.answer(id, 0, err)
			return
		}
		if !s.allow(caller) {
			pc.answer(id, 0, Errorf(CodeUnavailable, "too many calls from %s; retry later", caller))
			return
		}
	}
	select {
	case s.inFlight <- struct{}{}:
	default:
		pc.answer(id, 0, Errorf(CodeUnavailable, "the peer API is busy; retry later"))
		return
	}
	calls.Add(1)
	go func() {
		defer calls.Done()
		defer func() { <-s.inFlight }()
		delivered, err := s.call(ctx, pc.c, caller, op, body)
		pc.answer(id, delivered, err)
	}()
}

// call decodes a request, checks its From against the caller and serves it.
func (s *peerServer) call(ctx context.Context, c net.Conn, caller string, op uint8, body []byte) (int, error) {
	req, err := decodeRequest(op, body)
	if err != nil {
		return 0, err
	}
	claimed := req.from()
	switch {
	case s.opts.InsecureTrustFrom && claimed == "":
		return 0, Errorf(CodeInvalid, "the request must say which server it is from")
	case s.opts.InsecureTrustFrom:
		caller = claimed
		if !s.allow(caller) {
			return 0, Errorf(CodeUnavailable, "too many calls from %s; retry later", caller)
		}
	case claimed != "" && claimed != caller:
		s.log.Warn("peer API call speaks for another server", "op", op, "caller", caller, "from", claimed, "remote", c.RemoteAddr().String())
		return 0, Errorf(CodeDenied, "the request says it is from %s but the certificate is %s's", claimed, caller)
	}
	var delivered int
	switch r := req.(type) {
	case *AcceptRequest:
		var reply AcceptReply
		reply, err = s.svc.Accept(ctx, caller, *r)
		delivered = reply.Delivered
	case *ReleaseRequest:
		err = s.svc.Release(ctx, caller, *r)
	case *ReopenRequest:
		err = s.svc.Reopen(ctx, caller, *r)
	case *UnknownKeyRequest:
		err = s.svc.UnknownKey(ctx, caller, *r)
	}
	if err != nil && CodeOf(err) == CodeInternal {
		s.log.Warn("peer API call failed", "op", op, "caller", caller, "err", err)
	}
	return delivered, err
}

func (pc *peerConnServer) answer(id uint32, delivered int, err error) {
	b := encodeAnswer(id, delivered, err)
	pc.wmu.Lock()
	defer pc.wmu.Unlock()
	_ = pc.c.SetWriteDeadline(time.Now().Add(peerWriteWait))
	if _, werr := pc.c.Write(b); werr != nil {
		pc.c.Close() // the reader sees it and ends the connection
	}
}

func (s *peerServer) caller(st *tls.ConnectionState) (string, error) {
	if s.opts.Caller == nil {
		return "", Errorf(CodeUnauthenticated, "this peer API accepts no callers")
	}
	name, err := s.opts.Caller(st)
	if err != nil {
		if c := CodeOf(err); c != CodeUnauthenticated && c != CodeDenied {
			err = Errorf(CodeDenied, "%v", err)
		}
		return "", err
	}
	if name == "" {
		return "", Errorf(CodeUnauthenticated, "the caller has no name")
	}
	return name, nil
}

// allow takes a token from caller's bucket. The table of buckets is
// bounded: full buckets are forgotten first, and past the bound new
// callers wait.
func (s *peerServer) allow(caller string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limiters[caller]
	if l == nil {
		if len(s.limiters) >= maxLimitedCallers {
			for name, other := range s.limiters {
				if other.Tokens() >= float64(s.opts.Burst) {
					delete(s.limiters, name)
				}
			}
			if len(s.limiters) >= maxLimitedCallers {
				return false
			}
		}
		l = rate.NewLimiter(s.opts.Rate, s.opts.Burst)
		s.limiters[caller] = l
	}
	return l.Allow()
}

// readFrame reads one frame: its header within the connection's current
// deadline, the rest within peerBodyWait.
func readFrame(r *bufio.Reader, c net.Conn) (id uint32, op uint8, body []byte, err error) {
	var h [4]byte // the length; id and op are read with the body
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return 0, 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n < frameHeader-4 || n > maxFrame {
		return 0, 0, nil, fmt.Errorf("%w: frame of %d bytes", errMalformed, n)
	}
	if c != nil {
		_ = c.SetReadDeadline(time.Now().Add(peerBodyWait))
	}
	buf := make([]byte, n)
	if _, err = io.ReadFull(r, buf); err != nil {
		return 0, 0, nil, err
	}
	return binary.BigEndian.Uint32(buf), buf[4], buf[5:], nil
}

// PeerClient calls one peer agent over one persistent connection that
// carries every call at once, so that a session's setup is one frame each
// way on a connection that is already open.
type PeerClient struct {
	addr    string
	conf    *tls.Config // nil: plain TCP (--insecure-peer-api)
	timeout time.Duration
	dial    DialFunc

	mu      sync.Mutex
	conn    *peerConn     // nil until dialled, and after it failed
	dialing chan struct{} // closed when the dial under way ends
	closed  bool
}

// peerConn is one connection of a PeerClient: calls wait for their answer
// by ID; its reader hands each answer over.
type peerConn struct {
	c       net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	next    uint32
	waiting map[uint32]chan peerAnswer
	err     error     // why it ended; set once
	used    time.Time // last call, for the idle bound
	heard   time.Time // last answer read
	resumed bool      // its TLS session was resumed, not negotiated anew
}

type peerAnswer struct {
	delivered int
	err       error
}

// NewPeerClient calls the agent at addr ("ip:port") over TLS with conf
// (which must verify that the answering certificate is the expected
// server's), or over plain TCP when conf is nil; calls without a deadline
// of their own get timeout.
func NewPeerClient(addr string, conf *tls.Config, timeout time.Duration) *PeerClient {
	return NewPeerClientDial(addr, conf, timeout, nil)
}

// DialFunc makes a connection to addr on network ("tcp"), as
// net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// NewPeerClientDial is NewPeerClient over the connections dial makes (TCP
// when nil; the in-process cloud of the tests dials an in-memory network);
// TLS and the peer protocol run on top of them as over TCP.
func NewPeerClientDial(addr string, conf *tls.Config, timeout time.Duration, dial DialFunc) *PeerClient {
	if conf != nil {
		conf = conf.Clone()
		conf.MinVersion = tls.VersionTLS13
		conf.NextProtos = []string{PeerALPN}
		if conf.ClientSessionCache == nil {
			conf.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		}
	}
	if dial == nil {
		dial = (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	return &PeerClient{addr: addr, conf: conf, timeout: timeout, dial: dial}
}

// Accept asks the peer to install its half (and to deliver the frames the
// request carries).
func (p *PeerClient) Accept(ctx context.Context, req AcceptRequest) (AcceptReply, error) {
	n, err := p.call(ctx, &req)
	return AcceptReply{Delivered: n}, err
}

// Release asks the peer to remove its half.
func (p *PeerClient) Release(ctx context.Context, req ReleaseRequest) error {
	_, err := p.call(ctx, &req)
	return err
}

// Reopen asks the client's agent to set a session up again.
func (p *PeerClient) Reopen(ctx context.Context, req ReopenRequest) error {
	_, err := p.call(ctx, &req)
	return err
}

// UnknownKey tells the client's agent that a key of its reaches us with no
// session.
func (p *PeerClient) UnknownKey(ctx context.Context, req UnknownKeyRequest) error {
	_, err := p.call(ctx, &req)
	return err
}

// Close ends the connection; calls in flight fail.
func (p *PeerClient) Close() {
	p.mu.Lock()
	c := p.conn
	p.conn, p.closed = nil, true
	p.mu.Unlock()
	if c != nil {
		c.fail(errors.New("the client was closed"))
	}
}

func unavailable(format string, args ...any) *Error { return Errorf(CodeUnavailable, format, args...) }

// call sends one request and waits for its answer. A request that could
// not be written on a connection that had served before is sent once more
// on a new one: the peer never saw it.
func (p *PeerClient) call(ctx context.Context, req any) (int, error) {
	if _, ok := ctx.Deadline(); !ok && p.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	for attempt := 0; ; attempt++ {
		c, fresh, err := p.connection(ctx)
		if err != nil {
			return 0, err
		}
		sent := time.Now()
		ch, err := c.send(req)
		if err != nil {
			p.drop(c, err)
			if fresh || attempt > 0 {
				return 0, unavailable("peer %s: %v", p.addr, err)
			}
			continue
		}
		select {
		case a := <-ch:
			return a.delivered, a.err
		case <-ctx.Done():
			c.forget(ch)
			if c.silentSince(sent) {
				// Nothing at all came back while this call waited: the
				// peer or the path may be gone without a word (no FIN
				// ever comes), so the next call dials anew instead of
				// waiting on this connection too.
				p.drop(c, errors.New("no answer within a call's deadline"))
			}
			return 0, unavailable("peer %s: %v", p.addr, ctx.Err())
		}
	}
}

// connection is the open connection, dialled if there is none (or the one
// there sat idle too long); fresh says it was just dialled. One dial runs
// at a time; callers meanwhile wait for it, or for their deadline.
func (p *PeerClient) connection(ctx context.Context) (c *peerConn, fresh bool, err error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, unavailable("peer %s: the client was closed", p.addr)
		}
		if c = p.conn; c != nil {
			c.mu.Lock()
			dead, idle := c.err != nil, time.Since(c.used) > peerClientIdle
			c.used = time.Now()
			c.mu.Unlock()
			if !dead && !idle {
				p.mu.Unlock()
				return c, false, nil
			}
			c.fail(errors.New("idle too long"))
			p.conn = nil
		}
		if wait := p.dialing; wait != nil {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, false, unavailable("peer %s: %v", p.addr, ctx.Err())
			}
		}
		done := make(chan struct{})
		p.dialing = done
		p.mu.Unlock()
		c, err = p.dialConn(ctx)
		p.mu.Lock()
		p.dialing = nil
		if err == nil && p.closed {
			c.fail(errors.New("the client was closed"))
			err = unavailable("peer %s: the client was closed", p.addr)
		} else if err == nil {
			p.conn = c
		}
		p.mu.Unlock()
		close(done)
		return c, true, err
	}
}

// dialConn opens a connection and starts its reader.
func (p *PeerClient) dialConn(ctx context.Context) (*peerConn, error) {
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, unavailable("peer %s: %v", p.addr, err)
	}
	resumed := false
	if p.conf != nil {
		tc := tls.Client(nc, p.conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, unavailable("peer %s: TLS handshake: %v", p.addr, err)
		}
		nc, resumed = tc, tc.ConnectionState().DidResume
	}
	c := &peerConn{c: nc, waiting: map[uint32]chan peerAnswer{}, used: time.Now(), resumed: resumed}
	go c.read()
	return c, nil
}

// drop forgets c if it is still the open connection.
func (p *PeerClient) drop(c *peerConn, err error) {
	c.fail(err)
	p.mu.Lock()
	if p.conn == c {
		p.conn = nil
	}
	p.mu.Unlock()
}

// send writes req and returns where its answer will come.
func (c *peerConn) send(req any) (chan peerAnswer, error) {
	ch := make(chan peerAnswer, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	id := c.next
	c.waiting[id] = ch
	c.mu.Unlock()
	b, err := encodeRequest(id, req)
	if err != nil {
		c.forget(ch)
		ch <- peerAnswer{err: err}
		return ch, nil
	}
	c.wmu.Lock()
	_ = c.c.SetWriteDeadline(time.Now().Add(peerWriteWait))
	_, err = c.c.Write(b)
	c.wmu.Unlock()
	if err != nil {
		c.forget(ch)
		return nil, err
	}
	return ch, nil
}

// silentSince reports whether no answer was read on c since t.
func (c *peerConn) silentSince(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heard.Before(t)
}

func (c *peerConn) forget(ch chan peerAnswer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, w := range c.waiting {
		if w == ch {
			delete(c.waiting, id)
			return
		}
	}
}

// read hands each answer to its caller until the connection ends; then
// every caller still waiting hears that it ended.
func (c *peerConn) read() {
	r := bufio.NewReaderSize(c.c, 4<<10)
	for {
		id, op, body, err := readFrame(r, nil)
		if err == nil && op != opAnswer {
			err = fmt.Errorf("%w: the peer sent a request (%d) to a client", errMalformed, op)
		}
		if err != nil {
			c.fail(err)
			return
		}
		delivered, aerr := decodeAnswer(body)
		if aerr != nil && errors.Is(aerr, errMalformed) {
			aerr = Errorf(CodeInternal, "the peer's answer is malformed")
		}
		c.mu.Lock()
		ch := c.waiting[id]
		delete(c.waiting, id)
		c.heard = time.Now()
		c.mu.Unlock()
		if ch != nil {
			ch <- peerAnswer{delivered: delivered, err: aerr}
		}
	}
}

// fail ends the connection once, and every call waiting on it.
func (c *peerConn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	waiting := c.waiting
	c.waiting = nil
	c.mu.Unlock()
	c.c.Close()
	for _, ch := range waiting {
		ch <- peerAnswer{err: unavailable("the connection to the peer ended: %v", err)}
	}
}
