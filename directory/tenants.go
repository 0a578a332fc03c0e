package directory

import (
	"context"
	"math"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CreateTenant creates an empty tenant with a fresh conntrack zone.
// Tenants are also created implicitly by CreateNetwork, so this is only
// needed to reserve a name ahead of time.
func (s *Store) CreateTenant(ctx context.Context, name string) (Tenant, error) {
	if err := ValidateName("tenant", name); err != nil {
		return Tenant{}, err
	}
	op := "creating tenant " + name
	return retry(ctx, op, "conntrack zones keep being taken", func() (Tenant, bool, error) {
		r, found, err := getJSON[Tenant](ctx, s, op, s.k.tenant(name))
		if err != nil {
			return Tenant{}, false, err
		}
		if found {
			return Tenant{}, false, errorf(ErrExists, "tenant %s already exists", name)
		}
		t, cmps, puts, err := s.ensureTenant(ctx, name, r)
		if err != nil {
			return Tenant{}, false, err
		}
		resp, err := s.txn(ctx, op, cmps, puts, nil)
		return t, err == nil && resp.Succeeded, err
	})
}

// ensureTenant returns what a transaction must compare and write to leave
// tenant name (as read in r) existing with a conntrack zone:
//   - it has one: only the compare that it is still unchanged;
//   - it is absent, or was stored before zones existed: the tenant with the
//     lowest free zone, and the zone's index key, both compared absent (or
//     unchanged) so that two tenants never get the same zone. The loser of a
//     race re-reads and takes the next zone.
func (s *Store) ensureTenant(ctx context.Context, name string, r record[Tenant]) (Tenant, []clientv3.Cmp, []clientv3.Op, error) {
	tkey := s.k.tenant(name)
	cmps := []clientv3.Cmp{unchanged(tkey, r.modRev)}
	if r.modRev != 0 && r.val.Zone != 0 {
		return r.val, cmps, nil, nil
	}
	zone, err := s.freeZone(ctx)
	if err != nil {
		return Tenant{}, nil, nil, err
	}
	t := Tenant{Name: name, Zone: zone}
	zkey := s.k.zone(zone)
	return t, append(cmps, absent(zkey)), []clientv3.Op{clientv3.OpPut(tkey, mustJSON(t)), clientv3.OpPut(zkey, name)}, nil
}

// freeZone returns the lowest conntrack zone no tenant holds. Zone 0 is
// Open vSwitch's default zone, which NVI keeps for egress NAT.
func (s *Store) freeZone(ctx context.Context) (uint16, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.k.zones(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, unavailable("listing conntrack zones", err)
	}
	used := make(map[uint16]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		z, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.k.zones()), 10, 16)
		if err != nil {
			s.warnOnce(string(kv.Key), kv.ModRevision, errorf(ErrInvalid, "not a conntrack zone key: %w", err))
			continue
		}
		used[uint16(z)] = true
	}
	for z := 1; z <= math.MaxUint16; z++ {
		if !used[uint16(z)] {
			return uint16(z), nil
		}
	}
	return 0, errorf(ErrConflict, "every conntrack zone (1-%d) is held by a tenant", math.MaxUint16)
}

// Tenant reads one tenant. A tenant stored before zones existed is given
// its zone now (once: later reads find it stored).
func (s *Store) Tenant(ctx context.Context, name string) (Tenant, error) {
	r, err := s.tenant(ctx, name)
	return r.val, err
}

// TenantZone returns the tenant's conntrack zone, assigning one to a tenant
// stored before zones existed.
func (s *Store) TenantZone(ctx context.Context, name string) (uint16, error) {
	t, err := s.Tenant(ctx, name)
	return t.Zone, err
}

func (s *Store) tenant(ctx context.Context, name string) (record[Tenant], error) {
	if err := ValidateName("tenant", name); err != nil {
		return record[Tenant]{}, err
	}
	op := "reading tenant " + name
	return retry(ctx, op, "conntrack zones keep being taken", func() (record[Tenant], bool, error) {
		r, found, err := getJSON[Tenant](ctx, s, op, s.k.tenant(name))
		switch {
		case err != nil:
			return r, false, err
		case !found:
			return r, false, errorf(ErrNotFound, "tenant %s does not exist", name)
		case r.val.Zone != 0:
			return r, true, nil
		}
		t, cmps, puts, err := s.ensureTenant(ctx, name, r)
		if err != nil {
			return r, false, err
		}
		resp, err := s.txn(ctx, "assigning a conntrack zone to tenant "+name, cmps, puts, nil)
		if err != nil || !resp.Succeeded {
			return r, false, err
		}
		s.log.Info("directory: tenant stored before conntrack zones got one", "tenant", name, "zone", t.Zone)
		rev := resp.Header.Revision
		return record[Tenant]{val: t, modRev: rev, readRev: rev}, true, nil
	})
}

// Tenants lists every tenant, sorted by name. Tenants stored before zones
// existed show zone 0 until they are read one by one.
func (s *Store) Tenants(ctx context.Context) ([]Tenant, error) {
	out, _, err := listJSON[Tenant](ctx, s, "listing tenants", s.k.tenants())
	return out, err
}

// DeleteTenant deletes a tenant that has no networks left, together with
// its zone and whatever policy records (groups, pairs, rules) it still has:
// without networks nothing is left for them to apply to. The emptiness check
// is a compare inside the deleting transaction, so a network created
// concurrently either makes the delete fail or is created after it; policy
// writes compare the tenant present, so none can slip in after it.
func (s *Store) DeleteTenant(ctx context.Context, name string) error {
	if err := ValidateName("tenant", name); err != nil {
		return err
	}
	op := "deleting tenant " + name
	key, nets := s.k.tenant(name), s.k.networks(name)
	_, err := retry(ctx, op, "the tenant keeps changing", func() (struct{}, bool, error) {
		r, found, err := getJSON[Tenant](ctx, s, op, key)
		if err != nil {
			return struct{}{}, false, err
		}
		if !found {
			return struct{}{}, false, errorf(ErrNotFound, "tenant %s does not exist", name)
		}
		ops := []clientv3.Op{clientv3.OpDelete(key),
			clientv3.OpDelete(s.k.groups(name), clientv3.WithPrefix()),
			clientv3.OpDelete(s.k.pairs(name), clientv3.WithPrefix()),
			clientv3.OpDelete(s.k.rules(name), clientv3.WithPrefix())}
		if r.val.Zone != 0 {
			ops = append(ops, clientv3.OpDelete(s.k.zone(r.val.Zone)))
		}
		resp, err := s.txn(ctx, op,
			[]clientv3.Cmp{unchanged(key, r.modRev), clientv3.Compare(clientv3.CreateRevision(nets), "=", 0).WithPrefix()},
			ops,
			[]clientv3.Op{clientv3.OpGet(nets, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(6))})
		if err != nil || resp.Succeeded {
			return struct{}{}, true, err
		}
		var names []string
		for _, kv := range kvs(resp, 0) {
			names = append(names, name+"/"+strings.TrimPrefix(string(kv.Key), nets))
		}
		if len(names) > 0 {
			return struct{}{}, false, errorf(ErrConflict, "tenant %s still has networks (%s); delete them first", name, listNames(names, 5))
		}
		return struct{}{}, false, nil // the tenant changed (got its zone): again
	})
	return err
}
