package packet

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"nvi/internal/pcap"
)

// readPcap returns the frames of an Ethernet capture.
func readPcap(path string) ([][]byte, error) {
	link, frames, err := pcap.Read(path)
	if err == nil && link != pcap.LinkEthernet {
		err = fmt.Errorf("%s: link type %d, want ethernet", path, link)
	}
	return frames, err
}

// capture returns copies of the frames captured in testdata/capture.pcap
// (see testdata/README), so tests may edit them.
func capture(t testing.TB) [][]byte {
	t.Helper()
	frames, err := readPcap("testdata/capture.pcap")
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(frames))
	for i, f := range frames {
		out[i] = append([]byte(nil), f...)
	}
	return out
}

// unhex decodes hex with any spaces and newlines, and "//" comments to the
// end of a line, for hand-written vectors.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var digits strings.Builder
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "//")
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var (
	macA = mustMAC("02:00:00:00:00:0a")
	macB = mustMAC("02:00:00:00:00:0b")
	macC = mustMAC("02:00:00:00:01:02")
	ipC  = netip.MustParseAddr("10.1.0.2")
	ipS  = netip.MustParseAddr("10.1.0.3")
	ipA  = netip.MustParseAddr("192.0.2.1")
	ipB  = netip.MustParseAddr("192.0.2.2")
)

// hdr returns a Header from MAC a to b and IP src to dst.
func hdr(a, b net.HardwareAddr, src, dst netip.Addr) Header {
	return Header{EthSrc: a, EthDst: b, Src: src, Dst: dst, ID: 0x1234, DF: true}
}

// must returns a function that fails t on a builder's error, so that
// must(BuildTCP(...)) reads as one expression.
func must(t testing.TB) func([]byte, error) []byte {
	return func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func mustParse(t testing.TB, b []byte) Frame {
	t.Helper()
	f, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// sampleFrames returns built frames of every kind the package knows, each
// valid, for property tests, fuzz seeds and benchmarks.
func sampleFrames(t testing.TB) map[string][]byte {
	t.Helper()
	mustBuild := must(t)
	h := hdr(macA, macB, ipC, ipS)
	tcp := mustBuild(BuildTCP(h, TCP{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: TCPSyn, Window: 65535,
		Options: []byte{2, 4, 5, 0xb4}}, nil))
	udp := mustBuild(BuildUDP(h, 5353, 53, []byte("query")))
	echo := mustBuild(BuildICMPEcho(h, ICMPEchoRequest, 77, 1, []byte("ping payload, odd length")))
	ho := h
	ho.Options = []byte{1, 7, 7, 4, 0, 0, 0, 0} // NOP, record route with one slot
	opts := mustBuild(BuildUDP(ho, 1, 2, []byte{1}))
	hv := h
	hv.VLANs = []uint16{100, 0x2000 | 200}
	vlan := mustBuild(BuildTCP(hv, TCP{SrcPort: 1, DstPort: 2, Flags: TCPAck}, []byte("data")))
	r := hdr(macB, macA, ipA, ipC)
	errUDP := mustBuild(BuildICMPError(r, ICMPError{Type: ICMPDestUnreach, Code: 3, Quote: 576}, udp[ethLen:]))
	errTCP := mustBuild(BuildICMPError(r, ICMPError{Type: ICMPTimeExceeded}, tcp[ethLen:]))
	errTCPFull := mustBuild(BuildICMPError(r, ICMPError{Type: ICMPTimeExceeded, Quote: 576}, tcp[ethLen:]))
	errEcho := mustBuild(BuildICMPError(r, ICMPError{Type: ICMPDestUnreach, Code: ICMPCodeFragNeeded, MTU: 1400}, echo[ethLen:]))
	errEchoFull := mustBuild(BuildICMPError(r, ICMPError{Type: ICMPTimeExceeded, Quote: 1000}, echo[ethLen:]))
	arpReq := mustBuild(BuildARPRequest(macA, ipC, ipS))
	arpRep := mustBuild(BuildARPReply(macB, ipS, macA, ipC))
	return map[string][]byte{
		"tcp": tcp, "udp": udp, "echo": echo, "options": opts, "vlan": vlan,
		"icmp-err-udp": errUDP, "icmp-err-tcp": errTCP, "icmp-err-tcp-full": errTCPFull,
		"icmp-err-echo": errEcho, "icmp-err-echo-full": errEchoFull,
		"arp-request": arpReq, "arp-reply": arpRep,
	}
}
