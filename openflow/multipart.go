package openflow

import (
	"fmt"
	"strings"
)

// Multipart types (ofp_multipart_type).
const (
	MPDesc          uint16 = 0
	MPFlow          uint16 = 1
	MPAggregate     uint16 = 2
	MPTable         uint16 = 3
	MPPortStats     uint16 = 4
	MPQueue         uint16 = 5
	MPGroup         uint16 = 6
	MPGroupDesc     uint16 = 7
	MPGroupFeatures uint16 = 8
	MPMeter         uint16 = 9
	MPMeterConfig   uint16 = 10
	MPMeterFeatures uint16 = 11
	MPTableFeatures uint16 = 12
	MPPortDesc      uint16 = 13
	MPExperimenter  uint16 = 0xffff
)

// MultipartMore is the flag (OFPMPF_REQ_MORE / OFPMPF_REPLY_MORE) saying
// more parts of the same request or reply follow.
const MultipartMore uint16 = 1

// MultipartBody is the typed body of a multipart request or reply.
type MultipartBody interface {
	MultipartType() uint16
	appendBody(b []byte) ([]byte, error)
}

// MultipartRequest asks for statistics or descriptions. MPType may be left
// zero when Body is set: the body's type is used. A nil Body sends an empty
// body of type MPType.
type MultipartRequest struct {
	MPType uint16
	Flags  uint16
	Body   MultipartBody
}

// MultipartReply is one part of a reply; Flags&MultipartMore means more
// parts follow (Conn.Multipart reassembles them).
type MultipartReply struct {
	MPType uint16
	Flags  uint16
	Body   MultipartBody
}

func (MultipartRequest) Type() MsgType { return TypeMultipartRequest }
func (MultipartReply) Type() MsgType   { return TypeMultipartReply }

func appendMultipart(b []byte, mpType, flags uint16, body MultipartBody) ([]byte, error) {
	if body != nil {
		bt := body.MultipartType()
		if mpType != 0 && mpType != bt {
			return b, fmt.Errorf("%w: multipart type %d but body %T is type %d", ErrInvalid, mpType, body, bt)
		}
		mpType = bt
	}
	b = pad(put16(put16(b, mpType), flags), 4)
	if body == nil {
		return b, nil
	}
	return body.appendBody(b)
}

func (m MultipartRequest) appendBody(b []byte) ([]byte, error) {
	return appendMultipart(b, m.MPType, m.Flags, m.Body)
}
func (m MultipartReply) appendBody(b []byte) ([]byte, error) {
	return appendMultipart(b, m.MPType, m.Flags, m.Body)
}

func (m MultipartRequest) String() string {
	return multipartString("MULTIPART_REQUEST", m.MPType, m.Flags, m.Body)
}
func (m MultipartReply) String() string {
	return multipartString("MULTIPART_REPLY", m.MPType, m.Flags, m.Body)
}

func multipartString(kind string, t, flags uint16, body MultipartBody) string {
	if body != nil {
		t = body.MultipartType()
	}
	s := fmt.Sprintf("%s type=%d", kind, t)
	if flags&MultipartMore != 0 {
		s += " more"
	}
	if st, ok := body.(fmt.Stringer); ok {
		s += " " + st.String()
	}
	return s
}

var (
	mpRequestDecoders = map[uint16]func(r *reader) (MultipartBody, error){}
	mpReplyDecoders   = map[uint16]func(r *reader) (MultipartBody, error){}
)

func decodeMultipart(r *reader, decs map[uint16]func(r *reader) (MultipartBody, error)) (uint16, uint16, MultipartBody, error) {
	t, flags := r.u16(), r.u16()
	r.skip(4)
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	dec := decs[t]
	if dec == nil {
		return 0, 0, nil, fmt.Errorf("%w: multipart type %d", ErrUnsupported, t)
	}
	r.ctx = fmt.Sprintf("%s type %d", r.ctx, t)
	body, err := dec(r)
	if err == nil {
		err = r.done()
	}
	return t, flags, body, err
}

