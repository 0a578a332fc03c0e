package agent

import (
	"context"
	"log/slog"

	"nvi/directory"
	"nvi/openflow"
	"nvi/pipeline"
	"nvi/session"
)

// portMapKey names a port map on this server.
type portMapKey struct {
	proto session.Proto
	port  uint16
}

// loadPortMaps reads this server's port maps; the directory's watch keeps
// them current afterwards.
func (a *Agent) loadPortMaps(ctx context.Context) {
	pms, err := a.dir.PortMaps(ctx, a.cfg.Name)
	if err != nil {
		a.log.Warn("cannot read this server's port maps", "err", err)
		return
	}
	a.mu.Lock()
	for _, pm := range pms {
		a.portMaps[portMapKey{pm.Proto, pm.Port}] = pm
	}
	a.mu.Unlock()
	a.applyPortMaps(ctx)
}

// onPortMapChange follows this server's port maps.
func (a *Agent) onPortMapChange(ev directory.Event) {
	pm := ev.PortMap
	if pm == nil || pm.Server != a.cfg.Name {
		return
	}
	k := portMapKey{pm.Proto, pm.Port}
	a.mu.Lock()
	switch ev.Kind {
	case directory.Put:
		a.portMaps[k] = *pm
	case directory.Delete:
		delete(a.portMaps, k)
	}
	a.mu.Unlock()
	go func() {
		if ev.Kind == directory.Delete {
			if err := a.sw.apply(a.ctx, pipeline.DeleteByCookie(pipeline.PortMapCookie(k.proto, k.port), pipeline.FullMask)); err != nil {
				a.log.Warn("cannot remove a port map's flows", "portmap", pm.String(), "err", err)
			}
			a.log.Info("port map removed", "portmap", pm.String())
			return
		}
		a.applyPortMaps(a.ctx)
	}()
}

// applyPortMaps installs the flows of every port map whose workload is
// bound here.
func (a *Agent) applyPortMaps(ctx context.Context) {
	msgs := a.portMapFlows(a.bridge())
	if len(msgs) == 0 {
		return
	}
	if err := a.sw.apply(ctx, msgs...); err != nil {
		a.log.Warn("cannot install port maps", "err", err)
	}
}

// portMapFlows are the flows of this server's port maps whose workloads
// are bound.
func (a *Agent) portMapFlows(br pipeline.Bridge) []openflow.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	var msgs []openflow.Message
	for _, pm := range a.portMaps {
		var target *workload
		for _, l := range a.workloads {
			if l.ep.Tenant == pm.Tenant && l.ep.Name == pm.Endpoint {
				target = l
			}
		}
		if target == nil {
			continue
		}
		// Whoever wrote the record, a port this host needs stays the host's.
		if err := a.self.CheckPort(pm.Port); err != nil {
			a.logLimited(slog.LevelWarn, "portmap-refused", "port map not installed", "portmap", pm.String(), "err", err)
			continue
		}
		fms, err := pipeline.PortMapFlows(br, pipeline.PortMap{Proto: pm.Proto, Port: pm.Port, Target: target.pipelineWorkload(), TargetPort: pm.TargetPort})
		if err != nil {
			a.log.Warn("port map not installed", "portmap", pm.String(), "err", err)
			continue
		}
		msgs = append(msgs, flowMods(fms...)...)
	}
	return msgs
}
