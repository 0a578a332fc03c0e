package openflow

import (
	"encoding/hex"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"strings"
)

// OXM classes. OpenFlow basic fields live in ClassOpenFlowBasic; Open
// vSwitch's Nicira extension fields (registers, conntrack, tunnel metadata)
// keep their historic NXM classes, which OVS accepts inside OpenFlow 1.3
// matches and set-field actions unchanged.
const (
	ClassNXM0          uint16 = 0x0000
	ClassNXM1          uint16 = 0x0001
	ClassOpenFlowBasic uint16 = 0x8000
	ClassPacketRegs    uint16 = 0x8001
	ClassExperimenter  uint16 = 0xffff
)

// Experimenter IDs that appear in OXM headers, actions and messages.
const (
	ExperimenterNicira uint32 = 0x00002320
	ExperimenterONF    uint32 = 0x4f4e4600
)

// FieldID names a match field independent of its value. It is comparable,
// so it can key maps and be compared with ==.
type FieldID struct {
	Class        uint16
	Field        uint8  // 7-bit field number
	Experimenter uint32 // only when Class == ClassExperimenter
}

// OpenFlow basic field IDs (OXM_OF_*).
var (
	IDInPort       = FieldID{Class: ClassOpenFlowBasic, Field: 0}
	IDInPhyPort    = FieldID{Class: ClassOpenFlowBasic, Field: 1}
	IDMetadata     = FieldID{Class: ClassOpenFlowBasic, Field: 2}
	IDEthDst       = FieldID{Class: ClassOpenFlowBasic, Field: 3}
	IDEthSrc       = FieldID{Class: ClassOpenFlowBasic, Field: 4}
	IDEthType      = FieldID{Class: ClassOpenFlowBasic, Field: 5}
	IDVLANVID      = FieldID{Class: ClassOpenFlowBasic, Field: 6}
	IDVLANPCP      = FieldID{Class: ClassOpenFlowBasic, Field: 7}
	IDIPDSCP       = FieldID{Class: ClassOpenFlowBasic, Field: 8}
	IDIPECN        = FieldID{Class: ClassOpenFlowBasic, Field: 9}
	IDIPProto      = FieldID{Class: ClassOpenFlowBasic, Field: 10}
	IDIPv4Src      = FieldID{Class: ClassOpenFlowBasic, Field: 11}
	IDIPv4Dst      = FieldID{Class: ClassOpenFlowBasic, Field: 12}
	IDTCPSrc       = FieldID{Class: ClassOpenFlowBasic, Field: 13}
	IDTCPDst       = FieldID{Class: ClassOpenFlowBasic, Field: 14}
	IDUDPSrc       = FieldID{Class: ClassOpenFlowBasic, Field: 15}
	IDUDPDst       = FieldID{Class: ClassOpenFlowBasic, Field: 16}
	IDSCTPSrc      = FieldID{Class: ClassOpenFlowBasic, Field: 17}
	IDSCTPDst      = FieldID{Class: ClassOpenFlowBasic, Field: 18}
	IDICMPv4Type   = FieldID{Class: ClassOpenFlowBasic, Field: 19}
	IDICMPv4Code   = FieldID{Class: ClassOpenFlowBasic, Field: 20}
	IDARPOp        = FieldID{Class: ClassOpenFlowBasic, Field: 21}
	IDARPSpa       = FieldID{Class: ClassOpenFlowBasic, Field: 22}
	IDARPTpa       = FieldID{Class: ClassOpenFlowBasic, Field: 23}
	IDARPSha       = FieldID{Class: ClassOpenFlowBasic, Field: 24}
	IDARPTha       = FieldID{Class: ClassOpenFlowBasic, Field: 25}
	IDIPv6Src      = FieldID{Class: ClassOpenFlowBasic, Field: 26}
	IDIPv6Dst      = FieldID{Class: ClassOpenFlowBasic, Field: 27}
	IDIPv6FLabel   = FieldID{Class: ClassOpenFlowBasic, Field: 28}
	IDICMPv6Type   = FieldID{Class: ClassOpenFlowBasic, Field: 29}
	IDICMPv6Code   = FieldID{Class: ClassOpenFlowBasic, Field: 30}
	IDIPv6NDTarget = FieldID{Class: ClassOpenFlowBasic, Field: 31}
	IDIPv6NDSLL    = FieldID{Class: ClassOpenFlowBasic, Field: 32}
	IDIPv6NDTLL    = FieldID{Class: ClassOpenFlowBasic, Field: 33}
	IDMPLSLabel    = FieldID{Class: ClassOpenFlowBasic, Field: 34}
	IDMPLSTC       = FieldID{Class: ClassOpenFlowBasic, Field: 35}
	IDMPLSBOS      = FieldID{Class: ClassOpenFlowBasic, Field: 36}
	IDPBBISID      = FieldID{Class: ClassOpenFlowBasic, Field: 37}
	IDTunnelID     = FieldID{Class: ClassOpenFlowBasic, Field: 38}
	IDIPv6ExtHdr   = FieldID{Class: ClassOpenFlowBasic, Field: 39}
)

