// Package pipeline computes the OpenFlow flows of an NVI bridge from plain
// values: the bridge's own facts, its workloads, and its sessions. It does no
// I/O; the agent sends what it returns. Each table is named for its job, each
// flow is built by a small function, and each flow's cookie says which feature
// owns it.
//
//	table 0  classifier     uplink -> session-in, host -> uplink, workload -> spoof-guard
//	table 10 spoof-guard    a workload may send only untagged IPv4 and ARP, with its own MAC and IP
//	table 20 arp-responder  every ARP request is answered by flows, with the gateway MAC
//	table 25 reply-gate     what a workload sends back in the sessions it serves goes
//	                        through conntrack to table 27; tenant traffic from a
//	                        key-range source port is dropped; the rest goes on to 30
//	table 27 reply-check    only replies (+est+rpl) of a served session are forwarded;
//	                        invalid packets are dropped; the rest goes on to 30
//	table 30 session-out    workload traffic: session flows, port-map replies;
//	                        to the tenant's networks: conntrack, then table 35;
//	                        to the underlay: dropped;
//	                        anywhere else: egress, through conntrack to table 32
//	table 32 egress-out     egress source-NATed to the server's address, invalid dropped
//	table 35 ask-agent      drop flows, then punt what the agent handles through the
//	                        workload's own meter, conntrack state attached; drop the rest
//	table 40 session-in     uplink traffic: session flows, port maps, egress replies
//	                        through conntrack to table 45, ICMP errors and a peer's
//	                        echoes to the agent (uplink meter), else pass to the host
//	table 45 egress-in      un-NATed egress replies to their workload, else the host
package pipeline

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"nvi/openflow"
	"nvi/packet"
	"nvi/session"
)

// Table is an OpenFlow table of the pipeline.
type Table uint8

// The pipeline's tables, spaced so that later features can slot in between.
const (
	Classifier   Table = 0
	SpoofGuard   Table = 10
	ARPResponder Table = 20
	ReplyGate    Table = 25
	ReplyCheck   Table = 27
	SessionOut   Table = 30
	EgressOut    Table = 32
	AskAgent     Table = 35
	SessionIn    Table = 40
	EgressIn     Table = 45
)

// Tables lists every table in pipeline order.
var Tables = []Table{Classifier, SpoofGuard, ARPResponder, ReplyGate, ReplyCheck, SessionOut, EgressOut, AskAgent, SessionIn, EgressIn}

// TableNames names the tables for the switch (ovsdb.BridgeSpec), so that
// "ovs-ofctl --names dump-flows" reads table=session_out.
func TableNames() map[uint8]string {
	m := make(map[uint8]string, len(Tables))
	for _, t := range Tables {
		m[uint8(t)] = t.String()
	}
	return m
}

func (t Table) String() string {
	switch t {
	case Classifier:
		return "classifier"
	case SpoofGuard:
		return "spoof_guard"
	case ARPResponder:
		return "arp_responder"
	case ReplyGate:
		return "reply_gate"
	case ReplyCheck:
		return "reply_check"
	case SessionOut:
		return "session_out"
	case EgressOut:
		return "egress_out"
	case AskAgent:
		return "ask_agent"
	case SessionIn:
		return "session_in"
	case EgressIn:
		return "egress_in"
	}
	return fmt.Sprintf("table%d", uint8(t))
}

// Flow priorities, highest first.
const (
	prioKeyPair     = 210 // session-in: both ports in the key range
	prioSession     = 200
	prioKeySource   = 190 // reply-gate: tenant traffic from a key-range source port
	prioPortMap     = 150 // in session-in
	prioDeny        = 150 // in ask-agent
	prioTenantNet   = 140 // a workload's traffic to its tenant's networks: ask the agent
	prioUnderlay    = 130 // a workload's traffic to the underlay: dropped
	prioPortMapRply = 120
	prioICMPError   = 110
	prioEndpoint    = 100
	prioPunt        = 100
	prioInvalid     = 100 // reply-check, egress-out: conntrack says invalid
	prioEgressEcho  = 90
	prioEgressReply = 60
	prioStray       = 50
	prioKeyReply    = 40
	prioEgressNew   = 20
	prioEgressEst   = 10
	prioNoise       = 10
	prioEgress      = 2 // everything else a workload sends: out to the world
	prioAskAgent    = 1 // above the table miss: overlapping flows of one priority match in no defined order
	prioTableMiss   = 0
)

// EgressZone is the conntrack zone of egress NAT. Tenant zones start at 1,
// so no tenant's connections ever share it.
const EgressZone = 0

// Egress NAT takes source ports 28672-32767 on the server's data address:
// below Linux's ephemeral range, so the host's own connections never pick
// one, and a value/mask pair, so one flow sends their replies back through
// conntrack.
const (
	NATPortBase uint16 = 0x7000
	NATPortMask uint16 = 0xf000
)

// internalPrefix holds one address per workload port, which a workload's
// egress traffic carries between the workload and the NAT. Two tenants may
// give their workloads the same address; their ports always differ, so
// conntrack tells their connections apart. No frame on any wire or in any
// workload ever carries these addresses.
var internalPrefix = netip.MustParsePrefix("100.127.0.0/16")

