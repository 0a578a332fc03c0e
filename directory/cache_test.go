package directory

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"nvi/policy"
)

// recorder collects OnChange events.
type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) add(ev Event) { r.mu.Lock(); r.evs = append(r.evs, ev); r.mu.Unlock() }

// waitFor polls until some recorded event satisfies ok.
func (r *recorder) waitFor(t *testing.T, what string, ok func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, ev := range r.evs {
			if ok(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event within 5s", what)
	return Event{}
}

// eventually polls cond for a few seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 5s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runCache starts c.Run until the test ends (or stop is called).
func runCache(t *testing.T, c *Cache) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	// Wait until the watch is established so that tests do not race it.
	eventually(t, "cache watch start", func() bool { c.mu.RLock(); defer c.mu.RUnlock(); return c.watching })
	return stop
}

func TestCacheFollowsWatch(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	reg, err := s.RegisterServer(ctx, Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	a := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))

	c := NewCache(s, testLogger(t))
	rec := &recorder{}
	c.OnChange(rec.add)
	runCache(t, c)

	// A miss reads etcd once; hits do not.
	if got := must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", a.IP)); got != a {
		t.Fatalf("LookupEndpoint = %+v", got)
	}
	must[Server](t)(c.LookupServer(ctx, "s1"))
	must[Network](t)(c.LookupNetwork(ctx, "acme", "web"))
	reads := c.reads.Load()
	for range 100 {
		must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", a.IP))
		must[Server](t)(c.LookupServer(ctx, "s1"))
		must[Network](t)(c.LookupNetwork(ctx, "acme", "web"))
	}
	if c.reads.Load() != reads {
		t.Fatalf("hits read etcd: %d reads, want %d", c.reads.Load(), reads)
	}

	// Updates reach the cached entry.
	must[Endpoint](t)(s.UpdateEndpointPort(ctx, "acme", "a", 42))
	eventually(t, "port update in cache", func() bool {
		e, err := c.LookupEndpoint(ctx, "acme", a.IP)
		return err == nil && e.Port == 42
	})
	if c.reads.Load() != reads {
		t.Fatal("the update was fetched instead of watched")
	}

	// A deleted endpoint is evicted and subscribers hear of it.
	if err := s.DeleteEndpoint(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	del := rec.waitFor(t, "endpoint delete", func(ev Event) bool { return ev.Kind == Delete && ev.Endpoint != nil })
	if del.Endpoint.IP != a.IP {
		t.Fatalf("delete event lacks the address: %+v", del.Endpoint)
	}
	_, err = c.LookupEndpoint(ctx, "acme", a.IP)
	wantErr(t, err, ErrNotFound, "no endpoint has address 10.1.0.2 in tenant acme")

	// So is a server whose agent goes away.
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "server delete", func(ev Event) bool { return ev.Kind == Delete && ev.Server != nil && ev.Server.Name == "s1" })
	_, err = c.LookupServer(ctx, "s1")
	wantErr(t, err, ErrNotFound)

	// A network updated or deleted behind the cache's back.
	if err := s.DeleteNetwork(ctx, "acme", "web"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "network eviction", func() bool {
		_, err := c.LookupNetwork(ctx, "acme", "web")
		return errors.Is(err, ErrNotFound)
	})
}

func TestCacheNegative(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	c := NewCache(s, testLogger(t), WithNegativeTTL(300*time.Millisecond))
	runCache(t, c)

	ip := netip.MustParseAddr("10.1.0.9")
	// A flood of concurrent look-ups of an absent address: one etcd read.
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.LookupEndpoint(ctx, "acme", ip)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("LookupEndpoint = %v; want ErrNotFound", err)
			}
		}()
	}
	wg.Wait()
	for range 1000 {
		c.LookupEndpoint(ctx, "acme", ip)
	}
	if n := c.reads.Load(); n != 1 {
		t.Fatalf("%d etcd reads for a flood toward one absent address; want 1", n)
	}
	// After the TTL, the next look-up asks again.
	time.Sleep(350 * time.Millisecond)
	c.LookupEndpoint(ctx, "acme", ip)
	if n := c.reads.Load(); n != 2 {
		t.Fatalf("%d reads after the negative TTL; want 2", n)
	}

	// An endpoint that appears clears the negative entry at once (via the
	// watch), not only after the TTL.
	long := NewCache(s, testLogger(t), WithNegativeTTL(time.Hour))
	runCache(t, long)
	_, err := long.LookupEndpoint(ctx, "acme", ip)
	wantErr(t, err, ErrNotFound)
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "late", Server: "s1", IP: ip}))
	eventually(t, "negative entry cleared", func() bool {
		e, err := long.LookupEndpoint(ctx, "acme", ip)
		return err == nil && e.Name == "late"
	})

	// Without negative caching every miss reads.
	none := NewCache(s, testLogger(t), WithNegativeTTL(0))
	for range 3 {
		none.LookupServer(ctx, "s9")
	}
	if n := none.reads.Load(); n != 3 {
		t.Fatalf("%d reads with negative caching off; want 3", n)
	}
}

// TestCacheReconcilesAfterCompaction: changes made while the cache's watch
// was down, with their history compacted away, still reach the cache and its
// subscribers when it runs again.
func TestCacheReconcilesAfterCompaction(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	a := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))
	b := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "b", Server: "s1"}))

	c := NewCache(s, testLogger(t))
	rec := &recorder{}
	c.OnChange(rec.add)
	stop := runCache(t, c)
	must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", a.IP))
	must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", b.IP))
	must[policy.Policy](t)(c.LookupPolicy(ctx, "acme"))
	stop()
	must[policy.Group](t)(s.CreateGroup(ctx, "acme", "front"))

	if err := s.DeleteEndpoint(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	must[Endpoint](t)(s.UpdateEndpointPort(ctx, "acme", "b", 9))
	if _, err := s.cli.Compact(ctx, must[int64](t)(s.Revision(ctx))); err != nil {
		t.Fatal(err)
	}

	runCache(t, c)
	rec.waitFor(t, "reset", func(ev Event) bool { return ev.Kind == Reset })
	rec.waitFor(t, "synthesized delete of a", func(ev Event) bool {
		return ev.Kind == Delete && ev.Endpoint != nil && ev.Endpoint.Name == "a" && ev.Endpoint.IP == a.IP
	})
	rec.waitFor(t, "synthesized update of b", func(ev Event) bool {
		return ev.Kind == Put && ev.Endpoint != nil && ev.Endpoint.Name == "b" && ev.Endpoint.Port == 9
	})
	rec.waitFor(t, "synthesized policy change", func(ev Event) bool {
		return ev.Kind == Put && ev.Policy != nil && ev.Policy.Tenant == "acme"
	})
	if p := must[policy.Policy](t)(c.LookupPolicy(ctx, "acme")); len(p.Groups) != 1 {
		t.Fatalf("policy after reconcile = %+v", p)
	}
	reads := c.reads.Load()
	if e := must[Endpoint](t)(c.LookupEndpoint(ctx, "acme", b.IP)); e.Port != 9 {
		t.Fatalf("b after reconcile = %+v", e)
	}
	if c.reads.Load() != reads {
		t.Fatal("b was re-read instead of reconciled")
	}
	_, err := c.LookupEndpoint(ctx, "acme", a.IP)
	wantErr(t, err, ErrNotFound)
}