// Nicira extension field IDs (NXM_NX_*) that NVI uses.
var (
	IDTunIPv4Src = FieldID{Class: ClassNXM1, Field: 31}
	IDTunIPv4Dst = FieldID{Class: ClassNXM1, Field: 32}
	IDPktMark    = FieldID{Class: ClassNXM1, Field: 33}
	IDConjID     = FieldID{Class: ClassNXM1, Field: 37}
	IDCtState    = FieldID{Class: ClassNXM1, Field: 105}
	IDCtZone     = FieldID{Class: ClassNXM1, Field: 106}
	IDCtMark     = FieldID{Class: ClassNXM1, Field: 107}
	IDCtLabel    = FieldID{Class: ClassNXM1, Field: 108}
	IDNXTunID    = FieldID{Class: ClassNXM1, Field: 16}
	IDIPTTL      = FieldID{Class: ClassNXM1, Field: 29}
	IDIPFrag     = FieldID{Class: ClassNXM1, Field: 26} // NXM_NX_IP_FRAG: OXM has no fragment field
)

// IDNXReg is the FieldID of Nicira register n (0..15); NXM_NX_REGn.
func IDNXReg(n int) FieldID { return FieldID{Class: ClassNXM1, Field: uint8(n & 0x7f)} }

// fieldFormat says how a field's value prints.
type fieldFormat uint8

const (
	fmtDec fieldFormat = iota
	fmtHex
	fmtMAC
	fmtIP
	fmtPort
	fmtCtState
)

// fieldInfo is what the codec knows about a field: its value size (used to
// validate decoded lengths and to build 32-bit headers for NX actions) and
// how it prints.
type fieldInfo struct {
	size    int
	name    string // as in a printed match ("nw_src")
	setName string // as in set_field and move ("ip_src"); empty: name
	format  fieldFormat
}

func (fi *fieldInfo) actionName() string {
	if fi.setName != "" {
		return fi.setName
	}
	return fi.name
}

// knownFields lists every field whose length the decoder validates. Fields
// not listed are kept as raw bytes and re-encoded unchanged.
var knownFields = map[FieldID]*fieldInfo{
	IDInPort:       {4, "in_port", "", fmtPort},
	IDInPhyPort:    {4, "in_phy_port", "", fmtPort},
	IDMetadata:     {8, "metadata", "", fmtHex},
	IDEthDst:       {6, "eth_dst", "", fmtMAC},
	IDEthSrc:       {6, "eth_src", "", fmtMAC},
	IDEthType:      {2, "eth_type", "", fmtHex},
	IDVLANVID:      {2, "vlan_vid", "", fmtHex},
	IDVLANPCP:      {1, "vlan_pcp", "", fmtDec},
	IDIPDSCP:       {1, "ip_dscp", "", fmtDec},
	IDIPECN:        {1, "ip_ecn", "", fmtDec},
	IDIPProto:      {1, "ip_proto", "", fmtDec},
	IDIPv4Src:      {4, "nw_src", "ip_src", fmtIP},
	IDIPv4Dst:      {4, "nw_dst", "ip_dst", fmtIP},
	IDTCPSrc:       {2, "tcp_src", "", fmtDec},
	IDTCPDst:       {2, "tcp_dst", "", fmtDec},
	IDUDPSrc:       {2, "udp_src", "", fmtDec},
	IDUDPDst:       {2, "udp_dst", "", fmtDec},
	IDSCTPSrc:      {2, "sctp_src", "", fmtDec},
	IDSCTPDst:      {2, "sctp_dst", "", fmtDec},
	IDICMPv4Type:   {1, "icmp_type", "", fmtDec},
	IDICMPv4Code:   {1, "icmp_code", "", fmtDec},
	IDARPOp:        {2, "arp_op", "", fmtDec},
	IDARPSpa:       {4, "arp_spa", "", fmtIP},
	IDARPTpa:       {4, "arp_tpa", "", fmtIP},
	IDARPSha:       {6, "arp_sha", "", fmtMAC},
	IDARPTha:       {6, "arp_tha", "", fmtMAC},
	IDIPv6Src:      {16, "ipv6_src", "", fmtIP},
	IDIPv6Dst:      {16, "ipv6_dst", "", fmtIP},
	IDIPv6FLabel:   {4, "ipv6_label", "", fmtHex},
	IDICMPv6Type:   {1, "icmpv6_type", "", fmtDec},
	IDICMPv6Code:   {1, "icmpv6_code", "", fmtDec},
	IDIPv6NDTarget: {16, "nd_target", "", fmtIP},
	IDIPv6NDSLL:    {6, "nd_sll", "", fmtMAC},
	IDIPv6NDTLL:    {6, "nd_tll", "", fmtMAC},
	IDMPLSLabel:    {4, "mpls_label", "", fmtDec},
	IDMPLSTC:       {1, "mpls_tc", "", fmtDec},
	IDMPLSBOS:      {1, "mpls_bos", "", fmtDec},
	IDPBBISID:      {3, "pbb_isid", "", fmtHex},
	IDTunnelID:     {8, "tunnel_id", "", fmtHex},
	IDIPv6ExtHdr:   {2, "ipv6_exthdr", "", fmtHex},

	// NXM_OF_* fields without an OXM twin (the twins are added from
	// nxmAliases in init).
	{Class: ClassNXM0, Field: 0}: {2, "in_port", "", fmtPort},
	{Class: ClassNXM0, Field: 4}: {2, "vlan_tci", "", fmtHex},
	{Class: ClassNXM0, Field: 5}: {1, "nw_tos", "", fmtDec},

	// NXM_NX_*.
	IDIPFrag:                       {1, "nw_frag", "", fmtHex},
	IDIPTTL:                        {1, "nw_ttl", "", fmtDec},
	IDTunIPv4Src:                   {4, "tun_src", "", fmtIP},
	IDTunIPv4Dst:                   {4, "tun_dst", "", fmtIP},
	IDPktMark:                      {4, "pkt_mark", "", fmtHex},
	{Class: ClassNXM1, Field: 34}:  {2, "tcp_flags", "", fmtHex},
	{Class: ClassNXM1, Field: 36}:  {4, "recirc_id", "", fmtHex},
	IDConjID:                       {4, "conj_id", "", fmtDec},
	IDCtState:                      {4, "ct_state", "", fmtCtState},
	IDCtZone:                       {2, "ct_zone", "", fmtDec},
	IDCtMark:                       {4, "ct_mark", "", fmtHex},
	IDCtLabel:                      {16, "ct_label", "", fmtHex},
	{Class: ClassNXM1, Field: 119}: {1, "ct_nw_proto", "", fmtDec},
	{Class: ClassNXM1, Field: 120}: {4, "ct_nw_src", "", fmtIP},
	{Class: ClassNXM1, Field: 121}: {4, "ct_nw_dst", "", fmtIP},
	{Class: ClassNXM1, Field: 124}: {2, "ct_tp_src", "", fmtDec},
	{Class: ClassNXM1, Field: 125}: {2, "ct_tp_dst", "", fmtDec},
}