// InternalAddr is the per-port address of a workload's egress traffic.
func InternalAddr(ofport uint32) netip.Addr {
	b := internalPrefix.Addr().As4()
	return netip.AddrFrom4([4]byte{b[0], b[1], byte(ofport >> 8), byte(ofport)})
}

// GatewayMAC is the MAC of every network's virtual gateway. Workloads resolve
// every address to it, so a workload that moves between servers finds the
// same MAC everywhere. It is locally administered ("NVI" in its low bytes).
var GatewayMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x4e, 0x56, 0x49}

// Bridge holds the facts about this server's bridge that flows depend on.
type Bridge struct {
	Uplink  uint32           // OpenFlow port of the uplink to the underlay
	DataIP  netip.Addr       // the server's underlay address (on the bridge's local port)
	DataMAC net.HardwareAddr // the local port's MAC
	Keys    session.KeyRange // ports reserved for session keys
	// Underlay lists the infrastructure no workload may reach: the data
	// subnet (every server's peer API and key range, the router), the
	// directory, a management network. DataIP is always part of it. Egress
	// leaves with the server's address, which peers trust; toward these
	// prefixes it would speak for the server.
	Underlay []netip.Prefix
	// PuntMeter rate-limits packet-ins from the uplink (ICMP errors, a
	// peer's echoes); each workload's have their own, WorkloadMeter.
	PuntMeter uint32
	// StrayMeter rate-limits packet-ins of traffic to a key that no
	// session takes (a peer still sending on a half this server no longer
	// has), apart from PuntMeter so that a scan of the key range cannot
	// crowd out a session's early answers.
	StrayMeter  uint32
	DenyTimeout uint16 // seconds a drop flow lives
	// RouterMAC is the underlay router's MAC, where egress traffic and port
	// map replies go; nil when the server has no way out, which turns
	// egress off.
	RouterMAC net.HardwareAddr
}

// Validate checks that b can be used to build flows.
func (b Bridge) Validate() error {
	switch {
	case b.Uplink == 0 || b.Uplink >= openflow.PortMax:
		return fmt.Errorf("pipeline: uplink port %d is not a physical port", b.Uplink)
	case !b.DataIP.Is4():
		return fmt.Errorf("pipeline: data address %v is not IPv4", b.DataIP)
	case len(b.DataMAC) != 6:
		return fmt.Errorf("pipeline: data MAC %q is not a MAC", b.DataMAC)
	case b.PuntMeter == 0 || b.PuntMeter > WorkloadMeterBase:
		return fmt.Errorf("pipeline: uplink punt meter %d: want 1..%d, below the workloads' meters", b.PuntMeter, WorkloadMeterBase)
	case b.StrayMeter == 0 || b.StrayMeter > WorkloadMeterBase || b.StrayMeter == b.PuntMeter:
		return fmt.Errorf("pipeline: stray-key meter %d: want 1..%d, below the workloads' meters and apart from the uplink's", b.StrayMeter, WorkloadMeterBase)
	}
	for _, p := range b.Underlay {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("pipeline: underlay prefix %v is not IPv4", p)
		}
	}
	return b.Keys.Validate()
}

// Workload is what the pipeline needs to admit one workload's port.
type Workload struct {
	OFPort uint32
	MAC    net.HardwareAddr
	IP     netip.Addr
	Zone   uint16         // its tenant's conntrack zone
	Nets   []netip.Prefix // its tenant's networks: traffic there asks the agent
}

func flow(t Table, prio uint16, c Cookie, match []openflow.Field, ins ...openflow.Instruction) *openflow.FlowMod {
	return &openflow.FlowMod{
		Cookie:       uint64(c),
		TableID:      uint8(t),
		Command:      openflow.FlowAdd,
		Priority:     prio,
		BufferID:     openflow.NoBuffer,
		OutPort:      openflow.PortAny,
		OutGroup:     openflow.GroupAny,
		Match:        openflow.Match{Fields: match},
		Instructions: ins,
	}
}

func apply(actions ...openflow.Action) openflow.Instruction {
	return openflow.InstructionApplyActions{Actions: actions}
}

func gotoTable(t Table) openflow.Instruction {
	return openflow.InstructionGotoTable{TableID: uint8(t)}
}

func output(port uint32) openflow.Action { return openflow.ActionOutput{Port: port} }

// ct sends the packet through conntrack in zone: committing it, and/or
// continuing in table (else the pipeline goes on with the next action), and
// with nat when given (an empty NXNat undoes the NAT of an existing
// connection).
func ct(commit bool, zone uint16, table Table, nat *openflow.NXNat) openflow.Action {
	a := openflow.NXConntrack{ZoneImm: zone, RecircTable: openflow.NXCtRecircNone}
	if commit {
		a.Flags |= openflow.NXCtCommit
	}
	if table != noTable {
		a.RecircTable = uint8(table)
	}
	if nat != nil {
		a.Actions = []openflow.Action{*nat}
	}
	return a
}

// noTable tells ct not to continue in another table.
const noTable Table = 0xff

func set(f openflow.Field) openflow.Action { return openflow.ActionSetField{Field: f} }

func move(src, dst openflow.FieldID, bits uint16) openflow.Action {
	return openflow.NXRegMove{NBits: bits, Src: src, Dst: dst}
}

