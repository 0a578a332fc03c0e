package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Per-server address blocks. A network is cut into equal blocks; each server
// claims whole blocks from the directory (one compare-and-swap per block, not
// per address) and hands out the addresses inside them by itself. This file
// is the arithmetic of that scheme; the directory does the claiming.

// MaxBlocks bounds how many blocks a network may be cut into, so that
// finding the lowest free block stays a short loop.
const MaxBlocks = 1 << 16

// ErrNeedBlock is returned by [Pool.Next] when every usable address of the
// pool's blocks is taken: the server must claim another block.
var ErrNeedBlock = errors.New("every address of the server's blocks is taken")

// DefaultBlockBits is the block prefix length for network p when none is
// given: at least 16 blocks (a /24 is cut into /28s), at most 64 addresses
// per block in big networks (a /16 is cut into /26s), never more than
// [MaxBlocks] blocks, never a block larger than the network.
func DefaultBlockBits(p netip.Prefix) int {
	b := min(max(p.Bits()+4, 26), 28, p.Bits()+16)
	return max(b, p.Bits())
}

// CheckBlockBits says why blocks of prefix length bits cannot cut p, or
// returns nil.
func CheckBlockBits(p netip.Prefix, bits int) error {
	if err := checkV4(p); err != nil {
		return err
	}
	switch {
	case bits < p.Bits() || bits > 32:
		return fmt.Errorf("block length /%d must be between the network's /%d and /32", bits, p.Bits())
	case bits-p.Bits() > 16:
		return fmt.Errorf("blocks of /%d would cut %s into %d blocks; at most %d", bits, p.Masked(), 1<<(bits-p.Bits()), MaxBlocks)
	}
	return nil
}

// Blocks cuts p into its blocks of prefix length bits, lowest first.
func Blocks(p netip.Prefix, bits int) ([]netip.Prefix, error) {
	if err := CheckBlockBits(p, bits); err != nil {
		return nil, err
	}
	n := 1 << (bits - p.Bits())
	size := uint32(1) << (32 - bits)
	base := v4(NetworkAddr(p))
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(fromV4(base+uint32(i)*size), bits)
	}
	return out, nil
}

// Pool hands out the addresses of the blocks one server holds in one
// network. It never returns the network's network, broadcast or gateway
// address, nor an address the caller's "used" predicate reports: the caller
// knows which addresses its server gave out, and the directory's address
// index refuses the rest (the caller then marks that address used and asks
// again). A Pool is not safe for concurrent use.
type Pool struct {
	network netip.Prefix
	gateway netip.Addr
	blocks  []netip.Prefix // sorted, disjoint, inside network
}

// NewPool returns a pool over network (with gateway gw) holding blocks.
func NewPool(network netip.Prefix, gw netip.Addr, blocks ...netip.Prefix) (*Pool, error) {
	if _, err := Hosts(network); err != nil {
		return nil, err
	}
	p := &Pool{network: network.Masked(), gateway: gw}
	for _, b := range blocks {
		if err := p.Add(b); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Add gives the pool another block, refusing one outside the network or
// overlapping a block it holds. Adding a block it already holds is a no-op.
func (p *Pool) Add(b netip.Prefix) error {
	if !b.IsValid() || !b.Addr().Is4() || b.Bits() < p.network.Bits() || !p.network.Contains(b.Addr()) {
		return fmt.Errorf("block %s is not inside network %s", b, p.network)
	}
	b = b.Masked()
	for _, h := range p.blocks {
		if h == b {
			return nil
		}
		if h.Overlaps(b) {
			return fmt.Errorf("block %s overlaps block %s of the pool", b, h)
		}
	}
	p.blocks = append(p.blocks, b)
	slices.SortFunc(p.blocks, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return nil
}

// Remove drops a block from the pool (released, or lost with a lease).
func (p *Pool) Remove(b netip.Prefix) {
	p.blocks = slices.DeleteFunc(p.blocks, func(h netip.Prefix) bool { return h == b.Masked() })
}

// Blocks returns the pool's blocks, lowest first.
func (p *Pool) Blocks() []netip.Prefix { return slices.Clone(p.blocks) }

// Contains reports whether a lies in one of the pool's blocks.
func (p *Pool) Contains(a netip.Addr) bool {
	return slices.ContainsFunc(p.blocks, func(b netip.Prefix) bool { return b.Contains(a) })
}

// Next returns the lowest usable address of the pool's blocks for which
// used returns false (nil: nothing used), or an error wrapping
// [ErrNeedBlock] when there is none.
func (p *Pool) Next(used func(netip.Addr) bool) (netip.Addr, error) {
	for _, b := range p.blocks {
		r := Range{First: NetworkAddr(b), Last: BroadcastAddr(b)}
		a, err := FirstFreeIn(r, func(a netip.Addr) bool {
			return Classify(p.network, p.gateway, a) != OK || used != nil && used(a)
		})
		if err == nil {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("network %s: %w", p.network, ErrNeedBlock)
}

func v4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromV4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
