package packet

import (
	"encoding/binary"
)

// EtherTypes, IP protocol numbers, ARP operations and ICMP types this package
// knows by name.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100 // 802.1Q customer tag
	EtherTypeQinQ = 0x88a8 // 802.1ad service tag, also skipped

	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17

	ARPRequest = 1
	ARPReply   = 2

	ICMPEchoReply      = 0
	ICMPDestUnreach    = 3
	ICMPSourceQuench   = 4
	ICMPRedirect       = 5
	ICMPEchoRequest    = 8
	ICMPTimeExceeded   = 11
	ICMPParamProblem   = 12
	ICMPCodeFragNeeded = 4 // code of ICMPDestUnreach carrying a next-hop MTU (RFC 1191)
)

// Fixed header sizes.
const (
	ethLen     = 14
	vlanLen    = 4
	arpLen     = 28
	ipv4MinLen = 20
	tcpMinLen  = 20
	udpLen     = 8
	icmpLen    = 8 // type, code, checksum and the 4-byte rest of header
)

// layer names a checksum; its String is used in ChecksumError.Layer.
type layer uint8

const (
	layerIPv4 layer = iota
	layerTCP
	layerUDP
	layerICMP
	layerInner // added to one of the above for the quoted datagram
)

func (l layer) String() string {
	names := [...]string{"ipv4", "tcp", "udp", "icmp"}
	if l >= layerInner {
		return "inner " + names[l-layerInner]
	}
	return names[l]
}

func (l layer) base() layer {
	if l >= layerInner {
		return l - layerInner
	}
	return l
}

// cksum records where a checksum lives and what it covers, so that setters,
// FixChecksums and Verify share one description of every checksum.
type cksum struct {
	field    int   // offset of the 16-bit checksum field
	lo, hi   int   // covered bytes present in the frame, [lo, hi)
	pseudo   int   // offset of the 8 address bytes of the TCP/UDP pseudo-header, 0 if none
	proto    uint8 // pseudo-header protocol
	layer    layer
	complete bool // [lo, hi) is all the checksum covers, so it can be recomputed and verified
}

// covers reports whether the 16-bit word at off is summed by c.
func (c *cksum) covers(off int) bool {
	return off >= c.lo && off+2 <= c.hi || c.pseudo != 0 && off >= c.pseudo && off < c.pseudo+8
}

// Frame is a parsed view over the bytes of one Ethernet frame, made by Parse.
//
// Its methods come in groups named after the header they touch, like
// OpenFlow's fields: Eth*, ARP*, IPv4 (IPv4Src, TTL, IPID, ...), L4Src and
// L4Dst (TCP or UDP ports), ICMP*, and Inner* for the datagram quoted in an
// ICMP error, the packet that caused it, which translating the error back to
// a workload rewrites as well as the outer header. Getters return zero
// values when the frame lacks the header, and setters ErrNoHeader; the zero
// Frame lacks them all. Getters that return net.HardwareAddr or []byte alias
// the frame's bytes: copy them to keep them past the next edit.
//
// Methods have pointer receivers and Parse returns a value, so keep it in a
// variable: f, err := packet.Parse(b); err = f.SetTTL(63). A Frame is not
// safe for concurrent edits, like the bytes it points to.
type Frame struct {
	b     []byte
	vlans int    // 802.1Q/802.1ad tags skipped
	etype uint16 // EtherType after the tags
	l3    int    // offset of the ARP packet or IPv4 header
	end   int    // end of the IPv4 datagram (Ethernet padding follows) or of the frame
	ihl   int    // IPv4 header length
	l4    int    // offset of the TCP, UDP or ICMP header; 0 if none
	l4end int    // end of the L4 data (UDP length may be less than the IP payload)
	in    int    // offset of the IPv4 header quoted in an ICMP error; 0 if none
	inIHL int
	inL4  int // offset of the quoted L4 header; 0 if fewer than 8 bytes of it are present

	cs  [4]cksum // innermost first, so recomputing in order handles nesting
	ncs int
}

func be16(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }

// Parse decodes the frame in b. On success the Frame refers to b: setters
// edit b in place. On error the returned Frame is empty.
//
// An IPv4 datagram must fit in b (bytes after its total length are taken as
// Ethernet padding); TCP, UDP and ICMP headers must be complete; an ICMP
// error must quote the original IPv4 header and at least the first 8 bytes of
// its payload (RFC 792), unless the original was shorter.
func Parse(b []byte) (Frame, error) {
	var f Frame
	if err := f.parse(b); err != nil {
		return Frame{}, err
	}
	return f, nil
}

