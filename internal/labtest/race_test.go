package labtest

import (
	"strings"
	"testing"
)

// TestRaceReports: every report of the race detector in a log is found,
// whole, and a log without one yields none.
func TestRaceReports(t *testing.T) {
	report := func(n string) string {
		return "==================\nWARNING: DATA RACE\nWrite at 0x00c000 by goroutine " + n + ":\n  nvi/agent.(*Agent).Run()\n\nPrevious read at 0x00c000 by goroutine 9:\n  nvi/agent.localService.Status()\n==================\n"
	}
	log := "time=1 level=INFO msg=ready\n" + report("7") + "time=2 level=INFO msg=more\n" + report("8") + "Found 2 data race(s)\n"
	got := RaceReports(log)
	if len(got) != 2 || !strings.Contains(got[0], "goroutine 7") || !strings.Contains(got[1], "goroutine 8") ||
		!strings.Contains(got[0], "localService.Status") || strings.Contains(got[0], "goroutine 8") {
		t.Fatalf("RaceReports = %q", got)
	}
	if got := RaceReports("time=1 level=INFO msg=\"no races here\"\n"); got != nil {
		t.Fatalf("RaceReports of a clean log = %q", got)
	}
	if got := RaceReports("WARNING: DATA RACE\nWrite at (cut off)"); len(got) != 1 {
		t.Fatalf("a report cut off by the end of the log: %q", got)
	}
}