func init() {
	register(TypeMultipartRequest, func(r *reader) (Message, error) {
		t, flags, body, err := decodeMultipart(r, mpRequestDecoders)
		return MultipartRequest{MPType: t, Flags: flags, Body: body}, err
	})
	register(TypeMultipartReply, func(r *reader) (Message, error) {
		t, flags, body, err := decodeMultipart(r, mpReplyDecoders)
		return MultipartReply{MPType: t, Flags: flags, Body: body}, err
	})
}

// --- generic record lists --------------------------------------------------

// appendRecords encodes items; when lenAt >= 0 each record's 16-bit length
// is written at that offset within the record.
func appendRecords[T any](b []byte, items []T, lenAt int, enc func(b []byte, t T) ([]byte, error)) ([]byte, error) {
	for i, it := range items {
		start := len(b)
		var err error
		if b, err = enc(b, it); err != nil {
			return b, fmt.Errorf("record %d: %w", i, err)
		}
		if lenAt >= 0 {
			if err := patch16(b, start+lenAt, len(b)-start); err != nil {
				return b, fmt.Errorf("record %d: %w", i, err)
			}
		}
	}
	return b, nil
}

// readRecords decodes a list of records. With lenAt >= 0 each record
// carries its own 16-bit length at that offset (at least minLen); otherwise
// every record is exactly minLen bytes. dec reads one whole record,
// length field included.
func readRecords[T any](r *reader, what string, lenAt, minLen int, dec func(rr *reader) (T, error)) ([]T, error) {
	var out []T
	for r.remaining() > 0 {
		n := minLen
		if lenAt >= 0 {
			if r.remaining() < lenAt+2 {
				return nil, fmt.Errorf("%w: %s: %d bytes left, too short for a %s", ErrTruncated, r.ctx, r.remaining(), what)
			}
			n = int(r.b[r.off+lenAt])<<8 | int(r.b[r.off+lenAt+1])
			if n < minLen {
				return nil, fmt.Errorf("%w: %s: %s length %d shorter than %d", ErrMalformed, r.ctx, what, n, minLen)
			}
		}
		rec := r.take(n)
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: %s length %d exceeds message", ErrMalformed, r.ctx, what, n)
		}
		rr := newReader(r.ctx+": "+what, rec)
		t, err := dec(rr)
		if err == nil {
			err = rr.done()
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// --- empty-body requests ----------------------------------------------------

// DescRequest asks for the switch description.
type DescRequest struct{}

// TableStatsRequest asks for per-table statistics.
type TableStatsRequest struct{}

// GroupDescRequest asks for all group definitions.
type GroupDescRequest struct{}

// GroupFeaturesRequest asks for group capabilities.
type GroupFeaturesRequest struct{}

// MeterFeaturesRequest asks for meter capabilities.
type MeterFeaturesRequest struct{}

// PortDescRequest asks for every port's description.
type PortDescRequest struct{}

func (DescRequest) MultipartType() uint16          { return MPDesc }
func (TableStatsRequest) MultipartType() uint16    { return MPTable }
func (GroupDescRequest) MultipartType() uint16     { return MPGroupDesc }
func (GroupFeaturesRequest) MultipartType() uint16 { return MPGroupFeatures }
func (MeterFeaturesRequest) MultipartType() uint16 { return MPMeterFeatures }
func (PortDescRequest) MultipartType() uint16      { return MPPortDesc }

func (DescRequest) appendBody(b []byte) ([]byte, error)          { return b, nil }
func (TableStatsRequest) appendBody(b []byte) ([]byte, error)    { return b, nil }
func (GroupDescRequest) appendBody(b []byte) ([]byte, error)     { return b, nil }
func (GroupFeaturesRequest) appendBody(b []byte) ([]byte, error) { return b, nil }
func (MeterFeaturesRequest) appendBody(b []byte) ([]byte, error) { return b, nil }
func (PortDescRequest) appendBody(b []byte) ([]byte, error)      { return b, nil }

// --- desc ---------------------------------------------------------------------

// Desc is the switch description (OFPMP_DESC reply).
type Desc struct {
	MfrDesc, HWDesc, SWDesc string
	SerialNum               string
	DPDesc                  string
}

func (Desc) MultipartType() uint16 { return MPDesc }
func (d Desc) appendBody(b []byte) ([]byte, error) {
	var err error
	for _, f := range []struct {
		s    string
		n    int
		what string
	}{{d.MfrDesc, 256, "mfr_desc"}, {d.HWDesc, 256, "hw_desc"}, {d.SWDesc, 256, "sw_desc"}, {d.SerialNum, 32, "serial_num"}, {d.DPDesc, 256, "dp_desc"}} {
		if b, err = putFixedString(b, f.s, f.n, f.what); err != nil {
			return b, err
		}
	}
	return b, nil
}
func (d Desc) String() string {
	return fmt.Sprintf("mfr=%q hw=%q sw=%q serial=%q dp=%q", d.MfrDesc, d.HWDesc, d.SWDesc, d.SerialNum, d.DPDesc)
}

// --- flow stats -----------------------------------------------------------------

// FlowStatsRequest selects flows for OFPMP_FLOW (and, as
// AggregateStatsRequest, OFPMP_AGGREGATE). Use TableAll, PortAny and
// GroupAny for "any"; NewFlowStatsRequest sets those.
type FlowStatsRequest struct {
	TableID            uint8
	OutPort, OutGroup  uint32
	Cookie, CookieMask uint64
	Match              Match
}

// NewFlowStatsRequest selects every flow in every table.
func NewFlowStatsRequest() FlowStatsRequest {
	return FlowStatsRequest{TableID: TableAll, OutPort: PortAny, OutGroup: GroupAny}
}

func (FlowStatsRequest) MultipartType() uint16 { return MPFlow }
func (q FlowStatsRequest) appendBody(b []byte) ([]byte, error) {
	b = pad(put8(b, q.TableID), 3)
	b = pad(put32(put32(b, q.OutPort), q.OutGroup), 4)
	b = put64(put64(b, q.Cookie), q.CookieMask)
	return appendMatch(b, q.Match)
}
func (q FlowStatsRequest) String() string {
	return fmt.Sprintf("table=%d out_port=%s out_group=%d cookie=%#x/%#x %s", q.TableID, PortString(q.OutPort), q.OutGroup, q.Cookie, q.CookieMask, q.Match)
}

func readFlowStatsRequest(r *reader) FlowStatsRequest {
	q := FlowStatsRequest{TableID: r.u8()}
	r.skip(3)
	q.OutPort, q.OutGroup = r.u32(), r.u32()
	r.skip(4)
	q.Cookie, q.CookieMask = r.u64(), r.u64()
	q.Match = readMatch(r)
	return q
}

// AggregateStatsRequest has the same selection as FlowStatsRequest.
type AggregateStatsRequest FlowStatsRequest

func (AggregateStatsRequest) MultipartType() uint16 { return MPAggregate }
func (q AggregateStatsRequest) appendBody(b []byte) ([]byte, error) {
	return FlowStatsRequest(q).appendBody(b)
}
func (q AggregateStatsRequest) String() string { return FlowStatsRequest(q).String() }

// FlowStats describes one installed flow.
type FlowStats struct {
	TableID                  uint8
	DurationSec              uint32
	DurationNsec             uint32
	Priority                 uint16
	IdleTimeout, HardTimeout uint16
	Flags                    uint16
	Cookie                   uint64
	PacketCount, ByteCount   uint64
	Match                    Match
	Instructions             []Instruction
}

// String prints the flow like a line of ovs-ofctl dump-flows.
func (f FlowStats) String() string {
	fm := FlowMod{TableID: f.TableID, Priority: f.Priority, Cookie: f.Cookie, IdleTimeout: f.IdleTimeout, HardTimeout: f.HardTimeout, Flags: f.Flags, BufferID: NoBuffer, Match: f.Match, Instructions: f.Instructions}
	return fmt.Sprintf("n_packets=%d,n_bytes=%d,%s", f.PacketCount, f.ByteCount, fm.String())
}

func appendFlowStats(b []byte, f FlowStats) ([]byte, error) {
	b = pad(put8(put16(b, 0), f.TableID), 1)
	b = put32(put32(b, f.DurationSec), f.DurationNsec)
	b = put16(put16(put16(put16(b, f.Priority), f.IdleTimeout), f.HardTimeout), f.Flags)
	b = put64(pad(b, 4), f.Cookie)
	b = put64(put64(b, f.PacketCount), f.ByteCount)
	b, err := appendMatch(b, f.Match)
	if err != nil {
		return b, err
	}
	return appendInstructions(b, f.Instructions)
}

func readFlowStats(r *reader) (FlowStats, error) {
	r.skip(2)
	f := FlowStats{TableID: r.u8()}
	r.skip(1)
	f.DurationSec, f.DurationNsec = r.u32(), r.u32()
	f.Priority, f.IdleTimeout, f.HardTimeout, f.Flags = r.u16(), r.u16(), r.u16(), r.u16()
	r.skip(4)
	f.Cookie, f.PacketCount, f.ByteCount = r.u64(), r.u64(), r.u64()
	f.Match = readMatch(r)
	if r.err != nil {
		return f, r.err
	}
	var err error
	f.Instructions, err = readInstructions(r.ctx, r.take(r.remaining()))
	return f, err
}

// FlowStatsReply is the body of an OFPMP_FLOW reply.
type FlowStatsReply []FlowStats

func (FlowStatsReply) MultipartType() uint16 { return MPFlow }
func (s FlowStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, appendFlowStats)
}
func (s FlowStatsReply) String() string {
	lines := make([]string, len(s))
	for i, f := range s {
		lines[i] = f.String()
	}
	return strings.Join(lines, "\n")
}

// AggregateStats is the body of an OFPMP_AGGREGATE reply.
type AggregateStats struct {
	PacketCount, ByteCount uint64
	FlowCount              uint32
}

func (AggregateStats) MultipartType() uint16 { return MPAggregate }
func (a AggregateStats) appendBody(b []byte) ([]byte, error) {
	return pad(put32(put64(put64(b, a.PacketCount), a.ByteCount), a.FlowCount), 4), nil
}
func (a AggregateStats) String() string {
	return fmt.Sprintf("packet_count=%d byte_count=%d flow_count=%d", a.PacketCount, a.ByteCount, a.FlowCount)
}

// --- table stats --------------------------------------------------------------

// TableStats holds one table's counters.
type TableStats struct {
	TableID                   uint8
	ActiveCount               uint32
	LookupCount, MatchedCount uint64
}

// TableStatsReply is the body of an OFPMP_TABLE reply.
type TableStatsReply []TableStats

func (TableStatsReply) MultipartType() uint16 { return MPTable }
func (s TableStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, -1, func(b []byte, t TableStats) ([]byte, error) {
		return put64(put64(put32(pad(put8(b, t.TableID), 3), t.ActiveCount), t.LookupCount), t.MatchedCount), nil
	})
}

