package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestCore is the core issue's acceptance on a three-server lab: TCP, UDP
// and ICMP across servers and within one, the very first datagram, full-MTU
// packets, an underlay that carries only server addresses, one session for
// many connections, idle expiry at both ends, and isolation of networks.
func TestCore(t *testing.T) {
	const idle = 4 * time.Second
	l := newLab(t, 3, "--idle-timeout", idle.String())
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("net", "create", "acme/db", "--cidr", "10.2.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	w1 := l.workload(n("w1"), "s1", "acme/web")
	w2 := l.workload(n("w2"), "s2", "acme/web")
	w3 := l.workload(n("w3"), "s3", "acme/web", "--ip", "10.1.0.30")
	w4 := l.workload(n("w4"), "s1", "acme/web") // same server as w1
	d1 := l.workload(n("d1"), "s2", "acme/db")
	if w3.IP != "10.1.0.30" {
		t.Fatalf("explicit address not honoured: %s", w3.IP)
	}
	capt := l.capture()

	t.Run("first UDP datagram to a never-contacted peer arrives", func(t *testing.T) {
		l := l.with(t)
		if ss := l.sessions("s3"); len(ss) != 0 {
			t.Fatalf("s3 already has sessions: %+v", ss)
		}
		if got := l.udp(w1, w3, 5000, "first", 5*time.Second); got != "first" {
			t.Fatalf("receiver got %q, want the first datagram", got)
		}
	})
	t.Run("ICMP across servers", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(w1, w2.IP); r.Code != 0 {
			t.Fatalf("ping w1 -> w2: %s", r)
		}
		if r := l.ping(w3, w1.IP); r.Code != 0 {
			t.Fatalf("ping w3 -> w1: %s", r)
		}
	})
	t.Run("DF ping of 1472 bytes crosses servers", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(w2, w3.IP, "-M", "do", "-s", "1472"); r.Code != 0 {
			t.Fatalf("ping -M do -s 1472 w2 -> w3: %s", r)
		}
	})
	t.Run("TCP across servers", func(t *testing.T) {
		l := l.with(t)
		msg := strings.Repeat("nvi tcp across servers\n", 500)
		got, err := l.tcp(w1, w2, 8080, msg)
		if err != nil || got != msg {
			t.Fatalf("received %d of %d bytes: %v", len(got), len(msg), err)
		}
	})
	t.Run("UDP across servers", func(t *testing.T) {
		l := l.with(t)
		if got := l.udp(w2, w1, 5353, "udp back", 5*time.Second); got != "udp back" {
			t.Fatalf("receiver got %q", got)
		}
	})
	t.Run("same server: TCP, UDP and ICMP", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(w1, w4.IP); r.Code != 0 {
			t.Fatalf("ping w1 -> w4: %s", r)
		}
		if got, err := l.tcp(w4, w1, 8081, "local tcp"); err != nil || got != "local tcp" {
			t.Fatalf("tcp w4 -> w1: %q, %v", got, err)
		}
		if got := l.udp(w1, w4, 5001, "local udp", 5*time.Second); got != "local udp" {
			t.Fatalf("udp w1 -> w4: %q", got)
		}
		for _, s := range l.sessions("s1") {
			if s.Client == w4.IP && s.Server == w1.IP && s.Role != "local" {
				t.Errorf("same-server session has role %s, want local", s.Role)
			}
		}
	})
	t.Run("closed ports answer across servers: TCP reset, ICMP port unreachable", func(t *testing.T) {
		l := l.with(t)
		r := l.in(w1.Name, 10*time.Second, "nc", "-v", "-w", "3", w3.IP, "8099")
		if r.Code == 0 || !strings.Contains(r.Err, "refused") {
			t.Errorf("tcp to a closed port: %s", r)
		}
		dump := l.start(w1.Name, "tcpdump", "-l", "-i", "eth0", "-nn", "icmp")
		eventually(t, 10*time.Second, "tcpdump started", func() error {
			if !strings.Contains(dump.err.String(), "listening on") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		want := fmt.Sprintf("%s > %s: ICMP %s udp port 9099 unreachable", w3.IP, w1.IP, w3.IP)
		eventually(t, 10*time.Second, "the port unreachable came back translated", func() error {
			l.in(w1.Name, 5*time.Second, "sh", "-c", "echo knock | nc -u -w 1 "+w3.IP+" 9099")
			if !strings.Contains(dump.out.String(), want) {
				return fmt.Errorf("w1 saw %q, want %q", dump.out.String(), want)
			}
			return nil
		})
	})
	t.Run("the gateway answers pings", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(w1, "10.1.0.1"); r.Code != 0 {
			t.Fatalf("ping gateway: %s", r)
		}
	})
	t.Run("many connections share one session", func(t *testing.T) {
		l := l.with(t)
		srv := l.start(w2.Name, "nc", "-lk", "9000")
		defer srv.stop()
		l.listening(w2.Name, "tcp", 9000)
		for i := 0; i < 20; i++ {
			if r := l.sendTCP(w1, w2.IP, 9000, fmt.Sprintf("connection %d\n", i)); r.Code != 0 {
				t.Fatalf("connection %d: %s", i, r)
			}
		}
		eventually(t, 5*time.Second, "20 connections received", func() error {
			if c := strings.Count(srv.out.String(), "connection "); c != 20 {
				return fmt.Errorf("server got %d connections", c)
			}
			return nil
		})
		var match []Session
		for _, s := range l.sessions("s1") {
			if s.Proto == "tcp" && s.Client == w1.IP && s.Server == w2.IP && s.Port == 9000 {
				match = append(match, s)
			}
		}
		if len(match) != 1 || match[0].Role != "client" || match[0].State != "established" {
			t.Fatalf("want one established client session w1 -> w2:9000 on s1, got %+v", match)
		}
		key := match[0].Key
		// Exactly two flows name the session on each bridge, in the tables
		// the bridge names after their jobs.
		for _, sv := range []string{"s1", "s2"} {
			n := 0
			tables := map[string]bool{}
			for _, f := range l.sessionFlows(sv) {
				// One flow matches the key and rewrites to 9000, the other
				// the other way round.
				if strings.Contains(f, fmt.Sprint(key)) && strings.Contains(f, "9000") {
					n++
					for _, tb := range []string{`table="session_out"`, `table="session_in"`, `table="reply_gate"`, `table="reply_check"`} {
						if strings.Contains(f, tb) {
							tables[tb] = true
						}
					}
				}
			}
			if !tables[`table="session_out"`] && !tables[`table="reply_check"`] || !tables[`table="session_in"`] {
				t.Errorf("%s: the session's flows are not in tables named session_out (or reply_check) and session_in: %v", sv, l.sessionFlows(sv))
			}
			if n != 2 {
				t.Errorf("%s has %d flows with key %d, want 2: %v", sv, n, key, l.sessionFlows(sv))
			}
		}
	})
	t.Run("different networks cannot talk", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(w1, d1.IP); r.Code == 0 {
			t.Fatalf("ping web -> db succeeded: %s", r)
		}
		if r := l.sendTCP(w1, d1.IP, 5432, "x"); r.Code == 0 {
			t.Fatalf("tcp web -> db succeeded")
		}
		for _, s := range l.sessions("s1") {
			if s.Server == d1.IP {
				t.Errorf("a session toward the other network exists: %+v", s)
			}
		}
		// A flood toward the refused peer costs a handful of packet-ins:
		// the drop flow takes it, not the agent.
		before := l.packetIns("s1")
		l.in(w1.Name, 30*time.Second, "ping", "-f", "-c", "3000", "-w", "3", d1.IP)
		l.in(w1.Name, 30*time.Second, "sh", "-c", "for i in $(seq 1 300); do echo x; done | nc -u -w 1 "+d1.IP+" 6000")
		// Those that arrive before the drop flow is in (a few ms of the
		// flood) reach the agent; the rest do not.
		got := l.packetIns("s1") - before
		if got > 100 {
			t.Errorf("a flood of 3,300 packets toward a refused peer cost %d packet-ins", got)
		}
		t.Logf("a flood of 3,300 packets toward a refused peer cost %d packet-ins", got)
	})
	t.Run("underlay carries only server addresses, full size, no tunnels", func(t *testing.T) {
		pkts, err := readPcap(capt.stop())
		if err != nil {
			t.Fatal(err)
		}
		if len(pkts) < 50 {
			t.Fatalf("only %d packets captured: the capture missed the traffic", len(pkts))
		}
		underlay := netip.MustParsePrefix("198.18.0.0/24")
		full := 0
		for _, p := range pkts {
			if !underlay.Contains(p.Src) || !underlay.Contains(p.Dst) {
				t.Fatalf("a packet on the underlay names %s -> %s", p.Src, p.Dst)
			}
			switch {
			case p.Proto == 4 || p.Proto == 41:
				t.Fatalf("IP-in-IP on the underlay")
			case p.Proto == 47:
				t.Fatalf("GRE on the underlay")
			case p.Proto == 17 && (p.DstPort == 4789 || p.DstPort == 8472 || p.DstPort == 6081):
				t.Fatalf("VXLAN or Geneve on the underlay (udp %d)", p.DstPort)
			}
			if p.TotalLen == 1500 {
				full++
			}
		}
		if full == 0 {
			t.Fatal("no 1500-byte packet crossed the underlay")
		}
		t.Logf("%d underlay packets, %d of them full-size, all between server addresses", len(pkts), full)
	})
	t.Run("a session carrying traffic one way only stays; idle, it leaves both bridges", func(t *testing.T) {
		l := l.with(t)
		// w1 opens the session; then only the server side, w2, talks.
		if r := l.in(w1.Name, 10*time.Second, "sh", "-c", "echo open | nc -u -w 1 -p 40000 "+w2.IP+" 7777"); r.Code != 0 {
			t.Fatalf("opening the session: %s", r)
		}
		has := func(sv, role string) bool {
			for _, s := range l.sessions(sv) {
				if s.Proto == "udp" && s.Client == w1.IP && s.Server == w2.IP && s.Port == 7777 && s.Role == role {
					return true
				}
			}
			return false
		}
		if !has("s1", "client") || !has("s2", "server") {
			t.Fatalf("the session is not on both servers: s1 %+v, s2 %+v", l.sessions("s1"), l.sessions("s2"))
		}
		talk := l.start(w2.Name, "sh", "-c", "while true; do echo back | nc -u -w 0 -p 7777 "+w1.IP+" 40000; sleep 0.5; done")
		time.Sleep(2*idle + time.Second)
		if !has("s1", "client") || !has("s2", "server") {
			t.Fatalf("a session with traffic from the server side was torn down")
		}
		talk.stop()
		eventually(t, 3*idle+5*time.Second, "sessions expired everywhere", func() error {
			for _, sv := range []string{"s1", "s2", "s3"} {
				if ss := l.sessions(sv); len(ss) != 0 {
					return fmt.Errorf("%s still lists %d sessions", sv, len(ss))
				}
				if fs := l.sessionFlows(sv); len(fs) != 0 {
					return fmt.Errorf("%s still has session flows: %v", sv, fs)
				}
			}
			return nil
		})
	})
}
