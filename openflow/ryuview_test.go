package openflow

// A test-side converter from decoded messages to the JSON shape Ryu uses in
// testdata/openflow13/*.packet.json, so decoded values can be compared with
// an independent decoder's output field by field.

import (
	"encoding/base64"
	"fmt"
	"net"
	"reflect"
)

type obj = map[string]any

// wrap gives Ryu's {"ClassName": {...}} form.
func wrap(class string, fields obj) obj { return obj{class: fields} }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// ryuFieldNames maps field IDs to Ryu's OXM names.
var ryuFieldNames = map[FieldID]string{
	IDInPort: "in_port", IDInPhyPort: "in_phy_port", IDMetadata: "metadata", IDEthDst: "eth_dst",
	IDEthSrc: "eth_src", IDEthType: "eth_type", IDVLANVID: "vlan_vid", IDVLANPCP: "vlan_pcp",
	IDIPDSCP: "ip_dscp", IDIPECN: "ip_ecn", IDIPProto: "ip_proto", IDIPv4Src: "ipv4_src",
	IDIPv4Dst: "ipv4_dst", IDTCPSrc: "tcp_src", IDTCPDst: "tcp_dst", IDUDPSrc: "udp_src",
	IDUDPDst: "udp_dst", IDSCTPSrc: "sctp_src", IDSCTPDst: "sctp_dst", IDICMPv4Type: "icmpv4_type",
	IDICMPv4Code: "icmpv4_code", IDARPOp: "arp_op", IDARPSpa: "arp_spa", IDARPTpa: "arp_tpa",
	IDARPSha: "arp_sha", IDARPTha: "arp_tha", IDIPv6Src: "ipv6_src", IDIPv6Dst: "ipv6_dst",
	IDIPv6FLabel: "ipv6_flabel", IDICMPv6Type: "icmpv6_type", IDICMPv6Code: "icmpv6_code",
	IDIPv6NDTarget: "ipv6_nd_target", IDIPv6NDSLL: "ipv6_nd_sll", IDIPv6NDTLL: "ipv6_nd_tll",
	IDMPLSLabel: "mpls_label", IDMPLSTC: "mpls_tc", IDMPLSBOS: "mpls_bos", IDPBBISID: "pbb_isid",
	IDTunnelID: "tunnel_id", IDIPv6ExtHdr: "ipv6_exthdr", IDTunIPv4Src: "tun_ipv4_src",
	IDTunIPv4Dst: "tun_ipv4_dst", IDConjID: "conj_id",
	{Class: ClassExperimenter, Experimenter: ExperimenterONF}: "pbb_uca",
}

// ryuValue renders a field value as Ryu does: MAC and IP addresses as
// strings, everything else as an integer.
func ryuValue(id FieldID, v []byte) any {
	if v == nil {
		return nil
	}
	fi := knownFields[id]
	if fi != nil {
		switch fi.format {
		case fmtMAC:
			return net.HardwareAddr(v).String()
		case fmtIP:
			return Field{Value: v}.Addr().String()
		}
	}
	return beUint(v)
}

func ryuField(f Field) obj {
	id := f.ID()
	name, ok := ryuFieldNames[id]
	if !ok {
		name = id.Name()
	}
	value, mask := ryuValue(id, f.Value), ryuValue(id, f.Mask)
	if name == "pbb_uca" && len(f.Value) == 3 {
		// ONF experimenter field: 16-bit exp_type 0x0a00 (2560) then a byte.
		value = fmt.Sprintf("exp_type=%d value=%d", beUint(f.Value[:2]), f.Value[2])
		if beUint(f.Value[:2]) == 2560 {
			value = uint64(f.Value[2])
		}
	}
	return wrap("OXMTlv", obj{"field": name, "value": value, "mask": mask})
}

func ryuMatch(m Match) obj {
	fields := []any{}
	for _, f := range m.Fields {
		fields = append(fields, ryuField(f))
	}
	return wrap("OFPMatch", obj{"type": 1, "oxm_fields": fields})
}

