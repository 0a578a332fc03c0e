package packet

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps one of them, so
// callers can tell a short capture (ErrTruncated) from garbage (ErrMalformed)
// with errors.Is, while the message says which field and which values.
var (
	// ErrTruncated means the bytes end before a header or a length field says.
	ErrTruncated = errors.New("truncated")
	// ErrMalformed means a field holds a value no valid frame can have.
	ErrMalformed = errors.New("malformed")
	// ErrUnsupported means a well-formed frame this package does not decode,
	// such as ARP for a hardware type other than Ethernet.
	ErrUnsupported = errors.New("unsupported")
	// ErrNoHeader means a setter was called for a header the frame lacks,
	// such as SetL4Src on an ARP frame or on a non-first IPv4 fragment.
	ErrNoHeader = errors.New("no such header")
	// ErrBadValue means an argument cannot be written, such as a 4-byte MAC
	// address or an IPv6 address for an IPv4 field.
	ErrBadValue = errors.New("bad value")
	// ErrChecksum means a checksum does not match the bytes it covers; the
	// error is a *ChecksumError that names the checksum.
	ErrChecksum = errors.New("bad checksum")
)

// errf builds an error "packet: <message>: <kind>" wrapping kind.
func errf(kind error, format string, args ...any) error {
	return fmt.Errorf("packet: %s: %w", fmt.Sprintf(format, args...), kind)
}

// ChecksumError reports one wrong checksum found by Verify. Layer names it:
// "ipv4", "tcp", "udp" or "icmp", prefixed by "inner " for the datagram
// quoted in an ICMP error.
type ChecksumError struct {
	Layer string
	Got   uint16 // the value in the frame
	Want  uint16 // the value FixChecksums would write
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("packet: %s checksum %#04x, want %#04x", e.Layer, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrChecksum) true for a *ChecksumError.
func (e *ChecksumError) Is(target error) bool { return target == ErrChecksum }
