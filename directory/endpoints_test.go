package directory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"nvi/ipam"
)

func TestEndpoints(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addServer(t, s, "s2", 2)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	addNetwork(t, s, "acme", "db", "10.2.0.0/24")
	addNetwork(t, s, "other", "web", "10.1.0.0/24")

	// Automatic addresses: lowest free host, skipping the gateway.
	a := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))
	if a.IP.String() != "10.1.0.2" {
		t.Fatalf("first automatic address = %s; want 10.1.0.2", a.IP)
	}
	if wantMAC, _ := ipam.MACFor("acme", a.IP); a.MAC != wantMAC {
		t.Fatalf("MAC = %s; want derived %s", a.MAC, wantMAC)
	}
	// An explicit address, an explicit MAC and an iface-id.
	b := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "b", Server: "s2",
		IP: netip.MustParseAddr("10.1.0.3"), MAC: "52:54:00:AB:CD:EF", IfaceID: "vm-b-eth0"}))
	if b.MAC != "52:54:00:ab:cd:ef" {
		t.Fatalf("MAC not normalised: %s", b.MAC)
	}
	c := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "c", Server: "s1"}))
	if c.IP.String() != "10.1.0.4" {
		t.Fatalf("third address = %s; want 10.1.0.4", c.IP)
	}
	// The same address in another tenant is fine.
	o := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "other", Network: "web", Name: "a", Server: "s1", IP: a.IP}))
	d := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "db", Name: "d", Server: "s2"}))

	if got := must[Endpoint](t)(s.Endpoint(ctx, "acme", "b")); got != b {
		t.Fatalf("Endpoint = %+v; want %+v", got, b)
	}
	if got := must[Endpoint](t)(s.EndpointByIP(ctx, "acme", a.IP)); got != a {
		t.Fatalf("EndpointByIP(acme) = %+v; want %+v", got, a)
	}
	if got := must[Endpoint](t)(s.EndpointByIP(ctx, "other", a.IP)); got != o {
		t.Fatalf("EndpointByIP(other) = %+v; want %+v", got, o)
	}
	if got := must[Endpoint](t)(s.EndpointByIfaceID(ctx, "vm-b-eth0")); got != b {
		t.Fatalf("EndpointByIfaceID = %+v", got)
	}
	_, err := s.EndpointByIP(ctx, "acme", netip.MustParseAddr("10.1.0.99"))
	wantErr(t, err, ErrNotFound, "no endpoint has address 10.1.0.99 in tenant acme")
	_, err = s.EndpointByIfaceID(ctx, "nope")
	wantErr(t, err, ErrNotFound, "no endpoint has iface-id nope")
	_, err = s.Endpoint(ctx, "acme", "nope")
	wantErr(t, err, ErrNotFound, "endpoint acme/nope does not exist")

	names := func(es []Endpoint) string {
		var ns []string
		for _, e := range es {
			ns = append(ns, e.Ref())
		}
		return strings.Join(ns, " ")
	}
	for _, tc := range []struct {
		f    Filter
		want string
	}{
		{Filter{}, "acme/a acme/b acme/c acme/d other/a"},
		{Filter{Tenant: "acme"}, "acme/a acme/b acme/c acme/d"},
		{Filter{Tenant: "acme", Network: "web"}, "acme/a acme/b acme/c"},
		{Filter{Server: "s2"}, "acme/b acme/d"},
		{Filter{Tenant: "acme", Network: "web", Server: "s1"}, "acme/a acme/c"},
		{Filter{Tenant: "nobody"}, ""},
	} {
		if got := names(must[[]Endpoint](t)(s.Endpoints(ctx, tc.f))); got != tc.want {
			t.Errorf("Endpoints(%+v) = %q; want %q", tc.f, got, tc.want)
		}
	}

	// Binding the port.
	up := must[Endpoint](t)(s.UpdateEndpointPort(ctx, "acme", "a", 7))
	if up.Port != 7 || must[Endpoint](t)(s.Endpoint(ctx, "acme", "a")).Port != 7 {
		t.Fatalf("port not updated: %+v", up)
	}
	_, err = s.UpdateEndpointPort(ctx, "acme", "nope", 7)
	wantErr(t, err, ErrNotFound)

	// Deleting frees the address (reused as the lowest free one) and the
	// iface-id.
	if err := s.DeleteEndpoint(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteEndpoint(ctx, "acme", "a"), ErrNotFound, "endpoint acme/a does not exist")
	_, err = s.EndpointByIP(ctx, "acme", a.IP)
	wantErr(t, err, ErrNotFound)
	if e := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "e", Server: "s1"})); e.IP != a.IP {
		t.Fatalf("freed address not reused: got %s, want %s", e.IP, a.IP)
	}
	if err := s.DeleteEndpoint(ctx, "acme", "b"); err != nil {
		t.Fatal(err)
	}
	_, err = s.EndpointByIfaceID(ctx, "vm-b-eth0")
	wantErr(t, err, ErrNotFound)
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "b2", Server: "s1", IfaceID: "vm-b-eth0"}))

	// A network with endpoints cannot go; once empty it can.
	err = s.DeleteNetwork(ctx, "acme", "db")
	wantErr(t, err, ErrConflict, "network acme/db still has endpoints (acme/d); delete them first")
	if err := s.DeleteEndpoint(ctx, "acme", d.Name); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNetwork(ctx, "acme", "db"); err != nil {
		t.Fatal(err)
	}
}