func ryuActions(acts []Action) []any {
	out := []any{}
	for _, a := range acts {
		out = append(out, ryuAction(a))
	}
	return out
}

func ryuAction(a Action) obj {
	t := obj{"type": a.ActionType()}
	with := func(class string, kv ...any) obj {
		for i := 0; i < len(kv); i += 2 {
			t[kv[i].(string)] = kv[i+1]
		}
		return wrap(class, t)
	}
	switch a := a.(type) {
	case ActionOutput:
		return with("OFPActionOutput", "port", a.Port, "max_len", a.MaxLen)
	case ActionGroup:
		return with("OFPActionGroup", "group_id", a.GroupID)
	case ActionSetQueue:
		return with("OFPActionSetQueue", "queue_id", a.QueueID)
	case ActionSetField:
		return with("OFPActionSetField", "field", ryuField(a.Field))
	case ActionSetNwTTL:
		return with("OFPActionSetNwTtl", "nw_ttl", a.TTL)
	case ActionSetMplsTTL:
		return with("OFPActionSetMplsTtl", "mpls_ttl", a.TTL)
	case ActionDecNwTTL:
		return with("OFPActionDecNwTtl")
	case ActionCopyTTLOut:
		return with("OFPActionCopyTtlOut")
	case ActionCopyTTLIn:
		return with("OFPActionCopyTtlIn")
	case ActionDecMplsTTL:
		return with("OFPActionDecMplsTtl")
	case ActionPopVlan:
		return with("OFPActionPopVlan")
	case ActionPopPbb:
		return with("OFPActionPopPbb")
	case ActionPushVlan:
		return with("OFPActionPushVlan", "ethertype", a.EtherType)
	case ActionPushMpls:
		return with("OFPActionPushMpls", "ethertype", a.EtherType)
	case ActionPushPbb:
		return with("OFPActionPushPbb", "ethertype", a.EtherType)
	case ActionPopMpls:
		return with("OFPActionPopMpls", "ethertype", a.EtherType)
	case NXConjunction:
		return with("NXActionConjunction", "experimenter", ExperimenterNicira, "subtype", NXASTConjunction,
			"clause", a.Clause, "n_clauses", a.NClauses, "id", a.ID)
	case ActionExperimenter:
		if a.Experimenter == ExperimenterNicira && len(a.Data) >= 2 {
			// Nicira actions without a typed form (learn, ...): Ryu's
			// class names them, we compare experimenter and subtype.
			return with("NXRaw", "experimenter", a.Experimenter, "subtype", beUint(a.Data[:2]), "data", b64(a.Data[2:]))
		}
		return with("OFPActionExperimenterUnknown", "experimenter", a.Experimenter, "data", b64(a.Data))
	}
	return with(fmt.Sprintf("%T", a))
}

func ryuInstructions(insts []Instruction) []any {
	out := []any{}
	for _, in := range insts {
		t := obj{"type": in.InstructionType()}
		var class string
		switch in := in.(type) {
		case InstructionGotoTable:
			class, t["table_id"] = "OFPInstructionGotoTable", in.TableID
		case InstructionWriteMetadata:
			class, t["metadata"], t["metadata_mask"] = "OFPInstructionWriteMetadata", in.Metadata, in.Mask
		case InstructionWriteActions:
			class, t["actions"] = "OFPInstructionActions", ryuActions(in.Actions)
		case InstructionApplyActions:
			class, t["actions"] = "OFPInstructionActions", ryuActions(in.Actions)
		case InstructionClearActions:
			class, t["actions"] = "OFPInstructionActions", []any{}
		case InstructionMeter:
			class, t["meter_id"] = "OFPInstructionMeter", in.MeterID
		default:
			class = fmt.Sprintf("%T", in)
		}
		out = append(out, wrap(class, t))
	}
	return out
}