// --- port stats -----------------------------------------------------------------

// PortStatsRequest asks for one port's counters (PortAny: all ports).
type PortStatsRequest struct{ PortNo uint32 }

func (PortStatsRequest) MultipartType() uint16 { return MPPortStats }
func (q PortStatsRequest) appendBody(b []byte) ([]byte, error) {
	return pad(put32(b, q.PortNo), 4), nil
}

// PortStats holds one port's counters.
type PortStats struct {
	PortNo                          uint32
	RxPackets, TxPackets            uint64
	RxBytes, TxBytes                uint64
	RxDropped, TxDropped            uint64
	RxErrors, TxErrors              uint64
	RxFrameErr, RxOverErr, RxCRCErr uint64
	Collisions                      uint64
	DurationSec, DurationNsec       uint32
}

func (p *PortStats) counters() []*uint64 {
	return []*uint64{&p.RxPackets, &p.TxPackets, &p.RxBytes, &p.TxBytes, &p.RxDropped, &p.TxDropped,
		&p.RxErrors, &p.TxErrors, &p.RxFrameErr, &p.RxOverErr, &p.RxCRCErr, &p.Collisions}
}

// PortStatsReply is the body of an OFPMP_PORT_STATS reply.
type PortStatsReply []PortStats

func (PortStatsReply) MultipartType() uint16 { return MPPortStats }
func (s PortStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, -1, func(b []byte, p PortStats) ([]byte, error) {
		b = pad(put32(b, p.PortNo), 4)
		for _, c := range p.counters() {
			b = put64(b, *c)
		}
		return put32(put32(b, p.DurationSec), p.DurationNsec), nil
	})
}

