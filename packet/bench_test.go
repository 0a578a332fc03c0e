package packet

import (
	"bytes"
	"testing"
)

// Frames the benchmarks use: a 1500-byte TCP segment (the worst case for a
// full checksum) and the largest Linux ICMP error (576 bytes).
func benchFrames(b *testing.B) (tcp, icmpErr []byte) {
	must := must(b)
	h := hdr(macA, macB, ipC, ipS)
	tcp = must(BuildTCP(h, TCP{SrcPort: 40000, DstPort: 80, Flags: TCPAck, Window: 500}, bytes.Repeat([]byte{0x5a}, 1460)))
	icmpErr = must(BuildICMPError(hdr(macB, macA, ipA, ipC), ICMPError{Type: ICMPTimeExceeded, Quote: 548}, tcp[ethLen:]))
	return tcp, icmpErr
}

// benchEach runs op as a sub-benchmark on each benchmark frame.
func benchEach(b *testing.B, op func(b *testing.B, frame []byte)) {
	tcp, icmpErr := benchFrames(b)
	b.Run("tcp1500", func(b *testing.B) { op(b, tcp) })
	b.Run("icmperr576", func(b *testing.B) { op(b, icmpErr) })
}

func BenchmarkParse(b *testing.B) {
	benchEach(b, func(b *testing.B, frame []byte) {
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			if _, err := Parse(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkFixChecksums(b *testing.B) {
	benchEach(b, func(b *testing.B, frame []byte) {
		f := mustParse(b, frame)
		b.ReportAllocs()
		b.SetBytes(int64(len(frame)))
		for b.Loop() {
			f.FixChecksums()
		}
	})
}

// BenchmarkRewrite is the work of one session rewrite done in software:
// MACs, addresses and a port, every checksum updated incrementally, on a
// frame already parsed.
func BenchmarkRewrite(b *testing.B) {
	tcp, _ := benchFrames(b)
	f := mustParse(b, tcp)
	b.ReportAllocs()
	i := uint16(0)
	for b.Loop() {
		i++
		_ = f.SetEthSrc(macB)
		_ = f.SetEthDst(macA)
		_ = f.SetIPv4Src(ipA)
		_ = f.SetIPv4Dst(ipB)
		_ = f.SetL4Dst(i)
	}
}

// BenchmarkTranslateICMPError is the slow path's ICMP error translation:
// outer destination, quoted addresses and port.
func BenchmarkTranslateICMPError(b *testing.B) {
	_, icmpErr := benchFrames(b)
	b.ReportAllocs()
	for b.Loop() {
		f, err := Parse(icmpErr)
		if err != nil {
			b.Fatal(err)
		}
		_ = f.SetIPv4Dst(ipC)
		_ = f.SetInnerIPv4Src(ipC)
		_ = f.SetInnerIPv4Dst(ipS)
		_ = f.SetInnerL4Dst(80)
	}
}

func BenchmarkVerify(b *testing.B) {
	tcp, _ := benchFrames(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(tcp)))
	for b.Loop() {
		if err := Verify(tcp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	data := bytes.Repeat([]byte{0xa5, 0x5a, 0xff}, 500)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		Checksum(data)
	}
}
