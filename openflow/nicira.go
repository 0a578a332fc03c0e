package openflow

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// Nicira action subtypes (NXAST_*) that are decoded into typed structs.
// Every other Nicira action is kept as an ActionExperimenter.
const (
	NXASTRegMove       uint16 = 6
	NXASTResubmitTable uint16 = 14
	NXASTConjunction   uint16 = 34
	NXASTCT            uint16 = 35
	NXASTNAT           uint16 = 36
)

// nxAction is implemented by the typed Nicira actions: each encodes its body
// after the experimenter ID, starting with its subtype.
type nxAction interface {
	Action
	nxSubtype() uint16
	appendNX(b []byte) ([]byte, error)
}

// appendNXBody writes the Nicira header (vendor, subtype), the action's own
// fields, and padding to 8 bytes measured from the action's start (4 bytes
// before b's end on entry, where type and length were written).
func appendNXBody(b []byte, a nxAction) ([]byte, error) {
	start := len(b) - 4
	b = put32(b, ExperimenterNicira)
	b = put16(b, a.nxSubtype())
	b, err := a.appendNX(b)
	if err != nil {
		return b, err
	}
	return padTo8(b, start), nil
}

// NXRegMove copies NBits bits from Src (starting at bit SrcOfs) to Dst
// (starting at DstOfs): ovs-ofctl's move:src[...]->dst[...]. Both fields
// must be ones the codec knows the size of, because OVS checks the length
// carried in each header.
type NXRegMove struct {
	NBits, SrcOfs, DstOfs uint16
	Src, Dst              FieldID
}

// MoveField copies the whole of src into dst (same-sized fields, e.g.
// eth_src to eth_dst, arp_sha to arp_tha).
func MoveField(src, dst FieldID) NXRegMove {
	n, _ := FieldSize(src)
	return NXRegMove{NBits: uint16(n * 8), Src: src, Dst: dst}
}

func (NXRegMove) ActionType() uint16                    { return ActExperimenter }
func (NXRegMove) nxSubtype() uint16                     { return NXASTRegMove }
func (a NXRegMove) appendBody(b []byte) ([]byte, error) { return appendNXBody(b, a) }
func (a NXRegMove) appendNX(b []byte) ([]byte, error) {
	for _, c := range []struct {
		id  FieldID
		ofs uint16
	}{{a.Src, a.SrcOfs}, {a.Dst, a.DstOfs}} {
		size, ok := FieldSize(c.id)
		if !ok {
			return b, fmt.Errorf("%w: move: field %s has no known size", ErrInvalid, c.id)
		}
		if a.NBits == 0 || int(c.ofs)+int(a.NBits) > size*8 {
			return b, fmt.Errorf("%w: move: bits [%d,%d) outside %d-bit field %s", ErrInvalid, c.ofs, int(c.ofs)+int(a.NBits), size*8, c.id)
		}
	}
	b = put16(b, a.NBits)
	b = put16(b, a.SrcOfs)
	b = put16(b, a.DstOfs)
	b, err := a.Src.appendHeader(b)
	if err != nil {
		return b, err
	}
	return a.Dst.appendHeader(b)
}

func (a NXRegMove) String() string {
	return "move:" + bitRange(a.Src, a.SrcOfs, a.NBits) + "->" + bitRange(a.Dst, a.DstOfs, a.NBits)
}

// bitRange prints "eth_src" for a whole field, "reg0[0..15]" for a part.
func bitRange(id FieldID, ofs, n uint16) string {
	if size, ok := FieldSize(id); ok && ofs == 0 && int(n) == size*8 {
		return id.ActionName()
	}
	if n == 1 {
		return fmt.Sprintf("%s[%d]", id.ActionName(), ofs)
	}
	return fmt.Sprintf("%s[%d..%d]", id.ActionName(), ofs, int(ofs)+int(n)-1)
}

// NXResubmitTable re-runs the pipeline lookup in Table (0xff: the current
// table) with in_port InPort (NXPortInPort: unchanged).
type NXResubmitTable struct {
	InPort uint16
	Table  uint8
}

// NXPortInPort is the 16-bit OFPP_IN_PORT Nicira actions use for "keep the
// packet's in_port".
const NXPortInPort uint16 = 0xfff8

// Resubmit is resubmit(,table): keep in_port, look up in table.
func Resubmit(table uint8) NXResubmitTable {
	return NXResubmitTable{InPort: NXPortInPort, Table: table}
}

