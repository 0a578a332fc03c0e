package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBadInput feeds NVI what users and networks get wrong, and checks that
// each gets a clear error, nothing is half-made, and nothing that already
// worked is disturbed.
func TestBadInput(t *testing.T) {
	// Short leases, so that the directory outage below outlives them.
	l := newLab(t, 2, "--idle-timeout", "1m", "--agent-args", "--lease-ttl=3s")
	n := func(s string) string { return l.Prefix + "-" + s }
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	w1 := l.workload(n("w1"), "s1", "acme/web")
	w2 := l.workload(n("w2"), "s2", "acme/web", "--ip", "10.1.0.50")

	expect := func(t *testing.T, errText string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(errText, w) {
				t.Errorf("error %q does not say %q", strings.TrimSpace(errText), w)
			}
		}
	}
	t.Run("invalid CIDRs", func(t *testing.T) {
		l := l.with(t)
		expect(t, l.mustFail("net", "create", "acme/a", "--cidr", "10.1.0.0/33"), "--cidr", "not a CIDR")
		expect(t, l.mustFail("net", "create", "acme/a", "--cidr", "10.1.0.0"), "not a CIDR")
		expect(t, l.mustFail("net", "create", "acme/a", "--cidr", "fd00::/64"), "IPv4")
		expect(t, l.mustFail("net", "create", "acme/a"), "--cidr is required")
		expect(t, l.mustFail("net", "create", "acme/web", "--cidr", "10.9.0.0/24"), "exists")
		expect(t, l.mustFail("net", "create", "acme/over", "--cidr", "10.1.0.128/25"), "overlaps")
		expect(t, l.mustFail("net", "create", "no-slash", "--cidr", "10.3.0.0/24"), "TENANT/NET")
		if out := l.must("net", "list", "acme"); strings.Contains(out, "over") || strings.Contains(out, " a ") {
			t.Errorf("a refused network was recorded:\n%s", out)
		}
	})
	// A refused workload leaves no namespace and no endpoint behind.
	noWorkload := func(t *testing.T, name string) {
		t.Helper()
		for _, ns := range netnsList() {
			if ns == name {
				t.Errorf("namespace %s was left behind", name)
			}
		}
		if out := l.must("endpoint", "list", "--tenant", "acme"); strings.Contains(out, name) {
			t.Errorf("endpoint %s was left behind:\n%s", name, out)
		}
	}
	t.Run("address outside its network", func(t *testing.T) {
		l := l.with(t)
		expect(t, l.mustFail("lab", "workload", "add", n("x1"), "--server", "s1", "--net", "acme/web", "--ip", "10.2.0.5"), "10.2.0.5", "outside")
		noWorkload(t, n("x1"))
	})
	t.Run("duplicate address", func(t *testing.T) {
		l := l.with(t)
		expect(t, l.mustFail("lab", "workload", "add", n("x2"), "--server", "s1", "--net", "acme/web", "--ip", w2.IP), w2.IP, "already used")
		noWorkload(t, n("x2"))
	})
	t.Run("unknown server and network", func(t *testing.T) {
		l := l.with(t)
		expect(t, l.mustFail("lab", "workload", "add", n("x3"), "--server", "s9", "--net", "acme/web"), "unknown server", "s9")
		expect(t, l.mustFail("lab", "workload", "add", n("x4"), "--server", "s1", "--net", "acme/nope"), "nope")
		expect(t, l.mustFail("endpoint", "create", "acme/x5", "--net", "web", "--server", "s9"), "s9")
		expect(t, l.mustFail("lab", "workload", "add", n("x6"), "--server", "s1", "--net", "acme/web", "--ip", "ten"), "not an IP")
		expect(t, l.mustFail("sessions", "--server", "s9"), "unknown server")
		for _, x := range []string{"x3", "x4", "x6"} {
			noWorkload(t, n(x))
		}
	})
	t.Run("policy and port maps", func(t *testing.T) {
		l := l.with(t)
		expect(t, l.mustFail("group", "add", "nope/g", "web"), "nope")
		expect(t, l.mustFail("group", "create", "acme/g1"+strings.Repeat("x", 70)), "longer than 63")
		l.must("group", "create", "acme/front")
		expect(t, l.mustFail("group", "add", "acme/front", "missing"), "missing")
		expect(t, l.mustFail("connect", "acme/"+w1.Name, "acme/ghost"), "ghost")
		expect(t, l.mustFail("connect", "acme/"+w1.Name, "globex/"+w2.Name), "tenant")
		expect(t, l.mustFail("rule", "add", "acme", "--allow", "--from", "net:web", "--to", "net:web", "--port", "tcp/99999"), "tcp/99999")
		expect(t, l.mustFail("rule", "add", "acme", "--allow", "--from", "web", "--to", "net:web"), "net:NAME")
		expect(t, l.mustFail("rule", "add", "acme", "--allow", "--from", "net:nowhere", "--to", "net:web"), "nowhere")
		l.must("rule", "add", "acme", "--allow", "--from", "net:web", "--to", "net:web", "--port", "udp/53")
		expect(t, l.mustFail("rule", "add", "acme", "--deny", "--from", "net:web", "--to", "net:web", "--port", "udp/53"), "conflict")
		expect(t, l.mustFail("expose", "acme/"+w1.Name, "--port", "tcp/8080"), "8080")
		expect(t, l.mustFail("expose", "acme/"+w1.Name, "--port", "tcp/62000:80"), "62000")
		expect(t, l.mustFail("expose", "acme/ghost", "--port", "tcp/8080:80"), "ghost")
		if out := l.must("rule", "list", "acme"); strings.Count(out, "udp/53") != 1 {
			t.Errorf("refused rules left something behind:\n%s", out)
		}
	})
	t.Run("lab commands without root", func(t *testing.T) {
		l := l.with(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r := sh(ctx, []string{"NVI_LAB=" + l.Prefix}, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			filepath.Join(bin, "nvictl"), "lab", "up", "--servers", "1")
		if r.Code == 0 || !strings.Contains(r.Err, "root") {
			t.Fatalf("lab up as nobody: %s", r)
		}
	})
	t.Run("lab commands without Open vSwitch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r := sh(ctx, []string{"NVI_LAB=nvizz", "PATH=/nonexistent"}, filepath.Join(bin, "nvictl"), "lab", "up", "--servers", "1")
		if r.Code == 0 || !strings.Contains(r.Err, "ovs-vswitchd") || !strings.Contains(r.Err, "openvswitch-switch") {
			t.Fatalf("lab up without OVS: %s", r)
		}
	})
	t.Run("unreachable directory", func(t *testing.T) {
		l := l.with(t)
		start := time.Now()
		r := l.nvictl("--etcd", "http://127.0.0.1:9", "net", "list")
		if r.Code == 0 || !strings.Contains(r.Err, "unreachable") || time.Since(start) > 15*time.Second {
			t.Fatalf("net list against a closed port (%v): %s", time.Since(start), r)
		}
	})

	// An established UDP session, to show that what follows disturbs
	// nothing that already works.
	if got := l.udp(w1, w2, 7000, "before", 5*time.Second); got != "before" {
		t.Fatalf("UDP before: %q", got)
	}
	stillWorks := func(t *testing.T, msg string) {
		t.Helper()
		if got := l.udp(w1, w2, 7000, msg, 5*time.Second); got != msg {
			t.Fatalf("the established session stopped working: got %q", got)
		}
	}
	t.Run("garbage on the agent's APIs", func(t *testing.T) {
		l := l.with(t)
		sock := filepath.Join(l.runDir(), "s2", "nvid.sock")
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("\x00\xff garbage \r\n\r\n\x04\x00\x00\x08"))
		c.Close()
		// Garbage from a peer with a valid certificate (s1's): answered
		// with errors, nothing accepted.
		id := filepath.Join(l.runDir(), "s1", "identity")
		to := l.peerIP("s2") + ":7470"
		attack := filepath.Join(bin, "nviattack")
		for _, args := range [][]string{
			{"--raw-body", "7b"},         // "{": no message of the protocol
			{"--raw-body", "0002733100"}, // a truncated Accept
			{"--body", `{"from":"s1","tuple":{"tenant":"acme","proto":"udp","client":"10.1.0.99","server":"10.1.0.50","port":1},"key":61441}`},
		} {
			r := l.in(l.server("s1"), 10*time.Second, append([]string{attack, "peer", "--to", to, "--call", "accept", "--identity", id, "--server", "s2"}, args...)...)
			if r.Code == 0 || !strings.Contains(r.Out, "answer:") {
				t.Errorf("peer API garbage %v: want an error answer: %s", args, r)
			}
		}
		// Without a certificate, or in plain TCP, nothing is answered.
		for _, mode := range []string{"--plain=false", "--plain"} {
			r := l.in(l.server("s1"), 10*time.Second, attack, "peer", "--to", to, "--call", "accept", "--raw-body", "7b", mode)
			if r.Code == 0 || strings.Contains(r.Out, "answer:") {
				t.Errorf("the peer API answered a caller without a certificate (%s): %s", mode, r)
			} else if !strings.Contains(r.Out, "refused:") && !strings.Contains(r.Out, "closed:") {
				t.Errorf("the call did not run: %s", r)
			}
		}
		stillWorks(t, "after api garbage")
	})
	t.Run("garbage on the OpenFlow socket", func(t *testing.T) {
		l := l.with(t)
		// Move s1's bridge controller elsewhere and put a fake switch that
		// talks garbage where the agent dials; then put it back.
		dir := filepath.Join(l.runDir(), "s1")
		db := "--db=unix:" + filepath.Join(dir, "db.sock")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// Open vSwitch flushes every flow when a bridge goes from having a
		// primary controller to having none, so the stand-in is primary too.
		setController := func(target string) {
			t.Helper()
			if r := sh(ctx, nil, "ovs-vsctl", db, "--", "--id=@c", "create", "Controller", "target=\""+target+"\"", "type=primary",
				"--", "set", "bridge", "br-nvi", "controller=@c"); r.Code != 0 {
				t.Fatal(r)
			}
		}
		setController("punix:" + filepath.Join(dir, "br-nvi.elsewhere"))
		ofSock := filepath.Join(dir, "br-nvi.nvid")
		os.Remove(ofSock)
		// Unix sockets live in the filesystem, which namespaces share.
		fake, err := net.Listen("unix", ofSock)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan int, 1)
		go func() {
			n := 0
			for {
				c, err := fake.Accept()
				if err != nil {
					served <- n
					return
				}
				n++
				c.Write([]byte{0x04, 0x00, 0x00, 0x10, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef}) // hello, then truncated
				c.Write([]byte("GET / HTTP/1.1\r\n\r\n this is not OpenFlow at all"))
				time.Sleep(50 * time.Millisecond)
				c.Close()
			}
		}()
		time.Sleep(3 * time.Second)
		stillWorks(t, "during openflow garbage")
		fake.Close()
		if got := <-served; got < 1 {
			t.Fatalf("the agent never dialled the fake switch")
		}
		os.Remove(ofSock)
		setController("punix:" + ofSock)
		eventually(t, 20*time.Second, "s1's agent back on its switch", func() error {
			var st struct{ Ready bool }
			out := l.must("lab", "status", "-o", "json")
			_ = json.Unmarshal([]byte(out), &st)
			r := l.nvictl("sessions", "--server", "s1")
			if r.Code != 0 {
				return fmt.Errorf("%s", r)
			}
			if res := l.ping(w1, w2.IP); res.Code != 0 {
				return fmt.Errorf("ping after reconnect: %s", res)
			}
			return nil
		})
		stillWorks(t, "after openflow garbage")
		logb, _ := os.ReadFile(filepath.Join(dir, "nvid.log"))
		if strings.Contains(string(logb), "panic") {
			t.Fatalf("the agent panicked:\n%s", logb)
		}
	})
	t.Run("directory down", func(t *testing.T) {
		l := l.with(t)
		var st struct {
			Directory struct{ PID int } `json:"directory"`
		}
		if l.state(&st); st.Directory.PID == 0 {
			t.Fatalf("no directory pid in the lab state")
		}
		w3 := l.workload(n("w3"), "s2", "acme/web")
		if err := syscall.Kill(st.Directory.PID, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		resumed := false
		resume := func() {
			if !resumed {
				syscall.Kill(st.Directory.PID, syscall.SIGCONT)
				resumed = true
			}
		}
		defer resume()
		stillWorks(t, "directory down")
		// A peer never looked up cannot be reached while the directory is down...
		if got := l.udp(w1, w3, 7001, "uncached", 4*time.Second); got != "" {
			t.Errorf("a session to an uncached peer came up without the directory: %q", got)
		}
		r := l.nvictl("net", "list")
		if r.Code == 0 {
			t.Errorf("nvictl worked with the directory stopped: %s", r)
		}
		resume()
		// ... and can once it is back.
		eventually(t, 30*time.Second, "new sessions after the directory returned", func() error {
			if got := l.udp(w1, w3, 7002, "back", 3*time.Second); got != "back" {
				return fmt.Errorf("got %q", got)
			}
			return nil
		})
		// The outage outlived every lease; the servers registered again, and
		// the session that was there before is still there.
		time.Sleep(7 * time.Second)
		stillWorks(t, "after the directory returned")
		found := false
		for _, s := range l.sessions("s1") {
			found = found || s.Server == w2.IP && s.Port == 7000 && time.Duration(s.AgeNS) > 15*time.Second
		}
		if !found {
			t.Errorf("the session from before the outage was torn down: %+v", l.sessions("s1"))
		}
	})
}