func TestEndpointValidation(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	addNetwork(t, s, "acme", "tiny", "10.3.0.0/30")
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "db", Server: "s1", IP: netip.MustParseAddr("10.1.0.5"), IfaceID: "port-db"}))

	ip := netip.MustParseAddr
	derived, _ := ipam.MACFor("acme", ip("10.1.0.9"))
	for _, tc := range []struct {
		name string
		e    Endpoint
		kind error
		want string
	}{
		{"outside", Endpoint{Network: "web", Name: "x", IP: ip("10.2.0.5")}, ErrInvalid, "address 10.2.0.5 is outside network acme/web (10.1.0.0/24)"},
		{"network address", Endpoint{Network: "web", Name: "x", IP: ip("10.1.0.0")}, ErrInvalid, "address 10.1.0.0 is the network address of network acme/web"},
		{"broadcast", Endpoint{Network: "web", Name: "x", IP: ip("10.1.0.255")}, ErrInvalid, "address 10.1.0.255 is the broadcast address of network acme/web"},
		{"gateway", Endpoint{Network: "web", Name: "x", IP: ip("10.1.0.1")}, ErrInvalid, "address 10.1.0.1 is the gateway of network acme/web"},
		{"ipv6", Endpoint{Network: "web", Name: "x", IP: ip("fd00::5")}, ErrInvalid, "is not IPv4"},
		{"duplicate address", Endpoint{Network: "web", Name: "x", IP: ip("10.1.0.5")}, ErrConflict, "address 10.1.0.5 is already used by acme/db"},
		{"duplicate name", Endpoint{Network: "web", Name: "db"}, ErrExists, "endpoint acme/db already exists"},
		{"duplicate name other address", Endpoint{Network: "web", Name: "db", IP: ip("10.1.0.6")}, ErrExists, "endpoint acme/db already exists"},
		{"duplicate iface-id", Endpoint{Network: "web", Name: "x", IfaceID: "port-db"}, ErrExists, "iface-id port-db is already used by acme/db"},
		{"unknown network", Endpoint{Network: "nope", Name: "x"}, ErrNotFound, "network acme/nope does not exist"},
		{"unknown server", Endpoint{Network: "web", Name: "x", Server: "s9"}, ErrNotFound, "server s9 is not registered"},
		{"bad name", Endpoint{Network: "web", Name: "X"}, ErrInvalid, `endpoint name "X"`},
		{"bad MAC", Endpoint{Network: "web", Name: "x", MAC: "nope"}, ErrInvalid, `endpoint acme/x MAC "nope" is not a 6-byte MAC address`},
		{"multicast MAC", Endpoint{Network: "web", Name: "x", MAC: "01:00:5e:00:00:01"}, ErrInvalid, "multicast"},
		{"MAC in derived range", Endpoint{Network: "web", Name: "x", IP: ip("10.1.0.9"), MAC: "0a:00:00:00:00:01"}, ErrInvalid, "in the range NVI derives MACs from"},
		{"bad iface-id", Endpoint{Network: "web", Name: "x", IfaceID: "a b"}, ErrInvalid, "iface-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.e
			e.Tenant = "acme"
			if e.Server == "" {
				e.Server = "s1"
			}
			_, err := s.CreateEndpoint(ctx, e)
			wantErr(t, err, tc.kind, tc.want)
		})
	}
	// The derived MAC itself may be given explicitly.
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "y", Server: "s1", IP: ip("10.1.0.9"), MAC: derived}))

	// Exhaustion: a /30 has two hosts, one of them the gateway.
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "tiny", Name: "t1", Server: "s1"}))
	_, err := s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "tiny", Name: "t2", Server: "s1"})
	wantErr(t, err, ErrConflict, "network acme/tiny (10.3.0.0/30) has no free address")
}

