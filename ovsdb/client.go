package ovsdb

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// ErrClosed is returned (wrapped) by every call made after Close, and by
	// calls still outstanding when Close was called.
	ErrClosed = errors.New("client closed")
	// ErrDisconnected is wrapped by the error of every outstanding and later
	// call once the connection failed (EOF, garbage from the server, missed
	// keepalive). The Client does not reconnect: callers dial a new one and
	// re-create their monitors, which is what nvid's supervisor loop does.
	ErrDisconnected = errors.New("connection lost")
)

// DefaultKeepalive is how long the connection may stay silent before the
// client sends its own echo; the same time is allowed for the reply.
const DefaultKeepalive = 10 * time.Second

// RPCError is a JSON-RPC error reply (as opposed to a failed operation
// inside a transaction, which is an OpError), e.g. "unknown database".
type RPCError struct {
	Method  string
	Err     string
	Details string
}

func (e *RPCError) Error() string {
	msg := "server error: " + e.Err
	if e.Details != "" {
		msg += ": " + e.Details
	}
	return msg
}

// Option configures a Client.
type Option func(*options)

type options struct {
	logger    *slog.Logger
	keepalive time.Duration
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithKeepalive sets the keepalive interval; 0 or less disables it.
func WithKeepalive(d time.Duration) Option {
	return func(o *options) { o.keepalive = d }
}

// Client is one JSON-RPC session with an OVSDB server. It is safe for
// concurrent use: requests carry increasing integer ids and a single reader
// goroutine matches replies to callers, answers the server's echo requests
// and routes monitor updates.
type Client struct {
	addr string
	conn net.Conn
	log  *slog.Logger

	writeMu sync.Mutex // serializes whole messages on the stream

	mu       sync.Mutex
	nextID   uint64
	pending  map[uint64]*call
	canceled map[uint64]struct{} // ids whose late reply is expected and dropped
	monitors map[string]*Monitor
	nextMon  uint64
	err      error // why the session ended; nil while it is alive

	done     chan struct{}
	replying chan struct{} // semaphore for reply
	lastRecv atomic.Int64  // unix nanoseconds of the last message from the server
}

type call struct {
	method string
	ch     chan reply // buffered: the reader never blocks on it
	// onReply runs on the reader goroutine before ch is signalled, so that a
	// monitor's initial contents are queued ahead of later update notifications.
	onReply func(json.RawMessage) error
}

type reply struct {
	result json.RawMessage
	err    error
}

// Dial connects to addr, "unix:/path" or "tcp:host:port" (the ovs-vsctl
// --db syntax); ctx bounds only the connection attempt.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	network, target, ok := strings.Cut(addr, ":")
	if !ok || target == "" || (network != "unix" && network != "tcp") {
		return nil, fmt.Errorf("ovsdb: dial %q: address must be unix:PATH or tcp:HOST:PORT", addr)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, target)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: dial %s: %w", addr, err)
	}
	return newClient(conn, addr, opts...), nil
}

// NewClient runs the protocol over an already connected conn (a test's
// net.Pipe, a socket from elsewhere). The Client owns conn from now on.
func NewClient(conn net.Conn, opts ...Option) *Client {
	return newClient(conn, conn.RemoteAddr().Network()+":"+conn.RemoteAddr().String(), opts...)
}

func newClient(conn net.Conn, addr string, opts ...Option) *Client {
	o := options{logger: slog.Default(), keepalive: DefaultKeepalive}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{
		addr:     addr,
		conn:     conn,
		log:      o.logger.With("ovsdb", addr),
		pending:  map[uint64]*call{},
		canceled: map[uint64]struct{}{},
		monitors: map[string]*Monitor{},
		done:     make(chan struct{}),
		replying: make(chan struct{}, maxReplying),
	}
	c.lastRecv.Store(time.Now().UnixNano())
	go c.readLoop()
	if o.keepalive > 0 {
		go c.keepaliveLoop(o.keepalive)
	}
	return c
}

