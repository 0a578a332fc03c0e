package directory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/policy"
)

// A tenant's policy is three kinds of records: groups, pair rules and port
// rules, with the meaning package policy gives them. Every name a record
// holds (a network, group or workload of the tenant) must exist when the
// record is written: the writing transaction compares each of them present.
// Afterwards:
//   - a network that is deleted leaves the groups that list it (in the
//     deleting transaction); a rule naming it refuses the delete;
//   - a group named by a rule cannot be deleted;
//   - a workload may come and go: agents delete and re-create endpoints as
//     workloads restart, so pair rules and rules naming it stay, and apply
//     again to the next workload of that name;
//   - deleting the tenant deletes all of them.

// need is a record that a policy write names: it must exist when the write
// lands.
type need struct{ key, what string }

func (s *Store) tenantNeed(t string) need { return need{s.k.tenant(t), "tenant " + t} }

func (s *Store) networkNeed(t, n string) need {
	return need{s.k.network(t, n), "network " + t + "/" + n}
}

func (s *Store) workloadNeed(t, w string) need {
	return need{s.k.endpoint(t, w), "workload " + t + "/" + w}
}

// checkNeeds reads every needed key at one revision and says which is
// missing ("no network acme/nope"); otherwise it returns the compares that
// keep them present until the write lands.
func (s *Store) checkNeeds(ctx context.Context, op string, needs []need) ([]clientv3.Cmp, error) {
	gets := make([]clientv3.Op, len(needs))
	cmps := make([]clientv3.Cmp, len(needs))
	for i, n := range needs {
		gets[i] = clientv3.OpGet(n.key, clientv3.WithCountOnly())
		cmps[i] = exists(n.key)
	}
	resp, err := s.read(ctx, op, gets...)
	if err != nil {
		return nil, err
	}
	for i, n := range needs {
		if resp.Responses[i].GetResponseRange().Count == 0 {
			return nil, errorf(ErrNotFound, "no %s", n.what)
		}
	}
	return cmps, nil
}

// Policy reads the tenant's groups, pair rules and rules at one revision.
// Groups come sorted by name, pairs by their workloads, rules in the order
// they were added.
func (s *Store) Policy(ctx context.Context, tenant string) (policy.Policy, error) {
	r, err := s.policy(ctx, tenant)
	return r.val, err
}

// policy is Policy with the revision it was read at (as modRev too: the
// cache drops it on any later change of the tenant's policy records).
func (s *Store) policy(ctx context.Context, tenant string) (record[policy.Policy], error) {
	var r record[policy.Policy]
	if err := ValidateName("tenant", tenant); err != nil {
		return r, err
	}
	prefix := clientv3.WithPrefix()
	resp, err := s.read(ctx, "reading the policy of tenant "+tenant,
		clientv3.OpGet(s.k.tenant(tenant), clientv3.WithCountOnly()),
		clientv3.OpGet(s.k.groups(tenant), prefix), clientv3.OpGet(s.k.pairs(tenant), prefix),
		clientv3.OpGet(s.k.rules(tenant), prefix, clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)))
	if err != nil {
		return r, err
	}
	r.readRev, r.modRev = resp.Header.Revision, resp.Header.Revision
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return r, errorf(ErrNotFound, "tenant %s does not exist", tenant)
	}
	// Fail closed: a record that does not decode may be a deny rule or a
	// disconnect; leaving it out would allow what it forbids. The tenant's
	// new sessions are refused until the record is fixed or deleted.
	op := "the policy of tenant " + tenant + " fails closed (its new sessions are refused) until this record is fixed or deleted"
	var p policy.Policy
	if p.Groups, err = decodeStrict[policy.Group](s, op, kvs(resp, 1)); err == nil {
		if p.Pairs, err = decodeStrict[policy.Pair](s, op, kvs(resp, 2)); err == nil {
			p.Rules, err = decodeStrict[policy.Rule](s, op, kvs(resp, 3))
		}
	}
	if err != nil {
		return r, err
	}
	r.val = p
	return r, nil
}

// Groups lists the tenant's groups, sorted by name.
func (s *Store) Groups(ctx context.Context, tenant string) ([]policy.Group, error) {
	p, err := s.Policy(ctx, tenant)
	return p.Groups, err
}

// Pairs lists the tenant's pair rules.
func (s *Store) Pairs(ctx context.Context, tenant string) ([]policy.Pair, error) {
	p, err := s.Policy(ctx, tenant)
	return p.Pairs, err
}

