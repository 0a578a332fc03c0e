package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Links makes and removes a container's veth pair.
type Links interface {
	// AddVeth creates the pair: ctr in the plugin's namespace, with mac, for
	// Docker to move into the container; host in the bridge's namespace,
	// up. Both ends have TX checksum offload off (Open vSwitch's userspace
	// datapath does not complete checksums). On failure nothing is left.
	AddVeth(ctx context.Context, ctr, host, mac string) error
	// DeleteVeth removes whichever end of the pair still exists (deleting
	// one end of a veth deletes both); none left is not an error.
	DeleteVeth(ctx context.Context, ctr, host string) error
}

// IPLinks does it with iproute2 and ethtool.
type IPLinks struct {
	// BridgeNetns is the named network namespace of the bridge; "" is the
	// plugin's own.
	BridgeNetns string
}

func (l IPLinks) inBridge(args ...string) []string {
	if l.BridgeNetns == "" {
		return args
	}
	return append([]string{"ip", "netns", "exec", l.BridgeNetns}, args...)
}

// AddVeth implements Links.
func (l IPLinks) AddVeth(ctx context.Context, ctr, host, mac string) (err error) {
	add := []string{"ip", "link", "add", ctr, "address", mac, "type", "veth", "peer", "name", host}
	if l.BridgeNetns != "" {
		add = append(add, "netns", l.BridgeNetns)
	}
	if err := run(ctx, add...); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = run(context.WithoutCancel(ctx), "ip", "link", "del", ctr)
		}
	}()
	for _, step := range [][]string{
		{"ethtool", "-K", ctr, "tx", "off"},
		l.inBridge("ethtool", "-K", host, "tx", "off"),
		l.inBridge("ip", "link", "set", host, "up"),
	} {
		if err := run(ctx, step...); err != nil {
			return err
		}
	}
	return nil
}

// DeleteVeth implements Links.
func (l IPLinks) DeleteVeth(ctx context.Context, ctr, host string) error {
	for _, cmd := range [][]string{
		{"ip", "link", "del", ctr},
		l.inBridge("ip", "link", "del", host),
	} {
		if err := run(ctx, cmd...); err != nil && !errors.Is(err, errNoDevice) {
			return err
		}
	}
	return nil
}

var errNoDevice = errors.New("no such device")

// run runs a command; its error carries the command line and its output.
func run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if strings.Contains(msg, "Cannot find device") || strings.Contains(msg, "does not exist") {
			return fmt.Errorf("%s: %s: %w", strings.Join(args, " "), msg, errNoDevice)
		}
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return nil
}