func (NXResubmitTable) ActionType() uint16                    { return ActExperimenter }
func (NXResubmitTable) nxSubtype() uint16                     { return NXASTResubmitTable }
func (a NXResubmitTable) appendBody(b []byte) ([]byte, error) { return appendNXBody(b, a) }
func (a NXResubmitTable) appendNX(b []byte) ([]byte, error) {
	return put8(put16(b, a.InPort), a.Table), nil
}
func (a NXResubmitTable) String() string {
	port := ""
	if a.InPort != NXPortInPort {
		port = PortString(port16to32(a.InPort))
	}
	if a.Table == 0xff {
		if port == "" {
			port = "IN_PORT"
		}
		return "resubmit:" + port
	}
	return fmt.Sprintf("resubmit(%s,%d)", port, a.Table)
}

// NXConjunction adds the flow to clause Clause (0-based) of NClauses of
// conjunctive match ID.
type NXConjunction struct {
	Clause, NClauses uint8
	ID               uint32
}

func (NXConjunction) ActionType() uint16                    { return ActExperimenter }
func (NXConjunction) nxSubtype() uint16                     { return NXASTConjunction }
func (a NXConjunction) appendBody(b []byte) ([]byte, error) { return appendNXBody(b, a) }
func (a NXConjunction) appendNX(b []byte) ([]byte, error) {
	return put32(put8(put8(b, a.Clause), a.NClauses), a.ID), nil
}
func (a NXConjunction) String() string {
	return fmt.Sprintf("conjunction(%d,%d/%d)", a.ID, int(a.Clause)+1, a.NClauses)
}

// Conntrack flags (NX_CT_F_*).
const (
	NXCtCommit uint16 = 1 << 0
	NXCtForce  uint16 = 1 << 1
)

// NXCtRecircNone as RecircTable means "do not recirculate".
const NXCtRecircNone uint8 = 0xff

// NXConntrack sends the packet through the connection tracker (ovs-ofctl's
// ct(...)). The zone is ZoneImm unless ZoneSrc is set (non-zero), in which
// case it is read from bits of that field (ZoneOfsNbits = ofs<<6 | nbits-1).
// RecircTable is the table to continue in afterwards (NXCtRecircNone: do
// not). Actions (nat, set_field on ct_mark/ct_label) run on commit.
type NXConntrack struct {
	Flags        uint16
	ZoneSrc      FieldID
	ZoneOfsNbits uint16
	ZoneImm      uint16
	RecircTable  uint8
	Alg          uint16
	Actions      []Action
}

func (NXConntrack) ActionType() uint16                    { return ActExperimenter }
func (NXConntrack) nxSubtype() uint16                     { return NXASTCT }
func (a NXConntrack) appendBody(b []byte) ([]byte, error) { return appendNXBody(b, a) }
func (a NXConntrack) appendNX(b []byte) ([]byte, error) {
	b = put16(b, a.Flags)
	zone := a.ZoneImm
	if a.ZoneSrc == (FieldID{}) {
		b = put32(b, 0)
	} else {
		if a.ZoneSrc.Class == ClassExperimenter {
			return b, fmt.Errorf("%w: ct: zone source %s cannot be an experimenter field", ErrInvalid, a.ZoneSrc)
		}
		var err error
		if b, err = a.ZoneSrc.appendHeader(b); err != nil {
			return b, fmt.Errorf("ct zone: %w", err)
		}
		zone = a.ZoneOfsNbits
	}
	b = put16(b, zone)
	b = put8(b, a.RecircTable)
	b = pad(b, 3)
	b = put16(b, a.Alg)
	b, err := appendActions(b, a.Actions)
	if err != nil {
		return b, fmt.Errorf("ct: %w", err)
	}
	return b, nil
}

func (a NXConntrack) String() string {
	var parts []string
	if a.Flags&NXCtCommit != 0 {
		parts = append(parts, "commit")
	}
	if a.Flags&NXCtForce != 0 {
		parts = append(parts, "force")
	}
	if a.RecircTable != NXCtRecircNone {
		parts = append(parts, fmt.Sprintf("table=%d", a.RecircTable))
	}
	if a.ZoneSrc != (FieldID{}) {
		ofs, n := a.ZoneOfsNbits>>6, a.ZoneOfsNbits&0x3f+1
		parts = append(parts, "zone="+bitRange(a.ZoneSrc, ofs, n))
	} else if a.ZoneImm != 0 {
		parts = append(parts, fmt.Sprintf("zone=%d", a.ZoneImm))
	}
	var execs []Action
	for _, x := range a.Actions {
		if n, ok := x.(NXNat); ok {
			parts = append(parts, n.String())
		} else {
			execs = append(execs, x)
		}
	}
	if len(execs) > 0 {
		parts = append(parts, "exec("+ActionsString(execs)+")")
	}
	if a.Alg != 0 {
		parts = append(parts, fmt.Sprintf("alg=%d", a.Alg))
	}
	return "ct(" + strings.Join(parts, ",") + ")"
}

