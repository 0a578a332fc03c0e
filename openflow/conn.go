package openflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Connection errors.
var (
	// ErrClosed is Err() after Close.
	ErrClosed = errors.New("openflow: connection closed")
	// ErrEchoTimeout means the switch stopped answering echo requests.
	ErrEchoTimeout = errors.New("openflow: switch did not answer echo requests")
	// ErrVersion means the switch does not speak OpenFlow 1.3.
	ErrVersion = errors.New("openflow: switch does not support OpenFlow 1.3")
)

// Option configures a Conn.
type Option func(*config)

type config struct {
	logger           *slog.Logger
	echoInterval     time.Duration
	echoTimeout      time.Duration
	handshakeTimeout time.Duration
	writeTimeout     time.Duration
	asyncBuffer      int
	onError          func(*ErrorMsg)
}

func defaults() config {
	return config{
		logger:           slog.Default(),
		echoInterval:     5 * time.Second,
		handshakeTimeout: 10 * time.Second,
		writeTimeout:     10 * time.Second,
		asyncBuffer:      1024,
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithEchoInterval sets how often an echo request probes the switch
// (default 5s; 0 disables probing).
func WithEchoInterval(d time.Duration) Option { return func(c *config) { c.echoInterval = d } }

// WithEchoTimeout sets how long an echo may stay unanswered before the
// connection is closed (default: twice the interval).
func WithEchoTimeout(d time.Duration) Option { return func(c *config) { c.echoTimeout = d } }

// WithHandshakeTimeout bounds the hello and features exchange (default 10s).
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *config) { c.handshakeTimeout = d }
}

// WithWriteTimeout bounds each write, so a switch that stops reading cannot
// block senders forever (default 10s).
func WithWriteTimeout(d time.Duration) Option { return func(c *config) { c.writeTimeout = d } }

// WithAsyncBuffer sets the capacity of the Async channel (default 1024).
// When it is full, further asynchronous messages are dropped and counted,
// so that a slow consumer never stalls replies to requests.
func WithAsyncBuffer(n int) Option { return func(c *config) { c.asyncBuffer = n } }

// WithErrorHandler is called (on the reader goroutine; keep it short and do
// not call Close from it) for every error the switch reports about a
// fire-and-forget message.
func WithErrorHandler(f func(*ErrorMsg)) Option { return func(c *config) { c.onError = f } }

// waiter receives the replies to one request.
type waiter struct {
	ch   chan Message
	gone chan struct{} // closed when the requester stops listening
}

// Conn is the controller side of one OpenFlow 1.3 connection to a switch.
// It is safe for concurrent use: writes are serialized, a reader goroutine
// dispatches replies to their requests by xid and everything else to Async.
type Conn struct {
	nc       net.Conn
	cfg      config
	log      *slog.Logger
	features FeaturesReply

	xid atomic.Uint32
	wmu sync.Mutex // serializes writes

	mu       sync.Mutex
	pending  map[uint32]*waiter
	errs     []*ErrorMsg // errors for fire-and-forget messages since the last barrier reply
	echoXid  uint32      // outstanding echo request, 0 if none
	echoSent time.Time

	async   chan Message
	dropped atomic.Uint64

	done      chan struct{}
	closeOnce sync.Once
	err       error // set before done is closed
	wg        sync.WaitGroup
}

// Dial connects to a switch (for NVI: the bridge's passive punix:
// controller socket), negotiates OpenFlow 1.3 and reads its features.
func Dial(ctx context.Context, network, addr string, opts ...Option) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("openflow: dial %s %s: %w", network, addr, err)
	}
	c, err := newConn(ctx, nc, opts...)
	if err != nil {
		return nil, fmt.Errorf("openflow: %s %s: %w", network, addr, err)
	}
	return c, nil
}

// NewConn runs the handshake over an established connection (tests use
// net.Pipe) and starts serving it. On error nc is closed.
func NewConn(nc net.Conn, logger *slog.Logger, opts ...Option) (*Conn, error) {
	return newConn(context.Background(), nc, append([]Option{WithLogger(logger)}, opts...)...)
}

