package packet_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"nvi/packet"
)

// A test of computed flows builds a workload's frame, applies the flow's
// set_field actions with the setters, and checks the result.
func Example() {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	ip := netip.MustParseAddr
	b, err := packet.BuildTCP(packet.Header{
		EthSrc: mac("02:00:00:00:01:02"), EthDst: mac("02:00:00:00:00:0a"),
		Src: ip("10.1.0.2"), Dst: ip("10.1.0.3"),
	}, packet.TCP{SrcPort: 33000, DstPort: 80, Flags: packet.TCPSyn, Window: 64240}, nil)
	if err != nil {
		panic(err)
	}
	f, err := packet.Parse(b)
	if err != nil {
		panic(err)
	}
	// Server A's out-rewrite: underlay MACs and addresses, key as port.
	err = errors.Join(
		f.SetEthSrc(mac("02:00:00:00:00:0a")), f.SetEthDst(mac("02:00:00:00:00:0b")),
		f.SetIPv4Src(ip("192.0.2.1")), f.SetIPv4Dst(ip("192.0.2.2")), f.SetL4Dst(40123))
	if err != nil {
		panic(err)
	}
	fmt.Println(f.EthSrc(), f.IPv4Src(), f.IPv4Dst(), f.L4Src(), f.L4Dst())
	fmt.Println("verify:", packet.Verify(b))

	// A set_field that forgot a checksum is named exactly.
	b[len(b)-3]++ // the urgent pointer, covered by the TCP checksum only
	fmt.Println("verify:", packet.Verify(b))
	// Output:
	// 02:00:00:00:00:0a 192.0.2.1 192.0.2.2 33000 40123
	// verify: <nil>
	// verify: packet: tcp checksum 0x134b, want 0x134a
}

// The agent's slow path translates an ICMP error from the underlay back to
// the workload whose packet caused it: the outer destination and the quoted
// header, addresses and port, with every checksum kept right.
func Example_icmpError() {
	ip := netip.MustParseAddr
	mac, _ := net.ParseMAC("02:00:00:00:00:0a")
	// What a router sent to server A about a session packet (built here).
	orig, _ := packet.BuildUDP(packet.Header{EthSrc: mac, EthDst: mac, Src: ip("192.0.2.1"), Dst: ip("192.0.2.2"), TTL: 1},
		33000, 40123, []byte("query"))
	b, _ := packet.BuildICMPError(packet.Header{EthSrc: mac, EthDst: mac, Src: ip("198.51.100.1"), Dst: ip("192.0.2.1")},
		packet.ICMPError{Type: packet.ICMPTimeExceeded}, orig[14:])

	f, err := packet.Parse(b)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(f.IsICMPError(), f.InnerIPv4Src(), f.InnerIPv4Dst(), f.InnerL4Src(), f.InnerL4Dst())
	err = errors.Join(f.SetIPv4Dst(ip("10.1.0.2")),
		f.SetInnerIPv4Src(ip("10.1.0.2")), f.SetInnerIPv4Dst(ip("10.1.0.3")), f.SetInnerL4Dst(53))
	fmt.Println(err, f.InnerIPv4Src(), f.InnerIPv4Dst(), f.InnerL4Dst())
	fmt.Println("verify:", f.Verify())
	// Output:
	// true 192.0.2.1 192.0.2.2 33000 40123
	// <nil> 10.1.0.2 10.1.0.3 53
	// verify: <nil>
}