// NAT flags (NX_NAT_F_*).
const (
	NXNatSrc         uint16 = 1 << 0
	NXNatDst         uint16 = 1 << 1
	NXNatPersistent  uint16 = 1 << 2
	NXNatProtoHash   uint16 = 1 << 3
	NXNatProtoRandom uint16 = 1 << 4
)

// NAT range-present bits (NX_NAT_RANGE_*).
const (
	NXNatRangeIPv4Min  uint16 = 1 << 0
	NXNatRangeIPv4Max  uint16 = 1 << 1
	NXNatRangeIPv6Min  uint16 = 1 << 2
	NXNatRangeIPv6Max  uint16 = 1 << 3
	NXNatRangeProtoMin uint16 = 1 << 4
	NXNatRangeProtoMax uint16 = 1 << 5
)

// NXNat is the nat(...) action inside ct. RangePresent says which of the
// range fields are on the wire; when it is zero, Marshal derives it from
// the fields that are set (valid addresses, non-zero ports).
type NXNat struct {
	Flags              uint16
	RangePresent       uint16
	IPv4Min, IPv4Max   netip.Addr
	IPv6Min, IPv6Max   netip.Addr
	ProtoMin, ProtoMax uint16
}

func (NXNat) ActionType() uint16                    { return ActExperimenter }
func (NXNat) nxSubtype() uint16                     { return NXASTNAT }
func (a NXNat) appendBody(b []byte) ([]byte, error) { return appendNXBody(b, a) }

func (a NXNat) present() uint16 {
	if a.RangePresent != 0 {
		return a.RangePresent
	}
	var p uint16
	set := func(ok bool, bit uint16) {
		if ok {
			p |= bit
		}
	}
	set(a.IPv4Min.IsValid(), NXNatRangeIPv4Min)
	set(a.IPv4Max.IsValid(), NXNatRangeIPv4Max)
	set(a.IPv6Min.IsValid(), NXNatRangeIPv6Min)
	set(a.IPv6Max.IsValid(), NXNatRangeIPv6Max)
	set(a.ProtoMin != 0, NXNatRangeProtoMin)
	set(a.ProtoMax != 0, NXNatRangeProtoMax)
	return p
}

func (a NXNat) appendNX(b []byte) ([]byte, error) {
	p := a.present()
	b = pad(b, 2)
	b = put16(b, a.Flags)
	b = put16(b, p)
	for _, v := range []struct {
		bit  uint16
		addr netip.Addr
		four bool
	}{{NXNatRangeIPv4Min, a.IPv4Min, true}, {NXNatRangeIPv4Max, a.IPv4Max, true}, {NXNatRangeIPv6Min, a.IPv6Min, false}, {NXNatRangeIPv6Max, a.IPv6Max, false}} {
		if p&v.bit == 0 {
			continue
		}
		if v.four {
			if !v.addr.Unmap().Is4() {
				return b, fmt.Errorf("%w: nat: IPv4 range bound %v is not an IPv4 address", ErrInvalid, v.addr)
			}
			a4 := v.addr.Unmap().As4()
			b = append(b, a4[:]...)
		} else {
			if !v.addr.Is6() {
				return b, fmt.Errorf("%w: nat: IPv6 range bound %v is not an IPv6 address", ErrInvalid, v.addr)
			}
			a16 := v.addr.As16()
			b = append(b, a16[:]...)
		}
	}
	if p&NXNatRangeProtoMin != 0 {
		b = put16(b, a.ProtoMin)
	}
	if p&NXNatRangeProtoMax != 0 {
		b = put16(b, a.ProtoMax)
	}
	return b, nil
}

func (a NXNat) String() string {
	var sb strings.Builder
	sb.WriteString("nat")
	kind := ""
	switch {
	case a.Flags&NXNatSrc != 0:
		kind = "src"
	case a.Flags&NXNatDst != 0:
		kind = "dst"
	}
	var args []string
	p := a.present()
	if kind != "" {
		r := ""
		if p&NXNatRangeIPv4Min != 0 {
			r = a.IPv4Min.String()
			if p&NXNatRangeIPv4Max != 0 && a.IPv4Max != a.IPv4Min {
				r += "-" + a.IPv4Max.String()
			}
		} else if p&NXNatRangeIPv6Min != 0 {
			r = "[" + a.IPv6Min.String() + "]"
			if p&NXNatRangeIPv6Max != 0 && a.IPv6Max != a.IPv6Min {
				r = "[" + a.IPv6Min.String() + "]-[" + a.IPv6Max.String() + "]"
			}
		}
		if p&NXNatRangeProtoMin != 0 {
			r += fmt.Sprintf(":%d", a.ProtoMin)
			if p&NXNatRangeProtoMax != 0 && a.ProtoMax != a.ProtoMin {
				r += fmt.Sprintf("-%d", a.ProtoMax)
			}
		}
		if r != "" {
			kind += "=" + r
		}
		args = append(args, kind)
	}
	for _, f := range []struct {
		bit  uint16
		name string
	}{{NXNatPersistent, "persistent"}, {NXNatProtoHash, "hash"}, {NXNatProtoRandom, "random"}} {
		if a.Flags&f.bit != 0 {
			args = append(args, f.name)
		}
	}
	if len(args) > 0 {
		sb.WriteString("(" + strings.Join(args, ",") + ")")
	}
	return sb.String()
}

