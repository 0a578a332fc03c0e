package openflow

// Tests against a real ovs-vswitchd (see nvi/internal/ovstest): the Conn
// dials the bridge's controller socket, installs flows, and reads them back;
// what it reads must print exactly like ovs-ofctl dump-flows.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"nvi/internal/ovstest"
)

func dialSwitch(t *testing.T, sw *ovstest.Switch) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sw.ControllerSock, WithLogger(testLogger(t)), WithEchoInterval(time.Second))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// statsRe matches the per-flow counters that differ between two reads.
var statsRe = regexp.MustCompile(`duration=[0-9.]+s, `)

// normalizeDump turns dump-flows style output into sorted flow lines
// without durations or reply headers.
func normalizeDump(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "OFPST_FLOW reply") {
			continue
		}
		lines = append(lines, statsRe.ReplaceAllString(l, ""))
	}
	sort.Strings(lines)
	return lines
}

func TestRealOVS(t *testing.T) {
	sw := ovstest.Start(t)
	needOfctl(t)
	c := dialSwitch(t, sw)
	ctx := ctxT(t)

	// The features and port descriptions describe this bridge.
	ports, err := c.PortDescs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var local *Port
	for i := range ports {
		if ports[i].PortNo == PortLocal {
			local = &ports[i]
		}
	}
	if local == nil || local.Name != sw.Bridge || len(local.HWAddr) != 6 {
		t.Fatalf("no LOCAL port named %s in %v", sw.Bridge, ports)
	}
	if show := sw.MustOfctl("show"); !strings.Contains(show, fmt.Sprintf("dpid:%016x", c.Features().DatapathID)) {
		t.Errorf("ovs-ofctl show disagrees on the dpid %016x:\n%s", c.Features().DatapathID, show)
	}

	// Configure, add the meter the NVI flow uses, install flows.
	if _, err := c.Send(SetConfig{MissSendLen: ControllerMaxLenNoBuffer}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(MeterMod{Command: MeterAdd, Flags: MeterFlagPktps | MeterFlagBurst | MeterFlagStats, MeterID: 1,
		Bands: []MeterBand{MeterBandDrop{Rate: 100, BurstSize: 10}}}); err != nil {
		t.Fatal(err)
	}
	punt := NewFlowMod(FlowAdd, 0, 1000)
	punt.Cookie = 0x77
	punt.Match = Match{Fields: []Field{EthType(0x88b5)}}
	punt.Instructions = []Instruction{InstructionApplyActions{Actions: []Action{ActionOutput{Port: PortController, MaxLen: ControllerMaxLenNoBuffer}}}}
	installed := []*FlowMod{nviFlow(), arpResponderFlow(), punt}
	for _, fm := range installed {
		if _, err := c.Send(fm); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Barrier(ctx); err != nil {
		t.Fatalf("barrier after installing: %v", err)
	}
	if mc, err := c.MeterConfigs(ctx, MeterAll); err != nil || len(mc) != 1 || mc[0].MeterID != 1 {
		t.Errorf("meter config = %v, %v", mc, err)
	}

	// A flow the switch must reject: goto_table backwards.
	bad := NewFlowMod(FlowAdd, 20, 5)
	bad.Instructions = []Instruction{InstructionGotoTable{TableID: 3}}
	badXid, err := c.Send(bad)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Barrier(ctx)
	em, ok := IsSwitchError(err)
	if !ok {
		t.Fatalf("barrier after a bad flow = %v, want the switch's error", err)
	}
	if x, _ := em.FailedXid(); x != badXid || em.ErrType != ErrTypeBadInstruction {
		t.Errorf("error %v for xid %d, want OFPET_BAD_INSTRUCTION for xid %d", em, x, badXid)
	}
	t.Logf("rejected as expected: %v", err)

	// Read the flows back and compare with what we installed.
	flows, err := c.FlowStats(ctx, NewFlowStatsRequest())
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != len(installed) {
		t.Fatalf("read back %d flows, installed %d:\n%v", len(flows), len(installed), FlowStatsReply(flows))
	}
	for _, want := range installed {
		var got *FlowStats
		for i := range flows {
			if flows[i].TableID == want.TableID && flows[i].Priority == want.Priority {
				got = &flows[i]
			}
		}
		if got == nil {
			t.Errorf("flow %v not read back", want)
			continue
		}
		if got.Cookie != want.Cookie || got.IdleTimeout != want.IdleTimeout || got.Flags&FlagSendFlowRem != want.Flags&FlagSendFlowRem {
			t.Errorf("flow %v read back as %v", want, got)
		}
		if g, w := sortedMatch(got.Match), sortedMatch(want.Match); !reflect.DeepEqual(g, w) {
			t.Errorf("match read back as %v, want %v", g, w)
		}
		if g, w := canonicalInstructions(got.Instructions), canonicalInstructions(want.Instructions); !reflect.DeepEqual(g, w) {
			t.Errorf("instructions read back as\n%s\nwant\n%s", InstructionsString(g), InstructionsString(w))
		}
	}

	// What we decoded, re-encoded as a reply and printed by ovs-ofctl, is
	// exactly what ovs-ofctl dump-flows prints for the switch.
	ours := ofpPrint(t, needOfctl(t), mustMarshal(t, MultipartReply{Body: FlowStatsReply(flows)}, 1))
	theirs := sw.MustOfctl("dump-flows")
	if g, w := normalizeDump(ours), normalizeDump(theirs); len(w) != len(flows) || !reflect.DeepEqual(g, w) {
		t.Errorf("our reading of the flows differs from ovs-ofctl dump-flows:\nours:\n%s\ntheirs:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	// And the other way: flows ovs-ofctl adds decode into typed values.
	sw.MustOfctl("add-flow", "table=50,priority=9,cookie=0x9,ip,nw_dst=10.9.0.0/16 actions=ct(commit,zone=3,nat(dst=10.9.0.1:80)),resubmit(,51)")
	mine, err := c.FlowStats(ctx, FlowStatsRequest{TableID: 50, OutPort: PortAny, OutGroup: GroupAny})
	if err != nil || len(mine) != 1 {
		t.Fatalf("flow added by ovs-ofctl: %v, %v", mine, err)
	}
	if s := mine[0].String(); !strings.Contains(s, "ct(commit,zone=3,nat(dst=10.9.0.1:80)),resubmit(,51)") || !strings.Contains(s, "nw_dst=10.9.0.0/16") {
		t.Errorf("flow added by ovs-ofctl reads as %s", s)
	}

	// Packet-out through the pipeline comes back as a packet-in.
	frame := append(append(append([]byte{}, testMAC2...), testMAC...), 0x88, 0xb5, 'n', 'v', 'i')
	for len(frame) < 60 {
		frame = append(frame, 0)
	}
	if _, err := c.Send(PacketOut{BufferID: NoBuffer, InPort: PortController, Actions: []Action{ActionOutput{Port: PortTable}}, Data: frame}); err != nil {
		t.Fatal(err)
	}
	pi := waitAsync[*PacketIn](t, c)
	if pi.Cookie != 0x77 || pi.TableID != 0 || string(pi.Data) != string(frame) {
		t.Errorf("packet-in %v, data %x", pi, pi.Data)
	}

	// Deleting the NVI flow (which asked for it) reports flow-removed.
	del := NewFlowMod(FlowDeleteStrict, 20, 100)
	del.Match = nviFlow().Match
	if _, err := c.Send(del); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	fr := waitAsync[*FlowRemoved](t, c)
	if fr.Cookie != 0x1234 || fr.Reason != RemovedDelete || fr.TableID != 20 {
		t.Errorf("flow removed %v", fr)
	}
}

// waitAsync returns the next asynchronous message of type T.
func waitAsync[T Message](t *testing.T, c *Conn) T {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-c.Async():
			if !ok {
				t.Fatalf("connection ended: %v", c.Err())
			}
			if v, ok := m.(T); ok {
				return v
			}
			t.Logf("skipping async %v", m)
		case <-timeout:
			var zero T
			t.Fatalf("no %T arrived", zero)
		}
	}
}

// TestRealOVSMultipart installs enough flows that OVS splits the flow-stats
// reply into several parts, and checks that all of them are reassembled.
func TestRealOVSMultipart(t *testing.T) {
	sw := ovstest.Start(t)
	c := dialSwitch(t, sw)
	ctx := ctxT(t)
	const n = 3000
	for i := 0; i < n; i++ {
		fm := NewFlowMod(FlowAdd, 1, 100)
		fm.Cookie = uint64(i)
		fm.Match = Match{Fields: []Field{EthType(EthTypeIPv4), IPv4Src(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})), IPProto(17), UDPDst(uint16(i))}}
		fm.Instructions = []Instruction{InstructionApplyActions{Actions: []Action{SetField(UDPDst(uint16(i + 1))), ActionOutput{Port: 1}}}}
		if _, err := c.Send(fm); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	parts, err := c.Multipart(ctx, &MultipartRequest{Body: NewFlowStatsRequest()})
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) < 2 {
		t.Errorf("OVS answered in %d part(s); the test wants a split reply", len(parts))
	}
	seen := map[uint64]bool{}
	for _, p := range parts {
		for _, f := range p.Body.(FlowStatsReply) {
			seen[f.Cookie] = true
		}
	}
	if len(seen) != n {
		t.Errorf("reassembled %d distinct flows from %d parts, want %d", len(seen), len(parts), n)
	}
	if out := sw.MustOfctl("dump-aggregate"); !strings.Contains(out, fmt.Sprintf("flow_count=%d", n)) {
		t.Errorf("ovs-ofctl dump-aggregate: %s", out)
	}
	// Aggregate through our codec too.
	r, err := c.Multipart(ctx, &MultipartRequest{Body: AggregateStatsRequest(NewFlowStatsRequest())})
	if err != nil || len(r) != 1 || r[0].Body.(AggregateStats).FlowCount != n {
		t.Errorf("aggregate = %v, %v", r, err)
	}
}