func newConn(ctx context.Context, nc net.Conn, opts ...Option) (*Conn, error) {
	cfg := defaults()
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.echoTimeout <= 0 {
		cfg.echoTimeout = 2 * cfg.echoInterval
	}
	if cfg.asyncBuffer < 0 {
		cfg.asyncBuffer = 0
	}
	c := &Conn{
		nc:      nc,
		cfg:     cfg,
		log:     cfg.logger.With("switch", nc.RemoteAddr().String()),
		pending: map[uint32]*waiter{},
		async:   make(chan Message, cfg.asyncBuffer),
		done:    make(chan struct{}),
	}
	if err := c.handshake(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	c.log = c.log.With("dpid", fmt.Sprintf("%016x", c.features.DatapathID))
	c.wg.Add(1)
	go c.readLoop()
	if cfg.echoInterval > 0 {
		c.wg.Add(1)
		go c.echoLoop()
	}
	return c, nil
}

// nextXid allocates a transaction ID: increasing, never 0.
func (c *Conn) nextXid() uint32 {
	for {
		if x := c.xid.Add(1); x != 0 {
			return x
		}
	}
}

// handshake exchanges hellos and reads the features reply, synchronously,
// under a deadline.
func (c *Conn) handshake(ctx context.Context) error {
	deadline := time.Now().Add(c.cfg.handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := c.write(Hello{Versions: []uint8{Version}}, c.nextXid()); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	b, err := ReadMessage(c.nc)
	if err != nil {
		return fmt.Errorf("read hello: %w", c.ctxErr(ctx, err))
	}
	h, _ := ParseHeader(b)
	m, _, err := Unmarshal(b)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	hello, ok := m.(*Hello)
	if !ok {
		return fmt.Errorf("%w: expected HELLO first, got %s", ErrMalformed, h.Type)
	}
	// With a version bitmap, 1.3 must be in it; without, the peer's
	// header version is its highest and must be at least 1.3.
	if (hello.Versions != nil && !hello.Supports(Version)) || (hello.Versions == nil && h.Version < Version) {
		em := ErrorMsg{ErrType: ErrTypeHelloFailed, Code: HelloFailedIncompatible, Data: []byte("OpenFlow 1.3 required")}
		_ = c.write(em, h.Xid)
		offered := "none"
		if hello.Versions != nil {
			offered = fmt.Sprint(hello.Versions)
		}
		return fmt.Errorf("%w (peer hello version %#x, version bitmap %s)", ErrVersion, h.Version, offered)
	}

	fx := c.nextXid()
	if err := c.write(FeaturesRequest{}, fx); err != nil {
		return fmt.Errorf("send features request: %w", err)
	}
	for {
		b, err := ReadMessage(c.nc)
		if err != nil {
			return fmt.Errorf("read features reply: %w", c.ctxErr(ctx, err))
		}
		m, xid, err := Unmarshal(b)
		if err != nil {
			return fmt.Errorf("read features reply: %w", err)
		}
		switch m := m.(type) {
		case *FeaturesReply:
			if xid == fx {
				c.features = *m
				return c.nc.SetDeadline(time.Time{})
			}
		case *EchoRequest:
			if err := c.write(EchoReply(*m), xid); err != nil {
				return err
			}
		case *ErrorMsg:
			if xid == fx {
				return fmt.Errorf("features request: %w", m)
			}
		}
		// Anything else before the features reply (an early port
		// status, say) is of no use yet; ignore it.
	}
}

func (c *Conn) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// write encodes and sends one message under the write lock.
func (c *Conn) write(m Message, xid uint32) error {
	b, err := Marshal(m, xid)
	if err != nil {
		return err
	}
	return c.writeBytes(b)
}

// writeBytes sends encoded messages in one write, so that the switch reads
// them together: Open vSwitch runs a whole main-loop iteration between
// reads, and a flow-mod and its barrier in separate writes can pay for two.
func (c *Conn) writeBytes(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.cfg.writeTimeout > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.writeTimeout))
	}
	_, err := c.nc.Write(b)
	return err
}

// Features returns the switch's features reply from the handshake.
func (c *Conn) Features() FeaturesReply { return c.features }

// Done is closed when the connection has ended; Err says why.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while it is up).
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Async delivers what the switch sends unasked: *PacketIn, *FlowRemoved,
// *PortStatus, and *ErrorMsg for fire-and-forget messages. It is closed
// when the connection ends.
func (c *Conn) Async() <-chan Message { return c.async }

// Dropped counts asynchronous messages dropped because Async was full.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

