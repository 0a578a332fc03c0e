package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestHosts(t *testing.T) {
	tests := []struct {
		prefix      string
		first, last string
		err         string
	}{
		{prefix: "10.1.0.0/24", first: "10.1.0.1", last: "10.1.0.254"},
		{prefix: "10.1.0.77/24", first: "10.1.0.1", last: "10.1.0.254"},
		{prefix: "10.0.0.0/8", first: "10.0.0.1", last: "10.255.255.254"},
		{prefix: "192.0.2.8/30", first: "192.0.2.9", last: "192.0.2.10"},
		{prefix: "192.0.2.8/31", err: "has no host addresses"},
		{prefix: "192.0.2.8/32", err: "has no host addresses"},
		{prefix: "fd00::/64", err: "not IPv4"},
	}
	for _, tc := range tests {
		t.Run(tc.prefix, func(t *testing.T) {
			r, err := Hosts(netip.MustParsePrefix(tc.prefix))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Hosts = %v, %v; want error containing %q", r, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.First.String() != tc.first || r.Last.String() != tc.last {
				t.Fatalf("Hosts = %s; want %s-%s", r, tc.first, tc.last)
			}
		})
	}
	if _, err := Hosts(netip.Prefix{}); err == nil {
		t.Fatal("Hosts(zero prefix) succeeded")
	}
}

func TestBroadcastAddr(t *testing.T) {
	tests := map[string]string{
		"10.1.0.0/24":   "10.1.0.255",
		"10.1.0.0/16":   "10.1.255.255",
		"0.0.0.0/0":     "255.255.255.255",
		"192.0.2.8/30":  "192.0.2.11",
		"192.0.2.1/32":  "192.0.2.1",
		"172.16.4.0/22": "172.16.7.255",
	}
	for p, want := range tests {
		if got := BroadcastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("BroadcastAddr(%s) = %s; want %s", p, got, want)
		}
	}
	if got := BroadcastAddr(netip.MustParsePrefix("fd00::/64")); got.IsValid() {
		t.Errorf("BroadcastAddr(IPv6) = %s; want zero", got)
	}
}

func TestClassifyAndUsable(t *testing.T) {
	p := netip.MustParsePrefix("10.1.0.0/24")
	gw := netip.MustParseAddr("10.1.0.1")
	tests := []struct {
		addr string
		want Reason
		msg  string
	}{
		{"10.1.0.5", OK, ""},
		{"10.1.0.254", OK, ""},
		{"10.2.0.5", Outside, "address 10.2.0.5 is outside 10.1.0.0/24"},
		{"10.1.0.0", NetworkAddress, "address 10.1.0.0 is the network address of 10.1.0.0/24"},
		{"10.1.0.255", Broadcast, "address 10.1.0.255 is the broadcast address of 10.1.0.0/24"},
		{"10.1.0.1", Gateway, "address 10.1.0.1 is the gateway of 10.1.0.0/24"},
		{"fd00::1", NotIPv4, "address fd00::1 is not an IPv4 address for 10.1.0.0/24"},
	}
	for _, tc := range tests {
		a := netip.MustParseAddr(tc.addr)
		if got := Classify(p, gw, a); got != tc.want {
			t.Errorf("Classify(%s) = %v; want %v", tc.addr, got, tc.want)
		}
		err := Usable(p, gw, a)
		if tc.want == OK {
			if err != nil {
				t.Errorf("Usable(%s) = %v; want nil", tc.addr, err)
			}
			continue
		}
		var ue *UnusableError
		if !errors.As(err, &ue) || ue.Reason != tc.want || err.Error() != tc.msg {
			t.Errorf("Usable(%s) = %v; want %q", tc.addr, err, tc.msg)
		}
	}
	// A zero gateway reserves nothing.
	if r := Classify(p, netip.Addr{}, gw); r != OK {
		t.Errorf("Classify without gateway = %v; want OK", r)
	}
	if s := Reason(99).String(); s != "Reason(99)" {
		t.Errorf("Reason(99).String() = %q", s)
	}
}

