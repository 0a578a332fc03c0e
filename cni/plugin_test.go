package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"nvi/api"
)

// fakeAgent is an agent holding endpoints in memory, with errors to inject.
type fakeAgent struct {
	mu        sync.Mutex
	eps       map[string]*api.Endpoint // by tenant/name
	next      int
	ready     bool
	statusErr error
	createErr error
	attachErr error
	deleteErr error
	listErr   error
	deleted   []string
}

func newFakeAgent() *fakeAgent { return &fakeAgent{eps: map[string]*api.Endpoint{}, ready: true} }

func (f *fakeAgent) Status(context.Context) (api.Status, error) {
	return api.Status{Server: "s1", Ready: f.ready, Switch: "connected", Directory: "connected"}, f.statusErr
}

func (f *fakeAgent) CreateEndpoint(_ context.Context, req api.CreateEndpointRequest) (api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.createErr != nil {
		return api.Endpoint{}, f.createErr
	}
	if req.Network != "web" {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "network %s/%s not found", req.Tenant, req.Network)
	}
	if f.eps[req.Tenant+"/"+req.Name] != nil {
		return api.Endpoint{}, api.Errorf(api.CodeExists, "endpoint %s/%s already exists", req.Tenant, req.Name)
	}
	ip := req.IP
	if !ip.IsValid() {
		f.next++
		ip = netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + f.next)})
	}
	ep := &api.Endpoint{Tenant: req.Tenant, Network: req.Network, Name: req.Name, IP: ip, PrefixLen: 24,
		Gateway: netip.MustParseAddr("10.1.0.1"), MAC: "0a:58:0a:01:00:0b", Server: "s1", IfaceID: req.IfaceID}
	f.eps[req.Tenant+"/"+req.Name] = ep
	return *ep, nil
}

func (f *fakeAgent) AttachEndpoint(_ context.Context, req api.AttachRequest) (api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attachErr != nil {
		return api.Endpoint{}, f.attachErr
	}
	ep := f.eps[req.Tenant+"/"+req.Name]
	if ep == nil {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "no endpoint")
	}
	ep.Bound, ep.Interface, ep.OFPort = true, req.Interface, 7
	return *ep, nil
}

func (f *fakeAgent) DeleteEndpoint(_ context.Context, tenant, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteErr != nil {
		return f.deleteErr
	}
	if f.eps[tenant+"/"+name] == nil {
		return api.Errorf(api.CodeNotFound, "endpoint %s/%s not found", tenant, name)
	}
	delete(f.eps, tenant+"/"+name)
	f.deleted = append(f.deleted, tenant+"/"+name)
	return nil
}

func (f *fakeAgent) ServerEndpoints(context.Context) ([]api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Endpoint
	for _, ep := range f.eps {
		out = append(out, *ep)
	}
	return out, f.listErr
}

func (f *fakeAgent) Close() {}

// fakeLinks keeps namespaces and their interfaces in memory.
type fakeLinks struct {
	netns   map[string]map[string]LinkState // namespace -> interface -> state
	addErr  error
	deleted []string
}

func newFakeLinks(namespaces ...string) *fakeLinks {
	l := &fakeLinks{netns: map[string]map[string]LinkState{"": {}}}
	for _, n := range namespaces {
		l.netns[n] = map[string]LinkState{}
	}
	return l
}

func (l *fakeLinks) CheckNetns(ref string, notOurs bool) error {
	if _, ok := l.netns[ref]; !ok {
		return errNetnsGone
	}
	if notOurs && ref == "" {
		return errOwnNetns
	}
	return nil
}

