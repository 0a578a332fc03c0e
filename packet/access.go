package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Bytes returns the whole frame, Ethernet padding included.
func (f *Frame) Bytes() []byte { return f.b }

// VLANTags returns how many 802.1Q or 802.1ad tags Parse skipped.
func (f *Frame) VLANTags() int { return f.vlans }

// EthDst returns the destination MAC address, or nil for an empty Frame.
func (f *Frame) EthDst() net.HardwareAddr { return f.mac(0) }

// EthSrc returns the source MAC address, or nil for an empty Frame.
func (f *Frame) EthSrc() net.HardwareAddr { return f.mac(6) }

// EthType returns the EtherType after any VLAN tags.
func (f *Frame) EthType() uint16 { return f.etype }

// SetEthDst sets the destination MAC address.
func (f *Frame) SetEthDst(mac net.HardwareAddr) error { return f.setMAC(0, mac, "ethernet") }

// SetEthSrc sets the source MAC address.
func (f *Frame) SetEthSrc(mac net.HardwareAddr) error { return f.setMAC(6, mac, "ethernet") }

// ARP accessors: an Ethernet/IPv4 ARP packet (RFC 826); it has no checksum.

// ARPOp returns the ARP operation, ARPRequest or ARPReply.
func (f *Frame) ARPOp() uint16 {
	if !f.isARP() {
		return 0
	}
	return be16(f.b, f.l3+6)
}

// ARPSHA returns the sender hardware address.
func (f *Frame) ARPSHA() net.HardwareAddr { return f.arpMAC(8) }

// ARPSPA returns the sender protocol (IPv4) address.
func (f *Frame) ARPSPA() netip.Addr { return f.arpAddr(14) }

// ARPTHA returns the target hardware address.
func (f *Frame) ARPTHA() net.HardwareAddr { return f.arpMAC(18) }

// ARPTPA returns the target protocol (IPv4) address.
func (f *Frame) ARPTPA() netip.Addr { return f.arpAddr(24) }

// SetARPOp sets the ARP operation.
func (f *Frame) SetARPOp(op uint16) error {
	if !f.isARP() {
		return errf(ErrNoHeader, "set arp op: frame has no arp packet")
	}
	binary.BigEndian.PutUint16(f.b[f.l3+6:], op)
	return nil
}

// SetARPSHA sets the sender hardware address.
func (f *Frame) SetARPSHA(mac net.HardwareAddr) error { return f.setARPMAC(8, mac) }

// SetARPSPA sets the sender protocol address.
func (f *Frame) SetARPSPA(a netip.Addr) error { return f.setARPAddr(14, a) }

// SetARPTHA sets the target hardware address.
func (f *Frame) SetARPTHA(mac net.HardwareAddr) error { return f.setARPMAC(18, mac) }

// SetARPTPA sets the target protocol address.
func (f *Frame) SetARPTPA(a netip.Addr) error { return f.setARPAddr(24, a) }

// IPv4 accessors.

// IPv4Src returns the IPv4 source address.
func (f *Frame) IPv4Src() netip.Addr { return f.ipAddr(f.ipOff(), 12) }

// IPv4Dst returns the IPv4 destination address.
func (f *Frame) IPv4Dst() netip.Addr { return f.ipAddr(f.ipOff(), 16) }

// IPProto returns the IPv4 protocol number.
func (f *Frame) IPProto() uint8 { return f.ipByte(f.ipOff(), 9) }

// TTL returns the IPv4 time to live.
func (f *Frame) TTL() uint8 { return f.ipByte(f.ipOff(), 8) }

// IPID returns the IPv4 identification field.
func (f *Frame) IPID() uint16 { return f.ipWord(f.ipOff(), 4) }

// DontFragment reports whether the IPv4 DF flag is set.
func (f *Frame) DontFragment() bool { return f.ipWord(f.ipOff(), 6)&0x4000 != 0 }

// IsFragment reports whether the datagram is an IPv4 fragment (MF set or a
// non-zero offset). A first fragment still has its L4 header, whose checksum
// covers the reassembled datagram: setters update it, FixChecksums and
// Verify leave it alone.
func (f *Frame) IsFragment() bool { return f.ipWord(f.ipOff(), 6)&0x3fff != 0 }

// IPv4HeaderLen returns the IPv4 header length in bytes, options included.
func (f *Frame) IPv4HeaderLen() int { return f.ihl }

// IPv4TotalLen returns the IPv4 total length field.
func (f *Frame) IPv4TotalLen() int { return int(f.ipWord(f.ipOff(), 2)) }

