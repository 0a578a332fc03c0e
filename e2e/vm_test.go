package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vm is a guest behind a tap device, plugged the way libvirt and Nova plug
// one into Open vSwitch.
type vm struct {
	netns, tap, ip string
}

// startVM makes the guest side (a namespace with the guest's NIC) and the
// process that owns the tap, in the server's namespace, as QEMU would.
func (l *Lab) startVM(t *testing.T, name, server, mac, ip, gw string, prefixLen int) vm {
	t.Helper()
	v := vm{netns: l.Prefix + "-" + name, tap: "vnet-" + name, ip: ip}
	srvNS := l.server(server)
	nic := "vmn-" + name
	t.Cleanup(func() { sh2("ip", "netns", "del", v.netns) }) // takes the veth pair with it
	for _, step := range [][]string{
		{"ip", "netns", "add", v.netns},
		{"ip", "netns", "exec", v.netns, "ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "eth0", "netns", v.netns, "type", "veth", "peer", "name", nic, "netns", srvNS},
		{"ip", "netns", "exec", v.netns, "ip", "link", "set", "eth0", "address", mac},
		{"ip", "netns", "exec", v.netns, "ip", "addr", "add", fmt.Sprintf("%s/%d", ip, prefixLen), "dev", "eth0"},
		{"ip", "netns", "exec", v.netns, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", v.netns, "ip", "route", "add", "default", "via", gw},
		{"ip", "netns", "exec", v.netns, "ethtool", "-K", "eth0", "tx", "off"},
		{"ip", "netns", "exec", srvNS, "ethtool", "-K", nic, "tx", "off"},
		{"ip", "netns", "exec", srvNS, "ip", "link", "set", nic, "up"},
	} {
		if r := sh2(step...); r.Code != 0 {
			t.Fatalf("%v: %s", step, r)
		}
	}
	q := l.start(srvNS, filepath.Join(bin, "nvictl"), "lab", "tap-nic", "--tap", v.tap, "--nic", nic)
	eventually(t, 5*time.Second, "the VM's tap is open", func() error {
		if !strings.Contains(q.out.String(), "ready") {
			return fmt.Errorf("not yet: %s", q.err.String())
		}
		return nil
	})
	return v
}

// plug adds the tap to the bridge exactly as libvirt does for an
// <interface type='bridge'> with <virtualport type='openvswitch'>.
func (l *Lab) plug(t *testing.T, server string, v vm, mac, ifaceID, vmID string) {
	t.Helper()
	db := "--db=unix:" + filepath.Join(l.runDir(), server, "db.sock")
	r := sh2("ovs-vsctl", db, "--timeout=5", "--", "--if-exists", "del-port", v.tap, "--",
		"add-port", "br-nvi", v.tap, "--",
		"set", "Interface", v.tap, `external-ids:attached-mac="`+mac+`"`, "--",
		"set", "Interface", v.tap, `external-ids:iface-id="`+ifaceID+`"`, "--",
		"set", "Interface", v.tap, `external-ids:vm-id="`+vmID+`"`, "--",
		"set", "Interface", v.tap, "external-ids:iface-status=active")
	if r.Code != 0 {
		t.Fatalf("plugging %s: %s", v.tap, r)
	}
}

func (l *Lab) unplug(t *testing.T, server string, v vm) {
	t.Helper()
	db := "--db=unix:" + filepath.Join(l.runDir(), server, "db.sock")
	if r := sh2("ovs-vsctl", db, "--timeout=5", "del-port", "br-nvi", v.tap); r.Code != 0 {
		t.Fatalf("unplugging %s: %s", v.tap, r)
	}
}

// endpoint reads one endpoint record.
func (l *Lab) endpoint(t *testing.T, tenant, name string) (ip string, port int) {
	t.Helper()
	var eps []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
		Port int    `json:"port"`
	}
	if err := json.Unmarshal([]byte(l.must("endpoint", "list", "--tenant", tenant, "-o", "json")), &eps); err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		if e.Name == name {
			return e.IP, e.Port
		}
	}
	t.Fatalf("no endpoint %s/%s", tenant, name)
	return "", 0
}

// TestVMTapPort: a VM's tap is plugged into a server's bridge the way
// libvirt and Nova do it, labelled with the iface-id of an endpoint
// recorded with nvictl; the agent binds it, the VM talks to a workload on
// another server, and unplugging unbinds it. A port whose iface-id has no
// endpoint yet waits, and binds when the endpoint is recorded.
func TestVMTapPort(t *testing.T) {
	l := newLab(t, 2)
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	w1 := l.workload(l.Prefix+"-w1", "s1", "acme/web")
	const (
		mac    = "52:54:00:12:34:56"
		ifID   = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
		vmUUID = "6a2f41a3-c54c-fce8-32d2-0324e1c32e22"
	)
	l.must("endpoint", "create", "acme/vm1", "--net", "web", "--server", "s2", "--mac", mac, "--iface-id", ifID)
	ip, _ := l.endpoint(t, "acme", "vm1")
	guest := l.startVM(t, "vm1", "s2", mac, ip, "10.1.0.1", 24)
	l.plug(t, "s2", guest, mac, ifID, vmUUID)
	eventually(t, 10*time.Second, "the VM's port is bound", func() error {
		if _, port := l.endpoint(t, "acme", "vm1"); port == 0 {
			return fmt.Errorf("endpoint has no port yet")
		}
		return nil
	})
	if r := l.in(guest.netns, 20*time.Second, "ping", "-c", "3", "-i", "0.2", "-W", "2", w1.IP); r.Code != 0 {
		t.Fatalf("VM -> w1: %s", r)
	}
	if r := l.ping(w1, ip); r.Code != 0 {
		t.Fatalf("w1 -> VM: %s", r)
	}
	_, port := l.endpoint(t, "acme", "vm1")
	l.unplug(t, "s2", guest)
	eventually(t, 10*time.Second, "the VM's flows are gone", func() error {
		if fs := l.flows("s2", fmt.Sprintf("0x%x/0xffffffffffffffff", 0x2000000000000000|port)); len(fs) != 0 {
			return fmt.Errorf("still %d flows of port %d", len(fs), port)
		}
		return nil
	})
	if r := l.in(guest.netns, 10*time.Second, "ping", "-c", "1", "-W", "1", w1.IP); r.Code == 0 {
		t.Fatal("the unplugged VM still reaches w1")
	}

	// A port that comes before its endpoint record.
	const mac2, ifID2 = "52:54:00:12:34:57", "c0ffee00-0000-4000-8000-000000000002"
	g2 := l.startVM(t, "vm2", "s2", mac2, "10.1.0.77", "10.1.0.1", 24)
	l.plug(t, "s2", g2, mac2, ifID2, vmUUID)
	time.Sleep(time.Second)
	if r := l.in(g2.netns, 10*time.Second, "ping", "-c", "1", "-W", "1", w1.IP); r.Code == 0 {
		t.Fatal("a port with no endpoint reaches w1")
	}
	l.must("endpoint", "create", "acme/vm2", "--net", "web", "--server", "s2", "--mac", mac2, "--iface-id", ifID2, "--ip", "10.1.0.77")
	eventually(t, 10*time.Second, "the waiting port binds", func() error {
		if r := l.in(g2.netns, 10*time.Second, "ping", "-c", "1", "-W", "1", w1.IP); r.Code != 0 {
			return fmt.Errorf("vm2 -> w1: %s", r)
		}
		return nil
	})
}
