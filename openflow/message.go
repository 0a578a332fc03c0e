package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
)

// Version is the OpenFlow wire version this package speaks (1.3).
const Version uint8 = 4

// HeaderLen is the size of ofp_header.
const HeaderLen = 8

// MaxMessageLen is the largest message the 16-bit length field allows.
const MaxMessageLen = 0xffff

// MsgType is ofp_type.
type MsgType uint8

// Message types (OpenFlow 1.3).
const (
	TypeHello                 MsgType = 0
	TypeError                 MsgType = 1
	TypeEchoRequest           MsgType = 2
	TypeEchoReply             MsgType = 3
	TypeExperimenter          MsgType = 4
	TypeFeaturesRequest       MsgType = 5
	TypeFeaturesReply         MsgType = 6
	TypeGetConfigRequest      MsgType = 7
	TypeGetConfigReply        MsgType = 8
	TypeSetConfig             MsgType = 9
	TypePacketIn              MsgType = 10
	TypeFlowRemoved           MsgType = 11
	TypePortStatus            MsgType = 12
	TypePacketOut             MsgType = 13
	TypeFlowMod               MsgType = 14
	TypeGroupMod              MsgType = 15
	TypePortMod               MsgType = 16
	TypeTableMod              MsgType = 17
	TypeMultipartRequest      MsgType = 18
	TypeMultipartReply        MsgType = 19
	TypeBarrierRequest        MsgType = 20
	TypeBarrierReply          MsgType = 21
	TypeQueueGetConfigRequest MsgType = 22
	TypeQueueGetConfigReply   MsgType = 23
	TypeRoleRequest           MsgType = 24
	TypeRoleReply             MsgType = 25
	TypeGetAsyncRequest       MsgType = 26
	TypeGetAsyncReply         MsgType = 27
	TypeSetAsync              MsgType = 28
	TypeMeterMod              MsgType = 29
)

var msgTypeNames = [...]string{
	"HELLO", "ERROR", "ECHO_REQUEST", "ECHO_REPLY", "EXPERIMENTER", "FEATURES_REQUEST",
	"FEATURES_REPLY", "GET_CONFIG_REQUEST", "GET_CONFIG_REPLY", "SET_CONFIG", "PACKET_IN",
	"FLOW_REMOVED", "PORT_STATUS", "PACKET_OUT", "FLOW_MOD", "GROUP_MOD", "PORT_MOD",
	"TABLE_MOD", "MULTIPART_REQUEST", "MULTIPART_REPLY", "BARRIER_REQUEST", "BARRIER_REPLY",
	"QUEUE_GET_CONFIG_REQUEST", "QUEUE_GET_CONFIG_REPLY", "ROLE_REQUEST", "ROLE_REPLY",
	"GET_ASYNC_REQUEST", "GET_ASYNC_REPLY", "SET_ASYNC", "METER_MOD",
}

func (t MsgType) String() string {
	if int(t) < len(msgTypeNames) {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("TYPE_%d", uint8(t))
}

// Message is any OpenFlow message this package can encode or decode.
type Message interface {
	Type() MsgType
}

// bodyMessage is implemented by every message type of this package.
type bodyMessage interface {
	Message
	appendBody(b []byte) ([]byte, error)
}

// Header is ofp_header.
type Header struct {
	Version uint8
	Type    MsgType
	Length  uint16
	Xid     uint32
}

// ParseHeader decodes the 8-byte header at the start of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("%w: header needs %d bytes, have %d", ErrTruncated, HeaderLen, len(b))
	}
	return Header{Version: b[0], Type: MsgType(b[1]), Length: binary.BigEndian.Uint16(b[2:]), Xid: binary.BigEndian.Uint32(b[4:])}, nil
}

// Marshal encodes m with the given transaction ID.
func Marshal(m Message, xid uint32) ([]byte, error) {
	return AppendMarshal(make([]byte, 0, 64), m, xid)
}

