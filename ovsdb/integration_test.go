package ovsdb

// Integration tests against a real ovsdb-server and ovs-vswitchd, started by
// ovsdbtest in a temporary directory (and network namespace). They are
// skipped where OVS or root is missing unless NVI_REQUIRE_OVS=1.

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"nvi/ovsdb/ovsdbtest"
)

func dialTest(t *testing.T, s *ovsdbtest.Server) (*Client, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	c, err := Dial(ctx, s.Addr, WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ctx
}

// vsctlEq checks an ovs-vsctl query against its exact expected output.
func vsctlEq(t *testing.T, s *ovsdbtest.Server, want string, args ...string) {
	t.Helper()
	got, err := s.Vsctl(args...)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("ovs-vsctl %s:\n got %s\nwant %s", strings.Join(args, " "), got, want)
	}
}

// rowCount counts the rows of a table as ovs-vsctl sees them.
func rowCount(t *testing.T, s *ovsdbtest.Server, table string) int {
	t.Helper()
	out := s.MustVsctl("--columns=_uuid", "--format=csv", "--no-headings", "list", table)
	if out == "" {
		return 0
	}
	return len(strings.Split(out, "\n"))
}

// flowTableNames lists the names of the Flow_Table rows, sorted.
func flowTableNames(t *testing.T, s *ovsdbtest.Server) string {
	t.Helper()
	names := strings.Fields(strings.ReplaceAll(s.MustVsctl("--columns=name", "--format=csv", "--no-headings", "list", "Flow_Table"), `"`, ""))
	slices.Sort(names)
	return strings.Join(names, " ")
}

func TestIntegrationCore(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.StartDB(t)
	c, ctx := dialTest(t, s)

	dbs, err := c.ListDBs(ctx)
	if err != nil || !slices.Contains(dbs, VSwitchDB) {
		t.Fatalf("list_dbs: %v %v", dbs, err)
	}
	schema, err := c.GetSchema(ctx, VSwitchDB)
	if err != nil {
		t.Fatal(err)
	}
	if schema.Name != VSwitchDB || schema.Version == "" || !schema.Tables["Open_vSwitch"].IsRoot ||
		schema.Tables["Interface"].Columns["ofport_request"].Type == nil {
		t.Errorf("schema: %s %s", schema.Name, schema.Version)
	}
	var re *RPCError
	if _, err := c.GetSchema(ctx, "nope"); !errors.As(err, &re) || re.Err != "unknown database" {
		t.Errorf("unknown database: %v", err)
	}
	if err := c.Echo(ctx); err != nil {
		t.Fatal(err)
	}

	// Nothing can be added before the root row exists.
	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "br0"}); !errors.Is(err, ErrNoRoot) {
		t.Fatalf("EnsureBridge before Init: %v", err)
	}
	for range 2 {
		if err := c.Init(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := rowCount(t, s, "Open_vSwitch"); n != 1 {
		t.Fatalf("%d Open_vSwitch rows after Init twice", n)
	}

	// Per-op and commit errors come back as OpError naming the op.
	_, err = c.Transact(ctx, VSwitchDB, Select("NoSuchTable", nil))
	if oe := (*OpError)(nil); !errors.As(err, &oe) || oe.Index != 0 || oe.Op != "select NoSuchTable" {
		t.Errorf("unknown table: %v", err)
	}
	_, err = c.Transact(ctx, VSwitchDB,
		Insert("Bridge", Row{"name": "dup"}, "b1"),
		Insert("Bridge", Row{"name": "dup"}, "b2"),
		MutateOp("Open_vSwitch", nil, Mutation{"bridges", "insert", Set{NamedUUID("b1"), NamedUUID("b2")}}),
	)
	if oe := (*OpError)(nil); !errors.As(err, &oe) || oe.Op != "commit" || oe.Err != "constraint violation" {
		t.Errorf("duplicate index: %v", err)
	}
	_, err = c.Transact(ctx, VSwitchDB,
		Insert("Port", Row{"name": "x", "interfaces": UUID("00000000-0000-0000-0000-000000000001")}, ""))
	if !IsOpError(err, "referential integrity violation") {
		t.Errorf("dangling reference: %v", err)
	}
	t.Logf("example errors: %v", err)

	// A transaction blocked server-side in a wait is cancelled with ctx,
	// and the session stays usable.
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	start := time.Now()
	_, err = c.Transact(wctx, VSwitchDB, Wait("Bridge", []Condition{Eq("name", "never")}, nil, "!=", nil, 60000))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("blocked wait: %v after %v", err, time.Since(start))
	}
	if err := c.Echo(ctx); err != nil {
		t.Fatalf("after cancel: %v", err)
	}

	// A raw monitor sees ovs-vsctl's change.
	got := make(chan TableUpdates, 10)
	m, err := c.Monitor(ctx, VSwitchDB, map[string]MonitorRequest{"Bridge": {Columns: []string{"name", "external_ids"}}},
		func(u TableUpdates) { got <- u })
	if err != nil {
		t.Fatal(err)
	}
	if u := wait(t, got); len(u["Bridge"]) != 0 {
		t.Fatalf("initial: %+v", u)
	}
	s.MustVsctl("add-br", "br9")
	for u := wait(t, got); ; u = wait(t, got) {
		if names := bridgeNames(u); slices.Contains(names, "br9") {
			break
		}
	}
	if err := m.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
}

