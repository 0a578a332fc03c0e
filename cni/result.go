package cni

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"nvi/api"
)

// BuildResult makes ADD's result in the configuration's version: the
// bridge-side interface (index 0, on the host), the container's (index 1,
// with its sandbox), the endpoint's address on the container's interface
// with the gateway, a default route via the gateway, and no DNS. A
// prevResult (nvi-cni chained after another plugin) is kept and ours
// appended.
func BuildResult(c Config, ep api.Endpoint, host, hostMAC, ifname, netns string) ([]byte, error) {
	if !ep.IP.Is4() || !ep.Gateway.Is4() || ep.PrefixLen <= 0 || ep.PrefixLen > 32 {
		return nil, fmt.Errorf("the agent returned an unusable endpoint: address %s/%d, gateway %s", ep.IP, ep.PrefixLen, ep.Gateway)
	}
	r := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if c.PrevResult != nil {
		r.Interfaces = append(r.Interfaces, c.PrevResult.Interfaces...)
		r.IPs = append(r.IPs, c.PrevResult.IPs...)
		r.Routes = append(r.Routes, c.PrevResult.Routes...)
		r.DNS = c.PrevResult.DNS
	}
	base := len(r.Interfaces)
	r.Interfaces = append(r.Interfaces,
		&types100.Interface{Name: host, Mac: hostMAC},
		&types100.Interface{Name: ifname, Mac: ep.MAC, Sandbox: netns},
	)
	gw := net.IP(ep.Gateway.AsSlice())
	r.IPs = append(r.IPs, &types100.IPConfig{
		Interface: types100.Int(base + 1),
		Address:   ipNet(netip.PrefixFrom(ep.IP, ep.PrefixLen)),
		Gateway:   gw,
	})
	r.Routes = append(r.Routes, &types.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), GW: gw})
	conv, err := r.GetAsVersion(c.Version)
	if err != nil {
		return nil, fmt.Errorf("converting the result to version %s: %w", c.Version, err)
	}
	var buf bytes.Buffer
	if err := conv.PrintTo(&buf); err != nil {
		return nil, fmt.Errorf("encoding the result: %w", err)
	}
	return buf.Bytes(), nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
