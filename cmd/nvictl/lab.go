package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"nvi/api"
	"nvi/directory"
	"nvi/lab"
	"nvi/session"
)

func sessionsCommand() command {
	var (
		o              output
		server, socket string
	)
	return command{
		name: "sessions", help: "list a server's live sessions",
		flags: func(fs *flag.FlagSet) {
			o.register(fs)
			fs.StringVar(&server, "server", "", "the server (a lab server name)")
			fs.StringVar(&socket, "socket", "", "path of the agent's local API socket (outside a lab)")
		},
		run: func(e *env, _ *flag.FlagSet, args []string) error {
			o.w = e.stdout
			if err := o.check(); err != nil {
				return err
			}
			c, err := e.agent(server, socket)
			if err != nil {
				return err
			}
			defer c.Close()
			ss, err := c.Sessions(e.ctx)
			if err != nil {
				return err
			}
			if ss == nil {
				ss = []api.SessionInfo{}
			}
			var rows [][]string
			for _, s := range ss {
				key, peer := "-", "-"
				if s.Role != session.RoleLocal {
					key, peer = strconv.Itoa(int(s.Key)), fmt.Sprintf("%s (%s)", s.PeerServer, s.Peer.IP)
				}
				rows = append(rows, []string{
					s.Tenant, s.Proto.String(), s.Client.String(), fmt.Sprintf("%s:%d", s.Server, s.Port),
					s.Role.String(), key, peer, s.State, strconv.FormatUint(s.Packets, 10),
					s.IdleFor.Truncate(100 * time.Millisecond).String(),
				})
			}
			return o.print(ss, []string{"TENANT", "PROTO", "CLIENT", "SERVER", "ROLE", "KEY", "PEER", "STATE", "PACKETS", "IDLE"}, rows)
		},
	}
}

