package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gatewayMAC is the MAC every workload sees for every peer.
const gatewayMAC = "02:00:00:4e:56:49"

// TestSpoofing: a workload that sends with an address or MAC not its own
// reaches nothing and poisons nobody's ARP cache; ARP is answered by flows,
// so resolution keeps working while the agent is stopped.
func TestSpoofing(t *testing.T) {
	l := newLab(t, 2)
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	w1 := l.workload(n("w1"), "s1", "acme/web")
	w2 := l.workload(n("w2"), "s2", "acme/web")
	w3 := l.workload(n("w3"), "s1", "acme/web")
	if r := l.ping(w1, w2.IP); r.Code != 0 {
		t.Fatalf("baseline ping: %s", r)
	}
	// w2 watches what reaches it.
	dump := l.start(w2.Name, "tcpdump", "-l", "-i", "eth0", "-nn", "ip")
	eventually(t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(dump.err.String(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	t.Run("forged source address", func(t *testing.T) {
		l := l.with(t)
		const forged = "10.1.0.99"
		if r := l.in(w1.Name, 5*time.Second, "ip", "addr", "add", forged+"/24", "dev", "eth0"); r.Code != 0 {
			t.Fatal(r)
		}
		defer l.in(w1.Name, 5*time.Second, "ip", "addr", "del", forged+"/24", "dev", "eth0")
		if r := l.ping(w1, w2.IP, "-I", forged); r.Code == 0 {
			t.Fatalf("ping from a forged address got answers: %s", r)
		}
		l.in(w1.Name, 5*time.Second, "sh", "-c", "echo x | nc -u -w 1 -s "+forged+" "+w2.IP+" 5000")
		time.Sleep(500 * time.Millisecond)
		if strings.Contains(dump.out.String(), forged) {
			t.Fatalf("a packet from the forged address reached w2:\n%s", dump.out.String())
		}
	})
	t.Run("forged MAC", func(t *testing.T) {
		l := l.with(t)
		if r := l.in(w1.Name, 5*time.Second, "ip", "link", "set", "eth0", "address", "02:66:66:66:66:66"); r.Code != 0 {
			t.Fatal(r)
		}
		real := l.in(w3.Name, 5*time.Second, "cat", "/sys/class/net/eth0/address").Out
		defer l.in(w1.Name, 5*time.Second, "ip", "link", "set", "eth0", "address", strings.TrimSpace(l.macOf(w1)))
		if r := l.ping(w1, w2.IP); r.Code == 0 {
			t.Fatalf("ping with a forged MAC got answers")
		}
		// Not even another workload's real MAC works.
		l.in(w1.Name, 5*time.Second, "ip", "link", "set", "eth0", "address", strings.TrimSpace(real))
		if r := l.ping(w1, w2.IP); r.Code == 0 {
			t.Fatalf("ping with w3's MAC got answers")
		}
	})
	t.Run("gratuitous ARP for someone else's address", func(t *testing.T) {
		l := l.with(t)
		// w1 claims w2's address, unsolicited and as a request.
		l.in(w1.Name, 10*time.Second, "arping", "-U", "-c", "2", "-I", "eth0", "-s", w2.IP, w2.IP)
		l.in(w1.Name, 10*time.Second, "arping", "-A", "-c", "2", "-I", "eth0", "-s", w2.IP, w2.IP)
		// Nobody learnt w1's MAC for w2's address: w3 still resolves every
		// peer to the gateway MAC, and still reaches w2.
		if r := l.ping(w3, w2.IP); r.Code != 0 {
			t.Fatalf("w3 lost w2: %s", r)
		}
		neigh := l.in(w3.Name, 5*time.Second, "ip", "neigh", "show", w2.IP).Out
		if !strings.Contains(neigh, gatewayMAC) {
			t.Fatalf("w3's ARP cache for %s: %q, want the gateway MAC", w2.IP, neigh)
		}
		if strings.Contains(neigh, strings.TrimSpace(l.macOf(w1))) {
			t.Fatalf("w3's ARP cache was poisoned: %q", neigh)
		}
	})
	t.Run("ARP is answered while the agent is stopped", func(t *testing.T) {
		l := l.with(t)
		var st struct {
			Servers []struct {
				Name    string `json:"name"`
				NvidPID int    `json:"nvid_pid"`
			} `json:"servers"`
		}
		l.state(&st)
		pid := st.Servers[0].NvidPID
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGCONT)
		l.in(w3.Name, 5*time.Second, "ip", "neigh", "flush", "all")
		r := l.in(w3.Name, 10*time.Second, "arping", "-c", "2", "-I", "eth0", w1.IP)
		if r.Code != 0 || !strings.Contains(strings.ToLower(r.Out), gatewayMAC) {
			t.Fatalf("arping with the agent stopped: %s", r)
		}
	})
}

// macOf reads a workload's MAC from the lab state.
func (l *Lab) macOf(w Workload) string {
	var st struct {
		Workloads []struct{ Name, MAC string }
	}
	l.state(&st)
	for _, x := range st.Workloads {
		if x.Name == w.Name {
			return x.MAC
		}
	}
	l.t.Fatalf("no workload %s", w.Name)
	return ""
}