// decodeExperimenterAction decodes an experimenter action's data (after the
// experimenter ID). Nicira actions the codec knows become typed structs;
// anything else, and any Nicira action whose typed form would not
// re-encode to the same bytes (unknown fields in a move, non-zero padding),
// stays an ActionExperimenter so that nothing is lost.
func decodeExperimenterAction(ctx string, exp uint32, data []byte) (Action, error) {
	raw := ActionExperimenter{Experimenter: exp, Data: data}
	if exp != ExperimenterNicira || len(data) < 2 {
		return raw, nil
	}
	a, err := decodeNX(ctx, data)
	if err != nil || a == nil {
		return raw, nil
	}
	// Confirm the typed form is faithful.
	enc, err := appendActions(nil, []Action{a})
	if err != nil || len(enc) < 8 || !bytes.Equal(enc[8:], data) {
		return raw, nil
	}
	return a, nil
}

// decodeNX decodes a Nicira action from its subtype on. It returns nil for
// subtypes without a typed form.
func decodeNX(ctx string, data []byte) (Action, error) {
	r := newReader(ctx+": nicira action", data)
	sub := r.u16()
	switch sub {
	case NXASTRegMove:
		a := NXRegMove{NBits: r.u16(), SrcOfs: r.u16(), DstOfs: r.u16()}
		var sn, dn int
		a.Src, sn = readFieldHeader(r)
		a.Dst, dn = readFieldHeader(r)
		if r.err != nil {
			return nil, r.err
		}
		if s, ok := FieldSize(a.Src); !ok || s != sn {
			return nil, fmt.Errorf("%w: move source %s", ErrUnsupported, a.Src)
		}
		if s, ok := FieldSize(a.Dst); !ok || s != dn {
			return nil, fmt.Errorf("%w: move destination %s", ErrUnsupported, a.Dst)
		}
		return a, nil
	case NXASTResubmitTable:
		return NXResubmitTable{InPort: r.u16(), Table: r.u8()}, r.err
	case NXASTConjunction:
		return NXConjunction{Clause: r.u8(), NClauses: r.u8(), ID: r.u32()}, r.err
	case NXASTCT:
		a := NXConntrack{Flags: r.u16()}
		zsrc := r.u32()
		zone := r.u16()
		a.RecircTable = r.u8()
		r.skip(3)
		a.Alg = r.u16()
		if r.err != nil {
			return nil, r.err
		}
		if zsrc == 0 {
			a.ZoneImm = zone
		} else {
			a.ZoneSrc = FieldID{Class: uint16(zsrc >> 16), Field: uint8(zsrc>>9) & 0x7f}
			a.ZoneOfsNbits = zone
		}
		// Nested actions: the rest of the action; ct's own length is a
		// multiple of 8 and so is its 24-byte header, so no padding here.
		acts, err := readActions(ctx+": ct", data[r.off:])
		if err != nil {
			return nil, err
		}
		a.Actions = acts
		return a, nil
	case NXASTNAT:
		r.skip(2)
		a := NXNat{Flags: r.u16(), RangePresent: r.u16()}
		p := a.RangePresent
		read := func(bit uint16, n int) netip.Addr {
			if p&bit == 0 {
				return netip.Addr{}
			}
			ad, _ := netip.AddrFromSlice(r.take(n))
			return ad
		}
		a.IPv4Min = read(NXNatRangeIPv4Min, 4)
		a.IPv4Max = read(NXNatRangeIPv4Max, 4)
		a.IPv6Min = read(NXNatRangeIPv6Min, 16)
		a.IPv6Max = read(NXNatRangeIPv6Max, 16)
		if p&NXNatRangeProtoMin != 0 {
			a.ProtoMin = r.u16()
		}
		if p&NXNatRangeProtoMax != 0 {
			a.ProtoMax = r.u16()
		}
		return a, r.err
	}
	return nil, nil
}
