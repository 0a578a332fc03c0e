package docker

import (
	"bytes"
	"context"

	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/api"
	"nvi/directory"
	"nvi/internal/labtest"
	"nvi/internal/orchtest"
	"nvi/lab"
	"nvi/pki"
)

// testImage is the image the end-to-end test imports from busybox-static
// (no registry is reachable) and removes at the end.
const testImage = "nvi-busybox:test"

// requireE2E skips the test only when it is not root and NVI_REQUIRE_E2E is
// unset; anything else that is missing is a failure.
func requireE2E(t *testing.T) {
	t.Helper()
	labtest.RequireE2E(t, "docker")
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		t.Fatalf("the Docker engine does not answer: %v: %s", err, out)
	}
	if err := orchtest.StaticBusybox(); err != nil {
		t.Fatalf("needs a static /bin/busybox for the test image: %v", err)
	}
}

type cmdResult struct {
	out, err string
	code     int
}

func (r cmdResult) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.err)
}

func command(timeout time.Duration, name string, args ...string) cmdResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cmdResult{out: strings.TrimSpace(out.String()), err: strings.TrimSpace(errb.String())}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code, r.err = -1, r.err+err.Error()
	}
	return r
}

func dockerCmd(args ...string) cmdResult { return command(2*time.Minute, "docker", args...) }

func mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	r := dockerCmd(args...)
	if r.code != 0 {
		t.Fatalf("docker %s: %s", strings.Join(args, " "), r)
	}
	return r.out
}

// dockerFails runs a docker command that must fail and returns its error
// output.
func dockerFails(t *testing.T, args ...string) string {
	t.Helper()
	r := dockerCmd(args...)
	if r.code == 0 {
		t.Fatalf("docker %s succeeded, want an error: %s", strings.Join(args, " "), r)
	}
	return r.err
}

// plugin is a running nvi-docker.
type plugin struct {
	t          *testing.T
	bin, name  string
	args       []string
	cmd        *exec.Cmd
	waited     chan error
	log        string
	transcript string
}

func (p *plugin) socket() string { return "/run/docker/plugins/" + p.name + ".sock" }