// SetIPv4Src sets the IPv4 source address, updating the IPv4 header and
// TCP/UDP checksums.
func (f *Frame) SetIPv4Src(a netip.Addr) error { return f.setIPAddr(f.ipOff(), 12, a, "ipv4") }

// SetIPv4Dst sets the IPv4 destination address, updating the IPv4 header and
// TCP/UDP checksums.
func (f *Frame) SetIPv4Dst(a netip.Addr) error { return f.setIPAddr(f.ipOff(), 16, a, "ipv4") }

// SetTTL sets the IPv4 time to live, updating the header checksum.
func (f *Frame) SetTTL(ttl uint8) error {
	off := f.ipOff()
	if off == 0 {
		return errf(ErrNoHeader, "set ttl: frame has no ipv4 header")
	}
	f.put16(off+8, uint16(ttl)<<8|uint16(f.b[off+9]))
	return nil
}

// L4Src returns the TCP or UDP source port, or 0 if the frame has neither
// header.
func (f *Frame) L4Src() uint16 { return f.port(f.portOff(), 0) }

// L4Dst returns the TCP or UDP destination port, or 0 if the frame has
// neither header.
func (f *Frame) L4Dst() uint16 { return f.port(f.portOff(), 2) }

// SetL4Src sets the TCP or UDP source port, updating its checksum.
func (f *Frame) SetL4Src(p uint16) error { return f.setPort(f.portOff(), 0, p, "tcp/udp") }

// SetL4Dst sets the TCP or UDP destination port, updating its checksum.
func (f *Frame) SetL4Dst(p uint16) error { return f.setPort(f.portOff(), 2, p, "tcp/udp") }

// ICMPType returns the ICMP type, or 0 if the frame has no ICMP header; check
// IPProto and L4 to tell that from an echo reply.
func (f *Frame) ICMPType() uint8 { return f.icmpByte(0) }

// ICMPCode returns the ICMP code.
func (f *Frame) ICMPCode() uint8 { return f.icmpByte(1) }

// ICMPID returns the identifier of an ICMP query (echo, timestamp,
// information or address mask), or 0 for other frames.
func (f *Frame) ICMPID() uint16 { return f.port(f.icmpQueryOff(), 4) }

// ICMPSeq returns the sequence number of an ICMP query, or 0 for other
// frames.
func (f *Frame) ICMPSeq() uint16 { return f.port(f.icmpQueryOff(), 6) }

// SetICMPID sets the identifier of an ICMP query, updating the ICMP checksum.
func (f *Frame) SetICMPID(id uint16) error { return f.setPort(f.icmpQueryOff(), 4, id, "icmp query") }

// ICMPNextHopMTU returns the next-hop MTU of an ICMP "fragmentation needed
// and DF set" message (RFC 1191), or 0 for other frames or for old routers
// that do not report it.
func (f *Frame) ICMPNextHopMTU() uint16 {
	if f.icmpByte(0) != ICMPDestUnreach || f.icmpByte(1) != ICMPCodeFragNeeded {
		return 0
	}
	return be16(f.b, f.l4+6)
}

// IsICMPError reports whether the frame is an ICMP error (destination
// unreachable, source quench, redirect, time exceeded or parameter problem)
// and so quotes an original datagram, which the Inner accessors reach.
func (f *Frame) IsICMPError() bool { return f.in != 0 }

// Inner accessors: the datagram quoted in an ICMP error, its IPv4 header and
// at least the first 8 bytes of its TCP, UDP or ICMP header.

// InnerIPv4Src returns the quoted datagram's IPv4 source address.
func (f *Frame) InnerIPv4Src() netip.Addr { return f.ipAddr(f.in, 12) }

// InnerIPv4Dst returns the quoted datagram's IPv4 destination address.
func (f *Frame) InnerIPv4Dst() netip.Addr { return f.ipAddr(f.in, 16) }

// InnerProto returns the quoted datagram's IPv4 protocol number.
func (f *Frame) InnerProto() uint8 { return f.ipByte(f.in, 9) }

// InnerL4Src returns the quoted TCP or UDP source port.
func (f *Frame) InnerL4Src() uint16 { return f.port(f.innerPortOff(), 0) }

// InnerL4Dst returns the quoted TCP or UDP destination port.
func (f *Frame) InnerL4Dst() uint16 { return f.port(f.innerPortOff(), 2) }

// InnerICMPID returns the identifier of a quoted ICMP query, such as the
// echo request whose TTL ran out in a traceroute.
func (f *Frame) InnerICMPID() uint16 { return f.port(f.innerQueryOff(), 4) }

