package directory

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/ipam"
)

// Address blocks: each server claims whole blocks of a network's addresses
// (one compare-and-swap per block) and hands out the addresses inside them
// itself with an [ipam.Pool], so creating a workload needs no directory
// round trip to find an address. The endpoint's address index stays the
// final guarantee that no address is given twice: an agent that meets an
// address already taken (an explicit address someone chose, an endpoint of
// a server that held the block before) gets ErrConflict from CreateEndpoint
// and tries the pool's next address.
//
// A block's key lives under its server's lease: when a server dies, its
// blocks vanish with its record and go back to the pool. When a
// [Registration] registers again under a new lease, it moves the blocks it
// holds to the new lease (and takes back those that expired meanwhile, if
// nobody took them); a restarted agent adopts its predecessor's blocks with
// [Store.ServerBlocks].

// claimBlock claims for server, under lease, the lowest block of the
// network that no server holds.
func (s *Store) claimBlock(ctx context.Context, server string, lease clientv3.LeaseID, tenant, network string) (netip.Prefix, error) {
	if err := validateNames("tenant", tenant, "network", network); err != nil {
		return netip.Prefix{}, err
	}
	ref := tenant + "/" + network
	op := "claiming an address block of network " + ref + " for server " + server
	nkey := s.k.network(tenant, network)
	return retry(ctx, op, "other servers keep claiming the same blocks", func() (netip.Prefix, bool, error) {
		resp, err := s.read(ctx, op, clientv3.OpGet(nkey), clientv3.OpGet(s.k.blocks(tenant, network), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
		if err != nil {
			return netip.Prefix{}, false, err
		}
		nr, found, err := recordOf[Network](s, op, nkey, kvs(resp, 0), resp.Header.Revision)
		if err != nil {
			return netip.Prefix{}, false, err
		}
		if !found {
			return netip.Prefix{}, false, errorf(ErrNotFound, "network %s does not exist", ref)
		}
		n := nr.val
		held := map[netip.Prefix]bool{}
		for _, kv := range kvs(resp, 1) {
			if b, ok := s.blockOf(tenant, network, kv); ok {
				held[b] = true
			}
		}
		all, err := ipam.Blocks(n.CIDR, n.blockBits())
		if err != nil {
			return netip.Prefix{}, false, errorf(ErrInvalid, "network %s: %w", ref, err)
		}
		i := slices.IndexFunc(all, func(b netip.Prefix) bool { return !held[b] && hasHost(n, b) })
		if i < 0 {
			return netip.Prefix{}, false, errorf(ErrConflict, "network %s has no free block (every /%d block of %s is held)", ref, n.blockBits(), n.CIDR)
		}
		b, key := all[i], s.k.block(tenant, network, all[i])
		tresp, err := s.txn(ctx, op, []clientv3.Cmp{absent(key), unchanged(nkey, nr.modRev)},
			[]clientv3.Op{clientv3.OpPut(key, server, clientv3.WithLease(lease))}, nil)
		if err != nil {
			return netip.Prefix{}, false, leaseLapsed(server, err)
		}
		return b, tresp.Succeeded, nil
	})
}

// hasHost reports whether block b of network n holds an address a workload
// may have (a /32 block of the gateway has none).
func hasHost(n Network, b netip.Prefix) bool {
	p, err := ipam.NewPool(n.CIDR, n.Gateway, b)
	if err != nil {
		return false
	}
	_, err = p.Next(nil)
	return err == nil
}

// leaseLapsed says so when a write under reg's lease failed because the
// lease is gone: the registration is about to register again.
func leaseLapsed(server string, err error) error {
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errorf(ErrUnavailable, "server %s: its lease is gone (it lapsed and the server is registering again, or the registration was closed): %w", server, err)
	}
	return err
}

// blockOf parses a block key of tenant/network.
func (s *Store) blockOf(tenant, network string, kv *mvccpb.KeyValue) (netip.Prefix, bool) {
	b, err := netip.ParsePrefix(strings.TrimPrefix(string(kv.Key), s.k.blocks(tenant, network)))
	if err != nil {
		s.warnOnce(string(kv.Key), kv.ModRevision, errorf(ErrInvalid, "not an address block key: %w", err))
		return netip.Prefix{}, false
	}
	return b, true
}

// Blocks lists the held blocks of a network and the server holding each.
func (s *Store) Blocks(ctx context.Context, tenant, network string) (map[netip.Prefix]string, error) {
	all, err := s.blocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]string, len(all))
	for b, kv := range all {
		out[b] = string(kv.Value)
	}
	return out, nil
}

