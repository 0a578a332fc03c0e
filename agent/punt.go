package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"nvi/openflow"
	"nvi/packet"
	"nvi/pipeline"
)

// The slow path's meters: packet-ins from the uplink (ICMP errors, which
// anyone may send, and peers' echoes) go through uplinkMeterID; each
// workload's through its own, pipeline.WorkloadMeter(ofport), made when
// the workload binds and removed when it leaves. One flooding workload, or
// the internet, fills only its own meter. Traffic to a key that no session
// takes has a meter of its own, strayMeterID: it only tells a peer that a
// half is gone (once a second per key), so a low rate serves, and a scan of
// the key range fills that meter, not the uplink's.
const (
	uplinkMeterID = 1
	strayMeterID  = 2
	strayRate     = 200 // packets per second
)

// underlayOf is what this server's workloads must never reach, because
// their egress would arrive there speaking as this server: the data subnet
// (every peer's agent and key range, the router), the router itself, the
// directory's endpoints that are IP addresses, and the prefixes the
// operator adds (a management network, other sites' server subnets).
func underlayOf(cfg Config) []netip.Prefix {
	var out []netip.Prefix
	if cfg.DataIP.IsValid() {
		out = append(out, cfg.DataIP.Masked())
	}
	if cfg.Gateway.Is4() {
		out = append(out, netip.PrefixFrom(cfg.Gateway, 32))
	}
	for _, e := range cfg.Etcd {
		if a, ok := endpointAddr(e); ok {
			out = append(out, netip.PrefixFrom(a, 32))
		}
	}
	if ap, err := netip.ParseAddrPort(cfg.PeerListen); err == nil && ap.Addr().Unmap().Is4() {
		out = append(out, netip.PrefixFrom(ap.Addr().Unmap(), 32))
	}
	return append(out, cfg.Underlay...)
}

// endpointAddr reads the IPv4 address out of a directory endpoint
// ("http://198.18.0.254:2379", "198.18.0.254:2379"); names and unix
// sockets have none.
func endpointAddr(e string) (netip.Addr, bool) {
	host := e
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil || u.Scheme == "unix" || u.Scheme == "unixs" {
			return netip.Addr{}, false
		}
		host = u.Host
	}
	if ap, err := netip.ParseAddrPort(host); err == nil {
		return ap.Addr().Unmap(), ap.Addr().Unmap().Is4()
	}
	a, err := netip.ParseAddr(host)
	return a.Unmap(), err == nil && a.Unmap().Is4()
}

// setMeter makes a meter what mm says: added, or modified when it exists
// already (meters outlive agents, and deleting one would delete its flows).
func setMeter(ctx context.Context, apply func(context.Context, ...openflow.Message) error, mm *openflow.MeterMod) error {
	if err := apply(ctx, mm); err == nil {
		return nil
	} else if errors.Is(err, errNoSwitch) {
		return err
	}
	mod := *mm
	mod.Command = openflow.MeterModify
	if err := apply(ctx, &mod); err != nil {
		return fmt.Errorf("punt meter %d: %w", mm.MeterID, err)
	}
	return nil
}

// applyOn sends messages on one connection and waits for its barrier.
func applyOn(c *openflow.Conn) func(context.Context, ...openflow.Message) error {
	return func(ctx context.Context, msgs ...openflow.Message) error {
		for _, m := range msgs {
			if _, err := c.Send(m); err != nil {
				return err
			}
		}
		return c.Barrier(ctx)
	}
}

func (a *Agent) workloadMeter(ofport uint32) *openflow.MeterMod {
	return pipeline.PuntMeter(pipeline.WorkloadMeter(ofport), a.cfg.PuntRate, a.cfg.PuntBurst)
}

func (a *Agent) uplinkMeter() *openflow.MeterMod {
	return pipeline.PuntMeter(uplinkMeterID, a.cfg.UplinkPuntRate, a.cfg.UplinkPuntBurst)
}

func strayMeter() *openflow.MeterMod { return pipeline.PuntMeter(strayMeterID, strayRate, strayRate) }

// setMeters puts the uplink's meter and every bound workload's on a freshly
// connected switch, before any flow that uses them.
func (a *Agent) setMeters(ctx context.Context, c *openflow.Conn) error {
	a.mu.Lock()
	ports := make([]uint32, 0, len(a.workloads))
	for p := range a.workloads {
		ports = append(ports, p)
	}
	a.mu.Unlock()
	meters := []*openflow.MeterMod{a.uplinkMeter(), strayMeter()}
	for _, p := range ports {
		meters = append(meters, a.workloadMeter(p))
	}
	for _, mm := range meters {
		if err := setMeter(ctx, applyOn(c), mm); err != nil {
			return err
		}
	}
	return nil
}

// addWorkloadMeter gives a workload's port its punt meter; its flows may
// go in once this returns. Without a switch it does nothing: the next
// connect sets every meter.
func (a *Agent) addWorkloadMeter(ctx context.Context, ofport uint32) error {
	err := setMeter(ctx, a.sw.apply, a.workloadMeter(ofport))
	if errors.Is(err, errNoSwitch) {
		return nil
	}
	return err
}

// removeWorkloadMeter drops a departed workload's meter, after its flows.
func (a *Agent) removeWorkloadMeter(ctx context.Context, ofport uint32) {
	if err := a.sw.apply(ctx, pipeline.DeleteMeter(pipeline.WorkloadMeter(ofport))); err != nil && !errors.Is(err, errNoSwitch) {
		a.log.Warn("cannot remove a workload's punt meter", "ofport", ofport, "err", err)
	}
}

// denyStray installs a short drop flow for a packet-in from a workload
// that the agent does not turn into a session, so that a flood of them
// costs one packet-in per drop-flow life, not one per packet.
func (a *Agent) denyStray(port uint32, f *packet.Frame) {
	fm := pipeline.DenyStray(a.bridge(), port, f)
	if fm == nil {
		return
	}
	if err := a.sw.send(fm); err != nil {
		a.log.Debug("cannot install drop flow", "err", err)
	}
}