// SetInnerIPv4Src sets the quoted source address, updating the quoted IPv4
// and TCP/UDP checksums and the ICMP checksum.
func (f *Frame) SetInnerIPv4Src(a netip.Addr) error {
	return f.setIPAddr(f.in, 12, a, "quoted ipv4")
}

// SetInnerIPv4Dst sets the quoted destination address, updating the quoted
// IPv4 and TCP/UDP checksums and the ICMP checksum.
func (f *Frame) SetInnerIPv4Dst(a netip.Addr) error {
	return f.setIPAddr(f.in, 16, a, "quoted ipv4")
}

// SetInnerL4Src sets the quoted TCP or UDP source port, updating the quoted
// L4 checksum (when quoted) and the ICMP checksum.
func (f *Frame) SetInnerL4Src(p uint16) error {
	return f.setPort(f.innerPortOff(), 0, p, "quoted tcp/udp")
}

// SetInnerL4Dst sets the quoted TCP or UDP destination port, updating the
// quoted L4 checksum (when quoted) and the ICMP checksum.
func (f *Frame) SetInnerL4Dst(p uint16) error {
	return f.setPort(f.innerPortOff(), 2, p, "quoted tcp/udp")
}

// SetInnerICMPID sets the identifier of a quoted ICMP query, updating its
// checksum and the outer ICMP checksum.
func (f *Frame) SetInnerICMPID(id uint16) error {
	return f.setPort(f.innerQueryOff(), 4, id, "quoted icmp query")
}

// L3 returns the ARP packet or the IPv4 datagram without Ethernet padding,
// or for other EtherTypes everything after the Ethernet header.
func (f *Frame) L3() []byte {
	if f.b == nil {
		return nil
	}
	return f.b[f.l3:f.end:f.end]
}

// L4 returns the TCP segment, UDP datagram (up to its length field) or ICMP
// message, or nil if the frame has none of them.
func (f *Frame) L4() []byte {
	if f.l4 == 0 {
		return nil
	}
	return f.b[f.l4:f.l4end:f.l4end]
}

// Payload returns the bytes after the TCP, UDP or ICMP header: application
// data, an echo's data or the datagram an ICMP error quotes. It is nil if the
// frame has no L4 header.
func (f *Frame) Payload() []byte {
	if f.l4 == 0 {
		return nil
	}
	var hl int
	switch f.b[f.l3+9] {
	case ProtoTCP:
		hl = int(f.b[f.l4+12]>>4) * 4
	case ProtoUDP:
		hl = udpLen
	default:
		hl = icmpLen
	}
	return f.b[f.l4+hl : f.l4end : f.l4end]
}

// Helpers. Offsets are 0 when the header is absent: no header can start at
// byte 0, which the Ethernet header holds.

func (f *Frame) isARP() bool { return f.etype == EtherTypeARP && f.b != nil }

func (f *Frame) ipOff() int {
	if f.etype != EtherTypeIPv4 || f.b == nil {
		return 0
	}
	return f.l3
}

// portOff returns the offset of the outer TCP or UDP header, or 0.
func (f *Frame) portOff() int {
	if f.l4 == 0 {
		return 0
	}
	if p := f.b[f.l3+9]; p == ProtoTCP || p == ProtoUDP {
		return f.l4
	}
	return 0
}

// icmpQueryOff returns the offset of the outer ICMP header if it is a query.
func (f *Frame) icmpQueryOff() int {
	if f.l4 == 0 || f.b[f.l3+9] != ProtoICMP || !isICMPQuery(f.b[f.l4]) {
		return 0
	}
	return f.l4
}

func (f *Frame) innerPortOff() int {
	if f.inL4 == 0 {
		return 0
	}
	if p := f.b[f.in+9]; p == ProtoTCP || p == ProtoUDP {
		return f.inL4
	}
	return 0
}

func (f *Frame) innerQueryOff() int {
	if f.inL4 == 0 || f.b[f.in+9] != ProtoICMP || !isICMPQuery(f.b[f.inL4]) {
		return 0
	}
	return f.inL4
}

func (f *Frame) icmpByte(i int) uint8 {
	if f.l4 == 0 || f.b[f.l3+9] != ProtoICMP {
		return 0
	}
	return f.b[f.l4+i]
}

func (f *Frame) mac(off int) net.HardwareAddr {
	if f.b == nil {
		return nil
	}
	return net.HardwareAddr(f.b[off : off+6 : off+6])
}

