package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"nvi/openflow"
	"nvi/pipeline"
)

// switchConn keeps the OpenFlow connection to our bridge: it dials the
// bridge's controller socket with backoff, brings the pipeline up to date on
// every (re)connect, and hands asynchronous messages to the agent.
type switchConn struct {
	a       *Agent
	mu      sync.Mutex
	conn    *openflow.Conn
	changed chan struct{} // closed and replaced whenever conn changes
}

func newSwitchConn(a *Agent) *switchConn {
	return &switchConn{a: a, changed: make(chan struct{})}
}

func (s *switchConn) set(c *openflow.Conn) {
	s.mu.Lock()
	s.conn = c
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *switchConn) current() (*openflow.Conn, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn, s.changed
}

func (s *switchConn) connected() bool {
	c, _ := s.current()
	return c != nil
}

// waitConnected blocks until the pipeline is installed on the switch.
func (s *switchConn) waitConnected(ctx context.Context) error {
	for {
		c, ch := s.current()
		if c != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("switch never connected: %w", ctx.Err())
		case <-ch:
		}
	}
}

func (s *switchConn) run(ctx context.Context) {
	path := s.a.controllerSocket()
	backoff := 100 * time.Millisecond
	for attempt := 0; ctx.Err() == nil; attempt++ {
		c, err := openflow.Dial(ctx, "unix", path, openflow.WithLogger(s.a.log))
		if err == nil {
			err = s.a.onConnect(ctx, c)
			if err != nil {
				c.Close()
			}
		}
		if err != nil {
			if attempt%20 == 0 {
				s.a.log.Warn("switch not reachable; retrying", "socket", path, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff, attempt = 100*time.Millisecond, -1
		s.set(c)
		s.a.log.Info("switch connected", "bridge", s.a.cfg.Bridge, "dpid", fmt.Sprintf("%016x", c.Features().DatapathID))
		s.serve(ctx, c)
		s.set(nil)
		c.Close()
		if ctx.Err() == nil {
			s.a.log.Warn("switch connection lost; reconnecting", "err", c.Err())
		}
	}
}

// serve dispatches asynchronous messages until the connection ends.
func (s *switchConn) serve(ctx context.Context, c *openflow.Conn) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.Done():
			return
		case m, ok := <-c.Async():
			if !ok {
				return
			}
			switch m := m.(type) {
			case *openflow.PacketIn:
				s.a.handlePacketIn(m)
			case *openflow.ErrorMsg:
				s.a.log.Warn("switch reported an error", "err", m)
			}
		}
	}
}

var errNoSwitch = errors.New("the switch is not connected")

// send writes messages without waiting.
func (s *switchConn) send(msgs ...openflow.Message) error {
	c, _ := s.current()
	if c == nil {
		return errNoSwitch
	}
	for _, m := range msgs {
		if _, err := c.Send(m); err != nil {
			return err
		}
	}
	return nil
}

// apply writes messages and waits for the switch to have processed them
// all: the barrier is what lets the agent say a flow exists.
func (s *switchConn) apply(ctx context.Context, msgs ...openflow.Message) error {
	c, _ := s.current()
	if c == nil {
		return errNoSwitch
	}
	for _, m := range msgs {
		if _, err := c.Send(m); err != nil {
			return err
		}
	}
	return c.Barrier(ctx)
}

// flows reads back flows whose cookie matches under mask.
func (s *switchConn) flows(ctx context.Context, cookie, mask pipeline.Cookie) ([]pipeline.InstalledFlow, error) {
	c, _ := s.current()
	if c == nil {
		return nil, errNoSwitch
	}
	return readFlows(ctx, c, cookie, mask)
}

func readFlows(ctx context.Context, c *openflow.Conn, cookie, mask pipeline.Cookie) ([]pipeline.InstalledFlow, error) {
	stats, err := c.FlowStats(ctx, openflow.FlowStatsRequest{
		TableID: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny,
		Cookie: uint64(cookie), CookieMask: uint64(mask),
	})
	if err != nil {
		return nil, err
	}
	out := make([]pipeline.InstalledFlow, 0, len(stats))
	for _, st := range stats {
		out = append(out, pipeline.InstalledFlow{
			Cookie: pipeline.Cookie(st.Cookie), Table: pipeline.Table(st.TableID),
			Match: st.Match, Instructions: st.Instructions, Packets: st.PacketCount,
		})
	}
	return out, nil
}

// flowMods turns pipeline output into messages.
func flowMods(fms ...*openflow.FlowMod) []openflow.Message {
	out := make([]openflow.Message, len(fms))
	for i, f := range fms {
		out[i] = f
	}
	return out
}

// puntMeterID is the meter every punt to the agent goes through.
const puntMeterID = 1

// onConnect brings a freshly connected switch up to date: the meter, the
// base pipeline, every bound workload, and every session the agent knows —
// re-sent, never flushed, so that traffic on established sessions does not
// notice a reconnect (invariant 5). Session flows the agent does not know
// yet (it has just restarted) are adopted once workloads are bound.
func (a *Agent) onConnect(ctx context.Context, c *openflow.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ports, err := c.PortDescs(ctx)
	if err != nil {
		return fmt.Errorf("port description: %w", err)
	}
	var localMAC []byte
	for _, p := range ports {
		if p.PortNo == openflow.PortLocal {
			localMAC = p.HWAddr
		}
	}
	if len(localMAC) != 6 {
		return errors.New("the bridge has no local port")
	}
	a.mu.Lock()
	a.br.DataIP = a.cfg.DataIP.Addr()
	a.br.DataMAC = append([]byte(nil), localMAC...)
	a.br.Keys = a.cfg.KeyRange
	a.br.PuntMeter = puntMeterID
	a.br.DenyTimeout = uint16(a.cfg.DenyTimeout / time.Second)
	br := a.br
	a.mu.Unlock()
	if err := br.Validate(); err != nil {
		return err
	}

	meter := pipeline.PuntMeter(br, a.cfg.PuntRate, a.cfg.PuntBurst)
	if _, err := c.Send(meter); err != nil {
		return err
	}
	if err := c.Barrier(ctx); err != nil {
		// The meter survives agent restarts; then it is modified instead.
		meter.Command = openflow.MeterModify
		if _, err := c.Send(meter); err != nil {
			return err
		}
		if err := c.Barrier(ctx); err != nil {
			return fmt.Errorf("punt meter: %w", err)
		}
	}
	msgs := flowMods(pipeline.BaseFlows(br)...)
	msgs = append(msgs, a.knownFlows(br)...)
	for _, m := range msgs {
		if _, err := c.Send(m); err != nil {
			return err
		}
	}
	if err := c.Barrier(ctx); err != nil {
		return fmt.Errorf("installing the pipeline: %w", err)
	}
	return nil
}
