package pipeline

import (
	"encoding/hex"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"nvi/openflow"
	"nvi/session"
)

// TestOVSReadsEveryFlow hands every message of a full pipeline (every
// table, every kind of session half, port maps, drop and punt flows,
// meters) to `ovs-ofctl ofp-print`, which decodes it as Open vSwitch does
// and refuses what OVS would: unknown fields, missing prerequisites,
// malformed actions. It starts no switch.
func TestOVSReadsEveryFlow(t *testing.T) {
	ofctl, err := exec.LookPath("ovs-ofctl")
	if err != nil {
		t.Skip("ovs-ofctl not in PATH")
	}
	br := guarded(brA)
	c, s := tenantWorkload(wlC), tenantWorkload(wlS)
	msgs := []openflow.Message{PuntMeter(br.PuntMeter, 1000, 500), PuntMeter(WorkloadMeter(c.OFPort), 5000, 2500), DeleteMeter(WorkloadMeter(s.OFPort))}
	fms := append(BaseFlows(br), WorkloadFlows(br, c)...)
	fms = append(fms, WorkloadFlows(br, s)...)
	served := serverHalf(session.TCP)
	served.Peer = session.Peer{Name: "b", IP: ipB, NextHop: macB}
	for _, ss := range []session.Session{clientHalf(session.UDP), served, localSession(session.UDP)} {
		fms = append(fms, sessionFlows(t, br, ss)...)
	}
	pm, err := PortMapFlows(br, PortMap{Proto: session.UDP, Port: 8053, Target: s, TargetPort: 53})
	if err != nil {
		t.Fatal(err)
	}
	fms = append(fms, pm...)
	fms = append(fms, Deny(br, c.OFPort, tuple(session.TCP)), DenyICMP(br, c.OFPort, ipC, netip.MustParseAddr("10.1.0.77"), 0), Punt(br, ipB), DeleteSessionFlows(served))
	for _, fm := range fms {
		msgs = append(msgs, fm)
	}
	for i, m := range msgs {
		b, err := openflow.Marshal(m, uint32(i+1))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		out, err := exec.Command(ofctl, "ofp-print", hex.EncodeToString(b)).CombinedOutput()
		got := strings.TrimSpace(string(out))
		if err != nil || strings.Contains(got, "***") || strings.Contains(got, "bad ") || strings.Contains(got, "error") ||
			!(strings.HasPrefix(got, "OFPT_FLOW_MOD") || strings.HasPrefix(got, "OFPT_METER_MOD")) {
			t.Errorf("message %d (%T) is not what OVS reads: %v\n%s", i, m, err, got)
		}
	}
}
