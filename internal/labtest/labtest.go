// Package labtest is what every test of NVI on a real lab needs: the guard
// that decides whether such a test runs here, NVI's programs built once per
// test binary, and a lab that takes itself down — whatever the test did.
package labtest

import (
	"fmt"
	"math/rand/v2"
	"nvi/lab"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"nvi/internal/orchtest"
)

// Required says whether a missing prerequisite fails the test rather than
// skipping it: CI sets NVI_REQUIRE_E2E=1, so that a skip never passes for
// a test that ran.
func Required() bool { return os.Getenv("NVI_REQUIRE_E2E") != "" }

// RequireE2E skips the test when it cannot run here (not root, a tool
// missing), or fails it when NVI_REQUIRE_E2E says it must run.
func RequireE2E(t testing.TB, tools ...string) {
	t.Helper()
	miss := func(why string) {
		if Required() {
			t.Fatalf("NVI_REQUIRE_E2E is set but %s", why)
		}
		t.Skipf("skipped: %s (set NVI_REQUIRE_E2E=1 to make this a failure)", why)
	}
	if os.Geteuid() != 0 {
		miss("this test needs root (network namespaces, Open vSwitch)")
	}
	for _, tool := range append([]string{"ip", "ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ethtool"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			miss(tool + " is not installed (scripts/deps installs it)")
		}
	}
}

// RacePrograms are NVI's programs under test, built with the race
// detector unless NVI_E2E_RACE=0: every lab test then doubles as a race
// test of the agent, the CLI and the plugins, and fails on any report
// ([RaceReports]). The lab's directory (etcd inside nvid) runs from a plain
// build of nvid (lab.DirectoryBinEnv): etcd is not ours to race-test, and
// the race detector's cost is better spent on our own code. Programs are
// the helpers, built plain (nvibench's echo servers, the attack tool and
// cnitool only make traffic and calls).
var (
	RacePrograms = []string{"nvi/cmd/nvid", "nvi/cmd/nvictl", "nvi/cmd/nvi-cni", "nvi/cmd/nvi-docker"}
	Programs     = []string{"nvi/cmd/nvibench", "nvi/internal/nviattack", "github.com/containernetworking/cni/cnitool"}
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Build builds RacePrograms (with -race) and Programs once per test binary
// into a directory that Clean removes.
func Build() (string, error) {
	buildOnce.Do(func() {
		// Every program started from here on (nvictl, the lab's agents)
		// inherits this: without it a race-built program sleeps a second
		// at exit, which adds up over the thousands of nvictl calls.
		if os.Getenv("GORACE") == "" {
			os.Setenv("GORACE", "atexit_sleep_ms=0")
		}
		binDir, buildErr = os.MkdirTemp("", "nvi-test-bin")
		if buildErr != nil {
			return
		}
		race := []string{"build", "-o", binDir + "/"}
		if os.Getenv("NVI_E2E_RACE") != "0" {
			race = []string{"build", "-race", "-o", binDir + "/"}
		}
		plain := filepath.Join(binDir, "plain")
		if os.Getenv(lab.DirectoryBinEnv) == "" {
			os.Setenv(lab.DirectoryBinEnv, filepath.Join(plain, "nvid"))
		}
		for _, b := range [][]string{
			append(race, RacePrograms...),
			append([]string{"build", "-o", binDir + "/"}, Programs...),
			{"build", "-o", plain + "/", "nvi/cmd/nvid"},
		} {
			out, err := exec.Command("go", b...).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go %s: %w\n%s", strings.Join(b, " "), err, out)
				return
			}
		}
	})
	return binDir, buildErr
}

// raceMark starts every report of the race detector.
const raceMark = "WARNING: DATA RACE"

// RaceReports returns the race detector's reports in a program's output
// (each from its mark to the next blank-line-separated "=================="),
// or nil.
func RaceReports(out string) []string {
	var reports []string
	for {
		i := strings.Index(out, raceMark)
		if i < 0 {
			return reports
		}
		out = out[i:]
		end := strings.Index(out[len(raceMark):], "==================")
		if end < 0 {
			reports = append(reports, out)
			return reports
		}
		reports = append(reports, out[:len(raceMark)+end])
		out = out[len(raceMark)+end:]
	}
}