func TestFirstFree(t *testing.T) {
	addrs := func(ss ...string) Set {
		s := Set{}
		for _, a := range ss {
			s.Add(netip.MustParseAddr(a))
		}
		return s
	}
	tests := []struct {
		name     string
		prefix   string
		reserved Set
		want     string
		err      string
	}{
		{name: "empty", prefix: "10.1.0.0/24", want: "10.1.0.1"},
		{name: "gateway reserved", prefix: "10.1.0.0/24", reserved: addrs("10.1.0.1"), want: "10.1.0.2"},
		{name: "hole", prefix: "10.1.0.0/24", reserved: addrs("10.1.0.1", "10.1.0.2", "10.1.0.4"), want: "10.1.0.3"},
		{name: "unrelated reserved", prefix: "10.1.0.0/24", reserved: addrs("10.9.0.1"), want: "10.1.0.1"},
		{name: "last host", prefix: "10.1.0.0/30", reserved: addrs("10.1.0.1"), want: "10.1.0.2"},
		{name: "exhausted", prefix: "10.1.0.0/30", reserved: addrs("10.1.0.1", "10.1.0.2"), err: "network 10.1.0.0/30 has no free address"},
		{name: "crosses octet", prefix: "10.1.0.0/23", reserved: func() Set {
			s := Set{}
			for a := netip.MustParseAddr("10.1.0.1"); a != netip.MustParseAddr("10.1.1.0"); a = a.Next() {
				s.Add(a)
			}
			return s
		}(), want: "10.1.1.0"},
		{name: "no hosts", prefix: "10.1.0.0/31", err: "has no host addresses"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reserved func(netip.Addr) bool
			if tc.reserved != nil {
				reserved = tc.reserved.Has
			}
			got, err := FirstFree(netip.MustParsePrefix(tc.prefix), reserved)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err && !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("FirstFree = %v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("FirstFree = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
	_, err := FirstFree(netip.MustParsePrefix("10.1.0.0/30"), func(netip.Addr) bool { return true })
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("exhausted error %v does not wrap ErrExhausted", err)
	}
}

func TestFirstFreeIn(t *testing.T) {
	r := Range{First: netip.MustParseAddr("10.1.0.16"), Last: netip.MustParseAddr("10.1.0.31")}
	if !r.Contains(netip.MustParseAddr("10.1.0.20")) || r.Contains(netip.MustParseAddr("10.1.0.32")) {
		t.Fatal("Range.Contains is wrong")
	}
	got, err := FirstFreeIn(r, func(a netip.Addr) bool { return a.Less(netip.MustParseAddr("10.1.0.30")) })
	if err != nil || got.String() != "10.1.0.30" {
		t.Fatalf("FirstFreeIn = %v, %v", got, err)
	}
	if _, err := FirstFreeIn(Range{First: r.Last, Last: r.First}, nil); err == nil {
		t.Fatal("FirstFreeIn accepted an inverted range")
	}
	// The last address of the whole space must not wrap around.
	top := Range{First: netip.MustParseAddr("255.255.255.254"), Last: netip.MustParseAddr("255.255.255.255")}
	if _, err := FirstFreeIn(top, func(netip.Addr) bool { return true }); !errors.Is(err, ErrExhausted) {
		t.Fatalf("FirstFreeIn at the top = %v; want ErrExhausted", err)
	}
}

func TestMACFor(t *testing.T) {
	ip := netip.MustParseAddr("10.1.0.5")
	m1, err := MACFor("acme", ip)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := MACFor("acme", ip)
	if m1 != m2 {
		t.Fatalf("MACFor is not deterministic: %s vs %s", m1, m2)
	}
	if !strings.HasPrefix(m1, "0a:") || !strings.HasSuffix(m1, ":0a:01:00:05") {
		t.Fatalf("MACFor = %s; want 0a:TT:0a:01:00:05", m1)
	}
	other, _ := MACFor("acme", netip.MustParseAddr("10.1.0.6"))
	if other == m1 {
		t.Fatal("different addresses in one tenant got the same MAC")
	}
	if _, err := MACFor("acme", netip.MustParseAddr("fd00::1")); err == nil {
		t.Fatal("MACFor accepted IPv6")
	}
	// Differs across (most) tenants.
	seen := map[string]bool{}
	for _, tn := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		m, _ := MACFor(tn, ip)
		seen[m] = true
	}
	if len(seen) < 4 {
		t.Fatalf("tenant byte barely varies: %v", seen)
	}
}
