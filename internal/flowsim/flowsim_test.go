package flowsim

import (
	"maps"
	"net"
	"net/netip"
	"testing"

	"nvi/openflow"
	"nvi/packet"
)

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	ipA  = netip.MustParseAddr("10.0.0.1")
	ipB  = netip.MustParseAddr("10.0.0.2")
	nat  = netip.MustParseAddr("192.0.2.1")
)

func add(prio uint16, table uint8, match []openflow.Field, actions ...openflow.Action) *openflow.FlowMod {
	fm := openflow.NewFlowMod(openflow.FlowAdd, table, prio)
	fm.Match = openflow.Match{Fields: match}
	fm.Instructions = []openflow.Instruction{openflow.InstructionApplyActions{Actions: actions}}
	return fm
}

func mustRun(t *testing.T, s *Switch, in uint32, fr []byte) Result {
	t.Helper()
	res, err := s.Run(in, fr)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestVLANAndFragments: vlan_vid is OpenFlow 1.3's (0 untagged, else the
// VID with OFPVID_PRESENT), nw_frag Open vSwitch's bits.
func TestVLANAndFragments(t *testing.T) {
	s, err := New(
		add(10, 0, []openflow.Field{openflow.VLANUntagged(), openflow.EthType(0x0800), openflow.IPFrag(0, openflow.IPFragLater)}, openflow.ActionOutput{Port: 1}),
		add(5, 0, []openflow.Field{openflow.VLANVID(42)}, openflow.ActionOutput{Port: 42}),
	)
	if err != nil {
		t.Fatal(err)
	}
	h := packet.Header{EthSrc: macA, EthDst: macB, Src: ipA, Dst: ipB}
	plain, _ := packet.BuildUDP(h, 1, 2, nil)
	h.MF = true
	first, _ := packet.BuildUDP(h, 1, 2, []byte("12345678"))
	h.MF, h.FragOffset = false, 1
	later, _ := packet.BuildIPv4(h, 17, []byte("12345678"))
	h.FragOffset, h.VLANs = 0, []uint16{42}
	tagged, _ := packet.BuildUDP(h, 1, 2, nil)
	h.VLANs = []uint16{7}
	other, _ := packet.BuildUDP(h, 1, 2, nil)
	for _, tc := range []struct {
		name string
		fr   []byte
		out  uint32 // 0: dropped
	}{{"whole", plain, 1}, {"first fragment", first, 1}, {"later fragment", later, 0}, {"vid 42", tagged, 42}, {"vid 7", other, 0}} {
		res := mustRun(t, s, 3, tc.fr)
		switch {
		case tc.out == 0 && len(res.Outputs) != 0:
			t.Errorf("%s: out of %d, want dropped", tc.name, res.Outputs[0].Port)
		case tc.out != 0 && (len(res.Outputs) != 1 || res.Outputs[0].Port != tc.out):
			t.Errorf("%s: %+v, want out of %d", tc.name, res, tc.out)
		}
	}
}

// TestConntrack: a connection's later packets are NATed as its first; an
// answer comes back un-NATed and marked a reply; what conntrack would
// refuse is marked invalid.
func TestConntrack(t *testing.T) {
	ctrk := openflow.CtState(openflow.CtStateTrk, openflow.CtStateTrk)
	s, err := New(
		add(10, 0, []openflow.Field{openflow.InPort(1), openflow.EthType(0x0800)}, openflow.NXConntrack{RecircTable: 1, Actions: []openflow.Action{openflow.NXNat{}}}),
		add(10, 0, []openflow.Field{openflow.InPort(2), openflow.EthType(0x0800)}, openflow.NXConntrack{RecircTable: 2, Actions: []openflow.Action{openflow.NXNat{}}}),
		add(30, 1, []openflow.Field{openflow.CtState(openflow.CtStateTrk|openflow.CtStateInv, openflow.CtStateTrk|openflow.CtStateInv)}),
		add(20, 1, []openflow.Field{openflow.CtState(openflow.CtStateTrk|openflow.CtStateNew, openflow.CtStateTrk|openflow.CtStateNew)},
			openflow.NXConntrack{Flags: openflow.NXCtCommit, RecircTable: openflow.NXCtRecircNone, Actions: []openflow.Action{openflow.NXNat{Flags: openflow.NXNatSrc, IPv4Min: nat, IPv4Max: nat, ProtoMin: 1000, ProtoMax: 1999}}},
			openflow.ActionOutput{Port: 2}),
		add(10, 1, []openflow.Field{ctrk}, openflow.ActionOutput{Port: 2}),
		add(10, 2, []openflow.Field{openflow.CtState(openflow.CtStateTrk|openflow.CtStateEst|openflow.CtStateRpl, openflow.CtStateTrk|openflow.CtStateEst|openflow.CtStateRpl)}, openflow.ActionOutput{Port: 1}),
	)
	if err != nil {
		t.Fatal(err)
	}
	h := packet.Header{EthSrc: macA, EthDst: macB, Src: ipA, Dst: ipB}
	tcp := func(h packet.Header, sp, dp uint16, flags uint8) []byte {
		b, err := packet.BuildTCP(h, packet.TCP{SrcPort: sp, DstPort: dp, Flags: flags, Window: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var port uint16
	for i, flags := range []uint8{packet.TCPSyn, packet.TCPAck, packet.TCPAck} {
		res := mustRun(t, s, 1, tcp(h, 5000, 80, flags))
		if len(res.Outputs) != 1 {
			t.Fatalf("packet %d: %+v", i, res)
		}
		f, _ := packet.Parse(res.Outputs[0].Frame)
		if f.IPv4Src() != nat || (i > 0 && f.L4Src() != port) {
			t.Fatalf("packet %d left as %s:%d", i, f.IPv4Src(), f.L4Src())
		}
		port = f.L4Src()
	}
	res := mustRun(t, s, 2, tcp(packet.Header{EthSrc: macB, EthDst: macA, Src: ipB, Dst: nat}, 80, port, packet.TCPAck))
	if len(res.Outputs) != 1 {
		t.Fatalf("the answer: %+v", res)
	}
	if f, _ := packet.Parse(res.Outputs[0].Frame); f.IPv4Dst() != ipA || f.L4Dst() != 5000 {
		t.Fatalf("the answer came back to %s:%d", f.IPv4Dst(), f.L4Dst())
	}
	reply, _ := packet.BuildICMPEcho(h, packet.ICMPEchoReply, 1, 1, nil)
	for name, fr := range map[string][]byte{"stray reset": tcp(h, 6000, 80, packet.TCPRst), "stray echo reply": reply} {
		if res := mustRun(t, s, 1, fr); len(res.Outputs) != 0 {
			t.Errorf("%s was not invalid: %+v", name, res)
		}
	}
	req, _ := packet.BuildICMPEcho(h, packet.ICMPEchoRequest, 1, 1, nil)
	if res := mustRun(t, s, 1, req); len(res.Outputs) != 1 {
		t.Errorf("an echo request was not new: %+v", res)
	}
}

// TestCountAndDelete: flows are counted and deleted by cookie under a mask,
// in every table.
func TestCountAndDelete(t *testing.T) {
	f := func(cookie uint64, table uint8, prio uint16) *openflow.FlowMod {
		fm := add(prio, table, nil, openflow.ActionOutput{Port: 1})
		fm.Cookie = cookie
		return fm
	}
	s, err := New(f(0x3001, 0, 1), f(0x3001, 40, 1), f(0x3002, 40, 2), f(0x1000, 0, 3))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cookie, mask uint64
		want         int
	}{{0x3001, ^uint64(0), 2}, {0x3000, 0xf000, 3}, {0, 0, 4}, {0x4000, 0xf000, 0}} {
		if got := s.Count(c.cookie, c.mask); got != c.want {
			t.Errorf("Count(%#x, %#x) = %d, want %d", c.cookie, c.mask, got, c.want)
		}
	}
	s.Delete(0x3001, ^uint64(0))
	if got := s.Count(0, 0); got != 2 {
		t.Errorf("after deleting cookie 0x3001: %d flows, want 2", got)
	}
}

// TestFlowCounters: every flow a frame matches counts it, table by table;
// a flow added again over itself keeps its counters unless the add says
// reset_counts (as Open vSwitch does); Flows lists by cookie.
func TestFlowCounters(t *testing.T) {
	flow := func(cookie uint64, table uint8, match []openflow.Field, ins openflow.Instruction) *openflow.FlowMod {
		fm := add(10, table, match)
		fm.Cookie, fm.Instructions = cookie, []openflow.Instruction{ins}
		return fm
	}
	classify := flow(0x1001, 0, []openflow.Field{openflow.InPort(1)}, openflow.InstructionGotoTable{TableID: 40})
	forward := flow(0x3001, 40, nil, openflow.InstructionApplyActions{Actions: []openflow.Action{openflow.ActionOutput{Port: 2}}})
	s, err := New(classify, forward)
	if err != nil {
		t.Fatal(err)
	}
	fr, _ := packet.BuildUDP(packet.Header{EthSrc: macA, EthDst: macB, Src: ipA, Dst: ipB}, 1, 2, []byte("x"))
	counts := func() map[uint64]Counters {
		m := map[uint64]Counters{}
		for _, f := range s.Flows(0, 0) {
			m[f.Cookie] = f.Counters
		}
		return m
	}
	one := Counters{Packets: 1, Bytes: uint64(len(fr))}
	for _, step := range []struct {
		name string
		do   func()
		want map[uint64]Counters
	}{
		{"a frame from port 1", func() { mustRun(t, s, 1, fr) }, map[uint64]Counters{0x1001: one, 0x3001: one}},
		{"a frame no flow takes", func() { mustRun(t, s, 3, fr) }, map[uint64]Counters{0x1001: one, 0x3001: one}},
		{"the classifier added again", func() {
			_ = s.Add(flow(0x1001, 0, []openflow.Field{openflow.InPort(1)}, openflow.InstructionGotoTable{TableID: 40}))
		},
			map[uint64]Counters{0x1001: one, 0x3001: one}},
		{"added again with reset_counts", func() {
			f := flow(0x1001, 0, []openflow.Field{openflow.InPort(1)}, openflow.InstructionGotoTable{TableID: 40})
			f.Flags = openflow.FlagResetCounts
			_ = s.Add(f)
		}, map[uint64]Counters{0x1001: {}, 0x3001: one}},
		{"the forward flow deleted and added", func() { s.Delete(0x3001, ^uint64(0)); _ = s.Add(forward) }, map[uint64]Counters{0x1001: {}, 0x3001: {}}},
	} {
		step.do()
		if got := counts(); !maps.Equal(got, step.want) {
			t.Errorf("%s: counters %v, want %v", step.name, got, step.want)
		}
	}
	if fs := s.Flows(0x3000, 0xf000); len(fs) != 1 || fs[0].FlowMod != forward {
		t.Errorf("Flows(0x3000/0xf000) = %v, want the forward flow", fs)
	}
}