// Rules lists the tenant's rules in the order they were added.
func (s *Store) Rules(ctx context.Context, tenant string) ([]policy.Rule, error) {
	p, err := s.Policy(ctx, tenant)
	return p.Rules, err
}

// CreateGroup creates an empty group of networks in an existing tenant.
func (s *Store) CreateGroup(ctx context.Context, tenant, name string) (policy.Group, error) {
	if err := validateNames("tenant", tenant, "group", name); err != nil {
		return policy.Group{}, err
	}
	g := policy.Group{Name: name, Networks: []string{}}
	key, op := s.k.group(tenant, name), "creating group "+tenant+"/"+name
	return retry(ctx, op, "the tenant keeps changing", func() (policy.Group, bool, error) {
		cmps, err := s.checkNeeds(ctx, op, []need{s.tenantNeed(tenant)})
		if err != nil {
			return g, false, err
		}
		resp, err := s.txn(ctx, op, append(cmps, absent(key)), []clientv3.Op{clientv3.OpPut(key, mustJSON(g))},
			[]clientv3.Op{clientv3.OpGet(key, clientv3.WithCountOnly())})
		switch {
		case err != nil:
			return g, false, err
		case !resp.Succeeded && resp.Responses[0].GetResponseRange().Count > 0:
			return g, false, errorf(ErrExists, "group %s/%s already exists", tenant, name)
		}
		return g, resp.Succeeded, nil
	})
}

// DeleteGroup deletes a group that no rule names.
func (s *Store) DeleteGroup(ctx context.Context, tenant, name string) error {
	if err := validateNames("tenant", tenant, "group", name); err != nil {
		return err
	}
	key, rules, op := s.k.group(tenant, name), s.k.rules(tenant), "deleting group "+tenant+"/"+name
	_, err := retry(ctx, op, "the tenant's rules keep changing", func() (struct{}, bool, error) {
		resp, err := s.read(ctx, op, clientv3.OpGet(key, clientv3.WithCountOnly()), clientv3.OpGet(rules, clientv3.WithPrefix()))
		if err != nil {
			return struct{}{}, false, err
		}
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return struct{}{}, false, errorf(ErrNotFound, "no group %s/%s", tenant, name)
		}
		if by := namedBy(decodeAll[policy.Rule](s, kvs(resp, 1)), policy.GroupKind, name); len(by) > 0 {
			return struct{}{}, false, errorf(ErrConflict, "group %s/%s is named by %s; delete the rules first", tenant, name, listNames(by, 3))
		}
		tresp, err := s.txn(ctx, op, []clientv3.Cmp{exists(key), quietSince(rules, resp.Header.Revision)},
			[]clientv3.Op{clientv3.OpDelete(key)}, nil)
		return struct{}{}, err == nil && tresp.Succeeded, err
	})
	return err
}

// AddToGroup adds networks of the tenant to a group: all of them or, when
// one does not exist or is already in the group, none.
func (s *Store) AddToGroup(ctx context.Context, tenant, group string, networks ...string) (policy.Group, error) {
	return s.editGroup(ctx, tenant, group, networks, true)
}

// RemoveFromGroup removes networks from a group: all of them or, when one
// is not in the group, none.
func (s *Store) RemoveFromGroup(ctx context.Context, tenant, group string, networks ...string) (policy.Group, error) {
	return s.editGroup(ctx, tenant, group, networks, false)
}

