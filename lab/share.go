package lab

import (
	"context"
	"net/netip"
	"strconv"
	"time"
)

// What follows is the lab's machinery for other labs on this machine:
// internal/ovnlab builds an OVN cloud shaped like this one, for nvibench to
// measure beside NVI, and makes its namespaces, veths and per-server Open
// vSwitch with the same code, so that the two clouds differ only in what
// runs on the bridges.

// Run executes a command and returns its trimmed output, or an error that
// carries what it printed.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	return run(ctx, name, args...)
}

// InNetns runs a command inside a network namespace.
func InNetns(ctx context.Context, ns, name string, args ...string) (string, error) {
	return inNetns(ctx, ns, name, args...)
}

// NetnsExists reports whether a named network namespace exists.
func NetnsExists(name string) bool { return netnsExists(name) }

// NetnsList lists the named network namespaces.
func NetnsList() []string { return netnsList() }

// DeleteNetns kills every process left in a namespace and removes it; a
// namespace that is already gone is not an error.
func DeleteNetns(ctx context.Context, name string) error { return deleteNetns(ctx, name) }

// KillWait ends a process (SIGTERM, then SIGKILL after grace); a pid of 0
// or of a process that is gone is not an error.
func KillWait(pid int, grace time.Duration) { killWait(pid, grace) }

// ReadPidfile returns the pid in path, 0 if there is none.
func ReadPidfile(path string) int { return readPidfile(path) }

// WaitFor polls cond until it holds or ctx ends.
func WaitFor(ctx context.Context, every time.Duration, cond func() error) error {
	return waitFor(ctx, every, cond)
}

// StartOVS runs an ovsdb-server (with a new database) and an ovs-vswitchd
// inside namespace netns, every socket, pidfile and log in dir, as each lab
// server's are: db.sock, ovsdb-server.pid, ovs-vswitchd.pid, and the
// bridges' management sockets (BRIDGE.mgmt).
func StartOVS(ctx context.Context, netns, dir string) error {
	return startOVS(ctx, Server{Netns: netns, Dir: dir})
}

// BackgroundRevalidators gives the revalidator threads of the ovs-vswitchd
// whose pidfile is in dir the lowest CPU priority, as the lab does for its
// servers (see backgroundRevalidators). They exist once a bridge does.
func BackgroundRevalidators(dir string) error {
	return backgroundRevalidators(Server{Name: dir, Dir: dir})
}

// Guest is one end of a veth pair in a network namespace of its own (a
// workload), the other end (HostIface) in the server's namespace, not yet
// plugged into anything.
type Guest struct {
	Netns     string       // the guest's namespace, made here
	HostNetns string       // the server's namespace
	HostIface string       // the server's end of the pair
	MAC       string       // of the guest's eth0
	Addr      netip.Prefix // of the guest's eth0
	Gateway   netip.Addr   // the default route; none when invalid
	MTU       int          // of both ends; 0 leaves the kernel's default
}

// PlumbGuest makes a guest: its namespace, eth0 with its MAC and address,
// the default route, and TX checksum offload off on both ends (the
// userspace datapath sees frames before the kernel would fill in offloaded
// checksums, and its conntrack drops what has only partial ones).
func PlumbGuest(ctx context.Context, g Guest) error {
	link := []string{"ip", "link", "add", "eth0", "netns", g.Netns}
	peer := []string{"peer", "name", g.HostIface, "netns", g.HostNetns}
	if g.MTU > 0 {
		m := strconv.Itoa(g.MTU)
		link = append(link, "mtu", m)
		peer = append(peer, "mtu", m)
	}
	steps := [][]string{
		{"ip", "netns", "add", g.Netns},
		{"ip", "netns", "exec", g.Netns, "ip", "link", "set", "lo", "up"},
		append(append(link, "type", "veth"), peer...),
		{"ip", "netns", "exec", g.Netns, "ip", "link", "set", "eth0", "address", g.MAC},
		{"ip", "netns", "exec", g.Netns, "ip", "addr", "add", g.Addr.String(), "dev", "eth0"},
		{"ip", "netns", "exec", g.Netns, "ip", "link", "set", "eth0", "up"},
	}
	if g.Gateway.IsValid() {
		steps = append(steps, []string{"ip", "netns", "exec", g.Netns, "ip", "route", "add", "default", "via", g.Gateway.String()})
	}
	steps = append(steps,
		[]string{"ip", "netns", "exec", g.Netns, "ethtool", "-K", "eth0", "tx", "off"},
		[]string{"ip", "netns", "exec", g.HostNetns, "ethtool", "-K", g.HostIface, "tx", "off"},
		[]string{"ip", "netns", "exec", g.HostNetns, "ip", "link", "set", g.HostIface, "up"},
	)
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}
