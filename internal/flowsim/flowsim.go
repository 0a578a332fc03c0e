// Package flowsim runs frames through a set of OpenFlow flows in software,
// the way Open vSwitch would, for tests of the pipeline: match on the
// frame's headers by priority, table by table, apply set-field and register
// moves to the real bytes, and report where the frame goes out. It covers
// what NVI's pipeline uses, no more; anything else is an error, so that a
// test never passes by ignoring a flow it does not understand.
package flowsim

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"nvi/openflow"
	"nvi/packet"
)

// Switch is a flow table set, with a small connection tracker. Each flow
// counts the packets and bytes it matched, as a switch's flow statistics
// do.
type Switch struct {
	tables map[uint8][]*openflow.FlowMod
	counts map[*openflow.FlowMod]*Counters
	conns  map[connKey]*conn   // by original direction
	nats   map[connKey]connKey // reply direction after NAT -> original tuple
	fwd    map[connKey]connKey // original tuple -> its tuple after NAT
	// ctState is the state conntrack gave the frame being run.
	ctState uint32
}

// connKey is a connection's 5-tuple in one conntrack zone.
type connKey struct {
	zone             uint16
	proto            uint8
	src, dst         netip.Addr
	srcPort, dstPort uint16
}

func (k connKey) reverse() connKey {
	return connKey{k.zone, k.proto, k.dst, k.src, k.dstPort, k.srcPort}
}

type conn struct{}

// Counters are what a flow matched.
type Counters struct{ Packets, Bytes uint64 }

// New makes a switch holding flows (all FlowAdd).
func New(flows ...*openflow.FlowMod) (*Switch, error) {
	s := &Switch{tables: map[uint8][]*openflow.FlowMod{}, counts: map[*openflow.FlowMod]*Counters{},
		conns: map[connKey]*conn{}, nats: map[connKey]connKey{}, fwd: map[connKey]connKey{}}
	return s, s.Add(flows...)
}

// Add installs more flows; an identical match and priority replaces the old
// flow, as OpenFlow says, and keeps its counters unless the new one has
// the reset_counts flag (as Open vSwitch does).
func (s *Switch) Add(flows ...*openflow.FlowMod) error {
	for _, f := range flows {
		if f.Command != openflow.FlowAdd {
			return fmt.Errorf("flowsim: only adds are simulated, got command %d", f.Command)
		}
		c := &Counters{}
		t := s.tables[f.TableID]
		t = slices.DeleteFunc(t, func(g *openflow.FlowMod) bool {
			if g.Priority != f.Priority || !g.Match.Equal(f.Match) {
				return false
			}
			if f.Flags&openflow.FlagResetCounts == 0 {
				c = s.counts[g]
			}
			delete(s.counts, g)
			return true
		})
		s.counts[f] = c
		t = append(t, f)
		slices.SortStableFunc(t, func(a, b *openflow.FlowMod) int { return int(b.Priority) - int(a.Priority) })
		s.tables[f.TableID] = t
	}
	return nil
}

// Delete removes every flow whose cookie matches c under mask, as a
// non-strict OpenFlow delete does. Conntrack state stays.
func (s *Switch) Delete(c, mask uint64) {
	for t, fs := range s.tables {
		s.tables[t] = slices.DeleteFunc(fs, func(f *openflow.FlowMod) bool {
			if f.Cookie&mask != c&mask {
				return false
			}
			delete(s.counts, f)
			return true
		})
	}
}

// Flow is an installed flow with its counters.
type Flow struct {
	*openflow.FlowMod
	Counters
}

// Flows lists the flows whose cookie matches c under mask, table by table
// and in each by priority, with their counters: what a flow statistics
// request (openflow.FlowStatsRequest for every table) answers.
func (s *Switch) Flows(c, mask uint64) []Flow {
	var out []Flow
	for _, t := range slices.Sorted(maps.Keys(s.tables)) {
		for _, f := range s.tables[t] {
			if f.Cookie&mask == c&mask {
				out = append(out, Flow{f, *s.counts[f]})
			}
		}
	}
	return out
}

