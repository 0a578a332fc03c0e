package ovsdb

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"sort"
	"strings"
	"time"
)

// VSwitchDB is the name of Open vSwitch's configuration database.
const VSwitchDB = "Open_vSwitch"

var (
	// ErrNotFound is wrapped when a named bridge or interface does not exist.
	ErrNotFound = errors.New("not found")
	// ErrOtherBridge is wrapped when a port exists but belongs to another
	// bridge than the one named in the call.
	ErrOtherBridge = errors.New("port belongs to another bridge")
	// ErrNoRoot is wrapped when the Open_vSwitch table has no row yet, i.e.
	// nobody ran Init (ovs-vsctl init): rows added then would be orphans
	// that the server garbage-collects at once.
	ErrNoRoot = errors.New("no Open_vSwitch root row yet (call Init)")
)

// maxConflictRetries bounds the read-then-write loops below. A conflict means
// another client changed what we read between our select and our commit
// (detected by a "wait" op or a unique index); re-reading resolves it.
const maxConflictRetries = 3

// conflictError marks an attempt that lost a race and may be retried.
type conflictError struct{ err error }

func (e conflictError) Error() string { return e.err.Error() }
func (e conflictError) Unwrap() error { return e.err }

// retry runs attempt until it succeeds, fails for another reason than a
// conflict, or runs out of tries (then the last underlying error is returned).
func retry(ctx context.Context, attempt func() error) error {
	var err error
	for range maxConflictRetries {
		err = attempt()
		var ce conflictError
		if !errors.As(err, &ce) {
			return err
		}
		err = ce.err
		if ctx.Err() != nil {
			break
		}
	}
	return err
}

// rootExists is a "wait" op that aborts the transaction unless the root
// Open_vSwitch row exists (zero matching rows is the only result equal to []).
func rootExists() Operation {
	return Wait("Open_vSwitch", nil, nil, "!=", nil, 0)
}

func bumpComment(what string) Operation { return Comment("nvi: " + what) }

// Init ensures the Open_vSwitch root row exists, like "ovs-vsctl --no-wait
// init". It is atomic and idempotent: the insert only commits if a wait op
// still sees an empty table.
func (c *Client) Init(ctx context.Context) error {
	_, err := c.transact(ctx, VSwitchDB,
		Wait("Open_vSwitch", nil, nil, "==", nil, 0),
		Insert("Open_vSwitch", Row{}, ""),
		bumpComment("init"),
	)
	if err == nil || IsOpError(err, "timed out") {
		return nil
	}
	return fmt.Errorf("ovsdb: init: %w", err)
}

// BridgeSpec is the desired state of a bridge. EnsureBridge makes the
// scalar columns (datapath type, fail mode, protocols, controller) exactly
// as given, and sets the given other_config/external_ids keys while leaving
// keys it does not name alone, so that an operator's own keys survive.
type BridgeSpec struct {
	Name         string
	DatapathType string   // "netdev" for the userspace datapath; "" is OVS's default (system)
	FailMode     string   // "secure" or "standalone"; "" is OVS's default (standalone)
	Protocols    []string // e.g. {"OpenFlow13"}; nil is OVS's default
	// Controller is the OpenFlow controller target, e.g.
	// "punix:/run/openvswitch/br-nvi.nvid": the switch listens and nvid
	// connects. ovs-vswitchd only accepts a punix path of the form
	// <OVS_RUNDIR>/<bridge>.<suffix> (it refuses others, logging that they
	// could overwrite files). The row is always a "primary" controller.
	// "" removes all controllers.
	Controller string
	// ControllerMaxBackoff is the longest wait between connection attempts
	// (at least 1s); 0 keeps OVS's default (8s).
	ControllerMaxBackoff time.Duration
	// ControllerInactivityProbe is how long the switch lets the controller
	// connection idle before probing it; 0 keeps OVS's default (5s), a
	// negative value disables probing.
	ControllerInactivityProbe time.Duration
	// HWAddr, if set, fixes the bridge's MAC (other_config:hwaddr) so it does
	// not change when ports come and go.
	HWAddr      string
	OtherConfig map[string]string // e.g. {"disable-in-band": "true"}
	ExternalIDs map[string]string
	// TableNames names the bridge's OpenFlow tables (Flow_Table rows in
	// Bridge.flow_tables), so that "ovs-ofctl --names dump-flows" shows
	// table=session_out rather than table=30.
	TableNames map[uint8]string
}