func (f *Frame) setMAC(off int, mac net.HardwareAddr, what string) error {
	if f.b == nil {
		return errf(ErrNoHeader, "set %s address: frame has no %s header", what, what)
	}
	if len(mac) != 6 {
		return errf(ErrBadValue, "set %s address: mac address of %d bytes, want 6", what, len(mac))
	}
	copy(f.b[off:], mac)
	return nil
}

func (f *Frame) arpMAC(off int) net.HardwareAddr {
	if !f.isARP() {
		return nil
	}
	return f.mac(f.l3 + off)
}

func (f *Frame) arpAddr(off int) netip.Addr {
	if !f.isARP() {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(f.b[f.l3+off:]))
}

func (f *Frame) setARPMAC(off int, mac net.HardwareAddr) error {
	if !f.isARP() {
		return errf(ErrNoHeader, "set arp address: frame has no arp packet")
	}
	return f.setMAC(f.l3+off, mac, "arp")
}

func (f *Frame) setARPAddr(off int, a netip.Addr) error {
	if !f.isARP() {
		return errf(ErrNoHeader, "set arp address: frame has no arp packet")
	}
	if !a.Is4() {
		return errf(ErrBadValue, "set arp address: %v is not an ipv4 address", a)
	}
	b := a.As4()
	copy(f.b[f.l3+off:], b[:])
	return nil
}

func (f *Frame) ipAddr(ip, off int) netip.Addr {
	if ip == 0 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(f.b[ip+off:]))
}

func (f *Frame) ipByte(ip, off int) uint8 {
	if ip == 0 {
		return 0
	}
	return f.b[ip+off]
}

func (f *Frame) ipWord(ip, off int) uint16 {
	if ip == 0 {
		return 0
	}
	return be16(f.b, ip+off)
}

func (f *Frame) setIPAddr(ip, off int, a netip.Addr, what string) error {
	if ip == 0 {
		return errf(ErrNoHeader, "set %s address: frame has no %s header", what, what)
	}
	if !a.Is4() {
		return errf(ErrBadValue, "set %s address: %v is not an ipv4 address", what, a)
	}
	b := a.As4()
	f.put16(ip+off, uint16(b[0])<<8|uint16(b[1]))
	f.put16(ip+off+2, uint16(b[2])<<8|uint16(b[3]))
	return nil
}

// port reads the 16-bit word at l4+off, or returns 0 if l4 is 0.
func (f *Frame) port(l4, off int) uint16 {
	if l4 == 0 {
		return 0
	}
	return be16(f.b, l4+off)
}

func (f *Frame) setPort(l4, off int, v uint16, what string) error {
	if l4 == 0 {
		return errf(ErrNoHeader, "set %s field: frame has no %s header", what, what)
	}
	f.put16(l4+off, v)
	return nil
}

// put16 writes v at off (even, within the frame) and updates every checksum
// covering that word incrementally. A checksum field is itself covered by
// the checksums of enclosing layers (the ICMP checksum covers the quoted
// header's), so the update recurses outwards; no checksum covers its own
// field or an outer one, so the recursion ends.
func (f *Frame) put16(off int, v uint16) {
	old := be16(f.b, off)
	if old == v {
		return
	}
	binary.BigEndian.PutUint16(f.b[off:], v)
	for i := 0; i < f.ncs; i++ {
		c := &f.cs[i]
		if off != c.field && c.covers(off) {
			f.adjust(c, old, v)
		}
	}
}

// adjust updates checksum c after a covered word changed from old to v.
func (f *Frame) adjust(c *cksum, old, v uint16) {
	hc := be16(f.b, c.field)
	udp := c.layer.base() == layerUDP
	if udp && hc == 0 {
		return // the sender computed no checksum (RFC 768); keep it that way
	}
	n := UpdateChecksum(hc, old, v)
	if n == 0 {
		switch {
		case udp:
			n = 0xffff // RFC 768: a computed zero is sent as all ones
		case c.layer.base() == layerICMP && c.complete && f.zeroExcept(c):
			// Eqn. 3 gives 0x0000 for data that sums to zero, but
			// such data is all zero (ICMP has no pseudo-header), and
			// its checksum is 0xffff (RFC 1624 section 3).
			n = 0xffff
		}
	}
	f.put16(c.field, n)
}

// zeroExcept reports whether every byte c covers, its own field aside, is 0.
func (f *Frame) zeroExcept(c *cksum) bool {
	for i := c.lo; i < c.hi; i++ {
		if f.b[i] != 0 && (i < c.field || i >= c.field+2) {
			return false
		}
	}
	return true
}
