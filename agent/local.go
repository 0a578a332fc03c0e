package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/pipeline"
)

var errNotBound = errors.New("its workload is not bound here")

// localService is the agent as tools on its own server see it.
type localService struct{ a *Agent }

func (s localService) Status(ctx context.Context) (api.Status, error) {
	a := s.a
	st := api.Status{Server: a.cfg.Name, DataIP: a.cfg.DataIP.Addr(), Bridge: a.cfg.Bridge, Switch: "disconnected", Directory: "connected"}
	if a.swUp.Load() && a.sw.connected() {
		st.Switch = "connected"
	}
	a.mu.Lock()
	if a.br.DataMAC != nil {
		st.DataMAC = a.br.DataMAC.String()
	}
	if a.dirErr != "" {
		st.Directory = a.dirErr
	} else if !a.registered {
		st.Directory = "not registered yet"
	}
	st.Endpoints, st.Sessions = len(a.workloads), a.eng.Len()
	a.mu.Unlock()
	st.Ready = a.ready()
	return st, nil
}

func (s localService) CreateEndpoint(ctx context.Context, req api.CreateEndpointRequest) (api.Endpoint, error) {
	return s.a.createEndpoint(ctx, req)
}

func (s localService) AttachEndpoint(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	return s.a.attachEndpoint(ctx, req)
}

// DeleteEndpoint also removes ports still labelled with the endpoint's
// iface-id that are not bound: the port of an interface that vanished (a
// container's namespace deleted before its plugin's DEL) stays in OVSDB
// unbound, and nobody else would remove it.
func (s localService) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	a := s.a
	if !a.dirUp.Load() {
		return api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	ep, err := a.dir.Endpoint(ctx, tenant, name)
	if err != nil {
		return apiError(err)
	}
	if err := a.deleteEndpoint(ctx, tenant, name); err != nil {
		return err
	}
	if ep.Server == a.cfg.Name && ep.IfaceID != "" {
		a.removeLabelledPorts(ctx, ep.IfaceID)
	}
	return nil
}

// removeLabelledPorts deletes the bridge's ports labelled with iface-id id.
func (a *Agent) removeLabelledPorts(ctx context.Context, id string) {
	ovs := a.ovsdb()
	if ovs == nil {
		a.log.Warn("cannot remove stale ports: OVSDB is not connected yet", "iface_id", id)
		return
	}
	ifaces, err := ovs.Interfaces(ctx)
	if err != nil {
		a.log.Warn("cannot list interfaces to remove stale ports", "iface_id", id, "err", err)
		return
	}
	for _, i := range ifaces {
		if i.ExternalIDs[ifaceIDKey] != id {
			continue
		}
		if err := ovs.DeletePort(ctx, a.cfg.Bridge, i.Name); err != nil {
			a.log.Warn("cannot remove a stale port", "iface", i.Name, "iface_id", id, "err", err)
			continue
		}
		a.log.Info("stale port removed", "iface", i.Name, "iface_id", id)
	}
}

// ServerEndpoints lists the directory's endpoints on this server, bound or
// not.
func (s localService) ServerEndpoints(ctx context.Context) ([]api.Endpoint, error) {
	a := s.a
	if !a.dirUp.Load() {
		return nil, api.Errorf(api.CodeUnavailable, "the directory is not connected yet")
	}
	eps, err := a.dir.Endpoints(ctx, directory.Filter{Server: a.cfg.Name})
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.Endpoint, 0, len(eps))
	for _, ep := range eps {
		e, err := a.apiEndpoint(ep)
		if err != nil { // its network is gone: still list what the record says
			e = api.Endpoint{Tenant: ep.Tenant, Network: ep.Network, Name: ep.Name, IP: ep.IP, MAC: ep.MAC, Server: ep.Server, IfaceID: ep.IfaceID, OFPort: ep.Port}
		}
		out = append(out, e)
	}
	return out, nil
}

func (s localService) Endpoints(ctx context.Context) ([]api.Endpoint, error) {
	a := s.a
	a.mu.Lock()
	var ls []*workload
	for _, l := range a.workloads {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	out := []api.Endpoint{}
	for _, l := range ls {
		ep, err := a.apiEndpoint(l.ep)
		if err != nil {
			return nil, err
		}
		out = append(out, ep)
	}
	slices.SortFunc(out, func(x, y api.Endpoint) int { return strings.Compare(x.Tenant+"/"+x.Name, y.Tenant+"/"+y.Name) })
	return out, nil
}

// Sessions lists the session table, with packet counts read from the
// bridge so that what is shown is what the switch sees.
func (s localService) Sessions(ctx context.Context) ([]api.SessionInfo, error) {
	a := s.a
	if !a.swUp.Load() {
		return nil, api.Errorf(api.CodeUnavailable, "the agent has not connected to its switch yet; try again shortly")
	}
	counts := map[pipeline.Cookie]uint64{}
	if flows, err := a.sw.flows(ctx, pipeline.FeatureCookie(pipeline.FeatureSession), pipeline.FeatureMask); err == nil {
		for _, f := range flows {
			counts[f.Cookie] += f.Packets
		}
	}
	now := time.Now()
	a.mu.Lock()
	views := a.eng.Sessions()
	out := make([]api.SessionInfo, 0, len(views))
	for _, v := range views {
		info := api.SessionInfo{
			Session: v.Session, State: v.State.String(), Age: now.Sub(v.Created),
			IdleFor: now.Sub(v.Activity.LastActive), PeerServer: v.PeerName,
		}
		if v.Session.Proto.HasPorts() {
			info.Packets = counts[sessionCookie(v.Session)]
		}
		if v.State != engine.Established {
			info.IdleFor = 0
		}
		out = append(out, info)
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y api.SessionInfo) int { return strings.Compare(x.Tuple.String(), y.Tuple.String()) })
	return out, nil
}