func (s BridgeSpec) validate() error {
	if err := checkIfName(s.Name); err != nil {
		return err
	}
	if s.ControllerMaxBackoff != 0 && s.ControllerMaxBackoff < time.Second {
		return fmt.Errorf("controller max backoff %v is below OVS's minimum of 1s", s.ControllerMaxBackoff)
	}
	if s.HWAddr != "" {
		if mac, err := net.ParseMAC(s.HWAddr); err != nil || len(mac) != 6 {
			return fmt.Errorf("invalid hwaddr %q", s.HWAddr)
		}
	}
	for id, name := range s.TableNames {
		if id > 253 || name == "" || strings.ContainsAny(name, " \t\n,=()") {
			return fmt.Errorf("invalid name %q for table %d (tables 0-253, no spaces, commas, '=' or parentheses)", name, id)
		}
	}
	return nil
}

// flowTables inserts a Flow_Table row per named table and returns the
// Bridge.flow_tables value that refers to them.
func (s BridgeSpec) flowTables() ([]Operation, Map) {
	ids := make([]int, 0, len(s.TableNames))
	for id := range s.TableNames {
		ids = append(ids, int(id))
	}
	sort.Ints(ids)
	var ops []Operation
	m := Map{}
	for _, id := range ids {
		row := fmt.Sprintf("nvi_table%d", id)
		ops = append(ops, Insert("Flow_Table", Row{"name": s.TableNames[uint8(id)]}, row))
		m[int64(id)] = NamedUUID(row)
	}
	return ops, m
}

// tableNamesOf reads the names a bridge's flow_tables give its tables.
func tableNamesOf(br Row, tables []Row) map[uint8]string {
	names := map[UUID]string{}
	for _, t := range tables {
		names[t.UUID("_uuid")] = t.String("name")
	}
	out := map[uint8]string{}
	if m, ok := br["flow_tables"].(Map); ok {
		for k, v := range m {
			id, ok1 := k.(int64)
			u, ok2 := v.(UUID)
			if ok1 && ok2 && id >= 0 && id < 256 {
				out[uint8(id)] = names[u]
			}
		}
	}
	return out
}

// checkIfName rejects names the kernel would refuse for the bridge's
// internal device, before ovs-vswitchd fails on them asynchronously.
func checkIfName(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t\n:") {
		return fmt.Errorf("invalid bridge name %q (1-15 characters, no '/', ':' or spaces)", name)
	}
	return nil
}

func (s BridgeSpec) otherConfig() map[string]string {
	m := map[string]string{}
	for k, v := range s.OtherConfig {
		m[k] = v
	}
	if s.HWAddr != "" {
		m["hwaddr"] = strings.ToLower(s.HWAddr)
	}
	return m
}

// controllerRow is the Controller row wanted by the spec. The type is
// forced to "primary": OVS otherwise treats a punix/ptcp target as a
// "service" controller, which by default gets no asynchronous messages
// (no packet-ins: the agent would never see a first packet) and has no
// connection status in the database.
func (s BridgeSpec) controllerRow() Row {
	r := Row{"target": s.Controller, "type": "primary", "max_backoff": Set{}, "inactivity_probe": Set{}}
	if s.ControllerMaxBackoff > 0 {
		r["max_backoff"] = s.ControllerMaxBackoff.Milliseconds()
	}
	switch {
	case s.ControllerInactivityProbe > 0:
		r["inactivity_probe"] = s.ControllerInactivityProbe.Milliseconds()
	case s.ControllerInactivityProbe < 0:
		r["inactivity_probe"] = int64(0)
	}
	return r
}