func (f *Frame) parse(b []byte) error {
	if len(b) < ethLen {
		return errf(ErrTruncated, "ethernet frame of %d bytes, want at least %d", len(b), ethLen)
	}
	off := 12
	et := be16(b, off)
	for et == EtherTypeVLAN || et == EtherTypeQinQ {
		if len(b) < off+vlanLen+2 {
			return errf(ErrTruncated, "802.1Q tag at byte %d runs past the %d-byte frame", off, len(b))
		}
		off += vlanLen
		f.vlans++
		et = be16(b, off)
	}
	f.b, f.etype, f.l3, f.end = b, et, off+2, len(b)
	switch et {
	case EtherTypeARP:
		return f.parseARP()
	case EtherTypeIPv4:
		return f.parseIPv4()
	}
	return nil
}

func (f *Frame) parseARP() error {
	a := f.b[f.l3:]
	if len(a) < arpLen {
		return errf(ErrTruncated, "arp packet of %d bytes, want %d", len(a), arpLen)
	}
	if ht, pt := be16(a, 0), be16(a, 2); ht != 1 || pt != EtherTypeIPv4 {
		return errf(ErrUnsupported, "arp hardware type %d protocol %#04x, want 1 (ethernet) and 0x0800 (ipv4)", ht, pt)
	}
	if a[4] != 6 || a[5] != 4 {
		return errf(ErrMalformed, "arp address lengths %d and %d, want 6 and 4", a[4], a[5])
	}
	f.end = f.l3 + arpLen
	return nil
}

// ipv4Lengths checks the fixed part of the IPv4 header at the start of h and
// returns its header and total lengths. what names the header in errors.
func ipv4Lengths(h []byte, what string) (ihl, total int, err error) {
	if len(h) < ipv4MinLen {
		return 0, 0, errf(ErrTruncated, "%s header needs %d bytes, have %d", what, ipv4MinLen, len(h))
	}
	if v := h[0] >> 4; v != 4 {
		return 0, 0, errf(ErrMalformed, "%s version %d, want 4", what, v)
	}
	ihl = int(h[0]&0x0f) * 4
	if ihl < ipv4MinLen {
		return 0, 0, errf(ErrMalformed, "%s header length %d < %d", what, ihl, ipv4MinLen)
	}
	if ihl > len(h) {
		return 0, 0, errf(ErrTruncated, "%s header length %d runs past the %d bytes present", what, ihl, len(h))
	}
	total = int(be16(h, 2))
	if total < ihl {
		return 0, 0, errf(ErrMalformed, "%s total length %d < header length %d", what, total, ihl)
	}
	return ihl, total, nil
}

// fragInfo returns whether the IPv4 header at h is a fragment and its
// fragment offset in 8-byte units.
func fragInfo(h []byte) (frag bool, offset int) {
	fo := be16(h, 6)
	return fo&0x3fff != 0, int(fo & 0x1fff)
}

func (f *Frame) addCksum(c cksum) {
	f.cs[f.ncs] = c
	f.ncs++
}