// TestRealOVSLinkSurvivesRestart: the Link reconnects when the
// switch's controller connection is torn down, running OnConnect again.
func TestRealOVSLinkSurvivesRestart(t *testing.T) {
	sw := ovstest.Start(t)
	connected := make(chan *Conn, 4)
	s := NewLink(LinkConfig{Network: "unix", Addr: sw.ControllerSock, Logger: testLogger(t),
		OnConnect: func(ctx context.Context, c *Conn) error {
			fm := NewFlowMod(FlowAdd, 0, 1)
			fm.Cookie = 0x5
			if _, err := c.Send(fm); err != nil {
				return err
			}
			if err := c.Barrier(ctx); err != nil {
				return err
			}
			connected <- c
			return nil
		}})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-runDone
	}()
	first := <-connected
	// Re-pointing the controller makes OVS drop our connection; pointing
	// it back lets the session reconnect.
	if _, err := sw.Vsctl("set-controller", sw.Bridge, "punix:"+sw.ControllerSock+"-moved"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the old connection did not end")
	}
	if _, err := sw.Vsctl("set-controller", sw.Bridge, "punix:"+sw.ControllerSock); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-connected:
		if c == first {
			t.Fatal("same connection")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no reconnect")
	}
	if errors.Is(first.Err(), ErrClosed) {
		t.Errorf("first connection ended by us, not the switch: %v", first.Err())
	}
}
