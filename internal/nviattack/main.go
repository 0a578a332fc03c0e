// Command nviattack is the attacker of NVI's security tests: run inside a
// lab workload (or the lab's underlay or internet namespace), it sends the
// traffic an attacker would — datagrams sprayed over a port range, floods
// of first packets toward many destinations, packets of protocols NVI does
// not carry — and prints how many packets it sent, so that a test can set
// that beside what was delivered. It sends only to the addresses it is
// given, with a bound on count and time.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"nvi/packet"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	var sent int
	switch os.Args[1] {
	case "spray":
		sent, err = spray(os.Args[2:])
	case "flood":
		sent, err = flood(os.Args[2:])
	case "raw":
		sent, err = raw(os.Args[2:])
	case "tagged":
		sent, err = tagged(os.Args[2:])
	case "beacon":
		sent, err = beacon(os.Args[2:])
	case "sink":
		err = sink(os.Args[2:])
	case "peer":
		sent, err = peer(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q\n%s", os.Args[1], usage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nviattack:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %d\n", sent)
}

const usage = `usage:
  nviattack spray --to IP --ports A-B [--proto udp|tcp] [--src-port P] [--payload S]
  nviattack flood --net CIDR --count N [--port P] [--for D]
  nviattack raw   --to IP --proto N --count N
  nviattack tagged --dev eth0 --to IP --port P --vlan V [--count N]   (802.1Q-tagged UDP frames)
  nviattack beacon --to IP:PORT [--every D] [--count N]   (the legitimate traffic beside an attack)
  nviattack sink --port P                                  (prints every datagram with its source)
  nviattack peer --to IP:PORT --call accept|release|reopen|unknown-key [--body JSON | --raw-body HEX]
                 [--identity DIR --server NAME | --plain]   (one call to an agent's peer API; exit 0 only if accepted)`

// spray sends one datagram (UDP) or one connection attempt (TCP) to every
// port of a range: the way to find a session key without knowing it.
func spray(args []string) (int, error) {
	fs := flag.NewFlagSet("spray", flag.ContinueOnError)
	to := fs.String("to", "", "destination address")
	ports := fs.String("ports", "", "port range A-B")
	proto := fs.String("proto", "udp", "udp or tcp")
	srcPort := fs.Int("src-port", 0, "source port (0: any)")
	payload := fs.String("payload", "forged", "datagram payload")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	dst, err := netip.ParseAddr(*to)
	if err != nil {
		return 0, fmt.Errorf("--to: %w", err)
	}
	lo, hi, err := portRange(*ports)
	if err != nil {
		return 0, err
	}
	sent := 0
	switch *proto {
	case "udp":
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *srcPort})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		for p := lo; p <= hi; p++ {
			msg := fmt.Sprintf("%s %d\n", *payload, p)
			if _, err := c.WriteToUDPAddrPort([]byte(msg), netip.AddrPortFrom(dst, uint16(p))); err == nil {
				sent++
			}
		}
	case "tcp":
		d := net.Dialer{Timeout: 20 * time.Millisecond}
		if *srcPort != 0 {
			d.LocalAddr = &net.TCPAddr{Port: *srcPort}
		}
		for p := lo; p <= hi; p++ {
			sent++
			if c, err := d.Dial("tcp4", netip.AddrPortFrom(dst, uint16(p)).String()); err == nil {
				fmt.Fprintf(c, "%s %d\n", *payload, p)
				c.Close()
			}
		}
	default:
		return 0, fmt.Errorf("--proto %q: want udp or tcp", *proto)
	}
	return sent, nil
}

// flood sends first packets (UDP datagrams) to count distinct addresses of
// a network, cycling through it, for at most --for: each one is a new
// session for the agent to think about.
func flood(args []string) (int, error) {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	network := fs.String("net", "", "destination network, e.g. 10.9.0.0/16")
	count := fs.Int("count", 10000, "packets to send")
	port := fs.Int("port", 9, "destination port (0: a different one each packet)")
	dur := fs.Duration("for", 10*time.Second, "stop after this long even if count is not reached")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	p, err := netip.ParsePrefix(*network)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return 0, fmt.Errorf("--net %q: want an IPv4 network of /30 or larger", *network)
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	base := p.Masked().Addr().As4()
	size := uint32(1) << (32 - p.Bits())
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	deadline := time.Now().Add(*dur)
	sent := 0
	for i := 0; i < *count && time.Now().Before(deadline); i++ {
		v := b + 1 + uint32(i)%(size-2)
		dst := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		dport := *port
		if dport == 0 {
			dport = 1 + i%65000
		}
		if _, err := c.WriteToUDPAddrPort([]byte("flood"), netip.AddrPortFrom(dst, uint16(dport))); err == nil {
			sent++
		}
	}
	return sent, nil
}

