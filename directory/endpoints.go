package directory

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/ipam"
)

// Filter selects endpoints; empty fields match everything.
type Filter struct {
	Tenant, Network, Server string
}

// CreateEndpoint stores a workload endpoint. The network must exist and the
// server must be registered. A zero IP asks for the lowest free host address
// of the network; an explicit one must be usable and free. A taken explicit
// address fails with an error wrapping ErrConflict ("address 10.1.0.5 is
// already used by acme/db"): an agent allocating from its blocks
// ([Store.ClaimBlock]) marks it used and tries its pool's next address.
//
// The endpoint key, the address index and (with an IfaceID) the iface index
// are written in ONE transaction that compares each of them absent and the
// network and server unchanged, so an address is never handed out twice, even
// to concurrent creators in different processes. An automatic allocation
// that loses the race re-reads and tries the next lowest address, a bounded
// number of times.
func (s *Store) CreateEndpoint(ctx context.Context, e Endpoint) (Endpoint, error) {
	e, err := e.validate()
	if err != nil {
		return Endpoint{}, err
	}
	auto := !e.IP.IsValid()
	wantMAC := e.MAC
	for attempt := range casRetries {
		if attempt > 0 {
			// Spread out creators that keep picking the same address.
			if err := sleepCtx(ctx, time.Duration(rand.IntN(attempt*2+1))*time.Millisecond); err != nil {
				return Endpoint{}, errorf(ErrUnavailable, "creating endpoint %s: %w", e.Ref(), err)
			}
		}
		nr, err := s.network(ctx, e.Tenant, e.Network)
		if err != nil {
			return Endpoint{}, err
		}
		n := nr.val
		if _, err := s.server(ctx, e.Server); err != nil {
			return Endpoint{}, err
		}
		if auto {
			if e.IP, err = s.freeAddr(ctx, n); err != nil {
				return Endpoint{}, err
			}
		} else if r := ipam.Classify(n.CIDR, n.Gateway, e.IP); r != ipam.OK {
			return Endpoint{}, errorf(ErrInvalid, "address %s is %s network %s (%s)", e.IP, r, n.Ref(), n.CIDR)
		}
		e.MAC = wantMAC
		if err := e.checkMAC(); err != nil {
			return Endpoint{}, err
		}

		epKey, addrKey, srvKey := s.k.endpoint(e.Tenant, e.Name), s.k.addr(e.Tenant, e.IP), s.k.server(e.Server)
		cmps := []clientv3.Cmp{
			absent(epKey), absent(addrKey),
			unchanged(s.k.network(e.Tenant, e.Network), nr.modRev),
			clientv3.Compare(clientv3.CreateRevision(srvKey), ">", 0),
		}
		puts := []clientv3.Op{clientv3.OpPut(epKey, mustJSON(e)), clientv3.OpPut(addrKey, e.Name)}
		gets := []clientv3.Op{clientv3.OpGet(epKey, clientv3.WithCountOnly()), clientv3.OpGet(addrKey)}
		if e.IfaceID != "" {
			ik := s.k.iface(e.IfaceID)
			cmps = append(cmps, absent(ik))
			puts = append(puts, clientv3.OpPut(ik, e.Ref()))
			gets = append(gets, clientv3.OpGet(ik))
		}
		tctx, cancel := s.ctx(ctx)
		resp, err := s.cli.Txn(tctx).If(cmps...).Then(puts...).Else(gets...).Commit()
		cancel()
		if err != nil {
			return Endpoint{}, unavailable("creating endpoint "+e.Ref(), err)
		}
		if resp.Succeeded {
			return e, nil
		}
		// Find out which guard failed, from the reads done in the same
		// transaction.
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return Endpoint{}, errorf(ErrExists, "endpoint %s already exists", e.Ref())
		}
		if len(resp.Responses) > 2 {
			if kvs := resp.Responses[2].GetResponseRange().Kvs; len(kvs) > 0 {
				return Endpoint{}, errorf(ErrExists, "iface-id %s is already used by %s", e.IfaceID, kvs[0].Value)
			}
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 && !auto {
			return Endpoint{}, errorf(ErrConflict, "address %s is already used by %s/%s", e.IP, e.Tenant, kvs[0].Value)
		}
		// Lost an allocation race, or the network or server changed: the
		// next attempt re-reads all of them.
	}
	return Endpoint{}, errorf(ErrConflict, "creating endpoint %s: gave up after %d attempts: network %s is too busy", e.Ref(), casRetries, e.Tenant+"/"+e.Network)
}

