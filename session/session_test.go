package session

import (
	"errors"
	"net/netip"
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
	seen := map[uint16]bool{}
	for i := 0; i < 4; i++ {
		k, err := kp.Allocate(peerB, TCP, t0)
		if err != nil {
			t.Fatal(err)
		}
		if seen[k] || !r.Contains(k) {
			t.Fatalf("key %d reused or out of range", k)
		}
		seen[k] = true
	}
	if _, err := kp.Allocate(peerB, TCP, t0); !errors.Is(err, ErrKeysExhausted) {
		t.Fatalf("fifth key toward B/tcp: err = %v, want ErrKeysExhausted", err)
	}
	// Other peers and protocols have keys of their own.
	if _, err := kp.Allocate(peerC, TCP, t0); err != nil {
		t.Fatalf("key toward C: %v", err)
	}
	if _, err := kp.Allocate(peerB, UDP, t0); err != nil {
		t.Fatalf("udp key toward B: %v", err)
	}
}

func TestKeyPoolRestsReleasedKeys(t *testing.T) {
	r, _ := ParseKeyRange("40000-40001")
	kp := NewKeyPool(r, 30*time.Second)
	k1, _ := kp.Allocate(peerB, UDP, t0)
	k2, _ := kp.Allocate(peerB, UDP, t0)
	kp.Release(peerB, UDP, k1, t0)
	if !kp.Resting(peerB, UDP, k1, t0.Add(time.Second)) {
		t.Fatal("released key is not resting")
	}
	if _, err := kp.Allocate(peerB, UDP, t0.Add(29*time.Second)); !errors.Is(err, ErrKeysExhausted) {
		t.Fatalf("resting key was handed out again: err = %v", err)
	}
	k, err := kp.Allocate(peerB, UDP, t0.Add(30*time.Second))
	if err != nil || k != k1 {
		t.Fatalf("after the rest, got %d, %v; want %d", k, err, k1)
	}
	if k2 == k1 {
		t.Fatal("two live keys are equal")
	}
}

func TestKeyPoolRoundRobin(t *testing.T) {
	r, _ := ParseKeyRange("40000-40007")
	kp := NewKeyPool(r, 0)
	k1, _ := kp.Allocate(peerB, TCP, t0)
	kp.Release(peerB, TCP, k1, t0)
	k2, _ := kp.Allocate(peerB, TCP, t0)
	if k2 == k1 {
		t.Fatalf("the key just released came straight back (%d)", k1)
	}
}

func TestKeyPoolAdopt(t *testing.T) {
	kp := NewKeyPool(DefaultKeyRange, time.Minute)
	if err := kp.Adopt(peerB, TCP, 61500); err != nil {
		t.Fatal(err)
	}
	if err := kp.Adopt(peerB, TCP, 61500); err == nil {
		t.Fatal("adopting a key twice succeeded")
	}
	if err := kp.Adopt(peerB, TCP, 80); err == nil {
		t.Fatal("adopting a key outside the range succeeded")
	}
	for i := 0; i < DefaultKeyRange.Size()-1; i++ {
		k, err := kp.Allocate(peerB, TCP, t0)
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
