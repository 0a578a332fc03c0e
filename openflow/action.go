package openflow

import (
	"fmt"
	"strconv"
	"strings"
)

// Reserved port numbers (ofp_port_no).
const (
	PortMax        uint32 = 0xffffff00
	PortInPort     uint32 = 0xfffffff8
	PortTable      uint32 = 0xfffffff9
	PortNormal     uint32 = 0xfffffffa
	PortFlood      uint32 = 0xfffffffb
	PortAll        uint32 = 0xfffffffc
	PortController uint32 = 0xfffffffd
	PortLocal      uint32 = 0xfffffffe
	PortAny        uint32 = 0xffffffff
)

// Other reserved values.
const (
	NoBuffer                 uint32 = 0xffffffff // buffer_id: packet data is in the message
	GroupAll                 uint32 = 0xfffffffc
	GroupAny                 uint32 = 0xffffffff
	GroupMax                 uint32 = 0xffffff00
	ControllerMaxLenNoBuffer uint16 = 0xffff // output to controller: send the whole packet, unbuffered
	TableMax                 uint8  = 0xfe
	TableAll                 uint8  = 0xff
	QueueAll                 uint32 = 0xffffffff
	MeterMax                 uint32 = 0xffff0000
	MeterSlowPath            uint32 = 0xfffffffd
	MeterController          uint32 = 0xfffffffe
	MeterAll                 uint32 = 0xffffffff
)

// PortString prints a port number as ovs-ofctl does ("3", "CONTROLLER").
func PortString(p uint32) string {
	switch p {
	case PortInPort:
		return "IN_PORT"
	case PortTable:
		return "TABLE"
	case PortNormal:
		return "NORMAL"
	case PortFlood:
		return "FLOOD"
	case PortAll:
		return "ALL"
	case PortController:
		return "CONTROLLER"
	case PortLocal:
		return "LOCAL"
	case PortAny:
		return "ANY"
	}
	return strconv.FormatUint(uint64(p), 10)
}

// Action is one OpenFlow action: a standard ofp_action_* or an experimenter
// (Nicira) action.
type Action interface {
	// ActionType is the ofp_action_type (0xffff for experimenter actions).
	ActionType() uint16
	String() string
	// appendBody encodes the action after its 4-byte type/length header.
	appendBody(b []byte) ([]byte, error)
}

// Action types (ofp_action_type).
const (
	ActOutput       uint16 = 0
	ActCopyTTLOut   uint16 = 11
	ActCopyTTLIn    uint16 = 12
	ActSetMplsTTL   uint16 = 15
	ActDecMplsTTL   uint16 = 16
	ActPushVlan     uint16 = 17
	ActPopVlan      uint16 = 18
	ActPushMpls     uint16 = 19
	ActPopMpls      uint16 = 20
	ActSetQueue     uint16 = 21
	ActGroup        uint16 = 22
	ActSetNwTTL     uint16 = 23
	ActDecNwTTL     uint16 = 24
	ActSetField     uint16 = 25
	ActPushPbb      uint16 = 26
	ActPopPbb       uint16 = 27
	ActExperimenter uint16 = 0xffff
)

// ActionOutput sends the packet to a port. MaxLen limits the bytes sent to
// the controller (ControllerMaxLenNoBuffer for all, unbuffered).
type ActionOutput struct {
	Port   uint32
	MaxLen uint16
}

func (ActionOutput) ActionType() uint16 { return ActOutput }
func (a ActionOutput) appendBody(b []byte) ([]byte, error) {
	b = put32(b, a.Port)
	b = put16(b, a.MaxLen)
	return pad(b, 6), nil
}
func (a ActionOutput) String() string {
	if a.Port == PortController {
		return fmt.Sprintf("CONTROLLER:%d", a.MaxLen)
	}
	if a.Port >= PortMax {
		return PortString(a.Port)
	}
	return "output:" + PortString(a.Port)
}

// ActionGroup executes a group.
type ActionGroup struct{ GroupID uint32 }

func (ActionGroup) ActionType() uint16                    { return ActGroup }
func (a ActionGroup) appendBody(b []byte) ([]byte, error) { return put32(b, a.GroupID), nil }
func (a ActionGroup) String() string                      { return fmt.Sprintf("group:%d", a.GroupID) }

// ActionSetQueue sets the output queue.
type ActionSetQueue struct{ QueueID uint32 }

func (ActionSetQueue) ActionType() uint16                    { return ActSetQueue }
func (a ActionSetQueue) appendBody(b []byte) ([]byte, error) { return put32(b, a.QueueID), nil }
func (a ActionSetQueue) String() string                      { return fmt.Sprintf("set_queue:%d", a.QueueID) }

// ActionSetField rewrites a header field. The field must be unmasked in
// OpenFlow 1.3.
type ActionSetField struct{ Field Field }