// Close ends the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.wg.Wait()
	return nil
}

// fail ends the connection with err (the first reason wins).
func (c *Conn) fail(err error) {
	c.closeOnce.Do(func() {
		c.err = err
		if !errors.Is(err, ErrClosed) {
			c.log.Error("openflow connection failed", "err", err)
		}
		_ = c.nc.Close()
		close(c.done)
	})
}

// Send writes a message without waiting for any answer and returns its
// xid. Errors the switch reports for it come back from the next Barrier
// (and through Async and the error handler).
func (c *Conn) Send(m Message) (uint32, error) {
	if err := c.Err(); err != nil {
		return 0, err
	}
	xid := c.nextXid()
	if err := c.write(m, xid); err != nil {
		if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLong) {
			c.fail(fmt.Errorf("openflow: write: %w", err))
		}
		return 0, err
	}
	return xid, nil
}

// register sets up a waiter for xid before the request is written.
func (c *Conn) register(xid uint32) *waiter {
	w := &waiter{ch: make(chan Message, 16), gone: make(chan struct{})}
	c.mu.Lock()
	c.pending[xid] = w
	c.mu.Unlock()
	return w
}

func (c *Conn) unregister(xid uint32, w *waiter) {
	c.mu.Lock()
	if c.pending[xid] == w {
		delete(c.pending, xid)
	}
	c.mu.Unlock()
	close(w.gone)
}

// roundTrip sends m and calls each reply (same xid) until more returns
// false. An *ErrorMsg reply ends the exchange as the error.
func (c *Conn) roundTrip(ctx context.Context, m Message, more func(Message) (bool, error)) error {
	return c.roundTripAfter(ctx, nil, m, more)
}

// roundTripAfter is roundTrip with the messages before sent ahead of m in
// the same write, unanswered.
func (c *Conn) roundTripAfter(ctx context.Context, before []Message, m Message, more func(Message) (bool, error)) error {
	wait, err := c.sendAfter(before, m, more)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// sendAfter writes the messages before and m in one write and returns a
// function that waits for m's replies, calling more for each until it
// returns false. The waiter is registered before the write, so no reply
// is missed however late wait is called; wait must be called once.
func (c *Conn) sendAfter(before []Message, m Message, more func(Message) (bool, error)) (wait func(context.Context) error, err error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	var b []byte
	for _, pm := range before {
		if b, err = AppendMarshal(b, pm, c.nextXid()); err != nil {
			return nil, err
		}
	}
	xid := c.nextXid()
	if b, err = AppendMarshal(b, m, xid); err != nil {
		return nil, err
	}
	w := c.register(xid)
	if err := c.writeBytes(b); err != nil {
		c.unregister(xid, w)
		if !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLong) {
			c.fail(fmt.Errorf("openflow: write: %w", err))
		}
		return nil, err
	}
	return func(ctx context.Context) error {
		defer c.unregister(xid, w)
		for {
			select {
			case r := <-w.ch:
				switch r := r.(type) {
				case *ErrorMsg:
					return r
				case *decodeFailure:
					return r.err
				}
				cont, err := more(r)
				if err != nil || !cont {
					return err
				}
			case <-ctx.Done():
				return fmt.Errorf("openflow: waiting for reply to %s xid=%d: %w", m.Type(), xid, ctx.Err())
			case <-c.done:
				return fmt.Errorf("openflow: waiting for reply to %s xid=%d: %w", m.Type(), xid, c.err)
			}
		}
	}, nil
}

