package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"nvi/directory"
	"nvi/ipam"
)

// netKey names a network.
type netKey struct{ tenant, network string }

// addrPool is this server's share of a network's addresses: the blocks it
// claimed and the addresses it knows are taken in them.
type addrPool struct {
	pool *ipam.Pool
	used map[netip.Addr]bool
	reg  *directory.Registration // the registration whose blocks these are
}

// maxAddrAttempts bounds how many taken addresses one allocation skips:
// only explicit addresses other tools gave land in our blocks.
const maxAddrAttempts = 64

// createWithAddress records ep with an address from this server's blocks of
// its network: no scan of the network and no contention with other servers,
// which allocate from blocks of their own. The directory's address index
// still has the last word, so an address someone took explicitly is
// skipped.
func (a *Agent) createWithAddress(ctx context.Context, ep directory.Endpoint) (directory.Endpoint, error) {
	a.ipamMu.Lock()
	defer a.ipamMu.Unlock()
	p, err := a.addrPoolOf(ctx, ep.Tenant, ep.Network)
	if err != nil {
		return directory.Endpoint{}, err
	}
	for attempt := 0; attempt < maxAddrAttempts; attempt++ {
		ip, err := p.pool.Next(func(ip netip.Addr) bool { return p.used[ip] })
		if errors.Is(err, ipam.ErrNeedBlock) {
			b, err := p.reg.ClaimBlock(ctx, ep.Tenant, ep.Network)
			if err != nil {
				return directory.Endpoint{}, err
			}
			if err := p.pool.Add(b); err != nil {
				return directory.Endpoint{}, err
			}
			a.log.Info("claimed an address block", "network", ep.Tenant+"/"+ep.Network, "block", b)
			continue
		}
		if err != nil {
			return directory.Endpoint{}, err
		}
		ep.IP = ip
		got, err := a.claims.CreateEndpoint(ctx, ep)
		if errors.Is(err, directory.ErrConflict) {
			p.used[ip] = true // taken by someone's explicit address
			continue
		}
		if err == nil {
			p.used[ip] = true
		}
		return got, err
	}
	return directory.Endpoint{}, fmt.Errorf("%w: no free address found in %d tries", directory.ErrConflict, maxAddrAttempts)
}

// addrPoolOf loads this server's blocks of a network, and which of their
// addresses are taken, on first use.
func (a *Agent) addrPoolOf(ctx context.Context, tenant, network string) (*addrPool, error) {
	k := netKey{tenant, network}
	if p := a.pools[k]; p != nil {
		return p, nil
	}
	a.mu.Lock()
	reg := a.reg // set under mu by register
	a.mu.Unlock()
	if reg == nil {
		return nil, fmt.Errorf("%w: not registered in the directory yet", directory.ErrUnavailable)
	}
	nw, err := a.cache.LookupNetwork(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	blocks, err := reg.ServerBlocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	pool, err := ipam.NewPool(nw.CIDR, nw.Gateway, blocks...)
	if err != nil {
		return nil, err
	}
	eps, err := a.dir.Endpoints(ctx, directory.Filter{Tenant: tenant, Network: network})
	if err != nil {
		return nil, err
	}
	p := &addrPool{pool: pool, used: map[netip.Addr]bool{}, reg: reg}
	for _, e := range eps {
		p.used[e.IP] = true
	}
	a.pools[k] = p
	return p, nil
}

// addressFreed returns a deleted endpoint's address to this server's pool.
func (a *Agent) addressFreed(ep directory.Endpoint) {
	a.ipamMu.Lock()
	defer a.ipamMu.Unlock()
	if p := a.pools[netKey{ep.Tenant, ep.Network}]; p != nil {
		delete(p.used, ep.IP)
	}
}
