// Package e2e tests NVI end to end on a real lab: Open vSwitch in network
// namespaces, the embedded etcd, nvid and nvictl as a user runs them, and
// real ping, nc and tcpdump as the traffic and the witness.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bin holds nvid and nvictl, built once for the whole run.
var bin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if os.Getenv("NVI_REQUIRE_E2E") != "" {
			fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces, Open vSwitch)")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "e2e: skipped: not root (set NVI_REQUIRE_E2E=1 to make this a failure)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "nvi-e2e-bin")
	if err != nil {
		panic(err)
	}
	bin = dir
	build := exec.Command("go", "build", "-o", dir+"/", "nvi/cmd/nvid", "nvi/cmd/nvictl", "nvi/cmd/nvibench", "nvi/cmd/nvi-cni", "nvi/cmd/nvi-docker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Lab is one lab under test, with its own prefix so it never touches a lab
// a person has up.
type Lab struct {
	t      *testing.T
	Prefix string
}

// result is what one command did.
type result struct {
	Out, Err string
	Code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.Code, r.Out, r.Err)
}

// sh runs a command with a deadline and returns everything about it.
func sh(ctx context.Context, env []string, name string, args ...string) result {
	return shIn(ctx, env, "", name, args...)
}

// sh2 runs a command with a minute's deadline.
func sh2(args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return sh(ctx, nil, args[0], args[1:]...)
}

// shIn is sh with stdin.
func shIn(ctx context.Context, env []string, stdin string, name string, args ...string) result {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{Out: out.String(), Err: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
	} else if err != nil {
		r.Code, r.Err = -1, r.Err+err.Error()
	}
	return r
}

// newLab brings up a lab of n servers and takes it down when the test ends,
// whatever happened. Extra arguments go to "nvictl lab up".
func newLab(t *testing.T, n int, upArgs ...string) *Lab {
	t.Helper()
	l := &Lab{t: t, Prefix: fmt.Sprintf("t%04d", rand.IntN(10000))}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			l.dumpLogs()
		}
		if r := l.nvictlCtx(ctx, "lab", "down"); r.Code != 0 {
			t.Errorf("lab down: %s", r)
		}
		for _, ns := range netnsList() {
			if strings.HasPrefix(ns, l.Prefix+"-") {
				t.Errorf("lab down left namespace %s behind", ns)
			}
		}
	})
	args := append([]string{"lab", "up", "--servers", fmt.Sprint(n)}, upArgs...)
	l.must(args...)
	return l
}

func (l *Lab) nvictlCtx(ctx context.Context, args ...string) result {
	return sh(ctx, []string{"NVI_LAB=" + l.Prefix}, filepath.Join(bin, "nvictl"), args...)
}

// nvictl runs nvictl against this lab.
func (l *Lab) nvictl(args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return l.nvictlCtx(ctx, args...)
}

// must runs nvictl and fails the test if it fails.
func (l *Lab) must(args ...string) string {
	l.t.Helper()
	r := l.nvictl(args...)
	if r.Code != 0 {
		l.t.Fatalf("nvictl %s: %s", strings.Join(args, " "), r)
	}
	return r.Out
}

// mustFail runs nvictl, requires a failure, and returns its stderr.
func (l *Lab) mustFail(args ...string) string {
	l.t.Helper()
	r := l.nvictl(args...)
	if r.Code == 0 {
		l.t.Fatalf("nvictl %s succeeded, want an error: %s", strings.Join(args, " "), r)
	}
	if strings.Contains(r.Err, "panic") || strings.Contains(r.Err, "goroutine ") {
		l.t.Fatalf("nvictl %s panicked: %s", strings.Join(args, " "), r)
	}
	return r.Err
}