// bridgeColumns are the columns EnsureBridge owns outright.
func (s BridgeSpec) bridgeColumns() Row {
	failMode := Set{}
	if s.FailMode != "" {
		failMode = Set{s.FailMode}
	}
	protocols := s.Protocols
	if protocols == nil {
		protocols = []string{}
	}
	return Row{"datapath_type": s.DatapathType, "fail_mode": failMode, "protocols": protocols}
}

// EnsureBridge creates the bridge, or brings an existing one to spec. A new
// bridge gets its local internal port and interface and is added to
// Open_vSwitch.bridges, as "ovs-vsctl add-br" does. Calling it again with
// the same spec changes nothing.
func (c *Client) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	if err := spec.validate(); err != nil {
		return fmt.Errorf("ovsdb: ensure bridge %s: %w", spec.Name, err)
	}
	err := retry(ctx, func() error {
		res, err := c.transact(ctx, VSwitchDB,
			Select("Bridge", []Condition{Eq("name", spec.Name)}, "_uuid", "controller", "flow_tables"),
			Select("Controller", nil, "_uuid", "target"),
			Select("Flow_Table", nil, "_uuid", "name"),
		)
		if err != nil {
			return err
		}
		if len(res[0].Rows) == 0 {
			return c.createBridge(ctx, spec)
		}
		return c.updateBridge(ctx, spec, res[0].Rows[0], res[1].Rows, res[2].Rows)
	})
	if err != nil {
		return fmt.Errorf("ovsdb: ensure bridge %s: %w", spec.Name, err)
	}
	return nil
}

func (c *Client) createBridge(ctx context.Context, spec BridgeSpec) error {
	br := spec.bridgeColumns()
	br["name"] = spec.Name
	br["ports"] = NamedUUID("nvi_port")
	br["other_config"] = spec.otherConfig()
	br["external_ids"] = nonNil(spec.ExternalIDs)
	ops := []Operation{
		rootExists(),
		Insert("Interface", Row{"name": spec.Name, "type": "internal"}, "nvi_iface"),
		Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("nvi_iface")}, "nvi_port"),
	}
	if spec.Controller != "" {
		ops = append(ops, Insert("Controller", spec.controllerRow(), "nvi_ctrl"))
		br["controller"] = NamedUUID("nvi_ctrl")
	}
	if len(spec.TableNames) > 0 {
		tops, m := spec.flowTables()
		ops = append(ops, tops...)
		br["flow_tables"] = m
	}
	ops = append(ops,
		Insert("Bridge", br, "nvi_br"),
		MutateOp("Open_vSwitch", nil, Mutation{"bridges", "insert", Set{NamedUUID("nvi_br")}}),
		bumpComment("create bridge "+spec.Name),
	)
	_, err := c.transact(ctx, VSwitchDB, ops...)
	switch {
	case IsOpError(err, "timed out"):
		return ErrNoRoot
	case IsOpError(err, "constraint violation"):
		// Most likely someone created the same bridge meanwhile: re-read.
		return conflictError{err}
	}
	return err
}

func (c *Client) updateBridge(ctx context.Context, spec BridgeSpec, cur Row, controllers, tables []Row) error {
	brUUID := cur.UUID("_uuid")
	curCtrls := cur.UUIDs("controller")
	byBridge := []Condition{Eq("_uuid", brUUID)}
	set := spec.bridgeColumns()
	ops := []Operation{
		// Fail (and retry) if the controllers changed since we read them.
		Wait("Bridge", byBridge, []string{"controller"}, "==", []Row{{"controller": uuidSet(curCtrls)}}, 0),
	}
	switch {
	case spec.Controller == "":
		set["controller"] = Set{}
	case len(curCtrls) == 1 && controllerTarget(controllers, curCtrls[0]) == spec.Controller:
		ops = append(ops, Update("Controller", []Condition{Eq("_uuid", curCtrls[0])}, spec.controllerRow()))
	default:
		// Replace: the old rows are garbage-collected once unreferenced.
		ops = append(ops, Insert("Controller", spec.controllerRow(), "nvi_ctrl"))
		set["controller"] = NamedUUID("nvi_ctrl")
	}
	if spec.TableNames != nil && !maps.Equal(tableNamesOf(cur, tables), spec.TableNames) {
		// Replace: unreferenced Flow_Table rows are garbage-collected.
		tops, m := spec.flowTables()
		ops = append(ops, tops...)
		set["flow_tables"] = m
	}
	ops = append(ops, Update("Bridge", byBridge, set))
	if muts := setKeys("other_config", spec.otherConfig()); len(muts) > 0 {
		ops = append(ops, MutateOp("Bridge", byBridge, muts...))
	}
	if muts := setKeys("external_ids", spec.ExternalIDs); len(muts) > 0 {
		ops = append(ops, MutateOp("Bridge", byBridge, muts...))
	}
	ops = append(ops, bumpComment("update bridge "+spec.Name))
	_, err := c.transact(ctx, VSwitchDB, ops...)
	if IsOpError(err, "timed out") {
		return conflictError{err}
	}
	return err
}

