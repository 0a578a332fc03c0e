package main

import (
	"testing"
	"time"
)

func TestProcCPU(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want time.Duration
		ok   bool
	}{
		{"1234 (nvid) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0", 3 * time.Second, true},
		{"77 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0", 100 * time.Millisecond, true},
		{"77 (x) R 1 1", 0, false},
		{"no name", 0, false},
		{"77 (x) R 1 1 1 0 -1 0 0 0 0 0 seven 3 0", 0, false},
	} {
		got, err := procCPU(tc.stat)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("procCPU(%q) = %v, %v; want %v (ok %v)", tc.stat, got, err, tc.want, tc.ok)
		}
	}
}
