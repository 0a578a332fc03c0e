package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"nvi/api"
	"nvi/engine"
	"nvi/pipeline"
	"nvi/session"
)

func TestAttachable(t *testing.T) {
	veth := ifaceFacts{Name: "veth1a2b", Exists: true, Driver: "veth"}
	with := func(f func(*ifaceFacts)) ifaceFacts { c := veth; f(&c); return c }
	tests := []struct {
		name string
		f    ifaceFacts
		want api.Code // "" = accepted
	}{
		{"a container's veth", veth, ""},
		{"a VM's tap", ifaceFacts{Name: "tap0", Exists: true, Driver: "tun"}, ""},
		{"a veth already labelled for this endpoint (a retry)", with(func(f *ifaceFacts) { f.InOVS, f.OVSLabel = true, "acme/w" }), ""},
		{"a veth with only a link-local address", with(func(f *ifaceFacts) { f.Addrs = 0 }), ""},
		{"the uplink", with(func(f *ifaceFacts) { f.Name = "eth0" }), api.CodeDenied},
		{"the bridge's own port", with(func(f *ifaceFacts) { f.Name = "br-nvi"; f.Driver = "openvswitch" }), api.CodeDenied},
		{"loopback", ifaceFacts{Name: "lo", Exists: true, Loopback: true}, api.CodeDenied},
		{"a physical NIC", ifaceFacts{Name: "enp3s0", Exists: true, Device: true, Driver: "e1000e"}, api.CodeDenied},
		{"a veth the host uses", with(func(f *ifaceFacts) { f.Addrs = 1 }), api.CodeDenied},
		{"a Linux bridge", ifaceFacts{Name: "docker0", Exists: true, Driver: "bridge"}, api.CodeDenied},
		{"an OVS internal port", ifaceFacts{Name: "br-int", Exists: true, Driver: "openvswitch"}, api.CodeDenied},
		{"a VLAN on the NIC", ifaceFacts{Name: "eth1.10", Exists: true, Driver: "802.1Q VLAN Support"}, api.CodeDenied},
		{"another endpoint's port", with(func(f *ifaceFacts) { f.InOVS, f.OVSLabel = true, "beta/x" }), api.CodeDenied},
		{"an unlabelled OVS port", with(func(f *ifaceFacts) { f.InOVS = true }), api.CodeDenied},
		{"missing", ifaceFacts{Name: "veth9"}, api.CodeInvalid},
		{"a path", ifaceFacts{Name: "../../etc"}, api.CodeInvalid},
		{"too long", ifaceFacts{Name: "abcdefghijklmnop"}, api.CodeInvalid},
		{"empty", ifaceFacts{}, api.CodeInvalid},
		{"no driver name", ifaceFacts{Name: "x0", Exists: true}, api.CodeDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := attachable(tt.f, "eth0", "br-nvi", "acme/w")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if api.CodeOf(err) != tt.want {
				t.Fatalf("err = %v (code %s), want code %s", err, api.CodeOf(err), tt.want)
			}
		})
	}
}

func TestIfaceFactsOfLoopback(t *testing.T) {
	f, err := kernelIfaceFacts("lo")
	if err != nil {
		t.Fatal(err)
	}
	if !f.Exists || !f.Loopback || f.Addrs == 0 {
		t.Fatalf("facts of lo = %+v; want it to exist, be loopback and have addresses", f)
	}
	if err := attachable(f, "eth0", "br-nvi", "acme/w"); api.CodeOf(err) != api.CodeDenied {
		t.Fatalf("attaching lo: %v", err)
	}
	if f, _ := kernelIfaceFacts("nvi-no-such0"); f.Exists {
		t.Fatal("a missing interface exists")
	}
}

