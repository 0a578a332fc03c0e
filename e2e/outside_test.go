package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const internetHost = "203.0.113.2" // the lab's stand-in for the internet

// TestEgressOverlappingTenants: two tenants use the same network and the
// same workload address on the same server; both reach a host outside, at
// the same moment and from the same source port, each with the server's
// address as its source, and each gets its own answers.
func TestEgressOverlappingTenants(t *testing.T) {
	l := newLab(t, 1)
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("net", "create", "globex/web", "--cidr", "10.1.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	a := l.workload(n("a"), "s1", "acme/web", "--ip", "10.1.0.5")
	g := l.workload(n("g"), "s1", "globex/web", "--ip", "10.1.0.5")
	internet := l.Prefix + "-internet"
	echo := l.start(internet, filepath.Join(bin, "nvibench"), "echo", "--first-port", "20000", "--count", "1")
	eventually(t, 5*time.Second, "echo server up", func() error {
		if !strings.Contains(echo.out.String(), "ready") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	dump := l.start(internet, "tcpdump", "-l", "-i", "eth0", "-nn", "udp", "port", "20000")
	eventually(t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(dump.err.String(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	got := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, w := range []Workload{a, g} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := l.in(w.Name, 10*time.Second, "sh", "-c", "echo hello from "+w.Name+" | nc -u -w 2 -p 40000 "+internetHost+" 20000")
			mu.Lock()
			got[w.Name] = r.Out
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, w := range []Workload{a, g} {
		if !strings.Contains(got[w.Name], "hello from "+w.Name) || strings.Count(got[w.Name], "hello") != 1 {
			t.Errorf("%s got %q, want only its own echo", w.Name, got[w.Name])
		}
	}
	// Outside, both came from the server's address, on different ports.
	time.Sleep(300 * time.Millisecond)
	seen := map[string]bool{}
	for _, line := range strings.Split(dump.out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasSuffix(f[4], internetHost+".20000:") {
			continue
		}
		src := f[2]
		i := strings.LastIndexByte(src, '.')
		if addr, err := netip.ParseAddr(src[:i]); err != nil || addr.String() != "198.18.0.1" {
			t.Errorf("a datagram reached the outside from %s, want the server's address 198.18.0.1", src)
		}
		seen[src] = true
	}
	if len(seen) != 2 {
		t.Errorf("want two distinct sources outside, saw %v:\n%s", seen, dump.out.String())
	}
}