func (s *Store) blocks(ctx context.Context, tenant, network string) (map[netip.Prefix]*mvccpb.KeyValue, error) {
	if err := validateNames("tenant", tenant, "network", network); err != nil {
		return nil, err
	}
	op := "listing the address blocks of network " + tenant + "/" + network
	resp, err := s.read(ctx, op, clientv3.OpGet(s.k.network(tenant, network), clientv3.WithCountOnly()),
		clientv3.OpGet(s.k.blocks(tenant, network), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return nil, errorf(ErrNotFound, "network %s/%s does not exist", tenant, network)
	}
	out := map[netip.Prefix]*mvccpb.KeyValue{}
	for _, kv := range kvs(resp, 1) {
		if b, ok := s.blockOf(tenant, network, kv); ok {
			out[b] = kv
		}
	}
	return out, nil
}

// adoptBlocks returns the blocks of the network that server holds, lowest
// first. Those it holds under another lease than lease (a previous process
// of the same agent, whose lease has not run out yet) are moved under lease
// with compare-and-swap, so they outlive the old one.
func (s *Store) adoptBlocks(ctx context.Context, server string, lease clientv3.LeaseID, tenant, network string) ([]netip.Prefix, error) {
	all, err := s.blocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for b, kv := range all {
		if string(kv.Value) != server {
			continue
		}
		key := string(kv.Key)
		if clientv3.LeaseID(kv.Lease) != lease {
			resp, err := s.txn(ctx, "adopting block "+b.String()+" for server "+server, []clientv3.Cmp{unchanged(key, kv.ModRevision)},
				[]clientv3.Op{clientv3.OpPut(key, server, clientv3.WithLease(lease))}, nil)
			if err != nil {
				return nil, leaseLapsed(server, err)
			}
			if !resp.Succeeded {
				continue // released or expired meanwhile
			}
			s.log.Info("directory: adopted an address block of a previous process", "server", server, "block", b, "network", tenant+"/"+network)
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return out, nil
}

// releaseBlock gives a block server holds back to the pool. Endpoints keep
// their addresses; whoever claims the block next meets them as taken.
func (s *Store) releaseBlock(ctx context.Context, server string, b BlockRef) error {
	if err := b.validate(); err != nil {
		return err
	}
	key := s.k.block(b.Tenant, b.Network, b.Block)
	op := "releasing block " + b.String()
	resp, err := s.txn(ctx, op, []clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", server)},
		[]clientv3.Op{clientv3.OpDelete(key)}, []clientv3.Op{clientv3.OpGet(key)})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	if kv := kvs(resp, 0); len(kv) > 0 {
		return errorf(ErrConflict, "block %s is held by server %s, not %s", b, kv[0].Value, server)
	}
	return errorf(ErrNotFound, "block %s is not held by any server", b)
}

// keepBlocks puts the blocks server held under lease after it registered
// again. A block still held keeps its holder; one that expired with the old
// lease is taken back if nobody claimed it meanwhile; one another server
// claimed is lost, and returned.
func (s *Store) keepBlocks(ctx context.Context, server string, lease clientv3.LeaseID, held []BlockRef) (lost []BlockRef, err error) {
	for _, b := range held {
		if err := b.validate(); err != nil {
			return lost, err
		}
		key := s.k.block(b.Tenant, b.Network, b.Block)
		put := clientv3.OpPut(key, server, clientv3.WithLease(lease))
		resp, err := s.txn(ctx, "moving block "+b.String()+" of server "+server+" to a new lease", []clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", server)},
			[]clientv3.Op{put}, []clientv3.Op{clientv3.OpTxn([]clientv3.Cmp{absent(key)}, []clientv3.Op{put}, nil)})
		if err != nil {
			return lost, leaseLapsed(server, err)
		}
		if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().Succeeded {
			lost = append(lost, b)
		}
	}
	return lost, nil
}