// in runs a command inside a network namespace.
func (l *Lab) in(ns string, timeout time.Duration, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return sh(ctx, nil, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// underlay and server name the lab's namespaces.
func (l *Lab) underlay() string          { return l.Prefix + "-underlay" }
func (l *Lab) server(name string) string { return l.Prefix + "-" + name }
func (l *Lab) runDir() string            { return "/run/" + l.Prefix }

// Workload is a lab workload as nvictl made it.
type Workload struct {
	Name, Server, IP string
}

// workload adds a workload and returns it.
func (l *Lab) workload(name, server, net string, extra ...string) Workload {
	l.t.Helper()
	// Workload namespaces are global: prefix them with the lab's.
	args := append([]string{"lab", "workload", "add", name, "--server", server, "--net", net}, extra...)
	l.must(args...)
	var st struct {
		Workloads []struct{ Name, Server, IP string }
	}
	l.state(&st)
	for _, w := range st.Workloads {
		if w.Name == name {
			return Workload{Name: name, Server: server, IP: w.IP}
		}
	}
	l.t.Fatalf("workload %s not in the lab state", name)
	return Workload{}
}

// state reads the lab's state into v.
func (l *Lab) state(v any) {
	l.t.Helper()
	if err := json.Unmarshal([]byte(l.must("lab", "status", "-o", "json")), v); err != nil {
		l.t.Fatalf("lab status: %v", err)
	}
}

// Session is a session as nvictl lists it.
type Session struct {
	Tenant  string `json:"tenant"`
	Proto   string `json:"proto"`
	Client  string `json:"client"`
	Server  string `json:"server"`
	Port    int    `json:"port"`
	Role    string `json:"role"`
	Key     int    `json:"key"`
	State   string `json:"state"`
	Packets int    `json:"packets"`
	AgeNS   int64  `json:"age_ns"`
}

func (l *Lab) sessions(server string) []Session {
	l.t.Helper()
	var ss []Session
	if err := json.Unmarshal([]byte(l.must("sessions", "--server", server, "-o", "json")), &ss); err != nil {
		l.t.Fatalf("sessions: %v", err)
	}
	return ss
}

// flows dumps a server's bridge flows whose cookie matches under mask.
func (l *Lab) flows(server string, cookie string) []string {
	l.t.Helper()
	mgmt := fmt.Sprintf("unix:%s/%s/br-nvi.mgmt", l.runDir(), server)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := sh(ctx, nil, "ovs-ofctl", "-O", "OpenFlow13", "dump-flows", mgmt, "cookie="+cookie)
	if r.Code != 0 {
		l.t.Fatalf("dump-flows on %s: %s", server, r)
	}
	var fs []string
	for _, line := range strings.Split(r.Out, "\n") {
		if strings.Contains(line, "cookie=") {
			fs = append(fs, strings.TrimSpace(line))
		}
	}
	return fs
}

// sessionFlows is every session flow on a server's bridge.
func (l *Lab) sessionFlows(server string) []string {
	return l.flows(server, "0x3000000000000000/0xf000000000000000")
}

func (l *Lab) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(l.runDir(), "s*", "nvid.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.Split(string(b), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		l.t.Logf("--- %s ---\n%s", f, strings.Join(lines, "\n"))
	}
}

func netnsList() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// eventually retries cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
}

// packetIns is how many packets a server's bridge has sent its agent.
func (l *Lab) packetIns(server string) int {
	l.t.Helper()
	mgmt := fmt.Sprintf("unix:%s/%s/br-nvi.mgmt", l.runDir(), server)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := sh(ctx, nil, "ovs-ofctl", "-O", "OpenFlow13", "meter-stats", mgmt)
	var n int
	if i := strings.Index(r.Out, "packet_in_count:"); r.Code != 0 || i < 0 {
		l.t.Fatalf("meter stats of %s: %s", server, r)
	} else if _, err := fmt.Sscanf(r.Out[i:], "packet_in_count:%d", &n); err != nil {
		l.t.Fatalf("meter stats of %s: %v in %q", server, err, r.Out)
	}
	return n
}

// with is the lab as seen from a subtest: failures are the subtest's.
func (l *Lab) with(t *testing.T) *Lab {
	c := *l
	c.t = t
	return &c
}
