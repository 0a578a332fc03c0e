package main

import (
	"context"
	"flag"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"nvi/directory"
)

// parseRef reads "TENANT/NAME", naming what NAME is in its errors.
func parseRef(kind, s string) (tenant, name string, err error) {
	tenant, name, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", usagef("%q is not of the form TENANT/%s", s, strings.ToUpper(kind))
	}
	if err := directory.ValidateName("tenant", tenant); err != nil {
		return "", "", err
	}
	return tenant, name, directory.ValidateName(kind, name)
}

// oneRef reads the single argument TENANT/KIND.
func oneRef(args []string, kind string) (tenant, name string, err error) {
	if err := wantArgs(args, 1, "TENANT/"+strings.ToUpper(kind)); err != nil {
		return "", "", err
	}
	return parseRef(kind, args[0])
}

// listCmd makes a command that prints records as a table or as JSON.
func listCmd[T any](name, args, help string, flags func(*flag.FlagSet), header []string,
	fetch func(e *env, s *directory.Store, args []string) ([]T, error), row func(T) []string) command {
	var o output
	return command{
		name: name, args: args, help: help,
		flags: func(fs *flag.FlagSet) {
			o.register(fs)
			if flags != nil {
				flags(fs)
			}
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			o.w = e.stdout
			if err := o.check(); err != nil {
				return err
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			items, err := fetch(e, s, args)
			if err != nil {
				return err
			}
			if items == nil {
				items = []T{}
			}
			rows := make([][]string, 0, len(items))
			for _, it := range items {
				rows = append(rows, row(it))
			}
			return o.print(items, header, rows)
		},
	}
}

// deleteCmd makes a command that deletes the record TENANT/NAME.
func deleteCmd(kind, help string, del func(s *directory.Store, ctx context.Context, tenant, name string) error) command {
	return refCmd("delete", kind, help, del)
}

// refCmd makes a command that acts on the record TENANT/NAME.
func refCmd(name, kind, help string, act func(s *directory.Store, ctx context.Context, tenant, name string) error) command {
	return command{
		name: name, args: "TENANT/" + strings.ToUpper(kind), help: help,
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			t, n, err := oneRef(args, kind)
			if err != nil {
				return err
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			return act(s, e.ctx, t, n)
		},
	}
}

func tenantCommands() []command {
	return []command{
		argsCmd("create", "TENANT", "create a tenant", func(e *env, s *directory.Store, args []string) error {
			_, err := s.CreateTenant(e.ctx, args[0])
			return err
		}),
		listCmd("list", "", "list tenants and their conntrack zones", nil, []string{"TENANT", "ZONE"},
			func(e *env, s *directory.Store, _ []string) ([]directory.Tenant, error) { return s.Tenants(e.ctx) },
			func(t directory.Tenant) []string { return []string{t.Name, orDash(int(t.Zone))} }),
		argsCmd("delete", "TENANT", "delete a tenant that has no networks (and its remaining policy)", func(e *env, s *directory.Store, args []string) error {
			return s.DeleteTenant(e.ctx, args[0])
		}),
	}
}

// argsCmd makes a command that takes exactly the positional arguments that
// args names ("TENANT ID") and hands them to act with the directory.
func argsCmd(name, args, help string, act func(e *env, s *directory.Store, args []string) error) command {
	return command{
		name: name, args: args, help: help,
		run: func(e *env, _ *flag.FlagSet, pos []string) error {
			if err := wantArgs(pos, len(strings.Fields(args)), args); err != nil {
				return err
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			return act(e, s, pos)
		},
	}
}

func netCommands() []command {
	var cidr, gateway string
	return []command{
		{
			name: "create", args: "TENANT/NET", help: "create a network (and its tenant, if new)",
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&cidr, "cidr", "", "the network's IPv4 CIDR, e.g. 10.1.0.0/24 (required)")
				fs.StringVar(&gateway, "gateway", "", "gateway address (default: the first host address)")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				t, n, err := oneRef(args, "net")
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
		listCmd("list", "[TENANT]", "list networks", nil, []string{"TENANT", "NETWORK", "CIDR", "GATEWAY"},
			func(e *env, s *directory.Store, args []string) ([]directory.Network, error) {
				if len(args) > 1 {
					return nil, usagef("want at most one TENANT")
				}
				return s.Networks(e.ctx, strings.Join(args, ""))
			},
			func(n directory.Network) []string {
				return []string{n.Tenant, n.Name, n.CIDR.String(), n.Gateway.String()}
			}),
		listCmd("blocks", "TENANT/NET", "list the address blocks servers hold in a network", nil, []string{"BLOCK", "SERVER"},
			func(e *env, s *directory.Store, args []string) ([]netBlock, error) {
				if err := wantArgs(args, 1, "TENANT/NET"); err != nil {
					return nil, err
				}
				t, n, err := parseRef("net", args[0])
				if err != nil {
					return nil, err
				}
				held, err := s.Blocks(e.ctx, t, n)
				if err != nil {
					return nil, err
				}
				out := make([]netBlock, 0, len(held))
				for b, srv := range held {
					out = append(out, netBlock{b, srv})
				}
				slices.SortFunc(out, func(x, y netBlock) int { return x.Block.Addr().Compare(y.Block.Addr()) })
				return out, nil
			},
			func(b netBlock) []string { return []string{b.Block.String(), b.Server} }),
		deleteCmd("net", "delete a network that has no endpoints", (*directory.Store).DeleteNetwork),
	}
}

// netBlock is an address block and the server that holds it.
type netBlock struct {
	Block  netip.Prefix `json:"block"`
	Server string       `json:"server"`
}

func endpointCommands() []command {
	var netRef, server, ip, mac, ifid, tenant string
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
				t, name, err := parseRef("endpoint", args[0])
				if err != nil {
					return err
				}
				if netRef == "" || server == "" {
					return usagef("--net and --server are required")
				}
				if nt, nn, ok := strings.Cut(netRef, "/"); ok {
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
				o := output{format: "table", w: e.stdout}
				return o.print(got, endpointHeader, [][]string{endpointRow(got)})
			},
		},
		listCmd("list", "", "list endpoints",
			func(fs *flag.FlagSet) {
				fs.StringVar(&tenant, "tenant", "", "only this tenant")
				fs.StringVar(&server, "server", "", "only this server")
				fs.StringVar(&netRef, "net", "", "only this network (TENANT/NET)")
			},
			endpointHeader,
			func(e *env, s *directory.Store, _ []string) ([]directory.Endpoint, error) {
				f := directory.Filter{Tenant: tenant, Server: server}
				if netRef != "" {
					t, n, err := parseRef("net", netRef)
					if err != nil {
						return nil, err
					}
					f.Tenant, f.Network = t, n
				}
				return s.Endpoints(e.ctx, f)
			},
			endpointRow),
		deleteCmd("endpoint", "delete an endpoint record", (*directory.Store).DeleteEndpoint),
	}
}

var endpointHeader = []string{"TENANT", "NAME", "NETWORK", "IP", "MAC", "SERVER", "PORT", "IFACE-ID"}

func endpointRow(ep directory.Endpoint) []string {
	return []string{ep.Tenant, ep.Name, ep.Network, ep.IP.String(), ep.MAC, ep.Server, orDash(int(ep.Port)), ep.IfaceID}
}

// orDash prints a number that 0 means "none" of.
func orDash(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}
