// Package ovnlab brings up an OVN cloud on this machine, so that nvibench
// can measure OVN — what users would pick instead of NVI — beside NVI in
// the same run, on the same cores and the same Open vSwitch.
//
// It is shaped like NVI's lab (package lab), whose helpers it uses: each
// chassis is a network namespace with its own ovsdb-server and
// ovs-vswitchd (userspace netdev datapath) and its own ovn-controller; an
// underlay switch namespace joins the chassis' uplinks, and OVN carries the
// workloads' traffic between chassis in Geneve. The central part (the
// northbound and southbound ovsdb-servers and ovn-northd) runs in the
// machine's own namespace on unix sockets. Workload ports are bound the way
// ovn-kubernetes binds a pod's: a veth whose host end is added to br-int
// labelled with the logical switch port's iface-id, the port's addresses
// and port security set to "MAC IP", the workload's MTU the underlay's less
// Geneve's overhead, and ACLs that make the switch stateful (conntrack), as
// a network policy does.
//
// Everything lives under /run/PREFIX and in namespaces named PREFIX-*:
// Down removes it by pidfiles and names, so it also cleans up after a
// crash, and Up does so first.
package ovnlab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"nvi/lab"
)

// DefaultPrefix names the benchmark's OVN lab. NVI's labs use nvi, nvb,
// nvp, nvl and the tests' letter-and-number prefixes.
const DefaultPrefix = "nvo"

// DefaultSubnet is the OVN lab's underlay: a benchmarking range (RFC 2544)
// that no NVI lab uses (theirs is 198.18.0.0/24, the management network
// 198.19.0.0/24).
var DefaultSubnet = netip.MustParsePrefix("198.18.64.0/24")

// UnderlayMTU is the MTU of the underlay links, as in NVI's lab.
const UnderlayMTU = 1500

// GeneveOverhead is what ovn-kubernetes takes off the underlay's MTU for a
// pod's: 100 bytes. The Geneve headers OVN puts on an IPv4 underlay take
// 58 (outer IPv4 20, UDP 8, Geneve 8, OVN's option 8, inner Ethernet 14);
// the rest is a margin, for IPv6 underlays among others.
const GeneveOverhead = 100

// WorkloadMTU is the MTU ovn-kubernetes gives a workload's interface over
// an underlay of MTU underlay.
func WorkloadMTU(underlay int) int { return underlay - GeneveOverhead }