func (ActionSetField) ActionType() uint16 { return ActSetField }
func (a ActionSetField) appendBody(b []byte) ([]byte, error) {
	start := len(b) - 4
	b, err := appendField(b, a.Field)
	if err != nil {
		return b, fmt.Errorf("set_field: %w", err)
	}
	return padTo8(b, start), nil
}
func (a ActionSetField) String() string {
	return fmt.Sprintf("set_field:%s->%s", a.Field.valueString(), a.Field.ID().ActionName())
}

// SetField is shorthand for ActionSetField{Field: f}.
func SetField(f Field) ActionSetField { return ActionSetField{Field: f} }

// ActionSetNwTTL sets the IP TTL.
type ActionSetNwTTL struct{ TTL uint8 }

func (ActionSetNwTTL) ActionType() uint16                    { return ActSetNwTTL }
func (a ActionSetNwTTL) appendBody(b []byte) ([]byte, error) { return pad(put8(b, a.TTL), 3), nil }
func (a ActionSetNwTTL) String() string                      { return fmt.Sprintf("mod_nw_ttl:%d", a.TTL) }

// ActionSetMplsTTL sets the MPLS TTL.
type ActionSetMplsTTL struct{ TTL uint8 }

func (ActionSetMplsTTL) ActionType() uint16                    { return ActSetMplsTTL }
func (a ActionSetMplsTTL) appendBody(b []byte) ([]byte, error) { return pad(put8(b, a.TTL), 3), nil }
func (a ActionSetMplsTTL) String() string                      { return fmt.Sprintf("set_mpls_ttl(%d)", a.TTL) }

// emptyAction is the body of actions without arguments: 4 bytes of padding.
func emptyAction(b []byte) ([]byte, error) { return pad(b, 4), nil }

// ActionDecNwTTL decrements the IP TTL.
type ActionDecNwTTL struct{}

func (ActionDecNwTTL) ActionType() uint16                  { return ActDecNwTTL }
func (ActionDecNwTTL) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionDecNwTTL) String() string                      { return "dec_ttl" }

// ActionCopyTTLOut copies the TTL outwards (next-to-outermost to outermost).
type ActionCopyTTLOut struct{}

func (ActionCopyTTLOut) ActionType() uint16                  { return ActCopyTTLOut }
func (ActionCopyTTLOut) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionCopyTTLOut) String() string                      { return "copy_ttl_out" }

// ActionCopyTTLIn copies the TTL inwards.
type ActionCopyTTLIn struct{}

func (ActionCopyTTLIn) ActionType() uint16                  { return ActCopyTTLIn }
func (ActionCopyTTLIn) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionCopyTTLIn) String() string                      { return "copy_ttl_in" }

// ActionDecMplsTTL decrements the MPLS TTL.
type ActionDecMplsTTL struct{}

func (ActionDecMplsTTL) ActionType() uint16                  { return ActDecMplsTTL }
func (ActionDecMplsTTL) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionDecMplsTTL) String() string                      { return "dec_mpls_ttl" }

// ActionPopVlan removes the outer VLAN tag.
type ActionPopVlan struct{}

func (ActionPopVlan) ActionType() uint16                  { return ActPopVlan }
func (ActionPopVlan) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionPopVlan) String() string                      { return "pop_vlan" }

// ActionPopPbb removes the outer PBB tag.
type ActionPopPbb struct{}

func (ActionPopPbb) ActionType() uint16                  { return ActPopPbb }
func (ActionPopPbb) appendBody(b []byte) ([]byte, error) { return emptyAction(b) }
func (ActionPopPbb) String() string                      { return "pop_pbb" }

// etherTypeBody is the body of push/pop actions: ethertype and padding.
func etherTypeBody(b []byte, t uint16) ([]byte, error) { return pad(put16(b, t), 2), nil }

// ActionPushVlan pushes a VLAN tag with the given TPID.
type ActionPushVlan struct{ EtherType uint16 }

func (ActionPushVlan) ActionType() uint16                    { return ActPushVlan }
func (a ActionPushVlan) appendBody(b []byte) ([]byte, error) { return etherTypeBody(b, a.EtherType) }
func (a ActionPushVlan) String() string                      { return fmt.Sprintf("push_vlan:%#04x", a.EtherType) }

// ActionPushMpls pushes an MPLS label stack entry.
type ActionPushMpls struct{ EtherType uint16 }

func (ActionPushMpls) ActionType() uint16                    { return ActPushMpls }
func (a ActionPushMpls) appendBody(b []byte) ([]byte, error) { return etherTypeBody(b, a.EtherType) }
func (a ActionPushMpls) String() string                      { return fmt.Sprintf("push_mpls:%#04x", a.EtherType) }

// ActionPushPbb pushes a PBB service tag.
type ActionPushPbb struct{ EtherType uint16 }

