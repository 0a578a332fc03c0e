package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// TestParseHandVector decodes a frame written out byte by byte: two VLAN
// tags, an IPv4 header with a NOP and an end-of-list option, and UDP with
// Ethernet padding after it.
func TestParseHandVector(t *testing.T) {
	b := unhex(t, `
		0200 0000 000b 0200 0000 000a        // dst, src
		8100 0064 88a8 00c8        // 802.1Q tag 100, 802.1ad tag 200
		0800                                 // ipv4
		4600 0024 1234 4000 4011 0000        // ihl 6, total 36, id 0x1234, DF, ttl 64, udp
		0a01 0002 0a01 0003                  // 10.1.0.2 -> 10.1.0.3
		0100 0000                            // NOP, EOL, padding
		9c40 0035 000c 0000                  // 40000 -> 53, length 12, no checksum
		6869 2121                            // "hi!!"
		0000 0000 0000                       // ethernet padding`)
	f := mustParse(t, b)
	if got := f.VLANTags(); got != 2 {
		t.Errorf("VLANTags = %d, want 2", got)
	}
	if f.EthType() != EtherTypeIPv4 || f.IPv4HeaderLen() != 24 || f.IPv4TotalLen() != 36 {
		t.Errorf("EthType %#x IPv4HeaderLen %d IPv4TotalLen %d", f.EthType(), f.IPv4HeaderLen(), f.IPv4TotalLen())
	}
	if f.IPv4Src() != ipC || f.IPv4Dst() != ipS || f.L4Src() != 40000 || f.L4Dst() != 53 {
		t.Errorf("addresses %v:%d -> %v:%d", f.IPv4Src(), f.L4Src(), f.IPv4Dst(), f.L4Dst())
	}
	if got := string(f.Payload()); got != "hi!!" {
		t.Errorf("Payload = %q", got)
	}
	if got := len(f.L3()); got != 36 {
		t.Errorf("L3 is %d bytes, want 36 (padding excluded)", got)
	}
	// Only the IPv4 header checksum is missing: the UDP one is "none".
	var ce *ChecksumError
	if err := f.Verify(); !errors.As(err, &ce) || ce.Layer != "ipv4" {
		t.Fatalf("Verify = %v, want an ipv4 checksum error", err)
	}
	f.FixChecksums()
	// 4600+0024+1234+4000+4011+0a01+0002+0a01+0003+0100+0000 = 0xed70,
	// complemented 0x128f.
	if got := be16(f.L3(), 10); got != 0x128f {
		t.Errorf("ipv4 checksum %#04x, want 0x128f", got)
	}
	if err := f.Verify(); err != nil {
		t.Errorf("after FixChecksums: %v", err)
	}
	if got := be16(f.L4(), 6); got != 0 {
		t.Errorf("FixChecksums wrote udp checksum %#04x over the sender's zero", got)
	}
}

