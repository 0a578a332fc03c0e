package agent

import (
	"net/netip"
	"slices"
	"testing"
)

// TestUnderlayOf: the agent tells the pipeline everything workloads must
// not reach: the data subnet, the router, the directory's address and the
// operator's extra prefixes.
func TestUnderlayOf(t *testing.T) {
	p := netip.MustParsePrefix
	cfg := Config{
		DataIP:   p("198.18.0.1/24"),
		Gateway:  netip.MustParseAddr("198.18.0.254"),
		Etcd:     []string{"http://198.18.0.254:2379", "https://10.200.0.5:2379", "etcd.example:2379", "unix:///run/etcd.sock", "10.200.0.6:2379", "http://[2001:db8::1]:2379"},
		Underlay: []netip.Prefix{p("10.250.0.0/16")},
	}
	got := underlayOf(cfg)
	want := []netip.Prefix{p("198.18.0.0/24"), p("198.18.0.254/32"), p("198.18.0.254/32"), p("10.200.0.5/32"), p("10.200.0.6/32"), p("10.250.0.0/16")}
	if !slices.Equal(got, want) {
		t.Fatalf("underlay\n got  %v\n want %v", got, want)
	}
	if got := underlayOf(Config{}); len(got) != 0 {
		t.Fatalf("an empty config gave %v", got)
	}
}

func TestConfigRefusesBadUnderlay(t *testing.T) {
	c := Config{Name: "s1", Uplink: "eth1", OVSDB: "unix:/x", OVSRunDir: "/x", Socket: "/x.sock", Etcd: []string{"http://127.0.0.1:2379"},
		DataIP: netip.MustParsePrefix("198.18.0.1/24")}
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	c.Underlay = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	if err := c.Validate(); err == nil {
		t.Fatal("an IPv6 underlay prefix was accepted")
	}
}
