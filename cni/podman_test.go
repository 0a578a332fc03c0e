package cni

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"nvi/internal/orchtest"
)

// TestPodman runs real Podman containers on an nvi-cni network bound to lab
// server s1: Debian's Podman 4.3 with its CNI backend, a configuration of
// its own (CONTAINERS_CONF, --root, --runroot, --tmpdir,
// --network-config-dir in a temporary directory) so the machine's Podman
// setup is untouched, and an image imported from a busybox root filesystem
// (no registry is reachable).
func TestPodman(t *testing.T) {
	requireE2E(t, "ip", "ovs-vswitchd", "ovs-vsctl", "podman", "tar")
	if err := orchtest.StaticBusybox(); err != nil {
		requireE2E(t, "a static /bin/busybox") // fails or skips: busybox-static provides it
	}
	start := time.Now()
	bin := binaries(t)
	l := startLab(t, bin)
	netName := "nvi-" + l.Prefix
	forgetCNICache(t, netName) // Podman's CNI library caches results there too
	plugin := l.conf(map[string]any{"cniVersion": nil, "name": nil, "capabilities": map[string]bool{"ips": true}})
	pm := orchtest.NewPodman(t, bin, l.Prefix, map[string]string{netName: string(plugin)})
	podman := func(timeout time.Duration, _ []byte, args ...string) orchtest.Result { return pm.Run(timeout, args...) }
	image := pm.Image
	if r := podman(time.Minute, nil, "network", "ls", "--format", "{{.Name}} {{.Driver}}"); r.Code != 0 || !strings.Contains(r.Out, netName+" nvi-cni") {
		t.Fatalf("podman network ls does not show %s: %s", netName, r)
	}
	t.Logf("lab, image and network ready in %v", time.Since(start).Round(time.Millisecond))
	runArgs := orchtest.RunArgs(netName)

	// A container pings the workload on s2 and ends.
	r := podman(2*time.Minute, nil, append(runArgs, "--rm", image, "sh", "-c", "ip -4 -o addr show dev eth0 && ping -c 3 -W 2 "+peerIP)...)
	if r.Code != 0 || !strings.Contains(r.Out, "inet 10.1.0.") || !strings.Contains(r.Out, "bytes from "+peerIP) {
		t.Fatalf("podman run ping: %s", r)
	}
	l.clean("after the container ended")

	// A long-running one with an address asked for (--ip: the "ips"
	// capability) is an NVI endpoint while it lives, and gone after rm.
	name := l.Prefix + "-ctr"
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
