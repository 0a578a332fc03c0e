package openflow

import (
	"encoding/binary"
	"fmt"
)

// Table feature property types (ofp_table_feature_prop_type).
const (
	TFPInstructions      uint16 = 0
	TFPInstructionsMiss  uint16 = 1
	TFPNextTables        uint16 = 2
	TFPNextTablesMiss    uint16 = 3
	TFPWriteActions      uint16 = 4
	TFPWriteActionsMiss  uint16 = 5
	TFPApplyActions      uint16 = 6
	TFPApplyActionsMiss  uint16 = 7
	TFPMatch             uint16 = 8
	TFPWildcards         uint16 = 10
	TFPWriteSetField     uint16 = 12
	TFPWriteSetFieldMiss uint16 = 13
	TFPApplySetField     uint16 = 14
	TFPApplySetFieldMiss uint16 = 15
	TFPExperimenter      uint16 = 0xfffe
	TFPExperimenterMiss  uint16 = 0xffff
)

// TableFeatureProp is one table feature property, kept as its type and
// body (without header and padding); the accessor methods interpret the
// body by type. NVI only reads table features for diagnostics, so a
// lossless raw form is enough.
type TableFeatureProp struct {
	Type uint16
	Data []byte
}

// IDs returns the 16-bit type of each instruction or action ID in an
// instructions or actions property (experimenter IDs report 0xffff).
func (p TableFeatureProp) IDs() ([]uint16, error) {
	var out []uint16
	r := newReader("table feature ids", p.Data)
	for r.remaining() > 0 {
		t, n := r.u16(), int(r.u16())
		if n < 4 {
			r.fail("id length %d", n)
		}
		r.skip(n - 4)
		if r.err != nil {
			return nil, r.err
		}
		out = append(out, t)
	}
	return out, nil
}

// NextTables returns the table IDs of a next-tables property.
func (p TableFeatureProp) NextTables() []uint8 { return append([]uint8(nil), p.Data...) }

// OXMIDs returns the fields of a match, wildcards or set-field property
// (each OXM header with its hasmask bit).
func (p TableFeatureProp) OXMIDs() (ids []FieldID, masked []bool, err error) {
	r := newReader("table feature oxm ids", p.Data)
	for r.remaining() > 0 {
		h := r.u32()
		id := FieldID{Class: uint16(h >> 16), Field: uint8(h>>9) & 0x7f}
		if id.Class == ClassExperimenter {
			id.Experimenter = r.u32()
		}
		if r.err != nil {
			return nil, nil, r.err
		}
		ids = append(ids, id)
		masked = append(masked, h&(1<<8) != 0)
	}
	return ids, masked, nil
}

// Experimenter returns the experimenter ID, exp_type and data of an
// experimenter property.
func (p TableFeatureProp) Experimenter() (exp, expType uint32, data []byte, ok bool) {
	if len(p.Data) < 8 {
		return 0, 0, nil, false
	}
	return binary.BigEndian.Uint32(p.Data), binary.BigEndian.Uint32(p.Data[4:]), p.Data[8:], true
}

// TableFeatures describes one flow table.
type TableFeatures struct {
	TableID       uint8
	Name          string
	MetadataMatch uint64
	MetadataWrite uint64
	Config        uint32
	MaxEntries    uint32
	Properties    []TableFeatureProp
}

func appendTableFeatures(b []byte, t TableFeatures) ([]byte, error) {
	b = pad(put8(put16(b, 0), t.TableID), 5)
	b, err := putFixedString(b, t.Name, 32, "table name")
	if err != nil {
		return b, err
	}
	b = put64(put64(b, t.MetadataMatch), t.MetadataWrite)
	b = put32(put32(b, t.Config), t.MaxEntries)
	for _, p := range t.Properties {
		start := len(b)
		b = append(put16(put16(b, p.Type), 0), p.Data...)
		if err := patch16(b, start+2, len(b)-start); err != nil {
			return b, err
		}
		b = padTo8(b, start)
	}
	return b, nil
}

func readTableFeatures(r *reader) ([]TableFeatures, error) {
	return readRecords(r, "table_features", 0, 64, func(rr *reader) (TableFeatures, error) {
		rr.skip(2)
		t := TableFeatures{TableID: rr.u8()}
		rr.skip(5)
		t.Name = fixedString(rr.take(32))
		t.MetadataMatch, t.MetadataWrite = rr.u64(), rr.u64()
		t.Config, t.MaxEntries = rr.u32(), rr.u32()
		for rr.err == nil && rr.remaining() > 0 {
			typ, n := rr.u16(), int(rr.u16())
			if rr.err == nil && n < 4 {
				rr.fail("table feature property length %d", n)
				break
			}
			data := rr.copyBytes(n - 4)
			rr.skip(pad8(n))
			if rr.err != nil {
				break
			}
			t.Properties = append(t.Properties, TableFeatureProp{Type: typ, Data: data})
		}
		return t, rr.err
	})
}

