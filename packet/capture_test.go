package packet

import (
	"bytes"
	"net/netip"
	"testing"
)

// TestCaptureDecode checks what Parse decodes from frames Linux sent, against
// the values tcpdump -nn -vv prints for testdata/capture.pcap.
func TestCaptureDecode(t *testing.T) {
	frames := capture(t)
	if len(frames) != 30 {
		t.Fatalf("capture has %d frames, want 30", len(frames))
	}
	h1, rt := "c6:ec:18:39:d3:5e", "1e:24:86:e6:f9:42"
	a := netip.MustParseAddr
	h1IP, rtIP, h2IP := a("192.0.2.10"), a("192.0.2.1"), a("198.51.100.20")

	type want struct {
		ethSrc, ethDst string
		ethType        uint16
		// ARP
		op       uint16
		sha, tha string
		spa, tpa netip.Addr
		// IPv4
		src, dst      netip.Addr
		proto, ttl    uint8
		id            uint16
		df, frag      bool
		ihl, totalLen int
		// L4
		sport, dport uint16
		l4csum       uint16 // 0: not checked
		icmpType     uint8
		icmpCode     uint8
		icmpID       uint16
		icmpSeq      uint16
		mtu          uint16
		// ICMP error
		inSrc, inDst     netip.Addr
		inProto          uint8
		inSport, inDport uint16
		inICMPID         uint16
		inL4csum         uint16 // 0: not checked
		quoted           int
	}
	tests := map[int]want{
		0: {ethSrc: h1, ethDst: "ff:ff:ff:ff:ff:ff", ethType: EtherTypeARP, op: ARPRequest,
			sha: h1, tha: "00:00:00:00:00:00", spa: h1IP, tpa: rtIP},
		1: {ethSrc: rt, ethDst: h1, ethType: EtherTypeARP, op: ARPReply,
			sha: rt, tha: h1, spa: rtIP, tpa: h1IP},
		2: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: h2IP, proto: ProtoICMP,
			ttl: 64, id: 27156, df: true, ihl: 20, totalLen: 84, icmpType: ICMPEchoRequest, icmpID: 15889, icmpSeq: 1},
		3: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: h2IP, dst: h1IP, proto: ProtoICMP,
			ttl: 63, id: 49762, ihl: 20, totalLen: 84, icmpType: ICMPEchoReply, icmpID: 15889, icmpSeq: 1},
		5: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: rtIP, dst: h1IP, proto: ProtoICMP,
			ttl: 64, id: 47316, ihl: 20, totalLen: 112, icmpType: ICMPTimeExceeded,
			inSrc: h1IP, inDst: h2IP, inProto: ProtoICMP, inICMPID: 15890, quoted: 84},
		6: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: h2IP, proto: ProtoICMP,
			ttl: 64, id: 27158, df: true, ihl: 60, totalLen: 124, icmpType: ICMPEchoRequest, icmpID: 15891, icmpSeq: 1},
		9: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: rtIP, dst: h1IP, proto: ProtoICMP,
			ttl: 64, id: 47317, ihl: 20, totalLen: 576, icmpType: ICMPDestUnreach, icmpCode: ICMPCodeFragNeeded, mtu: 1400,
			inSrc: h1IP, inDst: h2IP, inProto: ProtoICMP, inICMPID: 15892, quoted: 548},
		10: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: rtIP, proto: ProtoICMP,
			ttl: 64, id: 11892, frag: true, ihl: 20, totalLen: 1500, icmpType: ICMPEchoRequest, icmpID: 15893, icmpSeq: 1},
		11: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: rtIP, proto: ProtoICMP,
			ttl: 64, id: 11892, frag: true, ihl: 20, totalLen: 548},
		14: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: h2IP, proto: ProtoUDP,
			ttl: 1, id: 32090, df: true, ihl: 20, totalLen: 37, sport: 59621, dport: 33434},
		15: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: rtIP, dst: h1IP, proto: ProtoICMP,
			ttl: 64, id: 47326, ihl: 20, totalLen: 65, icmpType: ICMPTimeExceeded,
			inSrc: h1IP, inDst: h2IP, inProto: ProtoUDP, inSport: 59621, inDport: 33434, quoted: 37},
		17: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: h2IP, dst: h1IP, proto: ProtoICMP,
			ttl: 63, id: 49820, ihl: 20, totalLen: 67, icmpType: ICMPDestUnreach, icmpCode: 3,
			inSrc: h1IP, inDst: h2IP, inProto: ProtoUDP, inSport: 49130, inDport: 9, quoted: 39},
		18: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: h2IP, proto: ProtoTCP,
			ttl: 64, id: 56325, df: true, ihl: 20, totalLen: 60, sport: 55746, dport: 8080, l4csum: 0xf29f},
		19: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: h2IP, dst: h1IP, proto: ProtoTCP,
			ttl: 63, id: 0, df: true, ihl: 20, totalLen: 60, sport: 8080, dport: 55746, l4csum: 0x1c30},
		21: {ethSrc: h1, ethDst: rt, ethType: EtherTypeIPv4, src: h1IP, dst: h2IP, proto: ProtoTCP,
			ttl: 64, id: 56327, df: true, ihl: 20, totalLen: 67, sport: 55746, dport: 8080, l4csum: 0xa045},
		27: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: h2IP, dst: h1IP, proto: ProtoTCP,
			ttl: 63, id: 0, df: true, ihl: 20, totalLen: 40, sport: 8081, dport: 52948, l4csum: 0x742a},
		29: {ethSrc: rt, ethDst: h1, ethType: EtherTypeIPv4, src: rtIP, dst: h1IP, proto: ProtoICMP,
			ttl: 64, id: 47382, ihl: 20, totalLen: 88, icmpType: ICMPTimeExceeded,
			inSrc: h1IP, inDst: h2IP, inProto: ProtoTCP, inSport: 52322, inDport: 8082, inL4csum: 0x5e6e, quoted: 60},
	}
	for i, w := range tests {
		f := mustParse(t, frames[i])
		check := func(name string, got, want any) {
			t.Helper()
			if got != want {
				t.Errorf("frame %d: %s = %v, want %v", i, name, got, want)
			}
		}
		check("EthSrc", f.EthSrc().String(), w.ethSrc)
		check("EthDst", f.EthDst().String(), w.ethDst)
		check("EthType", f.EthType(), w.ethType)
		if w.ethType == EtherTypeARP {
			check("ARPOp", f.ARPOp(), w.op)
			check("ARPSHA", f.ARPSHA().String(), w.sha)
			check("ARPTHA", f.ARPTHA().String(), w.tha)
			check("ARPSPA", f.ARPSPA(), w.spa)
			check("ARPTPA", f.ARPTPA(), w.tpa)
			continue
		}
		check("IPv4Src", f.IPv4Src(), w.src)
		check("IPv4Dst", f.IPv4Dst(), w.dst)
		check("IPProto", f.IPProto(), w.proto)
		check("TTL", f.TTL(), w.ttl)
		check("IPID", f.IPID(), w.id)
		check("DontFragment", f.DontFragment(), w.df)
		check("IsFragment", f.IsFragment(), w.frag)
		check("IPv4HeaderLen", f.IPv4HeaderLen(), w.ihl)
		check("IPv4TotalLen", f.IPv4TotalLen(), w.totalLen)
		check("L4Src", f.L4Src(), w.sport)
		check("L4Dst", f.L4Dst(), w.dport)
		if w.l4csum != 0 {
			check("tcp checksum", be16(f.L4(), 16), w.l4csum)
		}
		if w.proto == ProtoICMP && f.L4() != nil {
			check("ICMPType", f.ICMPType(), w.icmpType)
			check("ICMPCode", f.ICMPCode(), w.icmpCode)
			check("ICMPID", f.ICMPID(), w.icmpID)
			check("ICMPSeq", f.ICMPSeq(), w.icmpSeq)
			check("ICMPNextHopMTU", f.ICMPNextHopMTU(), w.mtu)
		}
		check("IsICMPError", f.IsICMPError(), w.quoted != 0)
		check("InnerIPv4Src", f.InnerIPv4Src(), w.inSrc)
		check("InnerIPv4Dst", f.InnerIPv4Dst(), w.inDst)
		check("InnerProto", f.InnerProto(), w.inProto)
		check("InnerL4Src", f.InnerL4Src(), w.inSport)
		check("InnerL4Dst", f.InnerL4Dst(), w.inDport)
		check("InnerICMPID", f.InnerICMPID(), w.inICMPID)
		if w.quoted != 0 {
			check("quoted bytes", len(f.Payload()), w.quoted)
		}
		if w.inL4csum != 0 {
			check("inner tcp checksum", be16(f.Payload(), f.inIHL+16), w.inL4csum)
		}
	}
}

