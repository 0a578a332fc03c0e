package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
)

// TestRewriteSession applies the four rewrites of a session (DESIGN.md, "The
// key enabler") to a TCP segment and a UDP datagram, as OpenFlow set_field
// actions would, and checks each result is byte for byte the frame a host
// would have built with the rewritten fields.
func TestRewriteSession(t *testing.T) {
	must := must(t)
	macS := mustMAC("02:00:00:00:01:03")
	const k = 40123 // the session key
	type hop struct {
		ethSrc, ethDst net.HardwareAddr
		src, dst       netip.Addr
		sport, dport   uint16
	}
	forward := []hop{
		{macC, macA, ipC, ipS, 33000, 80}, // C sends to S:80
		{macA, macB, ipA, ipB, 33000, k},  // A, out: underlay addresses, dst key
		{macA, macS, ipC, ipS, 33000, 80}, // B, in: back to tenant addresses
	}
	reverse := []hop{
		{macS, macB, ipS, ipC, 80, 33000}, // S answers
		{macB, macA, ipB, ipA, k, 33000},  // B, out
		{macB, macC, ipS, ipC, 80, 33000}, // A, in
	}
	for _, proto := range []uint8{ProtoTCP, ProtoUDP} {
		for _, path := range [][]hop{forward, reverse} {
			build := func(h hop) []byte {
				hd := Header{EthSrc: h.ethSrc, EthDst: h.ethDst, Src: h.src, Dst: h.dst, TTL: 64, ID: 7, DF: true}
				if proto == ProtoTCP {
					return must(BuildTCP(hd, TCP{SrcPort: h.sport, DstPort: h.dport, Seq: 100, Ack: 200,
						Flags: TCPAck | TCPPsh, Window: 502}, []byte("GET / HTTP/1.1\r\n\r\n")))
				}
				return must(BuildUDP(hd, h.sport, h.dport, []byte("dns?")))
			}
			b := build(path[0])
			for i, h := range path[1:] {
				f := mustParse(t, b)
				for _, err := range []error{f.SetEthSrc(h.ethSrc), f.SetEthDst(h.ethDst),
					f.SetIPv4Src(h.src), f.SetIPv4Dst(h.dst), f.SetL4Src(h.sport), f.SetL4Dst(h.dport)} {
					if err != nil {
						t.Fatal(err)
					}
				}
				if want := build(h); !bytes.Equal(b, want) {
					t.Errorf("proto %d hop %d:\n got %x\nwant %x", proto, i+1, b, want)
				}
				if err := Verify(b); err != nil {
					t.Errorf("proto %d hop %d: %v", proto, i+1, err)
				}
			}
		}
	}
}

// TestRewriteEchoID is the slow path for ping: OpenFlow cannot set the echo
// identifier, so the agent rewrites it, and the addresses, in software.
func TestRewriteEchoID(t *testing.T) {
	must := must(t)
	b := must(BuildICMPEcho(hdr(macA, macB, ipC, ipS), ICMPEchoRequest, 0x4242, 9, []byte("abcdefg")))
	f := mustParse(t, b)
	if err := errors.Join(f.SetIPv4Src(ipA), f.SetIPv4Dst(ipB), f.SetICMPID(40123), f.SetTTL(63)); err != nil {
		t.Fatal(err)
	}
	h := hdr(macA, macB, ipA, ipB)
	h.TTL = 63
	if want := must(BuildICMPEcho(h, ICMPEchoRequest, 40123, 9, []byte("abcdefg"))); !bytes.Equal(b, want) {
		t.Errorf("\n got %x\nwant %x", b, want)
	}
	if f.ICMPID() != 40123 || f.ICMPSeq() != 9 || f.TTL() != 63 {
		t.Errorf("ICMPID %d ICMPSeq %d TTL %d", f.ICMPID(), f.ICMPSeq(), f.TTL())
	}
}

