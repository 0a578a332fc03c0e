package pipeline

import (
	"fmt"

	"nvi/openflow"
	"nvi/session"
)

// InstalledFlow is a flow as read back from the switch.
type InstalledFlow struct {
	Cookie       Cookie
	Table        Table
	Match        openflow.Match
	Instructions []openflow.Instruction
	Packets      uint64
}

// flowFacts is what one installed flow says: its match fields, the fields
// its actions set, and where it outputs.
type flowFacts struct {
	match  map[openflow.FieldID]openflow.Field
	sets   map[openflow.FieldID]openflow.Field
	output uint32
}

func factsOf(f InstalledFlow) flowFacts {
	ff := flowFacts{match: map[openflow.FieldID]openflow.Field{}, sets: map[openflow.FieldID]openflow.Field{}}
	for _, m := range f.Match.Fields {
		ff.match[m.ID()] = m
	}
	for _, ins := range f.Instructions {
		aa, ok := ins.(openflow.InstructionApplyActions)
		if !ok {
			continue
		}
		for _, a := range aa.Actions {
			switch a := a.(type) {
			case openflow.ActionSetField:
				ff.sets[a.Field.ID()] = a.Field
			case openflow.ActionOutput:
				ff.output = a.Port
			}
		}
	}
	return ff
}

func (ff flowFacts) get(m map[openflow.FieldID]openflow.Field, id openflow.FieldID, what string, err *error) openflow.Field {
	f, ok := m[id]
	if !ok && *err == nil {
		*err = fmt.Errorf("flow lacks %s", what)
	}
	return f
}

// AdoptSession rebuilds a session from the flows SessionFlows made for it,
// as read back from the bridge. An agent that restarts uses it to take its
// sessions back instead of flushing them (invariant 5). Tenant is left
// empty: the caller knows it from the local workload's port.
func AdoptSession(b Bridge, all []InstalledFlow) (session.Session, error) {
	if len(all) == 0 {
		return session.Session{}, fmt.Errorf("pipeline: no flows to adopt a session from")
	}
	// The reply gate only sends the server's packets through conntrack; the
	// two flows that forward say what the session is.
	var flows []InstalledFlow
	gates := 0
	for _, f := range all {
		if f.Cookie != all[0].Cookie {
			return session.Session{}, fmt.Errorf("pipeline: flows of one session carry cookies %s and %s", all[0].Cookie, f.Cookie)
		}
		if f.Table == ReplyGate {
			gates++
			continue
		}
		flows = append(flows, f)
	}
	id, err := ParseSessionCookie(all[0].Cookie)
	if err != nil {
		return session.Session{}, fmt.Errorf("pipeline: %w", err)
	}
	wantGates := 1
	if id.Role == session.RoleClient {
		wantGates = 0
	}
	if len(flows) != 2 || gates != wantGates {
		return session.Session{}, fmt.Errorf("pipeline: a %s session has %d flows, found %d", id.Role, 2+wantGates, len(all))
	}
	if !id.Proto.HasPorts() {
		return session.Session{}, fmt.Errorf("pipeline: %s sessions have no flows", id.Proto)
	}
	dstID := openflow.IDTCPDst
	if id.Proto == session.UDP {
		dstID = openflow.IDUDPDst
	}
	// Order the flows: "fwd" carries client-to-server packets, and is the
	// one that matches a destination port (the server port or the key).
	fwd, rev := factsOf(flows[0]), factsOf(flows[1])
	if _, ok := fwd.match[dstID]; !ok {
		fwd, rev = rev, fwd
	}
	s := session.Session{Role: id.Role, Key: id.Key, Peer: session.Peer{IP: id.Peer}}
	s.Proto = id.Proto
	var e error
	cl, sv := &s.Local, &s.Remote
	if id.Role == session.RoleServer {
		cl, sv = &s.Remote, &s.Local
	}
	switch id.Role {
	case session.RoleLocal:
		cl.OFPort = uint32(fwd.get(fwd.match, openflow.IDInPort, "in_port", &e).Uint())
		cl.IP = fwd.get(fwd.match, openflow.IDIPv4Src, "ip_src", &e).Addr()
		sv.IP = fwd.get(fwd.match, openflow.IDIPv4Dst, "ip_dst", &e).Addr()
		s.Port = uint16(fwd.get(fwd.match, dstID, "server port", &e).Uint())
		sv.MAC = fwd.get(fwd.sets, openflow.IDEthDst, "server MAC", &e).HW()
		sv.OFPort = fwd.output
		cl.MAC = rev.get(rev.sets, openflow.IDEthDst, "client MAC", &e).HW()
	case session.RoleClient:
		cl.OFPort = uint32(fwd.get(fwd.match, openflow.IDInPort, "in_port", &e).Uint())
		cl.IP = fwd.get(fwd.match, openflow.IDIPv4Src, "ip_src", &e).Addr()
		sv.IP = fwd.get(fwd.match, openflow.IDIPv4Dst, "ip_dst", &e).Addr()
		s.Port = uint16(fwd.get(fwd.match, dstID, "server port", &e).Uint())
		s.Peer.NextHop = fwd.get(fwd.sets, openflow.IDEthDst, "next hop", &e).HW()
		cl.MAC = rev.get(rev.sets, openflow.IDEthDst, "client MAC", &e).HW()
	case session.RoleServer:
		cl.IP = fwd.get(fwd.sets, openflow.IDIPv4Src, "client address", &e).Addr()
		sv.IP = fwd.get(fwd.sets, openflow.IDIPv4Dst, "server address", &e).Addr()
		s.Port = uint16(fwd.get(fwd.sets, dstID, "server port", &e).Uint())
		sv.MAC = fwd.get(fwd.sets, openflow.IDEthDst, "server MAC", &e).HW()
		sv.OFPort = fwd.output
		s.Peer.NextHop = rev.get(rev.sets, openflow.IDEthDst, "next hop", &e).HW()
	}
	if e != nil {
		return session.Session{}, fmt.Errorf("pipeline: session %s: %w", flows[0].Cookie, e)
	}
	s.Client, s.Server = cl.IP, sv.IP
	return s, nil
}