func (s *Store) editGroup(ctx context.Context, tenant, group string, networks []string, add bool) (policy.Group, error) {
	if err := validateNames("tenant", tenant, "group", group); err != nil {
		return policy.Group{}, err
	}
	if len(networks) == 0 {
		return policy.Group{}, errorf(ErrInvalid, "no network given for group %s/%s", tenant, group)
	}
	ref := tenant + "/" + group
	op := "removing networks from group " + ref
	needs := []need{s.tenantNeed(tenant)}
	if add {
		op = "adding networks to group " + ref
		for _, n := range networks {
			needs = append(needs, s.networkNeed(tenant, n))
		}
	}
	for _, n := range networks {
		if err := ValidateName("network", n); err != nil {
			return policy.Group{}, err
		}
	}
	key := s.k.group(tenant, group)
	return retry(ctx, op, "the group keeps changing", func() (policy.Group, bool, error) {
		cmps, err := s.checkNeeds(ctx, op, needs)
		if err != nil {
			return policy.Group{}, false, err
		}
		r, found, err := getJSON[policy.Group](ctx, s, op, key)
		if err != nil {
			return policy.Group{}, false, err
		}
		if !found {
			return policy.Group{}, false, errorf(ErrNotFound, "no group %s", ref)
		}
		g := r.val
		for _, n := range networks {
			in := slices.Contains(g.Networks, n)
			switch {
			case add && in:
				return policy.Group{}, false, errorf(ErrExists, "network %s/%s is already in group %s", tenant, n, ref)
			case add:
				g.Networks = append(g.Networks, n)
			case !in:
				return policy.Group{}, false, errorf(ErrNotFound, "network %s/%s is not in group %s", tenant, n, ref)
			default:
				g.Networks = slices.DeleteFunc(g.Networks, func(x string) bool { return x == n })
			}
		}
		slices.Sort(g.Networks)
		resp, err := s.txn(ctx, op, append(cmps, unchanged(key, r.modRev)), []clientv3.Op{clientv3.OpPut(key, mustJSON(g))}, nil)
		return g, err == nil && resp.Succeeded, err
	})
}

// Connect makes a pair rule that lets workloads a and b of the tenant reach
// each other whatever other rules say, replacing any pair rule the two had.
func (s *Store) Connect(ctx context.Context, tenant, a, b string) (policy.Pair, error) {
	return s.setPair(ctx, tenant, a, b, true)
}

// Disconnect makes a pair rule that keeps workloads a and b of the tenant
// apart whatever other rules say, replacing any pair rule the two had.
func (s *Store) Disconnect(ctx context.Context, tenant, a, b string) (policy.Pair, error) {
	return s.setPair(ctx, tenant, a, b, false)
}

// pairKey validates a pair's names and returns its key, the two names in
// order: one record per unordered pair.
func (s *Store) pairKey(tenant, a, b string) (key, lo, hi string, err error) {
	if err := validateNames("tenant", tenant, "workload", a, "workload", b); err != nil {
		return "", "", "", err
	}
	if a == b {
		return "", "", "", errorf(ErrInvalid, "a pair rule joins two different workloads; got %s/%s twice", tenant, a)
	}
	lo, hi = min(a, b), max(a, b)
	return s.k.pair(tenant, lo, hi), lo, hi, nil
}

func (s *Store) setPair(ctx context.Context, tenant, a, b string, connect bool) (policy.Pair, error) {
	key, lo, hi, err := s.pairKey(tenant, a, b)
	if err != nil {
		return policy.Pair{}, err
	}
	p := policy.Pair{A: lo, B: hi, Connect: connect}
	op := fmt.Sprintf("setting the pair rule of %s/%s and %s/%s", tenant, lo, tenant, hi)
	needs := []need{s.tenantNeed(tenant), s.workloadNeed(tenant, lo), s.workloadNeed(tenant, hi)}
	return retry(ctx, op, "the workloads keep changing", func() (policy.Pair, bool, error) {
		cmps, err := s.checkNeeds(ctx, op, needs)
		if err != nil {
			return p, false, err
		}
		resp, err := s.txn(ctx, op, cmps, []clientv3.Op{clientv3.OpPut(key, mustJSON(p))}, nil)
		return p, err == nil && resp.Succeeded, err
	})
}

// ForgetPair removes the pair rule of a and b: what other rules say about
// them applies again.
func (s *Store) ForgetPair(ctx context.Context, tenant, a, b string) error {
	key, lo, hi, err := s.pairKey(tenant, a, b)
	if err != nil {
		return err
	}
	return s.deleteKey(ctx, "forgetting a pair rule", key, fmt.Sprintf("no pair rule joins %s/%s and %s/%s", tenant, lo, tenant, hi))
}

// deleteKey deletes one key, or says notFound.
func (s *Store) deleteKey(ctx context.Context, op, key, notFound string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Delete(ctx, key)
	if err != nil {
		return unavailable(op, err)
	}
	if resp.Deleted == 0 {
		return errorf(ErrNotFound, "%s", notFound)
	}
	return nil
}