// TestTranslateICMPError plays traceroute and path-MTU discovery through a
// session: an underlay router reports on the translated packet (underlay
// addresses, key port) to server A, and A's agent translates the error back
// for workload C: outer destination, quoted addresses, port or identifier.
// The result must equal the error C would get with no translation at all,
// for every quote length.
func TestTranslateICMPError(t *testing.T) {
	must := must(t)
	const k = 40123
	router := netip.MustParseAddr("198.51.100.1")
	tenant := hdr(macC, macA, ipC, ipS)
	tenant.TTL = 1
	under := hdr(macA, macB, ipA, ipB)
	under.TTL = 1
	type orig struct {
		name           string
		tenant, under  []byte
		port, icmpID   bool
		originalDstKey uint16
	}
	payload := bytes.Repeat([]byte("0123456789"), 30)
	origs := []orig{
		{name: "tcp", port: true,
			tenant: must(BuildTCP(tenant, TCP{SrcPort: 33000, DstPort: 80, Seq: 5, Flags: TCPSyn, Window: 1000}, payload)),
			under:  must(BuildTCP(under, TCP{SrcPort: 33000, DstPort: k, Seq: 5, Flags: TCPSyn, Window: 1000}, payload))},
		{name: "udp", port: true,
			tenant: must(BuildUDP(tenant, 33000, 53, payload)),
			under:  must(BuildUDP(under, 33000, k, payload))},
		{name: "echo", icmpID: true,
			tenant: must(BuildICMPEcho(tenant, ICMPEchoRequest, 0x4242, 1, payload)),
			under:  must(BuildICMPEcho(under, ICMPEchoRequest, k, 1, payload))},
	}
	errs := []ICMPError{
		{Type: ICMPTimeExceeded},
		{Type: ICMPDestUnreach, Code: ICMPCodeFragNeeded, MTU: 1280},
	}
	for _, o := range origs {
		for _, e := range errs {
			for _, quote := range []int{0, 28 + 12, 28 + 20, 200, 576} {
				e.Quote = quote
				rh := hdr(macB, macA, router, ipA)
				got := must(BuildICMPError(rh, e, o.under[ethLen:]))
				f := mustParse(t, got)
				err := errors.Join(f.SetEthDst(macC), f.SetIPv4Dst(ipC), f.SetInnerIPv4Src(ipC), f.SetInnerIPv4Dst(ipS))
				if o.port {
					err = errors.Join(err, f.SetInnerL4Dst(f.InnerL4Dst()-k+map[string]uint16{"tcp": 80, "udp": 53}[o.name]))
				}
				if o.icmpID {
					err = errors.Join(err, f.SetInnerICMPID(0x4242))
				}
				if err != nil {
					t.Fatal(err)
				}
				want := must(BuildICMPError(hdr(macB, macC, router, ipC), e, o.tenant[ethLen:]))
				if !bytes.Equal(got, want) {
					t.Errorf("%s in type %d quote %d:\n got %x\nwant %x", o.name, e.Type, quote, got, want)
				}
				if err := Verify(got); err != nil {
					t.Errorf("%s in type %d quote %d: %v", o.name, e.Type, quote, err)
				}
			}
		}
	}
}

