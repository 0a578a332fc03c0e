package directory

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"nvi/session"
)

func TestValidateNameAndParseNetRef(t *testing.T) {
	for _, ok := range []string{"a", "acme", "web-1", "a_b.c", "0", strings.Repeat("a", 63)} {
		if err := ValidateName("tenant", ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "_a", ".a", "Acme", "a/b", "a b", "é", strings.Repeat("a", 64)} {
		if err := ValidateName("tenant", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v; want ErrInvalid", bad, err)
		}
	}
	tn, nn, err := ParseNetRef("acme/web")
	if err != nil || tn != "acme" || nn != "web" {
		t.Fatalf("ParseNetRef = %q, %q, %v", tn, nn, err)
	}
	for _, bad := range []string{"acme", "acme/", "/web", "acme/web/x", "Acme/web"} {
		_, _, err := ParseNetRef(bad)
		wantErr(t, err, ErrInvalid)
	}
	_, _, err = ParseNetRef("acme")
	wantErr(t, err, ErrInvalid, `network reference "acme" is not of the form TENANT/NET`)
}

func TestOpenUnreachable(t *testing.T) {
	// A port nobody listens on: connection refused, retried until the
	// dial timeout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String()
	l.Close()

	// A listener that accepts and never answers: a hung host.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()

	for ep, why := range map[string]string{refused: "connection refused", "http://" + silent.Addr().String(): "accepts connections but did not answer"} {
		start := time.Now()
		s, err := Open(context.Background(), Config{Endpoints: []string{ep}, DialTimeout: 500 * time.Millisecond, Logger: testLogger(t)})
		took := time.Since(start)
		if err == nil {
			s.Close()
			t.Fatalf("Open(%s) succeeded", ep)
		}
		wantErr(t, err, ErrUnavailable, "directory: etcd at ["+ep+"] unreachable: ", why)
		if took > 2*time.Second {
			t.Fatalf("Open(%s) took %v; want about the 500ms dial timeout", ep, took)
		}
		t.Logf("%s: %v after %v", ep, err, took)
	}

	_, err = Open(context.Background(), Config{})
	wantErr(t, err, ErrInvalid, "no etcd endpoints")
}

func TestServers(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	reg, err := s.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "AA:BB:CC:DD:EE:01", AgentAddr: "192.0.2.1:7100"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	want := Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "aa:bb:cc:dd:ee:01", Site: "default", AgentAddr: "192.0.2.1:7100", Role: "server",
		KeyRange: session.DefaultKeyRange, Reserved: []PortRange{{etcdPort(t), etcdPort(t)}}, Instance: hostInstance()}
	if got := must[Server](t)(s.Server(ctx, "s1")); !reflect.DeepEqual(got, want) {
		t.Fatalf("Server = %+v; want %+v", got, want)
	}
	gw := addServer(t, s, "gw", 9)
	gw2, err := s.RegisterServer(ctx, Server{Name: "gw", DataIP: gw.DataIP, DataMAC: gw.DataMAC, Site: "paris", Role: RoleGateway}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer gw2.Close()
	list := must[[]Server](t)(s.Servers(ctx))
	if len(list) != 2 || list[0].Name != "gw" || list[0].Role != RoleGateway || list[0].Site != "paris" || !reflect.DeepEqual(list[1], want) {
		t.Fatalf("Servers = %+v", list)
	}
	_, err = s.Server(ctx, "nope")
	wantErr(t, err, ErrNotFound, "server nope is not registered")

	// Close revokes: the record disappears at once.
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Server(ctx, "s1")
	wantErr(t, err, ErrNotFound)
	if err := reg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	bad := []struct {
		srv  Server
		ttl  time.Duration
		want string
	}{
		{Server{Name: "S1", DataIP: want.DataIP, DataMAC: want.DataMAC}, time.Minute, `server name "S1" is invalid`},
		{Server{Name: "s1", DataMAC: want.DataMAC}, time.Minute, "server s1 has no data address"},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: "zz"}, time.Minute, `server s1 data MAC "zz" is not a 6-byte MAC address`},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: "01:00:5e:00:00:01"}, time.Minute, "multicast"},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: want.DataMAC, Role: "router"}, time.Minute, `role "router"`},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: want.DataMAC, AgentAddr: "host:80"}, time.Minute, "is not ip:port"},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: want.DataMAC, Site: "Paris"}, time.Minute, `site name "Paris"`},
		{Server{Name: "s1", DataIP: want.DataIP, DataMAC: want.DataMAC}, 10 * time.Millisecond, "lease TTL"},
	}
	for _, b := range bad {
		_, err := s.RegisterServer(ctx, b.srv, b.ttl)
		wantErr(t, err, ErrInvalid, b.want)
	}
}

