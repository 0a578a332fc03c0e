package openflow

import (
	"encoding/binary"
	"fmt"
)

// Error types (ofp_error_type).
const (
	ErrTypeHelloFailed         uint16 = 0
	ErrTypeBadRequest          uint16 = 1
	ErrTypeBadAction           uint16 = 2
	ErrTypeBadInstruction      uint16 = 3
	ErrTypeBadMatch            uint16 = 4
	ErrTypeFlowModFailed       uint16 = 5
	ErrTypeGroupModFailed      uint16 = 6
	ErrTypePortModFailed       uint16 = 7
	ErrTypeTableModFailed      uint16 = 8
	ErrTypeQueueOpFailed       uint16 = 9
	ErrTypeSwitchConfigFailed  uint16 = 10
	ErrTypeRoleRequestFailed   uint16 = 11
	ErrTypeMeterModFailed      uint16 = 12
	ErrTypeTableFeaturesFailed uint16 = 13
	ErrTypeExperimenter        uint16 = 0xffff
)

// Frequently checked error codes.
const (
	HelloFailedIncompatible uint16 = 0
	BadRequestBadType       uint16 = 1
	BadRequestBadMultipart  uint16 = 2
	BadRequestBadLen        uint16 = 6
	FlowModFailedOverlap    uint16 = 3
	MeterModMeterExists     uint16 = 1
	MeterModUnknownMeter    uint16 = 3
)