// --- queue stats ----------------------------------------------------------------

// QueueStatsRequest asks for queue counters (PortAny / QueueAll for all).
type QueueStatsRequest struct{ PortNo, QueueID uint32 }

func (QueueStatsRequest) MultipartType() uint16 { return MPQueue }
func (q QueueStatsRequest) appendBody(b []byte) ([]byte, error) {
	return put32(put32(b, q.PortNo), q.QueueID), nil
}

// QueueStats holds one queue's counters.
type QueueStats struct {
	PortNo, QueueID              uint32
	TxBytes, TxPackets, TxErrors uint64
	DurationSec, DurationNsec    uint32
}

// QueueStatsReply is the body of an OFPMP_QUEUE reply.
type QueueStatsReply []QueueStats

func (QueueStatsReply) MultipartType() uint16 { return MPQueue }
func (s QueueStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, -1, func(b []byte, q QueueStats) ([]byte, error) {
		b = put32(put32(b, q.PortNo), q.QueueID)
		b = put64(put64(put64(b, q.TxBytes), q.TxPackets), q.TxErrors)
		return put32(put32(b, q.DurationSec), q.DurationNsec), nil
	})
}

// --- groups -----------------------------------------------------------------------

// GroupStatsRequest asks for one group's counters (GroupAll: all).
type GroupStatsRequest struct{ GroupID uint32 }