func TestLocalAllowed(t *testing.T) {
	const group = 1500
	tests := []struct {
		name     string
		uid, gid uint32
		groups   []uint32
		allowed  uint32
		ok       bool
	}{
		{"root", 0, 0, nil, group, true},
		{"root with another group", 0, 42, nil, group, true},
		{"member by primary group", 1000, group, nil, group, true},
		{"member by supplementary group", 1000, 1000, []uint32{27, group}, group, true},
		{"not a member", 1000, 1000, []uint32{27, 100}, group, false},
		{"no group configured, a user", 1000, 1000, nil, 0, false},
		{"no group configured, in group root", 1000, 0, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := localAllowed(tt.uid, tt.gid, tt.groups, tt.allowed)
			if (err == nil) != tt.ok {
				t.Fatalf("localAllowed = %v, want allowed %v", err, tt.ok)
			}
		})
	}
}

func TestParseStatusGroups(t *testing.T) {
	st := "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1500 \nNSpid:\t1\n"
	got := parseStatusGroups(st)
	want := []uint32{4, 24, 27, 1500}
	if len(got) != len(want) {
		t.Fatalf("groups = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("groups = %v, want %v", got, want)
		}
	}
	if g := parseStatusGroups("Groups:\t\n"); len(g) != 0 {
		t.Fatalf("no groups parsed as %v", g)
	}
}

// TestLocalSocket checks the socket's mode and owner, that a caller the
// credential check allows is served, and that one it refuses gets a clear
// "denied" (the test runs as one user, so the refusing check stands in
// for another user; localAllowed decides which users those are).
func TestLocalSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nvid.sock")
	if err := os.WriteFile(path, nil, 0o644); err != nil { // a stale file to replace
		t.Fatal(err)
	}
	gid := uint32(os.Getgid())
	l, err := listenLocal(path, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != socketMode {
		t.Fatalf("socket mode %v, want a socket with %v", fi.Mode(), os.FileMode(socketMode))
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != uint32(os.Getuid()) || st.Gid != gid {
		t.Fatalf("socket owned by %d:%d, want %d:%d", st.Uid, st.Gid, os.Getuid(), gid)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("the directory holds %d entries; the private one should be gone", len(ents))
	}

	a, err := New(Config{Name: "s1", Uplink: "up0", OVSDB: "unix:/nonexistent", OVSRunDir: t.TempDir(), Socket: path,
		DataIP: netip.MustParsePrefix("192.0.2.1/24"), Etcd: []string{"x"}, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	a.ctx = context.Background()
	var mu sync.Mutex
	var seen []api.PeerCred
	refuse := false
	authorize := func(c api.PeerCred) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, c)
		if refuse {
			return errors.New("permission denied: test")
		}
		return localAllowed(c.UID, c.GID, nil, gid)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = api.ServeLocal(ctx, l, api.LocalHandler(localService{a}, a.log), authorize, a.log) }()

	c := api.NewLocalClient(path, 5*time.Second)
	defer c.Close()
	if st, err := c.Status(ctx); err != nil || st.Server != "s1" {
		t.Fatalf("an allowed caller: %+v, %v", st, err)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0].UID != uint32(os.Getuid()) || seen[0].PID != int32(os.Getpid()) {
		t.Fatalf("credentials seen %+v, want this process's (uid %d, pid %d)", seen, os.Getuid(), os.Getpid())
	}
	refuse = true
	mu.Unlock()
	c2 := api.NewLocalClient(path, 5*time.Second) // a new connection
	defer c2.Close()
	_, err = c2.CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: "acme", Network: "web", Name: "x"})
	if api.CodeOf(err) != api.CodeDenied || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("a refused caller: err = %v (code %s), want denied", err, api.CodeOf(err))
	}
}

func TestLogLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &logLimiter{every: 10 * time.Second}
	steps := []struct {
		key        string
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"a", 2 * time.Second, false, 0},
		{"b", 3 * time.Second, true, 0}, // keys are independent
		{"a", 10 * time.Second, true, 2},
		{"a", 11 * time.Second, false, 0},
		{"a", 30 * time.Second, true, 1},
		{"a", 50 * time.Second, true, 0},
	}
	for i, st := range steps {
		ok, n := l.allow(st.key, t0.Add(st.at))
		if ok != st.ok || n != st.suppressed {
			t.Fatalf("step %d (%s at %v): allow = %v, %d; want %v, %d", i, st.key, st.at, ok, n, st.ok, st.suppressed)
		}
	}
}