func labCommands() []command {
	var (
		o                       output
		servers                 int
		etcd, idle, bin, subnet string
		agentArgs, peerNet      string
		p                       placement
		tap, nic                string
		certTTL                 time.Duration
	)
	logf := func(e *env) func(string, ...any) {
		return func(format string, args ...any) { fmt.Fprintf(e.stderr, "lab: "+format+"\n", args...) }
	}
	return []command{
		{
			name: "up", help: "bring up a lab of N servers (s1..sN) and wait until every agent is ready",
			flags: func(fs *flag.FlagSet) {
				fs.IntVar(&servers, "servers", 3, "number of servers")
				fs.StringVar(&etcd, "etcd", "", "use this external directory instead of the embedded one")
				fs.StringVar(&idle, "idle-timeout", "", "agents' session idle timeout (e.g. 30s)")
				fs.StringVar(&bin, "bin", "", "directory holding nvid (default: next to nvictl)")
				fs.StringVar(&subnet, "subnet", lab.DefaultSubnet.String(), "underlay subnet")
				fs.StringVar(&agentArgs, "agent-args", "", "extra nvid flags, space-separated")
				fs.StringVar(&peerNet, "peer-network", "management", "where agents speak to each other: \"management\" (the directory's network) or \"data\" (their data addresses, through the bridges)")
				fs.DurationVar(&certTTL, "cert-ttl", lab.DefaultCertTTL, "life of the servers' certificates (they renew at two thirds of it)")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 0, "no arguments"); err != nil {
					return err
				}
				p, err := netip.ParsePrefix(subnet)
				if err != nil {
					return usagef("--subnet %q is not a CIDR", subnet)
				}
				if certTTL <= 0 {
					return usagef("--cert-ttl %v: want a positive duration", certTTL)
				}
				cfg := lab.Config{Prefix: e.lab, Servers: servers, Subnet: p, Bin: bin, Log: logf(e), CertTTL: certTTL}
				switch peerNet {
				case "management":
				case "data":
					cfg.PeerAPIOnData = true
				default:
					return usagef("--peer-network %q: want management or data", peerNet)
				}
				if etcd != "" {
					cfg.Etcd = strings.Split(etcd, ",")
				}
				if idle != "" {
					if _, err := time.ParseDuration(idle); err != nil {
						return usagef("--idle-timeout %q: %v", idle, err)
					}
					cfg.AgentArgs = append(cfg.AgentArgs, "--idle-timeout="+idle)
				}
				cfg.AgentArgs = append(cfg.AgentArgs, strings.Fields(agentArgs)...)
				st, err := lab.Up(e.ctx, cfg)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "lab %q is up: %d servers on %s, directory %s\n", st.Prefix, len(st.Servers), st.Subnet, strings.Join(st.Directory.Endpoints, ","))
				return nil
			},
		},
		{
			name: "down", help: "remove everything the lab made (safe to run twice, also after a crash)",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 0, "no arguments"); err != nil {
					return err
				}
				return lab.Down(e.ctx, e.lab)
			},
		},
		{
			name: "status", help: "show the lab's servers and workloads", flags: o.register,
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				o.w = e.stdout
				if err := o.check(); err != nil {
					return err
				}
				st, err := lab.Load(e.lab)
				if err != nil {
					return err
				}
				var rows [][]string
				for _, sv := range st.Servers {
					status := "unreachable"
					c := api.NewLocalClient(sv.Socket, 2*time.Second)
					if s, err := c.Status(e.ctx); err == nil {
						status = fmt.Sprintf("ready=%v endpoints=%d sessions=%d", s.Ready, s.Endpoints, s.Sessions)
					}
					c.Close()
					rows = append(rows, []string{"server", sv.Name, sv.Netns, sv.DataIP.String(), status})
				}
				for _, w := range st.Workloads {
					rows = append(rows, []string{"workload", w.Name, w.Name, w.IP.String(), fmt.Sprintf("%s/%s on %s", w.Tenant, w.Network, w.Server)})
				}
				return o.print(st, []string{"KIND", "NAME", "NETNS", "ADDRESS", "STATUS"}, rows)
			},
		},
		{
			name: "restart-agent", args: "SERVER", help: "kill a server's nvid as a crash would and start it again; its sessions live on",
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if err := wantArgs(args, 1, "SERVER"); err != nil {
					return err
				}
				return lab.RestartAgent(e.ctx, e.lab, args[0])
			},
		},
		group("vm", "add lab VMs: taps plugged into a server's bridge as libvirt plugs them", []command{
			{
				name: "add", args: "NAME", help: "create a VM: a guest namespace NAME behind a tap on a server's bridge (remove it with 'lab workload rm')",
				flags: p.register,
				run: func(e *env, _ *flag.FlagSet, args []string) error {
					name, t, n, ip, err := p.parse(args)
					if err != nil {
						return err
					}
					w, err := lab.AddVM(e.ctx, e.lab, lab.VMSpec{Name: name, Server: p.server, Tenant: t, Network: n, IP: ip})
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "vm %s: %s on %s (%s/%s, MAC %s, tap %s)\n", w.Name, w.IP, w.Server, w.Tenant, w.Network, w.MAC, w.Tap)
					return nil
				},
			},
		}),
		{
			// The VM's "QEMU": lab vm add starts it in the server's namespace.
			name: "tap-nic", help: "(internal) own a VM's tap and relay its frames to the guest's NIC",
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&tap, "tap", "", "tap device to create")
				fs.StringVar(&nic, "nic", "", "the guest NIC's other end")
			},
			run: func(e *env, _ *flag.FlagSet, args []string) error {
				if tap == "" || nic == "" {
					return usagef("--tap and --nic are required")
				}
				return lab.RunTapNIC(tap, nic)
			},
		},
		group("workload", "add and remove lab workloads (network namespaces)", []command{
			{
				name: "add", args: "NAME", help: "create a workload: a network namespace NAME plugged into a server's bridge",
				flags: p.register,
				run: func(e *env, _ *flag.FlagSet, args []string) error {
					name, t, n, ip, err := p.parse(args)
					if err != nil {
						return err
					}
					w, err := lab.AddWorkload(e.ctx, e.lab, lab.WorkloadSpec{Name: name, Server: p.server, Tenant: t, Network: n, IP: ip})
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "workload %s: %s on %s (%s/%s, MAC %s)\n", w.Name, w.IP, w.Server, w.Tenant, w.Network, w.MAC)
					return nil
				},
			},
			{
				name: "rm", args: "NAME", help: "delete a workload",
				run: func(e *env, _ *flag.FlagSet, args []string) error {
					if err := wantArgs(args, 1, "NAME"); err != nil {
						return err
					}
					return lab.RemoveWorkload(e.ctx, e.lab, args[0])
				},
			},
		}),
	}
}

// placement is where a new lab workload or VM goes: NAME --server --net
// [--ip].
type placement struct{ server, net, ip string }

func (p *placement) register(fs *flag.FlagSet) {
	fs.StringVar(&p.server, "server", "", "server to put it on, e.g. s1 (required)")
	fs.StringVar(&p.net, "net", "", "network, TENANT/NET (required)")
	fs.StringVar(&p.ip, "ip", "", "address (default: assigned from the network)")
}

func (p *placement) parse(args []string) (name, tenant, net string, ip netip.Addr, err error) {
	if err := wantArgs(args, 1, "NAME"); err != nil {
		return "", "", "", ip, err
	}
	if p.server == "" || p.net == "" {
		return "", "", "", ip, usagef("--server and --net are required")
	}
	if tenant, net, err = directory.ParseNetRef(p.net); err != nil {
		return "", "", "", ip, err
	}
	if p.ip != "" {
		if ip, err = netip.ParseAddr(p.ip); err != nil {
			return "", "", "", ip, usagef("--ip %q is not an IP address", p.ip)
		}
	}
	return args[0], tenant, net, ip, nil
}
