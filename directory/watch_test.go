package directory

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// next returns the next event from ch or fails after a few seconds.
func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
	}
	return Event{}
}

func TestWatch(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	rev := must[int64](t)(s.Revision(ctx))
	ch := s.Watch(ctx, rev+1)

	srv := addServer(t, s, "s1", 1)
	ev := next(t, ch)
	if ev.Kind != Put || ev.Server == nil || !reflect.DeepEqual(*ev.Server, srv) || ev.Revision <= rev {
		t.Fatalf("server event = %+v", ev)
	}
	n := addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	// One transaction: the network and its implicitly created tenant.
	ev1, ev2 := next(t, ch), next(t, ch)
	if ev1.Network == nil || *ev1.Network != n || ev2.Tenant == nil || ev2.Tenant.Name != "acme" || ev1.Revision != ev2.Revision {
		t.Fatalf("network events = %+v, %+v", ev1, ev2)
	}
	ep := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1", IfaceID: "x"}))
	// Index keys are not reported: the endpoint event is the only one.
	if ev = next(t, ch); ev.Kind != Put || ev.Endpoint == nil || *ev.Endpoint != ep {
		t.Fatalf("endpoint event = %+v", ev)
	}
	must[Endpoint](t)(s.UpdateEndpointPort(ctx, "acme", "a", 3))
	if ev = next(t, ch); ev.Kind != Put || ev.Endpoint.Port != 3 {
		t.Fatalf("update event = %+v", ev)
	}
	if err := s.DeleteEndpoint(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	// A delete carries the last value, address included.
	if ev = next(t, ch); ev.Kind != Delete || ev.Endpoint == nil || ev.Endpoint.IP != ep.IP || ev.Endpoint.Name != "a" {
		t.Fatalf("delete event = %+v", ev)
	}
	cancel()
	for range ch {
	}
}

// TestWatchAfterCompaction: a watch asked to start at a compacted revision
// re-lists and says so with a Reset carrying the full snapshot, then goes on.
func TestWatchAfterCompaction(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	addServer(t, s, "s1", 1)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	a := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))
	rev := must[int64](t)(s.Revision(ctx))
	if err := s.DeleteEndpoint(ctx, "acme", a.Name); err != nil {
		t.Fatal(err)
	}
	b := must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "b", Server: "s1"}))
	now := must[int64](t)(s.Revision(ctx))
	if _, err := s.cli.Compact(ctx, now); err != nil {
		t.Fatal(err)
	}

	ch := s.Watch(ctx, rev+1)
	ev := next(t, ch)
	if ev.Kind != Reset || ev.Revision < now {
		t.Fatalf("first event = %+v; want Reset at >= %d", ev, now)
	}
	var got []string
	for _, e := range ev.Snapshot {
		if e.Kind != Put {
			t.Fatalf("snapshot holds %v", e.Kind)
		}
		got = append(got, e.Key[len(s.Prefix()):])
	}
	want := []string{"endpoints/acme/b", "networks/acme/web", "servers/s1", "tenants/acme"}
	if len(got) != len(want) {
		t.Fatalf("snapshot = %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("snapshot = %v; want %v", got, want)
		}
	}
	// It carries on after the snapshot.
	if err := s.DeleteEndpoint(ctx, "acme", b.Name); err != nil {
		t.Fatal(err)
	}
	if ev = next(t, ch); ev.Kind != Delete || ev.Endpoint.Name != "b" {
		t.Fatalf("event after reset = %+v", ev)
	}
}

// TestWatchFromNow: revision 0 means "changes from now on".
func TestWatchFromNow(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	addServer(t, s, "old", 1)
	ch := s.Watch(ctx, 0)
	time.Sleep(100 * time.Millisecond) // let the watch be created
	addServer(t, s, "new", 2)
	if ev := next(t, ch); ev.Server == nil || ev.Server.Name != "new" || ev.Server.DataIP != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("event = %+v", ev)
	}
}