func TestLimitsPerEndpoint(t *testing.T) {
	var l limits
	for i := 0; i < maxSessionsPerWorkload; i++ {
		if !l.take(20) {
			t.Fatalf("session %d refused below the maximum", i)
		}
	}
	if l.take(20) {
		t.Fatal("a session over the maximum was counted")
	}
	if !l.take(21) {
		t.Fatal("another endpoint was refused")
	}
	l.done(20)
	if !l.take(20) {
		t.Fatal("a freed place was not given again")
	}
}

// TestSessionCapDropsAndLogsOnce: a workload at its maximum of sessions
// gets no new one (a drop flow instead), and the refusals are logged once
// per interval, not per packet (audit M6, L9). Its existing sessions and
// other workloads are unaffected.
func TestSessionCapDropsAndLogsOnce(t *testing.T) {
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	var buf bytes.Buffer
	var bmu sync.Mutex
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &bmu}, nil))
	}, addrKey{"acme", ipC}, addrKey{"beta", ipBC})
	a.log = a.cfg.Logger
	fs := connectFakeSwitch(t, a)
	c, b := a.byAddr[addrKey{"acme", ipC}], a.byAddr[addrKey{"beta", ipBC}]
	// The workload has its maximum of sessions: one, here, still being
	// set up (its Resolve is never carried out).
	a.mu.Lock()
	a.eng = engine.New(engine.Config{Keys: a.keys, IdleTimeout: a.cfg.IdleTimeout, MaxPerWorkload: 1})
	a.eng.Step(time.Now(), engine.Packet{From: c.engineWorkload(), Tuple: session.Tuple{Tenant: "acme", Proto: session.UDP, Client: ipC, Server: ipS, Port: 999}, Frame: []byte{0}})
	a.mu.Unlock()
	for p := 1; p <= 50; p++ {
		_ = a.step(engine.Packet{From: c.engineWorkload(), Tuple: session.Tuple{Tenant: "acme", Proto: session.UDP, Client: ipC, Server: ipS, Port: uint16(p)}, Frame: []byte{0}})
	}
	a.mu.Lock()
	n := len(a.eng.Sessions())
	a.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sessions made for a workload at its maximum", n-1)
	}
	if err := eventually(func() bool { return fs.count(uint64(pipeline.DenyCookie(c.ofport))) == 50 }); err != nil {
		t.Fatalf("%d drop flows for the 50 refused destinations, want 50", fs.count(uint64(pipeline.DenyCookie(c.ofport))))
	}
	bmu.Lock()
	lines := strings.Count(buf.String(), "too many sessions")
	bmu.Unlock()
	if lines != 1 {
		t.Fatalf("%d log lines for 50 refusals, want 1", lines)
	}
	// Another workload still gets its session set up.
	_ = a.step(engine.Packet{From: b.engineWorkload(), Tuple: session.Tuple{Tenant: "beta", Proto: session.UDP, Client: ipBC, Server: ipBS, Port: 53}, Frame: []byte{0}})
	a.mu.Lock()
	n = len(a.eng.Sessions())
	a.mu.Unlock()
	if n != 2 {
		t.Fatalf("another workload's new session: %d sessions, want 2", n)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestWithReserved(t *testing.T) {
	for _, tc := range []struct {
		cur, r, want string
		changed      bool
	}{
		{"", "61440-65535", "61440-65535", true},
		{"22,8000-8100", "61440-65535", "22,8000-8100,61440-65535", true},
		{"22,61440-65535", "61440-65535", "22,61440-65535", false},
	} {
		got, changed := withReserved(tc.cur, tc.r)
		if got != tc.want || changed != tc.changed {
			t.Errorf("withReserved(%q, %q) = %q, %v; want %q, %v", tc.cur, tc.r, got, changed, tc.want, tc.changed)
		}
	}
}
