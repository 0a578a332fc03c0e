package cni

// Integration tests on a real lab: nvid, Open vSwitch and the embedded etcd
// in network namespaces, the nvi-cni binary run by cnitool, by a harness
// that sets the CNI_* variables as the specification says, and by a real
// Podman. They need root; without it they are skipped, unless
// NVI_REQUIRE_E2E is set, which makes anything missing a failure.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/api"
	"nvi/internal/labtest"
	"nvi/internal/orchtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	labtest.Clean()
	os.Exit(code)
}

// requireE2E and binaries are labtest's, named as this file uses them.
func requireE2E(t *testing.T, tools ...string) { t.Helper(); labtest.RequireE2E(t, tools...) }

func binaries(t *testing.T) string { t.Helper(); return labtest.Binaries(t) }

// res is what one command did.
type res = orchtest.Result

// run runs a command with a deadline.
func run(timeout time.Duration, env []string, stdin []byte, name string, args ...string) res {
	return orchtest.Run(timeout, env, stdin, name, args...)
}

// itLab is a two-server lab with network acme/web and a workload on s2;
// the plugin attaches to s1.
type itLab struct {
	*labtest.Lab
	t        *testing.T
	bin      string
	socket   string // s1's agent
	bridgeNS string // s1's namespace
	peer     string // the s2 workload's address
	agent    *api.LocalClient
}

const peerIP = "10.1.0.200"

func startLab(t *testing.T, bin string) *itLab {
	t.Helper()
	lt := labtest.Up(t, "c", 2)
	l := &itLab{Lab: lt, t: t, bin: bin, peer: peerIP, socket: lt.Socket("s1"), bridgeNS: lt.Server("s1")}
	t.Cleanup(func() {
		if l.agent != nil {
			l.agent.Close()
		}
	})
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("lab", "workload", "add", l.Prefix+"w2", "--server", "s2", "--net", "acme/web", "--ip", peerIP)
	l.agent = api.NewLocalClient(l.socket, 20*time.Second)
	return l
}

func (l *itLab) nvictl(args ...string) res { return l.Nvictl(args...) }

func (l *itLab) must(args ...string) string {
	l.t.Helper()
	return l.Must(args...)
}

func netnsList() []string { return labtest.NetnsList() }

// netns makes a network namespace (a container) removed when the test ends.
func (l *itLab) netns(name string) string {
	l.t.Helper()
	name = l.Prefix + name
	if r := run(time.Minute, nil, nil, "ip", "netns", "add", name); r.Code != 0 {
		l.t.Fatalf("ip netns add %s: %s", name, r)
	}
	l.t.Cleanup(func() { run(time.Minute, nil, nil, "ip", "netns", "del", name) })
	return "/run/netns/" + name
}

// conf is the plugin's network configuration for this lab; set overrides
// fields (nil removes one).
func (l *itLab) conf(set map[string]any) []byte {
	base, _ := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "acmeweb", "type": "nvi-cni",
		"tenant": "acme", "network": "web", "socket": l.socket, "bridgeNetns": l.bridgeNS,
	})
	return patchJSON(l.t, base, set)
}

// call runs nvi-cni the way a runtime does: CNI_* variables, the
// configuration on stdin, the result or error on stdout.
type call struct {
	cmd, id, netns, ifname, args string
	conf                         []byte
}

type reply struct {
	res
	JSON map[string]any
}

