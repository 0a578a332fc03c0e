package packet

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// refSum is the plain RFC 1071 loop over 16-bit words, the reference the
// 64-bit sum is checked against.
func refSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func TestChecksumVectors(t *testing.T) {
	tests := []struct {
		name string
		data string
		want uint16
	}{
		// RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to
		// 0xddf2, whose complement is the checksum.
		{"rfc1071 example", "0001 f203 f4f5 f6f7", 0x220d},
		// Odd length: the last byte is padded with zero.
		// 0001+f203+f4f5+f600 = 0x2dcf9, folded 0xdcfb.
		{"rfc1071 odd", "0001 f203 f4f5 f6", 0x2304},
		// The IPv4 header of capture frame 2 (ping), checksum zeroed;
		// Linux sent 0xe442.
		{"capture echo ipv4", "4500 0054 6a14 4000 4001 0000 c000 020a c633 6414", 0xe442},
		// The same header including its checksum sums to zero.
		{"capture echo ipv4 verify", "4500 0054 6a14 4000 4001 e442 c000 020a c633 6414", 0},
		// The IPv4 header of capture frame 17 (port unreachable): 0xcc0b.
		{"capture unreach ipv4", "45c0 0043 c29c 0000 3f01 0000 c633 6414 c000 020a", 0xcc0b},
		// Its quoted header: 0xd211.
		{"capture quoted ipv4", "4500 0027 7d62 4000 3f11 0000 c000 020a c633 6414", 0xd211},
		{"empty", "", 0xffff},
		{"all zero", "0000 0000", 0xffff},
		{"all ones", "ffff ffff", 0x0000},
	}
	for _, tt := range tests {
		b := unhex(t, tt.data)
		if got := Checksum(b); got != tt.want {
			t.Errorf("%s: Checksum = %#04x, want %#04x", tt.name, got, tt.want)
		}
		if got := refSum(b); got != tt.want {
			t.Errorf("%s: reference = %#04x, want %#04x (bad vector?)", tt.name, got, tt.want)
		}
	}
}

// TestChecksumMatchesReference compares the 32-bit-word sum with the plain
// 16-bit loop on random data of every length up to 300.
func TestChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n <= 300; n++ {
		for range 20 {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
				if r.IntN(4) == 0 {
					b[i] = 0xff // carries
				}
			}
			if got, want := Checksum(b), refSum(b); got != want {
				t.Fatalf("len %d %x: Checksum = %#04x, want %#04x", n, b, got, want)
			}
		}
	}
}

func TestUpdateChecksumRFC1624(t *testing.T) {
	// RFC 1624 section 4: HC = 0xdd2f, a field changes from 0x5555 to
	// 0x3285; eqn. 3 gives 0x0000 where RFC 1141's eqn. 2 gave 0xffff.
	if got := UpdateChecksum(0xdd2f, 0x5555, 0x3285); got != 0x0000 {
		t.Errorf("UpdateChecksum(0xdd2f, 0x5555, 0x3285) = %#04x, want 0x0000", got)
	}
	// Decrementing the TTL of capture frame 2's header (64 -> 63, the
	// word TTL|proto 0x4001 -> 0x3f01) as a router does.
	hdr := unhex(t, "4500 0054 6a14 4000 3f01 0000 c000 020a c633 6414")
	if got, want := UpdateChecksum(0xe442, 0x4001, 0x3f01), Checksum(hdr); got != want {
		t.Errorf("ttl decrement: UpdateChecksum = %#04x, recomputed %#04x", got, want)
	}
}

// TestUpdateChecksumProperty checks that an incremental update equals the
// recomputed checksum for random data and random word changes, as long as
// the data is not all zero (see UpdateChecksum).
func TestUpdateChecksumProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
next:
	for range 20000 {
		n := 2 * (1 + r.IntN(40))
		b := make([]byte, n)
		for i := range b {
			switch r.IntN(3) {
			case 0:
				b[i] = 0
			case 1:
				b[i] = 0xff
			default:
				b[i] = byte(r.Uint32())
			}
		}
		b[0] |= 1 // never all zero
		hc := Checksum(b)
		for range 5 {
			off := 2 * r.IntN(n/2)
			old := binary.BigEndian.Uint16(b[off:])
			v := uint16(r.Uint32())
			if r.IntN(4) == 0 {
				v = ^old
			}
			binary.BigEndian.PutUint16(b[off:], v)
			hc = UpdateChecksum(hc, old, v)
			if allZero(b) {
				continue next
			}
			if want := Checksum(b); hc != want {
				t.Fatalf("%x: incremental %#04x, recomputed %#04x", b, hc, want)
			}
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