// AppendMarshal appends m, encoded with the given transaction ID, to b.
// On error b is returned unchanged.
func AppendMarshal(b []byte, m Message, xid uint32) ([]byte, error) {
	bm, ok := m.(bodyMessage)
	if !ok || m == nil {
		return b, fmt.Errorf("%w: cannot encode %T", ErrUnsupported, m)
	}
	start := len(b)
	out := append(b, make([]byte, HeaderLen)...)
	out[start] = Version
	out[start+1] = byte(m.Type())
	binary.BigEndian.PutUint32(out[start+4:], xid)
	out, err := bm.appendBody(out)
	if err != nil {
		return b, fmt.Errorf("openflow: encode %s: %w", m.Type(), err)
	}
	if n := len(out) - start; n > MaxMessageLen {
		return b, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLong, m.Type(), n, MaxMessageLen)
	}
	binary.BigEndian.PutUint16(out[start+2:], uint16(len(out)-start))
	return out, nil
}

// decoders maps each implemented message type to its body decoder. A type
// missing here is rejected with ErrUnsupported.
var decoders = map[MsgType]func(r *reader) (Message, error){}

// register installs the body decoder of a message type. Decoders build
// values; register wraps them so that Unmarshal hands out pointers
// (*FlowMod, *PacketIn, ...), the form callers type-switch on.
func register(t MsgType, f func(r *reader) (Message, error)) {
	decoders[t] = func(r *reader) (Message, error) {
		m, err := f(r)
		if err != nil || m == nil {
			return nil, err
		}
		v := reflect.ValueOf(m)
		if v.Kind() == reflect.Pointer {
			return m, nil
		}
		p := reflect.New(v.Type())
		p.Elem().Set(v)
		return p.Interface().(Message), nil
	}
}

// Unmarshal decodes exactly one whole message into a pointer to its struct
// (*FlowMod, *PacketIn, *ErrorMsg, ...). It never panics; every malformed
// input yields an error wrapping ErrTruncated, ErrMalformed or
// ErrUnsupported. Decoded messages do not alias b. Marshal accepts both
// pointers and values.
func Unmarshal(b []byte) (m Message, xid uint32, err error) {
	h, err := ParseHeader(b)
	if err != nil {
		return nil, 0, err
	}
	if int(h.Length) < HeaderLen {
		return nil, h.Xid, fmt.Errorf("%w: header length %d shorter than the header", ErrMalformed, h.Length)
	}
	if int(h.Length) > len(b) {
		return nil, h.Xid, fmt.Errorf("%w: %s: header length %d, have %d bytes", ErrTruncated, h.Type, h.Length, len(b))
	}
	if int(h.Length) < len(b) {
		return nil, h.Xid, fmt.Errorf("%w: %s: header length %d, but %d bytes given", ErrMalformed, h.Type, h.Length, len(b))
	}
	// Hello's layout is the same in every version (it is how versions are
	// negotiated), so a hello from a newer or older peer still decodes.
	if h.Version != Version && h.Type != TypeHello {
		return nil, h.Xid, fmt.Errorf("%w: version %#x, want %#x (OpenFlow 1.3)", ErrMalformed, h.Version, Version)
	}
	dec := decoders[h.Type]
	if dec == nil {
		return nil, h.Xid, fmt.Errorf("%w: message type %s", ErrUnsupported, h.Type)
	}
	r := newReader(h.Type.String(), b[HeaderLen:])
	m, err = dec(r)
	if err == nil {
		err = r.done()
	}
	if err != nil {
		return nil, h.Xid, fmt.Errorf("openflow: decode %s: %w", h.Type, err)
	}
	return m, h.Xid, nil
}

// ReadMessage reads one length-framed message from r. The length is
// bounded by the 16-bit header field, so a hostile peer can make it
// allocate at most 64 KiB.
func ReadMessage(r io.Reader) ([]byte, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header cut short: %w", ErrTruncated, err)
		}
		return nil, err
	}
	h, _ := ParseHeader(hdr[:])
	if h.Version == 0 || h.Version > 0x06 {
		return nil, fmt.Errorf("%w: version byte %#x is not an OpenFlow version", ErrMalformed, h.Version)
	}
	if h.Length < HeaderLen {
		return nil, fmt.Errorf("%w: header length %d shorter than the header", ErrMalformed, h.Length)
	}
	b := make([]byte, h.Length)
	copy(b, hdr[:])
	if _, err := io.ReadFull(r, b[HeaderLen:]); err != nil {
		return nil, fmt.Errorf("%w: %s body of %d bytes: %w", ErrTruncated, h.Type, h.Length, err)
	}
	return b, nil
}

