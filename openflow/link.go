package openflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// LinkConfig configures a Link.
type LinkConfig struct {
	// Network and Addr name the switch's controller socket, e.g. "unix",
	// "/var/run/openvswitch/br0.nvid".
	Network, Addr string
	// Options are passed to every Dial.
	Options []Option
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between failed attempts
	// (defaults 100ms and 2s); the wait doubles after each failure.
	MinBackoff, MaxBackoff time.Duration
	// OnConnect runs on every new connection before it is published by
	// Conn: the place to (re)install or re-adopt the switch's state. An
	// error closes the connection and counts as a failed attempt.
	OnConnect func(ctx context.Context, c *Conn) error
	// OnDisconnect, if set, is told why a published connection ended.
	OnDisconnect func(err error)
}

// Link keeps one connection to a switch alive: it dials with capped
// exponential backoff, runs OnConnect, publishes the connection, and starts
// over when the connection ends (switch restart, garbage on the socket,
// echo timeout).
type Link struct {
	cfg LinkConfig
	log *slog.Logger

	mu      sync.Mutex
	conn    *Conn
	changed chan struct{} // closed and replaced whenever conn changes
}

// NewLink returns a link; call Run to start it.
func NewLink(cfg LinkConfig) *Link {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(2*time.Second, cfg.MinBackoff)
	}
	return &Link{cfg: cfg, log: cfg.Logger.With("switch", cfg.Addr), changed: make(chan struct{})}
}

// Conn returns the current connection, or nil while disconnected. A
// returned Conn may fail at any time; check its Done.
func (s *Link) Conn() *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// Wait returns the current connection, waiting for one if needed.
func (s *Link) Wait(ctx context.Context) (*Conn, error) {
	for {
		s.mu.Lock()
		c, ch := s.conn, s.changed
		s.mu.Unlock()
		if c != nil && c.Err() == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("openflow: waiting for switch %s: %w", s.cfg.Addr, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Link) set(c *Conn) {
	s.mu.Lock()
	s.conn = c
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Run keeps the link connected until ctx ends, then closes the
// connection and returns ctx's error.
func (s *Link) Run(ctx context.Context) error {
	backoff := s.cfg.MinBackoff
	failures := 0
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		started := time.Now()
		c, err := s.connect(ctx)
		if err != nil {
			failures++
			// Log the first failure and then every 20th, so a switch
			// that is down for long does not flood the log.
			if failures == 1 || failures%20 == 0 {
				s.log.Warn("switch not reachable; retrying", "err", err, "attempts", failures, "backoff", backoff)
			}
			if !sleep(ctx, backoff) {
				return ctx.Err()
			}
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			continue
		}
		failures = 0
		s.set(c)
		s.log.Info("switch connected", "dpid", fmt.Sprintf("%016x", c.Features().DatapathID))
		select {
		case <-ctx.Done():
			s.set(nil)
			c.Close()
			return ctx.Err()
		case <-c.Done():
		}
		s.set(nil)
		err = c.Err()
		c.Close()
		s.log.Warn("switch connection lost; reconnecting", "err", err)
		if s.cfg.OnDisconnect != nil {
			s.cfg.OnDisconnect(err)
		}
		// A connection that dies at once (a switch rejecting us, a
		// peer sending garbage) must not become a tight loop.
		if time.Since(started) < s.cfg.MaxBackoff {
			if !sleep(ctx, backoff) {
				return ctx.Err()
			}
			backoff = min(backoff*2, s.cfg.MaxBackoff)
		} else {
			backoff = s.cfg.MinBackoff
		}
	}
}

func (s *Link) connect(ctx context.Context) (*Conn, error) {
	opts := append([]Option{WithLogger(s.cfg.Logger)}, s.cfg.Options...)
	c, err := Dial(ctx, s.cfg.Network, s.cfg.Addr, opts...)
	if err != nil {
		return nil, err
	}
	if s.cfg.OnConnect != nil {
		if err := s.cfg.OnConnect(ctx, c); err != nil {
			c.Close()
			return nil, fmt.Errorf("on connect: %w", err)
		}
	}
	if err := c.Err(); err != nil {
		return nil, err
	}
	return c, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// IsSwitchError reports whether err carries an error message from the
// switch (as opposed to a connection or codec failure) and returns it.
func IsSwitchError(err error) (*ErrorMsg, bool) {
	var em *ErrorMsg
	if errors.As(err, &em) {
		return em, true
	}
	return nil, false
}
