package directory

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/ipam"
)

// register registers server sN (data address 192.0.2.N) until ctx ends or
// the test does.
func register(t *testing.T, ctx context.Context, s *Store, n byte, ttl time.Duration) *Registration {
	t.Helper()
	reg, err := s.RegisterServer(ctx, Server{Name: fmt.Sprintf("s%d", n), DataIP: netip.AddrFrom4([4]byte{192, 0, 2, n}), DataMAC: fmt.Sprintf("02:00:00:00:00:%02x", n)}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return reg
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// leaseOf returns the lease a key is stored under (0: none or absent).
func leaseOf(t *testing.T, s *Store, key string) clientv3.LeaseID {
	t.Helper()
	resp, err := s.Client().Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func TestClaimBlock(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	r1, r2 := register(t, ctx, s, 1, 30*time.Second), register(t, ctx, s, 2, 30*time.Second)
	web := addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	if web.BlockBits != 28 {
		t.Fatalf("default BlockBits of a /24 = %d; want 28", web.BlockBits)
	}
	claim := func(reg *Registration, want string) {
		t.Helper()
		if b := must[netip.Prefix](t)(reg.ClaimBlock(ctx, "acme", "web")); b != pfx(want) {
			t.Fatalf("%s claimed %s; want %s", reg.Server().Name, b, want)
		}
	}
	claim(r1, "10.1.0.0/28")
	claim(r2, "10.1.0.16/28")
	claim(r1, "10.1.0.32/28")
	got := must[map[netip.Prefix]string](t)(s.Blocks(ctx, "acme", "web"))
	if len(got) != 3 || got[pfx("10.1.0.0/28")] != "s1" || got[pfx("10.1.0.16/28")] != "s2" || got[pfx("10.1.0.32/28")] != "s1" {
		t.Fatalf("Blocks = %v", got)
	}
	if bs := must[[]netip.Prefix](t)(r1.ServerBlocks(ctx, "acme", "web")); len(bs) != 2 || bs[0] != pfx("10.1.0.0/28") || bs[1] != pfx("10.1.0.32/28") {
		t.Fatalf("ServerBlocks(s1) = %v", bs)
	}

	// Release: only by the holder; the block is then the lowest free again.
	wantErr(t, r2.ReleaseBlock(ctx, "acme", "web", pfx("10.1.0.0/28")), ErrConflict, "block 10.1.0.0/28 of network acme/web is held by server s1, not s2")
	if err := r1.ReleaseBlock(ctx, "acme", "web", pfx("10.1.0.0/28")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, r1.ReleaseBlock(ctx, "acme", "web", pfx("10.1.0.0/28")), ErrNotFound, "is not held by any server")
	claim(r2, "10.1.0.0/28")

	// Exhaustion, and blocks without a usable address are never handed out.
	must[Network](t)(s.CreateNetwork(ctx, Network{Tenant: "acme", Name: "tiny", CIDR: pfx("10.8.0.0/30"), BlockBits: 32}))
	if b := must[netip.Prefix](t)(r1.ClaimBlock(ctx, "acme", "tiny")); b != pfx("10.8.0.2/32") {
		t.Fatalf("claimed %s in tiny; want 10.8.0.2/32 (.0 is the network, .1 the gateway, .3 broadcast)", b)
	}
	_, err := r2.ClaimBlock(ctx, "acme", "tiny")
	wantErr(t, err, ErrConflict, "network acme/tiny has no free block (every /32 block of 10.8.0.0/30 is held)")
	_, err = r1.ClaimBlock(ctx, "acme", "nope")
	wantErr(t, err, ErrNotFound, "network acme/nope does not exist")
	_, err = s.Blocks(ctx, "acme", "nope")
	wantErr(t, err, ErrNotFound, "network acme/nope does not exist")
	_, err = s.CreateNetwork(ctx, Network{Tenant: "acme", Name: "bad", CIDR: pfx("10.9.0.0/24"), BlockBits: 20})
	wantErr(t, err, ErrInvalid, "network acme/bad: block length /20 must be between the network's /24 and /32")

	// Deleting a network frees its blocks.
	if err := s.DeleteNetwork(ctx, "acme", "tiny"); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Client().Get(ctx, s.k.blocks("acme", "tiny"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("blocks of a deleted network: %v %v", resp, err)
	}
}

// agentAlloc allocates addresses the way an agent does: from its own
// blocks through an ipam.Pool, claiming a block when the pool is full,
// passing the address to CreateEndpoint and trying the next on a conflict.
type agentAlloc struct {
	s         *Store
	reg       *Registration
	mu        sync.Mutex
	pool      *ipam.Pool
	used      ipam.Set
	conflicts atomic.Int64
}

func newAgentAlloc(t *testing.T, s *Store, reg *Registration, n Network) *agentAlloc {
	pool, err := ipam.NewPool(n.CIDR, n.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	return &agentAlloc{s: s, reg: reg, pool: pool, used: ipam.Set{}}
}

func (a *agentAlloc) create(ctx context.Context, name string) (Endpoint, error) {
	for {
		a.mu.Lock()
		ip, err := a.pool.Next(a.used.Has)
		if errors.Is(err, ipam.ErrNeedBlock) {
			var b netip.Prefix
			if b, err = a.reg.ClaimBlock(ctx, "acme", "web"); err == nil {
				err = a.pool.Add(b)
			}
		} else if err == nil {
			a.used.Add(ip)
		}
		a.mu.Unlock()
		if err != nil {
			return Endpoint{}, err
		}
		if !ip.IsValid() {
			continue // a new block: ask the pool again
		}
		e, err := a.s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: name, Server: a.reg.Server().Name, IP: ip})
		if errors.Is(err, ErrConflict) {
			a.conflicts.Add(1)
			continue
		}
		return e, err
	}
}

func (a *agentAlloc) release(ctx context.Context, e Endpoint) error {
	if err := a.s.DeleteEndpoint(ctx, e.Tenant, e.Name); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.used, e.IP)
	a.mu.Unlock()
	return nil
}

// TestBlockAllocationConcurrent: three servers, each its own etcd client
// and registration, create hundreds of endpoints at once from their own
// blocks. No address is given twice, no server assigns from another's
// block, explicit addresses taken beforehand are skipped, and a released
// address is reused.
func TestBlockAllocationConcurrent(t *testing.T) {
	setup := newStore(t)
	ctx := ctxT(t)
	web := must[Network](t)(setup.CreateNetwork(ctx, Network{Tenant: "acme", Name: "web", CIDR: pfx("10.1.0.0/22"), BlockBits: 28}))
	var allocs []*agentAlloc
	for n := byte(1); n <= 3; n++ {
		s := openOn(t, shared.Endpoints(), setup.Prefix())
		allocs = append(allocs, newAgentAlloc(t, s, register(t, ctx, s, n, 30*time.Second), web))
	}
	// An operator's explicit addresses, inside blocks servers will claim.
	explicit := map[netip.Addr]bool{}
	for i, ip := range []string{"10.1.0.5", "10.1.0.20", "10.1.0.37", "10.1.0.100"} {
		e := must[Endpoint](t)(setup.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: fmt.Sprintf("manual%d", i), Server: "s1", IP: netip.MustParseAddr(ip)}))
		explicit[e.IP] = true
	}
	_, err := setup.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "late", Server: "s2", IP: netip.MustParseAddr("10.1.0.20")})
	wantErr(t, err, ErrConflict, "address 10.1.0.20 is already used by acme/manual1")

	const perWorker, workers = 25, 4 // per server: 100; in all: 300
	var wg sync.WaitGroup
	errs := make(chan error, 3*workers)
	for si, a := range allocs {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWorker {
					if _, err := a.create(context.Background(), fmt.Sprintf("s%d-w%d-%02d", si+1, w, i)); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	blocks := must[map[netip.Prefix]string](t)(setup.Blocks(ctx, "acme", "web"))
	holder := func(ip netip.Addr) string {
		for b, srv := range blocks {
			if b.Contains(ip) {
				return srv
			}
		}
		return ""
	}
	eps := must[[]Endpoint](t)(setup.Endpoints(ctx, Filter{Tenant: "acme"}))
	if len(eps) != 3*workers*perWorker+len(explicit) {
		t.Fatalf("%d endpoints; want %d", len(eps), 3*workers*perWorker+len(explicit))
	}
	seen := map[netip.Addr]string{}
	for _, e := range eps {
		if other, dup := seen[e.IP]; dup {
			t.Fatalf("address %s given to both %s and %s", e.IP, other, e.Name)
		}
		seen[e.IP] = e.Name
		if explicit[e.IP] {
			continue
		}
		if h := holder(e.IP); h != e.Server {
			t.Fatalf("%s on %s got %s from a block held by %q", e.Name, e.Server, e.IP, h)
		}
	}
	var conflicts int64
	for _, a := range allocs {
		conflicts += a.conflicts.Load()
	}
	t.Logf("%d blocks claimed for %d endpoints; %d explicit addresses met as conflicts", len(blocks), len(eps), conflicts)
	if conflicts == 0 {
		t.Fatal("no server met an explicitly taken address; the test did not exercise conflicts")
	}

	// Release and reuse: a deleted endpoint's address is handed out again.
	a := allocs[1]
	victim := must[Endpoint](t)(setup.Endpoint(ctx, "acme", "s2-w0-00"))
	if err := a.release(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if e := must[Endpoint](t)(a.create(ctx, "again")); e.IP != victim.IP {
		t.Fatalf("released %s, got %s", victim.IP, e.IP)
	}
}

// TestBlocksOfExpiredServer: the blocks of a server whose record expired
// are free again; another server takes them over, lowest first.
func TestBlocksOfExpiredServer(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	dying, die := context.WithCancel(ctxT(t))
	r1 := register(t, dying, s, 1, time.Second)
	r2 := register(t, ctxT(t), s, 2, 30*time.Second)
	b := must[netip.Prefix](t)(r1.ClaimBlock(ctxT(t), "acme", "web"))
	if got := must[netip.Prefix](t)(r2.ClaimBlock(ctxT(t), "acme", "web")); got == b {
		t.Fatalf("s2 claimed %s, held by the live s1", got)
	}
	die() // the agent dies without revoking
	eventually(t, "the dead server's blocks are free", func() bool {
		bs, err := s.Blocks(ctxT(t), "acme", "web")
		return err == nil && len(bs) == 1
	})
	if got := must[netip.Prefix](t)(r2.ClaimBlock(ctxT(t), "acme", "web")); got != b {
		t.Fatalf("s2 claimed %s; want the dead server's %s", got, b)
	}
	if bs := must[map[netip.Prefix]string](t)(s.Blocks(ctxT(t), "acme", "web")); bs[b] != "s2" {
		t.Fatalf("blocks after the take-over = %v", bs)
	}
}

// TestBlocksOutliveALapse: a registration that registers again under a new
// lease keeps the blocks nobody took meanwhile and forgets those another
// server took over while its record was gone; a restarted agent adopts its
// predecessor's blocks.
func TestBlocksOutliveALapse(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := ctxT(t)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	r1 := register(t, ctx, s, 1, 1500*time.Millisecond)
	r2 := register(t, ctx, s, 2, 30*time.Second)
	b1 := must[netip.Prefix](t)(r1.ClaimBlock(ctx, "acme", "web")) // 10.1.0.0/28
	b2 := must[netip.Prefix](t)(r1.ClaimBlock(ctx, "acme", "web")) // 10.1.0.16/28
	old := r1.Lease()
	if _, err := s.Client().Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	// While s1 is not registered, s2 takes the lowest free block: s1's first.
	if got := must[netip.Prefix](t)(r2.ClaimBlock(ctx, "acme", "web")); got != b1 {
		t.Fatalf("s2 claimed %s; want %s", got, b1)
	}
	eventually(t, "s1 registered again", func() bool { return r1.Lease() != old })
	got := must[map[netip.Prefix]string](t)(s.Blocks(ctx, "acme", "web"))
	if got[b1] != "s2" || got[b2] != "s1" {
		t.Fatalf("Blocks after re-registration = %v", got)
	}
	if bs := must[[]netip.Prefix](t)(r1.ServerBlocks(ctx, "acme", "web")); len(bs) != 1 || bs[0] != b2 {
		t.Fatalf("ServerBlocks(s1) = %v", bs)
	}
	r1.blockMu.Lock()
	_, kept1 := r1.blocks[BlockRef{"acme", "web", b1}]
	_, kept2 := r1.blocks[BlockRef{"acme", "web", b2}]
	r1.blockMu.Unlock()
	if kept1 || !kept2 {
		t.Fatalf("s1's registration holds b1=%v b2=%v; want only b2", kept1, kept2)
	}

	// A new process of s1 adopts the block its predecessor held.
	s1b := openOn(t, shared.Endpoints(), s.Prefix())
	again := register(t, ctx, s1b, 1, 30*time.Second)
	if bs := must[[]netip.Prefix](t)(again.ServerBlocks(ctx, "acme", "web")); len(bs) != 1 || bs[0] != b2 {
		t.Fatalf("adopted blocks = %v", bs)
	}
}