func init() {
	for alias, id := range nxmAliases {
		knownFields[alias] = knownFields[id]
	}
	for i := 0; i < 16; i++ {
		knownFields[IDNXReg(i)] = &fieldInfo{size: 4, name: fmt.Sprintf("reg%d", i), format: fmtHex}
	}
}

// nxmAliases maps the Nicira (NXM) code points of fields that OpenFlow 1.2
// later standardised to their OXM basic IDs. Open vSwitch treats both as the
// same field and itself encodes moves with the NXM form (move:eth_src is
// sent as NXM_OF_ETH_SRC), so code comparing flows read back from a switch
// should compare Canonical IDs.
var nxmAliases = map[FieldID]FieldID{
	{Class: ClassNXM0, Field: 1}:  IDEthDst,
	{Class: ClassNXM0, Field: 2}:  IDEthSrc,
	{Class: ClassNXM0, Field: 3}:  IDEthType,
	{Class: ClassNXM0, Field: 6}:  IDIPProto,
	{Class: ClassNXM0, Field: 7}:  IDIPv4Src,
	{Class: ClassNXM0, Field: 8}:  IDIPv4Dst,
	{Class: ClassNXM0, Field: 9}:  IDTCPSrc,
	{Class: ClassNXM0, Field: 10}: IDTCPDst,
	{Class: ClassNXM0, Field: 11}: IDUDPSrc,
	{Class: ClassNXM0, Field: 12}: IDUDPDst,
	{Class: ClassNXM0, Field: 13}: IDICMPv4Type,
	{Class: ClassNXM0, Field: 14}: IDICMPv4Code,
	{Class: ClassNXM0, Field: 15}: IDARPOp,
	{Class: ClassNXM0, Field: 16}: IDARPSpa,
	{Class: ClassNXM0, Field: 17}: IDARPTpa,
	{Class: ClassNXM1, Field: 17}: IDARPSha,
	{Class: ClassNXM1, Field: 18}: IDARPTha,
	{Class: ClassNXM1, Field: 19}: IDIPv6Src,
	{Class: ClassNXM1, Field: 20}: IDIPv6Dst,
	{Class: ClassNXM1, Field: 21}: IDICMPv6Type,
	{Class: ClassNXM1, Field: 22}: IDICMPv6Code,
	{Class: ClassNXM1, Field: 23}: IDIPv6NDTarget,
	{Class: ClassNXM1, Field: 24}: IDIPv6NDSLL,
	{Class: ClassNXM1, Field: 25}: IDIPv6NDTLL,
	{Class: ClassNXM1, Field: 27}: IDIPv6FLabel,
	{Class: ClassNXM1, Field: 28}: IDIPECN,
	IDNXTunID:                     IDTunnelID,
}

// Canonical returns the OXM basic ID for a Nicira alias of a standard field
// (NXM_OF_ETH_SRC → eth_src) and id itself otherwise. NXM_OF_IN_PORT is not
// an alias: it is 16 bits wide.
func (id FieldID) Canonical() FieldID {
	if c, ok := nxmAliases[id]; ok {
		return c
	}
	return id
}

// FieldSize returns the value size in bytes of a field the codec knows, or
// 0 and false for unknown fields.
func FieldSize(id FieldID) (int, bool) {
	if fi := knownFields[id]; fi != nil {
		return fi.size, true
	}
	return 0, false
}

// Name returns the field's printed name ("nw_src", "reg3", "ct_state").
// Unknown fields print as "oxm(class,field)".
func (id FieldID) Name() string {
	if fi := knownFields[id]; fi != nil {
		return fi.name
	}
	return id.rawName()
}

// ActionName is the name used in set_field and move actions, as ovs-ofctl
// prints them ("ip_src" where a match says "nw_src").
func (id FieldID) ActionName() string {
	if fi := knownFields[id]; fi != nil {
		return fi.actionName()
	}
	return id.rawName()
}