func (l *fakeLinks) AddVeth(v Veth) (string, error) {
	if l.addErr != nil {
		return "", l.addErr
	}
	c, ok := l.netns[v.ContainerNetns]
	if !ok {
		return "", errNetnsGone
	}
	if c[v.IfName].Exists {
		return "", errIfaceExists
	}
	c[v.IfName] = LinkState{Exists: true, MAC: v.MAC, Up: true, Addrs: []netip.Prefix{v.Addr}, DefaultGateways: []netip.Addr{v.Gateway}}
	l.netns[v.BridgeNetns][v.Host] = LinkState{Exists: true, MAC: "aa:bb:cc:dd:ee:ff", Up: true}
	return "aa:bb:cc:dd:ee:ff", nil
}

func (l *fakeLinks) DelHost(bridgeNetns, host string) (bool, error) {
	b, ok := l.netns[bridgeNetns]
	if !ok || !b[host].Exists {
		return false, nil
	}
	delete(b, host)
	l.deleted = append(l.deleted, host)
	for _, ns := range l.netns { // the pair goes too (the fake knows one container end per test)
		for name, st := range ns {
			if name == "eth0" && st.Exists {
				delete(ns, name)
			}
		}
	}
	return true, nil
}

func (l *fakeLinks) Inspect(netns, ifname string) (LinkState, error) {
	ns, ok := l.netns[netns]
	if !ok {
		return LinkState{}, errNetnsGone
	}
	return ns[ifname], nil
}

const ctrID = "3f2a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a"

type harness struct {
	agent *fakeAgent
	links *fakeLinks
	p     *Plugin
}

func newHarness() *harness {
	h := &harness{agent: newFakeAgent(), links: newFakeLinks("/run/netns/ctr", "nvi-s1")}
	h.p = &Plugin{
		Dial:    func(string) Agent { return h.agent },
		Links:   h.links,
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Timeout: 5 * time.Second,
	}
	return h
}

// call runs one command; env overrides (and "" deletes) the defaults.
func (h *harness) call(cmd string, stdin []byte, env map[string]string) (int, map[string]any, string) {
	vars := map[string]string{
		"CNI_COMMAND": cmd, "CNI_CONTAINERID": ctrID, "CNI_NETNS": "/run/netns/ctr",
		"CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
	}
	for k, v := range env {
		vars[k] = v
	}
	var out bytes.Buffer
	code := h.p.Run(func(k string) string { return vars[k] }, bytes.NewReader(stdin), &out)
	m := map[string]any{}
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &m); err != nil {
			return code, nil, out.String()
		}
	}
	return code, m, out.String()
}

func errCode(m map[string]any) uint {
	c, _ := m["code"].(float64)
	return uint(c)
}

