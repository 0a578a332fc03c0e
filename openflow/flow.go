package openflow

import (
	"fmt"
	"strings"
)

// FlowModCommand is ofp_flow_mod_command.
type FlowModCommand uint8

// Flow-mod commands.
const (
	FlowAdd          FlowModCommand = 0
	FlowModify       FlowModCommand = 1
	FlowModifyStrict FlowModCommand = 2
	FlowDelete       FlowModCommand = 3
	FlowDeleteStrict FlowModCommand = 4
)

func (c FlowModCommand) String() string {
	switch c {
	case FlowAdd:
		return "ADD"
	case FlowModify:
		return "MOD"
	case FlowModifyStrict:
		return "MOD_STRICT"
	case FlowDelete:
		return "DEL"
	case FlowDeleteStrict:
		return "DEL_STRICT"
	}
	return fmt.Sprintf("CMD_%d", uint8(c))
}

// Flow-mod flags (ofp_flow_mod_flags).
const (
	FlagSendFlowRem  uint16 = 1 << 0
	FlagCheckOverlap uint16 = 1 << 1
	FlagResetCounts  uint16 = 1 << 2
	FlagNoPktCounts  uint16 = 1 << 3
	FlagNoBytCounts  uint16 = 1 << 4
)

func flowFlagsString(f uint16) string {
	var s []string
	for _, x := range []struct {
		bit  uint16
		name string
	}{{FlagSendFlowRem, "send_flow_rem"}, {FlagCheckOverlap, "check_overlap"}, {FlagResetCounts, "reset_counts"}, {FlagNoPktCounts, "no_packet_counts"}, {FlagNoBytCounts, "no_byte_counts"}} {
		if f&x.bit != 0 {
			s = append(s, x.name)
			f &^= x.bit
		}
	}
	if f != 0 {
		s = append(s, fmt.Sprintf("flags=%#x", f))
	}
	return strings.Join(s, ",")
}

// FlowMod adds, modifies or deletes flows.
//
// Zero values are not all "don't care": a delete that should match any
// output port needs OutPort: PortAny and OutGroup: GroupAny, and a flow-mod
// without a buffered packet needs BufferID: NoBuffer. NewFlowMod sets those.
type FlowMod struct {
	Cookie, CookieMask       uint64
	TableID                  uint8
	Command                  FlowModCommand
	IdleTimeout, HardTimeout uint16
	Priority                 uint16
	BufferID                 uint32
	OutPort, OutGroup        uint32
	Flags                    uint16
	Match                    Match
	Instructions             []Instruction
}

// NewFlowMod returns a FlowMod with the "any"/"none" values a controller
// almost always wants: no buffer, any out port and group.
func NewFlowMod(cmd FlowModCommand, table uint8, priority uint16) *FlowMod {
	return &FlowMod{Command: cmd, TableID: table, Priority: priority, BufferID: NoBuffer, OutPort: PortAny, OutGroup: GroupAny}
}

func (FlowMod) Type() MsgType { return TypeFlowMod }
func (m FlowMod) appendBody(b []byte) ([]byte, error) {
	b = put64(put64(b, m.Cookie), m.CookieMask)
	b = put8(put8(b, m.TableID), uint8(m.Command))
	b = put16(put16(put16(b, m.IdleTimeout), m.HardTimeout), m.Priority)
	b = put32(put32(put32(b, m.BufferID), m.OutPort), m.OutGroup)
	b = pad(put16(b, m.Flags), 2)
	b, err := appendMatch(b, m.Match)
	if err != nil {
		return b, err
	}
	return appendInstructions(b, m.Instructions)
}

