package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/internal/orchtest"
)

// TestOrchestrators: one tenant network, four orchestrators that know
// nothing of each other — a Podman container on s1 (CNI), a Docker
// container on s2 (the libnetwork plugin), a VM's tap on s3 (plugged as
// libvirt does) and a plain lab workload — and every pair talks, while the
// underlay carries only server addresses.
func TestOrchestrators(t *testing.T) {
	if err := orchtest.StaticBusybox(); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, 3)
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	type member struct {
		name, ip string
		ping     func(ip string) orchtest.Result
	}
	var ms []member

	// Podman on s1, through nvi-cni.
	cniNet := "nvi-" + l.Prefix
	conf := fmt.Sprintf(`{"type":"nvi-cni","tenant":"acme","network":"web","socket":%q,"bridgeNetns":%q}`,
		l.Socket("s1"), l.server("s1"))
	pm := orchtest.NewPodman(t, bin, l.Prefix, map[string]string{cniNet: conf})
	podCtr := l.Prefix + "-pod"
	if r := pm.Run(2*time.Minute, append(orchtest.RunArgs(cniNet), "-d", "--name", podCtr, pm.Image, "sleep", "600")...); r.Code != 0 {
		t.Fatalf("podman run: %s", r)
	}
	r := pm.Run(time.Minute, "inspect", "--format", "{{json .NetworkSettings.Networks}}", podCtr)
	var podNets map[string]struct{ IPAddress string }
	if r.Code != 0 || json.Unmarshal([]byte(r.Out), &podNets) != nil || podNets[cniNet].IPAddress == "" {
		t.Fatalf("podman inspect: %s", r)
	}
	ms = append(ms, member{"podman container on s1", podNets[cniNet].IPAddress, func(ip string) orchtest.Result {
		return pm.Run(time.Minute, "exec", podCtr, "ping", "-c", "2", "-W", "2", ip)
	}})

	// Docker on s2, through nvi-docker.
	dname := l.Prefix + "nvi" // the plugin is named after its socket
	sock := "/run/docker/plugins/" + dname + ".sock"
	cred := filepath.Join(t.TempDir(), "docker-s2")
	l.must("ca", "issue-plugin", "docker-s2", "--out", cred)
	l.start("", filepath.Join(bin, "nvi-docker"), "--socket", sock,
		"--agent", filepath.Join(l.runDir(), "s2", "nvid.sock"),
		"--etcd", "unixs://"+filepath.Join(l.runDir(), "etcd.sock"), "--etcd-identity", cred, "--bridge-netns", l.server("s2"))
	eventually(t, 10*time.Second, "nvi-docker listening", func() error {
		_, err := os.Stat(sock)
		return err
	})
	image := "nvi-busybox:" + l.Prefix
	orchtest.DockerImage(t, image)
	dnet, dctr := l.Prefix+"-web", l.Prefix+"-dock"
	docker := func(args ...string) orchtest.Result { return orchtest.Run(2*time.Minute, nil, nil, "docker", args...) }
	t.Cleanup(func() {
		docker("rm", "-f", dctr)
		docker("network", "rm", dnet)
	})
	if r := docker("network", "create", "-d", dname, "--ipam-driver", dname, "-o", "nvi.network=acme/web", "--ipam-opt", "nvi.network=acme/web", dnet); r.Code != 0 {
		t.Fatalf("docker network create: %s", r)
	}
	if r := docker("run", "-d", "--name", dctr, "--network", dnet, image, "sleep", "600"); r.Code != 0 {
		t.Fatalf("docker run: %s", r)
	}
	r = docker("inspect", "--format", "{{(index .NetworkSettings.Networks \""+dnet+"\").IPAddress}}", dctr)
	if r.Code != 0 || strings.TrimSpace(r.Out) == "" {
		t.Fatalf("docker inspect: %s", r)
	}
	ms = append(ms, member{"docker container on s2", strings.TrimSpace(r.Out), func(ip string) orchtest.Result {
		return docker("exec", dctr, "ping", "-c", "2", "-W", "2", ip)
	}})

	// A VM on s3, its tap plugged as libvirt plugs one.
	l.must("lab", "vm", "add", l.Prefix+"-vm", "--server", "s3", "--net", "acme/web")
	vmIP, _ := l.endpoint(t, "acme", l.Prefix+"-vm")
	ms = append(ms, member{"VM on s3", vmIP, func(ip string) orchtest.Result {
		return orchtest.Run(time.Minute, nil, nil, "ip", "netns", "exec", l.Prefix+"-vm", "ping", "-c", "2", "-W", "2", ip)
	}})

	// A plain lab workload on s1.
	w := l.workload(l.Prefix+"-w", "s1", "acme/web")
	ms = append(ms, member{"lab workload on s1", w.IP, func(ip string) orchtest.Result {
		return orchtest.Run(time.Minute, nil, nil, "ip", "netns", "exec", w.Name, "ping", "-c", "2", "-W", "2", ip)
	}})

	capt := l.capture()
	for _, from := range ms {
		for _, to := range ms {
			if from.name == to.name {
				continue
			}
			if r := from.ping(to.ip); r.Code != 0 {
				t.Errorf("%s (%s) -> %s (%s): %s", from.name, from.ip, to.name, to.ip, r)
			}
		}
	}
	pkts, err := readPcap(capt.stop())
	if err != nil {
		t.Fatal(err)
	}
	underlay := netip.MustParsePrefix("198.18.0.0/24")
	for _, p := range pkts {
		if !underlay.Contains(p.Src) || !underlay.Contains(p.Dst) {
			t.Fatalf("a packet on the underlay names %s -> %s", p.Src, p.Dst)
		}
	}
	t.Logf("%d pairs talked; %d underlay packets, all between server addresses", len(ms)*(len(ms)-1), len(pkts))
}