// punt sends a packet to the agent through a rate-limiting meter.
func punt(meter uint32) []openflow.Instruction {
	return []openflow.Instruction{
		openflow.InstructionMeter{MeterID: meter},
		apply(openflow.ActionOutput{Port: openflow.PortController, MaxLen: openflow.ControllerMaxLenNoBuffer}),
	}
}

// WorkloadMeterBase is where workloads' punt meters start: a workload's
// meter is WorkloadMeterBase + its OpenFlow port, so one workload flooding
// the slow path fills only its own meter, never another's or the uplink's.
// Open vSwitch numbers ports below 0xff00, so the highest meter is 0xffff,
// within what every datapath offers.
const WorkloadMeterBase uint32 = 0x100

// WorkloadMeter is the meter of a workload port's packet-ins.
func WorkloadMeter(ofport uint32) uint32 { return WorkloadMeterBase + ofport }

var (
	ipv4 = openflow.EthType(0x0800)
	arp  = openflow.EthType(0x0806)
	// notLater matches whole packets and first fragments: later fragments
	// carry no ports, so the agent could do nothing with them.
	notLater = openflow.IPFrag(0, openflow.IPFragLater)
	// untagged: the spoof guard admits no 802.1Q or 802.1ad frames, and
	// nothing tagged from the underlay reaches a workload or the agent
	// (tagged frames there are the host's business).
	untagged = openflow.VLANUntagged()
)

// ctReply is a packet conntrack saw as the answer of a connection whose
// first packet went the other way; ctInvalid one it refused.
var (
	ctReply   = openflow.CtState(openflow.CtStateTrk|openflow.CtStateEst|openflow.CtStateRpl, openflow.CtStateTrk|openflow.CtStateEst|openflow.CtStateRpl|openflow.CtStateInv)
	ctInvalid = openflow.CtState(openflow.CtStateTrk|openflow.CtStateInv, openflow.CtStateTrk|openflow.CtStateInv)
	ctNew     = openflow.CtState(openflow.CtStateTrk|openflow.CtStateNew, openflow.CtStateTrk|openflow.CtStateNew|openflow.CtStateInv)
	ctValid   = openflow.CtState(openflow.CtStateTrk, openflow.CtStateTrk|openflow.CtStateInv)
)