func (ActionPushPbb) ActionType() uint16                    { return ActPushPbb }
func (a ActionPushPbb) appendBody(b []byte) ([]byte, error) { return etherTypeBody(b, a.EtherType) }
func (a ActionPushPbb) String() string                      { return fmt.Sprintf("push_pbb:%#04x", a.EtherType) }

// ActionPopMpls pops the outer MPLS entry; EtherType is the payload's.
type ActionPopMpls struct{ EtherType uint16 }

func (ActionPopMpls) ActionType() uint16                    { return ActPopMpls }
func (a ActionPopMpls) appendBody(b []byte) ([]byte, error) { return etherTypeBody(b, a.EtherType) }
func (a ActionPopMpls) String() string                      { return fmt.Sprintf("pop_mpls:%#04x", a.EtherType) }

// ActionExperimenter is an experimenter action the codec does not decode
// into a typed struct. Data is everything after the experimenter ID,
// including padding, so it re-encodes byte for byte. Its length (8+len(Data))
// must be a multiple of 8.
type ActionExperimenter struct {
	Experimenter uint32
	Data         []byte
}

func (ActionExperimenter) ActionType() uint16 { return ActExperimenter }
func (a ActionExperimenter) appendBody(b []byte) ([]byte, error) {
	if (8+len(a.Data))%8 != 0 {
		return b, fmt.Errorf("%w: experimenter action length %d is not a multiple of 8", ErrInvalid, 8+len(a.Data))
	}
	b = put32(b, a.Experimenter)
	return append(b, a.Data...), nil
}
func (a ActionExperimenter) String() string {
	if a.Experimenter == ExperimenterNicira && len(a.Data) >= 2 {
		return fmt.Sprintf("nx_action(subtype=%d,0x%x)", uint16(a.Data[0])<<8|uint16(a.Data[1]), a.Data[2:])
	}
	return fmt.Sprintf("experimenter(%#x,0x%x)", a.Experimenter, a.Data)
}

// appendActions encodes a list of actions, each with its header.
func appendActions(b []byte, acts []Action) ([]byte, error) {
	return appendTLVs(b, "action", acts, Action.ActionType, Action.appendBody)
}

// readActions decodes actions until the data is used up.
func readActions(ctx string, data []byte) ([]Action, error) {
	return readTLVs(ctx, "action", data, decodeAction)
}

// decodeAction decodes one action body (after type and length).
func decodeAction(ctx string, typ uint16, body []byte) (Action, error) {
	r := newReader(fmt.Sprintf("%s: action type %d", ctx, typ), body)
	var a Action
	switch typ {
	case ActOutput:
		o := ActionOutput{Port: r.u32(), MaxLen: r.u16()}
		r.skip(6)
		a = o
	case ActGroup:
		a = ActionGroup{GroupID: r.u32()}
	case ActSetQueue:
		a = ActionSetQueue{QueueID: r.u32()}
	case ActSetNwTTL:
		a = ActionSetNwTTL{TTL: r.u8()}
		r.skip(3)
	case ActSetMplsTTL:
		a = ActionSetMplsTTL{TTL: r.u8()}
		r.skip(3)
	case ActDecNwTTL, ActCopyTTLOut, ActCopyTTLIn, ActDecMplsTTL, ActPopVlan, ActPopPbb:
		r.skip(4)
		a = map[uint16]Action{
			ActDecNwTTL: ActionDecNwTTL{}, ActCopyTTLOut: ActionCopyTTLOut{}, ActCopyTTLIn: ActionCopyTTLIn{},
			ActDecMplsTTL: ActionDecMplsTTL{}, ActPopVlan: ActionPopVlan{}, ActPopPbb: ActionPopPbb{},
		}[typ]
	case ActPushVlan, ActPushMpls, ActPushPbb, ActPopMpls:
		t := r.u16()
		r.skip(2)
		switch typ {
		case ActPushVlan:
			a = ActionPushVlan{t}
		case ActPushMpls:
			a = ActionPushMpls{t}
		case ActPushPbb:
			a = ActionPushPbb{t}
		default:
			a = ActionPopMpls{t}
		}
	case ActSetField:
		f := readField(r)
		// The rest is padding up to the 8-byte boundary.
		if r.err == nil && r.remaining() >= 8 {
			r.fail("set_field has %d bytes after its field", r.remaining())
		}
		r.skip(r.remaining())
		a = ActionSetField{Field: f}
	case ActExperimenter:
		exp := r.u32()
		data := r.rest()
		if r.err != nil {
			return nil, r.err
		}
		return decodeExperimenterAction(ctx, exp, data)
	default:
		return nil, fmt.Errorf("%w: %s: action type %d", ErrUnsupported, ctx, typ)
	}
	if err := r.done(); err != nil {
		return nil, err
	}
	return a, nil
}

// ActionsString prints actions comma-separated as ovs-ofctl does; an empty
// list prints as "drop".
func ActionsString(acts []Action) string {
	if len(acts) == 0 {
		return "drop"
	}
	s := make([]string, len(acts))
	for i, a := range acts {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
