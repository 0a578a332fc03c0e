package directory

import (
	"context"
	"net/netip"
	"slices"
)

// Claims are what servers write in the claim spaces they share: their
// workloads' endpoints (with the address and iface indexes that keep
// addresses and iface-ids unique) and the address blocks they allocate
// from. A key there is not any one server's, so etcd's prefix-based roles
// cannot say "only the server that made it may change it". A [Claimer]
// does: every claim is made for one server and checked against it inside
// the writing transaction — an endpoint is created only on that server,
// changed or deleted only while it lives there, a block claimed, moved or
// released only while that server holds it.
//
// With authentication on, servers' credentials may only read these spaces;
// the registrar (package nvi/registrar, run beside the enrollment service
// with the root credential) makes the claims for the server whose
// certificate called it. [Store.ClaimsFor] is the same checks made with the
// store's own credential: what the registrar runs, and what an agent uses
// on a directory without authentication.

// BlockRef names one address block of a network.
type BlockRef struct {
	Tenant  string       `json:"tenant"`
	Network string       `json:"network"`
	Block   netip.Prefix `json:"block"`
}

func (b BlockRef) String() string {
	return b.Block.String() + " of network " + b.Tenant + "/" + b.Network
}

func (b BlockRef) validate() error {
	if err := validateNames("tenant", b.Tenant, "network", b.Network); err != nil {
		return err
	}
	if !b.Block.IsValid() || !b.Block.Addr().Is4() || b.Block != b.Block.Masked() {
		return errorf(ErrInvalid, "address block %q of network %s/%s: want an IPv4 prefix with no host bits", b.Block, b.Tenant, b.Network)
	}
	return nil
}

// Claimer makes the claims of one server. [*Claims] writes them itself;
// the registrar's client asks the registrar to.
type Claimer interface {
	// CreateEndpoint stores an endpoint of the server ([Store.CreateEndpoint]);
	// e.Server must be the claimer's server.
	CreateEndpoint(ctx context.Context, e Endpoint) (Endpoint, error)
	// UpdateEndpointPort records the OpenFlow port of an endpoint of the
	// server ([Store.UpdateEndpointPort]).
	UpdateEndpointPort(ctx context.Context, tenant, name string, port uint32) (Endpoint, error)
	// DeleteEndpoint deletes an endpoint of the server ([Store.DeleteEndpoint]).
	DeleteEndpoint(ctx context.Context, tenant, name string) error
	// ClaimBlock claims the lowest block of a network that no registered
	// server holds; the server must be registered.
	ClaimBlock(ctx context.Context, tenant, network string) (netip.Prefix, error)
	// AdoptBlocks returns the blocks of a network the server holds (those
	// an earlier process of it claimed included).
	AdoptBlocks(ctx context.Context, tenant, network string) ([]netip.Prefix, error)
	// KeepBlocks returns which of the blocks the server held another
	// server took over while it was not registered.
	KeepBlocks(ctx context.Context, held []BlockRef) (lost []BlockRef, err error)
	// ReleaseBlock gives a block the server holds back.
	ReleaseBlock(ctx context.Context, b BlockRef) error
}

// Claims is a [Claimer] that writes with its store's credential: it needs
// write access to the claim spaces (root, or no authentication).
type Claims struct {
	s      *Store
	server string
}

var _ Claimer = (*Claims)(nil)

// ClaimsFor returns the claims of server, checked against it and made with
// s's credential.
func (s *Store) ClaimsFor(server string) (*Claims, error) {
	if err := ValidateName("server", server); err != nil {
		return nil, err
	}
	return &Claims{s: s, server: server}, nil
}

func (c *Claims) CreateEndpoint(ctx context.Context, e Endpoint) (Endpoint, error) {
	if e.Server != c.server {
		return Endpoint{}, errorf(ErrDenied, "server %s cannot create endpoint %s on server %q: a server creates endpoints on itself only", c.server, e.Ref(), e.Server)
	}
	return c.s.CreateEndpoint(ctx, e)
}

func (c *Claims) UpdateEndpointPort(ctx context.Context, tenant, name string, port uint32) (Endpoint, error) {
	return c.s.updateEndpointPort(ctx, c.server, tenant, name, port)
}

func (c *Claims) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	return c.s.deleteEndpoint(ctx, c.server, tenant, name)
}

func (c *Claims) ClaimBlock(ctx context.Context, tenant, network string) (netip.Prefix, error) {
	return c.s.claimBlock(ctx, c.server, tenant, network)
}

func (c *Claims) AdoptBlocks(ctx context.Context, tenant, network string) ([]netip.Prefix, error) {
	return c.s.serverBlocks(ctx, c.server, tenant, network)
}

func (c *Claims) KeepBlocks(ctx context.Context, held []BlockRef) ([]BlockRef, error) {
	return c.s.keepBlocks(ctx, c.server, held)
}

func (c *Claims) ReleaseBlock(ctx context.Context, b BlockRef) error {
	return c.s.releaseBlock(ctx, c.server, b)
}

// ClaimBlock claims the lowest free block of a network for reg's server,
// through its claimer ([Registration.UseClaimer]), and remembers it: when
// the registration must register again, it checks they are still its own.
func (r *Registration) ClaimBlock(ctx context.Context, tenant, network string) (netip.Prefix, error) {
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	b, err := r.claimer.ClaimBlock(ctx, tenant, network)
	if err != nil {
		return netip.Prefix{}, err
	}
	r.blocks[BlockRef{tenant, network, b}] = struct{}{}
	return b, nil
}

// ServerBlocks returns the blocks of the network that reg's server holds,
// lowest first: what an agent starts its ipam.Pool with, blocks an
// earlier process of it claimed included ([Claimer.AdoptBlocks]).
func (r *Registration) ServerBlocks(ctx context.Context, tenant, network string) ([]netip.Prefix, error) {
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	bs, err := r.claimer.AdoptBlocks(ctx, tenant, network)
	if err != nil {
		return nil, err
	}
	for _, b := range bs {
		r.blocks[BlockRef{tenant, network, b}] = struct{}{}
	}
	return bs, nil
}

// ReleaseBlock gives a block reg's server holds back to the pool.
func (r *Registration) ReleaseBlock(ctx context.Context, tenant, network string, block netip.Prefix) error {
	b := BlockRef{tenant, network, block.Masked()}
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	delete(r.blocks, b)
	return r.claimer.ReleaseBlock(ctx, b)
}

// UseClaimer makes reg's block claims go through c (the registrar's client,
// for a server whose credential may not write blocks itself). By default
// they are written with reg's store ([Store.ClaimsFor]).
func (r *Registration) UseClaimer(c Claimer) {
	r.blockMu.Lock()
	r.claimer = c
	r.blockMu.Unlock()
}

// keepBlocks forgets, after r registered again, the blocks another server
// took over while r's record was gone.
// Caller holds r.blockMu.
func (r *Registration) keepBlocks(ctx context.Context) {
	if len(r.blocks) == 0 {
		return
	}
	held := make([]BlockRef, 0, len(r.blocks))
	for b := range r.blocks {
		held = append(held, b)
	}
	slices.SortFunc(held, func(x, y BlockRef) int { return x.Block.Addr().Compare(y.Block.Addr()) })
	lost, err := r.claimer.KeepBlocks(ctx, held)
	if err != nil {
		r.log.Warn("directory: could not check the address blocks after registering again; keeping them", "err", err)
		return
	}
	for _, b := range lost {
		r.log.Warn("directory: address block lost while the registration had lapsed: another server holds it", "block", b.String())
		delete(r.blocks, b)
	}
}
