package session

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"time"
)

// KeyRange is the block of ports a server reserves for session keys. It is a
// value/mask pair so that one masked match ("tp_dst=0xf000/0xf000") can tell
// session traffic from host traffic; the range must hold no host service.
// The default sits above Linux's ephemeral range (32768-60999), so a client's
// source port can never be mistaken for a key.
type KeyRange struct {
	Base uint16 `json:"base"` // the fixed high bits, e.g. 0xf000
	Mask uint16 `json:"mask"` // which bits are fixed, e.g. 0xf000
}

// DefaultKeyRange is ports 61440-65535.
var DefaultKeyRange = KeyRange{Base: 0xf000, Mask: 0xf000}

// Validate checks that the mask is a prefix mask and Base has no bits
// outside it.
func (r KeyRange) Validate() error {
	if r.Mask == 0 {
		return errors.New("key range: mask must fix at least one bit")
	}
	if inv := ^r.Mask; inv&(inv+1) != 0 {
		return fmt.Errorf("key range: mask %#04x is not a prefix mask", r.Mask)
	}
	if r.Base&^r.Mask != 0 {
		return fmt.Errorf("key range: base %#04x has bits outside mask %#04x", r.Base, r.Mask)
	}
	return nil
}

// First and Last bound the range.
func (r KeyRange) First() uint16 { return r.Base }

// Last is the highest key in the range.
func (r KeyRange) Last() uint16 { return r.Base | ^r.Mask }

// Size is the number of keys per (peer, protocol).
func (r KeyRange) Size() int { return int(^r.Mask) + 1 }

// Contains reports whether port p is a key.
func (r KeyRange) Contains(p uint16) bool { return p&r.Mask == r.Base }

func (r KeyRange) String() string { return fmt.Sprintf("%d-%d", r.First(), r.Last()) }

// ParseKeyRange reads "61440-65535"; the bounds must form a prefix block.
func ParseKeyRange(s string) (KeyRange, error) {
	var lo, hi uint16
	if _, err := fmt.Sscanf(s, "%d-%d", &lo, &hi); err != nil {
		return KeyRange{}, fmt.Errorf("key range %q: want FIRST-LAST, e.g. 61440-65535", s)
	}
	size := uint32(hi) - uint32(lo) + 1
	if hi < lo || size&(size-1) != 0 || uint32(lo)%size != 0 {
		return KeyRange{}, fmt.Errorf("key range %q: must be an aligned power-of-two block (e.g. 61440-65535)", s)
	}
	r := KeyRange{Base: lo, Mask: ^uint16(size - 1)}
	return r, r.Validate()
}

// ErrKeysExhausted means every key toward one peer for one protocol is in use
// or resting.
var ErrKeysExhausted = errors.New("no free session key")

// ErrKeyQuota means one tenant holds its whole share of the keys toward one
// peer for one protocol; other tenants may still get keys.
var ErrKeyQuota = errors.New("the tenant holds its share of session keys")

type poolID struct {
	peer  netip.Addr
	proto Proto
}

// restingKey is a released key that may not be reused before until; it
// still counts against the tenant that released it.
type restingKey struct {
	until  time.Time
	tenant string
}

type queued struct {
	key uint16
	restingKey
}

type pool struct {
	used    map[uint16]string     // key -> tenant holding it
	resting map[uint16]restingKey // released keys not reusable yet
	queue   []queued              // resting keys in release order, which is expiry order
	held    map[string]int        // keys per tenant, in use or resting
}

// sweep forgets the rests that are over at now.
func (p *pool) sweep(now time.Time) {
	for len(p.queue) > 0 && !now.Before(p.queue[0].until) {
		q := p.queue[0]
		p.queue = p.queue[1:]
		if r, ok := p.resting[q.key]; ok && r == q.restingKey {
			delete(p.resting, q.key)
			p.drop(r.tenant)
		}
	}
}

func (p *pool) drop(tenant string) {
	if p.held[tenant]--; p.held[tenant] <= 0 {
		delete(p.held, tenant)
	}
}

func (p *pool) free(k uint16) bool {
	_, used := p.used[k]
	_, resting := p.resting[k]
	return !used && !resting
}

// KeyPool hands out keys, unique per (peer server, protocol).
//
//   - A released key rests for a while before reuse, so that late packets of
//     an old session can never be taken for a new one (invariant 2). A key
//     the peer refused, with nothing installed, needs no rest
//     (ReleaseUnused).
//   - Keys are chosen uniformly at random among the free ones with a
//     cryptographic generator, so nobody can predict the key of the next
//     session (and aim forged packets or requests at it).
//   - Each tenant may hold at most its quota of the keys toward one (peer,
//     protocol), counting the keys it released that still rest: by default
//     half of the range, so that one tenant alone can never starve the
//     others, however many sessions it opens or fails to open.
//
// It is not safe for concurrent use; the agent serialises access.
type KeyPool struct {
	r     KeyRange
	rest  time.Duration
	quota int
	rand  io.Reader
	pools map[poolID]*pool
}

// NewKeyPool makes a pool over r in which released keys rest for rest and
// each tenant's quota is half of the range.
func NewKeyPool(r KeyRange, rest time.Duration) *KeyPool {
	return newKeyPool(r, rest, rand.Reader)
}

// NewKeyPoolFrom is NewKeyPool choosing keys with rnd: a seeded source
// makes the choices repeatable in tests and simulations.
func NewKeyPoolFrom(r KeyRange, rest time.Duration, rnd io.Reader) *KeyPool {
	return newKeyPool(r, rest, rnd)
}

func newKeyPool(r KeyRange, rest time.Duration, rnd io.Reader) *KeyPool {
	kp := &KeyPool{r: r, rest: rest, rand: rnd, pools: map[poolID]*pool{}}
	kp.SetTenantQuota(0)
	return kp
}