// TestEditProperty makes random edits with every setter on every sample and
// captured frame: after each edit the frame must verify, FixChecksums must
// find nothing to change (the incremental updates equal full recomputation),
// and undoing the edits must restore the original bytes.
func TestEditProperty(t *testing.T) {
	frames := capture(t)
	for _, b := range sampleFrames(t) {
		frames = append(frames, b)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for i, b := range frames {
		orig := bytes.Clone(b)
		for round := range 200 {
			f := mustParse(t, b)
			var undo []func()
			for range 1 + r.IntN(6) {
				if u := randomEdit(r, &f); u != nil {
					undo = append(undo, u)
				}
				if err := f.Verify(); err != nil {
					t.Fatalf("frame %d round %d: %v", i, round, err)
				}
				fixed := bytes.Clone(b)
				g := mustParse(t, fixed)
				g.FixChecksums()
				if !bytes.Equal(fixed, b) {
					t.Fatalf("frame %d round %d: incremental and full checksums differ:\nincremental %x\n       full %x", i, round, b, fixed)
				}
			}
			for j := len(undo) - 1; j >= 0; j-- {
				undo[j]()
			}
			if !bytes.Equal(b, orig) {
				t.Fatalf("frame %d round %d: undoing edits left\n%x\nwant\n%x", i, round, b, orig)
			}
		}
	}
}

// randomValue returns a random 16-bit value, often an edge case.
func randomValue(r *rand.Rand) uint16 {
	switch r.IntN(5) {
	case 0:
		return 0
	case 1:
		return 0xffff
	default:
		return uint16(r.Uint32())
	}
}

// randomEdit applies one random setter that the frame supports and returns a
// function restoring the old value, or nil if the setter did not apply.
func randomEdit(r *rand.Rand, f *Frame) func() {
	v := randomValue(r)
	a := netip.AddrFrom4([4]byte{byte(v >> 8), byte(r.Uint32()), byte(r.Uint32()), byte(v)})
	mac := net.HardwareAddr{byte(v), 2, 3, 4, 5, byte(v >> 8)}
	type field struct {
		get func() any
		set func(any) error
	}
	addr := func(get func() netip.Addr, set func(netip.Addr) error) field {
		return field{func() any { return get() }, func(x any) error { return set(x.(netip.Addr)) }}
	}
	word := func(get func() uint16, set func(uint16) error) field {
		return field{func() any { return get() }, func(x any) error { return set(x.(uint16)) }}
	}
	hw := func(get func() net.HardwareAddr, set func(net.HardwareAddr) error) field {
		return field{func() any { return net.HardwareAddr(bytes.Clone(get())) }, func(x any) error { return set(x.(net.HardwareAddr)) }}
	}
	fields := []struct {
		f   field
		val any
	}{
		{hw(f.EthSrc, f.SetEthSrc), mac},
		{hw(f.EthDst, f.SetEthDst), mac},
		{addr(f.IPv4Src, f.SetIPv4Src), a},
		{addr(f.IPv4Dst, f.SetIPv4Dst), a},
		{field{func() any { return f.TTL() }, func(x any) error { return f.SetTTL(x.(uint8)) }}, uint8(v)},
		{word(f.L4Src, f.SetL4Src), v},
		{word(f.L4Dst, f.SetL4Dst), v},
		{word(f.ICMPID, f.SetICMPID), v},
		{addr(f.InnerIPv4Src, f.SetInnerIPv4Src), a},
		{addr(f.InnerIPv4Dst, f.SetInnerIPv4Dst), a},
		{word(f.InnerL4Src, f.SetInnerL4Src), v},
		{word(f.InnerL4Dst, f.SetInnerL4Dst), v},
		{word(f.InnerICMPID, f.SetInnerICMPID), v},
		{addr(f.ARPSPA, f.SetARPSPA), a},
		{addr(f.ARPTPA, f.SetARPTPA), a},
		{hw(f.ARPSHA, f.SetARPSHA), mac},
		{hw(f.ARPTHA, f.SetARPTHA), mac},
		{word(f.ARPOp, f.SetARPOp), uint16(1 + r.IntN(2))},
	}
	e := fields[r.IntN(len(fields))]
	old := e.f.get()
	if err := e.f.set(e.val); err != nil {
		if !errors.Is(err, ErrNoHeader) {
			panic(err)
		}
		return nil
	}
	return func() {
		if err := e.f.set(old); err != nil {
			panic(err)
		}
	}
}

// TestWrongChecksumStaysWrong checks the reason setters update incrementally:
// a checksum that was wrong on arrival is still wrong, by the same amount,
// after an edit, so the receiver still detects the corruption.
func TestWrongChecksumStaysWrong(t *testing.T) {
	for name, b := range sampleFrames(t) {
		f := mustParse(t, b)
		if f.L4() == nil {
			continue
		}
		c := f.cs[f.ncs-2] // the outer L4 checksum
		binary.BigEndian.PutUint16(b[c.field:], be16(b, c.field)^0x0101)
		var ce *ChecksumError
		if err := f.Verify(); !errors.As(err, &ce) {
			t.Fatalf("%s: corrupted checksum passed", name)
		}
		if err := errors.Join(f.SetIPv4Src(ipB), f.SetIPv4Dst(ipA)); err != nil {
			t.Fatal(err)
		}
		var after *ChecksumError
		if err := f.Verify(); !errors.As(err, &after) || after.Layer != ce.Layer {
			t.Fatalf("%s: after edit Verify = %v, want a %s checksum error", name, err, ce.Layer)
		}
		// The one's complement difference got - want is the corruption.
		diff := func(e *ChecksumError) uint16 { return fold(uint64(e.Got) + uint64(^e.Want)) }
		if diff(after) != diff(ce) {
			t.Errorf("%s: corruption changed from %#04x to %#04x", name, diff(ce), diff(after))
		}
	}
}

// TestUDPZeroChecksum checks RFC 768's two rules: a zero checksum means
// "none" and stays zero through edits and FixChecksums, and a computed zero
// is sent as 0xffff, by builders, FixChecksums and incremental updates.
func TestUDPZeroChecksum(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	b := must(BuildUDP(h, 1000, 2000, []byte("payload!")))
	f := mustParse(t, b)
	cs := f.L4()[6:8]
	binary.BigEndian.PutUint16(cs, 0)
	if err := errors.Join(f.SetIPv4Src(ipA), f.SetL4Dst(3)); err != nil {
		t.Fatal(err)
	}
	f.FixChecksums()
	if be16(cs, 0) != 0 {
		t.Errorf("zero udp checksum became %#04x", be16(cs, 0))
	}
	if err := f.Verify(); err != nil {
		t.Error(err)
	}
	// Choose the last payload word so the data sums to 0xffff: computed
	// with that word zero the checksum is c, and adding c to the sum
	// makes it all ones.
	payload := []byte("payload!\x00\x00")
	b = must(BuildUDP(h, 1000, 2000, payload))
	f = mustParse(t, b)
	c := be16(f.L4(), 6)
	binary.BigEndian.PutUint16(payload[8:], c)
	b = must(BuildUDP(h, 1000, 2000, payload))
	f = mustParse(t, b)
	if got := be16(f.L4(), 6); got != 0xffff {
		t.Fatalf("computed-zero udp checksum built as %#04x, want 0xffff", got)
	}
	if err := f.Verify(); err != nil {
		t.Error(err)
	}
	// Reach the same frame incrementally: from another port, then back.
	if err := f.SetL4Src(999); err != nil {
		t.Fatal(err)
	}
	if err := f.SetL4Src(1000); err != nil {
		t.Fatal(err)
	}
	if got := be16(f.L4(), 6); got != 0xffff {
		t.Errorf("computed-zero udp checksum updated to %#04x, want 0xffff", got)
	}
}

// TestICMPAllZero checks the one case RFC 1624 eqn. 3 gets wrong: an echo
// reply whose bytes are all zero must carry checksum 0xffff (a receiver sums
// it to all ones), not 0x0000.
func TestICMPAllZero(t *testing.T) {
	b := must(t)(BuildICMPEcho(hdr(macA, macB, ipC, ipS), ICMPEchoReply, 0, 0, nil))
	f := mustParse(t, b)
	if got := be16(f.L4(), 2); got != 0xffff {
		t.Fatalf("all-zero echo reply checksum %#04x, want 0xffff", got)
	}
	for _, id := range []uint16{5, 0} {
		if err := f.SetICMPID(id); err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(); err != nil {
			t.Errorf("after SetICMPID(%d): %v", id, err)
		}
	}
	if got := be16(f.L4(), 2); got != 0xffff {
		t.Errorf("all-zero echo reply checksum after edits %#04x, want 0xffff", got)
	}
	binary.BigEndian.PutUint16(f.L4()[2:], 0)
	var ce *ChecksumError
	if err := f.Verify(); !errors.As(err, &ce) || ce.Layer != "icmp" || ce.Want != 0xffff {
		t.Errorf("all-zero echo reply with checksum 0: Verify = %v, want icmp checksum error", err)
	}
}

// TestFirstFragment checks that editing a first fragment updates its L4
// checksum correctly though it cannot be recomputed there: the value equals
// the one computed over the whole, unfragmented datagram edited alike.
func TestFirstFragment(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	h.DF = false
	whole := must(BuildUDP(h, 1000, 2000, bytes.Repeat([]byte{0xab}, 100)))
	// First fragment: the IPv4 header and the first 48 bytes of UDP.
	h.MF = true
	first := must(BuildIPv4(h, ProtoUDP, whole[ethLen+20:ethLen+20+48]))
	for _, b := range [][]byte{whole, first} {
		f := mustParse(t, b)
		if err := errors.Join(f.SetIPv4Dst(ipB), f.SetL4Dst(40123), f.SetL4Src(7)); err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(); err != nil {
			t.Error(err)
		}
	}
	fw, ff := mustParse(t, whole), mustParse(t, first)
	ff.FixChecksums() // may fix the IPv4 header, must leave UDP alone
	if got, want := be16(ff.L4(), 6), be16(fw.L4(), 6); got != want {
		t.Errorf("first fragment udp checksum %#04x, whole datagram %#04x", got, want)
	}
}

// TestARPInPlaceReply turns a request into its reply in place, as an ARP
// responder might, and compares it with BuildARPReply.
func TestARPInPlaceReply(t *testing.T) {
	must := must(t)
	b := must(BuildARPRequest(macA, ipC, ipS))
	f := mustParse(t, b)
	if err := errors.Join(f.SetEthDst(f.EthSrc()), f.SetEthSrc(macB), f.SetARPOp(ARPReply),
		f.SetARPTHA(f.ARPSHA()), f.SetARPTPA(f.ARPSPA()), f.SetARPSHA(macB), f.SetARPSPA(ipS)); err != nil {
		t.Fatal(err)
	}
	if want := must(BuildARPReply(macB, ipS, macA, ipC)); !bytes.Equal(b, want) {
		t.Errorf("\n got %x\nwant %x", b, want)
	}
	if err := f.Verify(); err != nil {
		t.Error(err)
	}
}

// TestSetterErrors checks arguments setters refuse and headers they need.
func TestSetterErrors(t *testing.T) {
	s := sampleFrames(t)
	tcp, arp, echo := mustParse(t, s["tcp"]), mustParse(t, s["arp-request"]), mustParse(t, s["echo"])
	v6 := netip.MustParseAddr("2001:db8::1")
	mapped := netip.MustParseAddr("::ffff:10.1.0.2")
	tests := []struct {
		name string
		err  error
		kind error
		msg  string
	}{
		{"short mac", tcp.SetEthSrc(macA[:5]), ErrBadValue, "packet: set ethernet address: mac address of 5 bytes, want 6: bad value"},
		{"ipv6 src", tcp.SetIPv4Src(v6), ErrBadValue, "packet: set ipv4 address: 2001:db8::1 is not an ipv4 address: bad value"},
		{"4in6 dst", tcp.SetIPv4Dst(mapped), ErrBadValue, "packet: set ipv4 address: ::ffff:10.1.0.2 is not an ipv4 address: bad value"},
		{"invalid addr", tcp.SetIPv4Dst(netip.Addr{}), ErrBadValue, "packet: set ipv4 address: invalid IP is not an ipv4 address: bad value"},
		{"arp ipv6", arp.SetARPTPA(v6), ErrBadValue, "packet: set arp address: 2001:db8::1 is not an ipv4 address: bad value"},
		{"arp long mac", arp.SetARPSHA(append(bytes.Clone(macA), 0)), ErrBadValue, "packet: set arp address: mac address of 7 bytes, want 6: bad value"},
		{"ports on arp", arp.SetL4Dst(1), ErrNoHeader, "packet: set tcp/udp field: frame has no tcp/udp header: no such header"},
		{"ttl on arp", arp.SetTTL(1), ErrNoHeader, "packet: set ttl: frame has no ipv4 header: no such header"},
		{"arp on tcp", tcp.SetARPOp(2), ErrNoHeader, "packet: set arp op: frame has no arp packet: no such header"},
		{"icmp id on tcp", tcp.SetICMPID(1), ErrNoHeader, "packet: set icmp query field: frame has no icmp query header: no such header"},
		{"ports on echo", echo.SetL4Src(1), ErrNoHeader, "packet: set tcp/udp field: frame has no tcp/udp header: no such header"},
		{"inner on echo", echo.SetInnerIPv4Src(ipA), ErrNoHeader, "packet: set quoted ipv4 address: frame has no quoted ipv4 header: no such header"},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.kind) || tt.err.Error() != tt.msg {
			t.Errorf("%s:\n got %v\nwant %q", tt.name, tt.err, tt.msg)
		}
	}
	// The quoted ports of a quoted ICMP echo are not there either.
	f := mustParse(t, s["icmp-err-echo"])
	if err := f.SetInnerL4Src(1); !errors.Is(err, ErrNoHeader) {
		t.Errorf("SetInnerL4Src on quoted echo = %v", err)
	}
	if err := f.SetICMPID(1); !errors.Is(err, ErrNoHeader) {
		t.Errorf("SetICMPID on an ICMP error = %v", err)
	}
}