func ryuPort(p Port) obj {
	return wrap("OFPPort", obj{"port_no": p.PortNo, "hw_addr": p.HWAddr.String(), "name": p.Name,
		"config": p.Config, "state": p.State, "curr": p.Curr, "advertised": p.Advertised,
		"supported": p.Supported, "peer": p.Peer, "curr_speed": p.CurrSpeed, "max_speed": p.MaxSpeed})
}

func ryuBands(bands []MeterBand) []any {
	out := []any{}
	for _, b := range bands {
		switch b := b.(type) {
		case MeterBandDrop:
			out = append(out, wrap("OFPMeterBandDrop", obj{"type": 1, "rate": b.Rate, "burst_size": b.BurstSize}))
		case MeterBandDSCPRemark:
			out = append(out, wrap("OFPMeterBandDscpRemark", obj{"type": 2, "rate": b.Rate, "burst_size": b.BurstSize, "prec_level": b.PrecLevel}))
		case MeterBandExperimenter:
			out = append(out, wrap("OFPMeterBandExperimenter", obj{"type": 0xffff, "rate": b.Rate, "burst_size": b.BurstSize, "experimenter": b.Experimenter}))
		}
	}
	return out
}

func ryuBuckets(bks []Bucket) []any {
	out := []any{}
	for _, b := range bks {
		out = append(out, wrap("OFPBucket", obj{"weight": b.Weight, "watch_port": b.WatchPort, "watch_group": b.WatchGroup, "actions": ryuActions(b.Actions)}))
	}
	return out
}

func ryuTableFeatures(ts []TableFeatures) ([]any, error) {
	out := []any{}
	for _, t := range ts {
		props := []any{}
		for _, p := range t.Properties {
			po := obj{"type": p.Type}
			var class string
			switch p.Type {
			case TFPInstructions, TFPInstructionsMiss:
				ids, err := p.IDs()
				if err != nil {
					return nil, err
				}
				l := []any{}
				for _, id := range ids {
					l = append(l, wrap("OFPInstructionId", obj{"type": id}))
				}
				class, po["instruction_ids"] = "OFPTableFeaturePropInstructions", l
			case TFPNextTables, TFPNextTablesMiss:
				l := []any{}
				for _, id := range p.NextTables() {
					l = append(l, id)
				}
				class, po["table_ids"] = "OFPTableFeaturePropNextTables", l
			case TFPWriteActions, TFPWriteActionsMiss, TFPApplyActions, TFPApplyActionsMiss:
				ids, err := p.IDs()
				if err != nil {
					return nil, err
				}
				l := []any{}
				for _, id := range ids {
					l = append(l, wrap("OFPActionId", obj{"type": id}))
				}
				class, po["action_ids"] = "OFPTableFeaturePropActions", l
			case TFPMatch, TFPWildcards, TFPWriteSetField, TFPWriteSetFieldMiss, TFPApplySetField, TFPApplySetFieldMiss:
				ids, masked, err := p.OXMIDs()
				if err != nil {
					return nil, err
				}
				l := []any{}
				for i, id := range ids {
					name, ok := ryuFieldNames[id]
					if !ok {
						name = id.Name()
					}
					hm := 0
					if masked[i] {
						hm = 1
					}
					l = append(l, wrap("OFPOxmId", obj{"type": name, "hasmask": hm}))
				}
				class, po["oxm_ids"] = "OFPTableFeaturePropOxm", l
			case TFPExperimenter, TFPExperimenterMiss:
				exp, et, data, ok := p.Experimenter()
				if !ok || len(data)%4 != 0 {
					return nil, fmt.Errorf("bad experimenter property")
				}
				words := []any{}
				for i := 0; i < len(data); i += 4 {
					words = append(words, beUint(data[i:i+4]))
				}
				class, po["experimenter"], po["exp_type"], po["data"] = "OFPTableFeaturePropExperimenter", exp, et, words
			default:
				class = fmt.Sprintf("Prop%d", p.Type)
			}
			props = append(props, wrap(class, po))
		}
		out = append(out, wrap("OFPTableFeaturesStats", obj{"table_id": t.TableID, "name": t.Name,
			"metadata_match": t.MetadataMatch, "metadata_write": t.MetadataWrite, "config": t.Config,
			"max_entries": t.MaxEntries, "properties": props}))
	}
	return out, nil
}

