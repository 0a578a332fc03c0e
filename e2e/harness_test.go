// Package e2e tests NVI end to end on a real lab: Open vSwitch in network
// namespaces, the embedded etcd, nvid and nvictl as a user runs them, and
// real ping, nc and tcpdump as the traffic and the witness.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"nvi/internal/labtest"
	"nvi/internal/orchtest"
)

// bin holds NVI's programs, built once for the whole run.
var bin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if labtest.Required() {
			fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces, Open vSwitch)")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "e2e: skipped: not root (set NVI_REQUIRE_E2E=1 to make this a failure)")
		os.Exit(0)
	}
	dir, err := labtest.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	labtest.Clean()
	os.Exit(code)
}

// Lab is one lab under test; labtest.Lab brings it up and takes it down.
type Lab struct {
	labtest.Lab
	t *testing.T
}

// result is what one command did.
type result = orchtest.Result

// sh runs a command with a deadline and returns everything about it.
func sh(ctx context.Context, env []string, name string, args ...string) result {
	return shIn(ctx, env, "", name, args...)
}

// sh2 runs a command with a minute's deadline.
func sh2(args ...string) result {
	return orchtest.Run(time.Minute, nil, nil, args[0], args[1:]...)
}

// shIn is sh with stdin.
func shIn(ctx context.Context, env []string, stdin string, name string, args ...string) result {
	timeout := 10 * time.Minute
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	return orchtest.Run(timeout, env, []byte(stdin), name, args...)
}

// newLab brings up a lab of n servers and takes it down when the test ends,
// whatever happened. Extra arguments go to "nvictl lab up".
func newLab(t *testing.T, n int, upArgs ...string) *Lab {
	t.Helper()
	lt := labtest.Up(t, "t", n, upArgs...)
	return &Lab{Lab: *lt, t: t}
}

// nvictl runs nvictl against this lab.
func (l *Lab) nvictl(args ...string) result { return l.Nvictl(args...) }

// must runs nvictl and fails the test if it fails.
func (l *Lab) must(args ...string) string {
	l.t.Helper()
	return l.Must(args...)
}

// mustFail runs nvictl, requires a failure, and returns its stderr.
func (l *Lab) mustFail(args ...string) string {
	l.t.Helper()
	return l.MustFail(args...)
}

// in runs a command inside a network namespace.
func (l *Lab) in(ns string, timeout time.Duration, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return sh(ctx, nil, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// underlay and server name the lab's namespaces.
func (l *Lab) underlay() string          { return l.Underlay() }
func (l *Lab) server(name string) string { return l.Server(name) }
func (l *Lab) runDir() string            { return l.RunDir() }

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

// peerIP is the address of server's peer API, as the directory has it and
// peers dial it (the lab puts it on the management network).
func (l *Lab) peerIP(server string) string {
	l.t.Helper()
	var servers []struct {
		Name      string `json:"name"`
		AgentAddr string `json:"agentAddr"`
	}
	if err := json.Unmarshal([]byte(l.must("servers", "-o", "json")), &servers); err != nil {
		l.t.Fatalf("servers: %v", err)
	}
	for _, s := range servers {
		if s.Name == server {
			ap, err := netip.ParseAddrPort(s.AgentAddr)
			if err != nil {
				l.t.Fatalf("server %s has agent address %q: %v", server, s.AgentAddr, err)
			}
			return ap.Addr().String()
		}
	}
	l.t.Fatalf("server %s is not in the directory", server)
	return ""
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

// flows dumps a server's bridge flows whose cookie matches under mask,
// tables and ports by name.
func (l *Lab) flows(server string, cookie string) []string {
	l.t.Helper()
	mgmt := fmt.Sprintf("unix:%s/%s/br-nvi.mgmt", l.runDir(), server)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := sh(ctx, nil, "ovs-ofctl", "-O", "OpenFlow13", "--names", "dump-flows", mgmt, "cookie="+cookie)
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

// netnsList lists named network namespaces.
func netnsList() []string { return labtest.NetnsList() }

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

// packetIns is how many packets a server's bridge has sent its agent: the
// sum over its punt meters (the uplink's and one per workload).
func (l *Lab) packetIns(server string) int {
	l.t.Helper()
	mgmt := fmt.Sprintf("unix:%s/%s/br-nvi.mgmt", l.runDir(), server)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := sh(ctx, nil, "ovs-ofctl", "-O", "OpenFlow13", "meter-stats", mgmt)
	if r.Code != 0 || !strings.Contains(r.Out, "packet_in_count:") {
		l.t.Fatalf("meter stats of %s: %s", server, r)
	}
	total := 0
	for _, part := range strings.Split(r.Out, "packet_in_count:")[1:] {
		var n int
		if _, err := fmt.Sscanf(part, "%d", &n); err != nil {
			l.t.Fatalf("meter stats of %s: %v in %q", server, err, r.Out)
		}
		total += n
	}
	return total
}

// with is the lab as seen from a subtest: failures are the subtest's.
func (l *Lab) with(t *testing.T) *Lab {
	c := *l
	c.t, c.T = t, t
	return &c
}