func (GroupStatsRequest) MultipartType() uint16 { return MPGroup }
func (q GroupStatsRequest) appendBody(b []byte) ([]byte, error) {
	return pad(put32(b, q.GroupID), 4), nil
}

// BucketCounter holds one bucket's counters.
type BucketCounter struct{ PacketCount, ByteCount uint64 }

// GroupStats holds one group's counters.
type GroupStats struct {
	GroupID                   uint32
	RefCount                  uint32
	PacketCount, ByteCount    uint64
	DurationSec, DurationNsec uint32
	BucketStats               []BucketCounter
}

// GroupStatsReply is the body of an OFPMP_GROUP reply.
type GroupStatsReply []GroupStats

func (GroupStatsReply) MultipartType() uint16 { return MPGroup }
func (s GroupStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, func(b []byte, g GroupStats) ([]byte, error) {
		b = put32(put32(pad(b, 4), g.GroupID), g.RefCount)
		b = put64(put64(pad(b, 4), g.PacketCount), g.ByteCount)
		b = put32(put32(b, g.DurationSec), g.DurationNsec)
		for _, c := range g.BucketStats {
			b = put64(put64(b, c.PacketCount), c.ByteCount)
		}
		return b, nil
	})
}

// GroupDesc is one group's definition.
type GroupDesc struct {
	GroupType uint8
	GroupID   uint32
	Buckets   []Bucket
}

// GroupDescReply is the body of an OFPMP_GROUP_DESC reply.
type GroupDescReply []GroupDesc

func (GroupDescReply) MultipartType() uint16 { return MPGroupDesc }
func (s GroupDescReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, func(b []byte, g GroupDesc) ([]byte, error) {
		b = put32(pad(put8(put16(b, 0), g.GroupType), 1), g.GroupID)
		return appendBuckets(b, g.Buckets)
	})
}

// GroupFeatures describes group support.
type GroupFeatures struct {
	Types, Capabilities uint32
	MaxGroups           [4]uint32
	Actions             [4]uint32
}

func (GroupFeatures) MultipartType() uint16 { return MPGroupFeatures }
func (g GroupFeatures) appendBody(b []byte) ([]byte, error) {
	b = put32(put32(b, g.Types), g.Capabilities)
	for _, v := range g.MaxGroups {
		b = put32(b, v)
	}
	for _, v := range g.Actions {
		b = put32(b, v)
	}
	return b, nil
}

