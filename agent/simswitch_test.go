package agent

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"nvi/internal/flowsim"
	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
)

// simSwitch is a switch that runs the flows it is sent: an OpenFlow
// endpoint in front of an internal/flowsim switch. What the pipeline punts
// reaches the agent as a packet-in; packet-outs run through the pipeline
// (or straight out of a port); frames out of the uplink cross the
// underlay to the simSwitch with that data address. One goroutine owns the
// flowsim switch and takes the OpenFlow messages and the frames in the
// order they come, as Open vSwitch's main thread does.
type simSwitch struct {
	t    *testing.T
	ctx  context.Context // the switch runs until it ends
	br   pipeline.Bridge
	sw   *flowsim.Switch
	work chan func()
	net  *underlay

	punts atomic.Int64 // packet-ins sent

	removed []removal // deletes that took flows, on the switch's goroutine

	mu  sync.Mutex
	got map[uint32][][]byte // frames out of each port but the uplink
	nc  net.Conn            // the agent's connection
	wmu sync.Mutex
}

// underlay joins simSwitches by their data addresses. Its clock orders
// what happens on different switches.
type underlay struct {
	mu    sync.Mutex
	byIP  map[netip.Addr]*simSwitch
	clock atomic.Int64
}

func newUnderlay() *underlay { return &underlay{byIP: map[netip.Addr]*simSwitch{}} }

// newSimSwitch makes a switch running a's base pipeline and the flows of
// its bound workloads, plugged into u, with no controller yet (attach),
// until ctx ends.
func newSimSwitch(t *testing.T, ctx context.Context, a *Agent, u *underlay) *simSwitch {
	t.Helper()
	a.mu.Lock()
	br := a.br
	flows := pipeline.BaseFlows(br)
	for _, w := range a.workloads {
		flows = append(flows, pipeline.WorkloadFlows(br, w.pipelineWorkload())...)
	}
	a.mu.Unlock()
	sw, err := flowsim.New(flows...)
	if err != nil {
		t.Fatal(err)
	}
	s := &simSwitch{t: t, ctx: ctx, br: br, sw: sw, work: make(chan func(), 1024), net: u, got: map[uint32][][]byte{}}
	go func() {
		for {
			select {
			case f := <-s.work:
				f()
			case <-ctx.Done():
				return
			}
		}
	}()
	u.mu.Lock()
	u.byIP[br.DataIP] = s
	u.mu.Unlock()
	return s
}

// attach makes a the switch's controller until ctx ends, as Run does: a
// takes the packet-ins. The returned channel is closed once a's side of
// the connection is closed.
func (s *simSwitch) attach(ctx context.Context, a *Agent) <-chan struct{} {
	done := attachSwitch(s.t, ctx, a, s.serve)
	go a.sw.serve(ctx, a.sw.current())
	return done
}