func (l *itLab) plugin(c call) reply {
	l.t.Helper()
	env := []string{"CNI_COMMAND=" + c.cmd, "CNI_PATH=" + l.bin}
	for k, v := range map[string]string{"CNI_CONTAINERID": c.id, "CNI_NETNS": c.netns, "CNI_IFNAME": c.ifname, "CNI_ARGS": c.args} {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	r := reply{res: run(time.Minute, env, c.conf, filepath.Join(l.bin, "nvi-cni"))}
	if strings.Contains(r.Err, "panic") || strings.Contains(r.Err, "goroutine ") {
		l.t.Fatalf("nvi-cni %s panicked: %s", c.cmd, r.res)
	}
	if strings.TrimSpace(r.Out) != "" {
		if err := json.Unmarshal([]byte(r.Out), &r.JSON); err != nil {
			l.t.Fatalf("nvi-cni %s: stdout is not JSON: %s", c.cmd, r.res)
		}
	}
	return r
}

// wantOK requires success.
func (l *itLab) wantOK(what string, r reply) {
	l.t.Helper()
	if r.Code != 0 {
		l.t.Fatalf("%s: %s", what, r.res)
	}
}

// wantError requires the specification's error with code.
func (l *itLab) wantError(what string, r reply, code uint) {
	l.t.Helper()
	if r.Code != 1 || r.JSON == nil {
		l.t.Fatalf("%s: want exit 1 and an error on stdout, got %s", what, r.res)
	}
	got, _ := r.JSON["code"].(float64)
	if uint(got) != code || r.JSON["cniVersion"] == nil || r.JSON["msg"] == "" {
		l.t.Fatalf("%s: want error code %d with cniVersion and msg, got %s", what, code, r.Out)
	}
}

// clean requires that no attachment of the plugin is left on s1: no
// endpoint, no OVS port, no veth (and none in the containers given).
func (l *itLab) clean(what string, containers ...string) {
	l.t.Helper()
	eps, err := l.agent.ServerEndpoints(context.Background())
	if err != nil {
		l.t.Fatalf("%s: listing endpoints: %v", what, err)
	}
	for _, ep := range eps {
		if strings.HasPrefix(ep.Name, EndpointPrefix) {
			l.t.Errorf("%s: endpoint %s/%s left behind", what, ep.Tenant, ep.Name)
		}
	}
	r := run(time.Minute, nil, nil, "ovs-vsctl", "--db=unix:/run/"+l.Prefix+"/s1/db.sock", "--columns=name,external_ids", "list", "Interface")
	if r.Code != 0 {
		l.t.Fatalf("%s: ovs-vsctl: %s", what, r)
	}
	if strings.Contains(r.Out, "nvc") || strings.Contains(r.Out, "cni:") {
		l.t.Errorf("%s: OVS interface left behind:\n%s", what, r.Out)
	}
	if r := run(time.Minute, nil, nil, "ip", "-n", l.bridgeNS, "-br", "link"); strings.Contains(r.Out, "nvc") {
		l.t.Errorf("%s: veth left behind in %s:\n%s", what, l.bridgeNS, r.Out)
	}
	for _, c := range containers {
		if _, err := os.Stat(c); err != nil {
			continue
		}
		if r := run(time.Minute, nil, nil, "ip", "-n", filepath.Base(c), "-br", "link"); strings.Contains(r.Out, "eth0") {
			l.t.Errorf("%s: eth0 left behind in %s:\n%s", what, c, r.Out)
		}
	}
}

// endpoint returns this lab's plugin endpoint for an attachment.
func (l *itLab) endpoint(id, ifname string) (api.Endpoint, bool) {
	eps, err := l.agent.ServerEndpoints(context.Background())
	if err != nil {
		l.t.Fatalf("listing endpoints: %v", err)
	}
	for _, ep := range eps {
		if ep.Tenant == "acme" && ep.Name == EndpointName(id, ifname) {
			return ep, true
		}
	}
	return api.Endpoint{}, false
}

func (l *itLab) ping(netns string) res {
	return run(time.Minute, nil, nil, "ip", "netns", "exec", filepath.Base(netns), "ping", "-c", "3", "-W", "2", l.peer)
}

// forgetCNICache removes the results libcni (in cnitool and Podman) cached
// for network name, and /var/lib/cni itself if this test made it and left it empty.
func forgetCNICache(t *testing.T, name string) {
	_, statErr := os.Stat("/var/lib/cni")
	t.Cleanup(func() {
		files, _ := filepath.Glob("/var/lib/cni/results/" + name + "-*")
		for _, f := range files {
			os.Remove(f)
		}
		if os.IsNotExist(statErr) {
			os.Remove("/var/lib/cni/results")
			os.Remove("/var/lib/cni")
		}
	})
}

func TestCNItool(t *testing.T) {
	requireE2E(t, "ip", "ovs-vswitchd", "ovs-vsctl", "ping")
	start := time.Now()
	bin := binaries(t)
	l := startLab(t, bin)
	t.Logf("binaries and lab ready in %v", time.Since(start).Round(time.Millisecond))

	netName := "acmeweb" + l.Prefix
	forgetCNICache(t, netName)
	netDir := t.TempDir()
	list := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s]}`, netName, l.conf(map[string]any{"cniVersion": nil, "name": nil}))
	if err := os.WriteFile(filepath.Join(netDir, "10-nvi.conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	cnitool := func(cmd, netns string) res {
		return run(time.Minute, []string{"NETCONFPATH=" + netDir, "CNI_PATH=" + bin}, nil, filepath.Join(bin, "cnitool"), cmd, netName, netns)
	}

	c1 := l.netns("c1")
	r := cnitool("add", c1)
	if r.Code != 0 {
		t.Fatalf("cnitool add: %s", r)
	}
	var result struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct {
			Name, Mac, Sandbox string
		}
		IPs []struct {
			Address, Gateway string
			Interface        int
		}
		Routes []struct{ Dst, GW string }
	}
	if err := json.Unmarshal([]byte(r.Out), &result); err != nil {
		t.Fatalf("cnitool add printed no result: %v\n%s", err, r)
	}
	if result.CNIVersion != "1.1.0" || len(result.Interfaces) != 2 || result.Interfaces[1].Sandbox != c1 || result.Interfaces[1].Name != "eth0" ||
		len(result.IPs) != 1 || result.IPs[0].Interface != 1 || result.IPs[0].Gateway != "10.1.0.1" || !strings.HasPrefix(result.IPs[0].Address, "10.1.0.") ||
		len(result.Routes) != 1 || result.Routes[0].Dst != "0.0.0.0/0" || result.Routes[0].GW != "10.1.0.1" {
		t.Fatalf("unexpected result:\n%s", r.Out)
	}
	if p := l.ping(c1); p.Code != 0 {
		t.Fatalf("ping from the CNI container to the workload on s2: %s", p)
	}
	if r := cnitool("check", c1); r.Code != 0 {
		t.Fatalf("cnitool check: %s", r)
	}
	if r := cnitool("status", c1); r.Code != 0 {
		t.Fatalf("cnitool status: %s", r)
	}
	for i := range 2 {
		if r := cnitool("del", c1); r.Code != 0 {
			t.Fatalf("cnitool del #%d: %s", i+1, r)
		}
	}
	l.clean("after DEL", c1)

	// GC keeps the valid attachments and removes the rest; cnitool's gc
	// lists none, so it removes them all.
	c2, c3 := l.netns("c2"), l.netns("c3")
	for _, c := range []call{{id: "gc-a", netns: c2}, {id: "gc-b", netns: c3}} {
		c.cmd, c.ifname, c.conf = "ADD", "eth0", l.conf(map[string]any{"name": netName})
		l.wantOK("ADD "+c.id, l.plugin(c))
	}
	gc := l.conf(map[string]any{"name": netName, "cni.dev/valid-attachments": []map[string]string{{"containerID": "gc-b", "ifname": "eth0"}}})
	l.wantOK("GC", l.plugin(call{cmd: "GC", conf: gc}))
	if _, ok := l.endpoint("gc-a", "eth0"); ok {
		t.Fatal("GC left the stale attachment gc-a")
	}
	if ep, ok := l.endpoint("gc-b", "eth0"); !ok || !ep.Bound {
		t.Fatalf("GC removed the valid attachment gc-b (%+v)", ep)
	}
	if p := l.ping(c3); p.Code != 0 {
		t.Fatalf("the valid attachment lost its connectivity after GC: %s", p)
	}
	if r := cnitool("gc", c3); r.Code != 0 {
		t.Fatalf("cnitool gc: %s", r)
	}
	l.clean("after GC")

	t.Run("bad input", func(t *testing.T) { badInput(t, l) })
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// badInput gives the plugin what issue 4 lists; each call must get the
// specification's error and leave nothing behind.
func badInput(t *testing.T, parent *itLab) {
	l := *parent
	l.t = t
	c := l.netns("bad")
	add := func(conf []byte) call { return call{cmd: "ADD", id: "bad1", netns: c, ifname: "eth0", conf: conf} }

	l.wantError("ADD without a configuration", l.plugin(add(nil)), CodeDecodingFailure)
	l.wantError("ADD with a malformed configuration", l.plugin(add([]byte(`{"cniVersion":"1.1.0","name":`))), CodeDecodingFailure)
	l.wantError("ADD without a tenant", l.plugin(add(l.conf(map[string]any{"tenant": nil}))), CodeInvalidConfig)
	l.wantError("ADD with an unsupported version", l.plugin(add(l.conf(map[string]any{"cniVersion": "9.9.9"}))), CodeIncompatibleVersion)
	l.wantError("ADD without CNI_CONTAINERID", l.plugin(call{cmd: "ADD", netns: c, ifname: "eth0", conf: l.conf(nil)}), CodeInvalidEnvironment)
	l.wantError("ADD to an unknown network", l.plugin(add(l.conf(map[string]any{"network": "nope"}))), CodeUnknownNetwork)
	l.wantError("ADD to an unknown tenant", l.plugin(add(l.conf(map[string]any{"tenant": "nobody"}))), CodeUnknownNetwork)
	l.wantError("ADD with a taken address", l.plugin(add(l.conf(map[string]any{"ip": peerIP}))), CodeAddressTaken)
	l.wantError("ADD with an address outside the network", l.plugin(add(l.conf(map[string]any{"ip": "192.0.2.9"}))), CodeRefused)
	l.wantError("ADD into a namespace that does not exist", l.plugin(call{cmd: "ADD", id: "bad1", netns: "/run/netns/" + l.Prefix + "nowhere", ifname: "eth0", conf: l.conf(nil)}), CodeUnknownContainer)
	l.wantError("ADD with a missing bridge namespace", l.plugin(add(l.conf(map[string]any{"bridgeNetns": l.Prefix + "-s9"}))), CodeInvalidConfig)
	l.wantError("ADD with no agent", l.plugin(add(l.conf(map[string]any{"socket": "/run/" + l.Prefix + "/none.sock"}))), CodeTryAgainLater)
	l.wantError("ADD into the wrong bridge namespace", l.plugin(add(l.conf(map[string]any{"bridgeNetns": l.Prefix + "-s2"}))), CodeRefused)
	l.wantError("STATUS with no agent", l.plugin(call{cmd: "STATUS", conf: l.conf(map[string]any{"socket": "/run/" + l.Prefix + "/none.sock"})}), CodeNotAvailable)
	l.wantOK("STATUS", l.plugin(call{cmd: "STATUS", conf: l.conf(nil)}))
	l.clean("after the refused ADDs", c)

	l.wantOK("DEL of something never added", l.plugin(call{cmd: "DEL", id: "never", ifname: "eth0", conf: l.conf(nil)}))

	// A second ADD for the same container fails and leaves the first be.
	first := l.plugin(add(l.conf(nil)))
	l.wantOK("ADD", first)
	l.wantError("second ADD", l.plugin(add(l.conf(nil))), CodeExists)
	other := l.netns("other")
	l.wantError("second ADD from another namespace", l.plugin(call{cmd: "ADD", id: "bad1", netns: other, ifname: "eth0", conf: l.conf(nil)}), CodeExists)
	if ep, ok := l.endpoint("bad1", "eth0"); !ok || !ep.Bound {
		t.Fatalf("the first attachment was disturbed: %+v", ep)
	}
	if p := l.ping(c); p.Code != 0 {
		t.Fatalf("the first attachment lost connectivity: %s", p)
	}
	prev := map[string]any{}
	_ = json.Unmarshal([]byte(first.Out), &prev)
	l.wantOK("CHECK", l.plugin(call{cmd: "CHECK", id: "bad1", netns: c, ifname: "eth0", conf: l.conf(map[string]any{"prevResult": prev})}))

	// The container's namespace vanishes: CHECK fails, DEL still cleans up.
	if r := run(time.Minute, nil, nil, "ip", "netns", "del", filepath.Base(c)); r.Code != 0 {
		t.Fatalf("ip netns del: %s", r)
	}
	l.wantError("CHECK after the namespace vanished", l.plugin(call{cmd: "CHECK", id: "bad1", netns: c, ifname: "eth0", conf: l.conf(map[string]any{"prevResult": prev})}), CodeCheckFailed)
	for i := range 2 {
		l.wantOK(fmt.Sprintf("DEL #%d after the namespace vanished", i+1), l.plugin(call{cmd: "DEL", id: "bad1", netns: c, ifname: "eth0", conf: l.conf(nil)}))
	}
	l.clean("after DEL of a vanished container", other)
	// The agent is fine throughout.
	if st, err := l.agent.Status(context.Background()); err != nil || !st.Ready {
		t.Fatalf("agent after bad input: %+v, %v", st, err)
	}
}
