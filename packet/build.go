package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Header holds the Ethernet and IPv4 fields that the IPv4 builders write.
// Fields left zero get the values a host would send, except where noted.
type Header struct {
	EthSrc, EthDst net.HardwareAddr // required, 6 bytes each
	VLANs          []uint16         // 802.1Q tag control fields to insert, outermost first
	Src, Dst       netip.Addr       // required IPv4 addresses
	TTL            uint8            // 0 means 64; set 0 afterwards with SetTTL if a test needs it
	TOS            uint8
	ID             uint16
	DF             bool
	MF             bool   // more fragments
	FragOffset     uint16 // fragment offset in 8-byte units, at most 0x1fff
	Options        []byte // IPv4 options, padded with end-of-list bytes to a multiple of 4, at most 40
}

// TCP holds the TCP header fields BuildTCP writes; Window 0 stays 0.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            uint8 // TCPFin | TCPSyn ...
	Window           uint16
	Options          []byte // padded with end-of-list bytes to a multiple of 4, at most 40
}

// TCP flags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
	TCPUrg = 0x20
)

// ICMPError describes the ICMP error that BuildICMPError writes.
type ICMPError struct {
	Type, Code uint8
	// MTU is the next-hop MTU of a "fragmentation needed" error (type 3,
	// code 4, RFC 1191); it is written only for that type and code.
	MTU uint16
	// Quote is how many bytes of the original datagram to quote. 0 quotes
	// its header and 8 bytes of payload, the minimum of RFC 792; a larger
	// value (Linux quotes up to 576 bytes in all) is capped at the
	// datagram's length.
	Quote int
}

// maxIPv4 is the largest IPv4 total length.
const maxIPv4 = 0xffff

// pad4 returns n rounded up to a multiple of 4.
func pad4(n int) int { return (n + 3) &^ 3 }

