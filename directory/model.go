package directory

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"nvi/ipam"
	"nvi/session"
)

// Server is one machine running an NVI agent. Its record lives under a lease
// held by that agent, so a dead server's record disappears on its own.
type Server struct {
	Name      string     `json:"name"`
	DataIP    netip.Addr `json:"dataIP"`    // the server's underlay address
	DataMAC   string     `json:"dataMAC"`   // MAC of the bridge-local port, "aa:bb:cc:dd:ee:ff"
	Site      string     `json:"site"`      // default DefaultSite
	AgentAddr string     `json:"agentAddr"` // "ip:port" of the agent-to-agent API; optional
	Role      string     `json:"role"`      // RoleServer (default) or RoleGateway
	// KeyRange is the server's block of session-key ports (default
	// session.DefaultKeyRange); port maps may not take them.
	KeyRange session.KeyRange `json:"keyRange"`
	// Reserved are further host ports on the data address that port maps
	// may not take: the directory's own ports (filled in by
	// [Store.RegisterServer]), sshd, the host's ephemeral range. The
	// agent's port (AgentAddr) and the egress NAT range are always
	// reserved; see [Server.CheckPort].
	Reserved []PortRange `json:"reserved,omitempty"`
	// Instance identifies the host behind the record (by default the
	// kernel's boot ID): a restarted agent of the same host, at the same
	// data address, may replace its predecessor's record while that one's
	// lease still runs; any other agent claiming the name is refused.
	Instance string `json:"instance,omitempty"`
}

// PortRange is an inclusive range of ports, First <= Last.
type PortRange struct {
	First uint16 `json:"first"`
	Last  uint16 `json:"last"`
}

func (r PortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.First && p <= r.Last }

// Server roles and the default site.
const (
	RoleServer  = "server"
	RoleGateway = "gateway"
	DefaultSite = "default"
)

// Tenant is an isolated address space: two tenants may use the same CIDRs
// and addresses.
//
// Zone is the tenant's Open vSwitch conntrack zone, 1..65535 and unique among
// tenants, so that two tenants' connections with identical addresses never
// share conntrack state. The directory allocates it when the tenant is
// created; tenants stored before zones existed read as 0 from [Store.Tenants]
// and get one on their first read through [Store.Tenant] (or
// [Store.TenantZone], [Cache.LookupTenant]).
type Tenant struct {
	Name string `json:"name"`
	Zone uint16 `json:"zone,omitempty"`
}

// Network is an IPv4 CIDR inside a tenant.
type Network struct {
	Tenant  string       `json:"tenant"`
	Name    string       `json:"name"`
	CIDR    netip.Prefix `json:"cidr"`    // stored masked: 10.1.0.0/24
	Gateway netip.Addr   `json:"gateway"` // default: first host address of CIDR
	// BlockBits is the prefix length of the address blocks servers claim
	// in this network (see [Store.ClaimBlock]); default
	// [ipam.DefaultBlockBits] of the CIDR, e.g. 28 for a /24.
	BlockBits int `json:"blockBits,omitempty"`
}

// blockBits is n.BlockBits, or the default for networks stored before
// blocks existed.
func (n Network) blockBits() int {
	if n.BlockBits == 0 {
		return ipam.DefaultBlockBits(n.CIDR)
	}
	return n.BlockBits
}

// Ref returns "tenant/name", the form people type and [ParseNetRef] reads.
func (n Network) Ref() string { return n.Tenant + "/" + n.Name }

// Endpoint is one workload interface attached to a server's bridge.
//
// When MAC is empty the directory derives it with [ipam.MACFor] from the
// tenant and the address (deterministic, not random): unique within the
// tenant because the address is, and stable across re-creation. Explicit MACs
// with ipam.MACPrefix as first octet are refused unless they equal the derived
// one, so a derived MAC can never collide with an explicit one.
type Endpoint struct {
	Tenant  string     `json:"tenant"`
	Network string     `json:"network"`
	Name    string     `json:"name"` // unique within the tenant
	IP      netip.Addr `json:"ip"`
	MAC     string     `json:"mac"`
	Server  string     `json:"server"`            // the registered server it lives on
	Port    uint32     `json:"port"`              // OpenFlow port on that server, 0 until bound
	IfaceID string     `json:"ifaceID,omitempty"` // external_ids:iface-id of the hypervisor port
}

