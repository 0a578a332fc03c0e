package directory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"nvi/session"
)

func TestPortMaps(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addServer(t, s, "s2", 2)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	for _, e := range []Endpoint{{Name: "web1", Server: "s1"}, {Name: "web2", Server: "s1"}, {Name: "web3", Server: "s2"}} {
		e.Tenant, e.Network = "acme", "web"
		must[Endpoint](t)(s.CreateEndpoint(ctx, e))
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, must[int64](t)(s.Revision(ctx))+1)

	pm := must[PortMap](t)(s.Expose(ctx, PortMap{Proto: session.TCP, Port: 8080, Tenant: "acme", Endpoint: "web1", TargetPort: 80}))
	if pm.Server != "s1" || pm.String() != "tcp/8080 of s1 -> acme/web1:80" {
		t.Fatalf("Expose = %+v (%s)", pm, pm)
	}
	if ev := next(t, ch); ev.Kind != Put || ev.PortMap == nil || *ev.PortMap != pm {
		t.Fatalf("watch event = %+v", ev)
	}
	// TCP and UDP are separate; another server's port 8080 is its own.
	must[PortMap](t)(s.Expose(ctx, PortMap{Proto: session.UDP, Port: 8080, Tenant: "acme", Endpoint: "web2", TargetPort: 53}))
	must[PortMap](t)(s.Expose(ctx, PortMap{Server: "s2", Proto: session.TCP, Port: 8080, Tenant: "acme", Endpoint: "web3", TargetPort: 80}))
	must[PortMap](t)(s.Expose(ctx, PortMap{Proto: session.TCP, Port: 443, Tenant: "acme", Endpoint: "web1", TargetPort: 8443}))

	for _, b := range []struct {
		pm   PortMap
		kind error
		want string
	}{
		{PortMap{Proto: session.TCP, Port: 8080, Tenant: "acme", Endpoint: "web2", TargetPort: 80}, ErrConflict, "port tcp/8080 of s1 is already mapped to acme/web1:80"},
		{PortMap{Proto: session.TCP, Port: 61440, Tenant: "acme", Endpoint: "web2", TargetPort: 80}, ErrInvalid, "port 61440 is in 61440-65535, the range NVI keeps for session keys"},
		{PortMap{Proto: session.ICMP, Port: 1, Tenant: "acme", Endpoint: "web2", TargetPort: 1}, ErrInvalid, "port maps are for tcp and udp, not icmp"},
		{PortMap{Proto: session.TCP, Tenant: "acme", Endpoint: "web2", TargetPort: 80}, ErrInvalid, "ports must be 1-65535"},
		{PortMap{Proto: session.TCP, Port: 81, Tenant: "acme", Endpoint: "nope", TargetPort: 80}, ErrNotFound, "endpoint acme/nope does not exist"},
		{PortMap{Proto: session.TCP, Port: 81, Tenant: "nope", Endpoint: "web1", TargetPort: 80}, ErrNotFound, "endpoint nope/web1 does not exist"},
		{PortMap{Server: "s2", Proto: session.TCP, Port: 81, Tenant: "acme", Endpoint: "web1", TargetPort: 80}, ErrInvalid, "endpoint acme/web1 lives on server s1, not s2"},
	} {
		_, err := s.Expose(ctx, b.pm)
		wantErr(t, err, b.kind, b.want)
	}

	list := func(server string) string {
		var out string
		for _, m := range must[[]PortMap](t)(s.PortMaps(ctx, server)) {
			out += fmt.Sprintf("%s/%s/%d ", m.Server, m.Proto, m.Port)
		}
		return out
	}
	// Numeric port order, TCP before UDP.
	if got := list(""); got != "s1/tcp/443 s1/tcp/8080 s1/udp/8080 s2/tcp/8080 " {
		t.Fatalf("PortMaps() = %q", got)
	}
	if got := list("s2"); got != "s2/tcp/8080 " {
		t.Fatalf("PortMaps(s2) = %q", got)
	}

	wantErr(t, s.Unexpose(ctx, "s1", session.TCP, 9999), ErrNotFound, "port tcp/9999 of s1 is not mapped")
	if err := s.Unexpose(ctx, "s1", session.UDP, 8080); err != nil {
		t.Fatal(err)
	}
	// Deleting an endpoint removes its port maps in the same transaction.
	if err := s.DeleteEndpoint(ctx, "acme", "web1"); err != nil {
		t.Fatal(err)
	}
	if got := list(""); got != "s2/tcp/8080 " {
		t.Fatalf("PortMaps after deleting web1 = %q", got)
	}
	// The watch reported every change; the deletes carry the old value.
	var deleted []string
	for len(deleted) < 3 {
		ev := next(t, ch)
		if ev.PortMap != nil && ev.Kind == Delete {
			deleted = append(deleted, ev.PortMap.String())
		}
	}
	slices.Sort(deleted)
	if want := []string{"tcp/443 of s1 -> acme/web1:8443", "tcp/8080 of s1 -> acme/web1:80", "udp/8080 of s1 -> acme/web2:53"}; !slices.Equal(deleted, want) {
		t.Fatalf("port map deletes = %v; want %v", deleted, want)
	}
}

