package main

import (
	"flag"
	"net/netip"
	"strconv"
	"strings"

	"nvi/directory"
)

func tenantCommands() []command {
	var o output
	return []command{
		{
			name: "create", args: "TENANT", help: "create a tenant",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT"); err != nil {
					return err
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				_, err = s.CreateTenant(e.ctx, args[0])
				return err
			},
		},
		{
			name: "list", help: "list tenants", flags: o.register,
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				o.w = e.stdout
				if err := o.check(); err != nil {
					return err
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				ts, err := s.Tenants(e.ctx)
				if err != nil {
					return err
				}
				var rows [][]string
				for _, t := range ts {
					rows = append(rows, []string{t.Name})
				}
				return o.print(ts, []string{"TENANT"}, rows)
			},
		},
		{
			name: "delete", args: "TENANT", help: "delete a tenant that has no networks",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT"); err != nil {
					return err
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				return s.DeleteTenant(e.ctx, args[0])
			},
		},
	}
}

func netCommands() []command {
	var (
		o       output
		cidr    string
		gateway string
	)
	return []command{
		{
			name: "create", args: "TENANT/NET", help: "create a network (and its tenant, if new)",
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&cidr, "cidr", "", "the network's IPv4 CIDR, e.g. 10.1.0.0/24 (required)")
				fs.StringVar(&gateway, "gateway", "", "gateway address (default: the first host address)")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT/NET"); err != nil {
					return err
				}
				t, n, err := directory.ParseNetRef(args[0])
				if err != nil {
					return err
				}
				if cidr == "" {
					return usagef("--cidr is required")
				}
				p, err := netip.ParsePrefix(cidr)
				if err != nil {
					return usagef("--cidr %q is not a CIDR (want e.g. 10.1.0.0/24)", cidr)
				}
				nw := directory.Network{Tenant: t, Name: n, CIDR: p}
				if gateway != "" {
					if nw.Gateway, err = netip.ParseAddr(gateway); err != nil {
						return usagef("--gateway %q is not an IP address", gateway)
					}
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				_, err = s.CreateNetwork(e.ctx, nw)
				return err
			},
		},
		{
			name: "list", args: "[TENANT]", help: "list networks", flags: o.register,
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				o.w = e.stdout
				if err := o.check(); err != nil {
					return err
				}
				if len(args) > 1 {
					return usagef("want at most one TENANT")
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				ns, err := s.Networks(e.ctx, strings.Join(args, ""))
				if err != nil {
					return err
				}
				var rows [][]string
				for _, n := range ns {
					rows = append(rows, []string{n.Tenant, n.Name, n.CIDR.String(), n.Gateway.String()})
				}
				return o.print(ns, []string{"TENANT", "NETWORK", "CIDR", "GATEWAY"}, rows)
			},
		},
		{
			name: "delete", args: "TENANT/NET", help: "delete a network that has no endpoints",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT/NET"); err != nil {
					return err
				}
				t, n, err := directory.ParseNetRef(args[0])
				if err != nil {
					return err
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				return s.DeleteNetwork(e.ctx, t, n)
			},
		},
	}
}

func endpointCommands() []command {
	var (
		o                             output
		netRef, server, ip, mac, ifid string
		tenant                        string
	)
	return []command{
		{
			name: "create", args: "TENANT/NAME",
			help: "record an endpoint; the agent of --server binds it when a port labelled with its iface-id appears",
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&netRef, "net", "", "network name within the tenant (required)")
				fs.StringVar(&server, "server", "", "server the endpoint lives on (required)")
				fs.StringVar(&ip, "ip", "", "address (default: assigned from the network)")
				fs.StringVar(&mac, "mac", "", "MAC (default: derived from tenant and address)")
				fs.StringVar(&ifid, "iface-id", "", "external_ids:iface-id of the port (default: TENANT/NAME)")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT/NAME"); err != nil {
					return err
				}
				t, name, err := directory.ParseNetRef(args[0])
				if err != nil {
					return err
				}
				if netRef == "" || server == "" {
					return usagef("--net and --server are required")
				}
				if nt, nn, err := directory.ParseNetRef(netRef); err == nil {
					if nt != t {
						return usagef("--net %s belongs to tenant %s, not %s", netRef, nt, t)
					}
					netRef = nn
				}
				ep := directory.Endpoint{Tenant: t, Network: netRef, Name: name, Server: server, MAC: mac, IfaceID: ifid}
				if ep.IfaceID == "" {
					ep.IfaceID = t + "/" + name
				}
				if ip != "" {
					if ep.IP, err = netip.ParseAddr(ip); err != nil {
						return usagef("--ip %q is not an IP address", ip)
					}
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				got, err := s.CreateEndpoint(e.ctx, ep)
				if err != nil {
					return err
				}
				o.w, o.format = e.stdout, "table"
				return o.print(got, endpointHeader, [][]string{endpointRow(got)})
			},
		},
		{
			name: "list", help: "list endpoints",
			flags: func(fs *flag.FlagSet) {
				o.register(fs)
				fs.StringVar(&tenant, "tenant", "", "only this tenant")
				fs.StringVar(&server, "server", "", "only this server")
				fs.StringVar(&netRef, "net", "", "only this network (TENANT/NET)")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				o.w = e.stdout
				if err := o.check(); err != nil {
					return err
				}
				f := directory.Filter{Tenant: tenant, Server: server}
				if netRef != "" {
					t, n, err := directory.ParseNetRef(netRef)
					if err != nil {
						return err
					}
					f.Tenant, f.Network = t, n
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				eps, err := s.Endpoints(e.ctx, f)
				if err != nil {
					return err
				}
				var rows [][]string
				for _, ep := range eps {
					rows = append(rows, endpointRow(ep))
				}
				return o.print(eps, endpointHeader, rows)
			},
		},
		{
			name: "delete", args: "TENANT/NAME", help: "delete an endpoint record",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT/NAME"); err != nil {
					return err
				}
				t, name, err := directory.ParseNetRef(args[0])
				if err != nil {
					return err
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				return s.DeleteEndpoint(e.ctx, t, name)
			},
		},
	}
}

var endpointHeader = []string{"TENANT", "NAME", "NETWORK", "IP", "MAC", "SERVER", "PORT", "IFACE-ID"}

func endpointRow(ep directory.Endpoint) []string {
	port := "-"
	if ep.Port != 0 {
		port = strconv.Itoa(int(ep.Port))
	}
	return []string{ep.Tenant, ep.Name, ep.Network, ep.IP.String(), ep.MAC, ep.Server, port, ep.IfaceID}
}
