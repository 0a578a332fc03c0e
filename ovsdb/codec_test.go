package ovsdb

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %#v: %v", v, err)
	}
	return string(b)
}

func TestValueEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   any
		want string
	}{
		{"string", "br-nvi", `"br-nvi"`},
		{"int", 7, `7`},
		{"int64 beyond float precision", int64(1) << 62, `4611686018427387904`},
		{"uint16", uint16(65279), `65279`},
		{"real", 1.5, `1.5`},
		{"bool", true, `true`},
		{"uuid", UUID("36bbea4d-ef1b-4ff8-95a1-bb11f8b7f1d2"), `["uuid","36bbea4d-ef1b-4ff8-95a1-bb11f8b7f1d2"]`},
		{"named-uuid", NamedUUID("row1"), `["named-uuid","row1"]`},
		{"empty set", Set{}, `["set",[]]`},
		{"set of one keeps the full form", Set{"OpenFlow13"}, `["set",["OpenFlow13"]]`},
		{"[]string", []string{"OpenFlow10", "OpenFlow13"}, `["set",["OpenFlow10","OpenFlow13"]]`},
		{"[]int", []int{1, 2}, `["set",[1,2]]`},
		{"[]UUID", []UUID{"a"}, `["set",[["uuid","a"]]]`},
		{"map sorted", map[string]string{"z": "1", "a": "2"}, `["map",[["a","2"],["z","1"]]]`},
		{"empty map", map[string]string{}, `["map",[]]`},
		{"map int values", map[string]int64{"rx": 3}, `["map",[["rx",3]]]`},
		{"Map int keys", Map{int64(2): UUID("u"), int64(1): UUID("v")}, `["map",[[1,["uuid","v"]],[2,["uuid","u"]]]]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := encodeValue(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := mustJSON(t, v); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestValueEncodingRejectsNonAtoms(t *testing.T) {
	for _, in := range []any{nil, struct{}{}, []float32{1}, Set{Set{}}, Map{"k": Set{}}, uint64(1 << 63), func() {}} {
		if _, err := json.Marshal(Row{"c": in}); err == nil {
			t.Errorf("%#v: encoded without error", in)
		}
	}
	if _, err := json.Marshal(Row{"c": 0.0 / zero()}); err == nil {
		t.Error("NaN encoded without error")
	}
}

func zero() float64 { return 0 }

func TestValueDecoding(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want any
	}{
		{`"x"`, "x"},
		{`42`, int64(42)},
		{`-9223372036854775808`, int64(-9223372036854775808)},
		{`1.25`, 1.25},
		{`1e3`, 1000.0},
		{`false`, false},
		{`["uuid","u1"]`, UUID("u1")},
		{`["named-uuid","n1"]`, NamedUUID("n1")},
		{`["set",[]]`, Set{}},
		{`["set",["a",["uuid","u"]]]`, Set{"a", UUID("u")}},
		{`["map",[["k","v"],["k2","v2"]]]`, Map{"k": "v", "k2": "v2"}},
		{`["map",[[1,["uuid","u"]]]]`, Map{int64(1): UUID("u")}},
	} {
		got, err := decodeValue(json.RawMessage(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{
		`null`, `{}`, `[]`, `["set"]`, `["set",{}]`, `["set",[["set",[]]]]`, `["map",[["k"]]]`,
		`["map",[[null,"v"]]]`, `["map",{}]`, `["uuid",1]`, `["bogus","x"]`, `[1,2]`, `"a" "b"`, `[`, ``,
		`["set",[null]]`, `["map",[["k",["map",[]]]]]`, `99999999999999999999999e999999`,
	} {
		if v, err := decodeValue(json.RawMessage(bad)); err == nil {
			t.Errorf("%q decoded to %#v without error", bad, v)
		}
	}
}

func TestRowAccessorsHideShortcuts(t *testing.T) {
	var r Row
	err := json.Unmarshal([]byte(`{
		"name": "br-nvi",
		"fail_mode": "secure",
		"datapath_id": ["set", []],
		"protocols": "OpenFlow13",
		"flood": ["set", ["b", "a"]],
		"ofport": 7,
		"empty_int": ["set", []],
		"is_connected": true,
		"_uuid": ["uuid", "u0"],
		"ports": ["uuid", "u1"],
		"controller": ["set", [["uuid", "c1"], ["uuid", "c2"]]],
		"external_ids": ["map", [["iface-id", "abc"], ["n", 1]]]
	}`), &r)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %#v, want %#v", name, got, want)
		}
	}
	check("String", r.String("name"), "br-nvi")
	check("String optional set", r.String("fail_mode"), "secure")
	check("String empty optional", r.String("datapath_id"), "")
	check("String missing", r.String("nope"), "")
	check("Strings shortcut", r.Strings("protocols"), []string{"OpenFlow13"})
	check("Strings sorted", r.Strings("flood"), []string{"a", "b"})
	v, ok := r.Int("ofport")
	check("Int", []any{v, ok}, []any{int64(7), true})
	v, ok = r.Int("empty_int")
	check("Int empty", []any{v, ok}, []any{int64(0), false})
	b, ok := r.Bool("is_connected")
	check("Bool", []any{b, ok}, []any{true, true})
	check("UUID", r.UUID("_uuid"), UUID("u0"))
	check("UUIDs shortcut", r.UUIDs("ports"), []UUID{"u1"})
	check("UUIDs", r.UUIDs("controller"), []UUID{"c1", "c2"})
	check("StringMap skips non-strings", r.StringMap("external_ids"), map[string]string{"iface-id": "abc"})
	check("StringMap missing", r.StringMap("nope"), map[string]string{})
}

func TestOperationJSON(t *testing.T) {
	where := []Condition{Eq("name", "br0")}
	for _, tc := range []struct {
		op   Operation
		want string
	}{
		{Insert("Port", Row{"name": "p", "interfaces": NamedUUID("i")}, "p1"),
			`{"op":"insert","row":{"interfaces":["named-uuid","i"],"name":"p"},"table":"Port","uuid-name":"p1"}`},
		{Insert("Open_vSwitch", nil, ""), `{"op":"insert","row":{},"table":"Open_vSwitch"}`},
		{Select("Bridge", nil), `{"op":"select","table":"Bridge","where":[]}`},
		{Select("Bridge", where, "_uuid"), `{"columns":["_uuid"],"op":"select","table":"Bridge","where":[["name","==","br0"]]}`},
		{Update("Bridge", where, Row{"fail_mode": Set{"secure"}}),
			`{"op":"update","row":{"fail_mode":["set",["secure"]]},"table":"Bridge","where":[["name","==","br0"]]}`},
		{MutateOp("Bridge", where, Mutation{"ports", "insert", Set{UUID("u")}}),
			`{"mutations":[["ports","insert",["set",[["uuid","u"]]]]],"op":"mutate","table":"Bridge","where":[["name","==","br0"]]}`},
		{Delete("Bridge", where), `{"op":"delete","table":"Bridge","where":[["name","==","br0"]]}`},
		{Wait("Open_vSwitch", nil, nil, "", nil, 0),
			`{"columns":[],"op":"wait","rows":[],"table":"Open_vSwitch","timeout":0,"until":"==","where":[]}`},
		{Wait("Bridge", where, []string{"ports"}, "!=", []Row{{"ports": Set{}}}, 100),
			`{"columns":["ports"],"op":"wait","rows":[{"ports":["set",[]]}],"table":"Bridge","timeout":100,"until":"!=","where":[["name","==","br0"]]}`},
		{Comment("hi"), `{"comment":"hi","op":"comment"}`},
		{Select("Bridge", []Condition{Includes("ports", Set{UUID("u")})}, "name"),
			`{"columns":["name"],"op":"select","table":"Bridge","where":[["ports","includes",["set",[["uuid","u"]]]]]}`},
	} {
		if got := mustJSON(t, tc.op); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.op.describe(), got, tc.want)
		}
	}
	for _, bad := range []Operation{
		{Op: "frobnicate"},
		Insert("Port", Row{}, "1bad"),
		Insert("Port", Row{"x": struct{}{}}, ""),
		Select("Port", []Condition{Eq("x", nil)}),
		MutateOp("Port", nil, Mutation{"x", "+=", []float32{1}}),
	} {
		if _, err := json.Marshal(bad); err == nil {
			t.Errorf("%+v marshalled without error", bad)
		}
	}
}

func TestParseTransactResult(t *testing.T) {
	ops := []Operation{
		Insert("Interface", Row{"name": "a"}, "i"),
		Select("Bridge", nil),
		MutateOp("Bridge", nil),
	}
	res, err := parseTransactResult(json.RawMessage(
		`[{"uuid":["uuid","u1"]},{"rows":[{"name":"br0"}]},{"count":2}]`), ops)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].UUID != "u1" || res[1].Rows[0].String("name") != "br0" || res[2].Count != 2 {
		t.Errorf("results: %+v", res)
	}

	_, err = parseTransactResult(json.RawMessage(
		`[{"uuid":["uuid","u1"]},{"error":"constraint violation","details":"duplicate name"},null]`), ops)
	var oe *OpError
	if !asOpError(err, &oe) || oe.Index != 1 || oe.Op != "select Bridge" || oe.Err != "constraint violation" || oe.Details != "duplicate name" {
		t.Fatalf("per-op error: %#v", err)
	}
	if want := "operation 1 (select Bridge) failed: constraint violation: duplicate name"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}

	_, err = parseTransactResult(json.RawMessage(
		`[{},{"rows":[]},{"count":1},{"error":"referential integrity violation","details":{"x":1}}]`), ops)
	if !asOpError(err, &oe) || oe.Index != 3 || oe.Op != "commit" || oe.Details != `{"x":1}` {
		t.Fatalf("commit error: %#v", err)
	}
	if !IsOpError(err, "referential integrity violation") {
		t.Error("IsOpError false")
	}

	for _, bad := range []string{`{}`, `[]`, `[{},{},{},{},{}]`, `[1,2,3]`, `[{"uuid":"x"},{},{}]`, `[{},{},{},{}]`, `[{"count":"x"},{},{}]`} {
		if _, err := parseTransactResult(json.RawMessage(bad), ops); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func asOpError(err error, target **OpError) bool { return errors.As(err, target) }

func TestIfaceTrackerCompletesModify(t *testing.T) {
	tr := &ifaceTracker{rows: map[UUID]Row{}}
	evs := tr.apply(TableUpdates{"Interface": {
		"u1": {New: Row{"name": "tap1", "ofport": Set{}, "external_ids": Map{}}},
		"u2": {New: Row{"name": "tap2", "ofport": int64(2), "external_ids": Map{}}},
	}})
	if len(evs) != 2 || evs[0].New.Name != "tap1" || evs[1].New.Name != "tap2" || evs[0].Kind != Added {
		t.Fatalf("initial: %+v", evs)
	}
	// A modify carries the old values of changed columns only.
	evs = tr.apply(TableUpdates{"Interface": {
		"u1": {Old: Row{"external_ids": Map{}, "ofport": Set{}},
			New: Row{"name": "tap1", "ofport": int64(5), "external_ids": Map{"iface-id": "abc"}}},
	}})
	if len(evs) != 1 || evs[0].Kind != Modified {
		t.Fatalf("modify: %+v", evs)
	}
	ev := evs[0]
	if ev.Old.Name != "tap1" || ev.Old.OFPort != 0 || ev.Old.ExternalIDs["iface-id"] != "" ||
		ev.New.OFPort != 5 || ev.New.ExternalIDs["iface-id"] != "abc" || ev.New.UUID != "u1" {
		t.Errorf("modify event: %+v", ev)
	}
	// Unknown row modified (should not happen, but must not lose the name).
	evs = tr.apply(TableUpdates{"Interface": {"u9": {Old: Row{"ofport": int64(1)}, New: Row{"name": "x", "ofport": int64(2)}}}})
	if evs[0].Old.Name != "x" || evs[0].Old.OFPort != 1 || evs[0].New.OFPort != 2 {
		t.Errorf("unknown modify: %+v", evs[0])
	}
	// Same name deleted and re-created in one update: removal first.
	evs = tr.apply(TableUpdates{"Interface": {
		"u3": {New: Row{"name": "tap2"}},
		"u2": {Old: Row{"name": "tap2"}},
	}})
	if len(evs) != 2 || evs[0].Kind != Removed || evs[0].Old.OFPort != 2 || evs[1].Kind != Added || evs[1].New.UUID != "u3" {
		t.Errorf("replace: %+v", evs)
	}
	if !strings.Contains(Synced.String()+Added.String()+EventKind(42).String(), "synced") {
		t.Error("EventKind strings")
	}
}