// ryuMultipart converts a multipart body to Ryu's class and fields.
func ryuMultipart(reply bool, flags uint16, body MultipartBody) (obj, error) {
	f := obj{"flags": flags, "type": body.MultipartType()}
	list := func(class string, items []any) obj { f["body"] = items; return wrap(class, f) }
	one := func(class, inner string, o obj) obj { f["body"] = wrap(inner, o); return wrap(class, f) }
	fields := func(class string, kv obj) obj {
		for k, v := range kv {
			f[k] = v
		}
		return wrap(class, f)
	}
	switch b := body.(type) {
	case DescRequest:
		return wrap("OFPDescStatsRequest", f), nil
	case TableStatsRequest:
		return wrap("OFPTableStatsRequest", f), nil
	case GroupDescRequest:
		return wrap("OFPGroupDescStatsRequest", f), nil
	case GroupFeaturesRequest:
		return wrap("OFPGroupFeaturesStatsRequest", f), nil
	case MeterFeaturesRequest:
		return wrap("OFPMeterFeaturesStatsRequest", f), nil
	case PortDescRequest:
		return wrap("OFPPortDescStatsRequest", f), nil
	case FlowStatsRequest:
		return fields("OFPFlowStatsRequest", obj{"table_id": b.TableID, "out_port": b.OutPort, "out_group": b.OutGroup, "cookie": b.Cookie, "cookie_mask": b.CookieMask, "match": ryuMatch(b.Match)}), nil
	case AggregateStatsRequest:
		return fields("OFPAggregateStatsRequest", obj{"table_id": b.TableID, "out_port": b.OutPort, "out_group": b.OutGroup, "cookie": b.Cookie, "cookie_mask": b.CookieMask, "match": ryuMatch(b.Match)}), nil
	case PortStatsRequest:
		return fields("OFPPortStatsRequest", obj{"port_no": b.PortNo}), nil
	case QueueStatsRequest:
		return fields("OFPQueueStatsRequest", obj{"port_no": b.PortNo, "queue_id": b.QueueID}), nil
	case GroupStatsRequest:
		return fields("OFPGroupStatsRequest", obj{"group_id": b.GroupID}), nil
	case MeterStatsRequest:
		return fields("OFPMeterStatsRequest", obj{"meter_id": b.MeterID}), nil
	case MeterConfigRequest:
		return fields("OFPMeterConfigStatsRequest", obj{"meter_id": b.MeterID}), nil
	case TableFeaturesRequest:
		l, err := ryuTableFeatures(b)
		return list("OFPTableFeaturesStatsRequest", l), err
	case TableFeaturesReply:
		l, err := ryuTableFeatures(b)
		return list("OFPTableFeaturesStatsReply", l), err
	case ExperimenterMultipart:
		if !reply {
			return fields("OFPExperimenterStatsRequest", obj{"experimenter": b.Experimenter, "exp_type": b.ExpType, "data": b64(b.Data)}), nil
		}
		return one("OFPExperimenterStatsReply", "OFPExperimenterMultipart", obj{"experimenter": b.Experimenter, "exp_type": b.ExpType, "data": b64(b.Data)}), nil
	case Desc:
		return one("OFPDescStatsReply", "OFPDescStats", obj{"mfr_desc": b.MfrDesc, "hw_desc": b.HWDesc, "sw_desc": b.SWDesc, "serial_num": b.SerialNum, "dp_desc": b.DPDesc}), nil
	case AggregateStats:
		return one("OFPAggregateStatsReply", "OFPAggregateStats", obj{"packet_count": b.PacketCount, "byte_count": b.ByteCount, "flow_count": b.FlowCount}), nil
	case GroupFeatures:
		return one("OFPGroupFeaturesStatsReply", "OFPGroupFeaturesStats", obj{"types": b.Types, "capabilities": b.Capabilities, "max_groups": b.MaxGroups[:], "actions": b.Actions[:]}), nil
	case MeterFeatures:
		return list("OFPMeterFeaturesStatsReply", []any{wrap("OFPMeterFeaturesStats", obj{"max_meter": b.MaxMeter, "band_types": b.BandTypes, "capabilities": b.Capabilities, "max_bands": b.MaxBands, "max_color": b.MaxColor})}), nil
	case FlowStatsReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPFlowStats", obj{"table_id": s.TableID, "duration_sec": s.DurationSec, "duration_nsec": s.DurationNsec,
				"priority": s.Priority, "idle_timeout": s.IdleTimeout, "hard_timeout": s.HardTimeout, "flags": s.Flags,
				"cookie": s.Cookie, "packet_count": s.PacketCount, "byte_count": s.ByteCount, "match": ryuMatch(s.Match),
				"instructions": ryuInstructions(s.Instructions)}))
		}
		return list("OFPFlowStatsReply", l), nil
	case TableStatsReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPTableStats", obj{"table_id": s.TableID, "active_count": s.ActiveCount, "lookup_count": s.LookupCount, "matched_count": s.MatchedCount}))
		}
		return list("OFPTableStatsReply", l), nil
	case PortStatsReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPPortStats", obj{"port_no": s.PortNo, "rx_packets": s.RxPackets, "tx_packets": s.TxPackets,
				"rx_bytes": s.RxBytes, "tx_bytes": s.TxBytes, "rx_dropped": s.RxDropped, "tx_dropped": s.TxDropped,
				"rx_errors": s.RxErrors, "tx_errors": s.TxErrors, "rx_frame_err": s.RxFrameErr, "rx_over_err": s.RxOverErr,
				"rx_crc_err": s.RxCRCErr, "collisions": s.Collisions, "duration_sec": s.DurationSec, "duration_nsec": s.DurationNsec}))
		}
		return list("OFPPortStatsReply", l), nil
	case QueueStatsReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPQueueStats", obj{"port_no": s.PortNo, "queue_id": s.QueueID, "tx_bytes": s.TxBytes,
				"tx_packets": s.TxPackets, "tx_errors": s.TxErrors, "duration_sec": s.DurationSec, "duration_nsec": s.DurationNsec}))
		}
		return list("OFPQueueStatsReply", l), nil
	case GroupStatsReply:
		l := []any{}
		for _, s := range b {
			bs := []any{}
			for _, c := range s.BucketStats {
				bs = append(bs, wrap("OFPBucketCounter", obj{"packet_count": c.PacketCount, "byte_count": c.ByteCount}))
			}
			l = append(l, wrap("OFPGroupStats", obj{"group_id": s.GroupID, "ref_count": s.RefCount, "packet_count": s.PacketCount,
				"byte_count": s.ByteCount, "duration_sec": s.DurationSec, "duration_nsec": s.DurationNsec, "bucket_stats": bs}))
		}
		return list("OFPGroupStatsReply", l), nil
	case GroupDescReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPGroupDescStats", obj{"type": s.GroupType, "group_id": s.GroupID, "buckets": ryuBuckets(s.Buckets)}))
		}
		return list("OFPGroupDescStatsReply", l), nil
	case MeterStatsReply:
		l := []any{}
		for _, s := range b {
			bs := []any{}
			for _, c := range s.BandStats {
				bs = append(bs, wrap("OFPMeterBandStats", obj{"packet_band_count": c.PacketBandCount, "byte_band_count": c.ByteBandCount}))
			}
			l = append(l, wrap("OFPMeterStats", obj{"meter_id": s.MeterID, "flow_count": s.FlowCount, "packet_in_count": s.PacketInCount,
				"byte_in_count": s.ByteInCount, "duration_sec": s.DurationSec, "duration_nsec": s.DurationNsec, "band_stats": bs}))
		}
		return list("OFPMeterStatsReply", l), nil
	case MeterConfigReply:
		l := []any{}
		for _, s := range b {
			l = append(l, wrap("OFPMeterConfigStats", obj{"flags": s.Flags, "meter_id": s.MeterID, "bands": ryuBands(s.Bands)}))
		}
		return list("OFPMeterConfigStatsReply", l), nil
	case PortDescReply:
		l := []any{}
		for _, p := range b {
			l = append(l, ryuPort(p))
		}
		return list("OFPPortDescStatsReply", l), nil
	}
	return nil, fmt.Errorf("no Ryu view for multipart body %T", body)
}