func TestAddCheckDel(t *testing.T) {
	h := newHarness()
	code, res, raw := h.call("ADD", []byte(goodConf), nil)
	if code != 0 {
		t.Fatalf("ADD: exit %d: %s", code, raw)
	}
	name := EndpointName(ctrID, "eth0")
	ep := h.agent.eps["acme/"+name]
	if ep == nil || !ep.Bound || ep.Interface != HostVeth(name) || ep.IfaceID != "cni:web:acme/"+name {
		t.Fatalf("endpoint after ADD: %+v", ep)
	}
	if res["cniVersion"] != "1.1.0" {
		t.Errorf("result version %v", res["cniVersion"])
	}
	ifs := res["interfaces"].([]any)
	if len(ifs) != 2 || ifs[1].(map[string]any)["sandbox"] != "/run/netns/ctr" || ifs[1].(map[string]any)["name"] != "eth0" ||
		ifs[1].(map[string]any)["mac"] != ep.MAC || ifs[0].(map[string]any)["name"] != HostVeth(name) {
		t.Errorf("interfaces = %v", ifs)
	}
	ips := res["ips"].([]any)
	if len(ips) != 1 || ips[0].(map[string]any)["address"] != "10.1.0.11/24" || ips[0].(map[string]any)["gateway"] != "10.1.0.1" || ips[0].(map[string]any)["interface"] != 1.0 {
		t.Errorf("ips = %v", ips)
	}
	routes := res["routes"].([]any)
	if len(routes) != 1 || routes[0].(map[string]any)["dst"] != "0.0.0.0/0" || routes[0].(map[string]any)["gw"] != "10.1.0.1" {
		t.Errorf("routes = %v", routes)
	}

	withPrev := conf(t, map[string]any{"prevResult": res})
	if code, _, raw := h.call("CHECK", withPrev, nil); code != 0 {
		t.Fatalf("CHECK: exit %d: %s", code, raw)
	}
	// CHECK notices a container interface that changed.
	st := h.links.netns["/run/netns/ctr"]["eth0"]
	st.TxChecksum = true
	h.links.netns["/run/netns/ctr"]["eth0"] = st
	if code, m, _ := h.call("CHECK", withPrev, nil); code != 1 || errCode(m) != CodeCheckFailed || !strings.Contains(m["details"].(string), "checksum") {
		t.Fatalf("CHECK with tx checksum on: %d %v", code, m)
	}
	st.TxChecksum = false
	st.Addrs = nil
	h.links.netns["/run/netns/ctr"]["eth0"] = st
	if code, m, _ := h.call("CHECK", withPrev, nil); code != 1 || errCode(m) != CodeCheckFailed || !strings.Contains(m["details"].(string), "lacks the address") {
		t.Fatalf("CHECK without the address: %d %v", code, m)
	}

	for i := range 2 {
		if code, _, raw := h.call("DEL", []byte(goodConf), map[string]string{"CNI_NETNS": ""}); code != 0 || raw != "" {
			t.Fatalf("DEL #%d: exit %d: %s", i+1, code, raw)
		}
	}
	if len(h.agent.eps) != 0 || len(h.links.netns["nvi-s1"]) != 0 {
		t.Fatalf("left behind: %v, %v", h.agent.eps, h.links.netns)
	}
	if code, m, _ := h.call("CHECK", withPrev, nil); code != 1 || errCode(m) != CodeCheckFailed || !strings.Contains(m["details"].(string), "does not exist") {
		t.Fatalf("CHECK after DEL: %d %v", code, m)
	}
}

func TestAddOldVersionResult(t *testing.T) {
	h := newHarness()
	code, res, raw := h.call("ADD", conf(t, map[string]any{"cniVersion": "0.4.0"}), nil)
	if code != 0 {
		t.Fatalf("ADD: %s", raw)
	}
	ip := res["ips"].([]any)[0].(map[string]any)
	if res["cniVersion"] != "0.4.0" || ip["version"] != "4" || ip["address"] != "10.1.0.11/24" {
		t.Fatalf("0.4.0 result: %s", raw)
	}
}

func TestAddFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		conf    []byte
		env     map[string]string
		prepare func(h *harness)
		code    uint
		in      string
	}{
		{"unknown network", conf(t, map[string]any{"network": "nope"}), nil, nil, CodeUnknownNetwork, "acme/nope"},
		{"address taken", []byte(goodConf), nil, func(h *harness) {
			h.agent.createErr = api.Errorf(api.CodeConflict, "address 10.1.0.5 is already used by acme/db")
		}, CodeAddressTaken, "already used"},
		{"netns gone", []byte(goodConf), map[string]string{"CNI_NETNS": "/run/netns/gone"}, nil, CodeUnknownContainer, "/run/netns/gone"},
		{"own netns", []byte(goodConf), map[string]string{"CNI_NETNS": ""}, nil, CodeInvalidEnvironment, "CNI_NETNS"},
		{"bridge netns gone", conf(t, map[string]any{"bridgeNetns": "nvi-s9"}), nil, nil, CodeInvalidConfig, "nvi-s9"},
		{"interface exists", []byte(goodConf), nil, func(h *harness) {
			h.links.netns["/run/netns/ctr"]["eth0"] = LinkState{Exists: true}
		}, CodeExists, "already has an interface eth0"},
		{"agent down", []byte(goodConf), nil, func(h *harness) {
			h.agent.createErr = api.Errorf(api.CodeUnavailable, "POST /v1/endpoints: dial unix /run/nvi/s1/nvid.sock: connect: no such file or directory")
		}, CodeTryAgainLater, "no such file"},
		{"veth fails", []byte(goodConf), nil, func(h *harness) {
			h.links.addErr = errIfaceExists
		}, CodeExists, "eth0"},
		{"attach fails", []byte(goodConf), nil, func(h *harness) {
			h.agent.attachErr = api.Errorf(api.CodeUnavailable, "port nvc1 was added but never bound")
		}, CodeTryAgainLater, "never bound"},
		{"attach refused", []byte(goodConf), nil, func(h *harness) {
			h.agent.attachErr = api.Errorf(api.CodeInvalid, "interface nvc1: no such device")
		}, CodeRefused, "no such device"},
	} {
		h := newHarness()
		if tc.prepare != nil {
			tc.prepare(h)
		}
		code, m, raw := h.call("ADD", tc.conf, tc.env)
		if code != 1 || errCode(m) != tc.code || m["msg"] == "" || !strings.Contains(m["details"].(string), tc.in) {
			t.Errorf("%s: exit %d, %s; want code %d mentioning %q", tc.name, code, raw, tc.code, tc.in)
		}
		if m["cniVersion"] != "1.1.0" {
			t.Errorf("%s: error without cniVersion: %s", tc.name, raw)
		}
		if len(h.agent.eps) != 0 || len(h.links.netns["nvi-s1"]) != 0 {
			t.Errorf("%s: left behind %v %v", tc.name, h.agent.eps, h.links.netns["nvi-s1"])
		}
	}
}

func TestSecondAddLeavesTheFirst(t *testing.T) {
	h := newHarness()
	if code, _, raw := h.call("ADD", []byte(goodConf), nil); code != 0 {
		t.Fatal(raw)
	}
	// Same attachment, the interface already there: refused before anything is made.
	code, m, raw := h.call("ADD", []byte(goodConf), nil)
	if code != 1 || errCode(m) != CodeExists {
		t.Fatalf("second ADD: %s", raw)
	}
	// Same attachment in another namespace: the agent says the endpoint exists.
	h.links.netns["/run/netns/other"] = map[string]LinkState{}
	code, m, raw = h.call("ADD", []byte(goodConf), map[string]string{"CNI_NETNS": "/run/netns/other"})
	if code != 1 || errCode(m) != CodeExists || !strings.Contains(m["details"].(string), "DEL first") {
		t.Fatalf("second ADD elsewhere: %s", raw)
	}
	if len(h.agent.deleted) != 0 || len(h.links.deleted) != 0 || len(h.agent.eps) != 1 || !h.links.netns["/run/netns/ctr"]["eth0"].Exists {
		t.Fatalf("the first attachment was touched: deleted %v %v, endpoints %v", h.agent.deleted, h.links.deleted, h.agent.eps)
	}
}

func TestDel(t *testing.T) {
	h := newHarness()
	// Never added: success, and nothing on stdout.
	if code, _, raw := h.call("DEL", []byte(goodConf), nil); code != 0 || raw != "" {
		t.Fatalf("DEL of nothing: %d %q", code, raw)
	}
	// Its namespace vanished: the endpoint still goes.
	if code, _, raw := h.call("ADD", []byte(goodConf), nil); code != 0 {
		t.Fatal(raw)
	}
	delete(h.links.netns, "/run/netns/ctr")
	if code, _, raw := h.call("DEL", []byte(goodConf), nil); code != 0 {
		t.Fatalf("DEL after the namespace vanished: %s", raw)
	}
	if len(h.agent.eps) != 0 || len(h.links.netns["nvi-s1"]) != 0 {
		t.Fatalf("left behind %v %v", h.agent.eps, h.links.netns)
	}
	// The agent cannot be asked: try again later.
	h.agent.deleteErr = api.Errorf(api.CodeUnavailable, "dial unix: connection refused")
	if code, m, raw := h.call("DEL", []byte(goodConf), nil); code != 1 || errCode(m) != CodeTryAgainLater {
		t.Fatalf("DEL with the agent down: %s", raw)
	}
	// A malformed configuration is an error even for DEL.
	if code, m, raw := h.call("DEL", []byte("{"), nil); code != 1 || errCode(m) != CodeDecodingFailure {
		t.Fatalf("DEL with bad config: %s", raw)
	}
}