// Count is the number of flows whose cookie matches c under mask.
func (s *Switch) Count(c, mask uint64) int {
	n := 0
	for _, fs := range s.tables {
		for _, f := range fs {
			if f.Cookie&mask == c&mask {
				n++
			}
		}
	}
	return n
}

// Output is one copy of the frame leaving the switch.
type Output struct {
	Port  uint32
	Frame []byte
	// Cookies of the flows that handled the frame, in order.
	Path []uint64
}

// Result is what became of a frame.
type Result struct {
	Outputs []Output
	Path    []uint64 // cookies of the flows the frame matched
	Dropped bool     // no output and no punt
	Punted  bool     // sent to the controller
	Meter   uint32   // meter applied, if any
	CtState uint32   // conntrack state when it was punted (0: never tracked)
}

// Run sends frame into the switch on port inPort. The frame is copied.
func (s *Switch) Run(inPort uint32, frame []byte) (Result, error) {
	b := slices.Clone(frame)
	var res Result
	s.ctState = 0
	table := uint8(0)
	for hops := 0; hops < 32; hops++ {
		f, err := packet.Parse(b)
		if err != nil {
			return res, fmt.Errorf("flowsim: frame no longer parses: %w", err)
		}
		fl, err := s.lookup(table, inPort, &f)
		if err != nil {
			return res, err
		}
		if fl == nil {
			res.Dropped = len(res.Outputs) == 0 && !res.Punted
			return res, nil // table miss without a miss flow: drop
		}
		res.Path = append(res.Path, fl.Cookie)
		cnt := s.counts[fl]
		cnt.Packets++
		cnt.Bytes += uint64(len(b))
		next := -1
		for _, ins := range fl.Instructions {
			switch ins := ins.(type) {
			case openflow.InstructionApplyActions:
				for i, a := range ins.Actions {
					if ct, ok := a.(openflow.NXConntrack); ok {
						if err := s.track(ct, &f); err != nil {
							return res, err
						}
						if ct.RecircTable != openflow.NXCtRecircNone {
							if i != len(ins.Actions)-1 {
								return res, errors.New("flowsim: actions after ct(table=...) not simulated")
							}
							next = int(ct.RecircTable)
						}
						continue
					}
					if err := s.act(a, inPort, &f, &res); err != nil {
						return res, err
					}
				}
			case openflow.InstructionGotoTable:
				next = int(ins.TableID)
			case openflow.InstructionMeter:
				res.Meter = ins.MeterID
			default:
				return res, fmt.Errorf("flowsim: instruction %v not simulated", ins)
			}
		}
		if next < 0 {
			res.Dropped = len(res.Outputs) == 0 && !res.Punted
			return res, nil
		}
		if next <= int(table) {
			return res, fmt.Errorf("flowsim: goto_table:%d from table %d goes backwards", next, table)
		}
		table = uint8(next)
	}
	return res, errors.New("flowsim: too many tables")
}

func (s *Switch) lookup(table uint8, inPort uint32, f *packet.Frame) (*openflow.FlowMod, error) {
	for _, fl := range s.tables[table] {
		ok, err := matches(fl.Match, inPort, s.ctState, f)
		if err != nil {
			return nil, fmt.Errorf("flowsim: table %d priority %d: %w", table, fl.Priority, err)
		}
		if ok {
			return fl, nil
		}
	}
	return nil, nil
}

func (s *Switch) act(a openflow.Action, inPort uint32, f *packet.Frame, res *Result) error {
	switch a := a.(type) {
	case openflow.ActionOutput:
		switch a.Port {
		case openflow.PortController:
			res.Punted = true
			res.CtState = s.ctState
		case openflow.PortInPort:
			res.Outputs = append(res.Outputs, Output{Port: inPort, Frame: slices.Clone(f.Bytes()), Path: slices.Clone(res.Path)})
		default:
			if a.Port == inPort {
				return nil // OpenFlow never sends a frame back out of its in_port unless asked
			}
			res.Outputs = append(res.Outputs, Output{Port: a.Port, Frame: slices.Clone(f.Bytes()), Path: slices.Clone(res.Path)})
		}
		return nil
	case openflow.ActionSetField:
		return set(f, a.Field)
	case openflow.NXRegMove:
		if a.SrcOfs != 0 || a.DstOfs != 0 {
			return fmt.Errorf("flowsim: partial register moves are not simulated")
		}
		v, ok := get(f, inPort, s.ctState, a.Src)
		if !ok {
			return fmt.Errorf("flowsim: move from %v: field absent", a.Src)
		}
		if size, _ := openflow.FieldSize(a.Src); int(a.NBits) != size*8 {
			return fmt.Errorf("flowsim: move of %d bits of %v not simulated", a.NBits, a.Src)
		}
		return set(f, openflow.Field{Class: a.Dst.Class, Field: a.Dst.Field, Value: v.Value})
	}
	return fmt.Errorf("flowsim: action %v not simulated", a)
}