// TestParseErrors checks the error for each kind of bad input: its message
// names the field and values, and it wraps the right sentinel.
func TestParseErrors(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	tcp := must(BuildTCP(h, TCP{SrcPort: 1, DstPort: 2}, []byte("x")))
	udp := must(BuildUDP(h, 1, 2, []byte("xy")))
	echo := must(BuildICMPEcho(h, ICMPEchoRequest, 1, 1, nil))
	icmpErr := must(BuildICMPError(h, ICMPError{Type: ICMPTimeExceeded, Quote: 100}, udp[ethLen:]))
	arp := must(BuildARPRequest(macA, ipC, ipS))
	edit := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	const ip = ethLen // IPv4 header offset in these frames
	tests := []struct {
		name string
		b    []byte
		kind error
		msg  string
	}{
		{"empty", nil, ErrTruncated, "packet: ethernet frame of 0 bytes, want at least 14: truncated"},
		{"short ethernet", tcp[:13], ErrTruncated, "packet: ethernet frame of 13 bytes, want at least 14: truncated"},
		{"vlan tag cut", edit(tcp[:16], func(b []byte) { b[12], b[13] = 0x81, 0 }), ErrTruncated,
			"packet: 802.1Q tag at byte 12 runs past the 16-byte frame: truncated"},
		{"arp short", arp[:41], ErrTruncated, "packet: arp packet of 27 bytes, want 28: truncated"},
		{"arp not ethernet", edit(arp, func(b []byte) { b[ip+1] = 6 }), ErrUnsupported,
			"packet: arp hardware type 6 protocol 0x0800, want 1 (ethernet) and 0x0800 (ipv4): unsupported"},
		{"arp lengths", edit(arp, func(b []byte) { b[ip+4] = 8 }), ErrMalformed,
			"packet: arp address lengths 8 and 4, want 6 and 4: malformed"},
		{"ipv4 short", tcp[:ip+19], ErrTruncated, "packet: ipv4 header needs 20 bytes, have 19: truncated"},
		{"ipv4 version", edit(tcp, func(b []byte) { b[ip] = 0x65 }), ErrMalformed, "packet: ipv4 version 6, want 4: malformed"},
		{"ipv4 ihl", edit(tcp, func(b []byte) { b[ip] = 0x41 }), ErrMalformed, "packet: ipv4 header length 4 < 20: malformed"},
		{"ipv4 ihl past end", edit(tcp[:ip+30], func(b []byte) { b[ip] = 0x48 }), ErrTruncated,
			"packet: ipv4 header length 32 runs past the 30 bytes present: truncated"},
		{"ipv4 total < ihl", edit(tcp, func(b []byte) { b[ip+2], b[ip+3] = 0, 19 }), ErrMalformed,
			"packet: ipv4 total length 19 < header length 20: malformed"},
		{"ipv4 total past end", tcp[:len(tcp)-1], ErrTruncated,
			"packet: ipv4 total length 41 runs past the 40 bytes after the ethernet header: truncated"},
		{"tcp short", edit(tcp, func(b []byte) { b[ip+3] = 39 }), ErrTruncated,
			"packet: tcp header needs 20 bytes, ipv4 payload has 19: truncated"},
		{"tcp data offset", edit(tcp, func(b []byte) { b[ip+20+12] = 0x40 }), ErrMalformed,
			"packet: tcp data offset 16 < 20: malformed"},
		{"tcp data offset past end", edit(tcp, func(b []byte) { b[ip+20+12] = 0x60 }), ErrTruncated,
			"packet: tcp data offset 24 runs past the 21-byte ipv4 payload: truncated"},
		{"udp short", edit(udp, func(b []byte) { b[ip+3] = 27 }), ErrTruncated,
			"packet: udp header needs 8 bytes, ipv4 payload has 7: truncated"},
		{"udp length small", edit(udp, func(b []byte) { b[ip+20+5] = 7 }), ErrMalformed, "packet: udp length 7 < 8: malformed"},
		{"udp length large", edit(udp, func(b []byte) { b[ip+20+5] = 11 }), ErrTruncated,
			"packet: udp length 11 runs past the 10-byte ipv4 payload: truncated"},
		{"icmp short", edit(echo, func(b []byte) { b[ip+3] = 27 }), ErrTruncated,
			"packet: icmp header needs 8 bytes, ipv4 payload has 7: truncated"},
		{"icmp error quote short", edit(icmpErr[:ip+20+8+19], func(b []byte) { b[ip+3] = 47 }), ErrTruncated,
			"packet: icmp error: quoted ipv4 header needs 20 bytes, have 19: truncated"},
		{"icmp error quote version", edit(icmpErr, func(b []byte) { b[ip+28] = 0x55 }), ErrMalformed,
			"packet: icmp error: quoted ipv4 version 5, want 4: malformed"},
		{"icmp error quote under rfc 792", edit(icmpErr[:ip+28+27], func(b []byte) { b[ip+3] = 55 }), ErrTruncated,
			"packet: icmp error quotes 27 bytes of the original datagram, want at least 28 (header and 8 bytes, RFC 792): truncated"},
	}
	for _, tt := range tests {
		f, err := Parse(tt.b)
		if err == nil {
			t.Errorf("%s: Parse succeeded", tt.name)
			continue
		}
		if !errors.Is(err, tt.kind) {
			t.Errorf("%s: error %q does not wrap %v", tt.name, err, tt.kind)
		}
		if err.Error() != tt.msg {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, err, tt.msg)
		}
		if f.Bytes() != nil || f.EthType() != 0 {
			t.Errorf("%s: Parse returned a non-empty Frame with its error", tt.name)
		}
		if verr := Verify(tt.b); verr == nil || verr.Error() != err.Error() {
			t.Errorf("%s: Verify = %v, want the Parse error", tt.name, verr)
		}
	}
}

