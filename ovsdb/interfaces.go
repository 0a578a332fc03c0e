package ovsdb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// InterfaceState is what NVI needs to know about an Interface row.
type InterfaceState struct {
	UUID UUID
	Name string
	Type string
	// OFPort is the OpenFlow port number: 0 while ovs-vswitchd has not yet
	// handled the interface, -1 if it failed (see Error).
	OFPort        int
	OFPortRequest int // 0 if none
	MACInUse      string
	AdminState    string // "up", "down" or ""
	LinkState     string // "up", "down" or ""
	IfIndex       int
	Error         string // e.g. "could not open network device veth9 (No such device)"
	ExternalIDs   map[string]string
	Options       map[string]string
}

// interfaceColumns are the monitored and selected columns. Statistics and
// other counters are left out on purpose: ovs-vswitchd rewrites them every
// few seconds, which would turn into a stream of meaningless Modified events.
var interfaceColumns = []string{
	"_uuid", "name", "type", "ofport", "ofport_request", "mac_in_use",
	"admin_state", "link_state", "ifindex", "error", "external_ids", "options",
}

// monitorColumns drops _uuid, which the monitor method does not accept (it
// reports the UUID as the row's key instead).
func monitorColumns(cols []string) []string {
	return slices.DeleteFunc(slices.Clone(cols), func(c string) bool { return c == "_uuid" })
}

func interfaceFromRow(id UUID, r Row) InterfaceState {
	ofport, _ := r.Int("ofport")
	req, _ := r.Int("ofport_request")
	ifindex, _ := r.Int("ifindex")
	if id == "" {
		id = r.UUID("_uuid")
	}
	return InterfaceState{
		UUID:          id,
		Name:          r.String("name"),
		Type:          r.String("type"),
		OFPort:        int(ofport),
		OFPortRequest: int(req),
		MACInUse:      r.String("mac_in_use"),
		AdminState:    r.String("admin_state"),
		LinkState:     r.String("link_state"),
		IfIndex:       int(ifindex),
		Error:         r.String("error"),
		ExternalIDs:   r.StringMap("external_ids"),
		Options:       r.StringMap("options"),
	}
}

// Interface reads one interface by name; ErrNotFound (wrapped) if absent.
func (c *Client) Interface(ctx context.Context, name string) (InterfaceState, error) {
	res, err := c.transact(ctx, VSwitchDB, Select("Interface", []Condition{Eq("name", name)}, interfaceColumns...))
	if err == nil && len(res[0].Rows) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return InterfaceState{}, fmt.Errorf("ovsdb: read interface %s: %w", name, err)
	}
	return interfaceFromRow("", res[0].Rows[0]), nil
}

