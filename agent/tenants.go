package agent

import (
	"context"
	"net/netip"
	"slices"

	"nvi/directory"
	"nvi/openflow"
	"nvi/pipeline"
	"nvi/policy"
)

// tenant is what the agent keeps of a tenant it has workloads of: its
// conntrack zone and the CIDRs of its networks (traffic there is tenant
// traffic; anywhere else is egress).
type tenant struct {
	zone uint16
	nets []netip.Prefix
}

// tenantOf loads a tenant on first use.
func (a *Agent) tenantOf(ctx context.Context, name string) (*tenant, error) {
	a.mu.Lock()
	t := a.tenants[name]
	a.mu.Unlock()
	if t != nil {
		return t, nil
	}
	zone, err := a.zoneOf(ctx, name)
	if err != nil {
		return nil, err
	}
	nets, err := a.netsOf(ctx, name)
	if err != nil {
		return nil, err
	}
	t = &tenant{zone: zone, nets: nets}
	a.mu.Lock()
	if old := a.tenants[name]; old != nil {
		t = old
	} else {
		a.tenants[name] = t
	}
	a.mu.Unlock()
	return t, nil
}

func (a *Agent) netsOf(ctx context.Context, name string) ([]netip.Prefix, error) {
	nws, err := a.dir.Networks(ctx, name)
	if err != nil {
		return nil, err
	}
	nets := make([]netip.Prefix, 0, len(nws))
	for _, n := range nws {
		nets = append(nets, n.CIDR)
	}
	slices.SortFunc(nets, func(x, y netip.Prefix) int { return x.Addr().Compare(y.Addr()) })
	return nets, nil
}

// tenantNetsChanged follows a tenant's networks: its workloads' flows toward
// networks that went away leave the bridge, and new networks get theirs.
func (a *Agent) tenantNetsChanged(ctx context.Context, name string) {
	a.mu.Lock()
	t := a.tenants[name]
	a.mu.Unlock()
	if t == nil {
		return
	}
	nets, err := a.netsOf(ctx, name)
	if err != nil {
		a.log.Warn("cannot read the tenant's networks", "tenant", name, "err", err)
		return
	}
	br := a.bridge()
	var msgs []openflow.Message
	a.mu.Lock()
	old := t.nets
	t.nets = nets
	for _, l := range a.locals {
		if l.ep.Tenant != name {
			continue
		}
		gone := l.workload()
		gone.Nets = slices.DeleteFunc(slices.Clone(old), func(p netip.Prefix) bool { return slices.Contains(nets, p) })
		l.nets = nets
		msgs = append(msgs, flowMods(pipeline.WorkloadFlows(br, l.workload())...)...)
		for _, fm := range pipeline.TenantNetFlows(gone) {
			fm.Command = openflow.FlowDeleteStrict
			msgs = append(msgs, fm)
		}
	}
	a.mu.Unlock()
	if len(msgs) > 0 {
		if err := a.sw.apply(ctx, msgs...); err != nil {
			a.log.Warn("cannot update workloads' flows for the tenant's networks", "tenant", name, "err", err)
		}
	}
}

// onNetworkChange is the directory's word that a network came or went.
func (a *Agent) onNetworkChange(ev directory.Event) {
	if ev.Network != nil && (ev.Kind == directory.Put || ev.Kind == directory.Delete) {
		go a.tenantNetsChanged(a.ctx, ev.Network.Tenant)
	}
}

// zoneOf is the tenant's conntrack zone.
func (a *Agent) zoneOf(ctx context.Context, name string) (uint16, error) {
	return 1, nil
}

// policyOf is the tenant's policy.
func (a *Agent) policyOf(ctx context.Context, name string) (policy.Policy, error) {
	return policy.Policy{}, nil
}
