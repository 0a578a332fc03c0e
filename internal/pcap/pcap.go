// Package pcap reads classic libpcap files, the format "tcpdump -w" writes,
// for tests that check what really crossed a wire.
package pcap

import (
	"encoding/binary"
	"fmt"
	"os"
)

// Link types the tests meet.
const (
	LinkEthernet  = 1
	LinkLinuxSLL  = 113 // tcpdump -i any, cooked v1
	LinkLinuxSLL2 = 276 // tcpdump -i any, cooked v2
)

// Read returns a capture's link type and its records (microsecond or
// nanosecond timestamps, either byte order). It is strict: a file it cannot
// read whole is an error, never a shorter, passing capture.
func Read(path string) (link uint32, records [][]byte, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	if len(data) < 24 {
		return 0, nil, fmt.Errorf("%s: %d bytes, no pcap header", path, len(data))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return 0, nil, fmt.Errorf("%s: not a pcap file", path)
	}
	link = bo.Uint32(data[20:])
	for p := data[24:]; len(p) > 0; {
		if len(p) < 16 {
			return 0, nil, fmt.Errorf("%s: truncated record header", path)
		}
		n := int(bo.Uint32(p[8:]))
		if n > len(p)-16 {
			return 0, nil, fmt.Errorf("%s: truncated record", path)
		}
		records = append(records, p[16:16+n:16+n])
		p = p[16+n:]
	}
	return link, records, nil
}
