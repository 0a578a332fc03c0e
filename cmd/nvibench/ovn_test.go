package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestAhead(t *testing.T) {
	for _, tc := range []struct {
		x, y   float64
		higher bool
		want   string
	}{
		{1.3e9, 0.5e9, true, "NVI"},    // throughput
		{0.46e9, 0.47e9, true, "even"}, // within 3%
		{0.44e9, 0.47e9, true, "OVN"},
		{0.279, 0.280, false, "even"},
		{1500, 1400, true, "NVI"},  // MTU
		{4048, 225, false, "OVN"},  // flows
		{0.28, 0.32, false, "NVI"}, // a round trip
		{1400, 1400, true, "even"},
	} {
		if got := ahead(tc.x, tc.y, tc.higher); got != tc.want {
			t.Errorf("ahead(%v, %v, %v) = %s, want %s", tc.x, tc.y, tc.higher, got, tc.want)
		}
	}
}

// The comparison prints whatever the figures (no division by zero, no
// empty slice); the output itself is for people.
func TestPrintComparison(t *testing.T) {
	ms := func(v ...float64) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x*float64(time.Millisecond)))
		}
		return d
	}
	nvi := sideResult{first: ms(1.4, 1.5), base: ms(0.3), rate: 2000, throughput: 0.7e9, rounds: []float64{0.7e9},
		mtu: 1500, pathMTU: 1500, flowsIdle: flowCount{48, 48}, flowsBusy: flowCount{4048, 6048},
		ports: portTimes{bind: ms(50), full: ms(90), flows: flowCount{4229, 6079}}, newConnsCounted: 2000}
	ovn := sideResult{first: ms(0.3), base: ms(0.35), rate: 13000, throughput: 0.5e9, rounds: []float64{0.4e9, 0.5e9, 0.6e9},
		mtu: 1400, pathMTU: 1442, flowsIdle: flowCount{225, 225}, flowsBusy: flowCount{225, 225},
		ports: portTimes{bind: ms(30), full: ms(55), flows: flowCount{495, 255}}}
	var out strings.Builder
	printComparison(&out, nvi, ovn, "23.03.1", 3, 5)
	for _, want := range []string{
		"TCP throughput (median of 3)                                0.70 Gbit/s    0.50 Gbit/s     1.40    NVI",
		"MTU left to the workload (largest ping -M do + 28)                 1500           1400     1.07    NVI",
		"  after 2000 new connections                                4048 / 6048      225 / 225    22.44    OVN",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, out.String())
		}
	}
	printComparison(io.Discard, nvi, sideResult{rounds: []float64{0}}, "?", 1, 1)
}
