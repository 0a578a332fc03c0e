package openflow

import (
	"encoding/binary"
	"fmt"
)

// reader is a bounds-checked cursor over a byte slice. The first short read
// records an error and every later read returns zero values, so decoders can
// read a whole fixed layout and check r.err once instead of testing lengths
// before every field. This is what keeps hostile input from panicking.
type reader struct {
	b   []byte
	off int
	err error
	ctx string // what is being decoded, for error messages
}

func newReader(ctx string, b []byte) *reader { return &reader{b: b, ctx: ctx} }

func (r *reader) remaining() int {
	if r.err != nil {
		return 0
	}
	return len(r.b) - r.off
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("%w: %s: need %d bytes at offset %d, have %d", ErrTruncated, r.ctx, n, r.off, len(r.b)-r.off)
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) skip(n int) { r.take(n) }

func (r *reader) u8() uint8 {
	s := r.take(1)
	if s == nil {
		return 0
	}
	return s[0]
}

func (r *reader) u16() uint16 {
	s := r.take(2)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint16(s)
}

func (r *reader) u32() uint32 {
	s := r.take(4)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint32(s)
}

func (r *reader) u64() uint64 {
	s := r.take(8)
	if s == nil {
		return 0
	}
	return binary.BigEndian.Uint64(s)
}

// copyBytes returns a copy of the next n bytes, so decoded messages never
// alias the caller's read buffer. nil when n == 0.
func (r *reader) copyBytes(n int) []byte {
	s := r.take(n)
	if len(s) == 0 {
		return nil
	}
	return append([]byte(nil), s...)
}

// rest returns a copy of everything left (nil when nothing is left).
func (r *reader) rest() []byte { return r.copyBytes(r.remaining()) }

// fail records a decoding error unless one is already recorded.
func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s: %s", ErrMalformed, r.ctx, fmt.Sprintf(format, args...))
	}
}

// setErr records err unless one is already recorded.
func (r *reader) setErr(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

// done fails when bytes are left over after a fixed-size layout.
func (r *reader) done() error {
	if r.err == nil && r.off != len(r.b) {
		r.fail("%d trailing bytes", len(r.b)-r.off)
	}
	return r.err
}

// Append helpers; every encoder appends to a caller-supplied buffer so that
// a whole message is built in one allocation and lengths are patched after.

func put8(b []byte, v uint8) []byte   { return append(b, v) }
func put16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func put32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func put64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func pad(b []byte, n int) []byte      { return append(b, make([]byte, n)...) }

// padTo8 appends zero bytes until len(b)-start is a multiple of 8.
func padTo8(b []byte, start int) []byte { return pad(b, pad8(len(b)-start)) }

// pad8 is how many bytes make n a multiple of 8.
func pad8(n int) int { return (8 - n%8) % 8 }

// patch16 writes v at b[at:at+2] (a length field written after its body).
func patch16(b []byte, at int, v int) error {
	if v > 0xffff {
		return fmt.Errorf("%w: length %d does not fit 16 bits", ErrTooLong, v)
	}
	binary.BigEndian.PutUint16(b[at:], uint16(v))
	return nil
}

// fixedString decodes a NUL-padded fixed-size string field.
func fixedString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// putFixedString appends s as a NUL-padded field of n bytes. Longer strings
// are an error rather than silently truncated.
func putFixedString(b []byte, s string, n int, what string) ([]byte, error) {
	if len(s) > n {
		return b, fmt.Errorf("%w: %s %q longer than %d bytes", ErrInvalid, what, s, n)
	}
	b = append(b, s...)
	return pad(b, n-len(s)), nil
}

// appendTLVs encodes a list of actions or instructions: each is a 16-bit
// type, a 16-bit length (patched after the body) and a body that must keep
// the whole a multiple of 8 bytes, as both lists require.
func appendTLVs[T any](b []byte, what string, items []T, typ func(T) uint16, body func(T, []byte) ([]byte, error)) ([]byte, error) {
	for i, it := range items {
		if any(it) == nil {
			return b, fmt.Errorf("%w: %s %d is nil", ErrInvalid, what, i)
		}
		start := len(b)
		b = put16(put16(b, typ(it)), 0)
		var err error
		if b, err = body(it, b); err != nil {
			return b, fmt.Errorf("%s %d (%T): %w", what, i, it, err)
		}
		n := len(b) - start
		if n%8 != 0 {
			return b, fmt.Errorf("%w: %s %d (%T) length %d not a multiple of 8", ErrInvalid, what, i, it, n)
		}
		if err := patch16(b, start+2, n); err != nil {
			return b, fmt.Errorf("%s %d: %w", what, i, err)
		}
	}
	return b, nil
}

// readTLVs decodes a list of actions or instructions until data is used
// up, checking each length before handing the body to dec.
func readTLVs[T any](ctx, what string, data []byte, dec func(ctx string, typ uint16, body []byte) (T, error)) ([]T, error) {
	r := newReader(ctx, data)
	var out []T
	for r.remaining() > 0 {
		typ := r.u16()
		n := int(r.u16())
		if r.err != nil {
			return nil, r.err
		}
		if n < 8 || n%8 != 0 {
			return nil, fmt.Errorf("%w: %s: %s type %d has length %d (need a multiple of 8, at least 8)", ErrMalformed, ctx, what, typ, n)
		}
		body := r.take(n - 4)
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: %s type %d length %d exceeds its container", ErrMalformed, ctx, what, typ, n)
		}
		v, err := dec(ctx, typ, body)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
