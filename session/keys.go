package session

import (
	"errors"
	"fmt"
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

type poolID struct {
	peer  netip.Addr
	proto Proto
}

type pool struct {
	used    map[uint16]bool
	resting map[uint16]time.Time // key -> when it may be reused
	next    uint16               // offset of the next candidate
}

// KeyPool hands out keys, unique per (peer server, protocol). A released key
// rests for a while before reuse, so that late packets of an old session can
// never be taken for a new one (invariant 2). It is not safe for concurrent
// use; the agent serialises access.
type KeyPool struct {
	r     KeyRange
	rest  time.Duration
	pools map[poolID]*pool
}

// NewKeyPool makes a pool over r in which released keys rest for rest.
func NewKeyPool(r KeyRange, rest time.Duration) *KeyPool {
	return &KeyPool{r: r, rest: rest, pools: map[poolID]*pool{}}
}

func (kp *KeyPool) pool(peer netip.Addr, proto Proto) *pool {
	id := poolID{peer, proto}
	p := kp.pools[id]
	if p == nil {
		p = &pool{used: map[uint16]bool{}, resting: map[uint16]time.Time{}}
		kp.pools[id] = p
	}
	return p
}

// Allocate picks the next free key toward peer for proto. Keys are handed out
// round-robin, so the most recently released key is the last to come back.
func (kp *KeyPool) Allocate(peer netip.Addr, proto Proto, now time.Time) (uint16, error) {
	p := kp.pool(peer, proto)
	size := kp.r.Size()
	for i := 0; i < size; i++ {
		off := uint16((int(p.next) + i) % size)
		k := kp.r.Base | off
		if p.used[k] {
			continue
		}
		if until, ok := p.resting[k]; ok {
			if now.Before(until) {
				continue
			}
			delete(p.resting, k)
		}
		p.used[k] = true
		p.next = uint16((int(off) + 1) % size)
		return k, nil
	}
	return 0, fmt.Errorf("%w toward %s for %s (%d in use)", ErrKeysExhausted, peer, proto, len(p.used))
}

// Adopt marks k as in use without choosing it: an agent that restarts takes
// back the keys its bridge's flows still name.
func (kp *KeyPool) Adopt(peer netip.Addr, proto Proto, k uint16) error {
	if !kp.r.Contains(k) {
		return fmt.Errorf("key %d is outside the key range %s", k, kp.r)
	}
	p := kp.pool(peer, proto)
	if p.used[k] {
		return fmt.Errorf("key %d toward %s for %s is already in use", k, peer, proto)
	}
	p.used[k] = true
	delete(p.resting, k)
	return nil
}

// Release returns k; it rests until now+rest.
func (kp *KeyPool) Release(peer netip.Addr, proto Proto, k uint16, now time.Time) {
	p := kp.pool(peer, proto)
	if !p.used[k] {
		return
	}
	delete(p.used, k)
	p.resting[k] = now.Add(kp.rest)
}

// Resting reports whether k was released and may not be reused yet.
func (kp *KeyPool) Resting(peer netip.Addr, proto Proto, k uint16, now time.Time) bool {
	p := kp.pools[poolID{peer, proto}]
	if p == nil {
		return false
	}
	until, ok := p.resting[k]
	return ok && now.Before(until)
}