func TestEnvironment(t *testing.T) {
	h := newHarness()
	for _, tc := range []struct {
		name string
		env  map[string]string
		in   string
	}{
		{"no command", map[string]string{"CNI_COMMAND": ""}, "CNI_COMMAND"},
		{"unknown command", map[string]string{"CNI_COMMAND": "FROB"}, "FROB"},
		{"no container", map[string]string{"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"},
		{"no netns and ifname", map[string]string{"CNI_NETNS": "", "CNI_IFNAME": ""}, "CNI_NETNS, CNI_IFNAME"},
		{"bad container", map[string]string{"CNI_CONTAINERID": "-x"}, "CNI_CONTAINERID"},
		{"bad ifname", map[string]string{"CNI_IFNAME": "eth0/1"}, "CNI_IFNAME"},
		{"long ifname", map[string]string{"CNI_IFNAME": "a234567890123456"}, "15"},
	} {
		cmd := "ADD"
		if c, ok := tc.env["CNI_COMMAND"]; ok {
			cmd = c
		}
		code, m, raw := h.call(cmd, []byte(goodConf), tc.env)
		if code != 1 || errCode(m) != CodeInvalidEnvironment || !strings.Contains(m["details"].(string), tc.in) {
			t.Errorf("%s: %s", tc.name, raw)
		}
	}
	if len(h.agent.eps) != 0 {
		t.Fatalf("endpoints made: %v", h.agent.eps)
	}
}

func TestVersion(t *testing.T) {
	h := newHarness()
	code, m, raw := h.call("VERSION", []byte(`{"cniVersion":"1.0.0"}`), nil)
	if code != 0 || m["cniVersion"] != "1.0.0" {
		t.Fatalf("VERSION: %s", raw)
	}
	var got []string
	for _, v := range m["supportedVersions"].([]any) {
		got = append(got, v.(string))
	}
	if !slices.Equal(got, SupportedVersions) {
		t.Fatalf("supportedVersions = %v", got)
	}
	if code, m, _ := h.call("VERSION", nil, nil); code != 0 || m["cniVersion"] != "1.1.0" {
		t.Fatalf("VERSION without input: %v", m)
	}
	// CHECK needs 0.4.0, STATUS and GC 1.1.0.
	for cmd, v := range map[string]string{"CHECK": "0.3.1", "STATUS": "1.0.0", "GC": "1.0.0"} {
		code, m, raw := h.call(cmd, conf(t, map[string]any{"cniVersion": v}), nil)
		if code != 1 || errCode(m) != CodeIncompatibleVersion || m["cniVersion"] != v {
			t.Errorf("%s with %s: %s", cmd, v, raw)
		}
	}
}

func TestStatus(t *testing.T) {
	h := newHarness()
	if code, _, raw := h.call("STATUS", []byte(goodConf), nil); code != 0 || raw != "" {
		t.Fatalf("STATUS: %d %s", code, raw)
	}
	h.agent.ready = false
	if code, m, raw := h.call("STATUS", []byte(goodConf), nil); code != 1 || errCode(m) != CodeNotAvailable || !strings.Contains(raw, "not ready") {
		t.Fatalf("STATUS, agent not ready: %s", raw)
	}
	h.agent.statusErr = api.Errorf(api.CodeUnavailable, "connection refused")
	if code, m, raw := h.call("STATUS", []byte(goodConf), nil); code != 1 || errCode(m) != CodeNotAvailable || !strings.Contains(raw, "does not answer") {
		t.Fatalf("STATUS, agent down: %s", raw)
	}
}

func TestGC(t *testing.T) {
	h := newHarness()
	ids := []string{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccccccccc"}
	for _, id := range ids {
		h.links.netns["/run/netns/"+id] = map[string]LinkState{}
		if code, _, raw := h.call("ADD", []byte(goodConf), map[string]string{"CNI_CONTAINERID": id, "CNI_NETNS": "/run/netns/" + id}); code != 0 {
			t.Fatal(raw)
		}
	}
	// Endpoints GC must not touch: another CNI network's, another tenant's, not the plugin's.
	other := conf(t, map[string]any{"name": "web2"})
	h.links.netns["/run/netns/o"] = map[string]LinkState{}
	if code, _, raw := h.call("ADD", other, map[string]string{"CNI_CONTAINERID": "dddd", "CNI_NETNS": "/run/netns/o"}); code != 0 {
		t.Fatal(raw)
	}
	h.agent.eps["globex/"+EndpointName("eeee", "eth0")] = &api.Endpoint{Tenant: "globex", Name: EndpointName("eeee", "eth0"), IfaceID: "cni:web:globex/x"}
	h.agent.eps["acme/db"] = &api.Endpoint{Tenant: "acme", Name: "db", IfaceID: "cni:web:acme/db"}

	gc := conf(t, map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": ids[1], "ifname": "eth0"}}})
	if code, _, raw := h.call("GC", gc, nil); code != 0 || raw != "" {
		t.Fatalf("GC: %d %s", code, raw)
	}
	var left []string
	for k := range h.agent.eps {
		left = append(left, k)
	}
	slices.Sort(left)
	want := []string{"acme/" + EndpointName(ids[1], "eth0"), "acme/" + EndpointName("dddd", "eth0"), "acme/db", "globex/" + EndpointName("eeee", "eth0")}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("after GC: %v, want %v", left, want)
	}
	if _, ok := h.links.netns["nvi-s1"][HostVeth(EndpointName(ids[0], "eth0"))]; ok {
		t.Fatal("GC left the stale veth")
	}
	// Errors are reported, and GC carries on past them.
	if code, _, raw := h.call("ADD", []byte(goodConf), map[string]string{"CNI_CONTAINERID": ids[0], "CNI_NETNS": "/run/netns/" + ids[0]}); code != 0 {
		t.Fatal(raw)
	}
	h.agent.deleteErr = api.Errorf(api.CodeUnavailable, "gone")
	if code, m, raw := h.call("GC", conf(t, nil), nil); code != 1 || errCode(m) != CodeTryAgainLater || strings.Count(raw, "deleting stale endpoint") != 2 {
		t.Fatalf("GC with failing deletes: %s", raw)
	}
}

// FuzzRun feeds any configuration, command and CNI_ARGS to the plugin (with
// in-memory agent and links): it never panics, exits 0 or 1, and on 1 prints
// the specification's error object.
func FuzzRun(f *testing.F) {
	f.Add([]byte(goodConf), "ADD", "")
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","tenant":"acme","network":"web","prevResult":{"ips":[]}}`), "CHECK", "IP=10.1.0.9")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","tenant":"acme","network":"web","cni.dev/valid-attachments":[{"containerID":"x","ifname":"eth0"}]}`), "GC", "")
	f.Add([]byte(`{`), "DEL", "a=b;c")
	f.Fuzz(func(t *testing.T, stdin []byte, cmd, args string) {
		h := newHarness()
		code, m, raw := h.call(cmd, stdin, map[string]string{"CNI_ARGS": args})
		switch code {
		case 0:
		case 1:
			if m == nil || errCode(m) == 0 || m["msg"] == "" || m["cniVersion"] == nil {
				t.Fatalf("exit 1 without a well-formed error: %q", raw)
			}
		default:
			t.Fatalf("exit %d", code)
		}
	})
}
