package pipeline

import (
	"fmt"
	"net/netip"

	"nvi/session"
)

// Cookie is the 64-bit OpenFlow cookie NVI puts on every flow. Its top four
// bits name the feature that owns the flow, so `ovs-ofctl dump-flows` reads
// like the design and the agent can find, adopt or delete a feature's flows
// with one cookie mask. Session cookies also carry the session's identity, so
// an agent that restarts can tell its flows apart without any other state.
//
//	bits 63-60  feature
//	bits 59-58  role (sessions)
//	bits 57-56  protocol code (sessions)
//	bits 47-32  key (cross-server sessions) or server port (local sessions)
//	bits 31-0   peer data IPv4 (cross-server sessions), client<<16|server
//	            OpenFlow ports (local sessions), or an OpenFlow port
type Cookie uint64

// Feature owns a set of flows.
type Feature uint8

// Features. The zero value is never used, so a flow with cookie 0 on an NVI
// bridge was not put there by NVI.
const (
	FeatureBase     Feature = 1 // table defaults, host pass-through, punts to the agent
	FeatureEndpoint Feature = 2 // classifier, spoof guard and ARP responder of one workload
	FeatureSession  Feature = 3 // the flows of one session half (two, or three with the reply gate)
	FeatureDeny     Feature = 4 // short-lived drops for denied or unresolvable destinations
	FeaturePunt     Feature = 5 // ICMP from one peer server, sent to the agent's slow path
	FeaturePortMap  Feature = 6 // a workload port exposed on the server's address
)

func (f Feature) String() string {
	switch f {
	case FeatureBase:
		return "base"
	case FeatureEndpoint:
		return "endpoint"
	case FeatureSession:
		return "session"
	case FeatureDeny:
		return "deny"
	case FeaturePunt:
		return "punt"
	case FeaturePortMap:
		return "portmap"
	}
	return fmt.Sprintf("feature%d", uint8(f))
}

// FeatureMask selects the feature bits of a cookie.
const FeatureMask Cookie = 0xf << 60

// FullMask matches a cookie exactly.
const FullMask Cookie = ^Cookie(0)

// FeatureCookie is the cookie value that, with FeatureMask, selects all of a
// feature's flows.
func FeatureCookie(f Feature) Cookie { return Cookie(f) << 60 }

// Feature reads the owning feature.
func (c Cookie) Feature() Feature { return Feature(c >> 60) }

func (c Cookie) String() string { return fmt.Sprintf("%#x", uint64(c)) }

var protoCodes = map[session.Proto]uint64{session.ICMP: 0, session.TCP: 1, session.UDP: 2}

var codeProtos = map[uint64]session.Proto{0: session.ICMP, 1: session.TCP, 2: session.UDP}

// SessionCookie names one session's flows on this bridge. Cross-server
// sessions are unique by (role, protocol, key, peer); local ones by
// (protocol, server port, client port, server port on the bridge).
func SessionCookie(s session.Session) Cookie {
	c := uint64(FeatureSession)<<60 | uint64(s.Role&3)<<58 | protoCodes[s.Proto]<<56
	if s.Role == session.RoleLocal {
		c |= uint64(s.Port)<<32 | uint64(s.Local.OFPort&0xffff)<<16 | uint64(s.Remote.OFPort&0xffff)
		return Cookie(c)
	}
	ip := s.Peer.IP.As4()
	return Cookie(c | uint64(s.Key)<<32 | uint64(ip[0])<<24 | uint64(ip[1])<<16 | uint64(ip[2])<<8 | uint64(ip[3]))
}

// SessionID is what a session cookie says about its session.
type SessionID struct {
	Role  session.Role
	Proto session.Proto
	// Cross-server sessions.
	Key  uint16
	Peer netip.Addr
	// Local sessions.
	Port                       uint16
	ClientOFPort, ServerOFPort uint32
}

// ParseSessionCookie reads a session cookie back.
func ParseSessionCookie(c Cookie) (SessionID, error) {
	if c.Feature() != FeatureSession {
		return SessionID{}, fmt.Errorf("cookie %s belongs to %s, not to a session", c, c.Feature())
	}
	id := SessionID{Role: session.Role(c >> 58 & 3)}
	p, ok := codeProtos[uint64(c>>56&3)]
	if !ok || id.Role > session.RoleLocal {
		return SessionID{}, fmt.Errorf("cookie %s is not a valid session cookie", c)
	}
	id.Proto = p
	if id.Role == session.RoleLocal {
		id.Port = uint16(c >> 32)
		id.ClientOFPort = uint32(c >> 16 & 0xffff)
		id.ServerOFPort = uint32(c & 0xffff)
		return id, nil
	}
	id.Key = uint16(c >> 32)
	id.Peer = netip.AddrFrom4([4]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
	return id, nil
}

// EndpointCookie names the flows that admit one workload's port.
func EndpointCookie(ofport uint32) Cookie { return FeatureCookie(FeatureEndpoint) | Cookie(ofport) }

// DenyCookie names the drop flows installed for traffic from one port.
func DenyCookie(ofport uint32) Cookie { return FeatureCookie(FeatureDeny) | Cookie(ofport) }

// PuntCookie names the flow that sends ICMP from one peer to the agent.
func PuntCookie(peer netip.Addr) Cookie {
	ip := peer.As4()
	return FeatureCookie(FeaturePunt) | Cookie(ip[0])<<24 | Cookie(ip[1])<<16 | Cookie(ip[2])<<8 | Cookie(ip[3])
}