// get reads a field from the frame as a Field value.
func get(f *packet.Frame, inPort uint32, ctState uint32, id openflow.FieldID) (openflow.Field, bool) {
	ip := f.EthType() == packet.EtherTypeIPv4
	arp := f.EthType() == packet.EtherTypeARP
	proto := uint8(0)
	if ip {
		proto = f.IPProto()
	}
	l4 := ip && f.L4() != nil
	switch id {
	case openflow.IDInPort:
		return openflow.InPort(inPort), true
	case openflow.IDEthDst:
		return openflow.EthDst(f.EthDst()), true
	case openflow.IDEthSrc:
		return openflow.EthSrc(f.EthSrc()), true
	case openflow.IDEthType:
		return openflow.EthType(f.EthType()), true
	case openflow.IDVLANVID:
		// OpenFlow 1.3: the outermost tag's VID with OFPVID_PRESENT, or 0
		// for an untagged frame.
		if f.VLANTags() == 0 {
			return openflow.VLANNone(), true
		}
		b := f.Bytes()
		return openflow.VLANVID(uint16(b[14])<<8 | uint16(b[15])), true
	case openflow.IDIPFrag:
		var v uint8
		if ip && f.IsFragment() {
			v = openflow.IPFragAny
			if l3 := f.L3(); len(l3) >= 8 && (uint16(l3[6])<<8|uint16(l3[7]))&0x1fff != 0 {
				v |= openflow.IPFragLater
			}
		}
		return openflow.Field{Class: openflow.IDIPFrag.Class, Field: openflow.IDIPFrag.Field, Value: []byte{v}}, ip
	case openflow.IDIPProto:
		return openflow.IPProto(proto), ip
	case openflow.IDIPv4Src:
		return openflow.IPv4Src(f.IPv4Src()), ip
	case openflow.IDIPv4Dst:
		return openflow.IPv4Dst(f.IPv4Dst()), ip
	case openflow.IDTCPSrc:
		return openflow.TCPSrc(f.L4Src()), l4 && proto == packet.ProtoTCP
	case openflow.IDTCPDst:
		return openflow.TCPDst(f.L4Dst()), l4 && proto == packet.ProtoTCP
	case openflow.IDUDPSrc:
		return openflow.UDPSrc(f.L4Src()), l4 && proto == packet.ProtoUDP
	case openflow.IDUDPDst:
		return openflow.UDPDst(f.L4Dst()), l4 && proto == packet.ProtoUDP
	case openflow.IDICMPv4Type:
		return openflow.ICMPv4Type(f.ICMPType()), l4 && proto == packet.ProtoICMP
	case openflow.IDICMPv4Code:
		return openflow.ICMPv4Code(f.ICMPCode()), l4 && proto == packet.ProtoICMP
	case openflow.IDARPOp:
		return openflow.ARPOp(f.ARPOp()), arp
	case openflow.IDARPSpa:
		return openflow.ARPSpa(f.ARPSPA()), arp
	case openflow.IDARPTpa:
		return openflow.ARPTpa(f.ARPTPA()), arp
	case openflow.IDARPSha:
		return openflow.ARPSha(f.ARPSHA()), arp
	case openflow.IDARPTha:
		return openflow.ARPTha(f.ARPTHA()), arp
	case openflow.IDCtState:
		return openflow.CtState(ctState, ^uint32(0)), true
	}
	return openflow.Field{}, false
}

