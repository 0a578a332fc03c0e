package openflow

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "", "\t", "").Replace(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFieldConstructors(t *testing.T) {
	mac := net.HardwareAddr{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	cases := []struct {
		f    Field
		wire string // OXM TLV
		str  string
	}{
		{InPort(3), "80000004 00000003", "in_port=3"},
		{InPort(PortLocal), "80000004 fffffffe", "in_port=LOCAL"},
		{Metadata(0x10), "80000408 0000000000000010", "metadata=0x10"},
		{MetadataMasked(0x1f, 0xf0), "80000510 0000000000000010 00000000000000f0", "metadata=0x10/0xf0"},
		{EthDst(mac), "80000606 aabbccddeeff", "eth_dst=aa:bb:cc:dd:ee:ff"},
		{EthSrc(mac), "80000806 aabbccddeeff", "eth_src=aa:bb:cc:dd:ee:ff"},
		{EthType(0x0800), "80000a02 0800", "eth_type=0x800"},
		{VLANVID(100), "80000c02 1064", "vlan_vid=0x1064"},
		{VLANNone(), "80000c02 0000", "vlan_vid=0x0"},
		{VLANAny(), "80000d04 1000 1000", "vlan_vid=0x1000/0x1000"},
		{VLANUntagged(), "80000d04 0000 1000", "vlan_vid=0x0/0x1000"},
		{IPFrag(0, IPFragLater), "00013502 00 02", "nw_frag=0x0/0x2"},
		{IPFrag(IPFragAny, IPFragAny), "00013502 01 01", "nw_frag=0x1/0x1"},
		{IPDSCP(46), "80001001 2e", "ip_dscp=46"},
		{IPProto(6), "80001401 06", "ip_proto=6"},
		{IPv4Src(netip.MustParseAddr("10.0.0.1")), "80001604 0a000001", "nw_src=10.0.0.1"},
		{IPv4Dst(netip.MustParseAddr("::ffff:10.0.0.2")), "80001804 0a000002", "nw_dst=10.0.0.2"},
		{IPv4SrcPrefix(netip.MustParsePrefix("10.0.0.5/24")), "80001708 0a000000 ffffff00", "nw_src=10.0.0.0/24"},
		{IPv4DstPrefix(netip.MustParsePrefix("10.0.0.5/32")), "80001804 0a000005", "nw_dst=10.0.0.5"},
		{IPv4DstPrefix(netip.MustParsePrefix("0.0.0.0/0")), "80001908 00000000 00000000", "nw_dst=0.0.0.0/0"},
		{TCPSrc(1234), "80001a02 04d2", "tcp_src=1234"},
		{TCPDst(80), "80001c02 0050", "tcp_dst=80"},
		{UDPSrc(53), "80001e02 0035", "udp_src=53"},
		{UDPDst(53), "80002002 0035", "udp_dst=53"},
		{TCPSrcMasked(0x1234, 0xff00), "80001b04 1200 ff00", "tcp_src=0x1200/0xff00"},
		{TCPDstMasked(80, 0xffff), "80001d04 0050 ffff", "tcp_dst=0x50/0xffff"},
		{UDPSrcMasked(0, 0), "80001f04 0000 0000", "udp_src=0x0/0x0"},
		{UDPDstMasked(0xffff, 0xfc00), "80002104 fc00 fc00", "udp_dst=0xfc00/0xfc00"},
		{ICMPv4Type(8), "80002601 08", "icmp_type=8"},
		{ICMPv4Code(0), "80002801 00", "icmp_code=0"},
		{ARPOp(2), "80002a02 0002", "arp_op=2"},
		{ARPSpa(netip.MustParseAddr("10.0.0.1")), "80002c04 0a000001", "arp_spa=10.0.0.1"},
		{ARPTpa(netip.MustParseAddr("10.0.0.2")), "80002e04 0a000002", "arp_tpa=10.0.0.2"},
		{ARPSha(mac), "80003006 aabbccddeeff", "arp_sha=aa:bb:cc:dd:ee:ff"},
		{ARPTha(mac[:3]), "80003206 aabbcc000000", "arp_tha=aa:bb:cc:00:00:00"}, // short addresses are zero-filled
		{NXReg(0, 5), "00010004 00000005", "reg0=0x5"},
		{NXReg(15, 1), "00011e04 00000001", "reg15=0x1"},
		{NXRegMasked(3, 0x1234, 0xff), "00010708 00000034 000000ff", "reg3=0x34/0xff"},
		{CtState(CtStateTrk|CtStateEst, CtStateTrk|CtStateEst|CtStateNew), "0001d308 00000022 00000023", "ct_state=-new+est+trk"},
		{CtZone(7), "0001d402 0007", "ct_zone=7"},
		{CtMark(5, 0xffffffff), "0001d604 00000005", "ct_mark=0x5"},
		{CtMark(0x15, 0xf0), "0001d708 00000010 000000f0", "ct_mark=0x10/0xf0"},
		{ConjID(7), "00014a04 00000007", "conj_id=7"},
		{TunnelID(9), "80004c08 0000000000000009", "tunnel_id=0x9"},
		{IPv6Src(netip.MustParseAddr("fe80::1")), "80003410 fe800000000000000000000000000001", "ipv6_src=fe80::1"},
		{IPv6DstPrefix(netip.MustParsePrefix("fd00::/8")), "80003720 fd000000000000000000000000000000 ff000000000000000000000000000000", "ipv6_dst=fd00::/8"},
		{Field{Class: ClassOpenFlowBasic, Field: IDIPv4Src.Field, Value: []byte{10, 0, 0, 0}, Mask: []byte{255, 0, 255, 0}}, "80001708 0a000000 ff00ff00", "nw_src=10.0.0.0/255.0.255.0"},
		{Field{Class: 0x7fff, Field: 3, Value: []byte{1, 2, 3}}, "7fff0603 010203", "oxm(0x7fff,3)=0x010203"},
		{Field{Class: ClassExperimenter, Field: 1, Experimenter: 0x1234, Value: []byte{9}}, "ffff0205 00001234 09", "oxm(0xffff:0x1234,1)=0x09"},
	}
	for _, c := range cases {
		t.Run(c.str, func(t *testing.T) {
			b, err := appendField(nil, c.f)
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, c.wire); !bytes.Equal(b, want) {
				t.Errorf("wire %x, want %x", b, want)
			}
			if s := c.f.String(); s != c.str {
				t.Errorf("String() = %q, want %q", s, c.str)
			}
			r := newReader("test", b)
			back := readField(r)
			if r.err != nil || r.remaining() != 0 || !back.Equal(c.f) {
				t.Errorf("decoded %v (%v), want %v", back, r.err, c.f)
			}
		})
	}
}

func TestFieldAccessors(t *testing.T) {
	f := IPv4SrcPrefix(netip.MustParsePrefix("192.168.7.9/16"))
	if p, ok := f.Prefix(); !ok || p != netip.MustParsePrefix("192.168.0.0/16") {
		t.Errorf("Prefix() = %v, %v", p, ok)
	}
	if a := f.Addr(); a != netip.MustParseAddr("192.168.0.0") {
		t.Errorf("Addr() = %v", a)
	}
	if v := TCPDst(443).Uint(); v != 443 {
		t.Errorf("Uint() = %d", v)
	}
	if m := TCPDst(443).MaskUint(); m != 0xffff {
		t.Errorf("MaskUint() of unmasked = %#x", m)
	}
	if m := NXRegMasked(1, 0, 0xf0).MaskUint(); m != 0xf0 {
		t.Errorf("MaskUint() = %#x", m)
	}
	mac := net.HardwareAddr{1, 2, 3, 4, 5, 6}
	if hw := EthSrc(mac).HW(); hw.String() != mac.String() {
		t.Errorf("HW() = %v", hw)
	}
	if hw := TCPDst(1).HW(); hw != nil {
		t.Errorf("HW() of a port = %v", hw)
	}
	if id := NXReg(4, 0).ID(); id != IDNXReg(4) || id.Name() != "reg4" {
		t.Errorf("ID() = %v", id)
	}
	m := Match{Fields: []Field{InPort(1), EthType(EthTypeIPv4), IPv4Dst(netip.MustParseAddr("10.0.0.1"))}}
	if f, ok := m.Get(ClassOpenFlowBasic, IDIPv4Dst.Field); !ok || f.Addr() != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("Get = %v, %v", f, ok)
	}
	if _, ok := m.Lookup(IDTCPDst); ok {
		t.Error("Lookup found an absent field")
	}
	if FieldID(FieldID{Class: ClassNXM0, Field: 2}).Canonical() != IDEthSrc || IDEthSrc.Canonical() != IDEthSrc {
		t.Error("Canonical")
	}
	if n, ok := FieldSize(IDARPSha); !ok || n != 6 {
		t.Errorf("FieldSize(arp_sha) = %d, %v", n, ok)
	}
}