// Request sends m and waits for the reply with the same xid. An error
// reply is returned as a *ErrorMsg error. For multipart requests use
// Multipart, which also collects the later parts.
func (c *Conn) Request(ctx context.Context, m Message) (Message, error) {
	var reply Message
	err := c.roundTrip(ctx, m, func(r Message) (bool, error) {
		reply = r
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	if br, ok := reply.(*barrierResult); ok {
		return &br.BarrierReply, barrierErr(br.errs)
	}
	return reply, nil
}

// Multipart sends a multipart request and returns every part of the reply
// (the switch splits long replies, flagging all but the last with
// MultipartMore).
func (c *Conn) Multipart(ctx context.Context, req *MultipartRequest) ([]*MultipartReply, error) {
	var parts []*MultipartReply
	err := c.roundTrip(ctx, req, func(r Message) (bool, error) {
		mp, ok := r.(*MultipartReply)
		if !ok {
			return false, fmt.Errorf("%w: multipart request answered with %s", ErrMalformed, r.Type())
		}
		parts = append(parts, mp)
		return mp.Flags&MultipartMore != 0, nil
	})
	if err != nil {
		return nil, err
	}
	return parts, nil
}

// collect runs a multipart request and concatenates the typed bodies.
func collect[T any](ctx context.Context, c *Conn, body MultipartBody) ([]T, error) {
	parts, err := c.Multipart(ctx, &MultipartRequest{Body: body})
	if err != nil {
		return nil, err
	}
	var out []T
	for _, p := range parts {
		if p.Body == nil {
			continue
		}
		items, ok := any(p.Body).(interface{ items() []T })
		if !ok {
			return nil, fmt.Errorf("%w: multipart reply body %T for request %T", ErrMalformed, p.Body, body)
		}
		out = append(out, items.items()...)
	}
	return out, nil
}

func (s FlowStatsReply) items() []FlowStats { return s }
func (s PortDescReply) items() []Port       { return s }
func (s TableStatsReply) items() []TableStats {
	return s
}
func (s PortStatsReply) items() []PortStats     { return s }
func (s MeterConfigReply) items() []MeterConfig { return s }
func (s MeterStatsReply) items() []MeterStats   { return s }
func (s GroupDescReply) items() []GroupDesc     { return s }

// FlowStats reads the flows selected by req (see NewFlowStatsRequest).
func (c *Conn) FlowStats(ctx context.Context, req FlowStatsRequest) ([]FlowStats, error) {
	return collect[FlowStats](ctx, c, req)
}

// PortDescs reads every port's description.
func (c *Conn) PortDescs(ctx context.Context) ([]Port, error) {
	return collect[Port](ctx, c, PortDescRequest{})
}

// TableStats reads the per-table counters.
func (c *Conn) TableStats(ctx context.Context) ([]TableStats, error) {
	return collect[TableStats](ctx, c, TableStatsRequest{})
}

// MeterConfigs reads a meter's configuration (MeterAll: every meter).
func (c *Conn) MeterConfigs(ctx context.Context, meterID uint32) ([]MeterConfig, error) {
	return collect[MeterConfig](ctx, c, MeterConfigRequest{MeterID: meterID})
}

// Barrier waits until the switch has processed everything sent before it.
// It returns the first error the switch reported for any fire-and-forget
// message since the previous barrier reply (those errors arrive before the
// barrier reply, as a switch answers in order). With concurrent barriers,
// an error is reported to whichever barrier reply comes first.
func (c *Conn) Barrier(ctx context.Context) error { return c.Apply(ctx) }

// Apply sends msgs and a barrier in one write and waits for the barrier's
// reply: when it returns nil, the switch has processed every message. Like
// Barrier, it reports the errors the switch sent since the previous
// barrier reply.
func (c *Conn) Apply(ctx context.Context, msgs ...Message) error {
	wait, err := c.Start(msgs...)
	if err != nil {
		return err
	}
	return wait(ctx)
}

// Start is Apply in two parts: it sends msgs and the barrier, and the
// function it returns waits for the barrier's reply (call it once). The
// caller may do something else in between, knowing the switch has the
// messages on their way.
func (c *Conn) Start(msgs ...Message) (wait func(context.Context) error, err error) {
	var errs []*ErrorMsg
	waitReply, err := c.sendAfter(msgs, BarrierRequest{}, func(r Message) (bool, error) {
		if br, ok := r.(*barrierResult); ok {
			errs = br.errs
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		if err := waitReply(ctx); err != nil {
			return err
		}
		return barrierErr(errs)
	}, nil
}

// barrierErr reports the first error of a barrier interval (an *ErrorMsg,
// for errors.As), mentioning how many followed.
func barrierErr(errs []*ErrorMsg) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return fmt.Errorf("%w (and %d more errors since the last barrier)", errs[0], len(errs)-1)
}

// barrierResult is what the reader hands a Barrier: the reply plus the
// errors collected since the previous one.
type barrierResult struct {
	BarrierReply
	errs []*ErrorMsg
}

// readLoop reads and dispatches until the connection fails.
func (c *Conn) readLoop() {
	defer c.wg.Done()
	defer close(c.async)
	for {
		b, err := ReadMessage(c.nc)
		if err != nil {
			select {
			case <-c.done:
			default:
				c.fail(fmt.Errorf("openflow: read: %w", err))
			}
			return
		}
		m, xid, err := Unmarshal(b)
		if err != nil {
			if errors.Is(err, ErrUnsupported) {
				// Well-formed but unknown to us: a request waiting for
				// it learns why; otherwise note and carry on.
				c.log.Warn("ignoring message the codec does not support", "xid", xid, "err", err)
				c.deliverErr(xid, err)
				continue
			}
			// Garbage, a wrong version, a broken body: this peer
			// cannot be trusted to frame the next message correctly.
			c.fail(fmt.Errorf("openflow: bad message from switch: %w", err))
			return
		}
		c.dispatch(m, xid)
	}
}

func (c *Conn) dispatch(m Message, xid uint32) {
	switch m := m.(type) {
	case *EchoRequest:
		if err := c.write(EchoReply(*m), xid); err != nil {
			c.fail(fmt.Errorf("openflow: write echo reply: %w", err))
		}
		return
	case *EchoReply:
		c.mu.Lock()
		if xid == c.echoXid {
			c.echoXid = 0
		}
		c.mu.Unlock()
		return
	case *Hello:
		return
	case *PacketIn, *FlowRemoved, *PortStatus:
		c.toAsync(m)
		return
	case *BarrierReply:
		c.mu.Lock()
		errs := c.errs
		c.errs = nil
		c.mu.Unlock()
		if !c.deliver(xid, &barrierResult{errs: errs}) {
			c.log.Debug("barrier reply nobody waits for", "xid", xid)
		}
		return
	case *ErrorMsg:
		if c.deliver(xid, m) {
			return
		}
		// An error for a fire-and-forget message: keep it for the next
		// barrier, and tell the handler, the log and Async.
		c.mu.Lock()
		c.errs = append(c.errs, m)
		c.mu.Unlock()
		c.log.Warn("switch reported an error", "xid", xid, "err", m)
		if c.cfg.onError != nil {
			c.cfg.onError(m)
		}
		c.toAsync(m)
		return
	}
	if !c.deliver(xid, m) {
		c.log.Debug("unsolicited message", "type", m.Type(), "xid", xid)
	}
}

// deliver hands m to the request waiting for xid, if any.
func (c *Conn) deliver(xid uint32, m Message) bool {
	c.mu.Lock()
	w := c.pending[xid]
	c.mu.Unlock()
	if w == nil {
		return false
	}
	select {
	case w.ch <- m:
	case <-w.gone:
	case <-c.done:
	}
	return true
}

// deliverErr fails the request waiting for xid with err.
func (c *Conn) deliverErr(xid uint32, err error) {
	c.deliver(xid, &decodeFailure{err: err})
}

// decodeFailure carries a decoding error to a waiting request.
type decodeFailure struct {
	BarrierReply
	err error
}

func (c *Conn) toAsync(m Message) {
	select {
	case c.async <- m:
	default:
		if n := c.dropped.Add(1); n&(n-1) == 0 { // log at 1, 2, 4, 8, ...
			c.log.Warn("async channel full; dropping messages", "type", m.Type(), "dropped", n)
		}
	}
}

// echoLoop probes the switch and fails the connection when it stops
// answering.
func (c *Conn) echoLoop() {
	defer c.wg.Done()
	tick := min(c.cfg.echoInterval, c.cfg.echoTimeout) / 4
	if tick < time.Millisecond {
		tick = time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastSent time.Time
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			c.mu.Lock()
			outstanding, sentAt := c.echoXid, c.echoSent
			c.mu.Unlock()
			if outstanding != 0 {
				if now.Sub(sentAt) > c.cfg.echoTimeout {
					c.fail(fmt.Errorf("%w within %v", ErrEchoTimeout, c.cfg.echoTimeout))
					return
				}
				continue
			}
			if now.Sub(lastSent) < c.cfg.echoInterval {
				continue
			}
			xid := c.nextXid()
			c.mu.Lock()
			c.echoXid, c.echoSent = xid, now
			c.mu.Unlock()
			lastSent = now
			if err := c.write(EchoRequest{}, xid); err != nil {
				c.fail(fmt.Errorf("openflow: write echo request: %w", err))
				return
			}
		}
	}
}
