package agent

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
	"nvi/policy"
	"nvi/session"
)

// logLimited writes a line of kind key at most once per logEvery, saying
// how many were held back: refusals and failures come at the rate of a
// workload's (or an attacker's) packets.
func (a *Agent) logLimited(level slog.Level, key, msg string, args ...any) {
	ok, n := a.lim.logs.allow(key, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n, "per", logEvery)
	}
	a.log.Log(context.Background(), level, msg, args...)
}

// goSafe runs fn in a goroutine that survives fn's panic, logging it as
// what went wrong.
func (a *Agent) goSafe(what string, fn func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				a.log.Error("goroutine panicked", "what", what, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		fn()
	}()
}

// handlePacketIn is the start of every session: the first packet of a
// (client, server, protocol, port) that no flow matched. It runs on the
// switch connection's reader and must not block: setups run in their own
// goroutines.
func (a *Agent) handlePacketIn(pi *openflow.PacketIn) {
	// A packet that trips a bug (the slow paths translate ICMP in
	// software) costs that packet, not the switch connection's reader.
	defer func() {
		if r := recover(); r != nil {
			a.logLimited(slog.LevelError, "packet-in-panic", "handling a packet-in panicked; the packet is dropped", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	in, ok := pi.Match.Lookup(openflow.IDInPort)
	if !ok {
		return
	}
	f, err := packet.Parse(pi.Data)
	if err != nil {
		a.log.Debug("unparsable packet-in", "err", err)
		return
	}
	port := uint32(in.Uint())
	if port == a.uplink() {
		a.fromPeer(&f)
		return
	}
	var ct uint32
	if st, ok := pi.Match.Lookup(openflow.IDCtState); ok {
		ct = uint32(st.Uint())
	}
	a.fromWorkload(port, &f, ct)
}

// answersEarlier reports whether conntrack saw the packet as the reply of
// a connection it tracked: the server's end of a session commits every
// connection the session carries.
func answersEarlier(ct uint32) bool {
	const want = openflow.CtStateTrk | openflow.CtStateEst | openflow.CtStateRpl
	return ct&want == want
}

// fromWorkload handles a packet a local workload sent that no flow matched.
func (a *Agent) fromWorkload(port uint32, f *packet.Frame, ct uint32) {
	a.mu.Lock()
	l := a.workloads[port]
	a.mu.Unlock()
	if l == nil || f.EthType() != packet.EtherTypeIPv4 {
		return
	}
	t := session.Tuple{Tenant: l.ep.Tenant, Proto: session.Proto(f.IPProto()), Client: f.IPv4Src(), Server: f.IPv4Dst()}
	switch t.Proto {
	case session.TCP, session.UDP:
		if f.L4() == nil {
			return // a later fragment: nothing to key it on (flows drop them)
		}
		t.Port = f.L4Dst()
	case session.ICMP:
		if f.IsICMPError() {
			if !a.errorFromWorkload(l, f) {
				a.denyStray(port, f)
			}
			return
		}
		switch f.ICMPType() {
		case packet.ICMPEchoRequest:
			if t.Server == l.net.Gateway {
				a.answerGatewayPing(l, f)
				return
			}
			t.Port = f.ICMPID()
		case packet.ICMPEchoReply:
			// A server workload answering a ping: the session exists
			// already, made when the request came in.
			t.Client, t.Server, t.Port = t.Server, t.Client, f.ICMPID()
			a.mu.Lock()
			v, ok := a.eng.Lookup(t)
			a.mu.Unlock()
			if ok && v.State == engine.Established {
				a.forwardEcho(v, f, false, port)
			} else {
				a.denyStray(port, f)
			}
			return
		default:
			a.denyStray(port, f)
			return
		}
	default:
		a.denyStray(port, f)
		return
	}
	// Only what conntrack calls the answer of a connection the client
	// opened is a reply: anything else a server workload sends, even from
	// its session's port, is a session of its own, which policy judges.
	if t.Proto.HasPorts() && answersEarlier(ct) {
		reversed := session.Tuple{Tenant: t.Tenant, Proto: t.Proto, Client: t.Server, Server: t.Client, Port: f.L4Src()}
		if a.isReply(reversed) {
			// The reverse direction of a session this workload serves: its
			// flows exist, the switch's cache just has not caught up.
			a.resubmit(port, f.Bytes())
			return
		}
		// The server answers in a connection whose session idled out: the
		// session is made again (by this agent if the client is here, else
		// by the client's agent, asked to) and the answer held until then.
		// Policy decides as for any new session, so a connection whose
		// session policy now refuses stays cut.
		_ = a.step(engine.ReplyWithoutSession{From: l.engineWorkload(), Tuple: reversed, ReplyPort: t.Port, Frame: f.Bytes()})
		return
	}
	_ = a.step(engine.Packet{From: l.engineWorkload(), Tuple: t, Frame: f.Bytes()})
}

// isReply reports whether the session named by the reversed tuple exists
// with this server holding its server workload. Open vSwitch updates its
// datapath cache shortly after a barrier, not at it, so a reply can reach
// the agent for a few milliseconds after the session's flows are in place;
// it must not start a session of its own.
func (a *Agent) isReply(reversed session.Tuple) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.eng.Lookup(reversed)
	return ok && v.State == engine.Established && v.Session.Role != session.RoleClient
}

// resubmit sends a frame through the pipeline again, as if it had just
// arrived on port.
func (a *Agent) resubmit(port uint32, frame []byte) {
	_ = a.sw.send(resubmission(port, frame))
}

// resubmission is the packet-out that runs frame through the pipeline as
// if it had come in on port.
func resubmission(port uint32, frame []byte) *openflow.PacketOut {
	return &openflow.PacketOut{
		BufferID: openflow.NoBuffer, InPort: port,
		Actions: []openflow.Action{openflow.ActionOutput{Port: openflow.PortTable}},
		Data:    frame,
	}
}

// sendOut sends a frame straight out of a port.
func (a *Agent) sendOut(inPort, outPort uint32, frame []byte) error {
	if outPort == inPort {
		outPort = openflow.PortInPort
	}
	return a.sw.send(&openflow.PacketOut{
		BufferID: openflow.NoBuffer, InPort: inPort,
		Actions: []openflow.Action{openflow.ActionOutput{Port: outPort}},
		Data:    frame,
	})
}

// refusedCode reports whether a peer's answer refuses a request outright,
// which means it changed nothing.
func refusedCode(c api.Code) bool {
	return c == api.CodeDenied || c == api.CodeNotFound || c == api.CodeInvalid
}

// badRecord says whether a setup failed on a directory record that is
// missing or malformed: retrying it at every packet would not help, so it
// is dropped for a while like a refusal.
func badRecord(err error) bool {
	return errors.Is(err, directory.ErrMalformed) || errors.Is(err, directory.ErrNotFound)
}

// dropTuple installs the short-lived drop flow of a refused setup (a
// flood toward that destination then costs no more packet-ins, invariant
// 4), and logs the refusal at most once per logEvery per tenant.
func (a *Agent) dropTuple(port uint32, t session.Tuple, err error) {
	switch {
	case errors.Is(err, engine.ErrNoKey):
		a.logLimited(slog.LevelWarn, "no-key/"+t.Tenant, "no session key free; dropping the destination for a while", "session", t.String(), "reason", err)
	case errors.Is(err, engine.ErrTooMany):
		a.logLimited(slog.LevelWarn, "too-many/"+t.Tenant, "workload has too many sessions; dropping the destination for a while", "session", t.String(), "reason", err)
	default:
		a.logLimited(slog.LevelInfo, "refused/"+t.Tenant, "session refused", "session", t.String(), "reason", err)
	}
	a.mu.Lock()
	br, bound := a.br, a.workloads[port] != nil
	a.mu.Unlock()
	if !bound {
		return
	}
	if err := a.sw.send(pipeline.Deny(br, port, t)); err != nil && !errors.Is(err, errNoSwitch) {
		a.logLimited(slog.LevelWarn, "drop-flow", "cannot install drop flow", "err", err)
	}
}

// forwardEcho carries one ICMP echo of an established session; in is the
// port it arrived on.
func (a *Agent) forwardEcho(v engine.View, f *packet.Frame, toServer bool, in uint32) {
	a.slowForward(v, f, in, func(br pipeline.Bridge, s session.Session) (uint32, error) {
		return pipeline.TranslateEcho(br, s, f, toServer)
	})
}

// forwardError carries an ICMP error about one of a session's packets.
func (a *Agent) forwardError(v engine.View, f *packet.Frame, towardClient bool, in uint32) {
	a.slowForward(v, f, in, func(br pipeline.Bridge, s session.Session) (uint32, error) {
		return pipeline.TranslateError(br, s, f, towardClient)
	})
}

// slowForward translates a frame of an established session in software and
// sends it on; it counts as the session's activity.
func (a *Agent) slowForward(v engine.View, f *packet.Frame, in uint32, translate func(pipeline.Bridge, session.Session) (uint32, error)) {
	a.mu.Lock()
	br := a.br
	a.eng.Step(time.Now(), engine.Touched{ID: v.ID})
	a.mu.Unlock()
	out, err := translate(br, v.Session)
	if err != nil {
		a.logLimited(slog.LevelWarn, "translate", "cannot translate a slow-path packet", "session", v.Session.Tuple.String(), "err", err)
		return
	}
	if err := a.sendOut(in, out, f.Bytes()); err != nil {
		a.log.Debug("cannot send a slow-path packet", "err", err)
	}
}

// fromPeer handles ICMP that reached the agent from the underlay (punt
// flows send it here): an echo of one of our ICMP sessions, an error about
// one of our sessions' packets, or the host's own traffic, which is passed
// to the host untouched.
func (a *Agent) fromPeer(f *packet.Frame) {
	a.mu.Lock()
	br := a.br
	a.mu.Unlock()
	uplink := br.Uplink
	if p := session.Proto(f.IPProto()); f.EthType() == packet.EtherTypeIPv4 && p.HasPorts() && f.L4() != nil && f.VLANTags() == 0 && br.Keys.Contains(f.L4Src()) {
		// From a peer's key, and no session flow took it: an answer that
		// came before its session's way back was in, or host traffic.
		_ = a.step(engine.KeyReply{Peer: f.IPv4Src(), Proto: p, Key: f.L4Src(), Frame: f.Bytes()})
		return
	}
	if p := session.Proto(f.IPProto()); f.EthType() == packet.EtherTypeIPv4 && p.HasPorts() && f.L4() != nil && br.Keys.Contains(f.L4Dst()) {
		// To one of our keys, and no session flow took it: its peer still
		// sends on a server half that ended here untold. Never the host's.
		if f.VLANTags() == 0 && f.IPv4Dst() == br.DataIP {
			_ = a.step(engine.StrayKey{Peer: f.IPv4Src(), Proto: p, Key: f.L4Dst()})
		}
		return
	}
	if f.EthType() == packet.EtherTypeIPv4 && f.IPProto() == uint8(session.ICMP) {
		if f.IsICMPError() {
			if err := errors.Join(pipeline.CheckError(f), pipeline.CheckErrorSource(br, f)); err != nil {
				a.log.Debug("ICMP error from the underlay ignored", "from", f.IPv4Src(), "reason", err)
				return
			}
			if v, ok, toward := a.sessionOfWireError(f); ok {
				a.forwardError(v, f, toward, uplink)
				return
			}
		} else if v, ok, toServer := a.sessionOfWireEcho(f); ok {
			a.forwardEcho(v, f, toServer, uplink)
			return
		}
	}
	_ = a.sendOut(uplink, openflow.PortLocal, f.Bytes())
}

// establishedByWire returns the established session named by w.
func (a *Agent) establishedByWire(w engine.Wire) (engine.View, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.eng.LookupWire(w)
}

// sessionOfWireEcho finds the session of an echo from a peer: the key is
// the echo identifier.
func (a *Agent) sessionOfWireEcho(f *packet.Frame) (v engine.View, ok, toServer bool) {
	w := engine.Wire{Peer: f.IPv4Src(), Proto: session.ICMP, Key: f.ICMPID()}
	switch f.ICMPType() {
	case packet.ICMPEchoRequest:
		w.Role, toServer = session.RoleServer, true
	case packet.ICMPEchoReply:
		w.Role = session.RoleClient
	default:
		return engine.View{}, false, false
	}
	v, ok = a.establishedByWire(w)
	return v, ok, toServer
}

// sessionOfWireError finds the session of an ICMP error that quotes a
// packet this server sent to a peer: to the key if we are the client (the
// error travels toward our client), from the key if we are the server.
func (a *Agent) sessionOfWireError(f *packet.Frame) (v engine.View, ok, towardClient bool) {
	proto := session.Proto(f.InnerProto())
	var src, dst uint16
	switch proto {
	case session.TCP, session.UDP:
		src, dst = f.InnerL4Src(), f.InnerL4Dst()
	case session.ICMP:
		src, dst = f.InnerICMPID(), f.InnerICMPID()
	default:
		return engine.View{}, false, false
	}
	peer := f.InnerIPv4Dst()
	if v, ok := a.establishedByWire(engine.Wire{Peer: peer, Proto: proto, Key: dst, Role: session.RoleClient}); ok {
		return v, true, true
	}
	v, ok = a.establishedByWire(engine.Wire{Peer: peer, Proto: proto, Key: src, Role: session.RoleServer})
	return v, ok, false
}

// errorFromWorkload handles an ICMP error a local workload sent about a
// packet it received: from the session's client (the error goes back to
// the server) or from its server (back to the client). It reports whether
// the error belonged to a session.
func (a *Agent) errorFromWorkload(l *workload, f *packet.Frame) bool {
	if pipeline.CheckError(f) != nil {
		return false
	}
	for _, towardClient := range []bool{true, false} {
		t, ok := pipeline.QuotedTuple(f, towardClient)
		if !ok {
			return false
		}
		t.Tenant = l.ep.Tenant
		a.mu.Lock()
		v, found := a.eng.Lookup(t)
		a.mu.Unlock()
		// The reporting workload must be the end the quoted packet went to.
		reporter := v.Session.ClientEnd()
		if towardClient {
			reporter = v.Session.ServerEnd()
		}
		if found && v.State == engine.Established && reporter.OFPort == l.ofport {
			a.forwardError(v, f, towardClient, l.ofport)
			return true
		}
	}
	return false
}

func (a *Agent) answerGatewayPing(l *workload, f *packet.Frame) {
	reply, err := pipeline.GatewayEchoReply(f)
	if err != nil {
		return
	}
	_ = a.sendOut(l.ofport, l.ofport, reply)
}

// decide asks the tenant's policy.
func (a *Agent) decide(ctx context.Context, from, to policy.Subject, t session.Tuple) (policy.Verdict, error) {
	pol, err := a.policyOf(ctx, t.Tenant)
	if err != nil {
		return policy.Verdict{}, err
	}
	return pol.Decide(policy.Request{From: from, To: to, Proto: t.Proto, Port: t.Port}), nil
}