// freeAddr picks the lowest host address of n that no endpoint of the
// tenant uses and that is not the gateway.
func (s *Store) freeAddr(ctx context.Context, n Network) (netip.Addr, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	prefix := s.k.addrs(n.Tenant)
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return netip.Addr{}, unavailable("listing addresses of tenant "+n.Tenant, err)
	}
	used := ipam.Set{}
	used.Add(n.Gateway)
	for _, kv := range resp.Kvs {
		a, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), prefix))
		if err != nil {
			s.warnOnce(string(kv.Key), kv.ModRevision, errorf(ErrInvalid, "not an address index key: %w", err))
			continue
		}
		if n.CIDR.Contains(a) {
			used.Add(a)
		}
	}
	a, err := ipam.FirstFree(n.CIDR, used.Has)
	if err != nil {
		return netip.Addr{}, errorf(ErrConflict, "network %s (%s) has no free address", n.Ref(), n.CIDR)
	}
	return a, nil
}

// Endpoint reads one endpoint by name.
func (s *Store) Endpoint(ctx context.Context, tenant, name string) (Endpoint, error) {
	r, err := s.endpoint(ctx, tenant, name)
	return r.val, err
}

func (s *Store) endpoint(ctx context.Context, tenant, name string) (record[Endpoint], error) {
	if err := ValidateName("tenant", tenant); err != nil {
		return record[Endpoint]{}, err
	}
	if err := ValidateName("endpoint", name); err != nil {
		return record[Endpoint]{}, err
	}
	r, found, err := getJSON[Endpoint](ctx, s, "reading endpoint "+tenant+"/"+name, s.k.endpoint(tenant, name))
	if err == nil && !found {
		err = errorf(ErrNotFound, "endpoint %s/%s does not exist", tenant, name)
	}
	return r, err
}

// EndpointByIP finds the endpoint holding ip within tenant, through the
// address index.
func (s *Store) EndpointByIP(ctx context.Context, tenant string, ip netip.Addr) (Endpoint, error) {
	r, err := s.endpointByIP(ctx, tenant, ip)
	return r.val, err
}

func (s *Store) endpointByIP(ctx context.Context, tenant string, ip netip.Addr) (record[Endpoint], error) {
	if err := ValidateName("tenant", tenant); err != nil {
		return record[Endpoint]{}, err
	}
	if !ip.IsValid() {
		return record[Endpoint]{}, errorf(ErrInvalid, "no address given to look up in tenant %s", tenant)
	}
	ip = ip.Unmap()
	return s.viaIndex(ctx, "looking up address "+ip.String()+" in tenant "+tenant, s.k.addr(tenant, ip),
		func(v string) (string, string, bool) { return tenant, v, true },
		func(e Endpoint) bool { return e.IP == ip },
		func() error { return errorf(ErrNotFound, "no endpoint has address %s in tenant %s", ip, tenant) })
}

// EndpointByIfaceID finds the endpoint whose hypervisor port carries
// external_ids:iface-id=id.
func (s *Store) EndpointByIfaceID(ctx context.Context, id string) (Endpoint, error) {
	if id == "" {
		return Endpoint{}, errorf(ErrInvalid, "no iface-id given")
	}
	r, err := s.viaIndex(ctx, "looking up iface-id "+id, s.k.iface(id),
		func(v string) (string, string, bool) { return strings.Cut(v, "/") },
		func(e Endpoint) bool { return e.IfaceID == id },
		func() error { return errorf(ErrNotFound, "no endpoint has iface-id %s", id) })
	return r.val, err
}

// viaIndex reads an index key, then the endpoint it names. The two reads are
// not atomic: if the endpoint changed in between so that it no longer
// matches, the index is read again (once) before concluding "not found".
func (s *Store) viaIndex(ctx context.Context, op, key string, parse func(string) (tenant, name string, ok bool), matches func(Endpoint) bool, notFound func() error) (record[Endpoint], error) {
	for range 2 {
		ictx, cancel := s.ctx(ctx)
		resp, err := s.cli.Get(ictx, key)
		cancel()
		if err != nil {
			return record[Endpoint]{}, unavailable(op, err)
		}
		if len(resp.Kvs) == 0 {
			return record[Endpoint]{readRev: resp.Header.Revision}, notFound()
		}
		t, name, ok := parse(string(resp.Kvs[0].Value))
		if !ok {
			return record[Endpoint]{}, errorf(ErrInvalid, "directory: %s: index entry %s is corrupt", op, key)
		}
		r, err := s.endpoint(ctx, t, name)
		switch {
		case err == nil && matches(r.val):
			return r, nil
		case err != nil && !errors.Is(err, ErrNotFound):
			return r, err
		}
	}
	return record[Endpoint]{}, notFound()
}

