package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/ovsdb"
	"nvi/pipeline"
	"nvi/policy"
	"nvi/session"
)

// workload is a workload bound to a port of our bridge: its endpoint (the
// directory record of its address) and what its flows need.
type workload struct {
	ep     directory.Endpoint
	net    directory.Network
	mac    net.HardwareAddr
	ofport uint32
	iface  string
	zone   uint16         // its tenant's conntrack zone
	nets   []netip.Prefix // its tenant's networks
}

func (l *workload) pipelineWorkload() pipeline.Workload {
	return pipeline.Workload{OFPort: l.ofport, MAC: l.mac, IP: l.ep.IP, Zone: l.zone, Nets: l.nets}
}

func (l *workload) endpoint() session.Endpoint {
	return session.Endpoint{IP: l.ep.IP, MAC: l.mac, OFPort: l.ofport}
}

func (l *workload) subject() policy.Subject {
	return policy.Subject{Tenant: l.ep.Tenant, Network: l.ep.Network, Name: l.ep.Name, IP: l.ep.IP}
}

func subjectOf(ep directory.Endpoint) policy.Subject {
	return policy.Subject{Tenant: ep.Tenant, Network: ep.Network, Name: ep.Name, IP: ep.IP}
}

// ifaceIDKey is the external_ids key that ties an OVS interface to an
// endpoint, the convention libvirt and OpenStack Nova use for VM ports.
const ifaceIDKey = "iface-id"

// watchInterfaces follows the bridge's interfaces in OVSDB and binds every
// port labelled with an iface-id to its endpoint. It reconnects to OVSDB
// when the monitor fails.
func (a *Agent) watchInterfaces(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.ovsdb().MonitorInterfaces(ctx, func(ev ovsdb.InterfaceEvent) { a.onInterface(ctx, ev) })
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("interface monitor stopped; restarting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		if c, err := ovsdb.Dial(ctx, a.cfg.OVSDB, ovsdb.WithLogger(a.log)); err == nil {
			a.mu.Lock()
			old := a.ovs
			a.ovs = c
			a.mu.Unlock()
			old.Close()
		}
	}
}

func (a *Agent) onInterface(ctx context.Context, ev ovsdb.InterfaceEvent) {
	switch ev.Kind {
	case ovsdb.Synced:
		// Every port that exists is bound: now the session flows left by a
		// previous agent can be matched to workloads.
		a.adoptSessions(ctx, true)
		a.synced.Store(true)
		return
	case ovsdb.Removed:
		a.forgetWaiting(ev.Old.ExternalIDs[ifaceIDKey])
		a.unbindPort(ctx, uint32(max(ev.Old.OFPort, 0)), "port removed")
		return
	}
	st := ev.New
	id := st.ExternalIDs[ifaceIDKey]
	if ev.Kind == ovsdb.Modified && ev.Old.OFPort > 0 &&
		(ev.Old.OFPort != st.OFPort || ev.Old.ExternalIDs[ifaceIDKey] != id) {
		a.unbindPort(ctx, uint32(ev.Old.OFPort), "port relabelled")
	}
	if ev.Kind == ovsdb.Modified && ev.Old.ExternalIDs[ifaceIDKey] != id {
		a.forgetWaiting(ev.Old.ExternalIDs[ifaceIDKey])
	}
	if id == "" || st.OFPort <= 0 {
		return
	}
	if err := a.bind(ctx, st.Name, uint32(st.OFPort), id); err != nil {
		// A hypervisor may plug a port before anyone recorded its
		// endpoint: it waits, and binds when the record appears.
		a.mu.Lock()
		a.waiting[id] = waitingPort{st.Name, uint32(st.OFPort)}
		a.mu.Unlock()
		a.log.Warn("port not bound; waiting for its endpoint", "iface", st.Name, "ofport", st.OFPort, "iface_id", id, "err", err)
	}
}

// waitingPort is a labelled port whose endpoint could not be bound yet.
type waitingPort struct {
	iface  string
	ofport uint32
}

func (a *Agent) forgetWaiting(id string) {
	if id == "" {
		return
	}
	a.mu.Lock()
	delete(a.waiting, id)
	a.mu.Unlock()
}

// onEndpointRecord binds a waiting port when its endpoint is recorded (or
// moved to this server).
func (a *Agent) onEndpointRecord(ev directory.Event) {
	ep := ev.Endpoint
	if ev.Kind != directory.Put || ep == nil || ep.Server != a.cfg.Name || ep.IfaceID == "" {
		return
	}
	a.mu.Lock()
	w, ok := a.waiting[ep.IfaceID]
	a.mu.Unlock()
	if !ok {
		return
	}
	a.goSafe("binding a waiting port", func() {
		if err := a.bind(a.ctx, w.iface, w.ofport, ep.IfaceID); err != nil {
			a.log.Warn("cannot bind waiting port", "iface", w.iface, "iface_id", ep.IfaceID, "err", err)
			return
		}
		a.forgetWaiting(ep.IfaceID)
	})
}