// Ref returns "tenant/name".
func (e Endpoint) Ref() string { return e.Tenant + "/" + e.Name }

// Limits on CIDRs: /8 keeps a network's address scan bounded, /30 is the
// smallest prefix with two hosts.
const (
	MinPrefixBits = 8
	MaxPrefixBits = 30
)

// ValidateName checks a tenant, network, endpoint, server or site name: 1 to
// 63 characters of [a-z0-9-_.], starting with a letter or digit. Names end up
// as etcd key segments and in "tenant/net" references, hence no '/'.
func ValidateName(kind, name string) error {
	if name == "" {
		return errorf(ErrInvalid, "%s name is empty", kind)
	}
	if len(name) > 63 {
		return errorf(ErrInvalid, "%s name %q is longer than 63 characters", kind, name)
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '-' || c == '_' || c == '.') {
			continue
		}
		return errorf(ErrInvalid, "%s name %q is invalid: use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit", kind, name)
	}
	return nil
}

// ParseNetRef splits "TENANT/NET" and validates both names.
func ParseNetRef(s string) (tenant, net string, err error) {
	tenant, net, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", errorf(ErrInvalid, "network reference %q is not of the form TENANT/NET", s)
	}
	if err := ValidateName("tenant", tenant); err != nil {
		return "", "", err
	}
	if err := ValidateName("network", net); err != nil {
		return "", "", err
	}
	return tenant, net, nil
}

// normalizeMAC parses a MAC and returns it lower-case and colon-separated;
// it refuses anything that is not a 6-byte unicast, non-zero address.
func normalizeMAC(what, s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", errorf(ErrInvalid, "%s %q is not a 6-byte MAC address", what, s)
	}
	if hw[0]&1 != 0 {
		return "", errorf(ErrInvalid, "%s %s is a multicast address", what, hw)
	}
	if string(hw) == "\x00\x00\x00\x00\x00\x00" {
		return "", errorf(ErrInvalid, "%s is all zeros", what)
	}
	return hw.String(), nil
}

// normalize validates s and fills defaults.
func (s Server) normalize() (Server, error) {
	if err := ValidateName("server", s.Name); err != nil {
		return s, err
	}
	if !s.DataIP.IsValid() {
		return s, errorf(ErrInvalid, "server %s has no data address", s.Name)
	}
	s.DataIP = s.DataIP.Unmap()
	if err := unicast4("server "+s.Name+" data address", s.DataIP); err != nil {
		return s, err
	}
	mac, err := normalizeMAC("server "+s.Name+" data MAC", s.DataMAC)
	if err != nil {
		return s, err
	}
	s.DataMAC = mac
	if s.Site == "" {
		s.Site = DefaultSite
	}
	if err := ValidateName("site", s.Site); err != nil {
		return s, err
	}
	if s.AgentAddr != "" {
		ap, err := netip.ParseAddrPort(s.AgentAddr)
		if err != nil {
			return s, errorf(ErrInvalid, "server %s agent address %q is not ip:port", s.Name, s.AgentAddr)
		}
		a := ap.Addr().Unmap()
		if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || ap.Port() == 0 {
			return s, errorf(ErrInvalid, "server %s agent address %s is not an IPv4 unicast address with a port", s.Name, s.AgentAddr)
		}
	}
	if s.KeyRange == (session.KeyRange{}) {
		s.KeyRange = session.DefaultKeyRange
	}
	if err := s.KeyRange.Validate(); err != nil {
		return s, errorf(ErrInvalid, "server %s: %w", s.Name, err)
	}
	for _, r := range s.Reserved {
		if r.First == 0 || r.Last < r.First {
			return s, errorf(ErrInvalid, "server %s reserved ports %d-%d: want 1-65535, first <= last", s.Name, r.First, r.Last)
		}
	}
	if len(s.Instance) > 255 || strings.ContainsFunc(s.Instance, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return s, errorf(ErrInvalid, "server %s instance %q must be at most 255 printable characters without spaces", s.Name, s.Instance)
	}
	switch s.Role {
	case "":
		s.Role = RoleServer
	case RoleServer, RoleGateway:
	default:
		return s, errorf(ErrInvalid, "server %s role %q is neither %q nor %q", s.Name, s.Role, RoleServer, RoleGateway)
	}
	return s, nil
}

