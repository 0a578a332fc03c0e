package directory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"nvi/policy"
)

func TestTenantZones(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if a := must[Tenant](t)(s.CreateTenant(ctx, "acme")); a.Zone != 1 {
		t.Fatalf("first tenant's zone = %d; want 1", a.Zone)
	}
	addNetwork(t, s, "beta", "web", "10.1.0.0/24") // implicit tenant
	if z := must[uint16](t)(s.TenantZone(ctx, "beta")); z != 2 {
		t.Fatalf("implicit tenant's zone = %d; want 2", z)
	}
	// A second network of beta keeps its zone.
	addNetwork(t, s, "beta", "db", "10.2.0.0/24")
	if b := must[Tenant](t)(s.Tenant(ctx, "beta")); b.Zone != 2 {
		t.Fatalf("beta = %+v after a second network", b)
	}
	_, err := s.TenantZone(ctx, "nope")
	wantErr(t, err, ErrNotFound, "tenant nope does not exist")

	// A deleted tenant's zone is free again, and the lowest is taken.
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if c := must[Tenant](t)(s.CreateTenant(ctx, "gamma")); c.Zone != 1 {
		t.Fatalf("zone after delete = %d; want the freed 1", c.Zone)
	}

	// A tenant stored before zones existed gets one when first read.
	cli := s.Client()
	if _, err := cli.Put(ctx, s.k.tenant("old"), `{"name":"old"}`); err != nil {
		t.Fatal(err)
	}
	if l := must[[]Tenant](t)(s.Tenants(ctx)); len(l) != 3 || l[2].Name != "old" || l[2].Zone != 0 {
		t.Fatalf("Tenants = %+v", l)
	}
	if o := must[Tenant](t)(s.Tenant(ctx, "old")); o.Zone != 3 {
		t.Fatalf("old tenant's lazy zone = %d; want 3", o.Zone)
	}
	if z := must[uint16](t)(s.TenantZone(ctx, "old")); z != 3 {
		t.Fatalf("zone read again = %d", z)
	}
	resp, err := cli.Get(ctx, s.k.zone(3))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "old" {
		t.Fatalf("zone index = %v, %v", resp, err)
	}
	// Creating a network in it keeps that zone.
	addNetwork(t, s, "old", "web", "10.1.0.0/24")
	if z := must[uint16](t)(s.TenantZone(ctx, "old")); z != 3 {
		t.Fatalf("zone after network = %d", z)
	}
}

// TestDeleteTenantTakesPolicy: a tenant without networks goes together
// with its remaining policy records and its zone.
func TestDeleteTenantTakesPolicy(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	tn := must[Tenant](t)(s.CreateTenant(ctx, "acme"))
	must[policy.Group](t)(s.CreateGroup(ctx, "acme", "front"))
	must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Deny, From: policy.Selector{Kind: policy.AnyKind}, To: policy.Selector{Kind: policy.GroupKind, Name: "front"}}))
	c := NewCache(s, testLogger(t))
	runCache(t, c)
	must[policy.Policy](t)(c.LookupPolicy(ctx, "acme"))
	must[Tenant](t)(c.LookupTenant(ctx, "acme"))
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cached policy and tenant dropped", func() bool {
		_, perr := c.LookupPolicy(ctx, "acme")
		_, terr := c.LookupTenant(ctx, "acme")
		return errors.Is(perr, ErrNotFound) && errors.Is(terr, ErrNotFound)
	})
	for _, prefix := range []string{s.k.groups("acme"), s.k.rules("acme"), s.k.zone(tn.Zone)} {
		resp, err := s.Client().Get(ctx, prefix, withPrefix())
		if err != nil || resp.Count != 0 {
			t.Fatalf("%s left after the tenant was deleted: %v %v", prefix, resp.Kvs, err)
		}
	}
	_, err := s.Policy(ctx, "acme")
	wantErr(t, err, ErrNotFound, "tenant acme does not exist")
	_, err = s.CreateGroup(ctx, "acme", "front")
	wantErr(t, err, ErrNotFound, "no tenant acme")
}

// TestConcurrentTenantZones: tenants created at once, explicitly and by
// their first network, from separate clients, all get different zones.
func TestConcurrentTenantZones(t *testing.T) {
	t.Parallel()
	setup := newStore(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		s := openOn(t, shared.Endpoints(), setup.Prefix())
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("t%02d", i)
			var err error
			if i%2 == 0 {
				_, err = s.CreateTenant(context.Background(), name)
			} else {
				_, err = s.CreateNetwork(context.Background(), Network{Tenant: name, Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")})
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[uint16]string{}
	for _, tn := range must[[]Tenant](t)(setup.Tenants(ctxT(t))) {
		if tn.Zone < 1 || tn.Zone > n {
			t.Errorf("tenant %s has zone %d; want 1..%d", tn.Name, tn.Zone, n)
		}
		if other, dup := seen[tn.Zone]; dup {
			t.Fatalf("zone %d given to both %s and %s", tn.Zone, other, tn.Name)
		}
		seen[tn.Zone] = tn.Name
	}
	if len(seen) != n {
		t.Fatalf("%d tenants with zones; want %d", len(seen), n)
	}
}