// ryuView converts a decoded message to Ryu's JSON shape.
func ryuView(m Message) (obj, error) {
	switch m := deref(m).(type) {
	case Hello:
		els := []any{}
		if m.Versions != nil {
			vs := []any{}
			for _, v := range m.Versions {
				vs = append(vs, v)
			}
			els = append(els, wrap("OFPHelloElemVersionBitmap", obj{"type": 1, "versions": vs}))
		}
		return wrap("OFPHello", obj{"elements": els}), nil
	case ErrorMsg:
		if m.ErrType == ErrTypeExperimenter {
			return wrap("OFPErrorMsg", obj{"type": m.ErrType, "code": nil, "exp_type": m.Code, "experimenter": m.Experimenter, "data": b64(m.Data)}), nil
		}
		return wrap("OFPErrorMsg", obj{"type": m.ErrType, "code": m.Code, "data": b64(m.Data)}), nil
	case EchoRequest:
		return wrap("OFPEchoRequest", obj{"data": b64(m.Data)}), nil
	case EchoReply:
		return wrap("OFPEchoReply", obj{"data": b64(m.Data)}), nil
	case Experimenter:
		return wrap("OFPExperimenter", obj{"experimenter": m.Experimenter, "exp_type": m.ExpType, "data": b64(m.Data)}), nil
	case FeaturesRequest:
		return wrap("OFPFeaturesRequest", obj{}), nil
	case FeaturesReply:
		return wrap("OFPSwitchFeatures", obj{"datapath_id": m.DatapathID, "n_buffers": m.NBuffers, "n_tables": m.NTables, "auxiliary_id": m.AuxiliaryID, "capabilities": m.Capabilities}), nil
	case GetConfigRequest:
		return wrap("OFPGetConfigRequest", obj{}), nil
	case GetConfigReply:
		return wrap("OFPGetConfigReply", obj{"flags": m.Flags, "miss_send_len": m.MissSendLen}), nil
	case SetConfig:
		return wrap("OFPSetConfig", obj{"flags": m.Flags, "miss_send_len": m.MissSendLen}), nil
	case BarrierRequest:
		return wrap("OFPBarrierRequest", obj{}), nil
	case BarrierReply:
		return wrap("OFPBarrierReply", obj{}), nil
	case RoleRequest:
		return wrap("OFPRoleRequest", obj{"role": m.Role, "generation_id": m.GenerationID}), nil
	case RoleReply:
		return wrap("OFPRoleReply", obj{"role": m.Role, "generation_id": m.GenerationID}), nil
	case GetAsyncRequest:
		return wrap("OFPGetAsyncRequest", obj{}), nil
	case GetAsyncReply:
		return wrap("OFPGetAsyncReply", obj{"packet_in_mask": m.PacketInMask[:], "port_status_mask": m.PortStatusMask[:], "flow_removed_mask": m.FlowRemovedMask[:]}), nil
	case SetAsync:
		return wrap("OFPSetAsync", obj{"packet_in_mask": m.PacketInMask[:], "port_status_mask": m.PortStatusMask[:], "flow_removed_mask": m.FlowRemovedMask[:]}), nil
	case TableMod:
		return wrap("OFPTableMod", obj{"table_id": m.TableID, "config": m.Config}), nil
	case PortMod:
		return wrap("OFPPortMod", obj{"port_no": m.PortNo, "hw_addr": m.HWAddr.String(), "config": m.Config, "mask": m.Mask, "advertise": m.Advertise}), nil
	case PortStatus:
		return wrap("OFPPortStatus", obj{"reason": m.Reason, "desc": ryuPort(m.Port)}), nil
	case PacketIn:
		return wrap("OFPPacketIn", obj{"buffer_id": m.BufferID, "total_len": m.TotalLen, "reason": m.Reason, "table_id": m.TableID, "cookie": m.Cookie, "match": ryuMatch(m.Match), "data": b64(m.Data)}), nil
	case PacketOut:
		return wrap("OFPPacketOut", obj{"buffer_id": m.BufferID, "in_port": m.InPort, "actions": ryuActions(m.Actions), "data": b64(m.Data)}), nil
	case FlowMod:
		return wrap("OFPFlowMod", obj{"cookie": m.Cookie, "cookie_mask": m.CookieMask, "table_id": m.TableID, "command": uint8(m.Command),
			"idle_timeout": m.IdleTimeout, "hard_timeout": m.HardTimeout, "priority": m.Priority, "buffer_id": m.BufferID,
			"out_port": m.OutPort, "out_group": m.OutGroup, "flags": m.Flags, "match": ryuMatch(m.Match), "instructions": ryuInstructions(m.Instructions)}), nil
	case FlowRemoved:
		return wrap("OFPFlowRemoved", obj{"cookie": m.Cookie, "priority": m.Priority, "reason": m.Reason, "table_id": m.TableID,
			"duration_sec": m.DurationSec, "duration_nsec": m.DurationNsec, "idle_timeout": m.IdleTimeout, "hard_timeout": m.HardTimeout,
			"packet_count": m.PacketCount, "byte_count": m.ByteCount, "match": ryuMatch(m.Match)}), nil
	case GroupMod:
		return wrap("OFPGroupMod", obj{"command": m.Command, "type": m.GroupType, "group_id": m.GroupID, "buckets": ryuBuckets(m.Buckets)}), nil
	case MeterMod:
		return wrap("OFPMeterMod", obj{"command": m.Command, "flags": m.Flags, "meter_id": m.MeterID, "bands": ryuBands(m.Bands)}), nil
	case QueueGetConfigRequest:
		return wrap("OFPQueueGetConfigRequest", obj{"port": m.Port}), nil
	case QueueGetConfigReply:
		qs := []any{}
		for _, q := range m.Queues {
			props := []any{}
			for _, p := range q.Properties {
				switch p.Property {
				case QueuePropTypeMinRate:
					props = append(props, wrap("OFPQueuePropMinRate", obj{"property": p.Property, "rate": p.Rate}))
				case QueuePropTypeMaxRate:
					props = append(props, wrap("OFPQueuePropMaxRate", obj{"property": p.Property, "rate": p.Rate}))
				default:
					data := []any{}
					for _, c := range p.Data {
						data = append(data, c)
					}
					props = append(props, wrap("OFPQueuePropExperimenter", obj{"property": p.Property, "experimenter": p.Experimenter, "data": data}))
				}
			}
			qs = append(qs, wrap("OFPPacketQueue", obj{"queue_id": q.QueueID, "port": q.Port, "properties": props}))
		}
		return wrap("OFPQueueGetConfigReply", obj{"port": m.Port, "queues": qs}), nil
	case MultipartRequest:
		if m.Body == nil {
			return nil, fmt.Errorf("multipart request without body")
		}
		return ryuMultipart(false, m.Flags, m.Body)
	case MultipartReply:
		if m.Body == nil {
			return nil, fmt.Errorf("multipart reply without body")
		}
		return ryuMultipart(true, m.Flags, m.Body)
	}
	return nil, fmt.Errorf("no Ryu view for %T", m)
}

// deref turns a decoded *T message into its T value.
func deref(m Message) Message {
	v := reflect.ValueOf(m)
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface().(Message)
	}
	return m
}