// TestConcurrentExpose: many clients mapping the same port at once; one wins.
func TestConcurrentExpose(t *testing.T) {
	setup := newStore(t)
	addServer(t, setup, "s1", 1)
	addNetwork(t, setup, "acme", "web", "10.1.0.0/24")
	const n = 10
	for i := range n {
		must[Endpoint](t)(setup.CreateEndpoint(ctxT(t), Endpoint{Tenant: "acme", Network: "web", Name: fmt.Sprintf("w%d", i), Server: "s1"}))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		s := openOn(t, shared.Endpoints(), setup.Prefix())
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Expose(context.Background(), PortMap{Proto: session.TCP, Port: 8080, Tenant: "acme", Endpoint: fmt.Sprintf("w%d", i), TargetPort: 80})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	won := 0
	for err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if maps := must[[]PortMap](t)(setup.PortMaps(ctxT(t), "s1")); won != 1 || len(maps) != 1 {
		t.Fatalf("%d exposes won, %d maps stored; want 1 and 1", won, len(maps))
	}
}

func TestCheckPort(t *testing.T) {
	srv := Server{Name: "s1", AgentAddr: "192.0.2.1:7470", KeyRange: session.KeyRange{Base: 0xc000, Mask: 0xf000},
		Reserved: []PortRange{{22, 22}, {2379, 2380}}}
	tests := []struct {
		port uint16
		want string // "" = free
	}{
		{8080, ""},
		{61440, ""}, // not this server's key range
		{49152, "range server s1 keeps for session keys"},
		{53247, "range server s1 keeps for session keys"},
		{28672, "egress NAT"},
		{32767, "egress NAT"},
		{28671, ""},
		{32768, ""},
		{7470, "agent API port of server s1"},
		{22, "reserved on server s1"},
		{2380, "reserved on server s1 (2379-2380"},
		{0, "port 0"},
	}
	for _, tt := range tests {
		err := srv.CheckPort(tt.port)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckPort(%d) = %v; want free", tt.port, err)
		case tt.want != "" && (err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckPort(%d) = %v; want ErrInvalid mentioning %q", tt.port, err, tt.want)
		}
	}
	// A record from before key ranges were stored keeps the default.
	if err := (Server{Name: "old"}).CheckPort(61440); err == nil {
		t.Error("a record without a key range does not keep the default one")
	}
}

// TestExposeKeepsServerPorts is the audit's M1 turned around: port maps on
// the server's key range, the egress NAT range, the agent's port, its
// reserved ports and the directory's port are refused; a free port beside
// them is mapped.
func TestExposeKeepsServerPorts(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	reg, err := s.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01",
		AgentAddr: "192.0.2.1:7470", KeyRange: session.KeyRange{Base: 0xc000, Mask: 0xf000}, Reserved: []PortRange{{22, 22}}}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "w", Server: "s1"}))
	expose := func(port uint16) error {
		_, err := s.Expose(ctx, PortMap{Proto: session.TCP, Port: port, Tenant: "acme", Endpoint: "w", TargetPort: 80})
		return err
	}
	for port, want := range map[uint16]string{
		49152:       "range server s1 keeps for session keys",
		61440:       "range NVI keeps for session keys",
		28672:       "egress NAT",
		30000:       "egress NAT",
		7470:        "agent API port",
		22:          "reserved on server s1",
		etcdPort(t): "reserved on server s1",
	} {
		wantErr(t, expose(port), ErrInvalid, want)
	}
	if err := expose(8080); err != nil {
		t.Fatalf("a free port: %v", err)
	}
	wantErr(t, expose(8080), ErrConflict, "already mapped")
	if maps := must[[]PortMap](t)(s.PortMaps(ctx, "s1")); len(maps) != 1 || maps[0].Port != 8080 {
		t.Fatalf("port maps = %+v; want only 8080", maps)
	}
	// With its server gone, a workload's port cannot be checked: refused.
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, expose(8081), ErrNotFound, "server s1 of endpoint acme/w is not registered")
}
