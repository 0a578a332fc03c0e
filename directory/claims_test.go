package directory

import (
	"net/netip"
	"testing"
	"time"
)

// TestClaimsAreChecked: the claims made for one server touch only what is
// that server's, whatever the request names; what they refuse is left as
// it was.
func TestClaimsAreChecked(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := ctxT(t)
	register(t, ctx, s, 1, 30*time.Second)
	register(t, ctx, s, 2, 30*time.Second)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	c1, c2 := must[*Claims](t)(s.ClaimsFor("s1")), must[*Claims](t)(s.ClaimsFor("s2"))
	if _, err := s.ClaimsFor("not a name"); err == nil {
		t.Fatal("ClaimsFor accepted a malformed server name")
	}

	b1 := must[netip.Prefix](t)(c1.ClaimBlock(ctx, "acme", "web"))
	w1 := must[Endpoint](t)(c1.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "w1", IP: netip.MustParseAddr("10.1.0.2"), Server: "s1", IfaceID: "vm-1"}))

	// s2 asking in s1's name, or about s1's records.
	_, err := c2.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "w2", IP: netip.MustParseAddr("10.1.0.3"), Server: "s1"})
	wantErr(t, err, ErrDenied, "server s2 cannot create endpoint acme/w2 on server \"s1\"")
	_, err = c2.UpdateEndpointPort(ctx, "acme", "w1", 9)
	wantErr(t, err, ErrDenied, "server s2 cannot change endpoint acme/w1: it lives on server s1")
	wantErr(t, c2.DeleteEndpoint(ctx, "acme", "w1"), ErrDenied, "server s2 cannot delete endpoint acme/w1: it lives on server s1")
	wantErr(t, c2.ReleaseBlock(ctx, BlockRef{"acme", "web", b1}), ErrConflict, "is held by server s1, not s2")
	if lost := must[[]BlockRef](t)(c2.KeepBlocks(ctx, []BlockRef{{"acme", "web", b1}})); len(lost) != 1 {
		t.Fatalf("s2 kept s1's block: lost = %v", lost)
	}
	if bs := must[[]netip.Prefix](t)(c2.AdoptBlocks(ctx, "acme", "web")); len(bs) != 0 {
		t.Fatalf("s2 adopted %v", bs)
	}
	wantErr(t, c2.ReleaseBlock(ctx, BlockRef{"acme", "web", netip.MustParsePrefix("10.1.0.1/28")}), ErrInvalid, "no host bits")

	// Nothing of s1's changed.
	if got := must[Endpoint](t)(s.Endpoint(ctx, "acme", "w1")); got != w1 {
		t.Fatalf("s1's endpoint is now %+v; want %+v", got, w1)
	}
	if got := must[map[netip.Prefix]string](t)(s.Blocks(ctx, "acme", "web")); len(got) != 1 || got[b1] != "s1" {
		t.Fatalf("blocks = %v; want only s1's %s", got, b1)
	}

	// What is its own, s1 does; s2 too.
	must[Endpoint](t)(c1.UpdateEndpointPort(ctx, "acme", "w1", 7))
	if err := c1.DeleteEndpoint(ctx, "acme", "w1"); err != nil {
		t.Fatal(err)
	}
	b2 := must[netip.Prefix](t)(c2.ClaimBlock(ctx, "acme", "web"))
	if got := must[map[netip.Prefix]string](t)(s.Blocks(ctx, "acme", "web")); got[b2] != "s2" {
		t.Fatalf("blocks = %v; want %s held by s2", got, b2)
	}
	if err := c1.ReleaseBlock(ctx, BlockRef{"acme", "web", b1}); err != nil {
		t.Fatal(err)
	}

	// A server with no record holds no blocks.
	c9 := must[*Claims](t)(s.ClaimsFor("s9"))
	_, err = c9.ClaimBlock(ctx, "acme", "web")
	wantErr(t, err, ErrNotFound, "server s9 is not registered")
}
