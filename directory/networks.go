package directory

import (
	"context"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/policy"
)

// CreateNetwork stores a network, creating its tenant (with a conntrack
// zone) if needed, in one transaction. It refuses a duplicate name and a CIDR
// overlapping another network of the same tenant (different tenants may
// overlap: that is what tenants are for). The overlap check is guarded by a
// compare on the tenant's networks, so two concurrent creations cannot both
// slip in overlapping CIDRs.
func (s *Store) CreateNetwork(ctx context.Context, n Network) (Network, error) {
	given := n.CIDR
	n, canonicalised, err := n.normalize()
	if err != nil {
		return Network{}, err
	}
	if canonicalised {
		s.log.Info("directory: network CIDR had host bits set; storing it masked", "network", n.Ref(), "given", given, "stored", n.CIDR)
	}
	op := "creating network " + n.Ref()
	key, tkey, nets := s.k.network(n.Tenant, n.Name), s.k.tenant(n.Tenant), s.k.networks(n.Tenant)
	return retry(ctx, op, "the tenant's networks keep changing", func() (Network, bool, error) {
		resp, err := s.read(ctx, op, clientv3.OpGet(nets, clientv3.WithPrefix()), clientv3.OpGet(tkey))
		if err != nil {
			return Network{}, false, err
		}
		rev := resp.Header.Revision
		for _, o := range decodeAll[Network](s, kvs(resp, 0)) {
			if o.Name == n.Name {
				return Network{}, false, errorf(ErrExists, "network %s already exists", n.Ref())
			}
			if o.CIDR.Overlaps(n.CIDR) {
				return Network{}, false, errorf(ErrConflict, "network %s (%s) overlaps network %s (%s) of the same tenant", n.Ref(), n.CIDR, o.Ref(), o.CIDR)
			}
		}
		tr, _, err := recordOf[Tenant](s, op, tkey, kvs(resp, 1), rev)
		if err != nil {
			return Network{}, false, err
		}
		_, cmps, puts, err := s.ensureTenant(ctx, n.Tenant, tr)
		if err != nil {
			return Network{}, false, err
		}
		// The network's put comes first: watchers see it before its tenant.
		tresp, err := s.txn(ctx, op, append(cmps, absent(key), quietSince(nets, rev)),
			append([]clientv3.Op{clientv3.OpPut(key, mustJSON(n))}, puts...), nil)
		return n, err == nil && tresp.Succeeded, err
	})
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

// DeleteNetwork deletes a network that has no endpoints left and that no
// rule names, removes it from the groups that list it, and frees its address
// blocks, all in one transaction. The network's endpoints are not under a key
// prefix of their own (endpoint names are unique per tenant), so the
// transaction guards on "no endpoint, group or rule of the tenant changed
// since we looked" and retries if one did.
//
// Groups are cleaned up rather than refusing the delete because a group is
// only a set of networks; a rule is a statement someone made about this
// network, and dropping it silently would change what it says once a
// network of that name exists again.
func (s *Store) DeleteNetwork(ctx context.Context, tenant, name string) error {
	if err := ValidateName("tenant", tenant); err != nil {
		return err
	}
	if err := ValidateName("network", name); err != nil {
		return err
	}
	ref := tenant + "/" + name
	op := "deleting network " + ref
	key, eps, groups, rules := s.k.network(tenant, name), s.k.endpoints(tenant), s.k.groups(tenant), s.k.rules(tenant)
	_, err := retry(ctx, op, "the tenant's endpoints and policy keep changing", func() (struct{}, bool, error) {
		resp, err := s.read(ctx, op, clientv3.OpGet(key), clientv3.OpGet(eps, clientv3.WithPrefix()),
			clientv3.OpGet(groups, clientv3.WithPrefix()), clientv3.OpGet(rules, clientv3.WithPrefix()))
		if err != nil {
			return struct{}{}, false, err
		}
		rev := resp.Header.Revision
		nr, found, err := recordOf[Network](s, op, key, kvs(resp, 0), rev)
		if err != nil {
			return struct{}{}, false, err
		}
		if !found {
			return struct{}{}, false, errorf(ErrNotFound, "network %s does not exist", ref)
		}
		var inUse []string
		for _, e := range decodeAll[Endpoint](s, kvs(resp, 1)) {
			if e.Network == name {
				inUse = append(inUse, e.Ref())
			}
		}
		if len(inUse) > 0 {
			return struct{}{}, false, errorf(ErrConflict, "network %s still has endpoints (%s); delete them first", ref, listNames(inUse, 5))
		}
		if by := namedBy(decodeAll[policy.Rule](s, kvs(resp, 3)), policy.NetworkKind, name); len(by) > 0 {
			return struct{}{}, false, errorf(ErrConflict, "network %s is named by %s; delete the rules first", ref, listNames(by, 3))
		}
		ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(s.k.blocks(tenant, name), clientv3.WithPrefix())}
		for _, g := range decodeAll[policy.Group](s, kvs(resp, 2)) {
			if i := slices.Index(g.Networks, name); i >= 0 {
				g.Networks = slices.Delete(g.Networks, i, i+1)
				ops = append(ops, clientv3.OpPut(s.k.group(tenant, g.Name), mustJSON(g)))
			}
		}
		tresp, err := s.txn(ctx, op, []clientv3.Cmp{unchanged(key, nr.modRev),
			quietSince(eps, rev), quietSince(groups, rev), quietSince(rules, rev)}, ops, nil)
		return struct{}{}, err == nil && tresp.Succeeded, err
	})
	return err
}

// listNames joins up to limit names for an error message.
func listNames(names []string, limit int) string {
	if len(names) > limit {
		return strings.Join(names[:limit], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}