// Addr is the address the client was dialed with.
func (c *Client) Addr() string { return c.addr }

// Done is closed when the session ended (Close, or connection failure).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while the session is alive, then why it ended (wrapping
// ErrClosed or ErrDisconnected).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session. Outstanding calls fail with ErrClosed.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// fail ends the session once: it records why, closes the socket, fails every
// outstanding call and stops every monitor.
func (c *Client) fail(why error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = why
	pending := c.pending
	monitors := c.monitors
	c.pending = map[uint64]*call{}
	c.monitors = map[string]*Monitor{}
	c.mu.Unlock()

	_ = c.conn.Close()
	for _, p := range pending {
		p.ch <- reply{err: why}
	}
	for _, m := range monitors {
		m.stop(why)
	}
	close(c.done)
	if !errors.Is(why, ErrClosed) {
		c.log.Warn("ovsdb session ended", "err", why)
	}
}

// Wire shapes. Outbound requests always carry "id" (null for notifications)
// as JSON-RPC 1.0 requires.
type outRequest struct {
	Method string `json:"method"`
	Params []any  `json:"params"`
	ID     any    `json:"id"`
}

type outResponse struct {
	Result any `json:"result"`
	Error  any `json:"error"`
	ID     any `json:"id"`
}

type inMessage struct {
	Method *string         `json:"method"`
	Params json.RawMessage `json:"params"`
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

func (c *Client) readLoop() {
	dec := json.NewDecoder(bufio.NewReader(c.conn))
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			// A syntax error leaves the stream unsynchronized, so any read
			// error ends the session.
			c.fail(fmt.Errorf("%w (%s): %w", ErrDisconnected, c.addr, err))
			return
		}
		c.lastRecv.Store(time.Now().UnixNano())
		c.dispatch(raw)
	}
}

// dispatch handles one complete JSON value from the server. Messages that
// are valid JSON but not valid JSON-RPC are logged and dropped: they do not
// desynchronize the stream, and one bad message should not cost the session.
func (c *Client) dispatch(raw json.RawMessage) {
	var m inMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		c.log.Warn("ovsdb: dropping malformed message", "err", err, "msg", truncate(raw))
		return
	}
	if m.Method != nil {
		c.handleRequest(*m.Method, m.Params, m.ID)
		return
	}
	id, ok := parseID(m.ID)
	if !ok {
		c.log.Warn("ovsdb: dropping reply with unexpected id", "msg", truncate(raw))
		return
	}
	c.mu.Lock()
	p, found := c.pending[id]
	delete(c.pending, id)
	_, wasCanceled := c.canceled[id]
	delete(c.canceled, id)
	c.mu.Unlock()
	if !found {
		if !wasCanceled {
			c.log.Warn("ovsdb: dropping reply for unknown request id", "id", id)
		}
		return
	}
	var r reply
	switch {
	case len(m.Error) > 0 && !isJSONNull(m.Error):
		r.err = parseRPCError(p.method, m.Error)
	case len(m.Result) == 0:
		r.err = errors.New("malformed reply: no result and no error")
	default:
		r.result = m.Result
		if p.onReply != nil {
			r.err = p.onReply(m.Result)
		}
	}
	p.ch <- r
}

func parseID(raw json.RawMessage) (uint64, bool) {
	id, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	return id, err == nil
}