// errorNames gives, per error type, its name, the code prefix and the
// code names, as written in the OpenFlow 1.3 specification.
var errorNames = map[uint16]struct {
	name, prefix string
	codes        []string
}{
	0:  {"OFPET_HELLO_FAILED", "OFPHFC_", []string{"INCOMPATIBLE", "EPERM"}},
	1:  {"OFPET_BAD_REQUEST", "OFPBRC_", []string{"BAD_VERSION", "BAD_TYPE", "BAD_MULTIPART", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "EPERM", "BAD_LEN", "BUFFER_EMPTY", "BUFFER_UNKNOWN", "BAD_TABLE_ID", "IS_SLAVE", "BAD_PORT", "BAD_PACKET", "MULTIPART_BUFFER_OVERFLOW"}},
	2:  {"OFPET_BAD_ACTION", "OFPBAC_", []string{"BAD_TYPE", "BAD_LEN", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_OUT_PORT", "BAD_ARGUMENT", "EPERM", "TOO_MANY", "BAD_QUEUE", "BAD_OUT_GROUP", "MATCH_INCONSISTENT", "UNSUPPORTED_ORDER", "BAD_TAG", "BAD_SET_TYPE", "BAD_SET_LEN", "BAD_SET_ARGUMENT"}},
	3:  {"OFPET_BAD_INSTRUCTION", "OFPBIC_", []string{"UNKNOWN_INST", "UNSUP_INST", "BAD_TABLE_ID", "UNSUP_METADATA", "UNSUP_METADATA_MASK", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_LEN", "EPERM"}},
	4:  {"OFPET_BAD_MATCH", "OFPBMC_", []string{"BAD_TYPE", "BAD_LEN", "BAD_TAG", "BAD_DL_ADDR_MASK", "BAD_NW_ADDR_MASK", "BAD_WILDCARDS", "BAD_FIELD", "BAD_VALUE", "BAD_MASK", "BAD_PREREQ", "DUP_FIELD", "EPERM"}},
	5:  {"OFPET_FLOW_MOD_FAILED", "OFPFMFC_", []string{"UNKNOWN", "TABLE_FULL", "BAD_TABLE_ID", "OVERLAP", "EPERM", "BAD_TIMEOUT", "BAD_COMMAND", "BAD_FLAGS"}},
	6:  {"OFPET_GROUP_MOD_FAILED", "OFPGMFC_", []string{"GROUP_EXISTS", "INVALID_GROUP", "WEIGHT_UNSUPPORTED", "OUT_OF_GROUPS", "OUT_OF_BUCKETS", "CHAINING_UNSUPPORTED", "WATCH_UNSUPPORTED", "LOOP", "UNKNOWN_GROUP", "CHAINED_GROUP", "BAD_TYPE", "BAD_COMMAND", "BAD_BUCKET", "BAD_WATCH", "EPERM"}},
	7:  {"OFPET_PORT_MOD_FAILED", "OFPPMFC_", []string{"BAD_PORT", "BAD_HW_ADDR", "BAD_CONFIG", "BAD_ADVERTISE", "EPERM"}},
	8:  {"OFPET_TABLE_MOD_FAILED", "OFPTMFC_", []string{"BAD_TABLE", "BAD_CONFIG", "EPERM"}},
	9:  {"OFPET_QUEUE_OP_FAILED", "OFPQOFC_", []string{"BAD_PORT", "BAD_QUEUE", "EPERM"}},
	10: {"OFPET_SWITCH_CONFIG_FAILED", "OFPSCFC_", []string{"BAD_FLAGS", "BAD_LEN", "EPERM"}},
	11: {"OFPET_ROLE_REQUEST_FAILED", "OFPRRFC_", []string{"STALE", "UNSUP", "BAD_ROLE"}},
	12: {"OFPET_METER_MOD_FAILED", "OFPMMFC_", []string{"UNKNOWN", "METER_EXISTS", "INVALID_METER", "UNKNOWN_METER", "BAD_COMMAND", "BAD_FLAGS", "BAD_RATE", "BAD_BURST", "BAD_BAND", "BAD_BAND_VALUE", "OUT_OF_METERS", "OUT_OF_BANDS"}},
	13: {"OFPET_TABLE_FEATURES_FAILED", "OFPTFFC_", []string{"BAD_TABLE", "BAD_METADATA", "BAD_TYPE", "BAD_LEN", "BAD_ARGUMENT", "EPERM"}},
}

// ErrorMsg is an error reported by the switch. For ErrType ==
// ErrTypeExperimenter, Code is the experimenter's exp_type and Experimenter
// is set. Data usually starts with the request that failed.
type ErrorMsg struct {
	ErrType      uint16
	Code         uint16
	Experimenter uint32 // only for ErrTypeExperimenter
	Data         []byte
}

func (ErrorMsg) Type() MsgType { return TypeError }
func (m ErrorMsg) appendBody(b []byte) ([]byte, error) {
	b = put16(put16(b, m.ErrType), m.Code)
	if m.ErrType == ErrTypeExperimenter {
		b = put32(b, m.Experimenter)
	}
	return append(b, m.Data...), nil
}

// Name returns "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD" (numbers for unknown
// types or codes).
func (m ErrorMsg) Name() string {
	if m.ErrType == ErrTypeExperimenter {
		return fmt.Sprintf("OFPET_EXPERIMENTER/experimenter=%#x,exp_type=%d", m.Experimenter, m.Code)
	}
	t, ok := errorNames[m.ErrType]
	if !ok {
		return fmt.Sprintf("OFPET_%d/%d", m.ErrType, m.Code)
	}
	if int(m.Code) < len(t.codes) {
		return t.name + "/" + t.prefix + t.codes[m.Code]
	}
	return fmt.Sprintf("%s/%s%d", t.name, t.prefix, m.Code)
}

// Error makes a switch error usable as a Go error; it names the failed
// request's type and xid when Data carries its header.
func (m ErrorMsg) Error() string {
	s := "openflow: switch error " + m.Name()
	if len(m.Data) >= HeaderLen {
		s += fmt.Sprintf(" (for %s xid=%d)", MsgType(m.Data[1]), binary.BigEndian.Uint32(m.Data[4:]))
	}
	return s
}

// FailedXid returns the xid of the request that caused the error, if Data
// carries its header.
func (m ErrorMsg) FailedXid() (uint32, bool) {
	if len(m.Data) < HeaderLen {
		return 0, false
	}
	return binary.BigEndian.Uint32(m.Data[4:]), true
}

func (m ErrorMsg) String() string { return "ERROR " + m.Name() }

// Is lets errors.Is match on type and code: errors.Is(err,
// &ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6}) (a value works too).
func (m ErrorMsg) Is(target error) bool {
	var t ErrorMsg
	switch x := target.(type) {
	case ErrorMsg:
		t = x
	case *ErrorMsg:
		if x == nil {
			return false
		}
		t = *x
	default:
		return false
	}
	return t.ErrType == m.ErrType && t.Code == m.Code && t.Experimenter == m.Experimenter
}

func init() {
	register(TypeError, func(r *reader) (Message, error) {
		m := ErrorMsg{ErrType: r.u16(), Code: r.u16()}
		if m.ErrType == ErrTypeExperimenter {
			m.Experimenter = r.u32()
		}
		m.Data = r.rest()
		return m, r.err
	})
}