// Endpoints lists endpoints matching f, sorted by tenant then name.
func (s *Store) Endpoints(ctx context.Context, f Filter) ([]Endpoint, error) {
	prefix := s.k.allEndpoints()
	if f.Tenant != "" {
		if err := ValidateName("tenant", f.Tenant); err != nil {
			return nil, err
		}
		prefix = s.k.endpoints(f.Tenant)
	}
	all, _, err := listJSON[Endpoint](ctx, s, "listing endpoints", prefix)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, e := range all {
		if (f.Network == "" || e.Network == f.Network) && (f.Server == "" || e.Server == f.Server) {
			out = append(out, e)
		}
	}
	return out, nil
}

// UpdateEndpointPort records the OpenFlow port an endpoint was bound to on
// its server (0 when unbound), with compare-and-swap so that a concurrent
// update of another field is not lost.
func (s *Store) UpdateEndpointPort(ctx context.Context, tenant, name string, port uint32) (Endpoint, error) {
	return s.updateEndpointPort(ctx, "", tenant, name, port)
}

// updateEndpointPort is UpdateEndpointPort for an endpoint that must live
// on server owner ("": any).
func (s *Store) updateEndpointPort(ctx context.Context, owner, tenant, name string, port uint32) (Endpoint, error) {
	for range casRetries {
		r, err := s.endpoint(ctx, tenant, name)
		if err != nil {
			return Endpoint{}, err
		}
		e := r.val
		if err := ownedBy(e, owner, "change"); err != nil {
			return Endpoint{}, err
		}
		if e.Port == port {
			return e, nil
		}
		e.Port = port
		key := s.k.endpoint(tenant, name)
		tctx, cancel := s.ctx(ctx)
		resp, err := s.cli.Txn(tctx).If(unchanged(key, r.modRev)).Then(clientv3.OpPut(key, mustJSON(e))).Commit()
		cancel()
		if err != nil {
			return Endpoint{}, unavailable("updating endpoint "+e.Ref(), err)
		}
		if resp.Succeeded {
			return e, nil
		}
	}
	return Endpoint{}, errorf(ErrConflict, "updating endpoint %s/%s: gave up after %d attempts: it keeps changing", tenant, name, casRetries)
}

// DeleteEndpoint deletes an endpoint together with its address (and iface)
// index entries and its port maps in one transaction, guarded by the
// endpoint's revision so the index entries removed are certainly its own,
// and by its server's port maps being unchanged so none is left behind.
func (s *Store) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	return s.deleteEndpoint(ctx, "", tenant, name)
}

// ownedBy refuses an endpoint that does not live on server owner ("": any
// server will do). The caller's transaction compares the endpoint's
// revision, so the check holds when it writes.
func ownedBy(e Endpoint, owner, verb string) error {
	if owner != "" && e.Server != owner {
		return errorf(ErrDenied, "server %s cannot %s endpoint %s: it lives on server %s", owner, verb, e.Ref(), e.Server)
	}
	return nil
}

// deleteEndpoint is DeleteEndpoint for an endpoint that must live on server
// owner ("": any).
func (s *Store) deleteEndpoint(ctx context.Context, owner, tenant, name string) error {
	if err := validateNames("tenant", tenant, "endpoint", name); err != nil {
		return err
	}
	key, op := s.k.endpoint(tenant, name), "deleting endpoint "+tenant+"/"+name
	_, err := retry(ctx, op, "it keeps changing", func() (struct{}, bool, error) {
		r, err := s.endpoint(ctx, tenant, name)
		if err != nil {
			return struct{}{}, false, err
		}
		e := r.val
		if err := ownedBy(e, owner, "delete"); err != nil {
			return struct{}{}, false, err
		}
		ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(s.k.addr(tenant, e.IP))}
		if e.IfaceID != "" {
			ops = append(ops, clientv3.OpDelete(s.k.iface(e.IfaceID)))
		}
		maps, rev, err := listJSON[PortMap](ctx, s, op, s.k.portMaps(e.Server))
		if err != nil {
			return struct{}{}, false, err
		}
		for _, m := range maps {
			if m.Tenant == tenant && m.Endpoint == name {
				ops = append(ops, clientv3.OpDelete(s.k.portMap(m.Server, m.Proto, m.Port)))
			}
		}
		resp, err := s.txn(ctx, op, []clientv3.Cmp{unchanged(key, r.modRev), quietSince(s.k.portMaps(e.Server), rev)}, ops, nil)
		return struct{}{}, err == nil && resp.Succeeded, err
	})
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
