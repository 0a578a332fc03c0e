package directory

import (
	"context"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CreateTenant creates an empty tenant. Tenants are also created implicitly
// by CreateNetwork, so this is only needed to reserve a name ahead of time.
func (s *Store) CreateTenant(ctx context.Context, name string) (Tenant, error) {
	if err := ValidateName("tenant", name); err != nil {
		return Tenant{}, err
	}
	t := Tenant{Name: name}
	key := s.k.tenant(name)
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(absent(key)).Then(clientv3.OpPut(key, mustJSON(t))).Commit()
	if err != nil {
		return Tenant{}, unavailable("creating tenant "+name, err)
	}
	if !resp.Succeeded {
		return Tenant{}, errorf(ErrExists, "tenant %s already exists", name)
	}
	return t, nil
}

// Tenant reads one tenant.
func (s *Store) Tenant(ctx context.Context, name string) (Tenant, error) {
	if err := ValidateName("tenant", name); err != nil {
		return Tenant{}, err
	}
	r, found, err := getJSON[Tenant](ctx, s, "reading tenant "+name, s.k.tenant(name))
	if err == nil && !found {
		err = errorf(ErrNotFound, "tenant %s does not exist", name)
	}
	return r.val, err
}

// Tenants lists every tenant, sorted by name.
func (s *Store) Tenants(ctx context.Context) ([]Tenant, error) {
	out, _, err := listJSON[Tenant](ctx, s, "listing tenants", s.k.tenants())
	return out, err
}

// DeleteTenant deletes a tenant that has no networks left. The emptiness
// check is a compare inside the deleting transaction, so a network created
// concurrently either makes the delete fail or is created after it.
func (s *Store) DeleteTenant(ctx context.Context, name string) error {
	if err := ValidateName("tenant", name); err != nil {
		return err
	}
	key := s.k.tenant(name)
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(s.k.networks(name)), "=", 0).WithPrefix()).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly()),
			clientv3.OpGet(s.k.networks(name), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(6))).
		Commit()
	if err != nil {
		return unavailable("deleting tenant "+name, err)
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return errorf(ErrNotFound, "tenant %s does not exist", name)
	}
	var names []string
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		names = append(names, name+"/"+strings.TrimPrefix(string(kv.Key), s.k.networks(name)))
	}
	return errorf(ErrConflict, "tenant %s still has networks (%s); delete them first", name, listNames(names, 5))
}

// CreateNetwork stores a network, creating its tenant if needed. It refuses
// a duplicate name and a CIDR overlapping another network of the same tenant
// (different tenants may overlap: that is what tenants are for). The overlap
// check is guarded by a compare on the tenant's networks, so two concurrent
// creations cannot both slip in overlapping CIDRs.
func (s *Store) CreateNetwork(ctx context.Context, n Network) (Network, error) {
	given := n.CIDR
	n, canonicalised, err := n.normalize()
	if err != nil {
		return Network{}, err
	}
	if canonicalised {
		s.log.Info("directory: network CIDR had host bits set; storing it masked", "network", n.Ref(), "given", given, "stored", n.CIDR)
	}
	key, tkey := s.k.network(n.Tenant, n.Name), s.k.tenant(n.Tenant)
	for range casRetries {
		others, rev, err := listJSON[Network](ctx, s, "listing networks of tenant "+n.Tenant, s.k.networks(n.Tenant))
		if err != nil {
			return Network{}, err
		}
		for _, o := range others {
			if o.Name == n.Name {
				return Network{}, errorf(ErrExists, "network %s already exists", n.Ref())
			}
			if o.CIDR.Overlaps(n.CIDR) {
				return Network{}, errorf(ErrConflict, "network %s (%s) overlaps network %s (%s) of the same tenant", n.Ref(), n.CIDR, o.Ref(), o.CIDR)
			}
		}
		tctx, cancel := s.ctx(ctx)
		resp, err := s.cli.Txn(tctx).
			If(absent(key), quietSince(s.k.networks(n.Tenant), rev)).
			Then(clientv3.OpPut(key, mustJSON(n)),
				clientv3.OpTxn([]clientv3.Cmp{absent(tkey)}, []clientv3.Op{clientv3.OpPut(tkey, mustJSON(Tenant{Name: n.Tenant}))}, nil)).
			Commit()
		cancel()
		if err != nil {
			return Network{}, unavailable("creating network "+n.Ref(), err)
		}
		if resp.Succeeded {
			return n, nil
		}
		// Another network of the tenant changed meanwhile: re-check.
	}
	return Network{}, errorf(ErrConflict, "creating network %s: gave up after %d attempts: the tenant's networks keep changing", n.Ref(), casRetries)
}

// Network reads one network.
func (s *Store) Network(ctx context.Context, tenant, name string) (Network, error) {
	r, err := s.network(ctx, tenant, name)
	return r.val, err
}

func (s *Store) network(ctx context.Context, tenant, name string) (record[Network], error) {
	if err := ValidateName("tenant", tenant); err != nil {
		return record[Network]{}, err
	}
	if err := ValidateName("network", name); err != nil {
		return record[Network]{}, err
	}
	r, found, err := getJSON[Network](ctx, s, "reading network "+tenant+"/"+name, s.k.network(tenant, name))
	if err == nil && !found {
		err = errorf(ErrNotFound, "network %s/%s does not exist", tenant, name)
	}
	return r, err
}

// Networks lists the networks of one tenant, or of all tenants when tenant
// is "", sorted by tenant then name.
func (s *Store) Networks(ctx context.Context, tenant string) ([]Network, error) {
	prefix := s.k.allNetworks()
	if tenant != "" {
		if err := ValidateName("tenant", tenant); err != nil {
			return nil, err
		}
		prefix = s.k.networks(tenant)
	}
	out, _, err := listJSON[Network](ctx, s, "listing networks", prefix)
	return out, err
}

// DeleteNetwork deletes a network that has no endpoints left. The network's
// endpoints are not under a key prefix of their own (endpoint names are
// unique per tenant), so the transaction guards on "no endpoint of the
// tenant changed since we looked" and retries if one did.
func (s *Store) DeleteNetwork(ctx context.Context, tenant, name string) error {
	for range casRetries {
		nr, err := s.network(ctx, tenant, name)
		if err != nil {
			return err
		}
		eps, rev, err := listJSON[Endpoint](ctx, s, "listing endpoints of tenant "+tenant, s.k.endpoints(tenant))
		if err != nil {
			return err
		}
		var inUse []string
		for _, e := range eps {
			if e.Network == name {
				inUse = append(inUse, e.Ref())
			}
		}
		if len(inUse) > 0 {
			return errorf(ErrConflict, "network %s still has endpoints (%s); delete them first", nr.val.Ref(), listNames(inUse, 5))
		}
		key := s.k.network(tenant, name)
		tctx, cancel := s.ctx(ctx)
		resp, err := s.cli.Txn(tctx).
			If(unchanged(key, nr.modRev), quietSince(s.k.endpoints(tenant), rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		cancel()
		if err != nil {
			return unavailable("deleting network "+nr.val.Ref(), err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return errorf(ErrConflict, "deleting network %s/%s: gave up after %d attempts: the tenant's endpoints keep changing", tenant, name, casRetries)
}

// listNames joins up to limit names for an error message.
func listNames(names []string, limit int) string {
	if len(names) > limit {
		return strings.Join(names[:limit], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}
