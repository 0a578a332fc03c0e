package openflow

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"reflect"
	"runtime"
	"testing"
	"time"
)

// addVectorSeeds seeds a fuzzer with every vector, whole and cut in half.
func addVectorSeeds(f *testing.F) [][]byte {
	var all [][]byte
	files := vectorFiles(f)
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		all = append(all, raw)
		f.Add(raw)
		f.Add(raw[:len(raw)/2])
	}
	// Our own encodings of what NVI sends, Nicira actions included.
	for _, m := range []Message{nviFlow(), arpResponderFlow(), &PacketOut{BufferID: NoBuffer, InPort: PortController, Actions: []Action{Resubmit(1)}, Data: []byte{1}}} {
		b, err := Marshal(m, 1)
		if err != nil {
			f.Fatal(err)
		}
		all = append(all, b)
		f.Add(b)
	}
	return all
}

// FuzzUnmarshal: no input panics, and whatever decodes re-encodes to bytes
// that decode to the same value and encode to the same bytes again
// (decode→encode→decode is stable).
func FuzzUnmarshal(f *testing.F) {
	addVectorSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, xid, err := Unmarshal(b)
		if err != nil {
			return
		}
		_ = m.(interface{ String() string }).String()
		b2, err := Marshal(m, xid)
		if err != nil {
			t.Fatalf("decoded %T does not re-encode: %v", m, err)
		}
		m2, xid2, err := Unmarshal(b2)
		if err != nil {
			t.Fatalf("re-encoding of %T does not decode: %v\n in %x\nout %x", m, err, b, b2)
		}
		if xid2 != xid || !reflect.DeepEqual(m, m2) {
			t.Fatalf("decode→encode→decode changed the message:\n%#v\n%#v", m, m2)
		}
		b3, err := Marshal(m2, xid2)
		if err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("second encoding differs: %v", err)
		}
	})
}