// String prints the flow-mod in ovs-ofctl's flow syntax:
// "table=20,priority=100,cookie=0x5,in_port=3,ip,nw_src=10.0.0.1 actions=output:2".
// The command is prefixed unless it is an add.
func (m FlowMod) String() string {
	var sb strings.Builder
	if m.Command != FlowAdd {
		sb.WriteString(m.Command.String() + " ")
	}
	fmt.Fprintf(&sb, "table=%d,priority=%d", m.TableID, m.Priority)
	if m.Cookie != 0 || m.CookieMask != 0 {
		fmt.Fprintf(&sb, ",cookie=%#x", m.Cookie)
		if m.CookieMask != 0 && m.CookieMask != ^uint64(0) {
			fmt.Fprintf(&sb, "/%#x", m.CookieMask)
		}
	}
	if m.IdleTimeout != 0 {
		fmt.Fprintf(&sb, ",idle_timeout=%d", m.IdleTimeout)
	}
	if m.HardTimeout != 0 {
		fmt.Fprintf(&sb, ",hard_timeout=%d", m.HardTimeout)
	}
	if f := flowFlagsString(m.Flags); f != "" {
		sb.WriteString("," + f)
	}
	if m.BufferID != NoBuffer && m.Command <= FlowModifyStrict {
		fmt.Fprintf(&sb, ",buffer=%#x", m.BufferID)
	}
	if m.Command >= FlowDelete {
		if m.OutPort != PortAny {
			sb.WriteString(",out_port=" + PortString(m.OutPort))
		}
		if m.OutGroup != GroupAny {
			fmt.Fprintf(&sb, ",out_group=%d", m.OutGroup)
		}
	}
	if ms := m.Match.String(); ms != "" {
		sb.WriteString("," + ms)
	}
	if m.Command < FlowDelete {
		sb.WriteString(" actions=" + InstructionsString(m.Instructions))
	}
	return sb.String()
}

func init() {
	register(TypeFlowMod, func(r *reader) (Message, error) {
		m := FlowMod{Cookie: r.u64(), CookieMask: r.u64(), TableID: r.u8(), Command: FlowModCommand(r.u8())}
		m.IdleTimeout, m.HardTimeout, m.Priority = r.u16(), r.u16(), r.u16()
		m.BufferID, m.OutPort, m.OutGroup = r.u32(), r.u32(), r.u32()
		m.Flags = r.u16()
		r.skip(2)
		m.Match = readMatch(r)
		if r.err != nil {
			return nil, r.err
		}
		insts, err := readInstructions("flow_mod", r.take(r.remaining()))
		m.Instructions = insts
		return m, err
	})
}

// Flow-removed reasons (ofp_flow_removed_reason).
const (
	RemovedIdleTimeout uint8 = 0
	RemovedHardTimeout uint8 = 1
	RemovedDelete      uint8 = 2
	RemovedGroupDelete uint8 = 3
)

// FlowRemoved reports a flow that expired or was deleted (only for flows
// added with FlagSendFlowRem).
type FlowRemoved struct {
	Cookie                   uint64
	Priority                 uint16
	Reason                   uint8
	TableID                  uint8
	DurationSec              uint32
	DurationNsec             uint32
	IdleTimeout, HardTimeout uint16
	PacketCount, ByteCount   uint64
	Match                    Match
}

func (FlowRemoved) Type() MsgType { return TypeFlowRemoved }
func (m FlowRemoved) appendBody(b []byte) ([]byte, error) {
	b = put64(b, m.Cookie)
	b = put8(put8(put16(b, m.Priority), m.Reason), m.TableID)
	b = put32(put32(b, m.DurationSec), m.DurationNsec)
	b = put16(put16(b, m.IdleTimeout), m.HardTimeout)
	b = put64(put64(b, m.PacketCount), m.ByteCount)
	return appendMatch(b, m.Match)
}
func (m FlowRemoved) String() string {
	reasons := []string{"idle", "hard", "delete", "group_delete"}
	reason := fmt.Sprint(m.Reason)
	if int(m.Reason) < len(reasons) {
		reason = reasons[m.Reason]
	}
	return fmt.Sprintf("FLOW_REMOVED table=%d,priority=%d,cookie=%#x,%s reason=%s duration=%d.%03ds n_packets=%d n_bytes=%d",
		m.TableID, m.Priority, m.Cookie, m.Match, reason, m.DurationSec, m.DurationNsec/1e6, m.PacketCount, m.ByteCount)
}