// --- Simple messages ----------------------------------------------------

// Hello starts a connection. Versions is the version bitmap element (nil:
// no bitmap element). Elements keeps any other hello elements verbatim.
type Hello struct {
	Versions []uint8
	Elements []HelloElement
}

// HelloElement is a hello element other than the version bitmap.
type HelloElement struct {
	Type uint16
	Data []byte // without header or padding
}

const helloElemVersionBitmap = 1

func (Hello) Type() MsgType { return TypeHello }
func (m Hello) appendBody(b []byte) ([]byte, error) {
	if m.Versions != nil {
		var words []uint32
		for _, v := range m.Versions {
			for int(v)/32 >= len(words) {
				words = append(words, 0)
			}
			words[v/32] |= 1 << (v % 32)
		}
		start := len(b)
		b = put16(b, helloElemVersionBitmap)
		b = put16(b, uint16(4+4*len(words)))
		for _, w := range words {
			b = put32(b, w)
		}
		b = padTo8(b, start)
	}
	for _, e := range m.Elements {
		start := len(b)
		if len(e.Data) > 0xffff-4 {
			return b, fmt.Errorf("%w: hello element of %d bytes", ErrTooLong, len(e.Data))
		}
		b = put16(b, e.Type)
		b = put16(b, uint16(4+len(e.Data)))
		b = append(b, e.Data...)
		b = padTo8(b, start)
	}
	return b, nil
}

// Supports reports whether the peer's hello allows OpenFlow version v.
// Without a bitmap, the header version is the peer's highest version; the
// caller handles that case.
func (m Hello) Supports(v uint8) bool {
	for _, x := range m.Versions {
		if x == v {
			return true
		}
	}
	return false
}

func (m Hello) String() string { return fmt.Sprintf("HELLO versions=%v", m.Versions) }

func init() {
	register(TypeHello, func(r *reader) (Message, error) {
		var m Hello
		for r.remaining() > 0 {
			typ := r.u16()
			n := int(r.u16())
			if r.err != nil {
				return nil, r.err
			}
			if n < 4 {
				return nil, fmt.Errorf("%w: hello element length %d", ErrMalformed, n)
			}
			data := r.take(n - 4)
			// The last element's padding may be missing in the wild.
			r.skip(min(pad8(n), r.remaining()))
			if r.err != nil {
				return nil, r.err
			}
			if typ == helloElemVersionBitmap && m.Versions == nil {
				if len(data)%4 != 0 {
					return nil, fmt.Errorf("%w: version bitmap length %d", ErrMalformed, len(data))
				}
				m.Versions = []uint8{}
				for i := 0; i < len(data); i += 4 {
					w := binary.BigEndian.Uint32(data[i:])
					for bit := 0; bit < 32; bit++ {
						if w&(1<<bit) != 0 && i*8+bit < 256 {
							m.Versions = append(m.Versions, uint8(i*8+bit))
						}
					}
				}
				continue
			}
			m.Elements = append(m.Elements, HelloElement{Type: typ, Data: append([]byte(nil), data...)})
		}
		return m, nil
	})
}

// EchoRequest asks the peer to echo Data back.
type EchoRequest struct{ Data []byte }

func (EchoRequest) Type() MsgType                         { return TypeEchoRequest }
func (m EchoRequest) appendBody(b []byte) ([]byte, error) { return append(b, m.Data...), nil }
func (m EchoRequest) String() string                      { return fmt.Sprintf("ECHO_REQUEST %d bytes", len(m.Data)) }

// EchoReply answers an EchoRequest.
type EchoReply struct{ Data []byte }

