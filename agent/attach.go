package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"nvi/api"
)

// ifaceFacts is what the host says about an interface that a caller of the
// local API wants plugged into the bridge as a workload's port.
type ifaceFacts struct {
	Name     string
	Exists   bool
	Loopback bool
	Addrs    int    // IP addresses it has in the agent's (the host's) namespace, link-local ones aside
	Device   bool   // backed by a device: /sys/class/net/NAME/device exists
	Driver   string // the kernel driver, as ethtool names it: "veth", "tun", ...
	// OVSLabel is the iface-id of the OVS interface of that name, and
	// InOVS whether there is one (on any bridge).
	InOVS    bool
	OVSLabel string
}

// attachDrivers are the kinds of interface an orchestrator creates for a
// workload: the host end of a veth pair (containers) and taps (VMs).
var attachDrivers = map[string]bool{"veth": true, "tun": true}

// attachable decides whether the interface f may become the port of the
// endpoint labelled ifaceID: only an interface an orchestrator made for a
// workload, never one the host itself uses (audit M5). Refusals say why,
// so that a misconfigured plugin can be fixed.
func attachable(f ifaceFacts, uplink, bridge, ifaceID string) error {
	switch {
	case !validIfaceName(f.Name):
		return api.Errorf(api.CodeInvalid, "%q is not an interface name", f.Name)
	case f.Name == uplink:
		return api.Errorf(api.CodeDenied, "interface %s is the server's uplink, not a workload's", f.Name)
	case f.Name == bridge:
		return api.Errorf(api.CodeDenied, "interface %s is the bridge's own port, not a workload's", f.Name)
	case !f.Exists:
		return api.Errorf(api.CodeInvalid, "there is no interface %s in the agent's network namespace", f.Name)
	case f.Loopback:
		return api.Errorf(api.CodeDenied, "interface %s is a loopback interface", f.Name)
	case f.Device:
		return api.Errorf(api.CodeDenied, "interface %s is a physical NIC of this server; attach the host end of a veth pair or a tap", f.Name)
	case f.Addrs > 0:
		return api.Errorf(api.CodeDenied, "interface %s has IP addresses on this server, so the host uses it; a workload's host-side interface has none", f.Name)
	case f.Driver == "":
		return api.Errorf(api.CodeDenied, "interface %s is of a kind that has no driver name; only veth and tap interfaces can be attached", f.Name)
	case !attachDrivers[f.Driver]:
		return api.Errorf(api.CodeDenied, "interface %s is a %q interface; only veth and tap interfaces can be attached", f.Name, f.Driver)
	case f.InOVS && f.OVSLabel != ifaceID:
		return api.Errorf(api.CodeDenied, "interface %s is already an Open vSwitch port (iface-id %q), not endpoint %q's", f.Name, f.OVSLabel, ifaceID)
	}
	return nil
}

// validIfaceName accepts what Linux accepts as an interface name: 1-15
// bytes, no slash, no white space, not "." or "..".
func validIfaceName(s string) bool {
	return s != "" && len(s) < 16 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n")
}

// ifaceFactsOf gathers the facts about interface name from the kernel and
// OVSDB.
func (a *Agent) ifaceFactsOf(ctx context.Context, name string) (ifaceFacts, error) {
	f, err := kernelIfaceFacts(name)
	if err != nil || !f.Exists {
		return f, err
	}
	ovs := a.ovsdb()
	if ovs == nil {
		return f, errors.New("OVSDB is not connected yet")
	}
	ifaces, err := ovs.Interfaces(ctx)
	if err != nil {
		return f, err
	}
	for _, i := range ifaces {
		if i.Name == name {
			f.InOVS, f.OVSLabel = true, i.ExternalIDs[ifaceIDKey]
		}
	}
	return f, nil
}

// kernelIfaceFacts gathers what the kernel says about interface name.
func kernelIfaceFacts(name string) (ifaceFacts, error) {
	f := ifaceFacts{Name: name}
	if !validIfaceName(name) {
		return f, nil
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return f, nil // Exists stays false
	}
	f.Exists = true
	f.Loopback = ifi.Flags&net.FlagLoopback != 0
	addrs, err := ifi.Addrs()
	if err != nil {
		return f, fmt.Errorf("reading the addresses of %s: %w", name, err)
	}
	for _, ad := range addrs {
		// Every interface that is up gets an IPv6 link-local address;
		// only addresses someone configured say the host uses it.
		if ipn, ok := ad.(*net.IPNet); ok && ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		f.Addrs++
	}
	if _, err := os.Stat("/sys/class/net/" + name + "/device"); err == nil {
		f.Device = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return f, fmt.Errorf("checking whether %s is a device: %w", name, err)
	}
	// Interfaces without a driver to name (loopback) keep "", which no
	// attachable kind has.
	f.Driver, _ = ifaceDriver(name)
	return f, nil
}

// checkAttachable refuses interfaces attachable refuses.
func (a *Agent) checkAttachable(ctx context.Context, name, ifaceID string) error {
	f, err := a.ifaceFactsOf(ctx, name)
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "cannot check interface %s: %v", name, err)
	}
	if err := attachable(f, a.cfg.Uplink, a.cfg.Bridge, ifaceID); err != nil {
		a.log.Warn("attach refused", "iface", name, "iface_id", ifaceID, "reason", err)
		return err
	}
	return nil
}