func TestMatchEncoding(t *testing.T) {
	cases := []struct {
		name string
		m    Match
		wire string
	}{
		{"empty", Match{}, "0001 0004 00000000"},
		{"in_port", Match{Fields: []Field{InPort(3)}}, "0001 000c 80000004 00000003 00000000"},
		{"exactly 8", Match{Fields: []Field{{Class: 0x7000, Field: 1, Value: nil}}}, "0001 0008 70000200"},
		{"eth_dst", Match{Fields: []Field{EthDst(net.HardwareAddr{1, 2, 3, 4, 5, 6})}}, "0001 000e 80000606 010203040506 0000"},
		{"masked empty unknown", Match{Fields: []Field{{Class: 0x7000, Field: 1, Value: []byte{}, Mask: []byte{}}}}, "0001 0008 70000300"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := appendMatch(nil, c.m)
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, c.wire); !bytes.Equal(b, want) {
				t.Fatalf("wire %x, want %x", b, want)
			}
			if len(b)%8 != 0 {
				t.Errorf("match not padded to 8: %d bytes", len(b))
			}
			r := newReader("test", b)
			back := readMatch(r)
			if r.err != nil || r.remaining() != 0 || !back.Equal(c.m) {
				t.Errorf("decoded %v (%v), want %v", back, r.err, c.m)
			}
		})
	}
}