// AddRule adds a rule to the tenant's policy and returns it with the ID the
// directory gave it (8 hex digits). The rule's selectors must name existing
// networks, groups and workloads of the tenant, and it must not contradict
// (or repeat) a rule already there ([policy.Policy.CheckRule]). The check
// runs against the rules read at one revision, and the write compares that
// no rule of the tenant was added since: of two contradicting rules added
// at once, one lands and the other is refused.
func (s *Store) AddRule(ctx context.Context, tenant string, r policy.Rule) (policy.Rule, error) {
	if err := ValidateName("tenant", tenant); err != nil {
		return policy.Rule{}, err
	}
	if r.ID != "" {
		return policy.Rule{}, errorf(ErrInvalid, "rule %q: the directory assigns rule IDs; leave it empty", r.ID)
	}
	needs := []need{s.tenantNeed(tenant)}
	for _, sel := range []policy.Selector{r.From, r.To} {
		n, err := s.selectorNeed(tenant, sel)
		if err != nil {
			return policy.Rule{}, err
		}
		if n.key != "" {
			needs = append(needs, n)
		}
	}
	if q, err := policy.ParsePorts(r.Ports.String()); err != nil || q != r.Ports {
		return policy.Rule{}, errorf(ErrInvalid, "rule ports %s %d-%d: want a protocol (tcp, udp, icmp) or any, and for tcp and udp optionally ports 1-65535, first <= last", r.Ports.Proto, r.Ports.First, r.Ports.Last)
	}
	rules, op := s.k.rules(tenant), "adding a rule to tenant "+tenant
	return retry(ctx, op, "the tenant's rules keep changing", func() (policy.Rule, bool, error) {
		cmps, err := s.checkNeeds(ctx, op, needs)
		if err != nil {
			return policy.Rule{}, false, err
		}
		old, rev, err := listJSON[policy.Rule](ctx, s, op, rules)
		if err != nil {
			return policy.Rule{}, false, err
		}
		if err := (policy.Policy{Rules: old}).CheckRule(r); err != nil {
			kind := ErrInvalid
			if errors.Is(err, policy.ErrConflict) {
				kind = ErrConflict
			}
			return policy.Rule{}, false, errorf(kind, "tenant %s: %w", tenant, err)
		}
		r.ID = fmt.Sprintf("%08x", rand.Uint32())
		key := s.k.rule(tenant, r.ID)
		resp, err := s.txn(ctx, op, append(cmps, quietSince(rules, rev), absent(key)), []clientv3.Op{clientv3.OpPut(key, mustJSON(r))}, nil)
		if err != nil || !resp.Succeeded {
			r.ID = ""
			return policy.Rule{}, false, err
		}
		return r, true, nil
	})
}

// selectorNeed validates a selector's name and returns the record it needs
// (none for any).
func (s *Store) selectorNeed(tenant string, sel policy.Selector) (need, error) {
	var n need
	switch sel.Kind {
	case policy.AnyKind:
		if sel.Name == "" {
			return need{}, nil
		}
	case policy.NetworkKind:
		n = s.networkNeed(tenant, sel.Name)
	case policy.GroupKind:
		n = need{s.k.group(tenant, sel.Name), "group " + tenant + "/" + sel.Name}
	case policy.WorkloadKind:
		n = s.workloadNeed(tenant, sel.Name)
	}
	if n.key == "" {
		return need{}, errorf(ErrInvalid, "selector %q: want net:NAME, group:NAME, workload:NAME or any", string(sel.Kind)+":"+sel.Name)
	}
	return n, ValidateName(string(sel.Kind), sel.Name)
}

// DeleteRule deletes one of the tenant's rules.
func (s *Store) DeleteRule(ctx context.Context, tenant, id string) error {
	if err := validateNames("tenant", tenant, "rule", id); err != nil {
		return err
	}
	return s.deleteKey(ctx, "deleting rule "+id, s.k.rule(tenant, id), fmt.Sprintf("tenant %s has no rule %s", tenant, id))
}

// namedBy describes the rules whose selectors name kind:name.
func namedBy(rules []policy.Rule, kind policy.Kind, name string) []string {
	sel := policy.Selector{Kind: kind, Name: name}
	var out []string
	for _, r := range rules {
		if r.From == sel || r.To == sel {
			out = append(out, "rule "+r.ID+" ("+r.String()+")")
		}
	}
	return out
}

// validateNames checks (kind, name) pairs with ValidateName.
func validateNames(kindsAndNames ...string) error {
	for i := 0; i+1 < len(kindsAndNames); i += 2 {
		if err := ValidateName(kindsAndNames[i], kindsAndNames[i+1]); err != nil {
			return err
		}
	}
	return nil
}
