package packet

import "encoding/binary"

// sum adds b, read as big-endian 16-bit words (an odd last byte padded with
// zero, RFC 1071), to the one's complement accumulator acc. It reads 32-bit
// words into a 64-bit accumulator: since 2^16 ≡ 1 (mod 2^16-1), the folded
// result equals the 16-bit word sum, with a quarter of the additions. Callers
// must start every slice at an even offset from the start of the checksummed
// data, as the words would otherwise be misaligned.
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc += v>>32 + v&0xffffffff
		b = b[8:]
	}
	if len(b) >= 4 {
		acc += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces acc to 16 bits with end-around carry. The result is 0 only if
// acc is 0, that is only if every summed byte was zero.
func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// Checksum returns the Internet checksum of b (RFC 1071): the one's
// complement of the one's complement sum of its 16-bit words. Computed over
// data whose checksum field is zero, it is the value to store there;
// computed over data that includes a correct checksum, it is zero.
func Checksum(b []byte) uint16 {
	return ^fold(sum(b, 0))
}

// UpdateChecksum returns checksum hc after a 16-bit word it covers changed
// from old to new, by RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). Unlike the
// older RFC 1141 form it never turns a checksum into 0xffff where a full
// recomputation gives 0x0000; the one case where it yields 0x0000 but
// recomputation yields 0xffff is data that sums to zero (all zero bytes),
// which the Frame setters handle. A 32-bit field such as an IPv4 address is
// two updates, one per half.
func UpdateChecksum(hc, old, new uint16) uint16 {
	return ^fold(uint64(^hc) + uint64(^old) + uint64(new))
}