// Interfaces reads all interfaces, sorted by name.
func (c *Client) Interfaces(ctx context.Context) ([]InterfaceState, error) {
	res, err := c.transact(ctx, VSwitchDB, Select("Interface", nil, interfaceColumns...))
	if err != nil {
		return nil, fmt.Errorf("ovsdb: read interfaces: %w", err)
	}
	out := make([]InterfaceState, 0, len(res[0].Rows))
	for _, r := range res[0].Rows {
		out = append(out, interfaceFromRow("", r))
	}
	slices.SortFunc(out, func(a, b InterfaceState) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// EventKind says what happened to an interface.
type EventKind int

const (
	// Added: the interface appeared (or existed when monitoring started). New is set.
	Added EventKind = iota + 1
	// Modified: a monitored column changed. Old and New are both complete.
	Modified
	// Removed: the interface is gone. Old is set.
	Removed
	// Synced is sent once, after the Added events for the interfaces that
	// existed when monitoring started: a consumer reconciling its bindings
	// can then drop whatever it did not see. Old and New are zero.
	Synced
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Modified:
		return "modified"
	case Removed:
		return "removed"
	case Synced:
		return "synced"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// InterfaceEvent is one change seen by MonitorInterfaces.
type InterfaceEvent struct {
	Kind     EventKind
	Old, New InterfaceState
}

// ifaceTracker turns raw monitor updates into complete before/after states.
// It keeps the last full row of each interface because a "modify" update
// carries only the changed columns' old values.
type ifaceTracker struct {
	rows map[UUID]Row
}

func (t *ifaceTracker) apply(u TableUpdates) []InterfaceEvent {
	var removed, modified, added []InterfaceEvent
	for id, ru := range u["Interface"] {
		prev, known := t.rows[id]
		switch {
		case ru.New == nil && ru.Old == nil:
			continue // meaningless; only a broken server sends it
		case ru.New == nil: // delete
			if !known {
				prev = ru.Old
			}
			delete(t.rows, id)
			removed = append(removed, InterfaceEvent{Kind: Removed, Old: interfaceFromRow(id, prev)})
		case ru.Old == nil: // insert or initial
			t.rows[id] = ru.New
			added = append(added, InterfaceEvent{Kind: Added, New: interfaceFromRow(id, ru.New)})
		default: // modify
			if !known {
				prev = overlay(ru.New, ru.Old)
			}
			next := overlay(prev, ru.New)
			t.rows[id] = next
			modified = append(modified, InterfaceEvent{Kind: Modified, Old: interfaceFromRow(id, prev), New: interfaceFromRow(id, next)})
		}
	}
	byName := func(a, b InterfaceEvent) int {
		return cmp.Compare(a.Old.Name+"\x00"+a.New.Name, b.Old.Name+"\x00"+b.New.Name)
	}
	slices.SortFunc(removed, byName)
	slices.SortFunc(modified, byName)
	slices.SortFunc(added, byName)
	// Removals first: a port re-created in one transaction must end up bound.
	return slices.Concat(removed, modified, added)
}

func overlay(base, top Row) Row {
	out := maps.Clone(base)
	if out == nil {
		out = Row{}
	}
	maps.Copy(out, top)
	return out
}

// MonitorInterfaces calls fn for every interface that exists (Added), then
// once with Synced, then for every change (Added, Modified, Removed) until
// ctx ends or the connection fails; it returns the reason. fn runs on one
// goroutine, in order, and is not called after MonitorInterfaces returned.
// Changes of external_ids (e.g. "ovs-vsctl set interface tap0
// external_ids:iface-id=...") arrive as Modified with Old and New.
func (c *Client) MonitorInterfaces(ctx context.Context, fn func(InterfaceEvent)) error {
	t := &ifaceTracker{rows: map[UUID]Row{}}
	first := true
	mon, err := c.monitor(ctx, VSwitchDB, map[string]MonitorRequest{
		"Interface": {Columns: monitorColumns(interfaceColumns)},
	}, func(u TableUpdates) {
		for _, ev := range t.apply(u) {
			fn(ev)
		}
		if first {
			first = false
			fn(InterfaceEvent{Kind: Synced})
		}
	})
	if err != nil {
		return fmt.Errorf("ovsdb: monitor interfaces: %w", err)
	}
	select {
	case <-ctx.Done():
		cctx, cancel := context.WithTimeout(context.Background(), timeoutAfterCancel)
		_ = mon.Cancel(cctx)
		cancel()
		<-mon.Done()
		return fmt.Errorf("ovsdb: monitor interfaces: %w", ctx.Err())
	case <-mon.Done():
		return fmt.Errorf("ovsdb: monitor interfaces: %w", mon.Err())
	}
}

// WaitOFPort waits until ovs-vswitchd has assigned the interface an OpenFlow
// port number and returns it. If ovs-vswitchd failed to add the interface,
// it returns an error carrying the Interface's error column (e.g. "could
// not open network device veth9 (No such device)"). An interface that does
// not exist yet is waited for; ctx bounds the wait.
func (c *Client) WaitOFPort(ctx context.Context, name string) (int, error) {
	type outcome struct {
		ofport int
		err    error
	}
	result := make(chan outcome, 1)
	decided := false
	t := &ifaceTracker{rows: map[UUID]Row{}}
	mon, err := c.monitor(ctx, VSwitchDB, map[string]MonitorRequest{
		"Interface": {Columns: []string{"name", "ofport", "error"}},
	}, func(u TableUpdates) {
		if decided {
			return
		}
		for _, ev := range t.apply(u) {
			st := ev.New
			if ev.Kind != Added && ev.Kind != Modified || st.Name != name {
				continue
			}
			switch {
			case st.Error != "":
				result <- outcome{err: errors.New(st.Error)}
			case st.OFPort == -1:
				result <- outcome{err: errors.New("ovs-vswitchd set ofport -1 without an error message")}
			case st.OFPort > 0:
				result <- outcome{ofport: st.OFPort}
			default:
				continue
			}
			decided = true
			return
		}
	})
	if err != nil {
		return 0, fmt.Errorf("ovsdb: wait ofport of %s: %w", name, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), timeoutAfterCancel)
		_ = mon.Cancel(cctx)
		cancel()
	}()
	select {
	case r := <-result:
		if r.err != nil {
			return 0, fmt.Errorf("ovsdb: wait ofport of %s: %w", name, r.err)
		}
		return r.ofport, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("ovsdb: wait ofport of %s: %w", name, ctx.Err())
	case <-mon.Done():
		return 0, fmt.Errorf("ovsdb: wait ofport of %s: %w", name, mon.Err())
	}
}
