package lab

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"nvi/api"
)

// VMSpec asks for a lab VM.
type VMSpec struct {
	Name    string
	Server  string
	Tenant  string
	Network string
	IP      netip.Addr // zero: assigned from the network
}

// vmIDs derives what libvirt would generate for a VM: a MAC in QEMU's
// 52:54:00 range and UUIDs for the port (iface-id) and the domain.
func vmIDs(name string) (mac, ifaceID, vmID string) {
	h := fnv.New64a()
	h.Write([]byte(name))
	s := h.Sum64()
	mac = fmt.Sprintf("52:54:00:%02x:%02x:%02x", byte(s>>16), byte(s>>8), byte(s))
	uuid := func(x uint64) string {
		return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", uint32(x>>32), uint16(x>>16), uint16(x)&0xfff, uint16(x>>20)&0xfff, x&0xffffffffffff)
	}
	return mac, uuid(s), uuid(s ^ 0x9e3779b97f4a7c15)
}

// AddVM makes a lab VM: its endpoint is recorded through the server's agent
// with the iface-id a hypervisor would give it, its tap is created by a NIC
// process as QEMU creates one, and the tap is plugged into the bridge with
// ovs-vsctl exactly as libvirt does for an <interface type='bridge'> with
// <virtualport type='openvswitch'>. The agent binds it like any
// hypervisor's port. On failure nothing is left behind.
func AddVM(ctx context.Context, prefix string, spec VMSpec) (w Workload, err error) {
	if prefix == "" {
		prefix = "nvi"
	}
	unlock, st, sv, err := beginWorkload(prefix, spec.Name, spec.Server)
	if err != nil {
		return w, err
	}
	defer unlock()
	mac, ifaceID, vmID := vmIDs(prefix + "/" + spec.Name)
	agent := api.NewLocalClient(sv.Socket, 20*time.Second)
	defer agent.Close()
	ep, err := agent.CreateEndpoint(ctx, api.CreateEndpointRequest{
		Tenant: spec.Tenant, Network: spec.Network, Name: spec.Name, IP: spec.IP, MAC: mac, IfaceID: ifaceID,
	})
	if err != nil {
		return w, err
	}
	short := vethName(spec.Name)[3:] // at most 12 characters
	w = Workload{
		Name: spec.Name, Server: sv.Name, Tenant: ep.Tenant, Network: ep.Network,
		IP: ep.IP, MAC: ep.MAC, Veth: "vmn-" + short, Tap: "vnet-" + short,
	}
	if len(w.Tap) > 15 {
		w.Tap, w.Veth = w.Tap[:15], w.Veth[:15]
	}
	undo, err := enlist(st, sv, agent, &w)
	if err != nil {
		return w, err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	if err = plumbGuest(ctx, spec.Name, sv.Netns, w.Veth, ep); err != nil {
		return w, err
	}
	nvictl, err := os.Executable()
	if err != nil {
		return w, err
	}
	pid, err := spawn(sv.Netns, filepath.Join(sv.Dir, "vm-"+spec.Name+".log"), nvictl, "lab", "tap-nic", "--tap", w.Tap, "--nic", w.Veth)
	if err != nil {
		return w, err
	}
	w.NICPID = pid
	st.Workloads[len(st.Workloads)-1] = w
	if err = st.save(); err != nil {
		return w, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = waitFor(wctx, 50*time.Millisecond, func() error {
		if !alive(pid) {
			return errors.New("the VM's NIC process exited: " + tail(filepath.Join(sv.Dir, "vm-"+spec.Name+".log")))
		}
		_, err := inNetns(wctx, sv.Netns, "ip", "link", "show", w.Tap)
		return err
	}); err != nil {
		return w, err
	}
	// libvirt's virNetDevOpenvswitchAddPort, verbatim in effect.
	if _, err = run(ctx, "ovs-vsctl", "--db=unix:"+filepath.Join(sv.Dir, "db.sock"), "--timeout=5",
		"--", "--if-exists", "del-port", w.Tap,
		"--", "add-port", BridgeName, w.Tap,
		"--", "set", "Interface", w.Tap, `external-ids:attached-mac="`+mac+`"`,
		"--", "set", "Interface", w.Tap, `external-ids:iface-id="`+ifaceID+`"`,
		"--", "set", "Interface", w.Tap, `external-ids:vm-id="`+vmID+`"`,
		"--", "set", "Interface", w.Tap, "external-ids:iface-status=active"); err != nil {
		return w, err
	}
	err = waitFor(wctx, 50*time.Millisecond, func() error {
		eps, err := agent.Endpoints(wctx)
		if err != nil {
			return err
		}
		for _, e := range eps {
			if e.Tenant == ep.Tenant && e.Name == ep.Name && e.Bound {
				return nil
			}
		}
		return errors.New("the agent has not bound the VM's port")
	})
	return w, err
}
