package main

import (
	"errors"
	"testing"
)

func TestLargestPassing(t *testing.T) {
	for _, tc := range []struct {
		lo, hi, limit, want int
	}{
		{0, 1472, 1472, 1472}, // everything passes: NVI's full 1500
		{0, 1372, 1372, 1372}, // OVN at ovn-kubernetes' 1400
		{0, 1472, 1414, 1414}, // OVN's Geneve path with a 1500 interface
		{0, 1472, 0, 0},
		{0, 1472, -1, -1}, // nothing passes
		{5, 5, 5, 5},
		{5, 4, 9, 4}, // an empty range
	} {
		asked := 0
		got, err := largestPassing(tc.lo, tc.hi, func(n int) (bool, error) {
			asked++
			if n < tc.lo || n > tc.hi {
				t.Fatalf("asked about %d outside [%d, %d]", n, tc.lo, tc.hi)
			}
			return n <= tc.limit, nil
		})
		if err != nil || got != tc.want {
			t.Errorf("largestPassing(%d, %d) with limit %d = %d, %v; want %d", tc.lo, tc.hi, tc.limit, got, err, tc.want)
		}
		if asked > 12 {
			t.Errorf("largestPassing(%d, %d) asked %d times", tc.lo, tc.hi, asked)
		}
	}
	boom := errors.New("boom")
	if _, err := largestPassing(0, 100, func(int) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("error not passed on: %v", err)
	}
}

func TestMTUFromPayload(t *testing.T) {
	// ping -s 1472 fills a 1500-byte IPv4 packet; -s 1372 a 1400-byte one.
	if 1472+icmpHeaders != 1500 || 1372+icmpHeaders != 1400 {
		t.Errorf("icmpHeaders = %d", icmpHeaders)
	}
}
