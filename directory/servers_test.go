package directory

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func hostServer(name, ip, instance string) Server {
	return Server{Name: name, DataIP: netip.MustParseAddr(ip), DataMAC: "02:00:00:00:00:01", AgentAddr: ip + ":7470", Instance: instance}
}

// TestRegisterServerCAS: a name is held by one agent; only a restart of
// that agent (same host, same data address) or a record no live agent
// holds may replace it.
func TestRegisterServerCAS(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	first, err := s.RegisterServer(ctx, hostServer("s1", "192.0.2.1", "host-a"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	// A duplicate --name elsewhere is refused, naming the holder.
	_, err = s.RegisterServer(ctx, hostServer("s1", "192.0.2.7", "host-b"), 30*time.Second)
	wantErr(t, err, ErrConflict, "server name s1 is already registered by another agent at data address 192.0.2.1")
	// So is the same host claiming it with another data address.
	_, err = s.RegisterServer(ctx, hostServer("s1", "192.0.2.8", "host-a"), 30*time.Second)
	wantErr(t, err, ErrConflict, "192.0.2.1")
	if got := must[Server](t)(s.Server(ctx, "s1")); got.DataIP != netip.MustParseAddr("192.0.2.1") || got.Instance != "host-a" {
		t.Fatalf("record after refused claims = %+v", got)
	}

	// A restart of the same agent replaces its predecessor's record while
	// that one's lease still runs.
	again, err := s.RegisterServer(ctx, hostServer("s1", "192.0.2.1", "host-a"), 30*time.Second)
	if err != nil {
		t.Fatalf("restarted agent: %v", err)
	}
	defer again.Close()
	resp := must[*clientv3.GetResponse](t)(s.Client().Get(ctx, s.k.server("s1")))
	if clientv3.LeaseID(resp.Kvs[0].Lease) != again.Lease() {
		t.Fatal("the restarted agent's record is not under its lease")
	}
	// The predecessor, were it still running, does not take it back.
	wantErr(t, first.Reassert(ctx), ErrConflict)
	resp = must[*clientv3.GetResponse](t)(s.Client().Get(ctx, s.k.server("s1")))
	if clientv3.LeaseID(resp.Kvs[0].Lease) != again.Lease() {
		t.Fatal("the predecessor took the record back")
	}

	// A record with no lease (no live agent's) is replaced.
	if _, err := s.Client().Put(ctx, s.k.server("s2"), `{"name":"s2","dataIP":"192.0.2.66","dataMAC":"02:00:00:00:00:66"}`); err != nil {
		t.Fatal(err)
	}
	r2, err := s.RegisterServer(ctx, hostServer("s2", "192.0.2.2", "host-c"), 30*time.Second)
	if err != nil {
		t.Fatalf("replacing a leaseless record: %v", err)
	}
	defer r2.Close()
	if got := must[Server](t)(s.Server(ctx, "s2")); got.DataIP != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("s2 = %+v", got)
	}
}

// TestReassert: the record is put back when it vanishes or is replaced by
// a leaseless one while the lease lives (by the keep-alive on its own), and
// not fought over when another live agent holds it.
func TestReassert(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	reg, err := s.RegisterServer(ctx, hostServer("s1", "192.0.2.1", "host-a"), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	raw := s.Client()
	dataIP := func() netip.Addr {
		r, err := s.Server(ctx, "s1")
		if err != nil {
			return netip.Addr{}
		}
		return r.DataIP
	}
	// Deleted behind its back: the keep-alive puts it back within a renewal.
	if _, err := raw.Delete(ctx, s.k.server("s1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted record to come back", func() bool { return dataIP() == netip.MustParseAddr("192.0.2.1") })

	// Overwritten without a lease (the audit's forged record): put back.
	if _, err := raw.Put(ctx, s.k.server("s1"), `{"name":"s1","dataIP":"203.0.113.66","dataMAC":"02:00:00:00:00:66"}`); err != nil {
		t.Fatal(err)
	}
	if err := reg.Reassert(ctx); err != nil {
		t.Fatal(err)
	}
	if got := dataIP(); got != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("after Reassert the record points at %v", got)
	}

	// Held by another agent under a live lease: Reassert says so and
	// leaves it.
	lease := must[*clientv3.LeaseGrantResponse](t)(raw.Grant(ctx, 30))
	if _, err := raw.Put(ctx, s.k.server("s1"), mustJSON(hostServer("s1", "192.0.2.9", "host-z")), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	err = reg.Reassert(ctx)
	wantErr(t, err, ErrConflict, "192.0.2.9")
	if got := dataIP(); got != netip.MustParseAddr("192.0.2.9") {
		t.Fatalf("Reassert fought over a live agent's record: %v", got)
	}
	if _, err := raw.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	// Once that agent's lease is gone, the keep-alive takes the name back.
	eventually(t, "the record to come back after the other lease ended", func() bool { return dataIP() == netip.MustParseAddr("192.0.2.1") })
	if errors.Is(reg.Reassert(ctx), ErrConflict) {
		t.Fatal("still in conflict")
	}
}
