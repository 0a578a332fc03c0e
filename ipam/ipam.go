// Package ipam holds NVI's address-management arithmetic as pure functions
// over net/netip values: which addresses of a network are hosts, whether one
// address may be given to a workload, which is the lowest free one, and the MAC
// NVI derives for a workload that brings none.
//
// It does no I/O on purpose. The directory decides what is taken (by reading
// etcd) and claims an address with a compare-and-swap; this package only
// computes. That split keeps the tricky edges (network and broadcast
// addresses, exhaustion, the gateway) table-testable. Per-server address
// blocks ([Blocks], [Pool]) build on the same pieces: a block is just another
// [Range] to search with [FirstFreeIn], with the network's reservations
// folded into the reserved predicate.
//
// Only IPv4 is supported for now; every function says so with an error or a
// [NotIPv4] reason rather than guessing.
package ipam

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
)

// ErrExhausted is wrapped by [FirstFree] and [FirstFreeIn] when every
// candidate address is reserved.
var ErrExhausted = errors.New("no free address")

// Range is an inclusive span of addresses of one family, First <= Last.
type Range struct {
	First, Last netip.Addr
}

// Contains reports whether a lies within r.
func (r Range) Contains(a netip.Addr) bool {
	return a.IsValid() && a.BitLen() == r.First.BitLen() &&
		r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0
}

// String formats r as "first-last".
func (r Range) String() string { return r.First.String() + "-" + r.Last.String() }

// Hosts returns the host addresses of an IPv4 prefix: everything between
// its network address and its broadcast address. Prefixes longer than /30
// have no such addresses and yield an error, as do IPv6 prefixes.
func Hosts(p netip.Prefix) (Range, error) {
	if err := checkV4(p); err != nil {
		return Range{}, err
	}
	if p.Bits() > 30 {
		return Range{}, fmt.Errorf("prefix %s has no host addresses", p.Masked())
	}
	return Range{First: NetworkAddr(p).Next(), Last: BroadcastAddr(p).Prev()}, nil
}

// NetworkAddr returns the first address of p (all host bits zero).
func NetworkAddr(p netip.Prefix) netip.Addr { return p.Masked().Addr() }

// BroadcastAddr returns the last address of an IPv4 prefix (all host bits
// one). For an invalid or non-IPv4 prefix it returns the zero Addr.
func BroadcastAddr(p netip.Prefix) netip.Addr {
	if checkV4(p) != nil {
		return netip.Addr{}
	}
	return fromV4(v4(NetworkAddr(p)) | uint32(uint64(1)<<(32-p.Bits())-1))
}

// DefaultGateway is the gateway NVI assumes when a network names none: the
// first host address of p.
func DefaultGateway(p netip.Prefix) (netip.Addr, error) {
	h, err := Hosts(p)
	if err != nil {
		return netip.Addr{}, err
	}
	return h.First, nil
}

// Reason says why an address may not be given to a workload. Its String is
// a phrase that reads after "address 10.1.0.0 is ...".
type Reason int

// The reasons [Classify] reports, OK meaning usable.
const (
	OK Reason = iota
	NotIPv4
	Outside
	NetworkAddress
	Broadcast
	Gateway
)

var reasonPhrases = [...]string{
	OK:             "usable in",
	NotIPv4:        "not an IPv4 address for",
	Outside:        "outside",
	NetworkAddress: "the network address of",
	Broadcast:      "the broadcast address of",
	Gateway:        "the gateway of",
}

// String returns the phrase for r, e.g. "the broadcast address of".
func (r Reason) String() string {
	if r < 0 || int(r) >= len(reasonPhrases) {
		return fmt.Sprintf("Reason(%d)", int(r))
	}
	return reasonPhrases[r]
}