func (EchoReply) Type() MsgType                         { return TypeEchoReply }
func (m EchoReply) appendBody(b []byte) ([]byte, error) { return append(b, m.Data...), nil }
func (m EchoReply) String() string                      { return fmt.Sprintf("ECHO_REPLY %d bytes", len(m.Data)) }

// Experimenter is an experimenter (vendor) message kept raw.
type Experimenter struct {
	Experimenter, ExpType uint32
	Data                  []byte
}

func (Experimenter) Type() MsgType { return TypeExperimenter }
func (m Experimenter) appendBody(b []byte) ([]byte, error) {
	return append(put32(put32(b, m.Experimenter), m.ExpType), m.Data...), nil
}
func (m Experimenter) String() string {
	return fmt.Sprintf("EXPERIMENTER experimenter=%#x exp_type=%d %d bytes", m.Experimenter, m.ExpType, len(m.Data))
}

// emptyBody is the body of messages that have none.
func emptyBody(b []byte) ([]byte, error) { return b, nil }

// FeaturesRequest asks for the switch's datapath ID and capabilities.
type FeaturesRequest struct{}

func (FeaturesRequest) Type() MsgType                       { return TypeFeaturesRequest }
func (FeaturesRequest) appendBody(b []byte) ([]byte, error) { return emptyBody(b) }
func (FeaturesRequest) String() string                      { return "FEATURES_REQUEST" }

// Capabilities bits (ofp_capabilities).
const (
	CapFlowStats   uint32 = 1 << 0
	CapTableStats  uint32 = 1 << 1
	CapPortStats   uint32 = 1 << 2
	CapGroupStats  uint32 = 1 << 3
	CapIPReasm     uint32 = 1 << 5
	CapQueueStats  uint32 = 1 << 6
	CapPortBlocked uint32 = 1 << 8
)

// FeaturesReply describes the switch.
type FeaturesReply struct {
	DatapathID   uint64
	NBuffers     uint32
	NTables      uint8
	AuxiliaryID  uint8
	Capabilities uint32
	Reserved     uint32
}

func (FeaturesReply) Type() MsgType { return TypeFeaturesReply }
func (m FeaturesReply) appendBody(b []byte) ([]byte, error) {
	b = put64(b, m.DatapathID)
	b = put32(b, m.NBuffers)
	b = put8(put8(b, m.NTables), m.AuxiliaryID)
	b = pad(b, 2)
	return put32(put32(b, m.Capabilities), m.Reserved), nil
}
func (m FeaturesReply) String() string {
	return fmt.Sprintf("FEATURES_REPLY dpid=%016x n_tables=%d n_buffers=%d aux=%d capabilities=%#x", m.DatapathID, m.NTables, m.NBuffers, m.AuxiliaryID, m.Capabilities)
}

// GetConfigRequest asks for the switch configuration.
type GetConfigRequest struct{}

func (GetConfigRequest) Type() MsgType                       { return TypeGetConfigRequest }
func (GetConfigRequest) appendBody(b []byte) ([]byte, error) { return emptyBody(b) }
func (GetConfigRequest) String() string                      { return "GET_CONFIG_REQUEST" }

// Switch configuration flags (ofp_config_flags).
const (
	ConfigFragNormal uint16 = 0
	ConfigFragDrop   uint16 = 1
	ConfigFragReasm  uint16 = 2
)

// SwitchConfig is the body of GetConfigReply and SetConfig.
type SwitchConfig struct {
	Flags       uint16
	MissSendLen uint16 // bytes of a table-miss packet sent to the controller
}

func (c SwitchConfig) appendBody(b []byte) ([]byte, error) {
	return put16(put16(b, c.Flags), c.MissSendLen), nil
}

func readSwitchConfig(r *reader) SwitchConfig {
	return SwitchConfig{Flags: r.u16(), MissSendLen: r.u16()}
}

// GetConfigReply carries the switch configuration.
type GetConfigReply SwitchConfig

func (GetConfigReply) Type() MsgType                         { return TypeGetConfigReply }
func (m GetConfigReply) appendBody(b []byte) ([]byte, error) { return SwitchConfig(m).appendBody(b) }
func (m GetConfigReply) String() string {
	return fmt.Sprintf("GET_CONFIG_REPLY flags=%#x miss_send_len=%d", m.Flags, m.MissSendLen)
}