// matches applies OpenFlow's rule: every field present must equal the
// frame's under its mask; a field whose prerequisites the frame lacks does
// not match.
func matches(m openflow.Match, inPort, ctState uint32, f *packet.Frame) (bool, error) {
	for _, want := range m.Fields {
		have, ok := get(f, inPort, ctState, want.ID())
		if !ok {
			if _, known := openflow.FieldSize(want.ID()); !known || !simulated[want.ID()] {
				return false, fmt.Errorf("match on %v not simulated", want.ID())
			}
			return false, nil
		}
		if len(have.Value) != len(want.Value) {
			return false, fmt.Errorf("match on %v: %d-byte value, frame gives %d", want.ID(), len(want.Value), len(have.Value))
		}
		for i := range want.Value {
			mask := byte(0xff)
			if want.Mask != nil {
				mask = want.Mask[i]
			}
			if have.Value[i]&mask != want.Value[i]&mask {
				return false, nil
			}
		}
	}
	return true, nil
}

var simulated = map[openflow.FieldID]bool{
	openflow.IDInPort: true, openflow.IDEthDst: true, openflow.IDEthSrc: true, openflow.IDEthType: true,
	openflow.IDVLANVID: true, openflow.IDIPFrag: true,
	openflow.IDIPProto: true, openflow.IDIPv4Src: true, openflow.IDIPv4Dst: true,
	openflow.IDTCPSrc: true, openflow.IDTCPDst: true, openflow.IDUDPSrc: true, openflow.IDUDPDst: true,
	openflow.IDICMPv4Type: true, openflow.IDICMPv4Code: true,
	openflow.IDARPOp: true, openflow.IDARPSpa: true, openflow.IDARPTpa: true, openflow.IDARPSha: true, openflow.IDARPTha: true,
	openflow.IDCtState: true,
}

// track runs the connection tracker: it sets the conntrack state the rest
// of the pipeline sees, commits connections, and applies source NAT on
// commit and its reversal on an empty nat() — enough of Open vSwitch's
// conntrack for NVI's flows, deterministic (NAT takes the lowest port).
func (s *Switch) track(ct openflow.NXConntrack, f *packet.Frame) error {
	if ct.ZoneSrc != (openflow.FieldID{}) {
		return errors.New("flowsim: ct zones from fields not simulated")
	}
	if f.EthType() != packet.EtherTypeIPv4 {
		s.ctState = openflow.CtStateTrk | openflow.CtStateInv
		return nil
	}
	k := connKey{zone: ct.ZoneImm, proto: f.IPProto(), src: f.IPv4Src(), dst: f.IPv4Dst()}
	hasPorts := f.L4() != nil && (k.proto == packet.ProtoTCP || k.proto == packet.ProtoUDP)
	if hasPorts {
		k.srcPort, k.dstPort = f.L4Src(), f.L4Dst()
	} else if k.proto == packet.ProtoICMP && f.L4() != nil && !f.IsICMPError() {
		k.srcPort, k.dstPort = f.ICMPID(), f.ICMPID()
	}
	var nat *openflow.NXNat
	for _, a := range ct.Actions {
		if n, ok := a.(openflow.NXNat); ok {
			nat = &n
		}
	}
	switch {
	case s.conns[k] != nil:
		s.ctState = openflow.CtStateTrk | openflow.CtStateEst
	case s.conns[k.reverse()] != nil:
		s.ctState = openflow.CtStateTrk | openflow.CtStateEst | openflow.CtStateRpl
	case invalidFirst(f, k, s.conns):
		s.ctState = openflow.CtStateTrk | openflow.CtStateInv
		return nil
	case k.proto == packet.ProtoICMP && f.IsICMPError():
		s.ctState = openflow.CtStateTrk | openflow.CtStateRel
		return nil
	default:
		s.ctState = openflow.CtStateTrk | openflow.CtStateNew
	}
	if nat != nil && nat.Flags == 0 {
		if orig, ok := s.nats[k]; ok {
			// A reply to a NATed connection: give it back its original
			// destination.
			if err := f.SetIPv4Dst(orig.src); err != nil {
				return err
			}
			if hasPorts {
				return f.SetL4Dst(orig.srcPort)
			}
			return nil
		}
		if to, ok := s.fwd[k]; ok {
			// A later packet of a NATed connection: the same translation
			// as its first.
			if err := f.SetIPv4Src(to.src); err != nil {
				return err
			}
			if hasPorts {
				return f.SetL4Src(to.srcPort)
			}
			return nil
		}
	}
	if ct.Flags&openflow.NXCtCommit == 0 || s.ctState&openflow.CtStateNew == 0 {
		return nil
	}
	s.conns[k] = &conn{}
	if nat == nil || nat.Flags&openflow.NXNatSrc == 0 {
		return nil
	}
	translated := k
	translated.src = nat.IPv4Min
	if err := f.SetIPv4Src(nat.IPv4Min); err != nil {
		return err
	}
	if hasPorts {
		// The lowest port in the range that no connection to the same
		// destination uses yet.
		port := nat.ProtoMin
		for ; port < nat.ProtoMax; port++ {
			try := translated
			try.srcPort = port
			if s.conns[try] == nil {
				break
			}
		}
		translated.srcPort = port
		if err := f.SetL4Src(port); err != nil {
			return err
		}
	}
	s.nats[translated.reverse()] = k
	s.fwd[k] = translated
	s.conns[translated] = &conn{}
	return nil
}