func init() {
	register(TypeFlowRemoved, func(r *reader) (Message, error) {
		m := FlowRemoved{Cookie: r.u64(), Priority: r.u16(), Reason: r.u8(), TableID: r.u8()}
		m.DurationSec, m.DurationNsec = r.u32(), r.u32()
		m.IdleTimeout, m.HardTimeout = r.u16(), r.u16()
		m.PacketCount, m.ByteCount = r.u64(), r.u64()
		m.Match = readMatch(r)
		return m, r.err
	})
}

// Packet-in reasons (ofp_packet_in_reason).
const (
	PacketInNoMatch    uint8 = 0
	PacketInAction     uint8 = 1
	PacketInInvalidTTL uint8 = 2
)

// PacketIn carries a packet to the controller. Match holds the pipeline
// fields (in_port, metadata, registers OVS adds...).
type PacketIn struct {
	BufferID uint32
	TotalLen uint16
	Reason   uint8
	TableID  uint8
	Cookie   uint64
	Match    Match
	Data     []byte
}

// InPort returns the packet's ingress port from the match (0 if absent).
func (m PacketIn) InPort() uint32 {
	if f, ok := m.Match.Lookup(IDInPort); ok {
		return uint32(f.Uint())
	}
	return 0
}

func (PacketIn) Type() MsgType { return TypePacketIn }
func (m PacketIn) appendBody(b []byte) ([]byte, error) {
	b = put32(b, m.BufferID)
	b = put8(put8(put16(b, m.TotalLen), m.Reason), m.TableID)
	b = put64(b, m.Cookie)
	b, err := appendMatch(b, m.Match)
	if err != nil {
		return b, err
	}
	return append(pad(b, 2), m.Data...), nil
}
func (m PacketIn) String() string {
	return fmt.Sprintf("PACKET_IN table=%d cookie=%#x reason=%d total_len=%d buffer=%#x %s data=%d bytes",
		m.TableID, m.Cookie, m.Reason, m.TotalLen, m.BufferID, m.Match, len(m.Data))
}

func init() {
	register(TypePacketIn, func(r *reader) (Message, error) {
		m := PacketIn{BufferID: r.u32(), TotalLen: r.u16(), Reason: r.u8(), TableID: r.u8(), Cookie: r.u64()}
		m.Match = readMatch(r)
		r.skip(2)
		m.Data = r.rest()
		return m, r.err
	})
}

// PacketOut sends a packet (Data, or a buffered one) through Actions.
// InPort is the packet's notional ingress port (PortController when none).
type PacketOut struct {
	BufferID uint32
	InPort   uint32
	Actions  []Action
	Data     []byte
}

func (PacketOut) Type() MsgType { return TypePacketOut }
func (m PacketOut) appendBody(b []byte) ([]byte, error) {
	b = put32(put32(b, m.BufferID), m.InPort)
	at := len(b)
	b = pad(put16(b, 0), 6)
	start := len(b)
	b, err := appendActions(b, m.Actions)
	if err != nil {
		return b, err
	}
	if err := patch16(b, at, len(b)-start); err != nil {
		return b, fmt.Errorf("packet_out actions: %w", err)
	}
	return append(b, m.Data...), nil
}
func (m PacketOut) String() string {
	return fmt.Sprintf("PACKET_OUT in_port=%s buffer=%#x actions=%s data=%d bytes", PortString(m.InPort), m.BufferID, ActionsString(m.Actions), len(m.Data))
}

func init() {
	register(TypePacketOut, func(r *reader) (Message, error) {
		m := PacketOut{BufferID: r.u32(), InPort: r.u32()}
		n := int(r.u16())
		r.skip(6)
		acts := r.take(n)
		if r.err != nil {
			return nil, fmt.Errorf("%w: packet_out actions length %d exceeds message", ErrMalformed, n)
		}
		var err error
		if m.Actions, err = readActions("packet_out", acts); err != nil {
			return nil, err
		}
		m.Data = r.rest()
		return m, nil
	})
}
