package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"nvi/api"
)

// TestPortMaps: a client outside reaches workload ports exposed on their
// servers' addresses, TCP and UDP, with two tenants that use the same
// workload address; each workload sees the client's real address, and the
// answer comes from the exposed address and port.
func TestPortMaps(t *testing.T) {
	l := newLab(t, 2)
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("net", "create", "globex/web", "--cidr", "10.1.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	a := l.workload(n("a"), "s1", "acme/web", "--ip", "10.1.0.5")
	g := l.workload(n("g"), "s1", "globex/web", "--ip", "10.1.0.5")
	for _, w := range []Workload{a, g} {
		e := l.start(w.Name, filepath.Join(bin, "nvibench"), "echo", "--first-port", "80", "--count", "1", "--tcp", "--name", w.Name)
		eventually(t, 5*time.Second, "echo server", func() error {
			if !strings.Contains(e.out.String(), "ready") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
	}
	l.must("expose", "acme/"+a.Name, "--port", "tcp/8080:80")
	l.must("expose", "acme/"+a.Name, "--port", "udp/8053:80")
	l.must("expose", "globex/"+g.Name, "--port", "tcp/8081:80")
	if err := l.nvictl("expose", "globex/"+g.Name, "--port", "tcp/8080:80"); err.Code == 0 {
		t.Fatal("a second map of tcp/8080 on s1 was accepted")
	}
	if !strings.Contains(l.must("portmap", "list"), "8081") {
		t.Fatal("portmap list does not show the map")
	}
	internet := l.Prefix + "-internet"
	// Each workload sees who really called.
	dumpA := l.start(a.Name, "tcpdump", "-l", "-i", "eth0", "-nn", "tcp port 80 and tcp[tcpflags] & tcp-syn != 0")
	eventually(t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(dumpA.err.String(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	try := func(args string, want string) {
		t.Helper()
		eventually(t, 10*time.Second, "reach "+args, func() error {
			r := l.in(internet, 10*time.Second, "sh", "-c", "echo hi | nc "+args)
			if !strings.HasPrefix(r.Out, want) {
				return fmt.Errorf("got %q (%s)", r.Out, r.Err)
			}
			return nil
		})
	}
	try("-N -w 2 198.18.0.1 8080", a.Name+":hi")
	try("-N -w 2 198.18.0.1 8081", g.Name+":hi")
	try("-u -w 1 198.18.0.1 8053", a.Name+":hi")
	if !strings.Contains(dumpA.out.String(), internetHost) {
		t.Errorf("the workload did not see the client's real address:\n%s", dumpA.out.String())
	}
	// The answer leaves from the exposed address and port: nc above only
	// accepts it from there, and the capture outside says so too.
	dump := l.start(internet, "tcpdump", "-l", "-i", "eth0", "-nn", "tcp src port 8080")
	eventually(t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(dump.err.String(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	try("-N -w 2 198.18.0.1 8080", a.Name+":hi")
	time.Sleep(300 * time.Millisecond)
	if !strings.Contains(dump.out.String(), "198.18.0.1.8080 > "+internetHost) {
		t.Errorf("no answer from 198.18.0.1:8080 seen outside:\n%s", dump.out.String())
	}
	// Unexposed, the port is closed again.
	l.must("unexpose", "s1", "tcp/8080")
	eventually(t, 5*time.Second, "the map is gone", func() error {
		if r := l.in(internet, 10*time.Second, "sh", "-c", "echo hi | nc -N -w 1 198.18.0.1 8080"); strings.Contains(r.Out, "hi") {
			return fmt.Errorf("still answered: %q", r.Out)
		}
		return nil
	})
}

// TestIPAM: hundreds of endpoints created at once through three servers'
// agents get unique addresses, each from its own server's blocks; explicit
// addresses are honoured when free and refused when taken; deleted
// addresses come back; a dead server's blocks return to the pool.
func TestIPAM(t *testing.T) {
	l := newLab(t, 3)
	l.must("net", "create", "acme/big", "--cidr", "10.8.0.0/22")
	clients := map[string]*api.LocalClient{}
	for _, s := range []string{"s1", "s2", "s3"} {
		clients[s] = api.NewLocalClient(filepath.Join(l.runDir(), s, "nvid.sock"), 30*time.Second)
	}
	ctx := context.Background()
	const perServer = 100
	type made struct{ server, name, ip string }
	var mu sync.Mutex
	var all []made
	var wg sync.WaitGroup
	for s, c := range clients {
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perServer; i += 4 {
					name := fmt.Sprintf("%s-e%03d", s, i)
					ep, err := c.CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: "acme", Network: "big", Name: name})
					if err != nil {
						t.Errorf("create %s: %v", name, err)
						return
					}
					mu.Lock()
					all = append(all, made{s, name, ep.IP.String()})
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	seen := map[string]string{}
	for _, m := range all {
		if other, dup := seen[m.ip]; dup {
			t.Fatalf("address %s handed out twice: %s and %s", m.ip, other, m.name)
		}
		seen[m.ip] = m.name
	}
	if len(seen) != 3*perServer {
		t.Fatalf("%d addresses for %d endpoints", len(seen), 3*perServer)
	}
	// Every address lies in a block its own server holds.
	blocks := l.blocks(t, "acme", "big")
	for _, m := range all {
		if owner := blockOwner(blocks, m.ip); owner != m.server {
			t.Errorf("%s (%s) on %s lies in a block of %q", m.name, m.ip, m.server, owner)
		}
	}
	// Explicit addresses: honoured when free, refused when taken.
	free := "10.8.3.250"
	ep, err := clients["s1"].CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: "acme", Network: "big", Name: "explicit", IP: mustAddr(free)})
	if err != nil || ep.IP.String() != free {
		t.Fatalf("explicit free address: %v, %v", ep.IP, err)
	}
	taken := all[0].ip
	if _, err := clients["s2"].CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: "acme", Network: "big", Name: "clash", IP: mustAddr(taken)}); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("a taken address: %v", err)
	}
	// Deleted, an address comes back.
	victim := all[len(all)-1]
	if err := clients[victim.server].DeleteEndpoint(ctx, "acme", victim.name); err != nil {
		t.Fatal(err)
	}
	again, err := clients[victim.server].CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: "acme", Network: "big", Name: "again"})
	if err != nil || again.IP.String() != victim.ip {
		t.Fatalf("after deleting %s (%s), the next address is %v (%v)", victim.name, victim.ip, again.IP, err)
	}
	// A killed server's blocks are free again once its record expires.
	l.killAgent(t, "s3")
	eventually(t, 30*time.Second, "s3's blocks are free again", func() error {
		for b, owner := range l.blocks(t, "acme", "big") {
			if owner == "s3" {
				return fmt.Errorf("s3 still holds %s", b)
			}
		}
		return nil
	})
}

// blocks lists a network's address blocks and who holds them.
func (l *Lab) blocks(t *testing.T, tenant, net string) map[string]string {
	t.Helper()
	var bs []struct{ Block, Server string }
	if err := json.Unmarshal([]byte(l.must("net", "blocks", tenant+"/"+net, "-o", "json")), &bs); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, b := range bs {
		out[b.Block] = b.Server
	}
	return out
}

func blockOwner(blocks map[string]string, ip string) string {
	a := netip.MustParseAddr(ip)
	for b, owner := range blocks {
		if netip.MustParsePrefix(b).Contains(a) {
			return owner
		}
	}
	return ""
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// killAgent kills a server's nvid, as a crash would, and leaves it dead.
func (l *Lab) killAgent(t *testing.T, server string) {
	t.Helper()
	var st struct {
		Servers []struct {
			Name    string `json:"name"`
			NvidPID int    `json:"nvid_pid"`
		} `json:"servers"`
	}
	l.state(&st)
	for _, s := range st.Servers {
		if s.Name == server {
			if err := syscall.Kill(s.NvidPID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no server %s", server)
}