func (p *plugin) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(filepath.Join(p.bin, "nvi-docker"), append([]string{"--socket", p.socket(), "--record", p.transcript, "--log-level", "debug"}, p.args...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.waited = make(chan error, 1)
	go func() { p.waited <- p.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(p.socket()); err == nil {
			return
		}
		select {
		case err := <-p.waited:
			p.cmd = nil
			p.t.Fatalf("nvi-docker exited: %v\n%s", err, readFile(p.log))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("nvi-docker did not open %s\n%s", p.socket(), readFile(p.log))
		}
	}
}

// stop ends the plugin: with SIGTERM as systemd would, or with SIGKILL as a
// crash would (leaving its socket file behind).
func (p *plugin) stop(crash bool) {
	p.t.Helper()
	if p.cmd == nil {
		return
	}
	sig := syscall.SIGTERM
	if crash {
		sig = syscall.SIGKILL
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.waited:
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.waited
		p.t.Errorf("nvi-docker did not stop on %v", sig)
	}
	p.cmd = nil
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// buildBinaries builds nvid (for the lab) and nvi-docker.

// TestDockerEndToEnd runs the real Docker engine against nvi-docker for
// server s2 of a real lab: a container on s2 pings a lab workload on s1
// with an address from s2's blocks, survives a plugin crash, and when the
// containers and networks are gone so are their endpoints, ports, veths
// and records; bad input gets Docker's error and leaves nothing.
func TestDockerEndToEnd(t *testing.T) {
	requireE2E(t)
	bin := labtest.Binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	prefix := fmt.Sprintf("dk%04d", rand.IntN(10000))
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer dcancel()
		if err := lab.Down(dctx, prefix); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if out := command(time.Minute, "ip", "netns", "list").out; strings.Contains(out, prefix+"-") {
			t.Errorf("namespaces left behind:\n%s", out)
		}
	})
	st, err := lab.Up(ctx, lab.Config{Prefix: prefix, Servers: 2, Bin: bin})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := st.OperatorTLS()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := directory.Open(ctx, directory.Config{Endpoints: st.Directory.Local, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if _, err := dir.CreateNetwork(ctx, directory.Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	w1, err := lab.AddWorkload(ctx, prefix, lab.WorkloadSpec{Name: prefix + "w1", Server: "s1", Tenant: "acme", Network: "web"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := st.Server("s2")
	if err != nil {
		t.Fatal(err)
	}
	agent := api.NewLocalClient(s2.Socket, 20*time.Second)
	defer agent.Close()

	orchtest.DockerImage(t, testImage)
	// The driver's own directory credential, as "nvictl ca issue-plugin"
	// makes it: read the directory, write the driver's records only.
	ca, err := pki.LoadCA(st.Trust.CA)
	if err != nil {
		t.Fatal(err)
	}
	cred := t.TempDir()
	if err := ca.IssuePlugin(cred, "docker-s2", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := dir.GrantPlugin(ctx, "docker-s2", DefaultStatePrefix); err != nil {
		t.Fatal(err)
	}
	logDir := t.TempDir()
	p := &plugin{
		t: t, bin: bin, name: "nvi-" + prefix,
		args:       []string{"--agent", s2.Socket, "--etcd", strings.Join(st.Directory.Local, ","), "--etcd-identity", cred, "--bridge-netns", s2.Netns},
		log:        filepath.Join(logDir, "nvi-docker.log"),
		transcript: filepath.Join(logDir, "transcript.jsonl"),
	}
	t.Cleanup(func() {
		p.stop(false)
		if t.Failed() {
			t.Logf("nvi-docker log:\n%s", readFile(p.log))
			t.Logf("exchanges with Docker:\n%s", readFile(p.transcript))
		}
	})
	p.start()
	net := prefix + "-web"
	create := func(name string, extra ...string) []string {
		return append([]string{"network", "create", "-d", p.name, "--ipam-driver", p.name}, append(extra, name)...)
	}
	var containers []string
	t.Cleanup(func() {
		// Whatever happened, no container or network of this test stays.
		for _, c := range containers {
			dockerCmd("rm", "-f", c)
		}
		out := dockerCmd("network", "ls", "--filter", "name="+prefix, "--format", "{{.Name}}").out
		for _, n := range strings.Fields(out) {
			if r := dockerCmd("network", "rm", n); r.code != 0 {
				t.Errorf("removing network %s: %s", n, r)
			}
		}
	})
	mustDocker(t, create(net, "-o", NetworkOption+"=acme/web", "--ipam-opt", NetworkOption+"=acme/web")...)

	// A container pings a workload on s1, with an address from s2's blocks.
	out := mustDocker(t, "run", "--rm", "--network", net, testImage, "sh", "-c", "ip -4 -o addr show dev eth0 && ping -c 3 -W 5 "+w1.IP.String())
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping from the container:\n%s", out)
	}
	m := regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/24`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no address in:\n%s", out)
	}
	addr := netip.MustParseAddr(m[1])
	checkFromS2Blocks(ctx, t, dir, addr)
	t.Logf("the container had %s; the workload on s1 is %s", addr, w1.IP)
	checkClean(ctx, t, agent, s2, p.name)

	// A long-lived container: its endpoint is bound on s2 under the name its
	// MAC gives, and it stays reachable while the plugin crashes and comes
	// back; removed after that, it leaves nothing.
	c1 := prefix + "-c1"
	containers = append(containers, c1)
	mustDocker(t, "run", "-d", "--name", c1, "--network", net, testImage, "sleep", "600")
	mac := mustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+net+"\").MacAddress}}", c1)
	ip := netip.MustParseAddr(mustDocker(t, "inspect", "-f", "{{(index .NetworkSettings.Networks \""+net+"\").IPAddress}}", c1))
	name, _, err := reservationName(mac)
	if err != nil {
		t.Fatal(err)
	}
	eps, err := agent.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ep := range eps {
		if ep.Tenant == "acme" && ep.Name == name {
			found = true
			if ep.IP != ip || ep.MAC != mac || !ep.Bound || !strings.HasPrefix(ep.Interface, "nvh") {
				t.Errorf("endpoint of %s: %+v, want %s %s bound to an nvh port", c1, ep, ip, mac)
			}
		}
	}
	if !found {
		t.Fatalf("no bound endpoint acme/%s on s2: %+v", name, eps)
	}
	checkFromS2Blocks(ctx, t, dir, ip)
	p.stop(true)
	mustDocker(t, "exec", c1, "ping", "-c", "2", "-W", "5", w1.IP.String())
	p.start() // over the socket file the crash left
	mustDocker(t, "rm", "-f", c1)
	containers = containers[:0]
	checkClean(ctx, t, agent, s2, p.name)

	// Bad input: Docker's own error, and nothing left behind.
	for _, c := range []struct {
		args []string
		want string
	}{
		{create(prefix+"-x1", "-o", NetworkOption+"=acme/web", "-o", "mtu=9000", "--ipam-opt", NetworkOption+"=acme/web"), "unknown network option mtu"},
		{create(prefix+"-x2", "-o", NetworkOption+"=acme/nope", "--ipam-opt", NetworkOption+"=acme/nope"), "NVI network acme/nope does not exist"},
		{create(prefix+"-x3", "-o", NetworkOption+"=acme/web"), "NVI's IPAM driver needs the NVI network"},
		{create(prefix+"-x4", "--ipam-opt", NetworkOption+"=acme/web"), "no NVI network named"},
		{[]string{"network", "create", "-d", p.name, "-o", NetworkOption + "=acme/web", prefix + "-x5"}, "must come from NVI"},
		{create(prefix+"-x6", "-o", NetworkOption+"=acme/web", "--ipam-opt", NetworkOption+"=acme/web", "--subnet", "10.9.0.0/24"), "is not the CIDR 10.1.0.0/24"},
	} {
		if got := dockerFails(t, c.args...); !strings.Contains(got, c.want) {
			t.Errorf("docker %s: %q, want it to say %q", strings.Join(c.args, " "), got, c.want)
		}
	}
	fixed := prefix + "-fixed"
	mustDocker(t, create(fixed, "-o", NetworkOption+"=acme/web", "--ipam-opt", NetworkOption+"=acme/web", "--subnet", "10.1.0.0/24")...)
	if got := dockerFails(t, "run", "--rm", "--network", fixed, "--ip", w1.IP.String(), testImage, "true"); !strings.Contains(got, "is already used by acme/"+w1.Name) {
		t.Errorf("--ip of a taken address: %q", got)
	}
	out = mustDocker(t, "run", "--rm", "--network", fixed, "--ip", "10.1.0.200", testImage, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(out, "inet 10.1.0.200/24") {
		t.Errorf("--ip 10.1.0.200: %s", out)
	}
	mustDocker(t, "network", "rm", fixed)

	// A Docker network whose record the plugin lost: Docker's requests for
	// it are refused, and the address Docker asked for first is released.
	lost := prefix + "-lost"
	lostID := mustDocker(t, create(lost, "-o", NetworkOption+"=acme/web", "--ipam-opt", NetworkOption+"=acme/web")...)
	state := NewEtcdState(dir.Client(), "")
	rec, ok, err := state.Network(ctx, lostID)
	if err != nil || !ok {
		t.Fatalf("no record of network %s: %v", lostID, err)
	}
	if err := state.DeleteNetwork(ctx, lostID); err != nil {
		t.Fatal(err)
	}
	if got := dockerFails(t, "run", "--rm", "--network", lost, testImage, "true"); !strings.Contains(got, "unknown network "+short(lostID)) {
		t.Errorf("a run on a network the plugin does not know: %q", got)
	}
	checkClean(ctx, t, agent, s2, p.name)
	if err := state.PutNetwork(ctx, rec); err != nil {
		t.Fatal(err)
	}
	mustDocker(t, "network", "rm", lost, net)
	checkClean(ctx, t, agent, s2, p.name)
	recs, err := state.Endpoints(ctx)
	if err != nil || len(recs) != 0 {
		t.Errorf("endpoint records left: %+v %v", recs, err)
	}
	resp, err := dir.Client().Get(ctx, DefaultStatePrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("records left under %s: %v %v", DefaultStatePrefix, resp, err)
	}
}

// checkFromS2Blocks fails unless ip is in a block s2 holds.
func checkFromS2Blocks(ctx context.Context, t *testing.T, dir *directory.Store, ip netip.Addr) {
	t.Helper()
	blocks, err := dir.Blocks(ctx, "acme", "web")
	if err != nil {
		t.Fatal(err)
	}
	for b, server := range blocks {
		if b.Contains(ip) {
			if server != "s2" {
				t.Errorf("%s is in block %s of %s, not of s2", ip, b, server)
			}
			return
		}
	}
	t.Errorf("%s is in no block (blocks: %v)", ip, blocks)
}

// checkClean fails if any trace of a Docker container is left on s2: an
// NVI endpoint of the plugin's, a port other than the uplink and the
// bridge's own, a veth of the plugin's in s2 or in the root namespace.
func checkClean(ctx context.Context, t *testing.T, agent *api.LocalClient, s2 lab.Server, pluginName string) {
	t.Helper()
	eps, err := agent.ServerEndpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if strings.HasPrefix(ep.Name, reservationPrefix) {
			t.Errorf("endpoint %s/%s (%s) left on s2", ep.Tenant, ep.Name, ep.IP)
		}
	}
	ports := command(time.Minute, "ip", "netns", "exec", s2.Netns, "ovs-vsctl", "--db=unix:"+filepath.Join(s2.Dir, "db.sock"), "list-ports", lab.BridgeName)
	if ports.code != 0 {
		t.Fatalf("ovs-vsctl: %s", ports)
	}
	if got := strings.Fields(ports.out); len(got) != 1 || got[0] != lab.UplinkName {
		t.Errorf("ports left on s2's bridge: %q", got)
	}
	for _, ns := range []string{s2.Netns, ""} {
		args := []string{"-o", "link", "show"}
		if ns != "" {
			args = append([]string{"netns", "exec", ns, "ip"}, args...)
		}
		links := command(time.Minute, "ip", args...)
		for _, l := range strings.Split(links.out, "\n") {
			if strings.Contains(l, ": nvc") || strings.Contains(l, ": nvh") {
				t.Errorf("veth left in namespace %q: %s", ns, l)
			}
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	labtest.Clean()
	os.Exit(code)
}