// bind makes a port a workload's: the workload's flows go in, and the
// directory learns the port.
func (a *Agent) bind(ctx context.Context, iface string, ofport uint32, ifaceID string) error {
	a.mu.Lock()
	if l := a.workloads[ofport]; l != nil && l.ep.IfaceID == ifaceID {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	ep, err := a.dir.EndpointByIfaceID(ctx, ifaceID)
	if err != nil {
		return err
	}
	if ep.Server != a.cfg.Name {
		return fmt.Errorf("endpoint %s belongs to server %s, not %s", ep.Ref(), ep.Server, a.cfg.Name)
	}
	nw, err := a.cache.LookupNetwork(ctx, ep.Tenant, ep.Network)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("endpoint %s: bad MAC %q", ep.Ref(), ep.MAC)
	}
	ten, err := a.tenantOf(ctx, ep.Tenant)
	if err != nil {
		return err
	}
	ep.Port = ofport
	a.mu.Lock() // ten.nets changes under it (tenantNetsChanged)
	l := &workload{ep: ep, net: nw, mac: mac, ofport: ofport, iface: iface, zone: ten.zone, nets: ten.nets}
	if other := a.byAddr[addrKey{ep.Tenant, ep.IP}]; other != nil && other.ofport != ofport {
		a.mu.Unlock()
		return fmt.Errorf("address %s of %s is already bound to port %d", ep.IP, ep.Tenant, other.ofport)
	}
	a.workloads[ofport] = l
	a.byAddr[addrKey{ep.Tenant, ep.IP}] = l
	wl := l.pipelineWorkload()
	a.mu.Unlock()
	if err := a.addWorkloadMeter(ctx, ofport); err != nil {
		return fmt.Errorf("installing the punt meter: %w", err)
	}
	if err := a.sw.apply(ctx, flowMods(pipeline.WorkloadFlows(a.bridge(), wl)...)...); err != nil && !errors.Is(err, errNoSwitch) {
		return fmt.Errorf("installing flows: %w", err)
	}
	if _, err := a.claims.UpdateEndpointPort(ctx, ep.Tenant, ep.Name, ofport); err != nil {
		a.log.Warn("cannot record the port in the directory", "endpoint", ep.Ref(), "err", err)
	}
	a.log.Info("workload bound", "endpoint", ep.Ref(), "ip", ep.IP, "mac", ep.MAC, "iface", iface, "ofport", ofport)
	a.applyPortMaps(ctx) // one may be waiting for this workload
	return nil
}

// unbindPort forgets the workload on a port: its sessions end at both ends,
// its flows leave the bridge.
func (a *Agent) unbindPort(ctx context.Context, ofport uint32, reason string) {
	a.mu.Lock()
	l := a.workloads[ofport]
	if l == nil {
		a.mu.Unlock()
		return
	}
	delete(a.workloads, ofport)
	if a.byAddr[addrKey{l.ep.Tenant, l.ep.IP}] == l {
		delete(a.byAddr, addrKey{l.ep.Tenant, l.ep.IP})
	}
	fx := a.eng.Step(time.Now(), engine.Unbound{Port: ofport, Reason: reason})
	a.mu.Unlock()
	_ = a.carryAll(fx)
	if err := a.sw.apply(ctx, flowMods(pipeline.DeleteWorkloadFlows(ofport)...)...); err != nil && !errors.Is(err, errNoSwitch) {
		a.log.Warn("removing a workload's flows failed", "endpoint", l.ep.Ref(), "err", err)
	}
	a.removeWorkloadMeter(ctx, ofport)
	a.log.Info("workload unbound", "endpoint", l.ep.Ref(), "ofport", ofport, "reason", reason)
}

// ovsdb is the current OVSDB client: watchInterfaces replaces it when
// its connection fails, while API calls use it.
func (a *Agent) ovsdb() *ovsdb.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ovs
}

func (a *Agent) localByName(tenant, name string) *workload {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range a.workloads {
		if l.ep.Tenant == tenant && l.ep.Name == name {
			return l
		}
	}
	return nil
}

// apiError gives directory errors the API's codes.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return err
	}
	for _, m := range []struct {
		sentinel error
		code     api.Code
	}{
		{directory.ErrNotFound, api.CodeNotFound},
		{directory.ErrExists, api.CodeExists},
		{directory.ErrInvalid, api.CodeInvalid},
		{directory.ErrConflict, api.CodeConflict},
		{directory.ErrUnavailable, api.CodeUnavailable},
	} {
		if errors.Is(err, m.sentinel) {
			return &api.Error{Code: m.code, Message: err.Error()}
		}
	}
	return err
}