// raw sends IP packets of a protocol number NVI has no sessions for.
func raw(args []string) (int, error) {
	fs := flag.NewFlagSet("raw", flag.ContinueOnError)
	to := fs.String("to", "", "destination address")
	proto := fs.Int("proto", 253, "IP protocol number")
	count := fs.Int("count", 1000, "packets to send")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	if *proto < 1 || *proto > 255 {
		return 0, errors.New("--proto: want 1..255")
	}
	c, err := net.ListenPacket("ip4:"+strconv.Itoa(*proto), "0.0.0.0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dst, err := net.ResolveIPAddr("ip4", *to)
	if err != nil {
		return 0, err
	}
	sent := 0
	for i := 0; i < *count; i++ {
		if _, err := c.WriteTo([]byte("raw"), dst); err == nil {
			sent++
		}
	}
	return sent, nil
}

func portRange(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("--ports %q: want A-B within 1-65535", s)
	}
	return lo, hi, nil
}

// beacon is legitimate traffic: numbered datagrams at a steady pace from
// one socket, so that they all belong to one session.
func beacon(args []string) (int, error) {
	fs := flag.NewFlagSet("beacon", flag.ContinueOnError)
	to := fs.String("to", "", "destination IP:PORT")
	every := fs.Duration("every", 100*time.Millisecond, "interval between datagrams")
	count := fs.Int("count", 3000, "datagrams to send")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		return 0, fmt.Errorf("--to: %w", err)
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	sent := 0
	for i := 1; i <= *count; i++ {
		if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("legit %d\n", i)), dst); err == nil {
			sent++
		}
		time.Sleep(*every)
	}
	return sent, nil
}

// sink prints every datagram that reaches port, with its source, one line
// each and at once, for a test to read while it runs.
func sink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	port := fs.Int("port", 0, "UDP port to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *port})
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		fmt.Printf("from %s: %s\n", from, strings.TrimSpace(string(buf[:n])))
	}
}

// tagged sends UDP datagrams in 802.1Q-tagged Ethernet frames, with the
// interface's own MAC and address (so that only the tag is wrong), to the
// MAC every NVI workload sees for its peers.
func tagged(args []string) (int, error) {
	fs := flag.NewFlagSet("tagged", flag.ContinueOnError)
	dev := fs.String("dev", "eth0", "interface to send on")
	to := fs.String("to", "", "destination address")
	port := fs.Int("port", 9, "destination UDP port")
	vlan := fs.Int("vlan", 42, "VLAN ID of the tag")
	count := fs.Int("count", 5, "frames to send")
	gw := fs.String("gateway-mac", "02:00:00:4e:56:49", "destination MAC")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	dst, err := netip.ParseAddr(*to)
	if err != nil {
		return 0, fmt.Errorf("--to: %w", err)
	}
	ifi, err := net.InterfaceByName(*dev)
	if err != nil {
		return 0, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return 0, err
	}
	var src netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			src = p.Addr()
		}
	}
	if !src.IsValid() {
		return 0, fmt.Errorf("%s has no IPv4 address", *dev)
	}
	gwMAC, err := net.ParseMAC(*gw)
	if err != nil {
		return 0, fmt.Errorf("--gateway-mac: %w", err)
	}
	frame, err := packet.BuildUDP(packet.Header{EthSrc: ifi.HardwareAddr, EthDst: gwMAC, VLANs: []uint16{uint16(*vlan) & 0x0fff}, Src: src, Dst: dst},
		40000, uint16(*port), []byte("tagged"))
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return 0, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
	copy(sa.Addr[:], gwMAC)
	sent := 0
	for i := 0; i < *count; i++ {
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return sent, fmt.Errorf("send: %w", err)
		}
		sent++
	}
	return sent, nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
