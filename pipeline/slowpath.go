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