// CheckRaces fails t with every race report found in the logs (*.log)
// under dir.
func CheckRaces(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, r := range RaceReports(string(b)) {
			t.Errorf("race detector report in %s:\n%s", path, r)
		}
		return nil
	})
}

// Binaries is Build for a test.
func Binaries(t testing.TB) string {
	t.Helper()
	dir, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// Clean removes what Build made; TestMain calls it.
func Clean() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Lab is a lab under test, with a prefix of its own so that it never
// touches a lab a person has up or another test's.
type Lab struct {
	T      testing.TB
	Prefix string
	Bin    string
}

// Up brings up a lab of n servers named with letter and a random number,
// and takes it down when the test ends, logging the agents' logs first if
// the test failed and checking that nothing was left behind. Extra
// arguments go to "nvictl lab up".
func Up(t testing.TB, letter string, n int, upArgs ...string) *Lab {
	t.Helper()
	l := &Lab{T: t, Prefix: fmt.Sprintf("%s%04d", letter, rand.IntN(10000)), Bin: Binaries(t)}
	t.Cleanup(func() {
		CheckRaces(t, l.RunDir())
		if t.Failed() {
			l.dumpLogs()
		}
		if r := l.Nvictl("lab", "down"); r.Code != 0 {
			t.Errorf("lab down: %s", r)
		}
		for _, ns := range NetnsList() {
			if strings.HasPrefix(ns, l.Prefix+"-") {
				t.Errorf("lab down left namespace %s behind", ns)
				orchtest.Run(time.Minute, nil, nil, "ip", "netns", "del", ns)
			}
		}
	})
	l.Must(append([]string{"lab", "up", "--servers", fmt.Sprint(n)}, upArgs...)...)
	return l
}

// Nvictl runs nvictl against this lab; a race report in its output fails
// the test.
func (l *Lab) Nvictl(args ...string) orchtest.Result {
	r := orchtest.Run(2*time.Minute, []string{"NVI_LAB=" + l.Prefix}, nil, filepath.Join(l.Bin, "nvictl"), args...)
	for _, rep := range RaceReports(r.Err) {
		l.T.Errorf("race detector report from nvictl %s:\n%s", strings.Join(args, " "), rep)
	}
	return r
}

// Must runs nvictl and fails the test if it fails.
func (l *Lab) Must(args ...string) string {
	l.T.Helper()
	r := l.Nvictl(args...)
	if r.Code != 0 {
		l.T.Fatalf("nvictl %s: %s", strings.Join(args, " "), r)
	}
	return r.Out
}

// MustFail runs nvictl, requires a failure without a panic, and returns its
// stderr.
func (l *Lab) MustFail(args ...string) string {
	l.T.Helper()
	r := l.Nvictl(args...)
	if r.Code == 0 {
		l.T.Fatalf("nvictl %s succeeded, want an error: %s", strings.Join(args, " "), r)
	}
	if strings.Contains(r.Err, "panic") || strings.Contains(r.Err, "goroutine ") {
		l.T.Fatalf("nvictl %s panicked: %s", strings.Join(args, " "), r)
	}
	return r.Err
}

// RunDir is the lab's run directory; Server and Underlay name its
// namespaces.
func (l *Lab) RunDir() string { return "/run/" + l.Prefix }

// Server is the namespace of a lab server.
func (l *Lab) Server(name string) string { return l.Prefix + "-" + name }

// Underlay is the underlay switch's namespace.
func (l *Lab) Underlay() string { return l.Prefix + "-underlay" }

// Socket is a server's agent socket.
func (l *Lab) Socket(server string) string { return filepath.Join(l.RunDir(), server, "nvid.sock") }

func (l *Lab) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(l.RunDir(), "s*", "nvid.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		l.T.Logf("--- %s ---\n%s", f, strings.Join(lines, "\n"))
	}
}

// NetnsList lists named network namespaces.
func NetnsList() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
