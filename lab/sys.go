package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// run executes a command and returns its trimmed output, or an error that
// carries what the command printed: lab failures are read by people.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return strings.TrimSpace(out.String()), nil
}

// inNetns runs a command inside a network namespace.
func inNetns(ctx context.Context, ns string, name string, args ...string) (string, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// requiredTools are checked before the lab touches anything, with the
// Debian package that provides each.
var requiredTools = []struct{ bin, pkg string }{
	{"ovsdb-tool", "openvswitch-switch"},
	{"ovsdb-server", "openvswitch-switch"},
	{"ovs-vswitchd", "openvswitch-switch"},
	{"ovs-vsctl", "openvswitch-switch"},
	{"ip", "iproute2"},
	{"ethtool", "ethtool"},
}

// Preflight explains what stops a lab from running here: not root, or tools
// missing.
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab must run as root: it creates network namespaces and runs Open vSwitch")
	}
	var missing, pkgs []string
	seen := map[string]bool{}
	for _, t := range requiredTools {
		if _, err := exec.LookPath(t.bin); err != nil {
			missing = append(missing, t.bin)
			if !seen[t.pkg] {
				pkgs = append(pkgs, t.pkg)
				seen[t.pkg] = true
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (install with: apt-get install %s)", strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return nil
}

// netnsExists reports whether a named network namespace exists.
func netnsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

// netnsList lists named network namespaces.
func netnsList() []string {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// deleteNetns kills every process left in a namespace and removes it. A
// namespace that is already gone is not an error.
func deleteNetns(ctx context.Context, name string) error {
	if !netnsExists(name) {
		return nil
	}
	if out, err := run(ctx, "ip", "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil {
				killWait(pid, 2*time.Second)
			}
		}
	}
	_, err := run(ctx, "ip", "netns", "delete", name)
	if err != nil && !netnsExists(name) {
		return nil
	}
	return err
}

// alive reports whether pid names a live, non-zombie process.
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// killWait sends SIGTERM, then SIGKILL if the process outlives grace.
func killWait(pid int, grace time.Duration) {
	if !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 50 && alive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// readPidfile returns the pid in path, 0 if there is none.
func readPidfile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