// Classify tells whether a may be given to a workload in network p whose
// gateway is gw (a zero gw reserves nothing).
func Classify(p netip.Prefix, gw, a netip.Addr) Reason {
	switch {
	case !a.Is4() || checkV4(p) != nil:
		return NotIPv4
	case !p.Contains(a):
		return Outside
	case a == NetworkAddr(p):
		return NetworkAddress
	case a == BroadcastAddr(p):
		return Broadcast
	case a == gw:
		return Gateway
	}
	return OK
}

// UnusableError is what [Usable] returns: the address, the network and why.
type UnusableError struct {
	Addr   netip.Addr
	Prefix netip.Prefix
	Reason Reason
}

func (e *UnusableError) Error() string {
	return fmt.Sprintf("address %s is %s %s", e.Addr, e.Reason, e.Prefix.Masked())
}

// Usable returns nil when a may be given to a workload in p with gateway gw,
// and otherwise an *UnusableError explaining why not.
func Usable(p netip.Prefix, gw, a netip.Addr) error {
	if r := Classify(p, gw, a); r != OK {
		return &UnusableError{Addr: a, Prefix: p, Reason: r}
	}
	return nil
}

// FirstFree returns the lowest host address of p for which reserved returns
// false (a nil reserved reserves nothing). The network and broadcast
// addresses are never returned; the caller reserves the gateway. When every
// host is reserved the error reads "network 10.1.0.0/30 has no free address"
// and wraps [ErrExhausted].
func FirstFree(p netip.Prefix, reserved func(netip.Addr) bool) (netip.Addr, error) {
	h, err := Hosts(p)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := FirstFreeIn(h, reserved)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("network %s has no free address: %w", p.Masked(), ErrExhausted)
	}
	return a, nil
}

// FirstFreeIn returns the lowest address of r for which reserved returns
// false. It is the building block for searching a sub-range of a network
// (a per-server block) as well as the whole of it.
func FirstFreeIn(r Range, reserved func(netip.Addr) bool) (netip.Addr, error) {
	if !r.First.IsValid() || !r.Last.IsValid() || r.First.BitLen() != r.Last.BitLen() || r.Last.Less(r.First) {
		return netip.Addr{}, fmt.Errorf("invalid range %s", r)
	}
	for a := r.First; a.IsValid() && a.Compare(r.Last) <= 0; a = a.Next() {
		if reserved == nil || !reserved(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("range %s has no free address: %w", r, ErrExhausted)
}

// Set is a reserved-address set usable as the predicate of [FirstFree].
type Set map[netip.Addr]struct{}

// Add inserts addresses into s.
func (s Set) Add(as ...netip.Addr) {
	for _, a := range as {
		s[a] = struct{}{}
	}
}

// Has reports whether a is in s; pass s.Has to [FirstFree].
func (s Set) Has(a netip.Addr) bool { _, ok := s[a]; return ok }

// MACPrefix is the first octet of every MAC that [MACFor] derives: locally
// administered (bit 1 set) and unicast (bit 0 clear).
const MACPrefix = 0x0a

// MACFor derives a workload's MAC deterministically from its tenant and its
// IPv4 address: 0a:TT:a:b:c:d, where TT is an 8-bit hash of the tenant and
// a.b.c.d the address. Because an address is unique within a tenant, so is
// the derived MAC, without any index or coordination; the tenant byte makes it
// unlikely (not impossible) that two tenants reusing one address on the same
// bridge also share a MAC. A restarted or re-created workload with the same
// address gets the same MAC, which keeps neighbour caches valid.
func MACFor(tenant string, ip netip.Addr) (string, error) {
	if !ip.Is4() {
		return "", fmt.Errorf("cannot derive a MAC from %v: not an IPv4 address", ip)
	}
	h := fnv.New32a()
	h.Write([]byte(tenant))
	s := h.Sum32()
	t := byte(s ^ s>>8 ^ s>>16 ^ s>>24)
	b := ip.As4()
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", MACPrefix, t, b[0], b[1], b[2], b[3]), nil
}

func checkV4(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("invalid prefix")
	}
	if !p.Addr().Is4() {
		return fmt.Errorf("prefix %s is not IPv4", p)
	}
	return nil
}