// invalidFirst reports whether a packet that belongs to no connection is
// one conntrack marks invalid rather than new: a TCP reset, an ICMP echo
// reply or other answer that nothing asked for, an ICMP error about no
// connection it knows. (Open vSwitch's conntrack refuses more; these are
// the cases NVI's flows depend on.)
func invalidFirst(f *packet.Frame, k connKey, conns map[connKey]*conn) bool {
	switch {
	case k.proto == packet.ProtoTCP && f.L4() != nil:
		return f.L4()[13]&0x04 != 0 // RST
	case k.proto == packet.ProtoICMP && f.L4() != nil && f.IsICMPError():
		in := connKey{zone: k.zone, proto: f.InnerProto(), src: f.InnerIPv4Src(), dst: f.InnerIPv4Dst()}
		if in.proto == packet.ProtoTCP || in.proto == packet.ProtoUDP {
			in.srcPort, in.dstPort = f.InnerL4Src(), f.InnerL4Dst()
		}
		return conns[in] == nil && conns[in.reverse()] == nil
	case k.proto == packet.ProtoICMP && f.L4() != nil:
		return f.ICMPType() != packet.ICMPEchoRequest
	}
	return false
}

// set writes a field into the frame; the packet package keeps checksums
// right, as Open vSwitch does.
func set(f *packet.Frame, v openflow.Field) error {
	var err error
	switch v.ID() {
	case openflow.IDEthDst:
		err = f.SetEthDst(net.HardwareAddr(v.Value))
	case openflow.IDEthSrc:
		err = f.SetEthSrc(net.HardwareAddr(v.Value))
	case openflow.IDIPv4Src:
		err = f.SetIPv4Src(v.Addr())
	case openflow.IDIPv4Dst:
		err = f.SetIPv4Dst(v.Addr())
	case openflow.IDTCPSrc, openflow.IDUDPSrc:
		err = f.SetL4Src(uint16(v.Uint()))
	case openflow.IDTCPDst, openflow.IDUDPDst:
		err = f.SetL4Dst(uint16(v.Uint()))
	case openflow.IDARPOp:
		err = f.SetARPOp(uint16(v.Uint()))
	case openflow.IDARPSpa:
		err = f.SetARPSPA(addr4(v.Value))
	case openflow.IDARPTpa:
		err = f.SetARPTPA(addr4(v.Value))
	case openflow.IDARPSha:
		err = f.SetARPSHA(net.HardwareAddr(v.Value))
	case openflow.IDARPTha:
		err = f.SetARPTHA(net.HardwareAddr(v.Value))
	default:
		return fmt.Errorf("flowsim: set_field %v not simulated", v.ID())
	}
	if err != nil {
		return fmt.Errorf("flowsim: set_field %v: %w", v.ID(), err)
	}
	return nil
}

func addr4(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}