func (a *Agent) apiEndpoint(ep directory.Endpoint) (api.Endpoint, error) {
	if !a.dirUp.Load() {
		return api.Endpoint{}, api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	nw, err := a.cache.LookupNetwork(a.ctx, ep.Tenant, ep.Network)
	if err != nil {
		return api.Endpoint{}, apiError(err)
	}
	out := api.Endpoint{
		Tenant: ep.Tenant, Network: ep.Network, Name: ep.Name, IP: ep.IP,
		PrefixLen: nw.CIDR.Bits(), Gateway: nw.Gateway, MAC: ep.MAC, Server: ep.Server,
		IfaceID: ep.IfaceID, OFPort: ep.Port,
	}
	if l := a.localByName(ep.Tenant, ep.Name); l != nil {
		out.Bound, out.OFPort, out.Interface = true, l.ofport, l.iface
	}
	return out, nil
}

// createEndpoint records an endpoint on this server.
func (a *Agent) createEndpoint(ctx context.Context, req api.CreateEndpointRequest) (api.Endpoint, error) {
	if !a.dirUp.Load() {
		return api.Endpoint{}, api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	ep := directory.Endpoint{
		Tenant: req.Tenant, Network: req.Network, Name: req.Name, IP: req.IP,
		MAC: req.MAC, Server: a.cfg.Name, IfaceID: req.IfaceID,
	}
	if ep.IfaceID == "" {
		ep.IfaceID = req.Tenant + "/" + req.Name
	}
	var got directory.Endpoint
	var err error
	if ep.IP.IsValid() {
		got, err = a.claims.CreateEndpoint(ctx, ep)
	} else {
		got, err = a.createWithAddress(ctx, ep)
	}
	if err != nil {
		return api.Endpoint{}, apiError(err)
	}
	a.log.Info("endpoint created", "endpoint", got.Ref(), "ip", got.IP, "mac", got.MAC)
	return a.apiEndpoint(got)
}

// attachEndpoint plugs an interface of this server into the bridge as an
// endpoint's port, labelled with its iface-id, and waits until the port is
// bound. It is the same path a hypervisor's port takes.
func (a *Agent) attachEndpoint(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	if req.Interface == "" {
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "no interface given")
	}
	ovs := a.ovsdb()
	if !a.dirUp.Load() || ovs == nil {
		return api.Endpoint{}, api.Errorf(api.CodeUnavailable, "the agent is not connected to its directory and OVSDB yet; try again shortly")
	}
	ep, err := a.dir.Endpoint(ctx, req.Tenant, req.Name)
	if err != nil {
		return api.Endpoint{}, apiError(err)
	}
	if err := a.checkAttachable(ctx, req.Interface, ep.IfaceID); err != nil {
		return api.Endpoint{}, err
	}
	if ep.Server != a.cfg.Name {
		return api.Endpoint{}, api.Errorf(api.CodeConflict, "endpoint %s lives on server %s, not on %s", ep.Ref(), ep.Server, a.cfg.Name)
	}
	if err := ovs.AddPort(ctx, a.cfg.Bridge, ovsdb.PortSpec{
		Name:        req.Interface,
		ExternalIDs: map[string]string{ifaceIDKey: ep.IfaceID, "attached-mac": ep.MAC},
	}); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := ovs.WaitOFPort(wctx, req.Interface); err != nil {
		_ = ovs.DeletePort(context.Background(), a.cfg.Bridge, req.Interface)
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "interface %s: %v", req.Interface, err)
	}
	for {
		if l := a.localByName(ep.Tenant, ep.Name); l != nil {
			return a.apiEndpoint(l.ep)
		}
		select {
		case <-wctx.Done():
			return api.Endpoint{}, api.Errorf(api.CodeUnavailable, "port %s was added but never bound (see the agent's log)", req.Interface)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deleteEndpoint removes an endpoint of this server: port, flows, sessions
// and record.
func (a *Agent) deleteEndpoint(ctx context.Context, tenant, name string) error {
	ep, err := a.dir.Endpoint(ctx, tenant, name)
	if err != nil {
		return apiError(err)
	}
	if ep.Server != a.cfg.Name {
		return api.Errorf(api.CodeConflict, "endpoint %s lives on server %s, not on %s", ep.Ref(), ep.Server, a.cfg.Name)
	}
	if l := a.localByName(tenant, name); l != nil {
		a.unbindPort(ctx, l.ofport, "endpoint deleted")
		if err := a.ovsdb().DeletePort(ctx, a.cfg.Bridge, l.iface); err != nil {
			a.log.Warn("cannot remove the port", "iface", l.iface, "err", err)
		}
	}
	if err := a.claims.DeleteEndpoint(ctx, tenant, name); err != nil {
		return apiError(err)
	}
	a.addressFreed(ep)
	a.log.Info("endpoint deleted", "endpoint", ep.Ref())
	return nil
}