func controllerTarget(rows []Row, id UUID) string {
	for _, r := range rows {
		if r.UUID("_uuid") == id {
			return r.String("target")
		}
	}
	return ""
}

func uuidSet(ids []UUID) Set {
	s := make(Set, len(ids))
	for i, id := range ids {
		s[i] = id
	}
	return s
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// setKeys returns mutations that set the given keys of a map column to the
// given values, keeping other keys: RFC 7047's map "insert" never overwrites
// an existing key, so the keys are deleted first.
func setKeys(column string, kv map[string]string) []Mutation {
	if len(kv) == 0 {
		return nil
	}
	keys := make(Set, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	return []Mutation{{column, "delete", keys}, {column, "insert", kv}}
}

// DeleteBridge removes the bridge with its ports, interfaces and controllers
// (the server garbage-collects them once the bridge is gone). A missing
// bridge is not an error.
func (c *Client) DeleteBridge(ctx context.Context, name string) error {
	res, err := c.transact(ctx, VSwitchDB, Select("Bridge", []Condition{Eq("name", name)}, "_uuid"))
	if err == nil && len(res[0].Rows) > 0 {
		_, err = c.transact(ctx, VSwitchDB,
			MutateOp("Open_vSwitch", nil, Mutation{"bridges", "delete", Set{res[0].Rows[0].UUID("_uuid")}}),
			bumpComment("delete bridge "+name),
		)
	}
	if err != nil {
		return fmt.Errorf("ovsdb: delete bridge %s: %w", name, err)
	}
	return nil
}

// ControllerState is a Controller row as ovs-vswitchd reports it.
type ControllerState struct {
	Target string
	// IsConnected and Role are refreshed by ovs-vswitchd every 5 seconds and
	// only for active targets (tcp:, unix:, ssl:). For a passive target such
	// as punix: (NVI's default) OVS 3.1 never sets them, even while nvid is
	// connected: the agent's own OpenFlow connection is the health signal there.
	IsConnected     bool
	Role            string // "master", "slave", "other" or "" when unknown
	MaxBackoff      time.Duration
	InactivityProbe time.Duration
}

// BridgeState is a Bridge row with its ports and controllers resolved.
type BridgeState struct {
	Name         string
	UUID         UUID
	DatapathType string
	DatapathID   string // 16 hex digits, set by ovs-vswitchd once the datapath exists
	FailMode     string
	Protocols    []string
	Ports        []string // port names, sorted; includes the local port
	Controllers  []ControllerState
	OtherConfig  map[string]string
	ExternalIDs  map[string]string
}

// Bridge reads one bridge; ErrNotFound (wrapped) if absent.
func (c *Client) Bridge(ctx context.Context, name string) (BridgeState, error) {
	res, err := c.transact(ctx, VSwitchDB,
		Select("Bridge", []Condition{Eq("name", name)}),
		Select("Port", nil, "_uuid", "name"),
		Select("Controller", nil),
	)
	if err == nil && len(res[0].Rows) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return BridgeState{}, fmt.Errorf("ovsdb: read bridge %s: %w", name, err)
	}
	r := res[0].Rows[0]
	b := BridgeState{
		Name:         r.String("name"),
		UUID:         r.UUID("_uuid"),
		DatapathType: r.String("datapath_type"),
		DatapathID:   r.String("datapath_id"),
		FailMode:     r.String("fail_mode"),
		Protocols:    r.Strings("protocols"),
		OtherConfig:  r.StringMap("other_config"),
		ExternalIDs:  r.StringMap("external_ids"),
	}
	ports := map[UUID]bool{}
	for _, id := range r.UUIDs("ports") {
		ports[id] = true
	}
	for _, p := range res[1].Rows {
		if ports[p.UUID("_uuid")] {
			b.Ports = append(b.Ports, p.String("name"))
		}
	}
	sort.Strings(b.Ports)
	ctrls := map[UUID]bool{}
	for _, id := range r.UUIDs("controller") {
		ctrls[id] = true
	}
	for _, cr := range res[2].Rows {
		if !ctrls[cr.UUID("_uuid")] {
			continue
		}
		connected, _ := cr.Bool("is_connected")
		backoff, _ := cr.Int("max_backoff")
		probe, _ := cr.Int("inactivity_probe")
		b.Controllers = append(b.Controllers, ControllerState{
			Target:          cr.String("target"),
			IsConnected:     connected,
			Role:            cr.String("role"),
			MaxBackoff:      time.Duration(backoff) * time.Millisecond,
			InactivityProbe: time.Duration(probe) * time.Millisecond,
		})
	}
	return b, nil
}

// PortSpec describes a port with one interface of the same name, the only
// kind NVI uses (no bonds).
type PortSpec struct {
	Name string
	// Type is the Interface type: "" for a system device such as a veth or
	// tap, "internal" for a port OVS creates, "patch", ...
	Type string
	// OFPortRequest asks ovs-vswitchd for this OpenFlow port number
	// (1-65279); 0 lets it choose. Flows can then name the port up front.
	OFPortRequest int
	// ExternalIDs go on the Interface, where the libvirt/Nova convention
	// puts iface-id, attached-mac and vm-uuid.
	ExternalIDs map[string]string
	Options     map[string]string // Interface options, e.g. {"peer": "patch-b"}
}

// AddPort adds the port to bridge. If the port is already on that bridge,
// its interface is brought to spec instead (type and ofport_request exactly,
// external_ids and options key by key), so calling it twice is safe. A port
// of that name on another bridge is an error wrapping ErrOtherBridge.
func (c *Client) AddPort(ctx context.Context, bridge string, spec PortSpec) error {
	err := retry(ctx, func() error { return c.addPortOnce(ctx, bridge, spec) })
	if err != nil {
		return fmt.Errorf("ovsdb: add port %s to %s: %w", spec.Name, bridge, err)
	}
	return nil
}

func (s PortSpec) validate() error {
	if s.Name == "" {
		return errors.New("empty port name")
	}
	if s.OFPortRequest < 0 || s.OFPortRequest > 65279 {
		return fmt.Errorf("ofport request %d out of range 1-65279", s.OFPortRequest)
	}
	return nil
}

func (s PortSpec) ofportRequest() any {
	if s.OFPortRequest == 0 {
		return Set{}
	}
	return int64(s.OFPortRequest)
}

func (c *Client) addPortOnce(ctx context.Context, bridge string, spec PortSpec) error {
	if err := spec.validate(); err != nil {
		return err
	}
	res, err := c.transact(ctx, VSwitchDB,
		Select("Bridge", []Condition{Eq("name", bridge)}, "_uuid", "ports"),
		Select("Port", []Condition{Eq("name", spec.Name)}, "_uuid"),
	)
	if err != nil {
		return err
	}
	if len(res[0].Rows) == 0 {
		return fmt.Errorf("bridge %s: %w", bridge, ErrNotFound)
	}
	br := res[0].Rows[0]
	brUUID := br.UUID("_uuid")
	if len(res[1].Rows) > 0 {
		portUUID := res[1].Rows[0].UUID("_uuid")
		for _, p := range br.UUIDs("ports") {
			if p == portUUID {
				return c.updateInterface(ctx, spec)
			}
		}
		owner, err := c.portOwner(ctx, portUUID)
		if err != nil {
			return err
		}
		return fmt.Errorf("%w (%s)", ErrOtherBridge, owner)
	}
	iface := Row{
		"name":           spec.Name,
		"type":           spec.Type,
		"ofport_request": spec.ofportRequest(),
		"external_ids":   nonNil(spec.ExternalIDs),
		"options":        nonNil(spec.Options),
	}
	res, err = c.transact(ctx, VSwitchDB,
		Insert("Interface", iface, "nvi_iface"),
		Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("nvi_iface")}, "nvi_port"),
		MutateOp("Bridge", []Condition{Eq("_uuid", brUUID)}, Mutation{"ports", "insert", Set{NamedUUID("nvi_port")}}),
		bumpComment("add port "+spec.Name+" to "+bridge),
	)
	switch {
	case IsOpError(err, "constraint violation"):
		return conflictError{err} // created meanwhile, or an interface of that name exists
	case err != nil:
		return err
	case res[2].Count == 0:
		// The bridge went away between our read and the commit; the new
		// rows were garbage-collected with nothing referring to them.
		return conflictError{fmt.Errorf("bridge %s: %w", bridge, ErrNotFound)}
	}
	return nil
}