// TestParseLenient checks what Parse accepts though Verify may not: unknown
// EtherTypes and protocols, padding, fragments, a short UDP length.
func TestParseLenient(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	ipv6 := append(unhex(t, "0200 0000 000b 0200 0000 000a 86dd"), make([]byte, 40)...)
	f := mustParse(t, ipv6)
	if f.EthType() != 0x86dd || f.IPv4Src().IsValid() || len(f.L3()) != 40 || f.L4() != nil {
		t.Errorf("ipv6 frame: EthType %#x IPv4Src %v L3 %d bytes", f.EthType(), f.IPv4Src(), len(f.L3()))
	}
	if err := f.Verify(); err != nil {
		t.Errorf("ipv6 frame: Verify = %v, want nil (nothing it knows to check)", err)
	}
	gre := must(BuildIPv4(h, 47, []byte{0, 0, 0x08, 0}))
	f = mustParse(t, gre)
	if f.IPProto() != 47 || f.L4() != nil || f.Payload() != nil || f.L4Src() != 0 {
		t.Errorf("gre: proto %d L4 %x", f.IPProto(), f.L4())
	}
	if err := f.Verify(); err != nil {
		t.Errorf("gre: %v", err)
	}
	// A later fragment has no L4 header even if its bytes look like one.
	hf := h
	hf.FragOffset = 185
	frag := must(BuildIPv4(hf, ProtoTCP, make([]byte, 8)))
	f = mustParse(t, frag)
	if !f.IsFragment() || f.L4() != nil {
		t.Errorf("later fragment: IsFragment %v L4 %x", f.IsFragment(), f.L4())
	}
	if err := f.SetL4Dst(1); !errors.Is(err, ErrNoHeader) {
		t.Errorf("SetL4Dst on a later fragment = %v, want ErrNoHeader", err)
	}
	// A first UDP fragment's length field counts the whole datagram.
	hf = h
	hf.MF = true
	first := must(BuildIPv4(hf, ProtoUDP, unhex(t, "0001 0002 0400 0000 6162 6364")))
	f = mustParse(t, first)
	if f.L4Dst() != 2 || !f.IsFragment() {
		t.Errorf("first fragment: L4Dst %d", f.L4Dst())
	}
	if err := f.Verify(); err != nil {
		t.Errorf("first fragment: %v", err)
	}
	// A UDP length shorter than the IPv4 payload parses; Verify objects.
	udp := must(BuildUDP(h, 1, 2, []byte("abcd")))
	udp[ethLen+20+5] = 10
	f = mustParse(t, udp)
	if got := string(f.Payload()); got != "ab" {
		t.Errorf("short udp length: Payload %q, want %q", got, "ab")
	}
	f.FixChecksums()
	if err := f.Verify(); err == nil || err.Error() != "packet: udp length 10, ipv4 payload 12: malformed" {
		t.Errorf("short udp length: Verify = %v", err)
	}
}

// TestParseTruncatedEverywhere cuts every valid frame at every length: Parse
// must fail with ErrTruncated or, where the cut only removes data that a
// header's length does not claim, succeed; it never panics.
func TestParseTruncatedEverywhere(t *testing.T) {
	frames := capture(t)
	for _, b := range sampleFrames(t) {
		frames = append(frames, b)
	}
	for i, b := range frames {
		for n := range len(b) {
			f, err := Parse(b[:n])
			if err == nil {
				if f.EthType() == EtherTypeIPv4 || f.EthType() == EtherTypeARP {
					t.Errorf("frame %d cut to %d of %d bytes parsed", i, n, len(b))
				}
				continue
			}
			if !errors.Is(err, ErrTruncated) {
				t.Errorf("frame %d cut to %d bytes: %v, want ErrTruncated", i, n, err)
			}
		}
	}
}

// TestZeroFrame checks that the empty Frame is safe to use.
func TestZeroFrame(t *testing.T) {
	var f Frame
	if f.Bytes() != nil || f.EthSrc() != nil || f.EthDst() != nil || f.ARPSHA() != nil || f.L3() != nil ||
		f.L4() != nil || f.Payload() != nil || f.IPv4Src().IsValid() || f.InnerIPv4Dst().IsValid() ||
		f.ARPSPA().IsValid() || f.TTL() != 0 || f.ICMPType() != 0 || f.IsICMPError() || f.IsFragment() {
		t.Error("zero Frame returned non-zero values")
	}
	a := netip.MustParseAddr("1.2.3.4")
	for name, err := range map[string]error{
		"SetEthSrc": f.SetEthSrc(macA), "SetEthDst": f.SetEthDst(macA), "SetARPOp": f.SetARPOp(1),
		"SetARPSHA": f.SetARPSHA(macA), "SetARPSPA": f.SetARPSPA(a), "SetARPTHA": f.SetARPTHA(macA),
		"SetARPTPA": f.SetARPTPA(a), "SetIPv4Src": f.SetIPv4Src(a), "SetIPv4Dst": f.SetIPv4Dst(a),
		"SetTTL": f.SetTTL(1), "SetL4Src": f.SetL4Src(1), "SetL4Dst": f.SetL4Dst(1), "SetICMPID": f.SetICMPID(1),
		"SetInnerIPv4Src": f.SetInnerIPv4Src(a), "SetInnerIPv4Dst": f.SetInnerIPv4Dst(a),
		"SetInnerL4Src": f.SetInnerL4Src(1), "SetInnerL4Dst": f.SetInnerL4Dst(1), "SetInnerICMPID": f.SetInnerICMPID(1),
	} {
		if !errors.Is(err, ErrNoHeader) {
			t.Errorf("%s on zero Frame = %v, want ErrNoHeader", name, err)
		}
	}
	f.FixChecksums()
	if err := f.Verify(); err != nil {
		t.Errorf("Verify on zero Frame = %v", err)
	}
}
