package session

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	peerB = netip.MustParseAddr("198.18.0.2")
	peerC = netip.MustParseAddr("198.18.0.3")
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func TestKeyRange(t *testing.T) {
	tests := []struct {
		in          string
		first, last uint16
		wantErr     bool
	}{
		{"61440-65535", 61440, 65535, false},
		{"40000-40015", 40000, 40015, false},
		{"40000-40016", 0, 0, true}, // not a power of two
		{"40001-40016", 0, 0, true}, // not aligned
		{"65535-61440", 0, 0, true}, // reversed
		{"0-65535", 0, 0, true},     // mask would fix no bit
		{"abc", 0, 0, true},
	}
	for _, tt := range tests {
		r, err := ParseKeyRange(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseKeyRange(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (r.First() != tt.first || r.Last() != tt.last) {
			t.Errorf("ParseKeyRange(%q) = %d-%d, want %d-%d", tt.in, r.First(), r.Last(), tt.first, tt.last)
		}
	}
	if !DefaultKeyRange.Contains(61440) || DefaultKeyRange.Contains(60999) || DefaultKeyRange.Size() != 4096 {
		t.Errorf("default key range is wrong: %v size %d", DefaultKeyRange, DefaultKeyRange.Size())
	}
}

func TestKeyPoolUniquePerPeerAndProto(t *testing.T) {
	r, _ := ParseKeyRange("40000-40003")
	kp := NewKeyPool(r, time.Minute)
	kp.SetTenantQuota(r.Size())
	seen := map[uint16]bool{}
	for i := 0; i < 4; i++ {
		k, err := kp.Allocate(peerB, TCP, "acme", t0)
		if err != nil {
			t.Fatal(err)
		}
		if seen[k] || !r.Contains(k) {
			t.Fatalf("key %d reused or out of range", k)
		}
		seen[k] = true
	}
	if _, err := kp.Allocate(peerB, TCP, "other", t0); !errors.Is(err, ErrKeysExhausted) {
		t.Fatalf("fifth key toward B/tcp: err = %v, want ErrKeysExhausted", err)
	}
	// Other peers and protocols have keys of their own.
	if _, err := kp.Allocate(peerC, TCP, "acme", t0); err != nil {
		t.Fatalf("key toward C: %v", err)
	}
	if _, err := kp.Allocate(peerB, UDP, "acme", t0); err != nil {
		t.Fatalf("udp key toward B: %v", err)
	}
}

func TestKeyPoolRestsReleasedKeys(t *testing.T) {
	r, _ := ParseKeyRange("40000-40001")
	kp := NewKeyPool(r, 30*time.Second)
	kp.SetTenantQuota(2)
	k1, _ := kp.Allocate(peerB, UDP, "acme", t0)
	k2, _ := kp.Allocate(peerB, UDP, "acme", t0)
	kp.Release(peerB, UDP, k1, t0)
	if !kp.Resting(peerB, UDP, k1, t0.Add(time.Second)) {
		t.Fatal("released key is not resting")
	}
	if _, err := kp.Allocate(peerB, UDP, "other", t0.Add(29*time.Second)); !errors.Is(err, ErrKeysExhausted) {
		t.Fatalf("resting key was handed out again: err = %v", err)
	}
	k, err := kp.Allocate(peerB, UDP, "other", t0.Add(30*time.Second))
	if err != nil || k != k1 {
		t.Fatalf("after the rest, got %d, %v; want %d", k, err, k1)
	}
	if k2 == k1 {
		t.Fatal("two live keys are equal")
	}
}

func TestKeyPoolReleaseUnusedSkipsTheRest(t *testing.T) {
	r, _ := ParseKeyRange("40000-40001")
	kp := NewKeyPool(r, 30*time.Second)
	kp.SetTenantQuota(2)
	k1, _ := kp.Allocate(peerB, TCP, "acme", t0)
	if _, err := kp.Allocate(peerB, TCP, "acme", t0); err != nil {
		t.Fatal(err)
	}
	kp.ReleaseUnused(peerB, TCP, k1)
	if kp.Resting(peerB, TCP, k1, t0) {
		t.Fatal("a key the peer refused is resting")
	}
	k, err := kp.Allocate(peerB, TCP, "acme", t0)
	if err != nil || k != k1 {
		t.Fatalf("refused key not free at once: got %d, %v; want %d", k, err, k1)
	}
	// Releasing twice, or a key nobody holds, changes nothing.
	kp.ReleaseUnused(peerB, TCP, 40000)
	kp.ReleaseUnused(peerB, TCP, 40000)
	kp.Release(peerB, TCP, 40000, t0)
	if got := kp.Held(peerB, TCP, "acme", t0); got != 1 {
		t.Fatalf("acme holds %d keys after double releases, want 1", got)
	}
}

// TestKeyPoolTenantQuota walks a fixed clock through allocations and
// releases of several tenants and checks who gets a key.
func TestKeyPoolTenantQuota(t *testing.T) {
	r, _ := ParseKeyRange("40000-40007") // 8 keys; default quota 4
	type step struct {
		op     string // "alloc", "release", "unused"
		tenant string
		at     time.Duration
		idx    int   // which earlier allocation to release
		want   error // for alloc
	}
	tests := []struct {
		name  string
		quota int
		steps []step
	}{
		{"one tenant gets at most half", 0, []step{
			{op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"},
			{op: "alloc", tenant: "evil", want: ErrKeyQuota},
			{op: "alloc", tenant: "acme"}, {op: "alloc", tenant: "acme"},
		}},
		{"resting keys count against the tenant that released them", 0, []step{
			{op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"},
			{op: "release", idx: 0}, {op: "release", idx: 1},
			{op: "alloc", tenant: "evil", at: 29 * time.Second, want: ErrKeyQuota},
			{op: "alloc", tenant: "evil", at: 30 * time.Second},
			{op: "alloc", tenant: "evil", at: 30 * time.Second},
			{op: "alloc", tenant: "evil", at: 30 * time.Second, want: ErrKeyQuota},
		}},
		{"refused keys do not count", 0, []step{
			{op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"},
			{op: "unused", idx: 0}, {op: "unused", idx: 1}, {op: "unused", idx: 2}, {op: "unused", idx: 3},
			{op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"}, {op: "alloc", tenant: "evil"},
			{op: "alloc", tenant: "evil", want: ErrKeyQuota},
		}},
		{"two tenants at quota exhaust the range", 0, []step{
			{op: "alloc", tenant: "a"}, {op: "alloc", tenant: "a"}, {op: "alloc", tenant: "a"}, {op: "alloc", tenant: "a"},
			{op: "alloc", tenant: "b"}, {op: "alloc", tenant: "b"}, {op: "alloc", tenant: "b"}, {op: "alloc", tenant: "b"},
			{op: "alloc", tenant: "c", want: ErrKeysExhausted},
		}},
		{"a configured share", 2, []step{
			{op: "alloc", tenant: "a"}, {op: "alloc", tenant: "a"},
			{op: "alloc", tenant: "a", want: ErrKeyQuota},
			{op: "release", idx: 0},
			{op: "alloc", tenant: "a", at: time.Minute},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kp := NewKeyPool(r, 30*time.Second)
			kp.SetTenantQuota(tt.quota)
			var got []uint16
			live := map[uint16]bool{}
			for i, st := range tt.steps {
				now := t0.Add(st.at)
				switch st.op {
				case "alloc":
					k, err := kp.Allocate(peerB, TCP, st.tenant, now)
					if st.want == nil && err != nil || st.want != nil && !errors.Is(err, st.want) {
						t.Fatalf("step %d: %s allocates: err = %v, want %v", i, st.tenant, err, st.want)
					}
					if err == nil {
						if live[k] {
							t.Fatalf("step %d: key %d handed out twice", i, k)
						}
						live[k] = true
						got = append(got, k)
					}
				case "release":
					kp.Release(peerB, TCP, got[st.idx], now)
					delete(live, got[st.idx])
				case "unused":
					kp.ReleaseUnused(peerB, TCP, got[st.idx])
					delete(live, got[st.idx])
				}
			}
		})
	}
}

// seqReader yields the bytes it was given, then zeros.
type seqReader struct{ b []byte }

func (r *seqReader) Read(p []byte) (int, error) {
	for i := range p {
		if len(r.b) > 0 {
			p[i], r.b = r.b[0], r.b[1:]
		} else {
			p[i] = 0
		}
	}
	return len(p), nil
}

func TestKeyPoolChoosesByTheRandomSource(t *testing.T) {
	r, _ := ParseKeyRange("40000-40007")
	kp := newKeyPool(r, 0, &seqReader{b: []byte{0, 5, 0, 5, 0, 2}})
	kp.SetTenantQuota(8)
	k1, _ := kp.Allocate(peerB, TCP, "a", t0)
	k2, _ := kp.Allocate(peerB, TCP, "a", t0) // 5 is taken: the next probe says 2
	if k1 != 40005 || k2 != 40002 {
		t.Fatalf("got keys %d, %d; want 40005, 40002 from the random source", k1, k2)
	}
}

func TestKeyPoolIsNotPredictable(t *testing.T) {
	// Round-robin would hand out 61440, 61441, ... to both pools; random
	// choice makes two equal sequences of 16 keys out of 4096 practically
	// impossible.
	seq := func() []uint16 {
		kp := NewKeyPool(DefaultKeyRange, time.Minute)
		var out []uint16
		for range 16 {
			k, err := kp.Allocate(peerB, TCP, "a", t0)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, k)
		}
		return out
	}
	a, b := seq(), seq()
	if slices.Equal(a, b) {
		t.Fatalf("two pools handed out the same keys in the same order: %v", a)
	}
	consecutive := 0
	for i := 1; i < len(a); i++ {
		if a[i] == a[i-1]+1 {
			consecutive++
		}
	}
	if consecutive > 3 {
		t.Fatalf("keys look sequential: %v", a)
	}
}

func TestKeyPoolFullEnumerationWhenProbesMiss(t *testing.T) {
	// A nearly full pool: only one key is free, and every probe (all zero
	// bytes) hits a used key, so the list of free keys decides.
	r, _ := ParseKeyRange("40000-40007")
	kp := newKeyPool(r, 0, &seqReader{})
	kp.SetTenantQuota(8)
	for k := uint16(40000); k < 40007; k++ {
		if err := kp.Adopt(peerB, TCP, "a", k); err != nil {
			t.Fatal(err)
		}
	}
	k, err := kp.Allocate(peerB, TCP, "a", t0)
	if err != nil || k != 40007 {
		t.Fatalf("got %d, %v; want the one free key 40007", k, err)
	}
}

func TestKeyPoolAdopt(t *testing.T) {
	kp := NewKeyPool(DefaultKeyRange, time.Minute)
	kp.SetTenantQuota(DefaultKeyRange.Size())
	if err := kp.Adopt(peerB, TCP, "acme", 61500); err != nil {
		t.Fatal(err)
	}
	if err := kp.Adopt(peerB, TCP, "acme", 61500); err == nil {
		t.Fatal("adopting a key twice succeeded")
	}
	if err := kp.Adopt(peerB, TCP, "acme", 80); err == nil {
		t.Fatal("adopting a key outside the range succeeded")
	}
	for i := 0; i < DefaultKeyRange.Size()-1; i++ {
		k, err := kp.Allocate(peerB, TCP, "acme", t0)
		if err != nil {
			t.Fatal(err)
		}
		if k == 61500 {
			t.Fatal("adopted key handed out")
		}
	}
}

func TestActivity(t *testing.T) {
	a := NewActivity(t0)
	a.Observe(0, t0.Add(5*time.Second))
	if !a.Idle(t0.Add(10*time.Second), 10*time.Second) {
		t.Fatal("no packets for the timeout, yet not idle")
	}
	a.Observe(3, t0.Add(8*time.Second))
	if a.Idle(t0.Add(10*time.Second), 10*time.Second) {
		t.Fatal("packets 2s ago, yet idle")
	}
	a.Observe(1, t0.Add(20*time.Second)) // counters reset: flows re-added
	if a.Idle(t0.Add(25*time.Second), 10*time.Second) {
		t.Fatal("a counter reset was not taken as activity")
	}
	if a.Idle(t0.Add(time.Hour), 0) {
		t.Fatal("timeout 0 must mean never idle")
	}
}
