package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultBlockBits(t *testing.T) {
	for p, want := range map[string]int{
		"10.0.0.0/8":  24, // capped at MaxBlocks blocks
		"10.0.0.0/9":  25,
		"10.1.0.0/16": 26,
		"10.1.0.0/20": 26,
		"10.1.0.0/22": 26,
		"10.1.0.0/23": 27,
		"10.1.0.0/24": 28,
		"10.1.0.0/26": 28,
		"10.1.0.0/28": 28, // one block: the network
		"10.1.0.0/29": 29,
		"10.1.0.0/30": 30,
	} {
		pp := netip.MustParsePrefix(p)
		got := DefaultBlockBits(pp)
		if got != want {
			t.Errorf("DefaultBlockBits(%s) = %d; want %d", p, got, want)
		}
		if err := CheckBlockBits(pp, got); err != nil {
			t.Errorf("default for %s refused: %v", p, err)
		}
	}
}

func TestBlocks(t *testing.T) {
	tests := []struct {
		prefix string
		bits   int
		want   string // first, second and last block, and count
		err    string
	}{
		{prefix: "10.1.0.0/24", bits: 28, want: "10.1.0.0/28 10.1.0.16/28 10.1.0.240/28 16"},
		{prefix: "10.1.0.77/24", bits: 26, want: "10.1.0.0/26 10.1.0.64/26 10.1.0.192/26 4"},
		{prefix: "10.1.0.0/24", bits: 24, want: "10.1.0.0/24 10.1.0.0/24 10.1.0.0/24 1"},
		{prefix: "10.0.0.0/8", bits: 24, want: "10.0.0.0/24 10.0.1.0/24 10.255.255.0/24 65536"},
		{prefix: "10.1.0.0/24", bits: 32, want: "10.1.0.0/32 10.1.0.1/32 10.1.0.255/32 256"},
		{prefix: "10.1.0.0/24", bits: 23, err: "block length /23 must be between the network's /24 and /32"},
		{prefix: "10.1.0.0/24", bits: 33, err: "between the network's /24 and /32"},
		{prefix: "10.0.0.0/8", bits: 26, err: "blocks of /26 would cut 10.0.0.0/8 into 262144 blocks; at most 65536"},
		{prefix: "fd00::/64", bits: 80, err: "not IPv4"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s by %d", tc.prefix, tc.bits), func(t *testing.T) {
			bs, err := Blocks(netip.MustParsePrefix(tc.prefix), tc.bits)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Blocks = %d blocks, %v; want error %q", len(bs), err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			second := bs[0]
			if len(bs) > 1 {
				second = bs[1]
			}
			if got := fmt.Sprintf("%s %s %s %d", bs[0], second, bs[len(bs)-1], len(bs)); got != tc.want {
				t.Fatalf("Blocks = %s; want %s", got, tc.want)
			}
		})
	}
}

func TestPool(t *testing.T) {
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	network, gw := pfx("10.1.0.0/24"), ip("10.1.0.1")

	empty, err := NewPool(network, gw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Next(nil); !errors.Is(err, ErrNeedBlock) {
		t.Fatalf("Next on an empty pool = %v; want ErrNeedBlock", err)
	}

	// The first block holds the network address and the gateway: both skipped.
	p, err := NewPool(network, gw, pfx("10.1.0.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	used := Set{}
	var got []string
	for {
		a, err := p.Next(used.Has)
		if errors.Is(err, ErrNeedBlock) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		used.Add(a)
		got = append(got, a.String())
	}
	if want := "10.1.0.2 10.1.0.3 10.1.0.4 10.1.0.5 10.1.0.6 10.1.0.7"; strings.Join(got, " ") != want {
		t.Fatalf("addresses of 10.1.0.0/29 = %v; want %s", got, want)
	}

	// Another block: its edges are ordinary hosts of the network, but the
	// network's broadcast address is not.
	if err := p.Add(pfx("10.1.0.248/29")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.1.0.248", "10.1.0.249"} {
		a := must(p.Next(used.Has))(t)
		if a.String() != want {
			t.Fatalf("Next = %s; want %s", a, want)
		}
		used.Add(a)
	}
	used.Add(ip("10.1.0.250"), ip("10.1.0.251"), ip("10.1.0.252"), ip("10.1.0.253"))
	a := must(p.Next(used.Has))(t)
	if a.String() != "10.1.0.254" {
		t.Fatalf("Next = %s; want 10.1.0.254", a)
	}
	used.Add(a)
	if _, err := p.Next(used.Has); !errors.Is(err, ErrNeedBlock) || !strings.Contains(err.Error(), "network 10.1.0.0/24: every address of the server's blocks is taken") {
		t.Fatalf("Next on a full pool = %v", err)
	}

	// Lower blocks are used first; a released address comes back.
	if err := p.Add(pfx("10.1.0.16/28")); err != nil {
		t.Fatal(err)
	}
	if a := must(p.Next(used.Has))(t); a.String() != "10.1.0.16" {
		t.Fatalf("Next after adding 10.1.0.16/28 = %s", a)
	}
	delete(used, ip("10.1.0.3"))
	if a := must(p.Next(used.Has))(t); a.String() != "10.1.0.3" {
		t.Fatalf("released address not reused: %s", a)
	}
	if !p.Contains(ip("10.1.0.20")) || p.Contains(ip("10.1.0.40")) {
		t.Fatal("Contains is wrong")
	}
	if err := p.Add(pfx("10.1.0.16/28")); err != nil {
		t.Fatalf("re-adding a held block: %v", err)
	}
	if len(p.Blocks()) != 3 {
		t.Fatalf("Blocks = %v", p.Blocks())
	}
	p.Remove(pfx("10.1.0.16/28"))
	if p.Contains(ip("10.1.0.20")) || len(p.Blocks()) != 2 {
		t.Fatalf("Remove left %v", p.Blocks())
	}

	for b, want := range map[string]string{
		"10.2.0.0/28":  "is not inside network 10.1.0.0/24",
		"10.0.0.0/16":  "is not inside network",
		"10.1.0.0/28":  "overlaps block 10.1.0.0/29",
		"10.1.0.0/24":  "overlaps",
		"fd00::/120":   "is not inside",
		"10.1.0.8/29":  "",
		"10.1.0.64/26": "",
	} {
		err := p.Add(pfx(b))
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("Add(%s) = %v; want %q", b, err, want)
		}
	}
	if _, err := NewPool(pfx("10.1.0.0/31"), netip.Addr{}); err == nil {
		t.Fatal("NewPool accepted a /31")
	}
}

func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
