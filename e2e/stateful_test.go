package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestServerSpeaksAfterIdle: a TCP connection stays quiet until its session
// idles out at both ends, then the server side speaks first. Conntrack at
// the server's end knows the answer belongs to a connection the client
// opened, so the session the client made is made again — not a new session
// from the server — and the bytes arrive.
func TestServerSpeaksAfterIdle(t *testing.T) {
	const idle = 3 * time.Second
	l := newLab(t, 2, "--idle-timeout", idle.String())
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("net", "create", "acme/db", "--cidr", "10.2.0.0/24")
	// web may open connections to db's port 9100; db may open none to web,
	// so only conntrack can let the server's late answer through.
	l.must("rule", "add", "acme", "--allow", "--from", "net:web", "--to", "net:db", "--port", "tcp/9100")
	n := func(s string) string { return l.Prefix + "-" + s }
	c := l.workload(n("c"), "s1", "acme/web")
	s := l.workload(n("s"), "s2", "acme/db")
	if r := l.in(s.Name, 10*time.Second, "nc", "-z", "-w", "2", c.IP, "22"); r.Code == 0 {
		t.Fatal("db opened a connection to web: the policy does not hold")
	}

	l.start(s.Name, "sh", "-c", "(sleep 12; echo late news) | nc -l 9100")
	l.listening(s.Name, "tcp", 9100)
	cli := l.start(c.Name, "sh", "-c", "sleep 30 | nc "+s.IP+" 9100")
	// The session appears, then idles out at both ends.
	eventually(t, 5*time.Second, "session up", func() error {
		if len(l.sessionFlows("s2")) == 0 {
			return fmt.Errorf("no session flows on s2")
		}
		return nil
	})
	eventually(t, 3*idle+2*time.Second, "session idled out", func() error {
		for _, sv := range []string{"s1", "s2"} {
			if fs := l.sessionFlows(sv); len(fs) != 0 {
				return fmt.Errorf("%s still has %d session flows", sv, len(fs))
			}
		}
		return nil
	})
	eventually(t, 15*time.Second, "the server's late words reached the client", func() error {
		if !strings.Contains(cli.out.String(), "late news") {
			return fmt.Errorf("client has %q", cli.out.String())
		}
		return nil
	})
	found := false
	for _, x := range l.sessions("s2") {
		if x.Client == s.IP {
			t.Errorf("the server's answer made a session of its own: %+v", x)
		}
		found = found || x.Client == c.IP && x.Server == s.IP && x.Port == 9100 && x.Role == "server"
	}
	if !found {
		t.Errorf("the client's session was not made again: %+v", l.sessions("s2"))
	}
}
