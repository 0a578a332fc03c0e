package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"nvi/directory"
	"nvi/policy"
	"nvi/session"
)

func groupCommands() []command {
	return []command{
		refCmd("create", "group", "create an empty group of networks", func(s *directory.Store, ctx context.Context, t, g string) error {
			_, err := s.CreateGroup(ctx, t, g)
			return err
		}),
		deleteCmd("group", "delete a group that no rule names", (*directory.Store).DeleteGroup),
		groupEditCmd("add", "add networks of the tenant to a group (all or none)", (*directory.Store).AddToGroup),
		groupEditCmd("remove", "remove networks from a group (all or none)", (*directory.Store).RemoveFromGroup),
		listCmd("list", "[TENANT]", "list groups and their networks", nil, []string{"TENANT", "GROUP", "NETWORKS"},
			func(e *env, s *directory.Store, args []string) ([]tenantGroup, error) {
				if len(args) > 1 {
					return nil, usagef("want at most one TENANT")
				}
				tenants := args
				if len(args) == 0 {
					ts, err := s.Tenants(e.ctx)
					if err != nil {
						return nil, err
					}
					for _, t := range ts {
						tenants = append(tenants, t.Name)
					}
				}
				var out []tenantGroup
				for _, t := range tenants {
					gs, err := s.Groups(e.ctx, t)
					if err != nil {
						return nil, err
					}
					for _, g := range gs {
						out = append(out, tenantGroup{t, g})
					}
				}
				return out, nil
			},
			func(g tenantGroup) []string { return []string{g.Tenant, g.Name, strings.Join(g.Networks, ", ")} }),
	}
}

// tenantGroup is a group with its tenant, as "group list" shows it.
type tenantGroup struct {
	Tenant string `json:"tenant"`
	policy.Group
}

func groupEditCmd(name, help string, edit func(s *directory.Store, ctx context.Context, tenant, group string, nets ...string) (policy.Group, error)) command {
	return command{
		name: name, args: "TENANT/GROUP NET [NET...]", help: help,
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if len(args) < 2 {
				return usagef("want TENANT/GROUP NET [NET...], got %d argument(s)", len(args))
			}
			t, g, err := parseRef("group", args[0])
			if err != nil {
				return err
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			_, err = edit(s, e.ctx, t, g, args[1:]...)
			return err
		},
	}
}

// pairCmd makes a command about the pair rule of two workloads of one tenant.
func pairCmd(name, help string, act func(s *directory.Store, ctx context.Context, tenant, a, b string) error) command {
	const arg = "TENANT/A TENANT/B"
	return command{
		name: name, args: arg, help: help,
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 2, arg); err != nil {
				return err
			}
			t, a, err := parseRef("workload", args[0])
			if err != nil {
				return err
			}
			t2, b, err := parseRef("workload", args[1])
			if err != nil {
				return err
			}
			if t != t2 {
				return usagef("%s and %s are in different tenants; a pair rule joins two workloads of one tenant", args[0], args[1])
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			return act(s, e.ctx, t, a, b)
		},
	}
}

// setPair adapts Connect and Disconnect to pairCmd.
func setPair(set func(*directory.Store, context.Context, string, string, string) (policy.Pair, error)) func(*directory.Store, context.Context, string, string, string) error {
	return func(s *directory.Store, ctx context.Context, t, a, b string) error {
		_, err := set(s, ctx, t, a, b)
		return err
	}
}

func ruleCommands() []command {
	var allow, deny bool
	var from, to, port string
	return []command{
		{
			name: "add", args: "TENANT", help: "add a rule and print its ID: (--allow|--deny) --from SEL --to SEL [--port SPEC]",
			flags: func(fs *flag.FlagSet) {
				fs.BoolVar(&allow, "allow", false, "the rule allows")
				fs.BoolVar(&deny, "deny", false, "the rule denies")
				fs.StringVar(&from, "from", "", "client workloads: net:NAME, group:NAME, workload:NAME or any (required)")
				fs.StringVar(&to, "to", "", "server workloads: net:NAME, group:NAME, workload:NAME or any (required)")
				fs.StringVar(&port, "port", "any", "tcp/80, udp/53, tcp/8000-8080, tcp, icmp or any")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "TENANT"); err != nil {
					return err
				}
				r := policy.Rule{Action: policy.Allow}
				switch {
				case allow == deny:
					return usagef("say --allow or --deny (one of them)")
				case deny:
					r.Action = policy.Deny
				}
				if from == "" || to == "" {
					return usagef("--from and --to are required")
				}
				var err error
				if r.From, err = policy.ParseSelector(from); err != nil {
					return usagef("--from: %v", err)
				}
				if r.To, err = policy.ParseSelector(to); err != nil {
					return usagef("--to: %v", err)
				}
				if r.Ports, err = policy.ParsePorts(port); err != nil {
					return usagef("--port: %v", err)
				}
				s, err := e.directory()
				if err != nil {
					return err
				}
				if r, err = s.AddRule(e.ctx, args[0], r); err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, r.ID)
				return nil
			},
		},
		listCmd("list", "TENANT", "list a tenant's rules in the order they were added", nil, ruleHeader,
			func(e *env, s *directory.Store, args []string) ([]policy.Rule, error) {
				if err := wantArgs(args, 1, "TENANT"); err != nil {
					return nil, err
				}
				return s.Rules(e.ctx, args[0])
			}, ruleRow),
		argsCmd("delete", "TENANT ID", "delete a rule", func(e *env, s *directory.Store, args []string) error {
			return s.DeleteRule(e.ctx, args[0], args[1])
		}),
	}
}