// UnderlayPrefixes is what workloads must not reach: b.Underlay and DataIP,
// without prefixes another one already covers (so that no two drop flows
// overlap).
func UnderlayPrefixes(b Bridge) []netip.Prefix {
	all := slices.Clone(b.Underlay)
	if b.DataIP.Is4() {
		all = append(all, netip.PrefixFrom(b.DataIP, 32))
	}
	var out []netip.Prefix
	for i, p := range all {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		covered := false
		for j, q := range all {
			if i == j || !q.IsValid() || !q.Addr().Is4() {
				continue
			}
			q = q.Masked()
			if q.Bits() <= p.Bits() && q.Contains(p.Addr()) && (q != p || j < i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return out
}

// BaseFlows are the flows every NVI bridge has before any workload arrives.
func BaseFlows(b Bridge) []*openflow.FlowMod {
	base := FeatureCookie(FeatureBase)
	var fs []*openflow.FlowMod
	// Classifier: the uplink goes to session-in; the host's own traffic
	// leaves untouched; anything from an unknown port is dropped.
	fs = append(fs,
		flow(Classifier, prioEndpoint, base, []openflow.Field{openflow.InPort(b.Uplink)}, gotoTable(SessionIn)),
		flow(Classifier, prioEndpoint, base, []openflow.Field{openflow.InPort(openflow.PortLocal)}, apply(output(b.Uplink))),
		flow(Classifier, prioTableMiss, base, nil),
		flow(SpoofGuard, prioTableMiss, base, nil),
		flow(ARPResponder, prioTableMiss, base, nil),
	)
	// Reply gate and check: what no served session claims, and what
	// conntrack does not call invalid or a reply, is ordinary workload
	// traffic.
	fs = append(fs,
		flow(ReplyGate, prioTableMiss, base, nil, gotoTable(SessionOut)),
		flow(ReplyCheck, prioInvalid, base, []openflow.Field{ctInvalid}),
		flow(ReplyCheck, prioTableMiss, base, nil, gotoTable(SessionOut)),
	)
	// Session-out: multicast and broadcast have no session to go to; the
	// underlay is not for workloads (their egress would speak as this
	// server to peers, the directory and the host's services); without
	// egress, every other IPv4 packet asks the agent.
	fs = append(fs,
		flow(SessionOut, prioNoise, base, []openflow.Field{ipv4, openflow.IPv4DstPrefix(netip.MustParsePrefix("224.0.0.0/4"))}),
		flow(SessionOut, prioNoise, base, []openflow.Field{ipv4, openflow.IPv4Dst(netip.MustParseAddr("255.255.255.255"))}),
		flow(SessionOut, prioAskAgent, base, []openflow.Field{ipv4}, gotoTable(AskAgent)),
		flow(SessionOut, prioTableMiss, base, nil),
		flow(AskAgent, prioTableMiss, base, nil),
	)
	for _, p := range UnderlayPrefixes(b) {
		fs = append(fs, flow(SessionOut, prioUnderlay, base, []openflow.Field{ipv4, openflow.IPv4DstPrefix(p)}))
	}
	// Session-in: traffic to a key with no session left goes to the agent
	// through a meter of its own, never to the host: it is a peer still
	// sending on a half this server no longer has, and the agent tells that
	// peer, which checks its session and sets it up again (audit M4);
	// everything else is the host's. A packet from a key to a key is no
	// session's (keys are server ports only; workloads may not send from
	// one), so it could match a client and a server half at once: dropped
	// above both.
	fs = append(fs,
		flow(SessionIn, prioKeyPair, base, []openflow.Field{openflow.InPort(b.Uplink), ipv4, openflow.IPProto(6), openflow.IPv4Dst(b.DataIP),
			openflow.TCPSrcMasked(b.Keys.Base, b.Keys.Mask), openflow.TCPDstMasked(b.Keys.Base, b.Keys.Mask)}),
		flow(SessionIn, prioKeyPair, base, []openflow.Field{openflow.InPort(b.Uplink), ipv4, openflow.IPProto(17), openflow.IPv4Dst(b.DataIP),
			openflow.UDPSrcMasked(b.Keys.Base, b.Keys.Mask), openflow.UDPDstMasked(b.Keys.Base, b.Keys.Mask)}),
		flow(SessionIn, prioStray, base, []openflow.Field{ipv4, openflow.IPProto(6), openflow.IPv4Dst(b.DataIP), openflow.TCPDstMasked(b.Keys.Base, b.Keys.Mask)}, punt(b.StrayMeter)...),
		flow(SessionIn, prioStray, base, []openflow.Field{ipv4, openflow.IPProto(17), openflow.IPv4Dst(b.DataIP), openflow.UDPDstMasked(b.Keys.Base, b.Keys.Mask)}, punt(b.StrayMeter)...),
		// What a peer sends untagged from a key that no session flow takes
		// goes to the agent, through the uplink's meter: a client's way
		// back goes in while the peer is asked, so the first answers can
		// come before it, and the agent holds them until it is in (and
		// hands real host traffic to the host). Those flows match all a
		// session's way back matches but its key and peer, so what the
		// agent runs again once the way back is in cannot come back. They
		// also keep the switch's datapath cache from lumping key traffic
		// in with host traffic.
		flow(SessionIn, prioKeyReply, base, []openflow.Field{untagged, ipv4, openflow.IPProto(6), openflow.IPv4Dst(b.DataIP), openflow.TCPSrcMasked(b.Keys.Base, b.Keys.Mask)}, punt(b.PuntMeter)...),
		flow(SessionIn, prioKeyReply, base, []openflow.Field{untagged, ipv4, openflow.IPProto(17), openflow.IPv4Dst(b.DataIP), openflow.UDPSrcMasked(b.Keys.Base, b.Keys.Mask)}, punt(b.PuntMeter)...),
		flow(SessionIn, prioTableMiss, base, nil, apply(output(openflow.PortLocal))),
	)
	// Egress replies come back to a NAT port: conntrack undoes the NAT and
	// table 45 hands them to their workload. Host traffic that happens to
	// use such a port passes conntrack unchanged and reaches the host.
	// Egress itself leaves through conntrack: a new connection is NATed to
	// the server's address, a known one as its first packet was, and one
	// conntrack calls invalid (a stray reset, an echo reply nobody asked
	// for) is dropped, never sent with its internal address.
	if b.RouterMAC != nil {
		unNAT := apply(ct(false, EgressZone, EgressIn, &openflow.NXNat{}))
		toRouter := []openflow.Action{set(openflow.EthSrc(b.DataMAC)), set(openflow.EthDst(b.RouterMAC)), output(b.Uplink)}
		fs = append(fs,
			flow(SessionIn, prioEgressReply, base, []openflow.Field{untagged, ipv4, openflow.IPProto(6), openflow.IPv4Dst(b.DataIP), openflow.TCPDstMasked(NATPortBase, NATPortMask)}, unNAT),
			flow(SessionIn, prioEgressReply, base, []openflow.Field{untagged, ipv4, openflow.IPProto(17), openflow.IPv4Dst(b.DataIP), openflow.UDPDstMasked(NATPortBase, NATPortMask)}, unNAT),
			flow(SessionIn, prioEgressEcho, base, []openflow.Field{untagged, ipv4, openflow.IPProto(1), openflow.IPv4Dst(b.DataIP), openflow.ICMPv4Type(0)}, unNAT),
			flow(EgressOut, prioInvalid, base, []openflow.Field{ipv4, ctInvalid}),
			flow(EgressOut, prioEgressNew, base, []openflow.Field{ipv4, ctNew}, apply(append([]openflow.Action{
				ct(true, EgressZone, noTable, &openflow.NXNat{
					Flags: openflow.NXNatSrc, IPv4Min: b.DataIP, IPv4Max: b.DataIP,
					ProtoMin: NATPortBase, ProtoMax: NATPortBase | ^NATPortMask,
				})}, toRouter...)...)),
			flow(EgressOut, prioEgressEst, base, []openflow.Field{ipv4, ctValid}, apply(toRouter...)),
		)
	}
	fs = append(fs, flow(EgressOut, prioTableMiss, base, nil), flow(EgressIn, prioTableMiss, base, nil, apply(output(openflow.PortLocal))))
	// ICMP errors to this server may be about a session's packets: the
	// agent translates those and hands the rest to the host. They come from
	// anyone, so they have a meter of their own.
	for _, typ := range []uint8{icmpDestUnreachable, icmpTimeExceeded} {
		fs = append(fs, flow(SessionIn, prioICMPError, base,
			[]openflow.Field{openflow.InPort(b.Uplink), untagged, ipv4, notLater, openflow.IPProto(1), openflow.IPv4Dst(b.DataIP), openflow.ICMPv4Type(typ)},
			punt(b.PuntMeter)...))
	}
	return fs
}

// ICMP error types that can quote a session's packet.
const (
	icmpDestUnreachable = 3
	icmpTimeExceeded    = 11
)

// PuntMeter is the meter that keeps one source of packet-ins (the uplink,
// or one workload: WorkloadMeter) to a rate the agent can take.
func PuntMeter(id, packetsPerSecond, burst uint32) *openflow.MeterMod {
	return &openflow.MeterMod{
		Command: openflow.MeterAdd,
		Flags:   openflow.MeterFlagPktps | openflow.MeterFlagBurst,
		MeterID: id,
		Bands:   []openflow.MeterBand{openflow.MeterBandDrop{Rate: packetsPerSecond, BurstSize: burst}},
	}
}

// DeleteMeter removes a meter. Open vSwitch removes the flows that use it
// too, so a workload's meter goes only after its flows.
func DeleteMeter(id uint32) *openflow.MeterMod {
	return &openflow.MeterMod{Command: openflow.MeterDelete, MeterID: id}
}

// puntable is what the agent's slow path handles from a workload: the
// first packets of TCP and UDP sessions, echoes (requests start ICMP
// sessions, replies answer them) and the ICMP errors it translates, never
// a later fragment. Anything else a workload sends toward the agent is
// dropped by flows, so it never costs a packet-in.
var puntable = [][]openflow.Field{
	{openflow.IPProto(6)},
	{openflow.IPProto(17)},
	{openflow.IPProto(1), openflow.ICMPv4Type(8)},
	{openflow.IPProto(1), openflow.ICMPv4Type(0)},
	{openflow.IPProto(1), openflow.ICMPv4Type(icmpDestUnreachable)},
	{openflow.IPProto(1), openflow.ICMPv4Type(icmpTimeExceeded)},
}

// WorkloadFlows admit one workload: its port is classified, it may send only
// untagged frames with its own MAC and IPv4 address, and its ARP requests are
// answered by flows (so resolution keeps working while the agent restarts).
// Its traffic to its tenant's networks that no session carries goes through
// conntrack to the agent, through its own meter, which so learns whether a
// packet answers a connection made earlier; its traffic anywhere else but
// the underlay leaves as the server's (egress).
func WorkloadFlows(b Bridge, w Workload) []*openflow.FlowMod {
	c := EndpointCookie(w.OFPort)
	in := openflow.InPort(w.OFPort)
	mac := openflow.EthSrc(w.MAC)
	fs := []*openflow.FlowMod{
		flow(Classifier, prioEndpoint, c, []openflow.Field{in}, gotoTable(SpoofGuard)),
		flow(SpoofGuard, prioEndpoint, c, []openflow.Field{in, untagged, mac, ipv4, openflow.IPv4Src(w.IP)}, gotoTable(ReplyGate)),
		flow(SpoofGuard, prioEndpoint, c, []openflow.Field{in, untagged, mac, arp, openflow.ARPSpa(w.IP), openflow.ARPSha(w.MAC)}, gotoTable(ARPResponder)),
		// A request for its own address is a duplicate-address probe or a
		// gratuitous ARP: answering would make the workload see a conflict.
		flow(ARPResponder, prioEndpoint+10, c, []openflow.Field{in, arp, openflow.ARPOp(1), openflow.ARPTpa(w.IP)}),
		flow(ARPResponder, prioEndpoint, c, []openflow.Field{in, arp, openflow.ARPOp(1)}, apply(
			move(openflow.IDEthSrc, openflow.IDEthDst, 48),
			set(openflow.EthSrc(GatewayMAC)),
			set(openflow.ARPOp(2)),
			move(openflow.IDARPSha, openflow.IDARPTha, 48),
			set(openflow.ARPSha(GatewayMAC)),
			move(openflow.IDARPTpa, openflow.IDARPSpa, 32),
			set(openflow.ARPTpa(w.IP)),
			output(openflow.PortInPort),
		)),
	}
	for _, m := range puntable {
		fs = append(fs, flow(AskAgent, prioPunt, c, append([]openflow.Field{in, ipv4, notLater}, m...), punt(WorkloadMeter(w.OFPort))...))
	}
	fs = append(fs, TenantNetFlows(b, w)...)
	if b.RouterMAC != nil {
		internal := InternalAddr(w.OFPort)
		fs = append(fs,
			flow(SessionOut, prioEgress, c, []openflow.Field{in, ipv4}, apply(
				set(openflow.IPv4Src(internal)),
				ct(false, EgressZone, EgressOut, &openflow.NXNat{}))),
			flow(EgressIn, prioEndpoint, c, []openflow.Field{ipv4, openflow.IPv4Dst(internal)}, apply(
				set(openflow.EthSrc(GatewayMAC)), set(openflow.EthDst(w.MAC)),
				set(openflow.IPv4Dst(w.IP)), output(w.OFPort))),
		)
	}
	return fs
}

// DeleteByCookie removes every flow whose cookie matches c under mask.
func DeleteByCookie(c, mask Cookie) *openflow.FlowMod {
	return &openflow.FlowMod{
		Cookie:     uint64(c),
		CookieMask: uint64(mask),
		TableID:    openflow.TableAll,
		Command:    openflow.FlowDelete,
		BufferID:   openflow.NoBuffer,
		OutPort:    openflow.PortAny,
		OutGroup:   openflow.GroupAny,
	}
}

// DeleteWorkloadFlows removes what WorkloadFlows and Deny installed for a port.
func DeleteWorkloadFlows(ofport uint32) []*openflow.FlowMod {
	return []*openflow.FlowMod{
		DeleteByCookie(EndpointCookie(ofport), FullMask),
		DeleteByCookie(DenyCookie(ofport), FullMask),
	}
}

// l4 returns the match fields and set-field constructor of a session's
// protocol's ports.
func l4(p session.Proto) (src, dst func(uint16) openflow.Field) {
	if p == session.UDP {
		return openflow.UDPSrc, openflow.UDPDst
	}
	return openflow.TCPSrc, openflow.TCPDst
}

// SessionFlows are one server's half of a session. Cross-server halves
// rewrite addresses and the server port to the key so the underlay sees
// only server addresses; a local session rewrites MACs only. ICMP sessions
// have no flows: see Punt.
//
// A client half is two flows, one per direction. Where this server holds
// the session's server workload (server halves and local sessions), the
// client-to-server flow commits the connection to conntrack in the tenant's
// zone, and the way back is two flows: the reply gate sends the server's
// packets through conntrack, and the reply check forwards only replies of
// connections the client opened. Anything else the server sends from its
// port goes on as new traffic of its own, which the agent judges by policy
// like any other: a session carries answers, never the server's own
// connections to the client.
func SessionFlows(b Bridge, s session.Session) ([]*openflow.FlowMod, error) {
	if !s.Proto.HasPorts() {
		return nil, fmt.Errorf("pipeline: %s sessions take the slow path, not flows", s.Proto)
	}
	c := SessionCookie(s)
	src, dst := l4(s.Proto)
	proto := openflow.IPProto(uint8(s.Proto))
	cl, sv := s.ClientEnd(), s.ServerEnd()
	// Client-to-server and server-to-client packets as the workloads see them.
	toServer := func(in uint32) []openflow.Field {
		return []openflow.Field{openflow.InPort(in), ipv4, openflow.IPv4Src(cl.IP), openflow.IPv4Dst(sv.IP), proto, dst(s.Port)}
	}
	toClient := func(in uint32) []openflow.Field {
		return []openflow.Field{openflow.InPort(in), ipv4, openflow.IPv4Src(sv.IP), openflow.IPv4Dst(cl.IP), proto, src(s.Port)}
	}
	// The server workload's end commits its connections in the tenant's
	// zone: the reply check needs them, and after a session idled out the
	// agent still knows a packet the server sends as the answer of an
	// allowed connection.
	commit := ct(true, s.Zone, noTable, nil)
	deliver := func(to session.Endpoint, rewrites ...openflow.Action) openflow.Instruction {
		as := append([]openflow.Action{set(openflow.EthSrc(GatewayMAC)), set(openflow.EthDst(to.MAC))}, rewrites...)
		return apply(append(as, output(to.OFPort))...)
	}
	// Out of this server: the frame becomes a plain server-to-server packet.
	toPeer := func(l4 openflow.Field) openflow.Instruction {
		return apply(set(openflow.EthSrc(b.DataMAC)), set(openflow.EthDst(s.Peer.NextHop)),
			set(openflow.IPv4Src(b.DataIP)), set(openflow.IPv4Dst(s.Peer.IP)),
			set(l4), output(b.Uplink))
	}
	// Into this server from the peer, as the underlay carries it.
	fromPeer := func(l4 openflow.Field) []openflow.Field {
		return []openflow.Field{openflow.InPort(b.Uplink), untagged, ipv4, openflow.IPv4Src(s.Peer.IP), openflow.IPv4Dst(b.DataIP), proto, l4}
	}
	gate := flow(ReplyGate, prioSession, c, toClient(sv.OFPort), apply(ct(false, s.Zone, ReplyCheck, nil)))
	replies := append(toClient(sv.OFPort), ctReply)
	switch s.Role {
	case session.RoleLocal:
		return []*openflow.FlowMod{
			flow(SessionOut, prioSession, c, toServer(cl.OFPort), deliver(sv, commit)),
			gate,
			flow(ReplyCheck, prioSession, c, replies, deliver(cl)),
		}, nil
	case session.RoleClient:
		return []*openflow.FlowMod{
			flow(SessionOut, prioSession, c, toServer(cl.OFPort), toPeer(dst(s.Key))),
			flow(SessionIn, prioSession, c, fromPeer(src(s.Key)),
				deliver(cl, set(openflow.IPv4Src(sv.IP)), set(openflow.IPv4Dst(cl.IP)), set(src(s.Port)))),
		}, nil
	case session.RoleServer:
		return []*openflow.FlowMod{
			flow(SessionIn, prioSession, c, fromPeer(dst(s.Key)),
				deliver(sv, set(openflow.IPv4Src(cl.IP)), set(openflow.IPv4Dst(sv.IP)), set(dst(s.Port)), commit)),
			gate,
			flow(ReplyCheck, prioSession, c, replies, toPeer(src(s.Key))),
		}, nil
	}
	return nil, fmt.Errorf("pipeline: unknown session role %v", s.Role)
}

// SessionPathFlows returns one way of a client half: back (its session_in
// flow, which forwards only what the peer sends with the session's key, so
// it may go in before the peer is asked) or out (its session_out flow,
// which must wait for the peer's half: invariant 1).
func SessionPathFlows(b Bridge, s session.Session, back bool) ([]*openflow.FlowMod, error) {
	if s.Role != session.RoleClient {
		return nil, fmt.Errorf("pipeline: only a client half is installed one way at a time, not a %s half", s.Role)
	}
	all, err := SessionFlows(b, s)
	if err != nil {
		return nil, err
	}
	want := SessionOut
	if back {
		want = SessionIn
	}
	var out []*openflow.FlowMod
	for _, f := range all {
		if Table(f.TableID) == want {
			out = append(out, f)
		}
	}
	return out, nil
}

// FromPeer turns a first packet of server half s, as the client workload
// sent it and the client's server passed it in its Accept, into the frame
// the underlay would have carried: what s's session_in flow takes from the
// uplink. It fails on a frame that is not the session's (another tuple, a
// fragment, not TCP or UDP), which the caller drops.
func FromPeer(b Bridge, s session.Session, frame []byte) ([]byte, error) {
	if s.Role != session.RoleServer || !s.Proto.HasPorts() {
		return nil, fmt.Errorf("pipeline: first packets are delivered by a TCP or UDP server half, not a %s %s half", s.Proto, s.Role)
	}
	f, err := packet.Parse(slices.Clone(frame))
	if err != nil {
		return nil, err
	}
	switch {
	case f.EthType() != packet.EtherTypeIPv4 || session.Proto(f.IPProto()) != s.Proto || f.L4() == nil:
		return nil, fmt.Errorf("pipeline: a first packet must be an unfragmented %s datagram", s.Proto)
	case f.IPv4Src() != s.Client || f.IPv4Dst() != s.Server || f.L4Dst() != s.Port:
		return nil, fmt.Errorf("pipeline: the packet %s -> %s:%d is not of session %s", f.IPv4Src(), f.IPv4Dst(), f.L4Dst(), s.Tuple)
	}
	for _, set := range []func() error{
		func() error { return f.SetEthSrc(s.Peer.NextHop) },
		func() error { return f.SetEthDst(b.DataMAC) },
		func() error { return f.SetIPv4Src(s.Peer.IP) },
		func() error { return f.SetIPv4Dst(b.DataIP) },
		func() error { return f.SetL4Dst(s.Key) },
	} {
		if err := set(); err != nil {
			return nil, err
		}
	}
	return f.Bytes(), nil
}

// DeleteSessionFlows removes every flow of s.
func DeleteSessionFlows(s session.Session) *openflow.FlowMod {
	return DeleteByCookie(SessionCookie(s), FullMask)
}

// Punt sends ICMP from a peer server to the agent, which translates echo
// identifiers in software. It is installed while any ICMP session with the
// peer lives, so ICMP from servers NVI never talked to reaches the host
// without a detour. It shares the uplink's meter, never a workload's.
func Punt(b Bridge, peer netip.Addr) *openflow.FlowMod {
	return flow(SessionIn, prioPunt, PuntCookie(peer),
		[]openflow.Field{openflow.InPort(b.Uplink), untagged, ipv4, notLater, openflow.IPProto(1), openflow.IPv4Src(peer), openflow.IPv4Dst(b.DataIP)},
		punt(b.PuntMeter)...)
}

// DeletePunt removes Punt's flow.
func DeletePunt(peer netip.Addr) *openflow.FlowMod {
	return DeleteByCookie(PuntCookie(peer), FullMask)
}

// Deny drops a workload's traffic toward a destination that policy refuses
// or that does not exist, for b.DenyTimeout seconds. Until it expires, a
// flood toward that destination costs no packet-ins at all; after it, one.
// It sits in ask-agent, which every packet on its way to the agent passes,
// whichever table sent it; sessions, being earlier, still win.
func Deny(b Bridge, from uint32, t session.Tuple) *openflow.FlowMod {
	m := []openflow.Field{openflow.InPort(from), ipv4, openflow.IPv4Src(t.Client), openflow.IPv4Dst(t.Server), openflow.IPProto(uint8(t.Proto))}
	if t.Proto.HasPorts() {
		_, dst := l4(t.Proto)
		m = append(m, dst(t.Port))
	}
	f := flow(AskAgent, prioDeny, DenyCookie(from), m)
	f.HardTimeout = b.DenyTimeout
	return f
}

// DenyICMP drops, for b.DenyTimeout seconds, the ICMP messages of one type
// from a workload to one destination that the agent had no use for: an
// echo reply or an error about no session. It outranks Deny, which may
// cover all of a pair's ICMP at once.
func DenyICMP(b Bridge, from uint32, src, dst netip.Addr, icmpType uint8) *openflow.FlowMod {
	f := flow(AskAgent, prioDeny+1, DenyCookie(from), []openflow.Field{openflow.InPort(from), ipv4, openflow.IPv4Src(src), openflow.IPv4Dst(dst), openflow.IPProto(1), openflow.ICMPv4Type(icmpType)})
	f.HardTimeout = b.DenyTimeout
	return f
}

// DenyStray is the drop flow for a packet a workload sent that reached the
// agent and that the agent does not make a session of: an ICMP message of
// no session (by type), or a protocol the slow path does not carry. It
// returns nil for what has no drop flow of its own (TCP and UDP, which are
// sessions or refused with Deny; non-IPv4, which never reaches the agent).
func DenyStray(b Bridge, from uint32, f *packet.Frame) *openflow.FlowMod {
	if f.EthType() != packet.EtherTypeIPv4 || !f.IPv4Src().Is4() || !f.IPv4Dst().Is4() {
		return nil
	}
	switch p := f.IPProto(); {
	case p == packet.ProtoTCP || p == packet.ProtoUDP:
		return nil
	case p == packet.ProtoICMP:
		if f.L4() == nil {
			return nil
		}
		return DenyICMP(b, from, f.IPv4Src(), f.IPv4Dst(), f.ICMPType())
	default:
		return Deny(b, from, session.Tuple{Proto: session.Proto(p), Client: f.IPv4Src(), Server: f.IPv4Dst()})
	}
}

// TenantNetFlows send a workload's traffic toward its tenant's networks,
// when no session carries it, through conntrack to the agent. Such traffic
// from a source port in the key range is dropped: on the underlay a key is
// only ever a server-side port, and a client port inside the range would
// make one packet match a client and a server half at once. (A server
// answering from a port in the key range is not affected while its
// session lives: the reply gate comes first.)
func TenantNetFlows(b Bridge, w Workload) []*openflow.FlowMod {
	var fs []*openflow.FlowMod
	c := EndpointCookie(w.OFPort)
	in := openflow.InPort(w.OFPort)
	for _, n := range w.Nets {
		fs = append(fs,
			flow(ReplyGate, prioKeySource, c, []openflow.Field{in, ipv4, openflow.IPv4DstPrefix(n), openflow.IPProto(6), openflow.TCPSrcMasked(b.Keys.Base, b.Keys.Mask)}),
			flow(ReplyGate, prioKeySource, c, []openflow.Field{in, ipv4, openflow.IPv4DstPrefix(n), openflow.IPProto(17), openflow.UDPSrcMasked(b.Keys.Base, b.Keys.Mask)}),
			flow(SessionOut, prioTenantNet, c, []openflow.Field{in, ipv4, openflow.IPv4DstPrefix(n)},
				apply(ct(false, w.Zone, AskAgent, nil))))
	}
	return fs
}

// PortMap exposes a workload's port on the server's data address.
type PortMap struct {
	Proto      session.Proto
	Port       uint16 // on the server's data address
	Target     Workload
	TargetPort uint16
}

// PortMapCookie names a port map's flows.
func PortMapCookie(p session.Proto, port uint16) Cookie {
	return FeatureCookie(FeaturePortMap) | Cookie(protoCodes[p])<<16 | Cookie(port)
}

// PortMapFlows expose pm.Target's port: what reaches the server's address
// on pm.Port goes to the workload with the client's address unchanged, and
// the workload's answers leave from the server's address and pm.Port. The
// answers to its tenant's networks are not port-map traffic: they keep
// asking the agent, as any of the workload's tenant traffic does (the
// tenant-network flows outrank these); nor do any go to the underlay.
func PortMapFlows(b Bridge, pm PortMap) ([]*openflow.FlowMod, error) {
	if !pm.Proto.HasPorts() {
		return nil, fmt.Errorf("pipeline: port maps are for tcp and udp, not %s", pm.Proto)
	}
	if b.RouterMAC == nil {
		return nil, fmt.Errorf("pipeline: a port map needs the underlay router (--underlay-gateway)")
	}
	c := PortMapCookie(pm.Proto, pm.Port)
	src, dst := l4(pm.Proto)
	proto := openflow.IPProto(uint8(pm.Proto))
	w := pm.Target
	fromW := []openflow.Field{openflow.InPort(w.OFPort), ipv4, openflow.IPv4Src(w.IP), proto, src(pm.TargetPort)}
	fs := []*openflow.FlowMod{
		flow(SessionIn, prioPortMap, c, []openflow.Field{openflow.InPort(b.Uplink), untagged, ipv4, openflow.IPv4Dst(b.DataIP), proto, dst(pm.Port)}, apply(
			set(openflow.EthSrc(GatewayMAC)), set(openflow.EthDst(w.MAC)),
			set(openflow.IPv4Dst(w.IP)), set(dst(pm.TargetPort)), output(w.OFPort))),
		flow(SessionOut, prioPortMapRply, c, fromW, apply(
			set(openflow.IPv4Src(b.DataIP)), set(src(pm.Port)),
			set(openflow.EthSrc(b.DataMAC)), set(openflow.EthDst(b.RouterMAC)), output(b.Uplink))),
	}
	return fs, nil
}