func bridgeNames(u TableUpdates) []string {
	var out []string
	for _, ru := range u["Bridge"] {
		out = append(out, ru.New.String("name"))
	}
	return out
}

func nviSpec(s *ovsdbtest.Server, name string) BridgeSpec {
	return BridgeSpec{
		Name:                      name,
		DatapathType:              "netdev",
		FailMode:                  "secure",
		Protocols:                 []string{"OpenFlow13"},
		Controller:                "punix:" + s.Dir + "/" + name + ".nvid",
		ControllerMaxBackoff:      2 * time.Second,
		ControllerInactivityProbe: -1,
		HWAddr:                    "02:00:00:00:00:01",
		OtherConfig:               map[string]string{"disable-in-band": "true"},
		ExternalIDs:               map[string]string{"nvi-owner": "nvid"},
		TableNames:                map[uint8]string{0: "classifier", 30: "session_out"},
	}
}

func TestIntegrationBridge(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.Start(t)
	c, ctx := dialTest(t, s)
	spec := nviSpec(s, "br-nvi")

	check := func() {
		t.Helper()
		vsctlEq(t, s, "br-nvi", "list-br")
		vsctlEq(t, s, "", "list-ports", "br-nvi") // the local port is not listed
		vsctlEq(t, s, "br-nvi", "--columns=name", "--format=csv", "--no-headings", "list", "Port")
		vsctlEq(t, s, "netdev", "get", "Bridge", "br-nvi", "datapath_type")
		vsctlEq(t, s, "secure", "get", "Bridge", "br-nvi", "fail_mode")
		vsctlEq(t, s, `[OpenFlow13]`, "get", "Bridge", "br-nvi", "protocols")
		vsctlEq(t, s, `internal`, "get", "Interface", "br-nvi", "type")
		vsctlEq(t, s, spec.Controller, "get-controller", "br-nvi")
		vsctlEq(t, s, "2000", "get", "Controller", "br-nvi", "max_backoff")
		vsctlEq(t, s, "0", "get", "Controller", "br-nvi", "inactivity_probe")
		if n := rowCount(t, s, "Controller"); n != 1 {
			t.Errorf("%d Controller rows", n)
		}
		if n := rowCount(t, s, "Bridge"); n != 1 {
			t.Errorf("%d Bridge rows", n)
		}
		if got := flowTableNames(t, s); got != "classifier session_out" {
			t.Errorf("Flow_Table names %q", got)
		}
	}
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	check()
	vsctlEq(t, s, `{disable-in-band="true", hwaddr="02:00:00:00:00:01"}`, "get", "Bridge", "br-nvi", "other_config")
	vsctlEq(t, s, `{nvi-owner=nvid}`, "get", "Bridge", "br-nvi", "external_ids")
	ctrlUUID := s.MustVsctl("get", "Bridge", "br-nvi", "controller")

	// Twice is a no-op.
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	check()
	vsctlEq(t, s, ctrlUUID, "get", "Bridge", "br-nvi", "controller")
	tables := s.MustVsctl("get", "Bridge", "br-nvi", "flow_tables")
	if n := rowCount(t, s, "Flow_Table"); n != 2 {
		t.Errorf("%d Flow_Table rows after a second EnsureBridge", n)
	}

	// Drift is repaired; keys we do not own survive; the controller row is
	// updated in place when only its options change.
	s.MustVsctl("set", "Bridge", "br-nvi", "fail_mode=standalone", "external_ids:operator=keep", "external_ids:nvi-owner=someone",
		"--", "set", "Controller", "br-nvi", "max_backoff=9000")
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	check()
	vsctlEq(t, s, `{nvi-owner=nvid, operator=keep}`, "get", "Bridge", "br-nvi", "external_ids")
	vsctlEq(t, s, ctrlUUID, "get", "Bridge", "br-nvi", "controller")
	vsctlEq(t, s, tables, "get", "Bridge", "br-nvi", "flow_tables")

	// A renamed table is renamed; the old rows go.
	spec.TableNames = map[uint8]string{0: "classifier", 30: "session_out", 40: "session_in"}
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := flowTableNames(t, s); got != "classifier session_in session_out" {
		t.Errorf("Flow_Table names after renaming %q", got)
	}
	spec.TableNames = map[uint8]string{0: "classifier", 30: "session_out"}
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	check()

	// A new target replaces the controller row.
	spec.Controller = "punix:" + s.Dir + "/br-nvi.other"
	spec.ControllerInactivityProbe = 0
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	vsctlEq(t, s, spec.Controller, "get-controller", "br-nvi")
	vsctlEq(t, s, "[]", "get", "Controller", "br-nvi", "inactivity_probe")
	if n := rowCount(t, s, "Controller"); n != 1 {
		t.Errorf("%d Controller rows after replacing", n)
	}

	// ovs-vswitchd fills in the datapath id (from hwaddr) and listens on
	// the punix target.
	var st BridgeState
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if st, err = c.Bridge(ctx, "br-nvi"); err != nil {
			t.Fatal(err)
		}
		if st.DatapathID != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.DatapathID != "0000020000000001" || st.FailMode != "secure" || !slices.Equal(st.Ports, []string{"br-nvi"}) ||
		len(st.Controllers) != 1 || st.Controllers[0].Target != spec.Controller || st.Controllers[0].IsConnected ||
		st.Controllers[0].MaxBackoff != 2*time.Second || st.OtherConfig["hwaddr"] != "02:00:00:00:00:01" {
		t.Errorf("Bridge(): %+v", st)
	}
	if _, err := c.Bridge(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing bridge: %v", err)
	}

	// ovs-vswitchd reports is_connected and role only for active targets
	// (every 5s); a punix target stays "not connected" whatever happens.
	// Play an active controller's part: listen, accept, say hello.
	ln, err := net.Listen("unix", s.Dir+"/ctl.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	spec.Controller = "unix:" + s.Dir + "/ctl.sock"
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	of, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	if _, err := of.Write([]byte{4, 0, 0, 8, 0, 0, 0, 1}); err != nil { // OFPT_HELLO, OpenFlow 1.3
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st, err := c.Bridge(ctx, "br-nvi")
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Controllers) == 1 && st.Controllers[0].IsConnected {
			if st.Controllers[0].Role != "other" {
				t.Errorf("role %q", st.Controllers[0].Role)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller never reported connected: %+v", st.Controllers)
		}
	}

	// No controller at all.
	spec.Controller = ""
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	vsctlEq(t, s, "", "get-controller", "br-nvi")
	if n := rowCount(t, s, "Controller"); n != 0 {
		t.Errorf("%d Controller rows after removing", n)
	}

	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "this-name-is-too-long"}); err == nil {
		t.Error("long name accepted")
	}
	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "b", HWAddr: "zz"}); err == nil || !strings.Contains(err.Error(), "ovsdb: ensure bridge b: invalid hwaddr") {
		t.Errorf("bad hwaddr: %v", err)
	}

	for range 2 {
		if err := c.DeleteBridge(ctx, "br-nvi"); err != nil {
			t.Fatal(err)
		}
	}
	vsctlEq(t, s, "", "list-br")
	for _, table := range []string{"Bridge", "Port", "Interface", "Controller"} {
		if n := rowCount(t, s, table); n != 0 {
			t.Errorf("%d %s rows left after DeleteBridge", n, table)
		}
	}
}