// SetConfig sets the switch configuration.
type SetConfig SwitchConfig

func (SetConfig) Type() MsgType                         { return TypeSetConfig }
func (m SetConfig) appendBody(b []byte) ([]byte, error) { return SwitchConfig(m).appendBody(b) }
func (m SetConfig) String() string {
	return fmt.Sprintf("SET_CONFIG flags=%#x miss_send_len=%d", m.Flags, m.MissSendLen)
}

// BarrierRequest asks the switch to finish everything sent before it.
type BarrierRequest struct{}

func (BarrierRequest) Type() MsgType                       { return TypeBarrierRequest }
func (BarrierRequest) appendBody(b []byte) ([]byte, error) { return emptyBody(b) }
func (BarrierRequest) String() string                      { return "BARRIER_REQUEST" }

// BarrierReply confirms a BarrierRequest.
type BarrierReply struct{}

func (BarrierReply) Type() MsgType                       { return TypeBarrierReply }
func (BarrierReply) appendBody(b []byte) ([]byte, error) { return emptyBody(b) }
func (BarrierReply) String() string                      { return "BARRIER_REPLY" }

// Controller roles (ofp_controller_role).
const (
	RoleNoChange uint32 = 0
	RoleEqual    uint32 = 1
	RoleMaster   uint32 = 2
	RoleSlave    uint32 = 3
)

// Role is the body of RoleRequest and RoleReply.
type Role struct {
	Role         uint32
	GenerationID uint64
}

func (m Role) appendBody(b []byte) ([]byte, error) {
	return put64(pad(put32(b, m.Role), 4), m.GenerationID), nil
}

func readRole(r *reader) Role {
	m := Role{Role: r.u32()}
	r.skip(4)
	m.GenerationID = r.u64()
	return m
}

// RoleRequest changes or queries the controller's role.
type RoleRequest Role

func (RoleRequest) Type() MsgType                         { return TypeRoleRequest }
func (m RoleRequest) appendBody(b []byte) ([]byte, error) { return Role(m).appendBody(b) }
func (m RoleRequest) String() string {
	return fmt.Sprintf("ROLE_REQUEST role=%d generation_id=%d", m.Role, m.GenerationID)
}

// RoleReply reports the controller's role.
type RoleReply Role

func (RoleReply) Type() MsgType                         { return TypeRoleReply }
func (m RoleReply) appendBody(b []byte) ([]byte, error) { return Role(m).appendBody(b) }
func (m RoleReply) String() string {
	return fmt.Sprintf("ROLE_REPLY role=%d generation_id=%d", m.Role, m.GenerationID)
}

// GetAsyncRequest asks which asynchronous messages the switch sends.
type GetAsyncRequest struct{}

func (GetAsyncRequest) Type() MsgType                       { return TypeGetAsyncRequest }
func (GetAsyncRequest) appendBody(b []byte) ([]byte, error) { return emptyBody(b) }
func (GetAsyncRequest) String() string                      { return "GET_ASYNC_REQUEST" }

// AsyncConfig is the body of GetAsyncReply and SetAsync: index 0 is for
// the master/equal role, index 1 for slave; each bit is a reason.
type AsyncConfig struct {
	PacketInMask    [2]uint32
	PortStatusMask  [2]uint32
	FlowRemovedMask [2]uint32
}

func (m AsyncConfig) appendBody(b []byte) ([]byte, error) {
	for _, w := range [...]uint32{m.PacketInMask[0], m.PacketInMask[1], m.PortStatusMask[0], m.PortStatusMask[1], m.FlowRemovedMask[0], m.FlowRemovedMask[1]} {
		b = put32(b, w)
	}
	return b, nil
}

func readAsyncConfig(r *reader) AsyncConfig {
	return AsyncConfig{
		PacketInMask:    [2]uint32{r.u32(), r.u32()},
		PortStatusMask:  [2]uint32{r.u32(), r.u32()},
		FlowRemovedMask: [2]uint32{r.u32(), r.u32()},
	}
}

