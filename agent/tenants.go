package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"nvi/directory"
	"nvi/engine"
	"nvi/openflow"
	"nvi/pipeline"
	"nvi/policy"
	"nvi/session"
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
	for _, l := range a.workloads {
		if l.ep.Tenant != name {
			continue
		}
		gone := l.pipelineWorkload()
		gone.Nets = slices.DeleteFunc(slices.Clone(old), func(p netip.Prefix) bool { return slices.Contains(nets, p) })
		l.nets = nets
		msgs = append(msgs, flowMods(pipeline.WorkloadFlows(br, l.pipelineWorkload())...)...)
		for _, fm := range pipeline.TenantNetFlows(br, gone) {
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

// onTenantChange is the directory's word that a network or a policy of a
// tenant changed.
func (a *Agent) onTenantChange(ev directory.Event) {
	switch {
	case ev.Network != nil && (ev.Kind == directory.Put || ev.Kind == directory.Delete):
		tenant := ev.Network.Tenant
		a.goSafe("networks of "+tenant+" changed", func() { a.tenantNetsChanged(a.ctx, tenant) })
	case ev.Policy != nil:
		tenant := ev.Policy.Tenant
		a.goSafe("policy of "+tenant+" changed", func() { a.policyChanged(a.ctx, tenant) })
	}
}

// zoneOf is the tenant's conntrack zone, which the directory hands out.
func (a *Agent) zoneOf(ctx context.Context, name string) (uint16, error) {
	t, err := a.cache.LookupTenant(ctx, name)
	if err != nil {
		return 0, err
	}
	if t.Zone == 0 {
		return 0, fmt.Errorf("tenant %s has no conntrack zone", name)
	}
	return t.Zone, nil
}

// policyOf is the tenant's policy, from the directory's cache: served from
// memory, and kept current by its watch.
func (a *Agent) policyOf(ctx context.Context, name string) (policy.Policy, error) {
	return a.cache.LookupPolicy(ctx, name)
}

// policyChanged applies a tenant's new policy to live traffic: sessions it
// no longer allows end at both ends, and drop flows go, so that what it now
// allows connects on its next packet. Both agents of a session do this on
// their own; whichever comes first tears the session down.
func (a *Agent) policyChanged(ctx context.Context, name string) {
	pol, err := a.policyOf(ctx, name)
	if err != nil {
		a.log.Warn("cannot read the tenant's new policy", "tenant", name, "err", err)
		return
	}
	type check struct {
		v          engine.View
		from, to   policy.Subject
		needRemote netip.Addr
	}
	var checks []check
	a.mu.Lock()
	for _, v := range a.eng.Sessions() {
		if v.Session.Tenant != name || v.State != engine.Established {
			continue
		}
		c := check{v: v}
		e := struct{ s session.Session }{v.Session}
		switch e.s.Role {
		case session.RoleLocal:
			cl, sv := a.byAddr[addrKey{name, e.s.Client}], a.byAddr[addrKey{name, e.s.Server}]
			if cl == nil || sv == nil {
				continue
			}
			c.from, c.to = cl.subject(), sv.subject()
		case session.RoleClient:
			if l := a.byAddr[addrKey{name, e.s.Client}]; l != nil {
				c.from, c.needRemote = l.subject(), e.s.Server
			}
		case session.RoleServer:
			if l := a.byAddr[addrKey{name, e.s.Server}]; l != nil {
				c.to, c.needRemote = l.subject(), e.s.Client
			}
		}
		checks = append(checks, c)
	}
	a.mu.Unlock()
	for _, c := range checks {
		if c.needRemote.IsValid() {
			ep, err := a.cache.LookupEndpoint(ctx, name, c.needRemote)
			if err != nil {
				continue // the directory will say when it goes
			}
			if c.from.Name == "" {
				c.from = subjectOf(ep)
			} else {
				c.to = subjectOf(ep)
			}
		}
		if v := pol.Decide(policy.Request{From: c.from, To: c.to, Proto: c.v.Session.Proto, Port: c.v.Session.Port}); !v.Allow {
			ev := engine.Teardown{ID: c.v.ID, Reason: "policy: " + v.Reason, Notify: true}
			a.goSafe("policy teardown", func() { _ = a.step(ev) })
		}
	}
	if err := a.sw.apply(ctx, pipeline.DeleteByCookie(pipeline.FeatureCookie(pipeline.FeatureDeny), pipeline.FeatureMask)); err != nil {
		a.log.Warn("cannot remove drop flows after a policy change", "err", err)
	}
	a.log.Info("policy applied to live sessions", "tenant", name, "checked", len(checks))
}