// DefaultTenantQuota is a tenant's share of a key range of size keys: half
// of it, and at least one key.
func DefaultTenantQuota(size int) int { return max(size/2, 1) }

// SetTenantQuota sets how many keys toward one (peer, protocol) one tenant
// may hold, resting ones included; n <= 0 means DefaultTenantQuota.
func (kp *KeyPool) SetTenantQuota(n int) {
	if n <= 0 {
		n = DefaultTenantQuota(kp.r.Size())
	}
	kp.quota = min(n, kp.r.Size())
}

// TenantQuota is the number of keys one tenant may hold toward one (peer,
// protocol).
func (kp *KeyPool) TenantQuota() int { return kp.quota }

func (kp *KeyPool) pool(peer netip.Addr, proto Proto) *pool {
	id := poolID{peer, proto}
	p := kp.pools[id]
	if p == nil {
		p = &pool{used: map[uint16]string{}, resting: map[uint16]restingKey{}, held: map[string]int{}}
		kp.pools[id] = p
	}
	return p
}

// randomProbes is how many random keys Allocate tries before it lists the
// free ones: with a mostly free pool a probe almost always hits.
const randomProbes = 16

// Allocate picks a free key toward peer for proto on behalf of tenant,
// uniformly at random among the free keys.
func (kp *KeyPool) Allocate(peer netip.Addr, proto Proto, tenant string, now time.Time) (uint16, error) {
	p := kp.pool(peer, proto)
	p.sweep(now)
	size := kp.r.Size()
	if p.held[tenant] >= kp.quota {
		return 0, fmt.Errorf("%w toward %s for %s: tenant %s holds %d of %d keys (its quota is %d)",
			ErrKeyQuota, peer, proto, tenant, p.held[tenant], size, kp.quota)
	}
	nfree := size - len(p.used) - len(p.resting)
	if nfree <= 0 {
		return 0, fmt.Errorf("%w toward %s for %s (%d in use, %d resting)", ErrKeysExhausted, peer, proto, len(p.used), len(p.resting))
	}
	k, err := kp.pick(p, nfree)
	if err != nil {
		return 0, err
	}
	p.used[k] = tenant
	p.held[tenant]++
	return k, nil
}

// pick chooses one of the nfree free keys of p, each with the same chance:
// random probes first (rejection sampling is uniform), then a uniform
// choice from the list of free keys.
func (kp *KeyPool) pick(p *pool, nfree int) (uint16, error) {
	size := kp.r.Size()
	var b [2]byte
	for range randomProbes {
		if _, err := io.ReadFull(kp.rand, b[:]); err != nil {
			return 0, fmt.Errorf("choosing a session key: %w", err)
		}
		// size is a power of two, so the mask keeps the choice uniform.
		k := kp.r.Base | uint16(int(binary.BigEndian.Uint16(b[:]))&(size-1))
		if p.free(k) {
			return k, nil
		}
	}
	free := make([]uint16, 0, nfree)
	for off := range size {
		if k := kp.r.Base | uint16(off); p.free(k) {
			free = append(free, k)
		}
	}
	i, err := rand.Int(kp.rand, big.NewInt(int64(len(free))))
	if err != nil {
		return 0, fmt.Errorf("choosing a session key: %w", err)
	}
	return free[i.Int64()], nil
}

// Adopt marks k as held by tenant without choosing it: an agent that
// restarts takes back the keys its bridge's flows still name. Adopted keys
// count against the tenant's quota but are never refused for it.
func (kp *KeyPool) Adopt(peer netip.Addr, proto Proto, tenant string, k uint16) error {
	if !kp.r.Contains(k) {
		return fmt.Errorf("key %d is outside the key range %s", k, kp.r)
	}
	p := kp.pool(peer, proto)
	if _, ok := p.used[k]; ok {
		return fmt.Errorf("key %d toward %s for %s is already in use", k, peer, proto)
	}
	if r, ok := p.resting[k]; ok {
		delete(p.resting, k)
		p.drop(r.tenant)
	}
	p.used[k] = tenant
	p.held[tenant]++
	return nil
}

// Release returns k after its session ended; it rests until now+rest and
// counts against its tenant until then.
func (kp *KeyPool) Release(peer netip.Addr, proto Proto, k uint16, now time.Time) {
	p := kp.pool(peer, proto)
	tenant, ok := p.used[k]
	if !ok {
		return
	}
	delete(p.used, k)
	if kp.rest <= 0 {
		p.drop(tenant)
		return
	}
	r := restingKey{until: now.Add(kp.rest), tenant: tenant}
	p.resting[k] = r
	p.queue = append(p.queue, queued{k, r})
}

// ReleaseUnused returns a key that no packet can have used: the peer
// refused the session and installed nothing. It is free again at once.
func (kp *KeyPool) ReleaseUnused(peer netip.Addr, proto Proto, k uint16) {
	p := kp.pool(peer, proto)
	tenant, ok := p.used[k]
	if !ok {
		return
	}
	delete(p.used, k)
	p.drop(tenant)
}

// Held is the number of keys toward peer for proto that tenant holds, in
// use or resting, at now.
func (kp *KeyPool) Held(peer netip.Addr, proto Proto, tenant string, now time.Time) int {
	p := kp.pools[poolID{peer, proto}]
	if p == nil {
		return 0
	}
	p.sweep(now)
	return p.held[tenant]
}

// Resting reports whether k was released and may not be reused yet.
func (kp *KeyPool) Resting(peer netip.Addr, proto Proto, k uint16, now time.Time) bool {
	p := kp.pools[poolID{peer, proto}]
	if p == nil {
		return false
	}
	r, ok := p.resting[k]
	return ok && now.Before(r.until)
}
