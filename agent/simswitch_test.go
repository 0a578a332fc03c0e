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
	br   pipeline.Bridge
	sw   *flowsim.Switch
	work chan func()
	net  *underlay

	punts atomic.Int64 // packet-ins sent

	mu  sync.Mutex
	got map[uint32][][]byte // frames out of each port but the uplink
	nc  net.Conn            // the agent's connection
	wmu sync.Mutex
}

// underlay joins simSwitches by their data addresses.
type underlay struct {
	mu   sync.Mutex
	byIP map[netip.Addr]*simSwitch
}

func newUnderlay() *underlay { return &underlay{byIP: map[netip.Addr]*simSwitch{}} }

// connectSimSwitch gives a a switch running its base pipeline and the
// flows of its bound workloads, plugged into u.
func connectSimSwitch(t *testing.T, a *Agent, u *underlay) *simSwitch {
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
	s := &simSwitch{t: t, br: br, sw: sw, work: make(chan func(), 1024), net: u, got: map[uint32][][]byte{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
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

	attachSwitch(t, ctx, a, s.serve)
	go a.sw.serve(ctx, a.sw.current()) // packet-ins to the agent, as run does
	return s
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

// do runs f on the switch's goroutine and waits for it.
func (s *simSwitch) do(f func()) {
	done := make(chan struct{})
	s.work <- func() { f(); close(done) }
	<-done
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
		if _, ok := m.Body.(openflow.FlowStatsRequest); ok {
			s.send(openflow.MultipartReply{MPType: openflow.MPFlow, Body: openflow.FlowStatsReply{}}, xid)
		}
	}
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
		peer.work <- func() { peer.run(peer.br.Uplink, frame) }
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
