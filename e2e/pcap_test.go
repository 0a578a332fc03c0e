package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
)

// ipPacket is what the underlay checks need of one captured IPv4 packet.
type ipPacket struct {
	Src, Dst netip.Addr
	Proto    uint8
	TotalLen int
	DstPort  uint16 // TCP or UDP
}

// readPcap reads the IPv4 packets of a tcpdump capture taken on "any"
// (Linux cooked headers, v1 or v2). It is strict: a file it cannot read is
// an error, never an empty, passing capture.
func readPcap(path string) ([]ipPacket, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("pcap %s: %d bytes, no header", path, len(b))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap %s: bad magic", path)
	}
	link := bo.Uint32(b[20:])
	var hdr, protoOff int
	switch link {
	case 113: // LINUX_SLL
		hdr, protoOff = 16, 14
	case 276: // LINUX_SLL2
		hdr, protoOff = 20, 0
	case 1: // Ethernet
		hdr, protoOff = 14, 12
	default:
		return nil, fmt.Errorf("pcap %s: link type %d not handled", path, link)
	}
	var out []ipPacket
	for off := 24; off < len(b); {
		if off+16 > len(b) {
			return nil, fmt.Errorf("pcap %s: truncated record header", path)
		}
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if incl > len(b)-off {
			return nil, fmt.Errorf("pcap %s: truncated record", path)
		}
		rec := b[off : off+incl]
		off += incl
		if len(rec) < hdr+20 || binary.BigEndian.Uint16(rec[protoOff:]) != 0x0800 {
			continue
		}
		ip := rec[hdr:]
		ihl := int(ip[0]&0xf) * 4
		p := ipPacket{
			Src:      netip.AddrFrom4([4]byte(ip[12:16])),
			Dst:      netip.AddrFrom4([4]byte(ip[16:20])),
			Proto:    ip[9],
			TotalLen: int(binary.BigEndian.Uint16(ip[2:])),
		}
		if (p.Proto == 6 || p.Proto == 17) && len(ip) >= ihl+4 {
			p.DstPort = binary.BigEndian.Uint16(ip[ihl+2:])
		}
		out = append(out, p)
	}
	return out, nil
}
