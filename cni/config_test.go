package cni

import (
	"encoding/json"
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

const goodConf = `{"cniVersion":"1.1.0","name":"web","type":"nvi-cni","tenant":"acme","network":"web","socket":"/run/nvi/s1/nvid.sock","bridgeNetns":"nvi-s1"}`

// conf returns goodConf with fields replaced (nil deletes one).
func conf(t *testing.T, set map[string]any) []byte {
	t.Helper()
	return patchJSON(t, []byte(goodConf), set)
}

// patchJSON returns the JSON object base with fields replaced (nil deletes
// one).
func patchJSON(t *testing.T, base []byte, set map[string]any) []byte {
	t.Helper()
	m := map[string]any{}
	if err := json.Unmarshal(base, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfig(t *testing.T) {
	c, e := ParseConfig([]byte(goodConf), "")
	if e != nil {
		t.Fatal(e)
	}
	want := Config{Version: "1.1.0", Name: "web", Tenant: "acme", Network: "web", Socket: "/run/nvi/s1/nvid.sock", BridgeNetns: "nvi-s1"}
	if c.Version != want.Version || c.Name != want.Name || c.Tenant != want.Tenant || c.Network != want.Network ||
		c.Socket != want.Socket || c.BridgeNetns != want.BridgeNetns || c.IP.IsValid() || c.PrevResult != nil {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	c, e = ParseConfig(conf(t, map[string]any{"socket": nil, "bridgeNetns": nil, "cniVersion": "0.4.0"}), "")
	if e != nil || c.Socket != DefaultSocket || c.BridgeNetns != "" || c.Version != "0.4.0" {
		t.Fatalf("defaults: %+v, %v", c, e)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		args string
		code uint
		in   string // in the details
	}{
		{"empty stdin", nil, "", CodeDecodingFailure, "stdin is empty"},
		{"blank stdin", []byte(" \n"), "", CodeDecodingFailure, "stdin is empty"},
		{"not JSON", []byte(`{"cniVersion":"1.1.0",`), "", CodeDecodingFailure, "decoding"},
		{"wrong type", []byte(`{"cniVersion":"1.1.0","name":"web","tenant":5}`), "", CodeDecodingFailure, "decoding"},
		{"no version", conf(t, map[string]any{"cniVersion": nil}), "", CodeIncompatibleVersion, `cniVersion is ""`},
		{"future version", conf(t, map[string]any{"cniVersion": "2.0.0"}), "", CodeIncompatibleVersion, "2.0.0"},
		{"no name", conf(t, map[string]any{"name": nil}), "", CodeInvalidConfig, "name"},
		{"bad name", conf(t, map[string]any{"name": "-x"}), "", CodeInvalidConfig, "name"},
		{"no tenant", conf(t, map[string]any{"tenant": nil}), "", CodeInvalidConfig, `"tenant" is missing`},
		{"no network", conf(t, map[string]any{"network": ""}), "", CodeInvalidConfig, `"network" is missing`},
		{"bad tenant", conf(t, map[string]any{"tenant": "Acme"}), "", CodeInvalidConfig, "tenant"},
		{"long network", conf(t, map[string]any{"network": strings.Repeat("n", 64)}), "", CodeInvalidConfig, "network"},
		{"relative socket", conf(t, map[string]any{"socket": "nvid.sock"}), "", CodeInvalidConfig, "socket"},
		{"bad bridgeNetns", conf(t, map[string]any{"bridgeNetns": "a b"}), "", CodeInvalidConfig, "bridgeNetns"},
		{"bad ip", conf(t, map[string]any{"ip": "10.1.0"}), "", CodeInvalidConfig, "ip"},
		{"ipv6", conf(t, map[string]any{"ip": "fd00::5"}), "", CodeInvalidConfig, "IPv4"},
		{"two ips", conf(t, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.1.0.5/24", "10.1.0.6/24"}}}), "", CodeUnsupportedField, "runtimeConfig.ips"},
		{"bad CNI_ARGS", []byte(goodConf), "IgnoreUnknown=1;oops", CodeInvalidEnvironment, "oops"},
		{"bad CNI_ARGS IP", []byte(goodConf), "IP=ten", CodeInvalidConfig, "CNI_ARGS IP"},
		{"bad prevResult", conf(t, map[string]any{"prevResult": map[string]any{"ips": "x"}}), "", CodeDecodingFailure, "prevResult"},
	} {
		_, e := ParseConfig(tc.data, tc.args)
		if e == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if e.Code != tc.code || e.Msg == "" || !strings.Contains(e.Details, tc.in) {
			t.Errorf("%s: got %d %q %q, want code %d with %q", tc.name, e.Code, e.Msg, e.Details, tc.code, tc.in)
		}
	}
}

func TestParseConfigAddress(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  map[string]any
		args string
		want string
	}{
		{"none", nil, "", ""},
		{"config", map[string]any{"ip": "10.1.0.50"}, "", "10.1.0.50"},
		{"config with prefix", map[string]any{"ip": "10.1.0.50/24"}, "", "10.1.0.50"},
		{"CNI_ARGS beats config", map[string]any{"ip": "10.1.0.50"}, "IgnoreUnknown=1;IP=10.1.0.51", "10.1.0.51"},
		{"args.cni.ips beats CNI_ARGS", map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{"10.1.0.52"}}}}, "IP=10.1.0.51", "10.1.0.52"},
		{"runtimeConfig beats all", map[string]any{
			"ip":            "10.1.0.50",
			"args":          map[string]any{"cni": map[string]any{"ips": []string{"10.1.0.52"}}},
			"runtimeConfig": map[string]any{"ips": []string{"10.1.0.53/24"}},
		}, "IP=10.1.0.51", "10.1.0.53"},
	} {
		c, e := ParseConfig(conf(t, tc.set), tc.args)
		if e != nil {
			t.Errorf("%s: %v", tc.name, e)
			continue
		}
		want := netip.Addr{}
		if tc.want != "" {
			want = netip.MustParseAddr(tc.want)
		}
		if c.IP != want {
			t.Errorf("%s: ip %v, want %v", tc.name, c.IP, want)
		}
	}
}

func TestParseConfigPrevResult(t *testing.T) {
	prev := map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/run/netns/x"}},
		"ips":        []any{map[string]any{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}},
	}
	c, e := ParseConfig(conf(t, map[string]any{"prevResult": prev}), "")
	if e != nil {
		t.Fatal(e)
	}
	if c.PrevResult == nil || len(c.PrevResult.IPs) != 1 || c.PrevResult.IPs[0].Address.String() != "10.1.0.5/24" {
		t.Fatalf("prevResult = %+v", c.PrevResult)
	}
}

var nviName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func TestNames(t *testing.T) {
	podman := "3f2a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a"
	for _, tc := range []struct {
		id, ifname, want string
	}{
		{podman, "eth0", "cni-3f2a9b8c7d6e5f4a3b2c1d0e-eth0"},
		{strings.ToUpper(podman), "eth0", "cni-3f2a9b8c7d6e5f4a3b2c1d0e-eth0"},
		{"cnitool-77b7bd8e0a3d6cbeb9d1", "net1", "cni-" + hash("cnitool-77b7bd8e0a3d6cbeb9d1", 24) + "-net1"},
		{"ctr", "Eth_0", "cni-" + hash("ctr", 24) + "-if" + hash("Eth_0", 8)},
		{"ctr", "123456789012345", "cni-" + hash("ctr", 24) + "-123456789012345"},
	} {
		got := EndpointName(tc.id, tc.ifname)
		if got != tc.want {
			t.Errorf("EndpointName(%q, %q) = %q, want %q", tc.id, tc.ifname, got, tc.want)
		}
		if !nviName.MatchString(got) || !strings.HasPrefix(got, EndpointPrefix) {
			t.Errorf("%q is not a valid NVI endpoint name", got)
		}
		if v := HostVeth(got); len(v) != 15 || !strings.HasPrefix(v, "nvc") || validIfName(v) != nil {
			t.Errorf("HostVeth(%q) = %q", got, v)
		}
	}
	if EndpointName("a", "eth0") == EndpointName("b", "eth0") || EndpointName("a", "eth0") == EndpointName("a", "eth1") {
		t.Error("different attachments share an endpoint name")
	}
	if HostVeth("cni-a-eth0") == HostVeth("cni-a-eth1") {
		t.Error("different endpoints share a veth name")
	}
	if got := IfaceID("web", "acme", "cni-x-eth0"); got != "cni:web:acme/cni-x-eth0" {
		t.Errorf("IfaceID = %q", got)
	}
	long := IfaceID(strings.Repeat("n", 300), "acme", "cni-x-eth0")
	if len(long) > 255 || !strings.HasPrefix(long, ifaceIDPrefix(strings.Repeat("n", 300))) {
		t.Errorf("IfaceID for a long network name = %q", long)
	}
}