func (id FieldID) rawName() string {
	if id.Class == ClassExperimenter {
		return fmt.Sprintf("oxm(0x%x:0x%x,%d)", id.Class, id.Experimenter, id.Field)
	}
	return fmt.Sprintf("oxm(0x%x,%d)", id.Class, id.Field)
}

func (id FieldID) String() string { return id.Name() }

// header32 returns the OXM/NXM header word for id with a payload of n
// bytes (n includes the experimenter ID for experimenter fields).
func (id FieldID) header32(hasMask bool, n int) uint32 {
	h := uint32(id.Class)<<16 | uint32(id.Field&0x7f)<<9 | uint32(n&0xff)
	if hasMask {
		h |= 1 << 8
	}
	return h
}

// appendHeader appends the unmasked header of id as used by Nicira actions
// (reg_move, ct zone source): the 32-bit word, plus the experimenter ID for
// experimenter fields. OVS checks the length in the header against the
// field's real size, so only fields with a known size can be encoded.
func (id FieldID) appendHeader(b []byte) ([]byte, error) {
	size, ok := FieldSize(id)
	if !ok {
		return b, fmt.Errorf("%w: field %s has no known size for an NXM header", ErrInvalid, id)
	}
	if id.Class == ClassExperimenter {
		b = put32(b, id.header32(false, size+4))
		return put32(b, id.Experimenter), nil
	}
	return put32(b, id.header32(false, size)), nil
}

// readFieldHeader decodes an NXM/OXM header as found in Nicira actions and
// returns the field and the value size its length byte announces.
func readFieldHeader(r *reader) (FieldID, int) {
	h := r.u32()
	id := FieldID{Class: uint16(h >> 16), Field: uint8(h>>9) & 0x7f}
	n := int(h & 0xff)
	if id.Class == ClassExperimenter {
		id.Experimenter = r.u32()
		n -= 4
	}
	if h&(1<<8) != 0 {
		n /= 2
	}
	return id, n
}

// Field is one OXM TLV: a match criterion or a set-field value.
type Field struct {
	Class        uint16 // ClassOpenFlowBasic, ClassNXM0, ClassNXM1, ClassExperimenter...
	Field        uint8  // 7-bit field number
	Experimenter uint32 // only when Class == ClassExperimenter
	Value        []byte
	Mask         []byte // nil when unmasked
}

// ID returns the field's identity without its value.
func (f Field) ID() FieldID {
	id := FieldID{Class: f.Class, Field: f.Field}
	if f.Class == ClassExperimenter {
		id.Experimenter = f.Experimenter
	}
	return id
}

// Masked reports whether the field carries a mask.
func (f Field) Masked() bool { return f.Mask != nil }

// Uint returns the value as a big-endian unsigned integer. Values longer
// than 8 bytes return their low 64 bits.
func (f Field) Uint() uint64 { return beUint(f.Value) }

// MaskUint returns the mask as a big-endian integer; for an unmasked field
// it returns all ones over the value width.
func (f Field) MaskUint() uint64 {
	if f.Mask == nil {
		if len(f.Value) >= 8 {
			return ^uint64(0)
		}
		return 1<<(8*len(f.Value)) - 1
	}
	return beUint(f.Mask)
}