var ruleHeader = []string{"ID", "ACTION", "FROM", "TO", "PORTS"}

func ruleRow(r policy.Rule) []string {
	return []string{r.ID, string(r.Action), r.From.String(), r.To.String(), r.Ports.String()}
}

func policyShowCmd() command {
	var o output
	return command{
		name: "show", args: "TENANT", help: "show a tenant's groups, pair rules and rules, and the order they apply in",
		flags: o.register,
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			o.w = e.stdout
			if err := o.check(); err != nil {
				return err
			}
			if err := wantArgs(args, 1, "TENANT"); err != nil {
				return err
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			p, err := s.Policy(e.ctx, args[0])
			if err != nil {
				return err
			}
			if o.format == "json" {
				return o.print(struct {
					Tenant     string `json:"tenant"`
					Precedence string `json:"precedence"`
					policy.Policy
				}{args[0], policy.Precedence, p}, nil, nil)
			}
			fmt.Fprintf(e.stdout, "tenant %s; precedence: %s\n\n", args[0], policy.Precedence)
			var groups, pairs, rules [][]string
			for _, g := range p.Groups {
				groups = append(groups, []string{g.Name, strings.Join(g.Networks, ", ")})
			}
			for _, pr := range p.Pairs {
				state := "disconnected"
				if pr.Connect {
					state = "connected"
				}
				pairs = append(pairs, []string{pr.A + " - " + pr.B, state})
			}
			for _, r := range p.Rules {
				rules = append(rules, ruleRow(r))
			}
			for i, sec := range []struct {
				header []string
				rows   [][]string
			}{{[]string{"GROUP", "NETWORKS"}, groups}, {[]string{"PAIR", "RULE"}, pairs}, {ruleHeader, rules}} {
				if i > 0 {
					fmt.Fprintln(e.stdout)
				}
				if err := o.print(nil, sec.header, sec.rows); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// parsePort reads "tcp/8080" (TCP or UDP, ports 1-65535).
func parsePort(spec string) (session.Proto, uint16, error) {
	ps, port, _ := strings.Cut(spec, "/")
	proto, err := session.ParseProto(ps)
	n, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || !proto.HasPorts() || perr != nil || n == 0 {
		return 0, 0, fmt.Errorf("%q: want tcp/PORT or udp/PORT with a port 1-65535", spec)
	}
	return proto, uint16(n), nil
}

func exposeCmd() command {
	var spec string
	return command{
		name: "expose", args: "TENANT/WORKLOAD", help: "make a workload's port reachable on its server's data address: --port tcp/8080:80",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&spec, "port", "", "PROTO/SERVERPORT:WORKLOADPORT, e.g. tcp/8080:80 or udp/5353:53 (required)")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			t, w, err := oneRef(args, "workload")
			if err != nil {
				return err
			}
			outer, inner, ok := strings.Cut(spec, ":")
			proto, port, err := parsePort(outer)
			target, terr := strconv.ParseUint(inner, 10, 16)
			if !ok || err != nil || terr != nil || target == 0 {
				return usagef("--port %q: want PROTO/SERVERPORT:WORKLOADPORT, e.g. tcp/8080:80", spec)
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			pm, err := s.Expose(e.ctx, directory.PortMap{Proto: proto, Port: port, Tenant: t, Endpoint: w, TargetPort: uint16(target)})
			if err != nil {
				return err
			}
			o := output{format: "table", w: e.stdout}
			return o.print(pm, portMapHeader, [][]string{portMapRow(pm)})
		},
	}
}

func unexposeCmd() command {
	return command{
		name: "unexpose", args: "SERVER PROTO/PORT", help: "remove a port map: unexpose s1 tcp/8080",
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			if err := wantArgs(args, 2, "SERVER PROTO/PORT"); err != nil {
				return err
			}
			proto, port, err := parsePort(args[1])
			if err != nil {
				return usagef("%v", err)
			}
			s, err := e.directory()
			if err != nil {
				return err
			}
			return s.Unexpose(e.ctx, args[0], proto, port)
		},
	}
}

func portMapCommands() []command {
	var server string
	return []command{
		listCmd("list", "", "list port maps",
			func(fs *flag.FlagSet) { fs.StringVar(&server, "server", "", "only this server") },
			portMapHeader,
			func(e *env, s *directory.Store, _ []string) ([]directory.PortMap, error) {
				return s.PortMaps(e.ctx, server)
			},
			portMapRow),
	}
}

var portMapHeader = []string{"SERVER", "PORT", "TENANT", "WORKLOAD", "TARGET PORT"}

func portMapRow(p directory.PortMap) []string {
	return []string{p.Server, fmt.Sprintf("%s/%d", p.Proto, p.Port), p.Tenant, p.Endpoint, strconv.Itoa(int(p.TargetPort))}
}