// TestConcurrentAllocation: 8 goroutines, each with its own etcd client (as
// separate agents would be), create 200 endpoints with automatic addresses
// in one network; no address may be handed out twice.
func TestConcurrentAllocation(t *testing.T) {
	setup := newStore(t)
	addServer(t, setup, "s1", 1)
	addNetwork(t, setup, "acme", "web", "10.1.0.0/24")
	const workers, total = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for w := range workers {
		s := openOn(t, shared.Endpoints(), setup.Prefix())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				_, err := s.CreateEndpoint(context.Background(), Endpoint{Tenant: "acme", Network: "web", Name: fmt.Sprintf("e%03d", i), Server: "s1"})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eps := must[[]Endpoint](t)(setup.Endpoints(ctxT(t), Filter{Tenant: "acme"}))
	if len(eps) != total {
		t.Fatalf("%d endpoints stored; want %d", len(eps), total)
	}
	seen := map[netip.Addr]string{}
	for _, e := range eps {
		if other, dup := seen[e.IP]; dup {
			t.Fatalf("address %s handed to both %s and %s", e.IP, other, e.Name)
		}
		seen[e.IP] = e.Name
	}
	// Lowest-first allocation fills 10.1.0.2 .. 10.1.0.201 without holes.
	for i := 2; i < total+2; i++ {
		if _, ok := seen[netip.AddrFrom4([4]byte{10, 1, 0, byte(i)})]; !ok {
			t.Fatalf("address 10.1.0.%d was skipped", i)
		}
	}
}

// TestDeleteNetworkRacesEndpointCreation: a network is never deleted while
// an endpoint is being created in it; one of the two must lose.
func TestDeleteNetworkRacesEndpointCreation(t *testing.T) {
	s := newStore(t)
	addServer(t, s, "s1", 1)
	for i := range 20 {
		net := fmt.Sprintf("n%d", i)
		addNetwork(t, s, "acme", net, fmt.Sprintf("10.%d.0.0/24", i+1))
		var createErr, deleteErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, createErr = s.CreateEndpoint(ctxT(t), Endpoint{Tenant: "acme", Network: net, Name: "e" + net, Server: "s1"})
		}()
		go func() {
			defer wg.Done()
			deleteErr = s.DeleteNetwork(ctxT(t), "acme", net)
		}()
		wg.Wait()
		if (createErr == nil) == (deleteErr == nil) {
			t.Fatalf("round %d: create=%v delete=%v; want exactly one to succeed", i, createErr, deleteErr)
		}
		if createErr != nil && !errors.Is(createErr, ErrNotFound) {
			t.Fatalf("create lost with %v; want ErrNotFound", createErr)
		}
		if deleteErr != nil && !errors.Is(deleteErr, ErrConflict) {
			t.Fatalf("delete lost with %v; want ErrConflict", deleteErr)
		}
	}
}