// Tools are the programs an OVN lab runs, beside those of NVI's lab.
var Tools = []string{"ovn-northd", "ovn-controller", "ovn-nbctl", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ip", "ethtool"}

const (
	nbSchema  = "/usr/share/ovn/ovn-nb.ovsschema"
	sbSchema  = "/usr/share/ovn/ovn-sb.ovsschema"
	intBridge = "br-int"
	phyBridge = "br-phy"
	uplink    = "up0"
)

// Config shapes an OVN lab.
type Config struct {
	Prefix  string       // names namespaces and /run/PREFIX; default DefaultPrefix
	Chassis int          // default 2, named s1..sN like NVI's servers
	Subnet  netip.Prefix // underlay; chassis take .1.., default DefaultSubnet
	Log     *slog.Logger // progress; nil discards it
}

// Lab is an OVN lab that is up.
type Lab struct {
	Prefix  string
	RunDir  string
	Subnet  netip.Prefix
	Chassis []Chassis
	log     *slog.Logger
}

// Chassis is one server of the OVN lab.
type Chassis struct {
	Name    string     // s1, s2, ...
	Netns   string     // PREFIX-s1
	Dir     string     // its sockets, pidfiles and logs
	EncapIP netip.Addr // its underlay (Geneve) address
}

// DB is the OVSDB socket of the chassis' Open vSwitch.
func (c Chassis) DB() string { return "unix:" + filepath.Join(c.Dir, "db.sock") }

// Bridge is the OpenFlow management socket of the chassis' br-int.
func (c Chassis) Bridge() string { return "unix:" + filepath.Join(c.Dir, intBridge+".mgmt") }

var prefixRe = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// Preflight says what stops an OVN lab from running here.
func Preflight() error {
	if err := lab.Preflight(); err != nil {
		return err
	}
	var missing []string
	for _, t := range Tools {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (install with: apt-get install ovn-central ovn-host; scripts/deps does)", strings.Join(missing, ", "))
	}
	return nil
}

// Up brings up an OVN lab of cfg.Chassis chassis and returns when every
// chassis has registered with the southbound database. Leftovers of a lab
// with the same prefix are removed first; on failure, what was made is.
func Up(ctx context.Context, cfg Config) (l *Lab, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !prefixRe.MatchString(cfg.Prefix) {
		return nil, fmt.Errorf("OVN lab prefix %q: want 1-8 lowercase letters and digits, starting with a letter", cfg.Prefix)
	}
	if cfg.Chassis == 0 {
		cfg.Chassis = 2
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	if cfg.Chassis < 1 || cfg.Chassis > 250 || !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 24 {
		return nil, fmt.Errorf("OVN lab: want 1..250 chassis on an IPv4 subnet of /24 or larger (got %d on %s)", cfg.Chassis, cfg.Subnet)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := Preflight(); err != nil {
		return nil, err
	}
	if err := Down(ctx, cfg.Prefix); err != nil {
		return nil, fmt.Errorf("leftovers of an earlier OVN lab %s: %w", cfg.Prefix, err)
	}
	l = &Lab{Prefix: cfg.Prefix, RunDir: filepath.Join("/run", cfg.Prefix), Subnet: cfg.Subnet, log: cfg.Log}
	defer func() {
		if err != nil {
			l.log.Info("OVN lab up failed, taking down what was made", "err", err)
			_ = Down(context.Background(), l.Prefix)
		}
	}()
	if err := os.MkdirAll(l.RunDir, 0o755); err != nil {
		return nil, err
	}
	if err := l.startCentral(ctx); err != nil {
		return l, fmt.Errorf("OVN central: %w", err)
	}
	if err := l.makeUnderlay(ctx); err != nil {
		return l, fmt.Errorf("OVN underlay: %w", err)
	}
	for i := 1; i <= cfg.Chassis; i++ {
		if err := l.makeChassis(ctx, i); err != nil {
			return l, fmt.Errorf("OVN chassis s%d: %w", i, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = lab.WaitFor(wctx, 50*time.Millisecond, func() error {
		out, err := l.SBCtl(wctx, "--bare", "--columns=name", "list", "Chassis")
		if err != nil {
			return err
		}
		if n := len(strings.Fields(out)); n < len(l.Chassis) {
			return fmt.Errorf("%d of %d chassis registered", n, len(l.Chassis))
		}
		return nil
	})
	if err != nil {
		return l, fmt.Errorf("OVN chassis registration: %w%s", err, l.tails())
	}
	// Servers that talk know each other's MACs; a userspace tunnel whose
	// neighbour is unknown drops the packet and sends an ARP request. Each
	// chassis pings the others, so that Open vSwitch learns them from the
	// replies and no workload's first packet pays for it.
	for _, c := range l.Chassis {
		for _, d := range l.Chassis {
			if c.Name != d.Name {
				if _, err := lab.InNetns(ctx, c.Netns, "ping", "-c", "1", "-W", "2", d.EncapIP.String()); err != nil {
					return l, fmt.Errorf("OVN underlay: %s cannot reach %s: %w", c.Name, d.Name, err)
				}
			}
		}
	}
	return l, nil
}

func (l *Lab) path(f string) string { return filepath.Join(l.RunDir, f) }

// NBDB and SBDB are the central databases' sockets.
func (l *Lab) NBDB() string { return "unix:" + l.path("nb.sock") }
func (l *Lab) SBDB() string { return "unix:" + l.path("sb.sock") }

// NBCtl runs ovn-nbctl against the lab's northbound database.
func (l *Lab) NBCtl(ctx context.Context, args ...string) (string, error) {
	return lab.Run(ctx, "ovn-nbctl", append([]string{"--db=" + l.NBDB()}, args...)...)
}

// SBCtl runs ovn-sbctl against the lab's southbound database.
func (l *Lab) SBCtl(ctx context.Context, args ...string) (string, error) {
	return lab.Run(ctx, "ovn-sbctl", append([]string{"--db=" + l.SBDB()}, args...)...)
}

// VSCtl runs ovs-vsctl against a chassis' Open vSwitch.
func (l *Lab) VSCtl(ctx context.Context, c Chassis, args ...string) (string, error) {
	return lab.Run(ctx, "ovs-vsctl", append([]string{"--db=" + c.DB(), "--timeout=10"}, args...)...)
}

// Find returns the chassis called name.
func (l *Lab) Find(name string) (Chassis, error) {
	for _, c := range l.Chassis {
		if c.Name == name {
			return c, nil
		}
	}
	return Chassis{}, fmt.Errorf("OVN lab has no chassis %q", name)
}

// startCentral runs the northbound and southbound databases and
// ovn-northd in the machine's namespace, on unix sockets only.
func (l *Lab) startCentral(ctx context.Context) error {
	for _, db := range []struct{ name, schema string }{{"nb", nbSchema}, {"sb", sbSchema}} {
		file := l.path(db.name + ".db")
		if _, err := lab.Run(ctx, "ovsdb-tool", "create", file, db.schema); err != nil {
			return err
		}
		if _, err := lab.Run(ctx, "ovsdb-server", file,
			"--remote=punix:"+l.path(db.name+".sock"), "--pidfile="+l.path(db.name+".pid"),
			"--unixctl="+l.path(db.name+".ctl"), "--log-file="+l.path(db.name+".log"), "--detach"); err != nil {
			return err
		}
	}
	if _, err := lab.Run(ctx, "env", "OVN_RUNDIR="+l.RunDir, "ovn-northd",
		"--ovnnb-db="+l.NBDB(), "--ovnsb-db="+l.SBDB(),
		"--pidfile="+l.path("northd.pid"), "--log-file="+l.path("northd.log"), "--detach"); err != nil {
		return err
	}
	l.log.Info("OVN central: northbound, southbound and ovn-northd on unix sockets", "dir", l.RunDir)
	return nil
}

// Underlay names the underlay switch's namespace.
func (l *Lab) Underlay() string { return l.Prefix + "-underlay" }

func (l *Lab) makeUnderlay(ctx context.Context) error {
	ns := l.Underlay()
	for _, s := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", ns, "ip", "link", "add", "sw0", "type", "bridge"},
		{"ip", "netns", "exec", ns, "ip", "link", "set", "sw0", "up"},
	} {
		if _, err := lab.Run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// hostAddr is the n-th host address of p.
func hostAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// makeChassis makes chassis sN: its namespace and uplink to the underlay
// switch (TX checksum offload off on both ends, as NVI's lab does), its
// Open vSwitch, and ovn-controller. The underlay address sits on br-phy, a
// netdev bridge holding the uplink: Open vSwitch's userspace tunnels route
// and resolve through a bridge of its own.
func (l *Lab) makeChassis(ctx context.Context, n int) error {
	c := Chassis{
		Name:    "s" + strconv.Itoa(n),
		EncapIP: hostAddr(l.Subnet, n),
	}
	c.Netns = l.Prefix + "-" + c.Name
	c.Dir = l.path(c.Name)
	l.Chassis = append(l.Chassis, c)
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	peer := l.Prefix + "-" + c.Name // the underlay switch's port
	mtu := strconv.Itoa(UnderlayMTU)
	for _, s := range [][]string{
		{"ip", "netns", "add", c.Netns},
		{"ip", "netns", "exec", c.Netns, "ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", uplink, "netns", c.Netns, "mtu", mtu, "type", "veth", "peer", "name", peer, "netns", l.Underlay(), "mtu", mtu},
		{"ip", "netns", "exec", l.Underlay(), "ip", "link", "set", peer, "master", "sw0", "up"},
		{"ip", "netns", "exec", l.Underlay(), "ethtool", "-K", peer, "tx", "off"},
		{"ip", "netns", "exec", c.Netns, "ethtool", "-K", uplink, "tx", "off"},
		{"ip", "netns", "exec", c.Netns, "ip", "link", "set", uplink, "up"},
	} {
		if _, err := lab.Run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := lab.StartOVS(ctx, c.Netns, c.Dir); err != nil {
		return err
	}
	if _, err := l.VSCtl(ctx, c,
		"add-br", phyBridge, "--", "set", "Bridge", phyBridge, "datapath_type=netdev",
		"--", "add-port", phyBridge, uplink,
		"--", "add-br", intBridge, "--", "set", "Bridge", intBridge, "datapath_type=netdev", "fail-mode=secure",
		"--", "set", "Open_vSwitch", ".",
		"external_ids:system-id="+l.Prefix+"-"+c.Name,
		"external_ids:ovn-remote="+l.SBDB(),
		"external_ids:ovn-encap-type=geneve",
		"external_ids:ovn-encap-ip="+c.EncapIP.String(),
		"external_ids:ovn-bridge="+intBridge,
		"external_ids:ovn-bridge-datapath-type=netdev"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"ip", "addr", "add", netip.PrefixFrom(c.EncapIP, l.Subnet.Bits()).String(), "dev", phyBridge},
		{"ip", "link", "set", phyBridge, "up"},
	} {
		if _, err := lab.InNetns(ctx, c.Netns, s[0], s[1:]...); err != nil {
			return err
		}
	}
	// ovn-controller finds br-int's management socket in OVS_RUNDIR and
	// puts its own control socket in OVN_RUNDIR (23.03 has no --unixctl).
	if _, err := lab.InNetns(ctx, c.Netns, "env", "OVS_RUNDIR="+c.Dir, "OVN_RUNDIR="+c.Dir,
		"ovn-controller", c.DB(),
		"--pidfile="+filepath.Join(c.Dir, "ovn-controller.pid"),
		"--log-file="+filepath.Join(c.Dir, "ovn-controller.log"), "--detach"); err != nil {
		return err
	}
	// The same treatment as NVI's lab servers get: on these shared cores
	// revalidation runs on what forwarding leaves.
	if err := lab.BackgroundRevalidators(c.Dir); err != nil {
		l.log.Info("OVN chassis: revalidators keep their priority", "chassis", c.Name, "err", err)
	}
	l.log.Info("OVN chassis up", "chassis", c.Name, "netns", c.Netns, "encap", c.EncapIP)
	return nil
}

// tails returns the end of the lab's logs, for error messages.
func (l *Lab) tails() string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(l.RunDir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(l.RunDir, "s*", "ovn-controller.log"))
	for _, f := range append(logs, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		fmt.Fprintf(&b, "\n--- %s ---\n%s", f, strings.Join(lines, "\n"))
	}
	return b.String()
}

// killOurs ends the process named in pidfile if it is still one of the
// lab's: after a crash a stale pidfile may name a pid that something else
// has since taken, and each of the lab's daemons names a file under dir on
// its command line.
func killOurs(pidfile, dir string) {
	pid := lab.ReadPidfile(pidfile)
	if pid <= 0 {
		return
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), dir+"/") {
		return
	}
	lab.KillWait(pid, 3*time.Second)
}

// Down takes this lab down.
func (l *Lab) Down(ctx context.Context) error { return Down(ctx, l.Prefix) }

// Down removes everything an OVN lab with prefix made: its processes by
// their pidfiles (ovn-controllers first, so that none re-creates what goes
// next), every namespace named PREFIX-*, and /run/PREFIX. It needs no
// state, so it also cleans up after a crash; running it twice is harmless.
func Down(ctx context.Context, prefix string) error {
	if !prefixRe.MatchString(prefix) {
		return fmt.Errorf("OVN lab prefix %q: want 1-8 lowercase letters and digits, starting with a letter", prefix)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dir := filepath.Join("/run", prefix)
	chassis, _ := filepath.Glob(filepath.Join(dir, "s*"))
	for _, pf := range []string{"ovn-controller.pid", "ovs-vswitchd.pid", "ovsdb-server.pid"} {
		for _, c := range chassis {
			killOurs(filepath.Join(c, pf), dir)
		}
	}
	for _, pf := range []string{"northd.pid", "nb.pid", "sb.pid"} {
		killOurs(filepath.Join(dir, pf), dir)
	}
	var errs []error
	for _, ns := range lab.NetnsList() {
		if strings.HasPrefix(ns, prefix+"-") {
			if err := lab.DeleteNetns(ctx, ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("OVN lab down left things behind: %w", err)
	}
	return nil
}
