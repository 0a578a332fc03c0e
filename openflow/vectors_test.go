package openflow

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// vectorDir holds the Ryu vectors (see its README.md for provenance).
const vectorDir = "testdata/openflow13"

// unimplementedVectors lists the vectors whose message type the codec does
// not implement; each must fail to decode with ErrUnsupported. It is empty:
// every OpenFlow 1.3 message in the set is implemented. Keep it explicit so
// that dropping support is a visible change rather than a silent skip.
var unimplementedVectors = map[string]string{}

// rawBodyVectors decode, but their body is an extension the codec keeps as
// raw bytes; only the envelope is compared with the JSON (and re-encoding
// must still be byte-exact).
var rawBodyVectors = map[string]string{
	"4-63-onf_flow_monitor_request.packet": "ONF flow monitor (EXT-187) request: an ExperimenterMultipart with raw data",
}

// ignoredKeys are lengths Ryu reports; byte-exact re-encoding checks them.
var ignoredKeys = map[string]bool{"len": true, "length": true, "actions_len": true, "match_len": true}

func vectorFiles(t testing.TB) []string {
	files, err := filepath.Glob(filepath.Join(vectorDir, "*.packet"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vectors in %s: %v", vectorDir, err)
	}
	sort.Strings(files)
	return files
}

func loadJSON(t *testing.T, path string) obj {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := json.NewDecoder(f)
	d.UseNumber()
	var v obj
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// normalize passes v through JSON so numbers compare as json.Number.
func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out any
	err = d.Decode(&out)
	return out, err
}

// diff compares Ryu's decoding (want) with ours (got) and lists every
// difference with its path.
func diff(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want object, got %v", path, got)}
		}
		if len(w) == 1 && len(g) == 1 {
			wk, gk := onlyKey(w), onlyKey(g)
			if special := diffSpecial(path, wk, gk, w[wk], g[gk]); special != nil {
				return special[1:]
			}
		}
		var out []string
		for k, wv := range w {
			if ignoredKeys[k] {
				continue
			}
			gv, ok := g[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s: missing (want %v)", path, k, wv))
				continue
			}
			out = append(out, diff(path+"."+k, wv, gv)...)
		}
		for k := range g {
			if _, ok := w[k]; !ok && !ignoredKeys[k] {
				out = append(out, fmt.Sprintf("%s.%s: unexpected key (got %v)", path, k, g[k]))
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: want %d-element list %v, got %v", path, len(w), w, got)}
		}
		var out []string
		for i := range w {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	}
	if fmt.Sprint(want) != fmt.Sprint(got) {
		return []string{fmt.Sprintf("%s: want %v, got %v", path, want, got)}
	}
	return nil
}

func onlyKey(m map[string]any) string {
	for k := range m {
		return k
	}
	return ""
}

// diffSpecial handles the places where Ryu decodes further than we do. It
// returns nil when not special, otherwise a slice whose first element is a
// marker and the rest the differences.
func diffSpecial(path, wk, gk string, wv, gv any) []string {
	out := []string{"special"}
	field := func(m any, k string) any {
		if mm, ok := m.(map[string]any); ok {
			return mm[k]
		}
		return nil
	}
	switch {
	case strings.HasPrefix(wk, "NXAction") && wk != "NXActionConjunction" && gk == "NXRaw":
		// Nicira actions we keep raw: experimenter and subtype must agree,
		// and for Ryu's own "unknown" the data too.
		keys := []string{"experimenter", "subtype"}
		if wk == "NXActionUnknown" {
			keys = append(keys, "data")
		}
		for _, k := range keys {
			out = append(out, diff(path+"."+wk+"."+k, field(wv, k), field(gv, k))...)
		}
		return out
	case wk == "ONFFlowMonitorStatsRequest" && gk == "OFPExperimenterStatsRequest":
		for _, k := range []string{"flags", "type"} {
			out = append(out, diff(path+"."+k, field(wv, k), field(gv, k))...)
		}
		out = append(out, diff(path+".experimenter", json.Number(fmt.Sprint(ExperimenterONF)), field(gv, "experimenter"))...)
		return out
	case wk == "OFPPacketOut" && gk == "OFPPacketOut":
		if _, ok := field(wv, "data").(map[string]any); !ok {
			return nil
		}
		// Ryu decoded the frame; check the Ethernet header we carry.
		w, g := wv.(map[string]any), gv.(map[string]any)
		for k := range w {
			if k != "data" && !ignoredKeys[k] {
				out = append(out, diff(path+"."+k, w[k], g[k])...)
			}
		}
		data, _ := base64.StdEncoding.DecodeString(fmt.Sprint(g["data"]))
		protos, _ := field(field(w["data"], "Packet"), "protocols").([]any)
		if len(protos) == 0 || len(data) < 14 {
			return append(out, path+".data: no ethernet header to compare")
		}
		eth := field(protos[0], "ethernet")
		out = append(out, diff(path+".data.dst", field(eth, "dst"), net.HardwareAddr(data[0:6]).String())...)
		out = append(out, diff(path+".data.src", field(eth, "src"), net.HardwareAddr(data[6:12]).String())...)
		out = append(out, diff(path+".data.ethertype", field(eth, "ethertype"), json.Number(fmt.Sprint(binary.BigEndian.Uint16(data[12:]))))...)
		return out
	}
	return nil
}

// TestVectors decodes every Ryu vector, compares the decoded values with
// Ryu's JSON decoding, and requires re-encoding to give the same bytes.
func TestVectors(t *testing.T) {
	seen := map[MsgType]bool{}
	for _, path := range vectorFiles(t) {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			m, xid, err := Unmarshal(raw)
			if why, ok := unimplementedVectors[name]; ok {
				if err == nil || !errors.Is(err, ErrUnsupported) {
					t.Fatalf("expected ErrUnsupported (%s), got %v, %v", why, m, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			seen[m.Type()] = true
			out, err := Marshal(m, xid)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			if !bytes.Equal(out, raw) {
				t.Fatalf("re-encode differs:\n got %x\nwant %x", out, raw)
			}
			// The String forms must not panic and must say something.
			if s, ok := m.(fmt.Stringer); !ok || s.String() == "" {
				t.Errorf("%T has no useful String", m)
			}

			want := loadJSON(t, path+".json")
			view, err := ryuView(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := normalize(view)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := rawBodyVectors[name]; ok {
				wk, gk := onlyKey(want), onlyKey(got.(map[string]any))
				if d := diffSpecial("", wk, gk, want[wk], got.(map[string]any)[gk]); len(d) != 1 {
					t.Errorf("envelope differs from Ryu's decoding:\n%s", strings.Join(d[1:], "\n"))
				}
				return
			}
			if d := diff("", any(want), got); len(d) > 0 {
				t.Errorf("decoded values differ from Ryu's:\n%s", strings.Join(d, "\n"))
			}
		})
	}
	for name := range rawBodyVectors {
		if _, err := os.Stat(filepath.Join(vectorDir, name)); err != nil {
			t.Errorf("rawBodyVectors lists %s, which does not exist", name)
		}
	}
	for typ := TypeHello; typ <= TypeMeterMod; typ++ {
		if !seen[typ] && decoders[typ] != nil {
			t.Logf("no vector covers %s", typ)
		}
	}
}

// TestVectorsTruncated cuts every vector short in every way: as a plain
// prefix (the header then claims more than there is) and with the header
// length rewritten to the prefix length (the body then ends early inside
// some structure). Neither may panic; the plain prefix must always fail.
func TestVectorsTruncated(t *testing.T) {
	for _, path := range vectorFiles(t) {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(path)
		for n := 0; n < len(raw); n++ {
			if _, _, err := Unmarshal(raw[:n]); err == nil {
				t.Errorf("%s cut to %d bytes: decoded without error", name, n)
			} else if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) {
				t.Errorf("%s cut to %d bytes: error %v is neither truncated nor malformed", name, n, err)
			}
			if n < HeaderLen {
				continue
			}
			b := append([]byte(nil), raw[:n]...)
			binary.BigEndian.PutUint16(b[2:], uint16(n))
			if m, xid, err := Unmarshal(b); err == nil {
				// Some cuts land on a record boundary and are valid
				// messages; those must still round-trip.
				out, err := Marshal(m, xid)
				if err != nil || !bytes.Equal(out, b) {
					t.Errorf("%s cut to %d bytes decodes but does not re-encode: %v", name, n, err)
				}
			}
		}
		if len(raw) > 64 {
			if _, _, err := Unmarshal(raw[:64]); err == nil {
				t.Errorf("%s truncated to 64 bytes decoded", name)
			}
		}
	}
}

// TestReadMessage frames the vectors from a stream.
func TestReadMessage(t *testing.T) {
	var stream bytes.Buffer
	var want [][]byte
	for _, path := range vectorFiles(t) {
		raw, _ := os.ReadFile(path)
		stream.Write(raw)
		want = append(want, raw)
	}
	for i, w := range want {
		got, err := ReadMessage(&stream)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("message %d differs", i)
		}
	}
	for _, bad := range [][]byte{
		{4, 0, 0, 7, 0, 0, 0, 0},       // length shorter than header
		{0, 0, 0, 8, 0, 0, 0, 0},       // version 0
		{0x47, 0x45, 0x54, 0x20, 1, 2}, // "GET " — not OpenFlow
		{4, 0, 0, 16, 0, 0, 0, 0, 1},   // body cut short
		{4, 0, 0},                      // header cut short
	} {
		if _, err := ReadMessage(bytes.NewReader(bad)); err == nil {
			t.Errorf("ReadMessage(%x) succeeded", bad)
		}
	}
}
