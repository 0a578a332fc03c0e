package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestBuildRoundTrip builds each kind of frame and reads every field back.
func TestBuildRoundTrip(t *testing.T) {
	must := must(t)
	h := Header{EthSrc: macA, EthDst: macB, VLANs: []uint16{7}, Src: ipC, Dst: ipS, TTL: 5, TOS: 0x10,
		ID: 999, DF: true, Options: []byte{0x94, 4, 0, 0, 1}} // router alert, NOP: padded to 8
	tcp := must(BuildTCP(h, TCP{SrcPort: 1, DstPort: 2, Seq: 3, Ack: 4, Flags: TCPSyn | TCPAck, Window: 5,
		Options: []byte{2, 4, 5, 0xb4, 1}}, []byte("data")))
	f := mustParse(t, tcp)
	if err := f.Verify(); err != nil {
		t.Fatal(err)
	}
	if f.VLANTags() != 1 || !bytes.Equal(f.EthSrc(), macA) || !bytes.Equal(f.EthDst(), macB) ||
		f.IPv4Src() != ipC || f.IPv4Dst() != ipS || f.TTL() != 5 || f.L3()[1] != 0x10 || f.IPID() != 999 ||
		!f.DontFragment() || f.IsFragment() || f.IPv4HeaderLen() != 28 || f.IPv4TotalLen() != 28+28+4 {
		t.Errorf("ipv4 fields wrong: % x", f.L3()[:28])
	}
	if !bytes.Equal(f.L3()[20:28], []byte{0x94, 4, 0, 0, 1, 0, 0, 0}) {
		t.Errorf("options % x", f.L3()[20:28])
	}
	s := f.L4()
	if f.L4Src() != 1 || f.L4Dst() != 2 || be16(s, 4) != 0 || be16(s, 6) != 3 || be16(s, 10) != 4 ||
		s[12] != 7<<4 || s[13] != TCPSyn|TCPAck || be16(s, 14) != 5 || string(f.Payload()) != "data" {
		t.Errorf("tcp fields wrong: % x", s)
	}
	if be16(tcp, 12) != EtherTypeVLAN || be16(tcp, 14) != 7 {
		t.Errorf("vlan tag % x", tcp[12:16])
	}

	echo := must(BuildICMPEcho(hdr(macA, macB, ipC, ipS), ICMPEchoReply, 11, 12, []byte("x")))
	f = mustParse(t, echo)
	if f.ICMPType() != ICMPEchoReply || f.ICMPCode() != 0 || f.ICMPID() != 11 || f.ICMPSeq() != 12 || string(f.Payload()) != "x" {
		t.Errorf("echo fields wrong: % x", f.L4())
	}
	if f.TTL() != 64 {
		t.Errorf("default TTL %d, want 64", f.TTL())
	}

	orig := must(BuildUDP(hdr(macA, macB, ipC, ipS), 5, 6, make([]byte, 100)))
	icmp := must(BuildICMPError(hdr(macB, macA, ipA, ipC), ICMPError{Type: ICMPDestUnreach, Code: ICMPCodeFragNeeded, MTU: 1280}, orig[ethLen:]))
	f = mustParse(t, icmp)
	if f.ICMPNextHopMTU() != 1280 || len(f.Payload()) != 28 || !bytes.Equal(f.Payload(), orig[ethLen:ethLen+28]) {
		t.Errorf("icmp error: mtu %d quote % x", f.ICMPNextHopMTU(), f.Payload())
	}
	// The MTU is written only for "fragmentation needed".
	icmp = must(BuildICMPError(hdr(macB, macA, ipA, ipC), ICMPError{Type: ICMPTimeExceeded, MTU: 1280, Quote: 1000}, orig[ethLen:]))
	f = mustParse(t, icmp)
	if be16(f.L4(), 6) != 0 || f.ICMPNextHopMTU() != 0 || len(f.Payload()) != 128 {
		t.Errorf("time exceeded: rest of header % x, quote %d", f.L4()[4:8], len(f.Payload()))
	}

	arp := must(BuildARPRequest(macA, ipC, ipC))
	f = mustParse(t, arp)
	if len(arp) != 42 || f.ARPOp() != ARPRequest || f.EthDst().String() != "ff:ff:ff:ff:ff:ff" ||
		f.ARPTHA().String() != "00:00:00:00:00:00" || f.ARPSPA() != ipC || f.ARPTPA() != ipC {
		t.Errorf("gratuitous arp % x", arp)
	}
}

