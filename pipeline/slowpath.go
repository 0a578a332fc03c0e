package pipeline

import (
	"fmt"

	"nvi/packet"
	"nvi/session"
)

// TranslateEcho rewrites an ICMP echo frame of session s exactly as the
// session's flows would rewrite a TCP or UDP packet, and also sets the echo
// identifier, which OpenFlow 1.3 cannot: on the underlay it is the key, at
// the workloads the client's own identifier. toServer says which way the
// frame travels. It returns the port to send the frame out of. Checksums are
// kept right by the packet package's setters.
func TranslateEcho(b Bridge, s session.Session, f *packet.Frame, toServer bool) (uint32, error) {
	if s.Proto != session.ICMP {
		return 0, fmt.Errorf("pipeline: %s session on the ICMP slow path", s.Proto)
	}
	cl, sv := s.ClientEnd(), s.ServerEnd()
	// leaving: this server sends the frame to its peer, as server addresses.
	leaving := s.Role == session.RoleClient && toServer || s.Role == session.RoleServer && !toServer
	var steps []error
	do := func(err error) { steps = append(steps, err) }
	var out uint32
	switch {
	case leaving:
		do(f.SetEthSrc(b.DataMAC))
		do(f.SetEthDst(s.Peer.NextHop))
		do(f.SetIPv4Src(b.DataIP))
		do(f.SetIPv4Dst(s.Peer.IP))
		do(f.SetICMPID(s.Key))
		out = b.Uplink
	default:
		to := cl
		if toServer {
			to = sv
		}
		do(f.SetEthSrc(GatewayMAC))
		do(f.SetEthDst(to.MAC))
		if s.Role != session.RoleLocal {
			src, dst := sv.IP, cl.IP
			if toServer {
				src, dst = cl.IP, sv.IP
			}
			do(f.SetIPv4Src(src))
			do(f.SetIPv4Dst(dst))
			do(f.SetICMPID(s.Port))
		}
		out = to.OFPort
	}
	for _, err := range steps {
		if err != nil {
			return 0, fmt.Errorf("pipeline: translating echo of %s: %w", s.Tuple, err)
		}
	}
	return out, nil
}

// GatewayEchoReply answers an echo request addressed to a network's
// gateway, so that workloads can ping their gateway. The reply is a new
// frame; the request is left as it was.
func GatewayEchoReply(req *packet.Frame) ([]byte, error) {
	if req.ICMPType() != packet.ICMPEchoRequest {
		return nil, fmt.Errorf("pipeline: not an echo request")
	}
	b, err := packet.BuildICMPEcho(packet.Header{
		EthSrc: GatewayMAC, EthDst: req.EthSrc(),
		Src: req.IPv4Dst(), Dst: req.IPv4Src(),
	}, packet.ICMPEchoReply, req.ICMPID(), req.ICMPSeq(), req.Payload())
	if err != nil {
		return nil, fmt.Errorf("pipeline: gateway echo reply: %w", err)
	}
	return b, nil
}

// QuotedTuple reads which session an ICMP error is about, from the datagram
// it quotes, as seen at a workload of this server: the quoted datagram was
// sent to the workload that now reports the error (inner destination) by
// the other end (inner source). It returns the session's tuple (tenant
// left empty) and whether the quoted datagram travelled from client to
// server — then the error travels toward the client.
//
// For the quoted datagram S:P -> C:p (a reply) the tuple is C -> S:P; for
// C:p -> S:P it is the same tuple, and both are tried by the caller.
func QuotedTuple(f *packet.Frame, quotedToServer bool) (session.Tuple, bool) {
	if !f.IsICMPError() {
		return session.Tuple{}, false
	}
	p := session.Proto(f.InnerProto())
	t := session.Tuple{Proto: p}
	src, dst := f.InnerIPv4Src(), f.InnerIPv4Dst()
	var srcPort, dstPort uint16
	switch p {
	case session.TCP, session.UDP:
		srcPort, dstPort = f.InnerL4Src(), f.InnerL4Dst()
	case session.ICMP:
		srcPort, dstPort = f.InnerICMPID(), f.InnerICMPID()
	default:
		return session.Tuple{}, false
	}
	if quotedToServer {
		t.Client, t.Server, t.Port = src, dst, dstPort
	} else {
		t.Client, t.Server, t.Port = dst, src, srcPort
	}
	return t, true
}