func TestMatchDecodeErrors(t *testing.T) {
	cases := map[string]string{
		"not oxm":                "0000 0004 00000000",
		"length below header":    "0001 0003 00000000",
		"length past end":        "0001 0010 80000004 00000003",
		"padding missing":        "0001 000c 80000004 00000003",
		"known field too short":  "0001 000b 80000003 000003 00",
		"known field too long":   "0001 000d 80000005 0000000300 000000",
		"odd masked length":      "0001 000b 80000103 000003 00",
		"field past match":       "0001 0008 80000004 00000003 00000000",
		"experimenter too short": "0001 000b ffff0003 000000 00",
		"truncated header":       "0001 0006 8000 0000",
	}
	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			r := newReader("test", unhex(t, w))
			m := readMatch(r)
			if r.err == nil {
				t.Fatalf("decoded %v", m)
			}
			if !errors.Is(r.err, ErrMalformed) && !errors.Is(r.err, ErrTruncated) {
				t.Errorf("error %v wraps neither ErrMalformed nor ErrTruncated", r.err)
			}
			t.Log(r.err)
		})
	}
}

func TestFieldEncodeErrors(t *testing.T) {
	cases := map[string]Field{
		"known field wrong size": {Class: ClassOpenFlowBasic, Field: 0, Value: []byte{1, 2}},
		"mask size differs":      {Class: 0x7000, Field: 1, Value: []byte{1, 2}, Mask: []byte{1}},
		"field number too big":   {Class: 0x7000, Field: 200, Value: []byte{1}},
		"payload too long":       {Class: 0x7000, Field: 1, Value: make([]byte, 200), Mask: make([]byte, 200)},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := appendField(nil, f); !errors.Is(err, ErrInvalid) {
				t.Errorf("appendField = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestActionEncoding(t *testing.T) {
	mac := net.HardwareAddr{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01}
	cases := []struct {
		a    Action
		wire string
		str  string
	}{
		{ActionOutput{Port: 3}, "0000 0010 00000003 0000 000000000000", "output:3"},
		{ActionOutput{Port: PortController, MaxLen: ControllerMaxLenNoBuffer}, "0000 0010 fffffffd ffff 000000000000", "CONTROLLER:65535"},
		{ActionOutput{Port: PortInPort}, "0000 0010 fffffff8 0000 000000000000", "IN_PORT"},
		{ActionGroup{GroupID: 7}, "0016 0008 00000007", "group:7"},
		{ActionSetQueue{QueueID: 2}, "0015 0008 00000002", "set_queue:2"},
		{SetField(EthSrc(mac)), "0019 0010 80000806 aabbccddee01 0000", "set_field:aa:bb:cc:dd:ee:01->eth_src"},
		{SetField(IPProto(17)), "0019 0010 80001401 11 00000000000000", "set_field:17->ip_proto"},
		{SetField(IPv4Src(netip.MustParseAddr("10.0.0.1"))), "0019 0010 80001604 0a000001 00000000", "set_field:10.0.0.1->ip_src"},
		{SetField(Metadata(1)), "0019 0010 80000408 0000000000000001", "set_field:0x1->metadata"},
		{SetField(IPv6Dst(netip.MustParseAddr("::1"))), "0019 0018 80003610 00000000000000000000000000000001", "set_field:::1->ipv6_dst"},
		{ActionSetNwTTL{TTL: 9}, "0017 0008 09000000", "mod_nw_ttl:9"},
		{ActionDecNwTTL{}, "0018 0008 00000000", "dec_ttl"},
		{ActionCopyTTLOut{}, "000b 0008 00000000", "copy_ttl_out"},
		{ActionCopyTTLIn{}, "000c 0008 00000000", "copy_ttl_in"},
		{ActionSetMplsTTL{TTL: 3}, "000f 0008 03000000", "set_mpls_ttl(3)"},
		{ActionDecMplsTTL{}, "0010 0008 00000000", "dec_mpls_ttl"},
		{ActionPushVlan{EtherType: 0x8100}, "0011 0008 8100 0000", "push_vlan:0x8100"},
		{ActionPopVlan{}, "0012 0008 00000000", "pop_vlan"},
		{ActionPushMpls{EtherType: 0x8847}, "0013 0008 8847 0000", "push_mpls:0x8847"},
		{ActionPopMpls{EtherType: 0x0800}, "0014 0008 0800 0000", "pop_mpls:0x0800"},
		{ActionPushPbb{EtherType: 0x88e7}, "001a 0008 88e7 0000", "push_pbb:0x88e7"},
		{ActionPopPbb{}, "001b 0008 00000000", "pop_pbb"},
		{ActionExperimenter{Experimenter: 0x65, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}, "ffff 0010 00000065 0102030405060708", "experimenter(0x65,0x0102030405060708)"},
		// Nicira: move with OXM headers, including 6-byte arp_sha.
		{MoveField(IDEthSrc, IDEthDst), "ffff 0018 00002320 0006 0030 0000 0000 80000806 80000606", "move:eth_src->eth_dst"},
		{MoveField(IDARPSha, IDARPTha), "ffff 0018 00002320 0006 0030 0000 0000 80003006 80003206", "move:arp_sha->arp_tha"},
		{NXRegMove{NBits: 16, SrcOfs: 0, DstOfs: 16, Src: IDNXReg(0), Dst: IDNXReg(1)}, "ffff 0018 00002320 0006 0010 0000 0010 00010004 00010204", "move:reg0[0..15]->reg1[16..31]"},
		{NXRegMove{NBits: 1, SrcOfs: 3, DstOfs: 0, Src: IDNXReg(2), Dst: IDCtMark}, "ffff 0018 00002320 0006 0001 0003 0000 00010404 0001d604", "move:reg2[3]->ct_mark[0]"},
		{MoveField(FieldID{Class: ClassNXM0, Field: 2}, FieldID{Class: ClassNXM0, Field: 1}), "ffff 0018 00002320 0006 0030 0000 0000 00000406 00000206", "move:eth_src->eth_dst"},
		{Resubmit(20), "ffff 0010 00002320 000e fff8 14 000000", "resubmit(,20)"},
		{NXResubmitTable{InPort: 3, Table: 0xff}, "ffff 0010 00002320 000e 0003 ff 000000", "resubmit:3"},
		{NXConjunction{Clause: 1, NClauses: 3, ID: 9}, "ffff 0010 00002320 0022 01 03 00000009", "conjunction(9,2/3)"},
		{NXConntrack{Flags: NXCtCommit, ZoneImm: 5, RecircTable: NXCtRecircNone}, "ffff 0018 00002320 0023 0001 00000000 0005 ff 000000 0000", "ct(commit,zone=5)"},
		{NXConntrack{ZoneSrc: IDNXReg(6), ZoneOfsNbits: 15, RecircTable: 30, Alg: 21}, "ffff 0018 00002320 0023 0000 00010c04 000f 1e 000000 0015", "ct(table=30,zone=reg6[0..15],alg=21)"},
		{NXNat{Flags: NXNatDst, IPv4Min: netip.MustParseAddr("10.0.0.1"), ProtoMin: 80}, "ffff 0018 00002320 0024 0000 0002 0011 0a000001 0050 0000", "nat(dst=10.0.0.1:80)"},
		{NXNat{}, "ffff 0010 00002320 0024 0000 0000 0000", "nat"},
		{NXNat{Flags: NXNatSrc | NXNatPersistent | NXNatProtoRandom, IPv6Min: netip.MustParseAddr("fd00::1"), IPv6Max: netip.MustParseAddr("fd00::9")},
			"ffff 0030 00002320 0024 0000 0015 000c fd000000000000000000000000000001 fd000000000000000000000000000009", "nat(src=[fd00::1]-[fd00::9],persistent,random)"},
	}
	for _, c := range cases {
		t.Run(c.str, func(t *testing.T) {
			b, err := appendActions(nil, []Action{c.a})
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, c.wire); !bytes.Equal(b, want) {
				t.Errorf("wire %x\nwant %x", b, want)
			}
			if s := c.a.String(); s != c.str {
				t.Errorf("String() = %q, want %q", s, c.str)
			}
			back, err := readActions("test", b)
			if err != nil || len(back) != 1 {
				t.Fatalf("decode: %v, %v", back, err)
			}
			want := c.a
			if n, ok := want.(NXNat); ok {
				n.RangePresent = n.present()
				want = n
			}
			if !reflect.DeepEqual(back[0], want) {
				t.Errorf("decoded %#v\nwant %#v", back[0], want)
			}
		})
	}
}

func TestActionDecodeEdgeCases(t *testing.T) {
	// Kept raw: re-encodes byte for byte, String says what it is.
	raw := map[string]string{
		"unknown experimenter":   "ffff 0010 00abcdef 0102030405060708",
		"unknown nicira subtype": "ffff 0010 00002320 0063 000000000000",
		"move of unknown field":  "ffff 0018 00002320 0006 0008 0000 0000 7fff0001 00010004",
		"move with wrong length": "ffff 0018 00002320 0006 0008 0000 0000 80000005 00010004",
		"resubmit nonzero pad":   "ffff 0010 00002320 000e fff8 14 000001",
	}
	for name, w := range raw {
		t.Run(name, func(t *testing.T) {
			b := unhex(t, w)
			acts, err := readActions("test", b)
			if err != nil || len(acts) != 1 {
				t.Fatalf("decode: %v, %v", acts, err)
			}
			if _, ok := acts[0].(ActionExperimenter); !ok {
				t.Errorf("decoded as %T, want raw", acts[0])
			}
			again, err := appendActions(nil, acts)
			if err != nil || !bytes.Equal(again, b) {
				t.Errorf("re-encoded %x, %v", again, err)
			}
		})
	}
	bad := map[string]string{
		"length not multiple of 8":  "0000 000c 00000003 00000000",
		"length below 8":            "0016 0004",
		"length past end":           "0016 0010 00000007",
		"unknown standard type":     "0063 0008 00000000",
		"output too long":           "0000 0018 00000003 0000 000000000000 0000000000000000",
		"set field with extra room": "0019 0018 80001401 11 00000000000000 0000000000000000",
		"set field bad oxm":         "0019 0010 80001402 1111 000000000000",
		"truncated header":          "0000 00",
	}
	for name, w := range bad {
		t.Run(name, func(t *testing.T) {
			acts, err := readActions("test", unhex(t, w))
			if err == nil {
				t.Fatalf("decoded %v", acts)
			}
			if name == "unknown standard type" && !errors.Is(err, ErrUnsupported) {
				t.Errorf("error %v, want ErrUnsupported", err)
			}
			t.Log(err)
		})
	}
}

func TestActionEncodeErrors(t *testing.T) {
	cases := map[string]Action{
		"move unknown field":      NXRegMove{NBits: 8, Src: FieldID{Class: 0x7000, Field: 1}, Dst: IDNXReg(0)},
		"move past field end":     NXRegMove{NBits: 16, SrcOfs: 20, Src: IDNXReg(0), Dst: IDNXReg(1)},
		"move zero bits":          NXRegMove{Src: IDNXReg(0), Dst: IDNXReg(1)},
		"experimenter misaligned": ActionExperimenter{Experimenter: 1, Data: []byte{1}},
		"set field wrong size":    SetField(Field{Class: ClassOpenFlowBasic, Field: IDTCPDst.Field, Value: []byte{1}}),
		"nat v4 bound not v4":     NXNat{Flags: NXNatSrc, IPv4Min: netip.MustParseAddr("fd00::1")},
		"ct with bad nested":      NXConntrack{Actions: []Action{nil}},
	}
	for name, a := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := appendActions(nil, []Action{a}); !errors.Is(err, ErrInvalid) {
				t.Errorf("appendActions = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := appendActions(nil, []Action{nil}); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil action: %v", err)
	}
}

func TestInstructionEncoding(t *testing.T) {
	cases := []struct {
		in   Instruction
		wire string
		str  string
	}{
		{InstructionGotoTable{TableID: 20}, "0001 0008 14000000", "goto_table:20"},
		{InstructionWriteMetadata{Metadata: 1, Mask: 0xff}, "0002 0018 00000000 0000000000000001 00000000000000ff", "write_metadata:0x1/0xff"},
		{InstructionWriteMetadata{Metadata: 1, Mask: ^uint64(0)}, "0002 0018 00000000 0000000000000001 ffffffffffffffff", "write_metadata:0x1"},
		{InstructionWriteActions{Actions: []Action{ActionOutput{Port: 1}}}, "0003 0018 00000000 0000 0010 00000001 0000 000000000000", "write_actions(output:1)"},
		{InstructionApplyActions{Actions: []Action{ActionGroup{GroupID: 1}}}, "0004 0010 00000000 0016 0008 00000001", "group:1"},
		{InstructionApplyActions{}, "0004 0008 00000000", "drop"},
		{InstructionClearActions{}, "0005 0008 00000000", "clear_actions"},
		{InstructionMeter{MeterID: 1}, "0006 0008 00000001", "meter:1"},
		{InstructionExperimenter{Experimenter: 0x10, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}, "ffff 0010 00000010 0102030405060708", "experimenter(0x10,0x0102030405060708)"},
	}
	for _, c := range cases {
		t.Run(c.str, func(t *testing.T) {
			b, err := appendInstructions(nil, []Instruction{c.in})
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, c.wire); !bytes.Equal(b, want) {
				t.Errorf("wire %x\nwant %x", b, want)
			}
			if s := c.in.String(); s != c.str {
				t.Errorf("String() = %q, want %q", s, c.str)
			}
			back, err := readInstructions("test", b)
			if err != nil || len(back) != 1 || !reflect.DeepEqual(back[0], c.in) {
				t.Errorf("decoded %#v, %v", back, err)
			}
		})
	}
	for name, w := range map[string]string{
		"unknown type":    "0009 0008 00000000",
		"goto too long":   "0001 0010 14000000 0000000000000000",
		"metadata short":  "0002 0010 00000000 0000000000000001",
		"length past end": "0006 0010 00000001",
		"misaligned":      "0006 000c 00000001 00000000",
		"bad nested":      "0004 0010 00000000 0000 0008 00000001",
	} {
		t.Run(name, func(t *testing.T) {
			if insts, err := readInstructions("test", unhex(t, w)); err == nil {
				t.Errorf("decoded %v", insts)
			}
		})
	}
}

func TestMarshalErrors(t *testing.T) {
	huge := &PacketOut{BufferID: NoBuffer, Data: make([]byte, 70000)}
	if _, err := Marshal(huge, 1); !errors.Is(err, ErrTooLong) {
		t.Errorf("oversize message: %v", err)
	}
	if _, err := Marshal(&MultipartRequest{MPType: MPPortDesc, Body: NewFlowStatsRequest()}, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("multipart type mismatch: %v", err)
	}
	if _, err := Marshal(nil, 1); !errors.Is(err, ErrUnsupported) {
		t.Errorf("nil message: %v", err)
	}
	bad := NewFlowMod(FlowAdd, 0, 0)
	bad.Match.Fields = []Field{{Class: ClassOpenFlowBasic, Field: 0, Value: []byte{1}}}
	if _, err := Marshal(bad, 1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "in_port") {
		t.Errorf("bad field: %v", err)
	}
	if _, err := Marshal(&PortStatus{Port: Port{Name: strings.Repeat("x", 17)}}, 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("long port name: %v", err)
	}
	// Pointers and values encode the same.
	a, _ := Marshal(nviFlow(), 5)
	b, _ := Marshal(*nviFlow(), 5)
	if !bytes.Equal(a, b) {
		t.Error("pointer and value encodings differ")
	}
}

func TestUnmarshalErrors(t *testing.T) {
	cases := map[string]struct {
		hex  string
		want error
	}{
		"empty":             {"", ErrTruncated},
		"short header":      {"0400 0008 0000", ErrTruncated},
		"length too small":  {"0414 0007 00000001", ErrMalformed},
		"length too large":  {"0414 0010 00000001", ErrTruncated},
		"trailing bytes":    {"0414 0008 00000001 00", ErrMalformed},
		"wrong version":     {"0114 0008 00000001", ErrMalformed},
		"unknown type":      {"041e 0008 00000001", ErrUnsupported},
		"unknown multipart": {"0413 0010 00000001 0063 0000 00000000", ErrUnsupported},
		"barrier with body": {"0414 0009 00000001 00", ErrMalformed},
		"features short":    {"0406 000c 00000001 00000000", ErrTruncated},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			m, _, err := Unmarshal(unhex(t, c.hex))
			if !errors.Is(err, c.want) {
				t.Errorf("Unmarshal = %v, %v; want %v", m, err, c.want)
			}
		})
	}
}