func (f *Frame) parseIPv4() error {
	h := f.b[f.l3:]
	ihl, total, err := ipv4Lengths(h, "ipv4")
	if err != nil {
		return err
	}
	if total > len(h) {
		return errf(ErrTruncated, "ipv4 total length %d runs past the %d bytes after the ethernet header", total, len(h))
	}
	f.ihl, f.end = ihl, f.l3+total
	frag, offset := fragInfo(h)
	ip := cksum{field: f.l3 + 10, lo: f.l3, hi: f.l3 + ihl, layer: layerIPv4, complete: true}
	if offset != 0 {
		// A later fragment carries no L4 header.
		f.addCksum(ip)
		return nil
	}
	l4, payload := f.l3+ihl, total-ihl
	c := cksum{lo: l4, hi: f.end, pseudo: f.l3 + 12, proto: h[9], complete: !frag}
	switch h[9] {
	case ProtoTCP:
		if payload < tcpMinLen {
			return errf(ErrTruncated, "tcp header needs %d bytes, ipv4 payload has %d", tcpMinLen, payload)
		}
		doff := int(f.b[l4+12]>>4) * 4
		if doff < tcpMinLen {
			return errf(ErrMalformed, "tcp data offset %d < %d", doff, tcpMinLen)
		}
		if doff > payload {
			return errf(ErrTruncated, "tcp data offset %d runs past the %d-byte ipv4 payload", doff, payload)
		}
		c.field, c.layer = l4+16, layerTCP
	case ProtoUDP:
		if payload < udpLen {
			return errf(ErrTruncated, "udp header needs %d bytes, ipv4 payload has %d", udpLen, payload)
		}
		ulen := int(be16(f.b, l4+4))
		if ulen < udpLen {
			return errf(ErrMalformed, "udp length %d < %d", ulen, udpLen)
		}
		if !frag {
			if ulen > payload {
				return errf(ErrTruncated, "udp length %d runs past the %d-byte ipv4 payload", ulen, payload)
			}
			c.hi = l4 + ulen
		}
		c.field, c.layer = l4+6, layerUDP
	case ProtoICMP:
		if payload < icmpLen {
			return errf(ErrTruncated, "icmp header needs %d bytes, ipv4 payload has %d", icmpLen, payload)
		}
		c.field, c.layer, c.pseudo = l4+2, layerICMP, 0
	default:
		f.addCksum(ip)
		return nil
	}
	f.l4, f.l4end = l4, c.hi
	if c.layer == layerICMP && isICMPError(f.b[l4]) {
		if err := f.parseInner(); err != nil {
			return err
		}
	}
	f.addCksum(c)
	f.addCksum(ip)
	return nil
}

// isICMPError reports whether ICMP type t quotes the datagram it is about.
func isICMPError(t uint8) bool {
	switch t {
	case ICMPDestUnreach, ICMPSourceQuench, ICMPRedirect, ICMPTimeExceeded, ICMPParamProblem:
		return true
	}
	return false
}

// isICMPQuery reports whether ICMP type t has an identifier and sequence
// number: echo, timestamp, information and address mask messages.
func isICMPQuery(t uint8) bool {
	switch t {
	case 0, 8, 13, 14, 15, 16, 17, 18:
		return true
	}
	return false
}

// parseInner decodes the datagram quoted by the ICMP error at f.l4: its IPv4
// header must be complete, followed by at least 8 bytes of its payload or
// all of it. The quoted L4 header is recorded only if its first 8 bytes are
// present, and its checksum only if the checksum field is.
func (f *Frame) parseInner() error {
	in := f.l4 + icmpLen
	q := f.b[in:f.end]
	ihl, total, err := ipv4Lengths(q, "icmp error: quoted ipv4")
	if err != nil {
		return err
	}
	if need := min(total, ihl+8); len(q) < need {
		return errf(ErrTruncated, "icmp error quotes %d bytes of the original datagram, want at least %d (header and 8 bytes, RFC 792)", len(q), need)
	}
	f.in, f.inIHL = in, ihl
	frag, offset := fragInfo(q)
	ip := cksum{field: in + 10, lo: in, hi: in + ihl, layer: layerInner + layerIPv4, complete: true}
	l4, segEnd := in+ihl, in+total
	if offset != 0 || total-ihl < 8 {
		f.addCksum(ip)
		return nil
	}
	c := cksum{lo: l4, pseudo: in + 12, proto: q[9]}
	switch q[9] {
	case ProtoTCP:
		c.field, c.layer = l4+16, layerInner+layerTCP
	case ProtoUDP:
		c.field, c.layer = l4+6, layerInner+layerUDP
		if ulen := int(be16(f.b, l4+4)); ulen >= udpLen && ulen <= total-ihl {
			segEnd = l4 + ulen
		} else {
			frag = true // a length we cannot trust: never recompute or verify
		}
	case ProtoICMP:
		c.field, c.layer, c.pseudo = l4+2, layerInner+layerICMP, 0
	default:
		f.addCksum(ip)
		return nil
	}
	f.inL4 = l4
	c.hi = min(segEnd, f.end)
	c.complete = !frag && segEnd <= f.end
	// Record the checksum only if it was quoted, and lies within the
	// original segment (a broken original may be shorter than a TCP header).
	if c.field+2 <= c.hi {
		f.addCksum(c)
	}
	f.addCksum(ip)
	return nil
}