// TranslateError rewrites an ICMP error about a packet of session s —
// destination or port unreachable, fragmentation needed, time exceeded —
// outer header and quoted datagram alike, so that each end sees the error
// about the packet it sent, in its own addresses: path-MTU discovery and
// "connection refused" work across NVI as they would on one wire.
// towardClient says which way the error travels (it quotes a packet that
// went from client to server). An error that arrives from the underlay
// keeps its outer source unless it came from the peer server itself: a
// router's error stays the router's, so traceroute shows the real hops.
func TranslateError(b Bridge, s session.Session, f *packet.Frame, towardClient bool) (uint32, error) {
	if err := CheckError(f); err != nil {
		return 0, err
	}
	cl, sv := s.ClientEnd(), s.ServerEnd()
	// leaving: this server sends the error to its peer.
	leaving := s.Role == session.RoleServer && towardClient || s.Role == session.RoleClient && !towardClient
	var steps []error
	do := func(err error) { steps = append(steps, err) }
	// setQuoted sets the quoted datagram's server-side port (or echo id):
	// its destination when it went to the server, its source otherwise.
	setQuoted := func(v uint16) {
		switch {
		case s.Proto == session.ICMP:
			do(f.SetInnerICMPID(v))
		case towardClient:
			do(f.SetInnerL4Dst(v))
		default:
			do(f.SetInnerL4Src(v))
		}
	}
	var out uint32
	switch {
	case s.Role == session.RoleLocal:
		to := sv
		if towardClient {
			to = cl
		}
		do(f.SetEthSrc(GatewayMAC))
		do(f.SetEthDst(to.MAC))
		out = to.OFPort
	case leaving:
		do(f.SetEthSrc(b.DataMAC))
		do(f.SetEthDst(s.Peer.NextHop))
		do(f.SetIPv4Src(b.DataIP))
		do(f.SetIPv4Dst(s.Peer.IP))
		// The quoted datagram as it was on the underlay: peer to us.
		do(f.SetInnerIPv4Src(s.Peer.IP))
		do(f.SetInnerIPv4Dst(b.DataIP))
		setQuoted(s.Key)
		out = b.Uplink
	default:
		// Arriving: the quoted datagram was ours, sent to the peer; give it
		// back the workloads' addresses.
		to, from := sv, cl
		if towardClient {
			to, from = cl, sv
		}
		do(f.SetEthSrc(GatewayMAC))
		do(f.SetEthDst(to.MAC))
		if f.IPv4Src() == s.Peer.IP {
			do(f.SetIPv4Src(from.IP))
		}
		do(f.SetIPv4Dst(to.IP))
		do(f.SetInnerIPv4Src(to.IP))
		do(f.SetInnerIPv4Dst(from.IP))
		setQuoted(s.Port)
		out = to.OFPort
	}
	for _, err := range steps {
		if err != nil {
			return 0, fmt.Errorf("pipeline: translating an ICMP error of %s: %w", s.Tuple, err)
		}
	}
	return out, nil
}

// MinPathMTU is the smallest next-hop MTU a "fragmentation needed" error
// may announce: every IPv4 path carries 576-byte datagrams (RFC 791), so a
// smaller value is forged or broken, and honouring it would let anyone who
// can send ICMP to a server shrink its sessions' packets to a crawl.
const MinPathMTU = 576

// CheckError says why an ICMP error must not be translated into a session,
// or nil if it may.
func CheckError(f *packet.Frame) error {
	switch {
	case !f.IsICMPError():
		return fmt.Errorf("pipeline: not an ICMP error")
	case f.ICMPType() == icmpDestUnreachable && f.ICMPCode() == icmpFragNeeded && f.ICMPNextHopMTU() < MinPathMTU:
		return fmt.Errorf("pipeline: fragmentation needed with next-hop MTU %d, below the minimum %d: ignored", f.ICMPNextHopMTU(), MinPathMTU)
	}
	return nil
}

// CheckErrorSource says why an ICMP error from the underlay must not be
// translated into a session, or nil if it may: it must come from the peer
// the quoted packet went to (its server answering for its workload) or
// from the infrastructure b knows (UnderlayPrefixes: the data subnet, its
// routers, the --underlay prefixes). Anyone else — an internet host, a
// workload's egress — could otherwise forge path-MTU clamps and
// unreachables into a session whose key and client port it guessed.
func CheckErrorSource(b Bridge, f *packet.Frame) error {
	src := f.IPv4Src()
	if src == f.InnerIPv4Dst() {
		return nil
	}
	for _, p := range UnderlayPrefixes(b) {
		if p.Contains(src) {
			return nil
		}
	}
	return fmt.Errorf("pipeline: ICMP error from %s, neither the peer %s nor the underlay: ignored", src, f.InnerIPv4Dst())
}

// icmpFragNeeded is the code of "fragmentation needed and DF set" (RFC 1191).
const icmpFragNeeded = 4