func parseRPCError(method string, raw json.RawMessage) *RPCError {
	e := &RPCError{Method: method}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		e.Err = s
		return e
	}
	var obj struct {
		Error   *string         `json:"error"`
		Details json.RawMessage `json:"details"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Error != nil {
		e.Err, e.Details = *obj.Error, detailsString(obj.Details)
		return e
	}
	e.Err = string(truncate(raw))
	return e
}

// handleRequest answers requests from the server (echo) and routes
// notifications (update).
func (c *Client) handleRequest(method string, params, id json.RawMessage) {
	isNotification := len(id) == 0 || isJSONNull(id)
	switch {
	case method == "echo" && !isNotification:
		// Reply with the same params; the server's inactivity probe needs it.
		var p []any
		if err := json.Unmarshal(params, &p); err != nil || p == nil {
			p = []any{}
		}
		c.reply(outResponse{Result: p, ID: id})
	case method == "update" && isNotification:
		c.routeUpdate(params)
	case !isNotification:
		c.log.Warn("ovsdb: server sent unsupported request", "method", method)
		c.reply(outResponse{Error: "unknown method", ID: id})
	default:
		c.log.Debug("ovsdb: ignoring notification", "method", method)
	}
}

// maxReplying bounds the answers to server requests being written at once.
const maxReplying = 16

// reply answers a server request without blocking the reader: the write
// happens on its own goroutine, because a caller's write may hold the
// stream while the server waits for us to read. A server flooding us with
// requests beyond maxReplying gets no answer to the excess.
func (c *Client) reply(msg outResponse) {
	select {
	case c.replying <- struct{}{}:
	default:
		c.log.Warn("ovsdb: too many unanswered server requests; dropping one")
		return
	}
	go func() {
		defer func() { <-c.replying }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.send(ctx, msg); err != nil {
			c.log.Debug("ovsdb: could not answer server request", "err", err)
		}
	}()
}

func truncate(b []byte) []byte {
	const max = 256
	if len(b) > max {
		return append(b[:max:max], "..."...)
	}
	return b
}

// send writes one message. Whole messages are serialized by writeMu; ctx
// aborts a write blocked on a peer that stopped reading. A write that fails
// after some bytes went out ends the session, because the stream would
// otherwise carry half a message.
func (c *Client) send(ctx context.Context, msg any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.Err(); err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	_ = c.conn.SetWriteDeadline(deadline)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, werr := c.conn.Write(b)
	if !stop() {
		<-fired // let the callback finish before the next writer resets the deadline
	}
	if werr == nil {
		return nil
	}
	if n == 0 && (ctx.Err() != nil || errors.Is(werr, os.ErrDeadlineExceeded)) {
		// Nothing written, so the stream is intact: only this call fails.
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return context.DeadlineExceeded
	}
	if ctx.Err() != nil {
		werr = fmt.Errorf("%w (%s): write abandoned after %d bytes: %w", ErrDisconnected, c.addr, n, ctx.Err())
	} else {
		werr = fmt.Errorf("%w (%s): write: %w", ErrDisconnected, c.addr, werr)
	}
	c.fail(werr) // takes c.mu, never writeMu
	return werr
}

// Call sends a request and waits for its reply; it is the building block for
// methods this package does not wrap (lock, steal, unlock...). params must
// be a JSON array per RFC 7047. If ctx ends first, Call returns its error at
// once; for transact it also sends the RFC's "cancel" so the server drops a
// transaction blocked in a wait.
func (c *Client) Call(ctx context.Context, method string, params ...any) (json.RawMessage, error) {
	res, err := c.call(ctx, method, params, nil)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: %s: %w", method, err)
	}
	return res, nil
}

func (c *Client) call(ctx context.Context, method string, params []any, onReply func(json.RawMessage) error) (json.RawMessage, error) {
	if params == nil {
		params = []any{}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &call{method: method, ch: make(chan reply, 1), onReply: onReply}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = p
	c.mu.Unlock()

	if err := c.send(ctx, outRequest{Method: method, Params: params, ID: id}); err != nil {
		c.mu.Lock()
		_, still := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if !still {
			// fail() or a (bogus) reply already answered it; drain so the
			// buffered channel is not left holding a value.
			<-p.ch
		}
		return nil, err
	}

	select {
	case r := <-p.ch:
		return r.result, r.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	_, still := c.pending[id]
	delete(c.pending, id)
	if still {
		if len(c.canceled) > 1024 { // bound it if a server never answers
			clear(c.canceled)
		}
		c.canceled[id] = struct{}{}
	}
	c.mu.Unlock()
	if !still {
		r := <-p.ch // the reply won the race; it is already in the channel
		return r.result, r.err
	}
	if method == "transact" {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.send(cctx, outRequest{Method: "cancel", Params: []any{id}, ID: nil})
		cancel()
	}
	return nil, ctx.Err()
}

// ListDBs returns the names of the databases the server holds.
func (c *Client) ListDBs(ctx context.Context) ([]string, error) {
	res, err := c.call(ctx, "list_dbs", nil, nil)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: list_dbs: %w", err)
	}
	var dbs []string
	if err := json.Unmarshal(res, &dbs); err != nil {
		return nil, fmt.Errorf("ovsdb: list_dbs: malformed result: %w", err)
	}
	return dbs, nil
}

// Schema is the part of a database schema clients usually need; column
// types are kept as raw JSON.
type Schema struct {
	Name    string                 `json:"name"`
	Version string                 `json:"version"`
	Cksum   string                 `json:"cksum"`
	Tables  map[string]TableSchema `json:"tables"`
}

// TableSchema describes one table.
type TableSchema struct {
	Columns map[string]ColumnSchema `json:"columns"`
	IsRoot  bool                    `json:"isRoot"`
	MaxRows int                     `json:"maxRows"`
	Indexes [][]string              `json:"indexes"`
}

// ColumnSchema describes one column.
type ColumnSchema struct {
	Type      json.RawMessage `json:"type"`
	Ephemeral bool            `json:"ephemeral"`
	Mutable   *bool           `json:"mutable"` // nil means true
}

// GetSchema fetches the schema of db.
func (c *Client) GetSchema(ctx context.Context, db string) (*Schema, error) {
	res, err := c.call(ctx, "get_schema", []any{db}, nil)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: get_schema %s: %w", db, err)
	}
	var s Schema
	if err := json.Unmarshal(res, &s); err != nil {
		return nil, fmt.Errorf("ovsdb: get_schema %s: malformed schema: %w", db, err)
	}
	return &s, nil
}

// Echo round-trips an echo request: a liveness check.
func (c *Client) Echo(ctx context.Context) error {
	if _, err := c.call(ctx, "echo", []any{"nvi"}, nil); err != nil {
		return fmt.Errorf("ovsdb: echo: %w", err)
	}
	return nil
}

// Transact runs ops atomically on db. It returns the per-operation results;
// if an operation failed (or the commit did), the error is an *OpError naming
// it, and the results of the operations before it are still returned.
func (c *Client) Transact(ctx context.Context, db string, ops ...Operation) ([]OpResult, error) {
	res, err := c.transact(ctx, db, ops...)
	if err != nil {
		return res, fmt.Errorf("ovsdb: transact %s: %w", db, err)
	}
	return res, nil
}

func (c *Client) transact(ctx context.Context, db string, ops ...Operation) ([]OpResult, error) {
	params := make([]any, 0, len(ops)+1)
	params = append(params, db)
	for _, op := range ops {
		params = append(params, op)
	}
	// Encode up front so that a bad Go value is reported against its op.
	for i, op := range ops {
		if _, err := json.Marshal(op); err != nil {
			return nil, fmt.Errorf("operation %d (%s): %w", i, op.describe(), err)
		}
	}
	res, err := c.call(ctx, "transact", params, nil)
	if err != nil {
		return nil, err
	}
	return parseTransactResult(res, ops)
}

// keepaliveLoop sends an echo whenever the server has been silent for a
// whole interval, and ends the session if that echo is not answered within
// another interval: a hung ovsdb-server must not leave nvid waiting forever.
func (c *Client) keepaliveLoop(interval time.Duration) {
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		idle := time.Since(time.Unix(0, c.lastRecv.Load()))
		if idle < interval {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), interval)
		_, err := c.call(ctx, "echo", []any{"nvi-keepalive"}, nil)
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			c.fail(fmt.Errorf("%w (%s): no reply to keepalive echo within %v", ErrDisconnected, c.addr, interval))
			return
		}
	}
}
