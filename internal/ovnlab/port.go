package ovnlab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"nvi/lab"
)

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// AddSwitch makes logical switch name for the workloads of network cidr,
// stateful as a network policy makes an ovn-kubernetes namespace: its ports
// take IP traffic from the network only (default deny), and what they
// answer goes back (allow-related). Any allow-related ACL sends every
// packet of the switch through conntrack, as NVI's sessions go through it.
func (l *Lab) AddSwitch(ctx context.Context, name string, cidr netip.Prefix) error {
	_, err := l.NBCtl(ctx, "ls-add", name,
		"--", "acl-add", name, "to-lport", "900", "ip", "drop",
		"--", "acl-add", name, "to-lport", "1000", "ip4.src == "+cidr.Masked().String(), "allow-related")
	return err
}

// Port is a workload of the OVN lab: a logical switch port and the network
// namespace, PREFIX-NAME, whose eth0 it carries.
type Port struct {
	Name    string       // the logical switch port: 1-12 lowercase letters and digits
	Switch  string       // its logical switch
	Chassis string       // the chassis it is bound on
	Addr    netip.Prefix // the workload's address, with its network's length
	MAC     string       // default PodMAC(Addr)
	MTU     int          // default WorkloadMTU(UnderlayMTU), as ovn-kubernetes sets it
}

var portRe = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)

// PodMAC is the MAC ovn-kubernetes derives from a pod's IPv4 address:
// 0a:58 and the address's four bytes.
func PodMAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// Netns is the namespace of the workload behind port name.
func (l *Lab) Netns(name string) string { return l.Prefix + "-" + name }

// hostIface is the chassis' end of a port's veth.
func hostIface(name string) string { return "ov-" + name }

func (p *Port) fill() error {
	if !portRe.MatchString(p.Name) {
		return fmt.Errorf("OVN port name %q: want 1-12 lowercase letters and digits, starting with a letter", p.Name)
	}
	if !p.Addr.IsValid() || !p.Addr.Addr().Is4() {
		return fmt.Errorf("OVN port %s: want an IPv4 address with its prefix length, got %v", p.Name, p.Addr)
	}
	if p.MAC == "" {
		p.MAC = PodMAC(p.Addr.Addr())
	}
	if p.MTU == 0 {
		p.MTU = WorkloadMTU(UnderlayMTU)
	}
	return nil
}

// Plumb makes a port's workload: its namespace and veth, the host end in
// the chassis' namespace, not yet in OVN. What a container runtime makes
// before the CNI plugin binds the port.
func (l *Lab) Plumb(ctx context.Context, p Port) error {
	if err := p.fill(); err != nil {
		return err
	}
	c, err := l.Find(p.Chassis)
	if err != nil {
		return err
	}
	return lab.PlumbGuest(ctx, lab.Guest{
		Netns: l.Netns(p.Name), HostNetns: c.Netns, HostIface: hostIface(p.Name),
		MAC: p.MAC, Addr: p.Addr, MTU: p.MTU,
	})
}

// Bind creates a plumbed port's logical switch port and plugs its veth into
// br-int, the way ovn-kubernetes binds a pod: the port's addresses and port
// security "MAC IP", its iface-id-ver and requested chassis; on the OVS
// side the iface-id and the rest of the labels ovn-kubernetes sets. It
// returns without waiting for the binding (see WaitUp).
func (l *Lab) Bind(ctx context.Context, p Port) error {
	if err := p.fill(); err != nil {
		return err
	}
	c, err := l.Find(p.Chassis)
	if err != nil {
		return err
	}
	mi := p.MAC + " " + p.Addr.Addr().String()
	ver := l.Netns(p.Name) // stands for the pod's UID
	if _, err := l.NBCtl(ctx, "lsp-add", p.Switch, p.Name,
		"--", "lsp-set-addresses", p.Name, mi,
		"--", "lsp-set-port-security", p.Name, mi,
		"--", "lsp-set-options", p.Name, "requested-chassis="+l.Prefix+"-"+c.Name, "iface-id-ver="+ver); err != nil {
		return err
	}
	ifc := hostIface(p.Name)
	_, err = l.VSCtl(ctx, c, "add-port", intBridge, ifc, "--", "set", "Interface", ifc,
		"external_ids:attached_mac="+p.MAC,
		"external_ids:iface-id="+p.Name,
		"external_ids:iface-id-ver="+ver,
		"external_ids:ip_addresses="+p.Addr.String(),
		"external_ids:sandbox="+l.Netns(p.Name),
		"other_config:transient=true")
	return err
}

// WaitUp returns once the chassis has bound the port and OVN says it is up.
func (l *Lab) WaitUp(ctx context.Context, name string, timeout time.Duration) error {
	_, err := l.NBCtl(ctx, "--timeout="+strconv.Itoa(int(timeout.Seconds()+0.5)), "wait-until", "Logical_Switch_Port", name, "up=true")
	if err != nil {
		return fmt.Errorf("OVN port %s did not come up: %w%s", name, err, l.tails())
	}
	return nil
}

// AddPort plumbs and binds a port and waits until it is up.
func (l *Lab) AddPort(ctx context.Context, p Port) error {
	if err := l.Plumb(ctx, p); err != nil {
		return err
	}
	if err := l.Bind(ctx, p); err != nil {
		return err
	}
	return l.WaitUp(ctx, p.Name, 30*time.Second)
}

// Flows counts the OpenFlow flows in a chassis' br-int.
func (l *Lab) Flows(ctx context.Context, chassis string) (int, error) {
	c, err := l.Find(chassis)
	if err != nil {
		return 0, err
	}
	out, err := lab.Run(ctx, "ovs-ofctl", "-O", "OpenFlow13", "dump-flows", c.Bridge())
	if err != nil {
		return 0, err
	}
	return CountFlows(out), nil
}

// CountFlows counts the flows in what "ovs-ofctl dump-flows" printed: one
// line each with its actions, beside the reply's header lines.
func CountFlows(dump string) int {
	n := 0
	for _, line := range strings.Split(dump, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "OFPST_") || strings.HasPrefix(line, "NXST_") {
			continue
		}
		if strings.Contains(line, "actions=") {
			n++
		}
	}
	return n
}