// --- meters -------------------------------------------------------------------------

// MeterStatsRequest asks for one meter's counters (MeterAll: all).
type MeterStatsRequest struct{ MeterID uint32 }

// MeterConfigRequest asks for one meter's configuration (MeterAll: all).
type MeterConfigRequest struct{ MeterID uint32 }

func (MeterStatsRequest) MultipartType() uint16  { return MPMeter }
func (MeterConfigRequest) MultipartType() uint16 { return MPMeterConfig }
func (q MeterStatsRequest) appendBody(b []byte) ([]byte, error) {
	return pad(put32(b, q.MeterID), 4), nil
}
func (q MeterConfigRequest) appendBody(b []byte) ([]byte, error) {
	return pad(put32(b, q.MeterID), 4), nil
}

// MeterBandStats holds one band's counters.
type MeterBandStats struct{ PacketBandCount, ByteBandCount uint64 }

// MeterStats holds one meter's counters.
type MeterStats struct {
	MeterID                    uint32
	FlowCount                  uint32
	PacketInCount, ByteInCount uint64
	DurationSec, DurationNsec  uint32
	BandStats                  []MeterBandStats
}

// MeterStatsReply is the body of an OFPMP_METER reply.
type MeterStatsReply []MeterStats

func (MeterStatsReply) MultipartType() uint16 { return MPMeter }
func (s MeterStatsReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 4, func(b []byte, m MeterStats) ([]byte, error) {
		b = put32(pad(put16(put32(b, m.MeterID), 0), 6), m.FlowCount)
		b = put64(put64(b, m.PacketInCount), m.ByteInCount)
		b = put32(put32(b, m.DurationSec), m.DurationNsec)
		for _, c := range m.BandStats {
			b = put64(put64(b, c.PacketBandCount), c.ByteBandCount)
		}
		return b, nil
	})
}

// MeterConfig is one meter's configuration.
type MeterConfig struct {
	Flags   uint16
	MeterID uint32
	Bands   []MeterBand
}

// MeterConfigReply is the body of an OFPMP_METER_CONFIG reply.
type MeterConfigReply []MeterConfig

func (MeterConfigReply) MultipartType() uint16 { return MPMeterConfig }
func (s MeterConfigReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, 0, func(b []byte, m MeterConfig) ([]byte, error) {
		return appendBands(put32(put16(put16(b, 0), m.Flags), m.MeterID), m.Bands)
	})
}

// MeterFeatures describes meter support.
type MeterFeatures struct {
	MaxMeter, BandTypes, Capabilities uint32
	MaxBands, MaxColor                uint8
}

func (MeterFeatures) MultipartType() uint16 { return MPMeterFeatures }
func (m MeterFeatures) appendBody(b []byte) ([]byte, error) {
	b = put32(put32(put32(b, m.MaxMeter), m.BandTypes), m.Capabilities)
	return pad(put8(put8(b, m.MaxBands), m.MaxColor), 2), nil
}

// --- port desc ------------------------------------------------------------------------

// PortDescReply is the body of an OFPMP_PORT_DESC reply.
type PortDescReply []Port

func (PortDescReply) MultipartType() uint16 { return MPPortDesc }
func (s PortDescReply) appendBody(b []byte) ([]byte, error) {
	return appendRecords(b, s, -1, func(b []byte, p Port) ([]byte, error) { return p.appendTo(b) })
}
func (s PortDescReply) String() string {
	lines := make([]string, len(s))
	for i, p := range s {
		lines[i] = p.String()
	}
	return strings.Join(lines, "; ")
}

// --- experimenter -----------------------------------------------------------------------

// ExperimenterMultipart is an experimenter multipart body (request or
// reply), kept raw.
type ExperimenterMultipart struct {
	Experimenter, ExpType uint32
	Data                  []byte
}

func (ExperimenterMultipart) MultipartType() uint16 { return MPExperimenter }
func (e ExperimenterMultipart) appendBody(b []byte) ([]byte, error) {
	return append(put32(put32(b, e.Experimenter), e.ExpType), e.Data...), nil
}

// --- decoders -----------------------------------------------------------------------------