// TestBuildErrors checks the arguments builders refuse.
func TestBuildErrors(t *testing.T) {
	h := hdr(macA, macB, ipC, ipS)
	v6 := netip.MustParseAddr("2001:db8::1")
	with := func(edit func(h *Header)) Header {
		hh := h
		edit(&hh)
		return hh
	}
	udp := must(t)(BuildUDP(h, 1, 2, nil))
	_, e1 := BuildTCP(with(func(h *Header) { h.EthSrc = nil }), TCP{}, nil)
	_, e2 := BuildUDP(with(func(h *Header) { h.Dst = v6 }), 1, 2, nil)
	_, e3 := BuildUDP(with(func(h *Header) { h.Options = make([]byte, 41) }), 1, 2, nil)
	_, e4 := BuildUDP(h, 1, 2, make([]byte, 65536-28))
	_, e5 := BuildIPv4(with(func(h *Header) { h.FragOffset = 0x2000 }), 200, nil)
	_, e6 := BuildTCP(h, TCP{Options: make([]byte, 41)}, nil)
	_, e7 := BuildICMPEcho(h, 3, 1, 1, nil)
	_, e8 := BuildICMPError(h, ICMPError{Type: ICMPEchoRequest}, udp[ethLen:])
	_, e9 := BuildICMPError(h, ICMPError{Type: ICMPTimeExceeded}, udp[:20])
	_, e10 := BuildICMPError(h, ICMPError{Type: ICMPTimeExceeded}, udp[ethLen:ethLen+27])
	_, e11 := BuildARPRequest(macA[:4], ipC, ipS)
	_, e12 := BuildARPReply(macA, ipC, macB, v6)
	tests := []struct {
		err  error
		kind error
		msg  string
	}{
		{e1, ErrBadValue, "packet: build: ethernet addresses of 0 and 6 bytes, want 6: bad value"},
		{e2, ErrBadValue, "packet: build: addresses 10.1.0.2 and 2001:db8::1, want ipv4: bad value"},
		{e3, ErrBadValue, "packet: build: 41 bytes of ipv4 options, at most 40: bad value"},
		{e4, ErrBadValue, "packet: build: ipv4 total length 65536 > 65535: bad value"},
		{e5, ErrBadValue, "packet: build: fragment offset 8192 > 8191: bad value"},
		{e6, ErrBadValue, "packet: build tcp: 41 bytes of options, at most 40: bad value"},
		{e7, ErrBadValue, "packet: build icmp echo: type 3, want 8 or 0: bad value"},
		{e8, ErrBadValue, "packet: build icmp error: type 8 is not an error type: bad value"},
		{e9, ErrMalformed, "packet: build icmp error: original ipv4 version 0, want 4: malformed"},
		{e10, ErrTruncated, "packet: icmp error quotes 27 bytes of the original datagram, want at least 28 (header and 8 bytes, RFC 792): truncated"},
		{e11, ErrBadValue, "packet: build arp: hardware addresses of 4 and 6 bytes, want 6: bad value"},
		{e12, ErrBadValue, "packet: build arp: protocol addresses 10.1.0.2 and 2001:db8::1, want ipv4: bad value"},
	}
	for i, tt := range tests {
		if tt.err == nil || !errors.Is(tt.err, tt.kind) || tt.err.Error() != tt.msg {
			t.Errorf("case %d:\n got %v\nwant %q", i+1, tt.err, tt.msg)
		}
	}
}

// TestQuotedOddities covers ICMP errors about unusual originals: a later
// fragment, an unknown protocol, a UDP length that cannot be trusted and a
// TCP datagram too short for its checksum.
func TestQuotedOddities(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	r := hdr(macB, macA, ipA, ipC)
	layers := func(f *Frame) (s []string) {
		for _, c := range f.cs[:f.ncs] {
			s = append(s, c.layer.String())
		}
		return s
	}
	hf := h
	hf.FragOffset = 100
	later := must(BuildIPv4(hf, ProtoUDP, make([]byte, 16)))
	gre := must(BuildIPv4(h, 47, make([]byte, 16)))
	badUDP := must(BuildUDP(h, 1, 2, make([]byte, 8)))
	badUDP[ethLen+20+5] = 3 // udp length 3
	shortTCP := must(BuildIPv4(h, ProtoTCP, make([]byte, 10)))
	tests := []struct {
		name     string
		original []byte
		layers   string
		inL4     bool
	}{
		{"later fragment", later, "inner ipv4 icmp ipv4", false},
		{"gre", gre, "inner ipv4 icmp ipv4", false},
		{"bad udp length", badUDP, "inner udp inner ipv4 icmp ipv4", true},
		{"tcp shorter than its checksum", shortTCP, "inner ipv4 icmp ipv4", true},
	}
	for _, tt := range tests {
		b := must(BuildICMPError(r, ICMPError{Type: ICMPDestUnreach, Quote: 100}, tt.original[ethLen:]))
		f := mustParse(t, b)
		if got := strings.Join(layers(&f), " "); got != tt.layers {
			t.Errorf("%s: checksums %v, want %s", tt.name, got, tt.layers)
		}
		if (f.inL4 != 0) != tt.inL4 {
			t.Errorf("%s: quoted L4 header found: %v", tt.name, f.inL4 != 0)
		}
		if err := f.Verify(); err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if err := f.SetInnerIPv4Dst(ipB); err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(); err != nil {
			t.Errorf("%s: after edit: %v", tt.name, err)
		}
	}
}