// TestServerLeaseExpiry: a server whose agent stops renewing (here: its
// context ends, as when the process dies) vanishes after its TTL.
func TestServerLeaseExpiry(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	_, err := s.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// While the agent lives, renewals keep the record past the TTL.
	time.Sleep(2500 * time.Millisecond)
	if _, err := s.Server(ctxT(t), "s1"); err != nil {
		t.Fatalf("record gone while renewed: %v", err)
	}
	cancel() // the agent dies without revoking
	deadline := time.Now().Add(6 * time.Second)
	for {
		_, err := s.Server(ctxT(t), "s1")
		if errors.Is(err, ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("record still there after the lease TTL: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServerReRegistersAfterLeaseLoss: when the lease disappears under the
// agent (revoked by someone, or expired during an outage), the keep-alive
// notices and registers again.
func TestServerReRegistersAfterLeaseLoss(t *testing.T) {
	s := newStore(t)
	reg, err := s.RegisterServer(ctxT(t), Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	reg.mu.Lock()
	lease := reg.lease
	reg.mu.Unlock()
	if _, err := s.cli.Revoke(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Server(ctxT(t), "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after revoke: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := s.Server(ctxT(t), "s1"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not register again after losing its lease")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTenants(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	must[Tenant](t)(s.CreateTenant(ctx, "acme"))
	_, err := s.CreateTenant(ctx, "acme")
	wantErr(t, err, ErrExists, "tenant acme already exists")
	_, err = s.CreateTenant(ctx, "Acme")
	wantErr(t, err, ErrInvalid)
	if got := must[Tenant](t)(s.Tenant(ctx, "acme")); got.Name != "acme" {
		t.Fatalf("Tenant = %+v", got)
	}
	_, err = s.Tenant(ctx, "nope")
	wantErr(t, err, ErrNotFound, "tenant nope does not exist")

	// CreateNetwork creates its tenant implicitly.
	addNetwork(t, s, "beta", "web", "10.1.0.0/24")
	list := must[[]Tenant](t)(s.Tenants(ctx))
	if len(list) != 2 || list[0].Name != "acme" || list[1].Name != "beta" {
		t.Fatalf("Tenants = %+v", list)
	}

	err = s.DeleteTenant(ctx, "beta")
	wantErr(t, err, ErrConflict, "tenant beta still has networks (beta/web); delete them first")
	if err := s.DeleteNetwork(ctx, "beta", "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteTenant(ctx, "beta"), ErrNotFound, "tenant beta does not exist")
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if list := must[[]Tenant](t)(s.Tenants(ctx)); len(list) != 0 {
		t.Fatalf("Tenants after delete = %+v", list)
	}
}

func TestNetworks(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	web := addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	if web.CIDR.String() != "10.1.0.0/24" || web.Gateway.String() != "10.1.0.1" {
		t.Fatalf("web = %+v", web)
	}
	// Host bits are masked off, and an explicit gateway is kept.
	db := must[Network](t)(s.CreateNetwork(ctx, Network{Tenant: "acme", Name: "db", CIDR: netip.MustParsePrefix("10.2.0.77/16"), Gateway: netip.MustParseAddr("10.2.255.254")}))
	if db.CIDR.String() != "10.2.0.0/16" || db.Gateway.String() != "10.2.255.254" {
		t.Fatalf("db = %+v", db)
	}
	// Another tenant may reuse the same CIDR.
	addNetwork(t, s, "other", "web", "10.1.0.0/24")

	if got := must[Network](t)(s.Network(ctx, "acme", "db")); got != db {
		t.Fatalf("Network = %+v; want %+v", got, db)
	}
	_, err := s.Network(ctx, "acme", "nope")
	wantErr(t, err, ErrNotFound, "network acme/nope does not exist")
	if l := must[[]Network](t)(s.Networks(ctx, "acme")); len(l) != 2 || l[0].Name != "db" || l[1].Name != "web" {
		t.Fatalf("Networks(acme) = %+v", l)
	}
	if l := must[[]Network](t)(s.Networks(ctx, "")); len(l) != 3 || l[2].Tenant != "other" {
		t.Fatalf("Networks(all) = %+v", l)
	}

	bad := []struct {
		n    Network
		kind error
		want string
	}{
		{Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.9.0.0/24")}, ErrExists, "network acme/web already exists"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.1.0.128/25")}, ErrConflict, "network acme/x (10.1.0.128/25) overlaps network acme/web (10.1.0.0/24)"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.0.0.0/8")}, ErrConflict, "overlaps"},
		{Network{Tenant: "acme", Name: "x"}, ErrInvalid, "network acme/x has no valid CIDR"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("fd00::/64")}, ErrInvalid, "is not IPv4"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.0.0.0/7")}, ErrInvalid, "prefix length must be between /8 and /30"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.9.0.0/31")}, ErrInvalid, "prefix length must be between /8 and /30"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.8.0.1")}, ErrInvalid, "network acme/x gateway 10.8.0.1 is outside 10.9.0.0/24"},
		{Network{Tenant: "acme", Name: "x", CIDR: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.255")}, ErrInvalid, "is the broadcast address of"},
		{Network{Tenant: "acme", Name: "X", CIDR: netip.MustParsePrefix("10.9.0.0/24")}, ErrInvalid, `network name "X"`},
		{Network{Tenant: "", Name: "x", CIDR: netip.MustParsePrefix("10.9.0.0/24")}, ErrInvalid, "tenant name is empty"},
	}
	for _, b := range bad {
		_, err := s.CreateNetwork(ctx, b.n)
		wantErr(t, err, b.kind, b.want)
	}

	if err := s.DeleteNetwork(ctx, "acme", "db"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteNetwork(ctx, "acme", "db"), ErrNotFound)
	// The CIDR is free again.
	addNetwork(t, s, "acme", "db2", "10.2.0.0/24")
}

// TestConcurrentOverlappingNetworks: of many creators racing with
// overlapping CIDRs in one tenant, exactly one wins.
func TestConcurrentOverlappingNetworks(t *testing.T) {
	s := newStore(t)
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := s.CreateNetwork(ctxT(t), Network{Tenant: "acme", Name: "n" + string(rune('a'+i)), CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i), 0}), 16)})
			errs <- err
		}()
	}
	won := 0
	for range n {
		if err := <-errs; err == nil {
			won++
		} else if !errors.Is(err, ErrConflict) {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d overlapping networks were created; want 1", won)
	}
}
