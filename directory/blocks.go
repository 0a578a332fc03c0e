package directory

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
// A block's key holds its server's name and no lease. It stays that
// server's while the server is registered: a block whose holder has no
// server record (it died and its lease ran out, or it was revoked) is free
// again, and the next claim takes it over. Blocks are not put under the
// server's lease because etcd refuses a lease keep-alive from a client
// that may not write every key attached to the lease, and a server's
// credential may not write blocks (the registrar writes them for it). A
// server that registers again under a new lease keeps the blocks nobody
// took meanwhile ([Store.keepBlocks]); a restarted agent adopts its
// predecessor's with [Registration.ServerBlocks].

// claimBlock claims for server the lowest block of the network that no
// registered server holds. server must be registered itself.
func (s *Store) claimBlock(ctx context.Context, server, tenant, network string) (netip.Prefix, error) {
	if err := validateNames("tenant", tenant, "network", network); err != nil {
		return netip.Prefix{}, err
	}
	ref := tenant + "/" + network
	op := "claiming an address block of network " + ref + " for server " + server
	nkey, skey := s.k.network(tenant, network), s.k.server(server)
	return retry(ctx, op, "other servers keep claiming the same blocks", func() (netip.Prefix, bool, error) {
		resp, err := s.read(ctx, op, clientv3.OpGet(nkey), clientv3.OpGet(skey, clientv3.WithCountOnly()),
			clientv3.OpGet(s.k.blocks(tenant, network), clientv3.WithPrefix()))
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
		if resp.Responses[1].GetResponseRange().Count == 0 {
			return netip.Prefix{}, false, errorf(ErrNotFound, "server %s is not registered: only a registered server holds address blocks", server)
		}
		n := nr.val
		held := map[netip.Prefix]*mvccpb.KeyValue{}
		for _, kv := range kvs(resp, 2) {
			if b, ok := s.blockOf(tenant, network, kv); ok {
				held[b] = kv
			}
		}
		gone, err := s.unregistered(ctx, op, held)
		if err != nil {
			return netip.Prefix{}, false, err
		}
		all, err := ipam.Blocks(n.CIDR, n.blockBits())
		if err != nil {
			return netip.Prefix{}, false, errorf(ErrInvalid, "network %s: %w", ref, err)
		}
		i := slices.IndexFunc(all, func(b netip.Prefix) bool {
			kv := held[b]
			return (kv == nil || gone[string(kv.Value)]) && hasHost(n, b)
		})
		if i < 0 {
			return netip.Prefix{}, false, errorf(ErrConflict, "network %s has no free block (every /%d block of %s is held)", ref, n.blockBits(), n.CIDR)
		}
		b, key := all[i], s.k.block(tenant, network, all[i])
		cmps := []clientv3.Cmp{unchanged(nkey, nr.modRev), clientv3.Compare(clientv3.CreateRevision(skey), ">", 0)}
		if kv := held[b]; kv != nil {
			// Taking over a block of a server that is gone: it must still
			// be gone, and the block unchanged.
			cmps = append(cmps, unchanged(key, kv.ModRevision), absent(s.k.server(string(kv.Value))))
			s.log.Info("directory: taking over an address block of a server that is no longer registered", "block", b, "network", ref, "holder", string(kv.Value), "server", server)
		} else {
			cmps = append(cmps, absent(key))
		}
		tresp, err := s.txn(ctx, op, cmps, []clientv3.Op{clientv3.OpPut(key, server)}, nil)
		if err != nil {
			return netip.Prefix{}, false, err
		}
		return b, tresp.Succeeded, nil
	})
}

// unregistered returns which of the servers holding blocks have no server
// record. It reads only the holders of one network's blocks, never the
// list of all servers.
func (s *Store) unregistered(ctx context.Context, op string, held map[netip.Prefix]*mvccpb.KeyValue) (map[string]bool, error) {
	var names []string
	for _, kv := range held {
		if name := string(kv.Value); !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	gone := map[string]bool{}
	for chunk := range slices.Chunk(names, 64) { // etcd bounds the operations of one transaction
		gets := make([]clientv3.Op, len(chunk))
		for i, name := range chunk {
			gets[i] = clientv3.OpGet(s.k.server(name), clientv3.WithCountOnly())
		}
		resp, err := s.read(ctx, op, gets...)
		if err != nil {
			return nil, err
		}
		for i, name := range chunk {
			if resp.Responses[i].GetResponseRange().Count == 0 {
				gone[name] = true
			}
		}
	}
	return gone, nil
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
// A block whose server is no longer registered is free, and not listed.
func (s *Store) Blocks(ctx context.Context, tenant, network string) (map[netip.Prefix]string, error) {
	all, err := s.blocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	gone, err := s.unregistered(ctx, "listing the holders of network "+tenant+"/"+network+"'s blocks", all)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]string, len(all))
	for b, kv := range all {
		if !gone[string(kv.Value)] {
			out[b] = string(kv.Value)
		}
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

// serverBlocks returns the blocks of the network that server holds,
// lowest first: those a previous process of the same agent claimed are
// still its own.
func (s *Store) serverBlocks(ctx context.Context, server, tenant, network string) ([]netip.Prefix, error) {
	all, err := s.blocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for b, kv := range all {
		if string(kv.Value) == server {
			out = append(out, b)
		}
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

// keepBlocks checks, after server registered again, which of the blocks
// it held are still its own: while its record was gone, another server may
// have taken some over. It returns those.
func (s *Store) keepBlocks(ctx context.Context, server string, held []BlockRef) (lost []BlockRef, err error) {
	for _, b := range held {
		if err := b.validate(); err != nil {
			return lost, err
		}
		resp, err := s.read(ctx, "reading block "+b.String(), clientv3.OpGet(s.k.block(b.Tenant, b.Network, b.Block)))
		if err != nil {
			return lost, err
		}
		if kv := kvs(resp, 0); len(kv) == 0 || string(kv[0].Value) != server {
			lost = append(lost, b)
		}
	}
	return lost, nil
}
