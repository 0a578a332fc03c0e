package packet

import (
	"encoding/binary"
	"errors"
)

// compute returns the value checksum c should hold given the bytes it covers.
func (f *Frame) compute(c *cksum) uint16 {
	acc := sum(f.b[c.lo:c.field], 0)
	acc = sum(f.b[c.field+2:c.hi], acc)
	if c.pseudo != 0 {
		acc = sum(f.b[c.pseudo:c.pseudo+8], acc)
		acc += uint64(c.proto) + uint64(c.hi-c.lo)
	}
	v := ^fold(acc)
	if v == 0 && c.layer.base() == layerUDP {
		v = 0xffff // RFC 768
	}
	return v
}

// FixChecksums recomputes every checksum whose coverage is all in the frame:
// the IPv4 header checksum, the TCP, UDP or ICMP checksum unless the datagram
// is a fragment, and for ICMP errors the quoted IPv4 header checksum and, if
// the whole original datagram is quoted, its L4 checksum. A UDP checksum of
// zero means the sender computed none (RFC 768) and stays zero. It does
// nothing to an empty Frame.
func (f *Frame) FixChecksums() { f.fix(false) }

// fix is FixChecksums; forceUDP also computes a zero UDP checksum, for
// builders. Checksums are stored innermost first, so each is computed over
// already fixed inner ones.
func (f *Frame) fix(forceUDP bool) {
	for i := 0; i < f.ncs; i++ {
		c := &f.cs[i]
		if !c.complete {
			continue
		}
		if !forceUDP && c.layer.base() == layerUDP && be16(f.b, c.field) == 0 {
			continue
		}
		binary.BigEndian.PutUint16(f.b[c.field:], f.compute(c))
	}
}

// Verify parses b and checks it with Frame.Verify.
func Verify(b []byte) error {
	f, err := Parse(b)
	if err != nil {
		return err
	}
	return f.Verify()
}

// Verify checks what Parse lets pass: every checksum that can be checked
// (those FixChecksums would recompute; a received checksum of 0xffff where
// 0x0000 is computed is the same one's complement zero and passes), IPv4
// options, the reserved flag, a UDP length equal to the IPv4 payload, an ARP
// operation of request or reply, and an ICMP error quoting no more than the
// original datagram. It returns all problems joined, each checksum one a
// *ChecksumError, so a test learns exactly which fields are wrong; checksum
// errors come innermost first (errors.As finds the quoted datagram's before
// the ICMP checksum that a wrong quoted checksum also breaks).
func (f *Frame) Verify() error {
	var errs []error
	if f.isARP() {
		if op := f.ARPOp(); op != ARPRequest && op != ARPReply {
			errs = append(errs, errf(ErrMalformed, "arp operation %d, want 1 or 2", op))
		}
	}
	if ip := f.ipOff(); ip != 0 {
		errs = f.verifyIPv4(errs, ip, "ipv4")
		if f.portOff() != 0 && f.b[ip+9] == ProtoUDP && !f.IsFragment() {
			if ulen, payload := f.l4end-f.l4, f.end-f.l4; ulen != payload {
				errs = append(errs, errf(ErrMalformed, "udp length %d, ipv4 payload %d", ulen, payload))
			}
		}
	}
	if f.in != 0 {
		errs = f.verifyIPv4(errs, f.in, "quoted ipv4")
		if total, quoted := int(be16(f.b, f.in+2)), f.end-f.in; quoted > total {
			errs = append(errs, errf(ErrMalformed, "icmp error quotes %d bytes of a %d-byte datagram", quoted, total))
		}
	}
	// Innermost first: a wrong quoted checksum also makes the ICMP checksum
	// over it wrong, and the first error should name the cause.
	for i := 0; i < f.ncs; i++ {
		c := &f.cs[i]
		if !c.complete {
			continue
		}
		got := be16(f.b, c.field)
		if got == 0 && c.layer.base() == layerUDP {
			continue
		}
		if want := f.compute(c); got != want && fold(uint64(^want)+uint64(got)) != 0xffff {
			errs = append(errs, &ChecksumError{Layer: c.layer.String(), Got: got, Want: want})
		}
	}
	return errors.Join(errs...)
}

// verifyIPv4 appends the problems of the IPv4 header at ip other than its
// lengths (checked by Parse) and checksum: the reserved flag and options.
func (f *Frame) verifyIPv4(errs []error, ip int, what string) []error {
	if f.b[ip+6]&0x80 != 0 {
		errs = append(errs, errf(ErrMalformed, "%s reserved flag set", what))
	}
	ihl := int(f.b[ip]&0x0f) * 4
	if err := checkOptions(f.b[ip+ipv4MinLen:ip+ihl], what); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// checkOptions checks that IPv4 options are well-formed type-length-value
// items (RFC 791): end-of-list and no-operation are one byte, every other
// option has a length of at least 2 that stays within the header.
func checkOptions(o []byte, what string) error {
	for i := 0; i < len(o); {
		switch o[i] {
		case 0: // end of option list; the rest is padding
			return nil
		case 1:
			i++
			continue
		}
		if i+1 >= len(o) {
			return errf(ErrMalformed, "%s option %d at byte %d has no length", what, o[i], i)
		}
		n := int(o[i+1])
		if n < 2 || i+n > len(o) {
			return errf(ErrMalformed, "%s option %d at byte %d has length %d, %d bytes left", what, o[i], i, n, len(o)-i)
		}
		i += n
	}
	return nil
}
