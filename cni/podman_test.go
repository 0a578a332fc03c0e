package cni

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPodman runs real Podman containers on an nvi-cni network bound to lab
// server s1: Debian's Podman 4.3 with its CNI backend, a configuration of
// its own (CONTAINERS_CONF, --root, --runroot, --tmpdir,
// --network-config-dir in a temporary directory) so the machine's Podman
// setup is untouched, and an image imported from a busybox root filesystem
// (no registry is reachable).
func TestPodman(t *testing.T) {
	requireE2E(t, "ip", "ovs-vswitchd", "ovs-vsctl", "podman", "tar")
	if !staticBusybox() {
		requireE2E(t, "a static /bin/busybox") // fails or skips: busybox-static provides it
	}
	start := time.Now()
	bin := binaries(t)
	l := startLab(t, bin)
	dir := t.TempDir()
	_, cacheErr := os.Stat("/var/lib/containers")
	_, runcErr := os.Stat("/run/runc")

	// The plugin directory, the network, Podman's configuration.
	plugins, netDir := filepath.Join(dir, "plugins"), filepath.Join(dir, "net.d")
	for _, d := range []string{plugins, netDir, filepath.Join(dir, "rootfs", "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(bin, "nvi-cni"), filepath.Join(plugins, "nvi-cni")); err != nil {
		t.Fatal(err)
	}
	netName := "nvi-" + l.prefix
	forgetCNICache(t, netName) // Podman's CNI library caches results there too
	plugin := l.conf(map[string]any{"cniVersion": nil, "name": nil, "capabilities": map[string]bool{"ips": true}})
	// Podman 4.3's CNI library speaks specification versions up to 1.0.0.
	list := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[%s]}`, netName, plugin)
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(netDir, netName+".conflist"), list)
	write(filepath.Join(dir, "containers.conf"), fmt.Sprintf(`[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
`, plugins, netDir, filepath.Join(dir, "events.log")))
	global := []string{
		"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"),
		"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs", "--network-config-dir", netDir,
	}
	podman := func(timeout time.Duration, stdin []byte, args ...string) res {
		return run(timeout, []string{"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf")}, stdin, "podman", append(global, args...)...)
	}
	t.Cleanup(func() {
		if r := podman(2*time.Minute, nil, "rm", "--all", "--force", "--time", "0"); r.Code != 0 {
			t.Errorf("podman rm: %s", r)
		}
		if r := podman(2*time.Minute, nil, "rmi", "--all", "--force"); r.Code != 0 {
			t.Errorf("podman rmi: %s", r)
		}
		if os.IsNotExist(cacheErr) { // the image copy's blob-info cache, made by this test
			os.RemoveAll("/var/lib/containers")
		}
		if os.IsNotExist(runcErr) {
			os.Remove("/run/runc") // runc's state directory, if empty
		}
	})

	// A busybox root filesystem, imported as an image.
	rootfs := filepath.Join(dir, "rootfs")
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(rootfs, "bin", "busybox"), string(bb))
	if err := os.Chmod(filepath.Join(rootfs, "bin", "busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "ping", "ip", "sleep", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	tarball := run(time.Minute, nil, nil, "tar", "-C", rootfs, "-cf", filepath.Join(dir, "rootfs.tar"), ".")
	if tarball.Code != 0 {
		t.Fatalf("tar: %s", tarball)
	}
	image := "localhost/nvi-busybox:" + l.prefix
	if r := podman(2*time.Minute, nil, "import", filepath.Join(dir, "rootfs.tar"), image); r.Code != 0 {
		t.Fatalf("podman import: %s", r)
	}
	if r := podman(time.Minute, nil, "network", "ls", "--format", "{{.Name}} {{.Driver}}"); r.Code != 0 || !strings.Contains(r.Out, netName+" nvi-cni") {
		t.Fatalf("podman network ls does not show %s: %s", netName, r)
	}
	t.Logf("lab, image and network ready in %v", time.Since(start).Round(time.Millisecond))

	// Raising rlimits needs CAP_SYS_RESOURCE, which a CI container may lack.
	runArgs := []string{"run", "--network", netName, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

	// A container pings the workload on s2 and ends.
	r := podman(2*time.Minute, nil, append(runArgs, "--rm", image, "sh", "-c", "ip -4 -o addr show dev eth0 && ping -c 3 -W 2 "+peerIP)...)
	if r.Code != 0 || !strings.Contains(r.Out, "inet 10.1.0.") || !strings.Contains(r.Out, "bytes from "+peerIP) {
		t.Fatalf("podman run ping: %s", r)
	}
	l.clean("after the container ended")

	// A long-running one with an address asked for (--ip: the "ips"
	// capability) is an NVI endpoint while it lives, and gone after rm.
	name := l.prefix + "-ctr"
	r = podman(2*time.Minute, nil, append(runArgs, "-d", "--name", name, "--ip", "10.1.0.77", image, "sleep", "300")...)
	if r.Code != 0 {
		t.Fatalf("podman run -d: %s", r)
	}
	id := strings.TrimSpace(r.Out)
	ep, ok := l.endpoint(id, "eth0")
	if !ok || !ep.Bound || ep.IP.String() != "10.1.0.77" || !strings.HasPrefix(ep.IfaceID, "cni:"+netName+":") {
		t.Fatalf("the container's endpoint: %+v (found %v)", ep, ok)
	}
	if r := podman(time.Minute, nil, "exec", name, "ping", "-c", "2", "-W", "2", peerIP); r.Code != 0 {
		t.Fatalf("podman exec ping: %s", r)
	}
	r = podman(time.Minute, nil, "inspect", "--format", "{{json .NetworkSettings.Networks}}", name)
	var nets map[string]struct{ IPAddress, Gateway, MacAddress string }
	if r.Code != 0 || json.Unmarshal([]byte(r.Out), &nets) != nil || nets[netName].IPAddress != "10.1.0.77" ||
		nets[netName].Gateway != "10.1.0.1" || nets[netName].MacAddress != ep.MAC {
		t.Fatalf("podman inspect: %s", r)
	}
	if r := podman(time.Minute, nil, "rm", "--force", "--time", "0", name); r.Code != 0 {
		t.Fatalf("podman rm: %s", r)
	}
	if _, ok := l.endpoint(id, "eth0"); ok {
		t.Fatal("the endpoint outlived its container")
	}
	l.clean("after podman rm")
	if st, err := l.agent.Status(context.Background()); err != nil || !st.Ready {
		t.Fatalf("agent after podman: %+v, %v", st, err)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// staticBusybox says whether /bin/busybox runs without a dynamic loader, as
// it must alone in a container.
func staticBusybox() bool {
	f, err := elf.Open("/bin/busybox")
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}