func TestErrorMsgNames(t *testing.T) {
	cases := []struct {
		m    ErrorMsg
		name string
	}{
		{ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6}, "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD"},
		{ErrorMsg{ErrType: ErrTypeFlowModFailed, Code: FlowModFailedOverlap}, "OFPET_FLOW_MOD_FAILED/OFPFMFC_OVERLAP"},
		{ErrorMsg{ErrType: ErrTypeMeterModFailed, Code: MeterModMeterExists}, "OFPET_METER_MOD_FAILED/OFPMMFC_METER_EXISTS"},
		{ErrorMsg{ErrType: ErrTypeBadAction, Code: 99}, "OFPET_BAD_ACTION/OFPBAC_99"},
		{ErrorMsg{ErrType: 77, Code: 1}, "OFPET_77/1"},
		{ErrorMsg{ErrType: ErrTypeExperimenter, Code: 5, Experimenter: ExperimenterNicira}, "OFPET_EXPERIMENTER/experimenter=0x2320,exp_type=5"},
	}
	for _, c := range cases {
		if got := c.m.Name(); got != c.name {
			t.Errorf("Name() = %q, want %q", got, c.name)
		}
		var err error = &c.m
		if !strings.Contains(err.Error(), c.name) {
			t.Errorf("Error() = %q", err.Error())
		}
	}
}

