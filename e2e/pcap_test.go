package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"nvi/internal/pcap"
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
	link, recs, err := pcap.Read(path)
	if err != nil {
		return nil, err
	}
	var hdr, protoOff int
	switch link {
	case pcap.LinkLinuxSLL:
		hdr, protoOff = 16, 14
	case pcap.LinkLinuxSLL2:
		hdr, protoOff = 20, 0
	case pcap.LinkEthernet:
		hdr, protoOff = 14, 12
	default:
		return nil, fmt.Errorf("pcap %s: link type %d not handled", path, link)
	}
	var out []ipPacket
	for _, rec := range recs {
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
