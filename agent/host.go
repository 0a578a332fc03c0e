package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"nvi/directory"
)

// configureDataIP puts the server's data address on the bridge's local port,
// where the host's own traffic enters and leaves the bridge, and routes the
// host through the underlay router when there is one.
func configureDataIP(ctx context.Context, dev string, addr netip.Prefix, gateway netip.Addr) error {
	steps := [][]string{
		{"addr", "replace", addr.String(), "dev", dev},
		{"link", "set", "dev", dev, "up"},
	}
	if gateway.IsValid() {
		steps = append(steps, []string{"route", "replace", "default", "via", gateway.String(), "dev", dev})
	}
	for _, args := range steps {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// reserveKeys keeps the host's own connections out of the key range: when
// the host's ephemeral ports reach into it, their replies would be taken
// for session traffic (and dropped as stray), so the keys are added to
// net.ipv4.ip_local_reserved_ports. If that cannot be done, the agent does
// not start.
func (a *Agent) reserveKeys() error {
	const rangeFile, reservedFile = "/proc/sys/net/ipv4/ip_local_port_range", "/proc/sys/net/ipv4/ip_local_reserved_ports"
	b, err := os.ReadFile(rangeFile)
	if err != nil {
		return nil // not Linux, or no procfs: nothing to protect here
	}
	var lo, hi int
	if _, err := fmt.Sscanf(string(b), "%d %d", &lo, &hi); err != nil {
		return nil
	}
	keys := a.cfg.KeyRange
	if hi < int(keys.First()) || lo > int(keys.Last()) {
		return nil
	}
	cur, err := os.ReadFile(reservedFile)
	if err != nil {
		return fmt.Errorf("the host's ephemeral ports %d-%d overlap the session keys %s and %s is unreadable: %w", lo, hi, keys, reservedFile, err)
	}
	next, changed := withReserved(strings.TrimSpace(string(cur)), keys.String())
	if !changed {
		return nil
	}
	if err := os.WriteFile(reservedFile, []byte(next), 0o644); err != nil {
		return fmt.Errorf("the host's ephemeral ports %d-%d overlap the session keys %s, and reserving them failed: %w (set net.ipv4.ip_local_reserved_ports=%s, or narrow net.ipv4.ip_local_port_range)", lo, hi, keys, err, keys)
	}
	a.log.Info("reserved the session keys from the host's ephemeral ports", "ephemeral", fmt.Sprintf("%d-%d", lo, hi), "reserved", next)
	return nil
}

// withReserved adds the port range r ("A-B") to a ip_local_reserved_ports
// list ("", "22,8000-8100"), unless it is there already.
func withReserved(cur, r string) (string, bool) {
	for _, item := range strings.Split(cur, ",") {
		if strings.TrimSpace(item) == r {
			return cur, false
		}
	}
	if cur == "" {
		return r, true
	}
	return cur + "," + r, true
}

// hostReserved are the host ports on the data address that port maps may not
// take besides the keys, the NAT range and the agent's and directory's
// ports: SSH, and the host's ephemeral range, whose replies a port map
// would otherwise steal from the host's own connections.
func hostReserved() []directory.PortRange {
	out := []directory.PortRange{{First: 22, Last: 22}}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return out
	}
	var lo, hi uint16
	if _, err := fmt.Sscanf(string(b), "%d %d", &lo, &hi); err == nil && lo > 0 && lo <= hi {
		out = append(out, directory.PortRange{First: lo, Last: hi})
	}
	return out
}

// nextHop is the MAC that frames toward a peer server carry: the peer's own
// on a shared segment, else the underlay router's, as the host's neighbour
// table knows it.
func (a *Agent) nextHop(peer directory.Server) (net.HardwareAddr, error) {
	if a.cfg.DataIP.Contains(peer.DataIP) {
		mac, err := net.ParseMAC(peer.DataMAC)
		if err != nil {
			return nil, fmt.Errorf("server %s has a bad data MAC %q", peer.Name, peer.DataMAC)
		}
		return mac, nil
	}
	if !a.cfg.Gateway.IsValid() {
		return nil, fmt.Errorf("server %s (%s) is outside %s and no --underlay-gateway is set", peer.Name, peer.DataIP, a.cfg.DataIP)
	}
	mac, err := neighbourMAC(a.cfg.Gateway)
	if err != nil {
		return nil, fmt.Errorf("underlay gateway %s: %w", a.cfg.Gateway, err)
	}
	return mac, nil
}

// resolveNeighbour finds a neighbour's MAC, making the kernel resolve it if
// it has not yet (a datagram to the discard port does).
func resolveNeighbour(ctx context.Context, ip netip.Addr) (net.HardwareAddr, error) {
	var err error
	for i := 0; i < 30; i++ {
		var mac net.HardwareAddr
		if mac, err = neighbourMAC(ip); err == nil {
			return mac, nil
		}
		if c, derr := net.Dial("udp", netip.AddrPortFrom(ip, 9).String()); derr == nil {
			_, _ = c.Write([]byte{0})
			c.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, err
}

// neighbourMAC reads the kernel's ARP table.
func neighbourMAC(ip netip.Addr) (net.HardwareAddr, error) {
	f, err := os.Open("/proc/net/arp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 4 && fs[0] == ip.String() && fs[2] != "0x0" {
			return net.ParseMAC(fs[3])
		}
	}
	return nil, fmt.Errorf("no ARP entry (ping it once so the kernel resolves it)")
}