func TestFlowModString(t *testing.T) {
	fm := NewFlowMod(FlowAdd, 20, 100)
	fm.Cookie = 0xab
	fm.Match = Match{Fields: []Field{InPort(3), EthType(EthTypeIPv4), IPv4SrcPrefix(netip.MustParsePrefix("10.1.0.0/16"))}}
	fm.Instructions = []Instruction{InstructionApplyActions{Actions: []Action{SetField(IPv4Src(netip.MustParseAddr("192.0.2.1"))), ActionOutput{Port: 2}}}, InstructionGotoTable{TableID: 30}}
	if got, want := fm.String(), "table=20,priority=100,cookie=0xab,in_port=3,ip,nw_src=10.1.0.0/16 actions=set_field:192.0.2.1->ip_src,output:2,goto_table:30"; got != want {
		t.Errorf("String() =\n%s\nwant\n%s", got, want)
	}
	del := NewFlowMod(FlowDeleteStrict, 20, 100)
	del.Match = Match{Fields: []Field{EthType(EthTypeARP)}}
	if got, want := del.String(), "DEL_STRICT table=20,priority=100,arp"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	tcp6 := Match{Fields: []Field{EthType(EthTypeIPv6), IPProto(6), TCPDst(22)}}
	if got := tcp6.String(); got != "tcp6,tcp_dst=22" {
		t.Errorf("ipv6 shorthand: %q", got)
	}
}