// FuzzActions targets the action decoder (Nicira actions, set-field OXM)
// directly, which finds its corner cases faster than whole messages.
func FuzzActions(f *testing.F) {
	for _, m := range []*FlowMod{nviFlow(), arpResponderFlow()} {
		for _, in := range m.Instructions {
			aa, ok := in.(InstructionApplyActions)
			if !ok {
				continue
			}
			b, err := appendActions(nil, aa.Actions)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
			for _, a := range aa.Actions {
				b, _ := appendActions(nil, []Action{a})
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		acts, err := readActions("fuzz", b)
		if err != nil {
			return
		}
		_ = ActionsString(acts)
		b2, err := appendActions(nil, acts)
		if err != nil {
			t.Fatalf("decoded actions do not re-encode: %v", err)
		}
		acts2, err := readActions("fuzz", b2)
		if err != nil || !reflect.DeepEqual(acts, acts2) {
			t.Fatalf("decode→encode→decode changed the actions: %v\n%#v\n%#v", err, acts, acts2)
		}
	})
}

// FuzzMatch targets the OXM decoder.
func FuzzMatch(f *testing.F) {
	for _, m := range []Match{nviFlow().Match, arpResponderFlow().Match, {}} {
		b, err := appendMatch(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newReader("fuzz", b)
		m := readMatch(r)
		if r.err != nil {
			return
		}
		_ = m.String()
		b2, err := appendMatch(nil, m)
		if err != nil {
			t.Fatalf("decoded match does not re-encode: %v", err)
		}
		r2 := newReader("fuzz", b2)
		m2 := readMatch(r2)
		if r2.err != nil || r2.remaining() != 0 || !reflect.DeepEqual(m, m2) {
			t.Fatalf("decode→encode→decode changed the match: %v\n%v\n%v", r2.err, m, m2)
		}
	})
}

// TestDecodeAllocationBound: decoding allocates in proportion to the
// message, whatever its length fields claim. Every vector, and crafted
// worst cases (the densest lists of the smallest elements in a maximal
// message), must stay under 64 bytes allocated per input byte.
func TestDecodeAllocationBound(t *testing.T) {
	var inputs [][]byte
	for _, path := range vectorFiles(t) {
		raw, _ := os.ReadFile(path)
		inputs = append(inputs, raw)
	}
	// A maximal flow mod made of the smallest match fields (empty
	// unknown OXMs) and the smallest actions.
	big := func(typ MsgType, prefix []byte, unit []byte) []byte {
		b := append([]byte{Version, byte(typ), 0, 0, 0, 0, 0, 1}, prefix...)
		for len(b)+len(unit) <= MaxMessageLen {
			b = append(b, unit...)
		}
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}
	emptyMatch := []byte{0, 1, 0, 4, 0, 0, 0, 0}
	flowModHdr := append(make([]byte, 40), emptyMatch...)
	inputs = append(inputs,
		big(TypeFlowMod, flowModHdr, []byte{0, 4, 0, 8, 0, 0, 0, 0}),                            // empty apply-actions instructions
		packetOutActions(big(TypePacketOut, make([]byte, 16), []byte{0, 18, 0, 8, 0, 0, 0, 0})), // pop_vlan actions
		big(TypeHello, nil, []byte{0, 1, 0, 8, 0xff, 0xff, 0xff, 0xff}),                         // version bitmaps
		big(TypeMultipartReply, []byte{0, 13, 0, 0, 0, 0, 0, 0}, make([]byte, 64)),              // port descriptions
	)
	// A match of the maximal number of empty unknown fields.
	fields := []byte{0, 1, 0, 0}
	for len(fields)+4 <= MaxMessageLen-64 {
		fields = append(fields, 0x7f, 0xfe, 0, 0) // class 0x7ffe, field 127, length 0
	}
	binary.BigEndian.PutUint16(fields[2:], uint16(len(fields)))
	fields = append(fields, make([]byte, pad8(len(fields)))...)
	fm := append(append([]byte{Version, byte(TypeFlowMod), 0, 0, 0, 0, 0, 1}, make([]byte, 40)...), fields...)
	binary.BigEndian.PutUint16(fm[2:], uint16(len(fm)))
	inputs = append(inputs, fm)

	for i, b := range inputs {
		// TotalAlloc counts every goroutine's allocations (the runtime's,
		// the race detector's), which can only add to the decoder's: the
		// least of a few runs is the decoder's own.
		var m Message
		var err error
		alloc := uint64(math.MaxUint64)
		for range 5 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			m, _, err = Unmarshal(b)
			runtime.ReadMemStats(&after)
			alloc = min(alloc, after.TotalAlloc-before.TotalAlloc)
		}
		if limit := uint64(128*len(b) + 4096); alloc > limit {
			t.Errorf("input %d (%d bytes, %T, err %v) allocated %d bytes, limit %d", i, len(b), m, err, alloc, limit)
		}
		if i >= len(inputs)-5 && err != nil {
			t.Errorf("crafted input %d does not decode: %v", i, err)
		}
	}
}

// packetOutActions sets a crafted packet-out's actions_len to cover the
// whole rest of the message.
func packetOutActions(b []byte) []byte {
	binary.BigEndian.PutUint16(b[16:], uint16(len(b)-24))
	return b
}

// FuzzConnInput feeds arbitrary bytes to an established Conn as if the
// switch sent them: the Conn must never panic or hang, and must end with an
// error once the switch hangs up.
func FuzzConnInput(f *testing.F) {
	for _, b := range addVectorSeeds(f) {
		f.Add(append(append([]byte(nil), b...), b...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			go b.Write(mustMarshal(t, Hello{Versions: []uint8{Version}}, 1))
			// Answer the features request, then send the fuzz input
			// while draining whatever the Conn writes.
			for {
				raw, err := ReadMessage(b)
				if err != nil {
					return
				}
				if raw[1] == byte(TypeFeaturesRequest) {
					b.Write(mustMarshal(t, FeaturesReply{DatapathID: 1}, binary.BigEndian.Uint32(raw[4:])))
					go func() {
						b.Write(in)
						b.Close()
					}()
				}
			}
		}()
		c, err := NewConn(a, slog.New(slog.NewTextHandler(io.Discard, nil)), WithEchoInterval(0))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		for range c.Async() {
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("connection did not end after the switch hung up")
		}
		if c.Err() == nil {
			t.Fatal("ended without an error")
		}
		c.Close()
	})
}