// updateInterface brings the existing interface of a port to spec.
func (c *Client) updateInterface(ctx context.Context, spec PortSpec) error {
	byName := []Condition{Eq("name", spec.Name)}
	ops := []Operation{Update("Interface", byName, Row{"type": spec.Type, "ofport_request": spec.ofportRequest()})}
	if muts := append(setKeys("external_ids", spec.ExternalIDs), setKeys("options", spec.Options)...); len(muts) > 0 {
		ops = append(ops, MutateOp("Interface", byName, muts...))
	}
	ops = append(ops, bumpComment("update interface "+spec.Name))
	res, err := c.transact(ctx, VSwitchDB, ops...)
	if err == nil && res[0].Count == 0 {
		err = fmt.Errorf("port %s has no interface of the same name", spec.Name)
	}
	return err
}

// portOwner names the bridge holding the port ("" if none).
func (c *Client) portOwner(ctx context.Context, port UUID) (string, error) {
	res, err := c.transact(ctx, VSwitchDB, Select("Bridge", []Condition{Includes("ports", Set{port})}, "name"))
	if err != nil {
		return "", err
	}
	if len(res[0].Rows) == 0 {
		return "", nil
	}
	return res[0].Rows[0].String("name"), nil
}

// DeletePort removes the port (and its interface) from bridge. A port that
// does not exist is not an error, so it is safe to call twice; a port on
// another bridge is an error wrapping ErrOtherBridge.
func (c *Client) DeletePort(ctx context.Context, bridge, name string) error {
	err := retry(ctx, func() error {
		res, err := c.transact(ctx, VSwitchDB, Select("Port", []Condition{Eq("name", name)}, "_uuid"))
		if err != nil || len(res[0].Rows) == 0 {
			return err
		}
		portUUID := res[0].Rows[0].UUID("_uuid")
		res, err = c.transact(ctx, VSwitchDB,
			MutateOp("Bridge", []Condition{Eq("name", bridge), Includes("ports", Set{portUUID})},
				Mutation{"ports", "delete", Set{portUUID}}),
			bumpComment("delete port "+name+" from "+bridge),
		)
		if err != nil || res[0].Count > 0 {
			return err
		}
		// Not on this bridge: gone meanwhile, or on another one.
		owner, err := c.portOwner(ctx, portUUID)
		switch {
		case err != nil:
			return err
		case owner == "":
			return nil
		case owner == bridge:
			return conflictError{errors.New("port changed while deleting it")}
		}
		return fmt.Errorf("%w (%s)", ErrOtherBridge, owner)
	})
	if err != nil {
		return fmt.Errorf("ovsdb: delete port %s from %s: %w", name, bridge, err)
	}
	return nil
}