func beUint(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// Addr returns a 4- or 16-byte value as an IP address (the zero Addr for
// other sizes).
func (f Field) Addr() netip.Addr {
	a, _ := netip.AddrFromSlice(f.Value)
	return a
}

// Prefix returns an address field as a prefix: /32 (/128) when unmasked,
// /n for a contiguous mask. ok is false for other sizes or non-contiguous
// masks.
func (f Field) Prefix() (p netip.Prefix, ok bool) {
	a, ok := netip.AddrFromSlice(f.Value)
	if !ok {
		return netip.Prefix{}, false
	}
	if f.Mask == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	n, ok := prefixLen(f.Mask)
	if !ok || len(f.Mask) != len(f.Value) {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, n), true
}

// prefixLen returns the number of leading ones in mask if the mask is
// contiguous ones followed by zeros.
func prefixLen(mask []byte) (int, bool) {
	n := 0
	for i, c := range mask {
		if c == 0xff {
			n += 8
			continue
		}
		ones := bits.LeadingZeros8(^c)
		if c != byte(0xff<<(8-ones)) {
			return 0, false
		}
		n += ones
		for _, d := range mask[i+1:] {
			if d != 0 {
				return 0, false
			}
		}
		return n, true
	}
	return n, true
}

// HW returns a 6-byte value as a MAC address (nil for other sizes).
func (f Field) HW() net.HardwareAddr {
	if len(f.Value) != 6 {
		return nil
	}
	return net.HardwareAddr(append([]byte(nil), f.Value...))
}

// Equal reports whether two fields are identical, mask included.
func (f Field) Equal(g Field) bool {
	return f.ID() == g.ID() && string(f.Value) == string(g.Value) &&
		(f.Mask == nil) == (g.Mask == nil) && string(f.Mask) == string(g.Mask)
}

// String prints the field the way ovs-ofctl prints a match criterion:
// "tcp_dst=80", "nw_src=10.0.0.0/24", "reg0=0x5/0xff", "ct_state=+trk-new".
func (f Field) String() string {
	id := f.ID()
	return id.Name() + "=" + f.valueString()
}

// valueString formats the value (and mask) without the name.
func (f Field) valueString() string {
	fi := knownFields[f.ID()]
	if fi == nil || len(f.Value) != fi.size || (f.Mask != nil && len(f.Mask) != fi.size) {
		s := "0x" + hex.EncodeToString(f.Value)
		if len(f.Value) == 0 {
			s = "0x"
		}
		if f.Mask != nil {
			s += "/0x" + hex.EncodeToString(f.Mask)
		}
		return s
	}
	switch fi.format {
	case fmtCtState:
		return ctStateString(uint32(f.Uint()), uint32(f.MaskUint()))
	case fmtIP:
		if p, ok := f.Prefix(); ok {
			if f.Mask == nil {
				return p.Addr().String()
			}
			return p.String()
		}
		return f.Addr().String() + "/" + (Field{Value: f.Mask}).Addr().String()
	case fmtMAC:
		s := net.HardwareAddr(f.Value).String()
		if f.Mask != nil {
			s += "/" + net.HardwareAddr(f.Mask).String()
		}
		return s
	case fmtPort:
		if f.Mask == nil {
			if len(f.Value) == 2 {
				return PortString(port16to32(uint16(f.Uint())))
			}
			return PortString(uint32(f.Uint()))
		}
	case fmtDec:
		if f.Mask == nil {
			return fmt.Sprint(f.Uint())
		}
	}
	s := fmt.Sprintf("%#x", f.Uint())
	if f.Mask != nil {
		s += fmt.Sprintf("/%#x", f.MaskUint())
	}
	return s
}

// Conntrack state bits (NXM_NX_CT_STATE).
const (
	CtStateNew  uint32 = 1 << 0
	CtStateEst  uint32 = 1 << 1
	CtStateRel  uint32 = 1 << 2
	CtStateRpl  uint32 = 1 << 3
	CtStateInv  uint32 = 1 << 4
	CtStateTrk  uint32 = 1 << 5
	CtStateSNAT uint32 = 1 << 6
	CtStateDNAT uint32 = 1 << 7
)

var ctStateNames = [...]string{"new", "est", "rel", "rpl", "inv", "trk", "snat", "dnat"}

// ctStateString prints ct_state like ovs-ofctl: "+trk+est-new" for the bits
// in mask, in bit order; bits outside the names print as hex.
func ctStateString(v, mask uint32) string {
	var sb strings.Builder
	for i, n := range ctStateNames {
		bit := uint32(1) << i
		if mask&bit == 0 {
			continue
		}
		if v&bit != 0 {
			sb.WriteByte('+')
		} else {
			sb.WriteByte('-')
		}
		sb.WriteString(n)
	}
	if rest := mask &^ 0xff; rest != 0 {
		fmt.Fprintf(&sb, "%#x/%#x", v&rest, rest)
	}
	if sb.Len() == 0 {
		return "0/0"
	}
	return sb.String()
}

// appendField encodes f as an OXM TLV after validating it.
func appendField(b []byte, f Field) ([]byte, error) {
	if err := f.validate(); err != nil {
		return b, err
	}
	n := len(f.Value) + len(f.Mask)
	if f.Class == ClassExperimenter {
		n += 4
	}
	if n > 0xff {
		return b, fmt.Errorf("%w: field %s: payload %d bytes exceeds 255", ErrInvalid, f.ID(), n)
	}
	b = put32(b, f.ID().header32(f.Mask != nil, n))
	if f.Class == ClassExperimenter {
		b = put32(b, f.Experimenter)
	}
	b = append(b, f.Value...)
	return append(b, f.Mask...), nil
}

// validate checks what the switch would otherwise reject with a less
// helpful error: value and mask sizes of known fields and the 7-bit field
// number.
func (f Field) validate() error {
	if f.Field > 0x7f {
		return fmt.Errorf("%w: field number %d exceeds 7 bits", ErrInvalid, f.Field)
	}
	if f.Mask != nil && len(f.Mask) != len(f.Value) {
		return fmt.Errorf("%w: field %s: mask length %d differs from value length %d", ErrInvalid, f.ID(), len(f.Mask), len(f.Value))
	}
	if fi := knownFields[f.ID()]; fi != nil && len(f.Value) != fi.size {
		return fmt.Errorf("%w: field %s: value length %d, want %d", ErrInvalid, fi.name, len(f.Value), fi.size)
	}
	return nil
}

// readField decodes one OXM TLV.
func readField(r *reader) Field {
	h := r.u32()
	if r.err != nil {
		return Field{}
	}
	f := Field{Class: uint16(h >> 16), Field: uint8(h>>9) & 0x7f}
	n := int(h & 0xff)
	hasMask := h&(1<<8) != 0
	if f.Class == ClassExperimenter {
		if n < 4 {
			r.fail("experimenter field length %d shorter than its experimenter ID", n)
			return Field{}
		}
		f.Experimenter = r.u32()
		n -= 4
	}
	if hasMask {
		if n%2 != 0 {
			r.fail("masked field %s has odd length %d", f.ID(), n)
			return Field{}
		}
		f.Value = r.copyBytes(n / 2)
		f.Mask = r.copyBytes(n / 2)
		if f.Mask == nil {
			f.Mask = []byte{}
		}
	} else {
		f.Value = r.copyBytes(n)
	}
	if r.err != nil {
		return Field{}
	}
	if fi := knownFields[f.ID()]; fi != nil && len(f.Value) != fi.size {
		r.fail("field %s has value length %d, want %d", fi.name, len(f.Value), fi.size)
		return Field{}
	}
	return f
}

// Match is an OpenFlow 1.3 OXM match (OFPMT_OXM). An empty match matches
// every packet.
type Match struct{ Fields []Field }

// Get returns the first field with the given class and number. For
// experimenter fields use Lookup.
func (m Match) Get(class uint16, field uint8) (Field, bool) {
	for _, f := range m.Fields {
		if f.Class == class && f.Field == field {
			return f, true
		}
	}
	return Field{}, false
}

// Lookup returns the first field with the given identity.
func (m Match) Lookup(id FieldID) (Field, bool) {
	for _, f := range m.Fields {
		if f.ID() == id {
			return f, true
		}
	}
	return Field{}, false
}

// Equal reports whether both matches hold the same fields in the same
// order.
func (m Match) Equal(o Match) bool {
	if len(m.Fields) != len(o.Fields) {
		return false
	}
	for i := range m.Fields {
		if !m.Fields[i].Equal(o.Fields[i]) {
			return false
		}
	}
	return true
}

// String prints the match as ovs-ofctl would, with protocol shorthands
// ("ip", "tcp", "arp") standing for eth_type (and ip_proto) criteria.
func (m Match) String() string {
	parts := make([]string, 0, len(m.Fields))
	ethType, hasEth := m.Lookup(IDEthType)
	proto, hasProto := m.Lookup(IDIPProto)
	protoAbsorbed := false
	for _, f := range m.Fields {
		switch {
		case hasEth && f.ID() == IDEthType && ethType.Mask == nil && len(f.Value) == 2:
			name := ""
			var p uint64 = 1 << 16 // no protocol
			if hasProto && proto.Mask == nil && len(proto.Value) == 1 {
				p = proto.Uint()
			}
			name, protoAbsorbed = protoShorthand(uint16(f.Uint()), p)
			if name == "" {
				parts = append(parts, f.String())
				continue
			}
			parts = append(parts, name)
		case protoAbsorbed && f.ID() == IDIPProto:
			// printed as part of the shorthand
		default:
			parts = append(parts, f.String())
		}
	}
	return strings.Join(parts, ",")
}

// protoShorthand maps eth_type (and ip_proto) to ovs-ofctl's shorthand.
// absorbed reports whether the ip_proto is covered by the name.
func protoShorthand(ethType uint16, proto uint64) (name string, absorbed bool) {
	var base string
	suffix := ""
	switch ethType {
	case EthTypeIPv4:
		base = "ip"
	case EthTypeIPv6:
		base, suffix = "ipv6", "6"
	case EthTypeARP:
		return "arp", false
	default:
		return "", false
	}
	switch proto {
	case 6:
		return "tcp" + suffix, true
	case 17:
		return "udp" + suffix, true
	case 132:
		return "sctp" + suffix, true
	case 1:
		if suffix == "" {
			return "icmp", true
		}
	case 58:
		if suffix == "6" {
			return "icmp6", true
		}
	}
	return base, false
}

// Ethernet types NVI matches on.
const (
	EthTypeIPv4 uint16 = 0x0800
	EthTypeARP  uint16 = 0x0806
	EthTypeVLAN uint16 = 0x8100
	EthTypeIPv6 uint16 = 0x86dd
	EthTypeMPLS uint16 = 0x8847
)

// appendMatch encodes an OXM match with its ofp_match header and the
// padding to a multiple of 8 that the spec requires (the length field
// excludes the padding).
func appendMatch(b []byte, m Match) ([]byte, error) {
	start := len(b)
	b = put16(b, 1) // OFPMT_OXM
	b = put16(b, 0) // length, patched below
	for i, f := range m.Fields {
		var err error
		if b, err = appendField(b, f); err != nil {
			return b, fmt.Errorf("match field %d: %w", i, err)
		}
	}
	if err := patch16(b, start+2, len(b)-start); err != nil {
		return b, fmt.Errorf("match: %w", err)
	}
	return padTo8(b, start), nil
}

// readMatch decodes an ofp_match including its trailing padding.
func readMatch(r *reader) Match {
	typ := r.u16()
	n := int(r.u16())
	if r.err != nil {
		return Match{}
	}
	if typ != 1 {
		r.fail("match type %d is not OFPMT_OXM", typ)
		return Match{}
	}
	if n < 4 {
		r.fail("match length %d shorter than its header", n)
		return Match{}
	}
	body := r.take(n - 4)
	if r.err != nil {
		r.err = fmt.Errorf("%w: %s: match length %d exceeds message", ErrMalformed, r.ctx, n)
		return Match{}
	}
	padding := r.take(pad8(n))
	if r.err != nil {
		r.err = fmt.Errorf("%w: %s: match padding missing", ErrMalformed, r.ctx)
		return Match{}
	}
	_ = padding
	fr := newReader(r.ctx+": match", body)
	var m Match
	for fr.remaining() > 0 {
		f := readField(fr)
		if fr.err != nil {
			break
		}
		m.Fields = append(m.Fields, f)
	}
	r.setErr(fr.err)
	return m
}

// --- Typed constructors. Each returns a Field of the exact size the spec
// gives, with values already masked, because OVS rejects a value that has
// bits outside its mask (OFPBMC_BAD_WILDCARDS).

func uintField(id FieldID, size int, v uint64) Field {
	b := make([]byte, size)
	for i := size - 1; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return Field{Class: id.Class, Field: id.Field, Experimenter: id.Experimenter, Value: b}
}

func maskedUintField(id FieldID, size int, v, mask uint64) Field {
	f := uintField(id, size, v&mask)
	f.Mask = uintField(id, size, mask).Value
	return f
}

// InPort matches the OpenFlow ingress port.
func InPort(port uint32) Field { return uintField(IDInPort, 4, uint64(port)) }

// Metadata matches the 64-bit metadata register.
func Metadata(v uint64) Field { return uintField(IDMetadata, 8, v) }

// MetadataMasked matches the metadata bits set in mask.
func MetadataMasked(v, mask uint64) Field { return maskedUintField(IDMetadata, 8, v, mask) }

func macField(id FieldID, a net.HardwareAddr) Field {
	v := make([]byte, 6)
	copy(v, a)
	return Field{Class: id.Class, Field: id.Field, Value: v}
}

// EthDst matches the Ethernet destination.
func EthDst(a net.HardwareAddr) Field { return macField(IDEthDst, a) }

// EthSrc matches the Ethernet source.
func EthSrc(a net.HardwareAddr) Field { return macField(IDEthSrc, a) }

// EthDstMasked matches the Ethernet destination bits set in mask.
func EthDstMasked(a, mask net.HardwareAddr) Field {
	return maskedBytes(macField(IDEthDst, a), macField(IDEthDst, mask).Value)
}

// EthSrcMasked matches the Ethernet source bits set in mask.
func EthSrcMasked(a, mask net.HardwareAddr) Field {
	return maskedBytes(macField(IDEthSrc, a), macField(IDEthSrc, mask).Value)
}

func maskedBytes(f Field, mask []byte) Field {
	for i := range f.Value {
		f.Value[i] &= mask[i]
	}
	f.Mask = mask
	return f
}

// EthType matches the Ethernet type.
func EthType(t uint16) Field { return uintField(IDEthType, 2, uint64(t)) }

// OFPVID_PRESENT: set in vlan_vid when a VLAN tag is present.
const VLANPresent uint16 = 0x1000

// VLANVID matches packets tagged with VLAN vid (the OFPVID_PRESENT bit is
// added, as OpenFlow 1.3 requires; a bare vid would mean "untagged").
func VLANVID(vid uint16) Field { return uintField(IDVLANVID, 2, uint64(vid&0x0fff|VLANPresent)) }

// VLANNone matches packets without a VLAN tag.
func VLANNone() Field { return uintField(IDVLANVID, 2, 0) }

// VLANAny matches packets with any VLAN tag.
func VLANAny() Field {
	return maskedUintField(IDVLANVID, 2, uint64(VLANPresent), uint64(VLANPresent))
}

// VLANUntagged matches packets that carry no VLAN tag, by the
// OFPVID_PRESENT bit alone (vlan_vid=0x0000/0x1000), as OVN's port security
// does: a tagged frame, whatever its VID, never matches.
func VLANUntagged() Field { return maskedUintField(IDVLANVID, 2, 0, uint64(VLANPresent)) }

// VLANPCP matches the VLAN priority.
func VLANPCP(p uint8) Field { return uintField(IDVLANPCP, 1, uint64(p)) }

// IPProto matches the IP protocol number.
func IPProto(p uint8) Field { return uintField(IDIPProto, 1, uint64(p)) }

// IPDSCP matches the 6-bit DSCP (not the whole TOS byte).
func IPDSCP(d uint8) Field { return uintField(IDIPDSCP, 1, uint64(d&0x3f)) }

// IPECN matches the 2-bit ECN.
func IPECN(e uint8) Field { return uintField(IDIPECN, 1, uint64(e&3)) }

func addrField(id FieldID, a netip.Addr) Field {
	size, _ := FieldSize(id)
	v := make([]byte, size)
	if len(v) == 4 {
		a4 := a.Unmap().As4()
		copy(v, a4[:])
	} else {
		a16 := a.As16()
		copy(v, a16[:])
	}
	return Field{Class: id.Class, Field: id.Field, Value: v}
}

// prefixField builds an address field for a prefix; a full-length prefix
// gives an unmasked field, as ovs-ofctl would.
func prefixField(id FieldID, p netip.Prefix) Field {
	f := addrField(id, p.Masked().Addr())
	bitsLen := 8 * len(f.Value)
	n := p.Bits()
	if p.Addr().Is4In6() && len(f.Value) == 4 {
		n -= 96
	}
	if n < 0 {
		n = 0
	}
	if n >= bitsLen {
		return f
	}
	mask := make([]byte, len(f.Value))
	for i := 0; i < n; i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return maskedBytes(f, mask)
}

// IPv4Src matches the IPv4 source address.
func IPv4Src(a netip.Addr) Field { return addrField(IDIPv4Src, a) }

// IPv4Dst matches the IPv4 destination address.
func IPv4Dst(a netip.Addr) Field { return addrField(IDIPv4Dst, a) }

// IPv4SrcPrefix matches IPv4 sources within p.
func IPv4SrcPrefix(p netip.Prefix) Field { return prefixField(IDIPv4Src, p) }

// IPv4DstPrefix matches IPv4 destinations within p.
func IPv4DstPrefix(p netip.Prefix) Field { return prefixField(IDIPv4Dst, p) }

// IPv6Src matches the IPv6 source address.
func IPv6Src(a netip.Addr) Field { return addrField(IDIPv6Src, a) }

// IPv6Dst matches the IPv6 destination address.
func IPv6Dst(a netip.Addr) Field { return addrField(IDIPv6Dst, a) }

// IPv6SrcPrefix matches IPv6 sources within p.
func IPv6SrcPrefix(p netip.Prefix) Field { return prefixField(IDIPv6Src, p) }

// IPv6DstPrefix matches IPv6 destinations within p.
func IPv6DstPrefix(p netip.Prefix) Field { return prefixField(IDIPv6Dst, p) }

// TCPSrc matches the TCP source port.
func TCPSrc(p uint16) Field { return uintField(IDTCPSrc, 2, uint64(p)) }

// TCPDst matches the TCP destination port.
func TCPDst(p uint16) Field { return uintField(IDTCPDst, 2, uint64(p)) }

// UDPSrc matches the UDP source port.
func UDPSrc(p uint16) Field { return uintField(IDUDPSrc, 2, uint64(p)) }

// UDPDst matches the UDP destination port.
func UDPDst(p uint16) Field { return uintField(IDUDPDst, 2, uint64(p)) }

// TCPSrcMasked matches the TCP source port bits set in mask.
func TCPSrcMasked(v, mask uint16) Field {
	return maskedUintField(IDTCPSrc, 2, uint64(v), uint64(mask))
}

// TCPDstMasked matches the TCP destination port bits set in mask.
func TCPDstMasked(v, mask uint16) Field {
	return maskedUintField(IDTCPDst, 2, uint64(v), uint64(mask))
}

// UDPSrcMasked matches the UDP source port bits set in mask.
func UDPSrcMasked(v, mask uint16) Field {
	return maskedUintField(IDUDPSrc, 2, uint64(v), uint64(mask))
}

// UDPDstMasked matches the UDP destination port bits set in mask.
func UDPDstMasked(v, mask uint16) Field {
	return maskedUintField(IDUDPDst, 2, uint64(v), uint64(mask))
}

// ICMPv4Type matches the ICMP type.
func ICMPv4Type(t uint8) Field { return uintField(IDICMPv4Type, 1, uint64(t)) }

// ICMPv4Code matches the ICMP code.
func ICMPv4Code(c uint8) Field { return uintField(IDICMPv4Code, 1, uint64(c)) }

// ARPOp matches the ARP opcode (1 request, 2 reply).
func ARPOp(op uint16) Field { return uintField(IDARPOp, 2, uint64(op)) }

// ARPSpa matches the ARP sender protocol address.
func ARPSpa(a netip.Addr) Field { return addrField(IDARPSpa, a) }

// ARPTpa matches the ARP target protocol address.
func ARPTpa(a netip.Addr) Field { return addrField(IDARPTpa, a) }

// ARPSha matches the ARP sender hardware address.
func ARPSha(a net.HardwareAddr) Field { return macField(IDARPSha, a) }

// ARPTha matches the ARP target hardware address.
func ARPTha(a net.HardwareAddr) Field { return macField(IDARPTha, a) }

// TunnelID matches the tunnel ID (OXM_OF_TUNNEL_ID).
func TunnelID(v uint64) Field { return uintField(IDTunnelID, 8, v) }

// NXReg matches Nicira register n (0..15).
func NXReg(n int, v uint32) Field { return uintField(IDNXReg(n), 4, uint64(v)) }

// NXRegMasked matches the bits of register n set in mask.
func NXRegMasked(n int, v, mask uint32) Field {
	return maskedUintField(IDNXReg(n), 4, uint64(v), uint64(mask))
}

// CtState matches conntrack state bits (CtStateTrk, CtStateEst, ...):
// bits set in mask must equal the bits in v.
func CtState(v, mask uint32) Field {
	return maskedUintField(IDCtState, 4, uint64(v), uint64(mask))
}

// CtZone matches the conntrack zone.
func CtZone(z uint16) Field { return uintField(IDCtZone, 2, uint64(z)) }

// CtMark matches the conntrack mark bits set in mask; mask 0xffffffff
// gives an unmasked field.
func CtMark(v, mask uint32) Field {
	if mask == 0xffffffff {
		return uintField(IDCtMark, 4, uint64(v))
	}
	return maskedUintField(IDCtMark, 4, uint64(v), uint64(mask))
}

// IP fragment bits of NXM_NX_IP_FRAG, as Open vSwitch sets them.
const (
	IPFragAny   uint8 = 1 // the packet is a fragment, first or later
	IPFragLater uint8 = 2 // the packet is a fragment other than the first
)

// IPFrag matches the fragment bits set in mask: IPFrag(0, IPFragAny) is
// ovs-ofctl's nw_frag=no, IPFrag(0, IPFragLater) nw_frag=not_later (whole
// packets and first fragments, which carry the L4 header).
func IPFrag(v, mask uint8) Field { return maskedUintField(IDIPFrag, 1, uint64(v), uint64(mask)) }

// PktMark matches the packet mark (skb mark).
func PktMark(v uint32) Field { return uintField(IDPktMark, 4, uint64(v)) }

// ConjID matches the conjunction ID set by conjunction actions.
func ConjID(id uint32) Field { return uintField(IDConjID, 4, uint64(id)) }

// port16to32 widens an OpenFlow 1.0 16-bit port number (as in NX actions
// and NXM_OF_IN_PORT) to the 32-bit space, mapping the reserved range.
func port16to32(p uint16) uint32 {
	if p >= 0xff00 {
		return uint32(p) + 0xffff0000
	}
	return uint32(p)
}