func init() {
	empty := func(v MultipartBody) func(r *reader) (MultipartBody, error) {
		return func(r *reader) (MultipartBody, error) { return v, nil }
	}
	readID := func(r *reader) uint32 { v := r.u32(); r.skip(4); return v }
	experimenter := func(r *reader) (MultipartBody, error) {
		return ExperimenterMultipart{Experimenter: r.u32(), ExpType: r.u32(), Data: r.rest()}, r.err
	}
	mpRequestDecoders[MPDesc] = empty(DescRequest{})
	mpRequestDecoders[MPTable] = empty(TableStatsRequest{})
	mpRequestDecoders[MPGroupDesc] = empty(GroupDescRequest{})
	mpRequestDecoders[MPGroupFeatures] = empty(GroupFeaturesRequest{})
	mpRequestDecoders[MPMeterFeatures] = empty(MeterFeaturesRequest{})
	mpRequestDecoders[MPPortDesc] = empty(PortDescRequest{})
	mpRequestDecoders[MPFlow] = func(r *reader) (MultipartBody, error) { return readFlowStatsRequest(r), r.err }
	mpRequestDecoders[MPAggregate] = func(r *reader) (MultipartBody, error) {
		return AggregateStatsRequest(readFlowStatsRequest(r)), r.err
	}
	mpRequestDecoders[MPPortStats] = func(r *reader) (MultipartBody, error) { return PortStatsRequest{readID(r)}, r.err }
	mpRequestDecoders[MPQueue] = func(r *reader) (MultipartBody, error) {
		return QueueStatsRequest{PortNo: r.u32(), QueueID: r.u32()}, r.err
	}
	mpRequestDecoders[MPGroup] = func(r *reader) (MultipartBody, error) { return GroupStatsRequest{readID(r)}, r.err }
	mpRequestDecoders[MPMeter] = func(r *reader) (MultipartBody, error) { return MeterStatsRequest{readID(r)}, r.err }
	mpRequestDecoders[MPMeterConfig] = func(r *reader) (MultipartBody, error) { return MeterConfigRequest{readID(r)}, r.err }
	mpRequestDecoders[MPTableFeatures] = func(r *reader) (MultipartBody, error) {
		t, err := readTableFeatures(r)
		return TableFeaturesRequest(t), err
	}
	mpRequestDecoders[MPExperimenter] = experimenter

	mpReplyDecoders[MPDesc] = func(r *reader) (MultipartBody, error) {
		d := Desc{MfrDesc: fixedString(r.take(256)), HWDesc: fixedString(r.take(256)), SWDesc: fixedString(r.take(256)),
			SerialNum: fixedString(r.take(32)), DPDesc: fixedString(r.take(256))}
		return d, r.err
	}
	mpReplyDecoders[MPFlow] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "flow_stats", 0, 56, readFlowStats)
		return FlowStatsReply(s), err
	}
	mpReplyDecoders[MPAggregate] = func(r *reader) (MultipartBody, error) {
		a := AggregateStats{PacketCount: r.u64(), ByteCount: r.u64(), FlowCount: r.u32()}
		r.skip(4)
		return a, r.err
	}
	mpReplyDecoders[MPTable] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "table_stats", -1, 24, func(rr *reader) (TableStats, error) {
			t := TableStats{TableID: rr.u8()}
			rr.skip(3)
			t.ActiveCount, t.LookupCount, t.MatchedCount = rr.u32(), rr.u64(), rr.u64()
			return t, rr.err
		})
		return TableStatsReply(s), err
	}
	mpReplyDecoders[MPPortStats] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "port_stats", -1, 112, func(rr *reader) (PortStats, error) {
			p := PortStats{PortNo: rr.u32()}
			rr.skip(4)
			for _, c := range p.counters() {
				*c = rr.u64()
			}
			p.DurationSec, p.DurationNsec = rr.u32(), rr.u32()
			return p, rr.err
		})
		return PortStatsReply(s), err
	}
	mpReplyDecoders[MPQueue] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "queue_stats", -1, 40, func(rr *reader) (QueueStats, error) {
			q := QueueStats{PortNo: rr.u32(), QueueID: rr.u32(), TxBytes: rr.u64(), TxPackets: rr.u64(), TxErrors: rr.u64()}
			q.DurationSec, q.DurationNsec = rr.u32(), rr.u32()
			return q, rr.err
		})
		return QueueStatsReply(s), err
	}
	mpReplyDecoders[MPGroup] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "group_stats", 0, 40, func(rr *reader) (GroupStats, error) {
			rr.skip(4)
			g := GroupStats{GroupID: rr.u32(), RefCount: rr.u32()}
			rr.skip(4)
			g.PacketCount, g.ByteCount = rr.u64(), rr.u64()
			g.DurationSec, g.DurationNsec = rr.u32(), rr.u32()
			if rr.remaining()%16 != 0 {
				rr.fail("bucket stats of %d bytes, not a multiple of 16", rr.remaining())
			}
			for rr.remaining() > 0 {
				g.BucketStats = append(g.BucketStats, BucketCounter{PacketCount: rr.u64(), ByteCount: rr.u64()})
			}
			return g, rr.err
		})
		return GroupStatsReply(s), err
	}
	mpReplyDecoders[MPGroupDesc] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "group_desc", 0, 8, func(rr *reader) (GroupDesc, error) {
			rr.skip(2)
			g := GroupDesc{GroupType: rr.u8()}
			rr.skip(1)
			g.GroupID = rr.u32()
			if rr.err != nil {
				return g, rr.err
			}
			var err error
			g.Buckets, err = readBuckets(rr.ctx, rr.take(rr.remaining()))
			return g, err
		})
		return GroupDescReply(s), err
	}
	mpReplyDecoders[MPGroupFeatures] = func(r *reader) (MultipartBody, error) {
		g := GroupFeatures{Types: r.u32(), Capabilities: r.u32()}
		for i := range g.MaxGroups {
			g.MaxGroups[i] = r.u32()
		}
		for i := range g.Actions {
			g.Actions[i] = r.u32()
		}
		return g, r.err
	}
	mpReplyDecoders[MPMeter] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "meter_stats", 4, 40, func(rr *reader) (MeterStats, error) {
			m := MeterStats{MeterID: rr.u32()}
			rr.skip(8)
			m.FlowCount, m.PacketInCount, m.ByteInCount = rr.u32(), rr.u64(), rr.u64()
			m.DurationSec, m.DurationNsec = rr.u32(), rr.u32()
			if rr.remaining()%16 != 0 {
				rr.fail("band stats of %d bytes, not a multiple of 16", rr.remaining())
			}
			for rr.remaining() > 0 {
				m.BandStats = append(m.BandStats, MeterBandStats{PacketBandCount: rr.u64(), ByteBandCount: rr.u64()})
			}
			return m, rr.err
		})
		return MeterStatsReply(s), err
	}
	mpReplyDecoders[MPMeterConfig] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "meter_config", 0, 8, func(rr *reader) (MeterConfig, error) {
			rr.skip(2)
			m := MeterConfig{Flags: rr.u16(), MeterID: rr.u32()}
			if rr.err != nil {
				return m, rr.err
			}
			var err error
			m.Bands, err = readBands(rr.ctx, rr.take(rr.remaining()))
			return m, err
		})
		return MeterConfigReply(s), err
	}
	mpReplyDecoders[MPMeterFeatures] = func(r *reader) (MultipartBody, error) {
		m := MeterFeatures{MaxMeter: r.u32(), BandTypes: r.u32(), Capabilities: r.u32(), MaxBands: r.u8(), MaxColor: r.u8()}
		r.skip(2)
		return m, r.err
	}
	mpReplyDecoders[MPTableFeatures] = func(r *reader) (MultipartBody, error) {
		t, err := readTableFeatures(r)
		return TableFeaturesReply(t), err
	}
	mpReplyDecoders[MPPortDesc] = func(r *reader) (MultipartBody, error) {
		s, err := readRecords(r, "port", -1, portLen, func(rr *reader) (Port, error) { return readPort(rr), rr.err })
		return PortDescReply(s), err
	}
	mpReplyDecoders[MPExperimenter] = experimenter
}
