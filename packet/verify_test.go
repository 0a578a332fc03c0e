package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestVerifyNamesChecksum corrupts each checksum of each sample frame in
// turn and checks that Verify reports exactly that one, with the right
// values (plus, for a quoted checksum, the ICMP checksum covering it), and
// that FixChecksums repairs it.
func TestVerifyNamesChecksum(t *testing.T) {
	wantLayers := map[string]string{
		"tcp":                "ipv4 tcp",
		"udp":                "ipv4 udp",
		"echo":               "ipv4 icmp",
		"options":            "ipv4 udp",
		"vlan":               "ipv4 tcp",
		"icmp-err-udp":       "ipv4 icmp inner ipv4 inner udp",
		"icmp-err-tcp":       "ipv4 icmp inner ipv4",
		"icmp-err-tcp-full":  "ipv4 icmp inner ipv4 inner tcp",
		"icmp-err-echo":      "ipv4 icmp inner ipv4",
		"icmp-err-echo-full": "ipv4 icmp inner ipv4 inner icmp",
		"arp-request":        "",
		"arp-reply":          "",
	}
	for name, b := range sampleFrames(t) {
		f := mustParse(t, b)
		var layers []string
		for i := f.ncs - 1; i >= 0; i-- {
			c := f.cs[i]
			if !c.complete {
				continue
			}
			layers = append(layers, c.layer.String())
			orig := bytes.Clone(b)
			good := be16(b, c.field)
			binary.BigEndian.PutUint16(b[c.field:], good+1)
			err := f.Verify()
			var ce *ChecksumError
			if !errors.As(err, &ce) || !errors.Is(err, ErrChecksum) {
				t.Errorf("%s: corrupt %s checksum: Verify = %v", name, c.layer, err)
			} else if ce.Layer != c.layer.String() || ce.Got != good+1 || ce.Want != good {
				t.Errorf("%s: corrupt %s checksum: got %+v", name, c.layer, *ce)
			}
			want := fmt.Sprintf("packet: %s checksum %#04x, want %#04x", c.layer, good+1, good)
			if c.layer >= layerInner {
				want += fmt.Sprintf("\npacket: icmp checksum %#04x, want %#04x", be16(b, f.l4+2), be16(b, f.l4+2)-1)
			}
			if err != nil && err.Error() != want {
				t.Errorf("%s: message %q, want %q", name, err, want)
			}
			f.FixChecksums()
			if !bytes.Equal(b, orig) {
				t.Errorf("%s: FixChecksums did not restore the %s checksum", name, c.layer)
			}
		}
		if got := strings.Join(layers, " "); got != wantLayers[name] {
			t.Errorf("%s: verifiable checksums %q, want %q", name, got, wantLayers[name])
		}
	}
}

// TestVerifyJoinsAll checks that every wrong checksum is reported,
// innermost first.
func TestVerifyJoinsAll(t *testing.T) {
	b := sampleFrames(t)["icmp-err-udp"]
	f := mustParse(t, b)
	for _, c := range f.cs[:f.ncs] {
		b[c.field] ^= 0xff
	}
	err := f.Verify()
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ce *ChecksumError
		if !errors.As(e, &ce) {
			t.Fatalf("unexpected error %v", e)
		}
		got = append(got, ce.Layer)
	}
	if want := "inner udp,inner ipv4,icmp,ipv4"; strings.Join(got, ",") != want {
		t.Errorf("reported %v, want %s", got, want)
	}
}

// TestVerifyZeroForms checks that a checksum of 0xffff where 0x0000 is
// computed passes: both are one's complement zero and receivers accept
// either.
func TestVerifyZeroForms(t *testing.T) {
	must := must(t)
	// Find an IPv4 identification that makes the header checksum 0x0000.
	h := hdr(macA, macB, ipC, ipS)
	b := must(BuildIPv4(h, 200, nil))
	f := mustParse(t, b)
	cs := be16(f.L3(), 10)
	h.ID = 0x1234 + cs // adding the old checksum makes the sum all ones
	b = must(BuildIPv4(h, 200, nil))
	f = mustParse(t, b)
	if got := be16(f.L3(), 10); got != 0 {
		t.Fatalf("constructed header checksum %#04x, want 0", got)
	}
	binary.BigEndian.PutUint16(f.L3()[10:], 0xffff)
	if err := f.Verify(); err != nil {
		t.Errorf("checksum 0xffff for computed 0x0000: %v", err)
	}
}

// TestVerifyStructure checks the non-checksum problems Verify reports.
func TestVerifyStructure(t *testing.T) {
	must := must(t)
	h := hdr(macA, macB, ipC, ipS)
	withOpts := func(o ...byte) []byte {
		hh := h
		hh.Options = o
		return must(BuildUDP(hh, 1, 2, nil))
	}
	fixed := func(b []byte, edit func(f *Frame)) []byte {
		f := mustParse(t, b)
		edit(&f)
		f.FixChecksums()
		return b
	}
	udp := must(BuildUDP(h, 1, 2, []byte("12345678")))
	tests := []struct {
		name string
		b    []byte
		msg  string
	}{
		{"good options", withOpts(1, 1, 0x44, 8, 5, 0, 0, 0, 0, 0, 0, 0), ""},
		{"option without length", withOpts(1, 1, 1, 0x83), "packet: ipv4 option 131 at byte 3 has no length: malformed"},
		{"option length 1", withOpts(0x83, 1, 0, 0), "packet: ipv4 option 131 at byte 0 has length 1, 4 bytes left: malformed"},
		{"option too long", withOpts(0x07, 9, 4, 0, 0, 0, 0, 0), "packet: ipv4 option 7 at byte 0 has length 9, 8 bytes left: malformed"},
		{"reserved flag", fixed(bytes.Clone(udp), func(f *Frame) { f.L3()[6] |= 0x80 }), "packet: ipv4 reserved flag set: malformed"},
		{"arp op", fixed(must(BuildARPRequest(macA, ipC, ipS)), func(f *Frame) { f.SetARPOp(3) }), "packet: arp operation 3, want 1 or 2: malformed"},
		{"quote longer than datagram", fixed(must(BuildICMPError(h, ICMPError{Type: ICMPDestUnreach, Quote: 100}, udp[ethLen:])),
			func(f *Frame) { binary.BigEndian.PutUint16(f.Payload()[2:], 30) }),
			"packet: icmp error quotes 36 bytes of a 30-byte datagram: malformed"},
		{"quoted reserved flag", fixed(must(BuildICMPError(h, ICMPError{Type: ICMPDestUnreach}, udp[ethLen:])),
			func(f *Frame) { f.Payload()[6] |= 0x80 }),
			"packet: quoted ipv4 reserved flag set: malformed"},
	}
	for _, tt := range tests {
		err := Verify(tt.b)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.msg {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.msg)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v does not wrap ErrMalformed", tt.name, err)
		}
	}
}
