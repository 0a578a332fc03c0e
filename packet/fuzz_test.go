package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"testing"
)

// fuzzSeeds adds every captured and sample frame to the corpus.
func fuzzSeeds(f *testing.F, add func(b []byte)) {
	for _, b := range capture(f) {
		add(b)
	}
	for _, b := range sampleFrames(f) {
		add(b)
	}
}

// checksumErrors returns the ChecksumErrors inside err.
func checksumErrors(err error) []*ChecksumError {
	var out []*ChecksumError
	var walk func(error)
	walk = func(e error) {
		var ce *ChecksumError
		if errors.As(e, &ce) && e == error(ce) {
			out = append(out, ce)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

// FuzzParse feeds arbitrary bytes to Parse, every getter, Verify and
// FixChecksums. Nothing may panic; errors must wrap a sentinel; a parsed
// frame must re-parse identically after FixChecksums and then have no
// checksum errors.
func FuzzParse(f *testing.F) {
	fuzzSeeds(f, func(b []byte) { f.Add(b) })
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		touchGetters(&fr)
		_ = fr.Verify()
		fixed := bytes.Clone(data)
		g, err := Parse(fixed)
		if err != nil {
			t.Fatalf("second Parse: %v", err)
		}
		g.FixChecksums()
		h, err := Parse(fixed)
		if err != nil {
			t.Fatalf("Parse after FixChecksums: %v", err)
		}
		h.b, g.b = nil, nil
		if !reflect.DeepEqual(h, g) {
			t.Fatalf("FixChecksums changed the parse:\n%+v\n%+v", g, h)
		}
		if ce := checksumErrors(Verify(fixed)); len(ce) != 0 {
			t.Fatalf("after FixChecksums: %v", ce[0])
		}
	})
}

// touchGetters calls every getter, checking the slices stay in bounds.
func touchGetters(f *Frame) {
	_, _, _, _ = f.EthSrc(), f.EthDst(), f.EthType(), f.VLANTags()
	_, _, _, _, _ = f.ARPOp(), f.ARPSHA(), f.ARPSPA(), f.ARPTHA(), f.ARPTPA()
	_, _, _, _, _ = f.IPv4Src(), f.IPv4Dst(), f.IPProto(), f.TTL(), f.IPID()
	_, _, _, _ = f.DontFragment(), f.IsFragment(), f.IPv4HeaderLen(), f.IPv4TotalLen()
	_, _ = f.L4Src(), f.L4Dst()
	_, _, _, _, _, _ = f.ICMPType(), f.ICMPCode(), f.ICMPID(), f.ICMPSeq(), f.ICMPNextHopMTU(), f.IsICMPError()
	_, _, _ = f.InnerIPv4Src(), f.InnerIPv4Dst(), f.InnerProto()
	_, _, _ = f.InnerL4Src(), f.InnerL4Dst(), f.InnerICMPID()
	_, _, _, _ = f.Bytes(), f.L3(), f.L4(), f.Payload()
}

// FuzzEditAndVerify makes fuzzer-chosen edits to a frame whose checksums
// were first fixed: after every edit the incrementally updated checksums
// must equal a full recomputation, so Verify finds no checksum error; then
// undoing the edits in reverse must restore the bytes.
func FuzzEditAndVerify(f *testing.F) {
	fuzzSeeds(f, func(b []byte) {
		f.Add(b, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 0xff, 0x80, 0x7f})
	})
	f.Fuzz(func(t *testing.T, data, ops []byte) {
		fr, err := Parse(data)
		if err != nil {
			return
		}
		fr.FixChecksums()
		orig := bytes.Clone(data)
		type undo struct {
			op    byte
			value []byte
		}
		var undos []undo
		for len(ops) >= 7 {
			op, v := ops[0], ops[1:7]
			ops = ops[7:]
			old := getField(&fr, op)
			if err := setField(&fr, op, v); err != nil {
				if !errors.Is(err, ErrNoHeader) {
					t.Fatalf("op %d: %v", op, err)
				}
				continue
			}
			undos = append(undos, undo{op, old})
			if ce := checksumErrors(fr.Verify()); len(ce) != 0 {
				t.Fatalf("after op %d: %v", op, ce[0])
			}
			full := bytes.Clone(data)
			g, err := Parse(full)
			if err != nil {
				t.Fatalf("after op %d: %v", op, err)
			}
			g.FixChecksums()
			if !bytes.Equal(full, data) {
				t.Fatalf("after op %d: incremental\n%x\nfull\n%x", op, data, full)
			}
		}
		for i := len(undos) - 1; i >= 0; i-- {
			if err := setField(&fr, undos[i].op, undos[i].value); err != nil {
				t.Fatalf("undo op %d: %v", undos[i].op, err)
			}
		}
		if !bytes.Equal(data, orig) {
			t.Fatalf("undo left\n%x\nwant\n%x", data, orig)
		}
	})
}

// numFields is the number of fields getField and setField know.
const numFields = 18

// getField returns field op%numFields as the 6 bytes setField takes.
func getField(f *Frame, op byte) []byte {
	v := make([]byte, 6)
	a := func(x netip.Addr) {
		if x.IsValid() {
			b := x.As4()
			copy(v, b[:])
		}
	}
	w := func(x uint16) { binary.BigEndian.PutUint16(v, x) }
	switch op % numFields {
	case 0:
		copy(v, f.EthSrc())
	case 1:
		copy(v, f.EthDst())
	case 2:
		a(f.IPv4Src())
	case 3:
		a(f.IPv4Dst())
	case 4:
		v[0] = f.TTL()
	case 5:
		w(f.L4Src())
	case 6:
		w(f.L4Dst())
	case 7:
		w(f.ICMPID())
	case 8:
		a(f.InnerIPv4Src())
	case 9:
		a(f.InnerIPv4Dst())
	case 10:
		w(f.InnerL4Src())
	case 11:
		w(f.InnerL4Dst())
	case 12:
		w(f.InnerICMPID())
	case 13:
		w(f.ARPOp())
	case 14:
		copy(v, f.ARPSHA())
	case 15:
		a(f.ARPSPA())
	case 16:
		copy(v, f.ARPTHA())
	case 17:
		a(f.ARPTPA())
	}
	return v
}

// setField sets field op%numFields from the 6 bytes v.
func setField(f *Frame, op byte, v []byte) error {
	a := netip.AddrFrom4([4]byte(v))
	w := binary.BigEndian.Uint16(v)
	m := net.HardwareAddr(v)
	switch op % numFields {
	case 0:
		return f.SetEthSrc(m)
	case 1:
		return f.SetEthDst(m)
	case 2:
		return f.SetIPv4Src(a)
	case 3:
		return f.SetIPv4Dst(a)
	case 4:
		return f.SetTTL(v[0])
	case 5:
		return f.SetL4Src(w)
	case 6:
		return f.SetL4Dst(w)
	case 7:
		return f.SetICMPID(w)
	case 8:
		return f.SetInnerIPv4Src(a)
	case 9:
		return f.SetInnerIPv4Dst(a)
	case 10:
		return f.SetInnerL4Src(w)
	case 11:
		return f.SetInnerL4Dst(w)
	case 12:
		return f.SetInnerICMPID(w)
	case 13:
		return f.SetARPOp(w)
	case 14:
		return f.SetARPSHA(m)
	case 15:
		return f.SetARPSPA(a)
	case 16:
		return f.SetARPTHA(m)
	default:
		return f.SetARPTPA(a)
	}
}