// TableFeaturesRequest queries (empty) or sets table features.
type TableFeaturesRequest []TableFeatures

// TableFeaturesReply is the body of an OFPMP_TABLE_FEATURES reply.
type TableFeaturesReply []TableFeatures

func (TableFeaturesRequest) MultipartType() uint16 { return MPTableFeatures }
func (TableFeaturesReply) MultipartType() uint16   { return MPTableFeatures }
func (s TableFeaturesRequest) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, appendTableFeatures)
}
func (s TableFeaturesReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, appendTableFeatures)
}

// --- queue configuration (OFPT_QUEUE_GET_CONFIG_*) ---------------------------

// Queue property types (ofp_queue_properties).
const (
	QueuePropTypeMinRate      uint16 = 1
	QueuePropTypeMaxRate      uint16 = 2
	QueuePropTypeExperimenter uint16 = 0xffff
)

// QueueProp is one queue property. Rate properties use Rate (in 1/10 %);
// experimenter properties use Experimenter and Data. The wire layout's
// length is kept exactly (OVS and others pad differently).
type QueueProp struct {
	Property     uint16
	Rate         uint16
	Experimenter uint32
	Data         []byte
}

// PacketQueue describes one queue.
type PacketQueue struct {
	QueueID    uint32
	Port       uint32
	Properties []QueueProp
}

// QueueGetConfigRequest asks for a port's queues (PortAny: all).
type QueueGetConfigRequest struct{ Port uint32 }

func (QueueGetConfigRequest) Type() MsgType { return TypeQueueGetConfigRequest }
func (m QueueGetConfigRequest) appendBody(b []byte) ([]byte, error) {
	return pad(put32(b, m.Port), 4), nil
}
func (m QueueGetConfigRequest) String() string {
	return "QUEUE_GET_CONFIG_REQUEST port=" + PortString(m.Port)
}

// QueueGetConfigReply lists a port's queues.
type QueueGetConfigReply struct {
	Port   uint32
	Queues []PacketQueue
}

func (QueueGetConfigReply) Type() MsgType { return TypeQueueGetConfigReply }
func (m QueueGetConfigReply) appendBody(b []byte) ([]byte, error) {
	b = pad(put32(b, m.Port), 4)
	return appendRecords(b, m.Queues, 8, func(b []byte, q PacketQueue) ([]byte, error) {
		b = pad(put16(put32(put32(b, q.QueueID), q.Port), 0), 6)
		return appendRecords(b, q.Properties, 2, func(b []byte, p QueueProp) ([]byte, error) {
			b = pad(put16(put16(b, p.Property), 0), 4)
			switch p.Property {
			case QueuePropTypeMinRate, QueuePropTypeMaxRate:
				return pad(put16(b, p.Rate), 6), nil
			case QueuePropTypeExperimenter:
				return append(pad(put32(b, p.Experimenter), 4), p.Data...), nil
			}
			return append(b, p.Data...), nil
		})
	})
}
func (m QueueGetConfigReply) String() string {
	return fmt.Sprintf("QUEUE_GET_CONFIG_REPLY port=%s queues=%d", PortString(m.Port), len(m.Queues))
}

func init() {
	register(TypeQueueGetConfigRequest, func(r *reader) (Message, error) {
		m := QueueGetConfigRequest{Port: r.u32()}
		r.skip(4)
		return m, r.err
	})
	register(TypeQueueGetConfigReply, func(r *reader) (Message, error) {
		m := QueueGetConfigReply{Port: r.u32()}
		r.skip(4)
		var err error
		m.Queues, err = readRecords(r, "packet_queue", 8, 16, func(rr *reader) (PacketQueue, error) {
			q := PacketQueue{QueueID: rr.u32(), Port: rr.u32()}
			rr.skip(8)
			var err error
			q.Properties, err = readRecords(rr, "queue property", 2, 8, func(pr *reader) (QueueProp, error) {
				p := QueueProp{Property: pr.u16()}
				pr.skip(6)
				switch p.Property {
				case QueuePropTypeMinRate, QueuePropTypeMaxRate:
					p.Rate = pr.u16()
					pr.skip(6)
				case QueuePropTypeExperimenter:
					p.Experimenter = pr.u32()
					pr.skip(4)
					p.Data = pr.rest()
				default:
					p.Data = pr.rest()
				}
				return p, pr.err
			})
			return q, err
		})
		return m, err
	})
}