// unicast4 checks that a is an IPv4 address a host can have on the wire:
// not IPv6, unspecified, loopback, multicast or the broadcast address.
func unicast4(what string, a netip.Addr) error {
	switch {
	case !a.Is4():
		return errorf(ErrInvalid, "%s %s is not IPv4 (only IPv4 is supported)", what, a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errorf(ErrInvalid, "%s %s is not a unicast address", what, a)
	}
	return nil
}

// normalize validates n and fills the gateway. canonicalised reports that
// the CIDR had host bits set and was masked, so the caller can say so.
func (n Network) normalize() (_ Network, canonicalised bool, err error) {
	if err := ValidateName("tenant", n.Tenant); err != nil {
		return n, false, err
	}
	if err := ValidateName("network", n.Name); err != nil {
		return n, false, err
	}
	if !n.CIDR.IsValid() {
		return n, false, errorf(ErrInvalid, "network %s has no valid CIDR", n.Ref())
	}
	if !n.CIDR.Addr().Is4() {
		return n, false, errorf(ErrInvalid, "network %s CIDR %s is not IPv4 (only IPv4 is supported)", n.Ref(), n.CIDR)
	}
	if b := n.CIDR.Bits(); b < MinPrefixBits || b > MaxPrefixBits {
		return n, false, errorf(ErrInvalid, "network %s CIDR %s: prefix length must be between /%d and /%d", n.Ref(), n.CIDR, MinPrefixBits, MaxPrefixBits)
	}
	if m := n.CIDR.Masked(); m != n.CIDR {
		canonicalised = true
		n.CIDR = m
	}
	n.BlockBits = n.blockBits()
	if err := ipam.CheckBlockBits(n.CIDR, n.BlockBits); err != nil {
		return n, false, errorf(ErrInvalid, "network %s: %w", n.Ref(), err)
	}
	if !n.Gateway.IsValid() {
		n.Gateway, _ = ipam.DefaultGateway(n.CIDR) // cannot fail: IPv4, /8../30
		return n, canonicalised, nil
	}
	n.Gateway = n.Gateway.Unmap()
	if r := ipam.Classify(n.CIDR, netip.Addr{}, n.Gateway); r != ipam.OK {
		return n, false, errorf(ErrInvalid, "network %s gateway %s is %s %s", n.Ref(), n.Gateway, r, n.CIDR)
	}
	return n, canonicalised, nil
}

// validate checks what can be checked of e without the directory.
func (e Endpoint) validate() (Endpoint, error) {
	if err := ValidateName("tenant", e.Tenant); err != nil {
		return e, err
	}
	if err := ValidateName("network", e.Network); err != nil {
		return e, err
	}
	if err := ValidateName("endpoint", e.Name); err != nil {
		return e, err
	}
	if err := ValidateName("server", e.Server); err != nil {
		return e, err
	}
	if e.IP.IsValid() {
		e.IP = e.IP.Unmap()
		if !e.IP.Is4() {
			return e, errorf(ErrInvalid, "endpoint %s address %s is not IPv4", e.Ref(), e.IP)
		}
	}
	if e.MAC != "" {
		mac, err := normalizeMAC("endpoint "+e.Ref()+" MAC", e.MAC)
		if err != nil {
			return e, err
		}
		e.MAC = mac
	}
	if len(e.IfaceID) > 255 || strings.ContainsFunc(e.IfaceID, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return e, errorf(ErrInvalid, "endpoint %s iface-id %q must be at most 255 printable characters without spaces", e.Ref(), e.IfaceID)
	}
	return e, nil
}

// checkMAC fills or checks e.MAC once e.IP is known (see [Endpoint]).
func (e *Endpoint) checkMAC() error {
	derived, err := ipam.MACFor(e.Tenant, e.IP)
	if err != nil {
		return errorf(ErrInvalid, "endpoint %s: %w", e.Ref(), err)
	}
	if e.MAC == "" {
		e.MAC = derived
		return nil
	}
	if strings.HasPrefix(e.MAC, fmt.Sprintf("%02x:", ipam.MACPrefix)) && e.MAC != derived {
		return errorf(ErrInvalid, "endpoint %s MAC %s is in the range NVI derives MACs from (%02x:...); leave it empty or use another", e.Ref(), e.MAC, ipam.MACPrefix)
	}
	return nil
}
