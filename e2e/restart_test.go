package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestAgentRestart kills agents the way a crash would while a TCP
// connection streams through their bridges: the connection must not notice,
// the new agents must adopt the sessions from the flows they find (same
// key, nothing flushed), and the adopted sessions must still expire
// together when idle (invariant 5).
func TestAgentRestart(t *testing.T) {
	const idle = 5 * time.Second
	l := newLab(t, 2, "--idle-timeout", idle.String())
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	w1 := l.workload(n("w1"), "s1", "acme/web")
	w2 := l.workload(n("w2"), "s2", "acme/web")
	w3 := l.workload(n("w3"), "s1", "acme/web")

	// A same-server session, to be adopted as well.
	if got := l.udp(w1, w3, 6000, "local", 5*time.Second); got != "local" {
		t.Fatalf("udp w1 -> w3: %q", got)
	}
	srv := l.start(w2.Name, "nc", "-l", "8000")
	l.listening(w2.Name, "tcp", 8000)
	const lines = 60
	client := l.start(w1.Name, "sh", "-c", fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep 0.2; done | nc -N %s 8000", lines, w2.IP))
	eventually(t, 5*time.Second, "the stream started", func() error {
		if !strings.Contains(srv.out.String(), "line 2") {
			return fmt.Errorf("got %q", srv.out.String())
		}
		return nil
	})
	key := func(sv string) (int, bool) {
		for _, s := range l.sessions(sv) {
			if s.Proto == "tcp" && s.Server == w2.IP && s.Port == 8000 {
				return s.Key, true
			}
		}
		return 0, false
	}
	k1, ok := key("s1")
	if !ok {
		t.Fatal("no session on s1")
	}
	before := len(l.sessionFlows("s1"))

	l.must("lab", "restart-agent", "s1")
	if k, ok := key("s1"); !ok || k != k1 {
		t.Fatalf("after restarting s1's agent, the session has key %d (found %v), want %d", k, ok, k1)
	}
	if after := len(l.sessionFlows("s1")); after != before {
		t.Fatalf("s1 had %d session flows before the restart and %d after", before, after)
	}
	local := false
	for _, s := range l.sessions("s1") {
		local = local || s.Role == "local" && s.Server == w3.IP && s.Port == 6000
	}
	if !local {
		t.Errorf("the same-server session was not adopted: %+v", l.sessions("s1"))
	}
	l.must("lab", "restart-agent", "s2")
	if k, ok := key("s2"); !ok || k != k1 {
		t.Fatalf("after restarting s2's agent, its half has key %d (found %v), want %d", k, ok, k1)
	}

	if !client.wait(30 * time.Second) {
		t.Fatal("the client never finished")
	}
	eventually(t, 5*time.Second, "every line arrived", func() error {
		if !strings.Contains(srv.out.String(), fmt.Sprintf("line %d\n", lines)) {
			return fmt.Errorf("the server got: %q", srv.out.String())
		}
		return nil
	})
	for i := 1; i <= lines; i++ {
		if !strings.Contains(srv.out.String(), fmt.Sprintf("line %d\n", i)) {
			t.Fatalf("line %d was lost across the restarts", i)
		}
	}
	// Adopted sessions still end together when idle.
	eventually(t, 3*idle+5*time.Second, "adopted sessions expired on both servers", func() error {
		for _, sv := range []string{"s1", "s2"} {
			if fs := l.sessionFlows(sv); len(fs) != 0 {
				return fmt.Errorf("%s still has session flows: %v", sv, fs)
			}
		}
		return nil
	})
	// And new sessions come up as before.
	if r := l.ping(w2, w1.IP); r.Code != 0 {
		t.Fatalf("ping after the restarts: %s", r)
	}
}
