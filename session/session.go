// Package session holds the values that describe one NVI session and the pure
// logic around them: naming a session, choosing its key, and deciding when it
// is idle. Nothing here does I/O; the agent feeds it facts and clocks.
//
// A session is the hot-plug route for one (tenant, client endpoint, server
// endpoint, protocol, server port). The client's source port is not part of
// it: one session serves every connection from the client to that server port.
package session

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Proto is an IP protocol number that NVI builds sessions for.
type Proto uint8

// The protocols NVI builds sessions for.
const (
	ICMP Proto = 1
	TCP  Proto = 6
	UDP  Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto%d", uint8(p))
}

// ParseProto reads "tcp", "udp" or "icmp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmp":
		return ICMP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp, udp or icmp)", s)
}

// MarshalText makes protocols read as words in JSON.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (p *Proto) UnmarshalText(b []byte) error {
	var n uint8
	if _, err := fmt.Sscanf(string(b), "proto%d", &n); err == nil {
		*p = Proto(n)
		return nil
	}
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MaxFirstPackets and MaxFirstPacketBytes bound the first packets a
// client's server passes to the peer in its Accept, for the peer to
// deliver once its half is in place.
const (
	MaxFirstPackets     = 4
	MaxFirstPacketBytes = 8 << 10
)

// HasPorts reports whether the protocol carries ports that flows can rewrite.
// ICMP does not: its echo identifier is out of OpenFlow 1.3's reach, so ICMP
// takes the agent's slow path.
func (p Proto) HasPorts() bool { return p == TCP || p == UDP }

// Tuple names a session inside one tenant. For ICMP echo, Port is the
// client's echo identifier, because that is what tells two pings apart.
type Tuple struct {
	Tenant string     `json:"tenant"`
	Proto  Proto      `json:"proto"`
	Client netip.Addr `json:"client"`
	Server netip.Addr `json:"server"`
	Port   uint16     `json:"port"`
}

func (t Tuple) String() string {
	return fmt.Sprintf("%s:%s %s->%s:%d", t.Tenant, t.Proto, t.Client, t.Server, t.Port)
}

// Role says which end of a session this server is.
type Role uint8

// Roles. A local session has both workloads on this server and needs no key.
const (
	RoleClient Role = iota
	RoleServer
	RoleLocal
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleServer:
		return "server"
	case RoleLocal:
		return "local"
	}
	return fmt.Sprintf("role%d", uint8(r))
}

// MarshalText makes roles read as words in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (r *Role) UnmarshalText(b []byte) error {
	switch string(b) {
	case "client":
		*r = RoleClient
	case "server":
		*r = RoleServer
	case "local":
		*r = RoleLocal
	default:
		return fmt.Errorf("unknown role %q", b)
	}
	return nil
}

// Endpoint is what a session needs to know of one workload. OFPort is only
// meaningful for workloads on this server.
type Endpoint struct {
	IP     netip.Addr       `json:"ip"`
	MAC    net.HardwareAddr `json:"mac"`
	OFPort uint32           `json:"ofport,omitempty"`
}

// Peer is the other server of a cross-server session: its data address, and
// the MAC that frames toward it must carry (the peer's own MAC on a shared
// segment, the next-hop router's on a routed underlay).
type Peer struct {
	Name    string           `json:"name"`
	IP      netip.Addr       `json:"ip"`
	NextHop net.HardwareAddr `json:"next_hop"`
}

// Session is everything needed to compute one server's half of a session.
//
// For RoleClient, Local is the client and Remote the server workload; for
// RoleServer it is the other way round. For RoleLocal, Local is the client
// and Remote the server, both on this server, and Key and Peer are unused.
type Session struct {
	Tuple
	Zone   uint16   `json:"zone,omitempty"` // the tenant's conntrack zone
	Role   Role     `json:"role"`
	Local  Endpoint `json:"local"`
	Remote Endpoint `json:"remote"`
	Key    uint16   `json:"key,omitempty"`
	Peer   Peer     `json:"peer,omitempty"`
}

// ClientEnd and ServerEnd return the client and server workloads whatever
// this server's role.
func (s Session) ClientEnd() Endpoint {
	if s.Role == RoleServer {
		return s.Remote
	}
	return s.Local
}

// ServerEnd is the counterpart of ClientEnd.
func (s Session) ServerEnd() Endpoint {
	if s.Role == RoleServer {
		return s.Local
	}
	return s.Remote
}
