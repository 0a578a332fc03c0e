package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"nvi/openflow"
	"nvi/pipeline"
)

// switchConn is the agent's side of the OpenFlow connection to its bridge:
// an openflow.Link keeps it alive and, on every (re)connect, runs
// onConnect to bring the pipeline up to date; switchConn hands the
// switch's asynchronous messages to the agent.
type switchConn struct {
	a    *Agent
	link *openflow.Link
}

func newSwitchConn(a *Agent) *switchConn {
	s := &switchConn{a: a}
	s.link = openflow.NewLink(openflow.LinkConfig{
		Network: "unix", Addr: a.controllerSocket(), Logger: a.log,
		OnConnect: a.onConnect,
	})
	return s
}

func (s *switchConn) current() *openflow.Conn { return s.link.Conn() }

func (s *switchConn) connected() bool { return s.current() != nil }

// waitConnected blocks until the pipeline is installed on the switch.
func (s *switchConn) waitConnected(ctx context.Context) error {
	_, err := s.link.Wait(ctx)
	return err
}

// run keeps the connection and serves each one's messages until ctx ends.
func (s *switchConn) run(ctx context.Context) {
	go func() { _ = s.link.Run(ctx) }()
	for {
		c, err := s.link.Wait(ctx)
		if err != nil {
			return
		}
		s.serve(ctx, c)
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
		case m := <-c.Async():
			// Errors the switch reports are logged by the connection.
			if pi, ok := m.(*openflow.PacketIn); ok {
				s.a.handlePacketIn(pi)
			}
		}
	}
}

var errNoSwitch = errors.New("the switch is not connected")

// send writes messages without waiting.
func (s *switchConn) send(msgs ...openflow.Message) error {
	c := s.current()
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
	return s.start(msgs...)(ctx)
}

// start is apply in two parts: it writes the messages and a barrier at
// once, and the function it returns waits for the switch to have
// processed them.
func (s *switchConn) start(msgs ...openflow.Message) (wait func(context.Context) error) {
	c := s.current()
	if c == nil {
		return func(context.Context) error { return errNoSwitch }
	}
	w, err := c.Start(msgs...)
	if err != nil {
		return func(context.Context) error { return err }
	}
	return w
}

// flows reads back flows whose cookie matches under mask.
func (s *switchConn) flows(ctx context.Context, cookie, mask pipeline.Cookie) ([]pipeline.InstalledFlow, error) {
	c := s.current()
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

// onConnect brings a freshly connected switch up to date: the meters, the
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
	a.br.PuntMeter, a.br.StrayMeter = uplinkMeterID, strayMeterID
	a.br.Underlay = underlayOf(a.cfg)
	a.br.DenyTimeout = uint16(a.cfg.DenyTimeout / time.Second)
	br := a.br
	a.mu.Unlock()
	if err := br.Validate(); err != nil {
		return err
	}

	// Meters first: the flows that punt name them.
	if err := a.setMeters(ctx, c); err != nil {
		return err
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