func (m AsyncConfig) String() string {
	return fmt.Sprintf("packet_in=%#x/%#x port_status=%#x/%#x flow_removed=%#x/%#x",
		m.PacketInMask[0], m.PacketInMask[1], m.PortStatusMask[0], m.PortStatusMask[1], m.FlowRemovedMask[0], m.FlowRemovedMask[1])
}

// GetAsyncReply reports the asynchronous message configuration.
type GetAsyncReply AsyncConfig

func (GetAsyncReply) Type() MsgType                         { return TypeGetAsyncReply }
func (m GetAsyncReply) appendBody(b []byte) ([]byte, error) { return AsyncConfig(m).appendBody(b) }
func (m GetAsyncReply) String() string                      { return "GET_ASYNC_REPLY " + AsyncConfig(m).String() }

// SetAsync sets the asynchronous message configuration.
type SetAsync AsyncConfig

func (SetAsync) Type() MsgType                         { return TypeSetAsync }
func (m SetAsync) appendBody(b []byte) ([]byte, error) { return AsyncConfig(m).appendBody(b) }
func (m SetAsync) String() string                      { return "SET_ASYNC " + AsyncConfig(m).String() }

// TableMod configures a table (OpenFlow 1.3 defines no config bits; OVS
// accepts it for compatibility).
type TableMod struct {
	TableID uint8
	Config  uint32
}

func (TableMod) Type() MsgType { return TypeTableMod }
func (m TableMod) appendBody(b []byte) ([]byte, error) {
	return put32(pad(put8(b, m.TableID), 3), m.Config), nil
}
func (m TableMod) String() string {
	return fmt.Sprintf("TABLE_MOD table=%d config=%#x", m.TableID, m.Config)
}

func init() {
	register(TypeEchoRequest, func(r *reader) (Message, error) { return EchoRequest{Data: r.rest()}, nil })
	register(TypeEchoReply, func(r *reader) (Message, error) { return EchoReply{Data: r.rest()}, nil })
	register(TypeExperimenter, func(r *reader) (Message, error) {
		return Experimenter{Experimenter: r.u32(), ExpType: r.u32(), Data: r.rest()}, r.err
	})
	register(TypeFeaturesRequest, func(r *reader) (Message, error) { return FeaturesRequest{}, nil })
	register(TypeFeaturesReply, func(r *reader) (Message, error) {
		m := FeaturesReply{DatapathID: r.u64(), NBuffers: r.u32(), NTables: r.u8(), AuxiliaryID: r.u8()}
		r.skip(2)
		m.Capabilities = r.u32()
		m.Reserved = r.u32()
		return m, r.err
	})
	register(TypeGetConfigRequest, func(r *reader) (Message, error) { return GetConfigRequest{}, nil })
	register(TypeGetConfigReply, func(r *reader) (Message, error) { return GetConfigReply(readSwitchConfig(r)), r.err })
	register(TypeSetConfig, func(r *reader) (Message, error) { return SetConfig(readSwitchConfig(r)), r.err })
	register(TypeBarrierRequest, func(r *reader) (Message, error) { return BarrierRequest{}, nil })
	register(TypeBarrierReply, func(r *reader) (Message, error) { return BarrierReply{}, nil })
	register(TypeRoleRequest, func(r *reader) (Message, error) { return RoleRequest(readRole(r)), r.err })
	register(TypeRoleReply, func(r *reader) (Message, error) { return RoleReply(readRole(r)), r.err })
	register(TypeGetAsyncRequest, func(r *reader) (Message, error) { return GetAsyncRequest{}, nil })
	register(TypeGetAsyncReply, func(r *reader) (Message, error) { return GetAsyncReply(readAsyncConfig(r)), r.err })
	register(TypeSetAsync, func(r *reader) (Message, error) { return SetAsync(readAsyncConfig(r)), r.err })
	register(TypeTableMod, func(r *reader) (Message, error) {
		m := TableMod{TableID: r.u8()}
		r.skip(3)
		m.Config = r.u32()
		return m, r.err
	})
}