func TestIntegrationPorts(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.Start(t)
	c, ctx := dialTest(t, s)
	for _, br := range []string{"br-a", "br-b"} {
		if err := c.EnsureBridge(ctx, nviSpec(s, br)); err != nil {
			t.Fatal(err)
		}
	}
	s.AddVeth("veth-a0", "veth-a1")
	spec := PortSpec{Name: "veth-a0", OFPortRequest: 7, ExternalIDs: map[string]string{"iface-id": "vm1-nic0", "attached-mac": "02:00:00:00:01:01"}}
	for range 2 {
		if err := c.AddPort(ctx, "br-a", spec); err != nil {
			t.Fatal(err)
		}
	}
	ofport, err := c.WaitOFPort(ctx, "veth-a0")
	if err != nil || ofport != 7 {
		t.Fatalf("WaitOFPort: %d, %v", ofport, err)
	}
	vsctlEq(t, s, "veth-a0", "list-ports", "br-a")
	vsctlEq(t, s, "br-a", "port-to-br", "veth-a0")
	vsctlEq(t, s, "7", "get", "Interface", "veth-a0", "ofport")
	vsctlEq(t, s, `""`, "get", "Interface", "veth-a0", "type")
	vsctlEq(t, s, `{attached-mac="02:00:00:00:01:01", iface-id=vm1-nic0}`, "get", "Interface", "veth-a0", "external_ids")

	// Adding again with other ids updates the interface in place.
	spec.ExternalIDs = map[string]string{"iface-id": "vm1-nic1"}
	if err := c.AddPort(ctx, "br-a", spec); err != nil {
		t.Fatal(err)
	}
	vsctlEq(t, s, `{attached-mac="02:00:00:00:01:01", iface-id=vm1-nic1}`, "get", "Interface", "veth-a0", "external_ids")
	vsctlEq(t, s, "veth-a0", "list-ports", "br-a")

	st, err := c.Interface(ctx, "veth-a0")
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "veth-a0" || st.OFPort != 7 || st.OFPortRequest != 7 || st.MACInUse == "" || st.LinkState != "up" ||
		st.AdminState != "up" || st.Error != "" || st.ExternalIDs["iface-id"] != "vm1-nic1" || st.UUID == "" || st.IfIndex == 0 {
		t.Errorf("Interface(): %+v", st)
	}

	// The same name on the other bridge is refused, naming the owner.
	err = c.AddPort(ctx, "br-b", PortSpec{Name: "veth-a0"})
	if !errors.Is(err, ErrOtherBridge) || err.Error() != "ovsdb: add port veth-a0 to br-b: port belongs to another bridge (br-a)" {
		t.Errorf("other bridge: %v", err)
	}
	if err := c.DeletePort(ctx, "br-b", "veth-a0"); !errors.Is(err, ErrOtherBridge) {
		t.Errorf("delete from other bridge: %v", err)
	}
	if err := c.AddPort(ctx, "br-none", PortSpec{Name: "x"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing bridge: %v", err)
	}
	if err := c.AddPort(ctx, "br-a", PortSpec{Name: "x", OFPortRequest: 70000}); err == nil {
		t.Error("bad ofport request accepted")
	}

	// A device that does not exist: WaitOFPort reports vswitchd's error.
	if err := c.AddPort(ctx, "br-b", PortSpec{Name: "nodev0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitOFPort(ctx, "nodev0"); err == nil || !strings.Contains(err.Error(), "could not open network device nodev0") {
		t.Errorf("WaitOFPort(nodev0): %v", err)
	}
	if st, err := c.Interface(ctx, "nodev0"); err != nil || st.OFPort != -1 || st.Error == "" {
		t.Errorf("Interface(nodev0): %+v %v", st, err)
	}

	// Internal ports are created by OVS itself.
	if err := c.AddPort(ctx, "br-b", PortSpec{Name: "int0", Type: "internal", Options: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if n, err := c.WaitOFPort(ctx, "int0"); err != nil || n <= 0 {
		t.Errorf("WaitOFPort(int0): %d %v", n, err)
	}
	if _, err := s.NetnsExec("ip", "link", "show", "int0"); err != nil {
		t.Errorf("internal device missing in the namespace: %v", err)
	}

	all, err := c.Interfaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, st := range all {
		names = append(names, st.Name)
	}
	if want := []string{"br-a", "br-b", "int0", "nodev0", "veth-a0"}; !slices.Equal(names, want) {
		t.Errorf("Interfaces(): %v, want %v", names, want)
	}

	for range 2 {
		if err := c.DeletePort(ctx, "br-a", "veth-a0"); err != nil {
			t.Fatal(err)
		}
	}
	vsctlEq(t, s, "", "list-ports", "br-a")
	if _, err := c.Interface(ctx, "veth-a0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Interface after delete: %v", err)
	}
	// WaitOFPort gives up with its context.
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := c.WaitOFPort(wctx, "veth-a0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitOFPort of a deleted port: %v", err)
	}
}

func TestIntegrationMonitorInterfaces(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.Start(t)
	c, ctx := dialTest(t, s)
	if err := c.EnsureBridge(ctx, nviSpec(s, "br-nvi")); err != nil {
		t.Fatal(err)
	}
	s.AddVeth("tap0", "tap0-peer")

	events := make(chan InterfaceEvent, 100)
	mctx, stop := context.WithCancel(ctx)
	returned := make(chan error, 1)
	go func() {
		returned <- c.MonitorInterfaces(mctx, func(ev InterfaceEvent) { events <- ev })
	}()
	next := func(what string, match func(InterfaceEvent) bool) InterfaceEvent {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if match(ev) {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s event", what)
			}
		}
	}
	ev := next("initial", func(ev InterfaceEvent) bool { return ev.Kind == Added })
	if ev.New.Name != "br-nvi" || ev.New.Type != "internal" {
		t.Errorf("initial event: %+v", ev)
	}
	next("synced", func(ev InterfaceEvent) bool { return ev.Kind == Synced })

	s.MustVsctl("add-port", "br-nvi", "tap0")
	ev = next("added", func(ev InterfaceEvent) bool { return ev.Kind == Added })
	if ev.New.Name != "tap0" {
		t.Errorf("added: %+v", ev)
	}
	ev = next("ofport", func(ev InterfaceEvent) bool { return ev.Kind == Modified && ev.New.Name == "tap0" && ev.New.OFPort > 0 })
	if ev.Old.OFPort != 0 {
		t.Errorf("ofport assignment: %+v", ev)
	}

	s.MustVsctl("set", "Interface", "tap0", "external_ids:iface-id=abc")
	ev = next("iface-id", func(ev InterfaceEvent) bool { return ev.Kind == Modified && ev.New.ExternalIDs["iface-id"] != "" })
	if ev.Old.Name != "tap0" || ev.New.Name != "tap0" || ev.Old.ExternalIDs["iface-id"] != "" || ev.New.ExternalIDs["iface-id"] != "abc" ||
		ev.Old.OFPort != ev.New.OFPort || ev.Old.UUID != ev.New.UUID {
		t.Errorf("iface-id event: old %+v new %+v", ev.Old, ev.New)
	}

	s.MustVsctl("del-port", "br-nvi", "tap0")
	ev = next("removed", func(ev InterfaceEvent) bool { return ev.Kind == Removed })
	if ev.Old.Name != "tap0" || ev.Old.ExternalIDs["iface-id"] != "abc" {
		t.Errorf("removed: %+v", ev.Old)
	}

	stop()
	if err := wait(t, returned); !errors.Is(err, context.Canceled) {
		t.Errorf("MonitorInterfaces returned %v", err)
	}
	// The session is still fine after the monitor was cancelled.
	if err := c.Echo(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		// Events that were queued before the cancel may still be in the
		// channel; none may arrive after return.
		_ = ev
	default:
	}
	s.MustVsctl("add-port", "br-nvi", "tap0")
	time.Sleep(100 * time.Millisecond)
	for len(events) > 0 {
		if ev := <-events; ev.New.Name == "tap0" && ev.Kind == Added {
			t.Fatalf("event after MonitorInterfaces returned: %+v", ev)
		}
	}
}

// TestIntegrationConnectionLoss checks that killing the server mid-monitor
// ends everything with ErrDisconnected instead of hanging.
func TestIntegrationConnectionLoss(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.StartDB(t)
	c, ctx := dialTest(t, s)
	if err := c.Init(ctx); err != nil {
		t.Fatal(err)
	}
	returned := make(chan error, 1)
	synced := make(chan struct{})
	go func() {
		returned <- c.MonitorInterfaces(ctx, func(ev InterfaceEvent) {
			if ev.Kind == Synced {
				close(synced)
			}
		})
	}()
	wait(t, synced)
	if _, err := s.NetnsExec("ovs-appctl", "-t", s.Dir+"/ovsdb.ctl", "exit"); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, returned); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("MonitorInterfaces: %v", err)
	}
	if err := c.Echo(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Echo: %v", err)
	}
	t.Logf("connection loss reported as: %v", c.Err())
}

// Several agents (or restarts racing each other) ensuring the same bridge
// and port at once all succeed and leave exactly one of each.
func TestIntegrationConcurrentEnsure(t *testing.T) {
	t.Parallel()
	s := ovsdbtest.StartWith(t, ovsdbtest.Options{Init: true})
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := Dial(ctx, s.Addr, WithLogger(quietLog))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			err = c.EnsureBridge(ctx, nviSpec(s, "br-nvi"))
			if err == nil {
				err = c.AddPort(ctx, "br-nvi", PortSpec{Name: "p0", Type: "internal", OFPortRequest: 3})
			}
			errs <- err
		}()
	}
	for range n {
		if err := wait(t, errs); err != nil {
			t.Error(err)
		}
	}
	vsctlEq(t, s, "br-nvi", "list-br")
	vsctlEq(t, s, "p0", "list-ports", "br-nvi")
	for table, want := range map[string]int{"Bridge": 1, "Port": 2, "Interface": 2, "Controller": 1} {
		if got := rowCount(t, s, table); got != want {
			t.Errorf("%d %s rows, want %d", got, table, want)
		}
	}
}