func (s *simSwitch) send(m openflow.Message, xid uint32) {
	b, err := openflow.Marshal(m, xid)
	if err != nil {
		s.t.Errorf("sim switch: %v", err)
		return
	}
	s.mu.Lock()
	nc := s.nc
	s.mu.Unlock()
	if nc == nil {
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, _ = nc.Write(b)
}

// do runs f on the switch's goroutine and waits for it, unless the
// switch stopped.
func (s *simSwitch) do(f func()) {
	done := make(chan struct{})
	select {
	case s.work <- func() { f(); close(done) }:
	case <-s.ctx.Done():
		return
	}
	select {
	case <-done:
	case <-s.ctx.Done():
	}
}

func (s *simSwitch) serve(nc net.Conn) {
	defer nc.Close()
	s.mu.Lock()
	s.nc = nc
	s.mu.Unlock()
	s.send(openflow.Hello{Versions: []uint8{openflow.Version}}, 1)
	eachMessage(nc, func(m openflow.Message, xid uint32) { s.do(func() { s.handle(m, xid) }) })
}

// handle is one OpenFlow message, on the switch's goroutine.
func (s *simSwitch) handle(m openflow.Message, xid uint32) {
	switch m := m.(type) {
	case *openflow.EchoRequest:
		s.send(openflow.EchoReply(*m), xid)
	case *openflow.FeaturesRequest:
		s.send(openflow.FeaturesReply{DatapathID: 1, NTables: 254}, xid)
	case *openflow.BarrierRequest:
		s.send(openflow.BarrierReply{}, xid)
	case *openflow.FlowMod:
		switch m.Command {
		case openflow.FlowAdd:
			if err := s.sw.Add(m); err != nil {
				s.t.Errorf("sim switch: %v", err)
			}
		case openflow.FlowDelete, openflow.FlowDeleteStrict:
			if s.sw.Count(m.Cookie, m.CookieMask) > 0 {
				s.removed = append(s.removed, removal{m.Cookie, m.CookieMask, s.net.clock.Add(1)})
			}
			s.sw.Delete(m.Cookie, m.CookieMask)
		}
	case *openflow.PacketOut:
		for _, act := range m.Actions {
			out, ok := act.(openflow.ActionOutput)
			if !ok {
				continue
			}
			if out.Port == openflow.PortTable {
				s.run(m.InPort, m.Data)
			} else {
				s.emit(out.Port, m.Data)
			}
		}
	case *openflow.MultipartRequest:
		if q, ok := m.Body.(openflow.FlowStatsRequest); ok {
			s.flowStats(q, xid)
		}
	}
}

// statsPart is how many flows one part of a flow statistics reply holds
// at most; like Open vSwitch, the switch splits longer replies.
const statsPart = 8

// flowStats answers a flow statistics request with the flows' counters,
// in parts.
func (s *simSwitch) flowStats(q openflow.FlowStatsRequest, xid uint32) {
	if q.OutPort != openflow.PortAny || q.OutGroup != openflow.GroupAny || len(q.Match.Fields) > 0 {
		s.t.Errorf("sim switch: flow stats request %v: only selection by table and cookie is simulated", q)
	}
	var all openflow.FlowStatsReply
	for _, f := range s.sw.Flows(q.Cookie, q.CookieMask) {
		if q.TableID != openflow.TableAll && q.TableID != f.TableID {
			continue
		}
		all = append(all, openflow.FlowStats{TableID: f.TableID, Priority: f.Priority, IdleTimeout: f.IdleTimeout, HardTimeout: f.HardTimeout,
			Flags: f.Flags, Cookie: f.Cookie, PacketCount: f.Packets, ByteCount: f.Bytes, Match: f.Match, Instructions: f.Instructions})
	}
	for {
		part := all[:min(len(all), statsPart)]
		all = all[len(part):]
		var more uint16
		if len(all) > 0 {
			more = openflow.MultipartMore
		}
		s.send(openflow.MultipartReply{MPType: openflow.MPFlow, Flags: more, Body: part}, xid)
		if more == 0 {
			return
		}
	}
}

// removal is a delete that took flows, at a time of the underlay's clock.
type removal struct {
	cookie, mask uint64
	at           int64
}

// removedAt is when the last delete that took flows with cookie c came,
// on the underlay's clock; 0 if none did.
func (s *simSwitch) removedAt(c pipeline.Cookie) int64 {
	var at int64
	s.do(func() {
		for _, r := range s.removed {
			if uint64(c)&r.mask == r.cookie&r.mask {
				at = r.at
			}
		}
	})
	return at
}

// flows returns the flows whose cookie matches c under mask, counters and
// all.
func (s *simSwitch) flows(c pipeline.Cookie, mask pipeline.Cookie) []flowsim.Flow {
	var fs []flowsim.Flow
	s.do(func() { fs = s.sw.Flows(uint64(c), uint64(mask)) })
	return fs
}

// run takes a frame in on port through the pipeline, on the switch's
// goroutine.
func (s *simSwitch) run(port uint32, frame []byte) {
	res, err := s.sw.Run(port, frame)
	if err != nil {
		s.t.Errorf("sim switch %s: %v", s.br.DataIP, err)
		return
	}
	if res.Punted {
		s.punts.Add(1)
		match := openflow.Match{Fields: []openflow.Field{openflow.InPort(port)}}
		if res.CtState != 0 {
			match.Fields = append(match.Fields, openflow.CtState(res.CtState, ^uint32(0)))
		}
		s.send(&openflow.PacketIn{BufferID: openflow.NoBuffer, TotalLen: uint16(len(frame)), Match: match, Data: frame}, 0)
	}
	for _, o := range res.Outputs {
		s.emit(o.Port, o.Frame)
	}
}

// emit sends a frame out of a port: across the underlay from the uplink,
// to whoever listens elsewhere.
func (s *simSwitch) emit(port uint32, frame []byte) {
	if port != s.br.Uplink {
		s.mu.Lock()
		s.got[port] = append(s.got[port], frame)
		s.mu.Unlock()
		return
	}
	f, err := packet.Parse(frame)
	if err != nil {
		s.t.Errorf("sim switch: a frame out of the uplink does not parse: %v", err)
		return
	}
	s.net.mu.Lock()
	peer := s.net.byIP[f.IPv4Dst()]
	s.net.mu.Unlock()
	if peer != nil {
		// Not waited for: the peer's goroutine takes it in its turn.
		select {
		case peer.work <- func() { peer.run(peer.br.Uplink, frame) }:
		case <-peer.ctx.Done():
		}
	}
}

// in sends a frame into port as a workload there would.
func (s *simSwitch) in(port uint32, frame []byte) {
	s.do(func() { s.run(port, frame) })
}

// flowCount is the number of flows with cookie c on the switch.
func (s *simSwitch) flowCount(c pipeline.Cookie) int {
	var n int
	s.do(func() { n = s.sw.Count(uint64(c), uint64(pipeline.FullMask)) })
	return n
}

// received returns the frames out of port so far.
func (s *simSwitch) received(port uint32) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got[port]...)
}