// TestCaptureVerify checks that every captured frame passes Verify and that
// FixChecksums, which recomputes everything, rewrites Linux's checksums with
// the same values: the computation agrees with a real stack's.
func TestCaptureVerify(t *testing.T) {
	for i, b := range capture(t) {
		if err := Verify(b); err != nil {
			t.Errorf("frame %d: %v", i, err)
		}
		orig := bytes.Clone(b)
		f := mustParse(t, b)
		f.FixChecksums()
		if !bytes.Equal(b, orig) {
			t.Errorf("frame %d: FixChecksums changed a correct frame:\n got %x\nwant %x", i, b, orig)
		}
	}
}

// TestCaptureIncomplete checks which checksums cannot be recomputed in the
// captured frames: fragments' L4 checksums and the quoted ICMP echo that
// "fragmentation needed" truncated, and that a wrong one there goes unseen
// by Verify (it cannot know) yet is carried by incremental updates.
func TestCaptureIncomplete(t *testing.T) {
	frames := capture(t)
	for _, i := range []int{10, 11, 12, 13} {
		f := mustParse(t, frames[i])
		for _, c := range f.cs[:f.ncs] {
			if c.layer != layerIPv4 && c.complete {
				t.Errorf("frame %d: %v checksum complete in a fragment", i, c.layer)
			}
		}
	}
	f := mustParse(t, frames[9])
	if n := f.ncs; n != 4 {
		t.Fatalf("frag-needed frame: %d checksums, want 4", n)
	}
	if c := f.cs[0]; c.layer != layerInner+layerICMP || c.complete {
		t.Errorf("frag-needed frame: inner checksum %v complete=%v, want incomplete inner icmp", c.layer, c.complete)
	}
	// A quoted echo's checksum covers 1458 bytes of which 520 were quoted;
	// translating its identifier must still update it by the exact delta.
	inner := f.cs[0].field
	before := be16(f.b, inner)
	if err := f.SetInnerICMPID(15892 + 1); err != nil {
		t.Fatal(err)
	}
	if got, want := be16(f.b, inner), UpdateChecksum(before, 15892, 15893); got != want {
		t.Errorf("quoted echo checksum %#04x, want %#04x", got, want)
	}
	if err := f.Verify(); err != nil {
		t.Errorf("after SetInnerICMPID: %v", err)
	}
	// Frame 8 is the echo request that frame 9 quotes: the same edit on the
	// whole echo, whose checksum can be recomputed, gives the same value.
	orig := mustParse(t, frames[8])
	if err := orig.SetICMPID(15893); err != nil {
		t.Fatal(err)
	}
	orig.FixChecksums()
	if got, want := be16(f.b, inner), be16(orig.L4(), 2); got != want {
		t.Errorf("quoted echo checksum %#04x, whole echo recomputed %#04x", got, want)
	}
}