// start allocates the frame and writes the Ethernet header, tags and IPv4
// header for an L4 part of l4len bytes, returning the frame and the L4
// offset. Checksums are left to finish.
func (h *Header) start(proto uint8, l4len int) ([]byte, int, error) {
	if len(h.EthSrc) != 6 || len(h.EthDst) != 6 {
		return nil, 0, errf(ErrBadValue, "build: ethernet addresses of %d and %d bytes, want 6", len(h.EthSrc), len(h.EthDst))
	}
	if !h.Src.Is4() || !h.Dst.Is4() {
		return nil, 0, errf(ErrBadValue, "build: addresses %v and %v, want ipv4", h.Src, h.Dst)
	}
	if h.FragOffset > 0x1fff {
		return nil, 0, errf(ErrBadValue, "build: fragment offset %d > %d", h.FragOffset, 0x1fff)
	}
	ihl := ipv4MinLen + pad4(len(h.Options))
	if ihl > 60 {
		return nil, 0, errf(ErrBadValue, "build: %d bytes of ipv4 options, at most 40", len(h.Options))
	}
	total := ihl + l4len
	if total > maxIPv4 {
		return nil, 0, errf(ErrBadValue, "build: ipv4 total length %d > %d", total, maxIPv4)
	}
	l3 := ethLen + vlanLen*len(h.VLANs)
	b := make([]byte, l3+total)
	copy(b[0:], h.EthDst)
	copy(b[6:], h.EthSrc)
	off := 12
	for _, tci := range h.VLANs {
		binary.BigEndian.PutUint16(b[off:], EtherTypeVLAN)
		binary.BigEndian.PutUint16(b[off+2:], tci)
		off += vlanLen
	}
	binary.BigEndian.PutUint16(b[off:], EtherTypeIPv4)
	ip := b[l3:]
	ip[0] = 0x40 | byte(ihl/4)
	ip[1] = h.TOS
	binary.BigEndian.PutUint16(ip[2:], uint16(total))
	binary.BigEndian.PutUint16(ip[4:], h.ID)
	fo := h.FragOffset & 0x1fff
	if h.DF {
		fo |= 0x4000
	}
	if h.MF {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[8] = h.TTL
	if ip[8] == 0 {
		ip[8] = 64
	}
	ip[9] = proto
	copy(ip[12:], h.Src.AsSlice())
	copy(ip[16:], h.Dst.AsSlice())
	copy(ip[ipv4MinLen:], h.Options)
	return b, l3 + ihl, nil
}

// finish parses the built frame, which also checks it, and computes all its
// checksums, a UDP one included.
func finish(b []byte) ([]byte, error) {
	f, err := Parse(b)
	if err != nil {
		return nil, err
	}
	f.fix(true)
	return b, nil
}

// BuildIPv4 returns an Ethernet frame carrying an IPv4 datagram of protocol
// proto with payload copied in as is. Only the IPv4 header checksum is
// computed, so it can build TCP, UDP or ICMP with deliberately wrong
// checksums; call FixChecksums on the parsed frame to compute them.
func BuildIPv4(h Header, proto uint8, payload []byte) ([]byte, error) {
	b, l4, err := h.start(proto, len(payload))
	if err != nil {
		return nil, err
	}
	copy(b[l4:], payload)
	l3 := ethLen + vlanLen*len(h.VLANs)
	binary.BigEndian.PutUint16(b[l3+10:], Checksum(b[l3:l4]))
	return b, nil
}

// BuildTCP returns an Ethernet/IPv4/TCP frame with correct checksums.
func BuildTCP(h Header, t TCP, payload []byte) ([]byte, error) {
	hl := tcpMinLen + pad4(len(t.Options))
	if hl > 60 {
		return nil, errf(ErrBadValue, "build tcp: %d bytes of options, at most 40", len(t.Options))
	}
	b, o, err := h.start(ProtoTCP, hl+len(payload))
	if err != nil {
		return nil, err
	}
	s := b[o:]
	binary.BigEndian.PutUint16(s[0:], t.SrcPort)
	binary.BigEndian.PutUint16(s[2:], t.DstPort)
	binary.BigEndian.PutUint32(s[4:], t.Seq)
	binary.BigEndian.PutUint32(s[8:], t.Ack)
	s[12] = byte(hl/4) << 4
	s[13] = t.Flags
	binary.BigEndian.PutUint16(s[14:], t.Window)
	copy(s[tcpMinLen:], t.Options)
	copy(s[hl:], payload)
	return finish(b)
}

// BuildUDP returns an Ethernet/IPv4/UDP frame with correct checksums; the
// UDP checksum is always computed (a computed zero is sent as 0xffff).
func BuildUDP(h Header, srcPort, dstPort uint16, payload []byte) ([]byte, error) {
	b, o, err := h.start(ProtoUDP, udpLen+len(payload))
	if err != nil {
		return nil, err
	}
	s := b[o:]
	binary.BigEndian.PutUint16(s[0:], srcPort)
	binary.BigEndian.PutUint16(s[2:], dstPort)
	binary.BigEndian.PutUint16(s[4:], uint16(udpLen+len(payload)))
	copy(s[udpLen:], payload)
	return finish(b)
}

// BuildICMPEcho returns an ICMP echo request (typ ICMPEchoRequest) or reply
// (ICMPEchoReply) with correct checksums.
func BuildICMPEcho(h Header, typ uint8, id, seq uint16, payload []byte) ([]byte, error) {
	if typ != ICMPEchoRequest && typ != ICMPEchoReply {
		return nil, errf(ErrBadValue, "build icmp echo: type %d, want %d or %d", typ, ICMPEchoRequest, ICMPEchoReply)
	}
	b, o, err := h.start(ProtoICMP, icmpLen+len(payload))
	if err != nil {
		return nil, err
	}
	s := b[o:]
	s[0] = typ
	binary.BigEndian.PutUint16(s[4:], id)
	binary.BigEndian.PutUint16(s[6:], seq)
	copy(s[icmpLen:], payload)
	return finish(b)
}

// BuildICMPError returns an ICMP error about original, an IPv4 datagram
// starting at its header (Frame.L3 of the frame that caused it), quoting as
// much of it as e.Quote says, with correct checksums. The quoted bytes are
// copied unchanged, so a wrong checksum in original stays wrong.
func BuildICMPError(h Header, e ICMPError, original []byte) ([]byte, error) {
	if !isICMPError(e.Type) {
		return nil, errf(ErrBadValue, "build icmp error: type %d is not an error type", e.Type)
	}
	ihl, _, err := ipv4Lengths(original, "build icmp error: original ipv4")
	if err != nil {
		return nil, err
	}
	q := e.Quote
	if q <= 0 {
		q = ihl + 8
	}
	q = min(q, len(original))
	b, o, err := h.start(ProtoICMP, icmpLen+q)
	if err != nil {
		return nil, err
	}
	s := b[o:]
	s[0], s[1] = e.Type, e.Code
	if e.Type == ICMPDestUnreach && e.Code == ICMPCodeFragNeeded {
		binary.BigEndian.PutUint16(s[6:], e.MTU)
	}
	copy(s[icmpLen:], original[:q])
	return finish(b)
}

// BuildARPRequest returns a broadcast ARP request from sha/spa asking for
// tpa; the target hardware address is zero. With spa equal to tpa it is a
// gratuitous ARP announcement.
func BuildARPRequest(sha net.HardwareAddr, spa, tpa netip.Addr) ([]byte, error) {
	return buildARP(ARPRequest, sha, spa, net.HardwareAddr{0, 0, 0, 0, 0, 0}, tpa,
		net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
}

// BuildARPReply returns an ARP reply telling tha/tpa that spa is at sha,
// sent from sha to tha.
func BuildARPReply(sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) ([]byte, error) {
	return buildARP(ARPReply, sha, spa, tha, tpa, tha)
}

func buildARP(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr, dst net.HardwareAddr) ([]byte, error) {
	if len(sha) != 6 || len(tha) != 6 {
		return nil, errf(ErrBadValue, "build arp: hardware addresses of %d and %d bytes, want 6", len(sha), len(tha))
	}
	if !spa.Is4() || !tpa.Is4() {
		return nil, errf(ErrBadValue, "build arp: protocol addresses %v and %v, want ipv4", spa, tpa)
	}
	b := make([]byte, ethLen+arpLen)
	copy(b[0:], dst)
	copy(b[6:], sha)
	binary.BigEndian.PutUint16(b[12:], EtherTypeARP)
	a := b[ethLen:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], EtherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], sha)
	copy(a[14:], spa.AsSlice())
	copy(a[18:], tha)
	copy(a[24:], tpa.AsSlice())
	return b, nil
}
