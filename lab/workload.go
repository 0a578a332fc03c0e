package lab

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"nvi/api"
)

var workloadRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,30}$`)

// WorkloadSpec asks for a workload.
type WorkloadSpec struct {
	Name    string
	Server  string
	Tenant  string
	Network string
	IP      netip.Addr // zero: assigned from the network
}

// vethName names a workload's host-side interface: readable when the name
// fits in Linux's 15 characters, hashed when not.
func vethName(name string) string {
	if len(name) <= 12 && !strings.ContainsAny(name, "._") {
		return "nv-" + name
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("nv-%08x", h.Sum32())
}

// AddWorkload creates a workload as a network namespace called spec.Name,
// plugged into its server's bridge as an NVI endpoint: the endpoint is
// created through the server's agent (which assigns the address when none is
// given), then the interface is made and handed to the agent to attach. On
// failure nothing is left behind.
func AddWorkload(ctx context.Context, prefix string, spec WorkloadSpec) (w Workload, err error) {
	if prefix == "" {
		prefix = "nvi"
	}
	unlock, st, sv, err := beginWorkload(prefix, spec.Name, spec.Server)
	if err != nil {
		return w, err
	}
	defer unlock()
	agent := api.NewLocalClient(sv.Socket, 20*time.Second)
	defer agent.Close()
	ep, err := agent.CreateEndpoint(ctx, api.CreateEndpointRequest{
		Tenant: spec.Tenant, Network: spec.Network, Name: spec.Name, IP: spec.IP,
	})
	if err != nil {
		return w, err
	}
	w = Workload{
		Name: spec.Name, Server: sv.Name, Tenant: ep.Tenant, Network: ep.Network,
		IP: ep.IP, MAC: ep.MAC, Veth: vethName(spec.Name),
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
	if _, err = agent.AttachEndpoint(ctx, api.AttachRequest{Tenant: ep.Tenant, Name: ep.Name, Interface: w.Veth}); err != nil {
		return w, err
	}
	return w, nil
}

// enlist notes a new workload, whose endpoint the agent has just created,
// in the lab's state, and returns what undoes it all should making it fail
// later: the endpoint, a VM's NIC process and tap, the guest's namespace,
// the state entry.
func enlist(st *State, sv Server, agent *api.LocalClient, w *Workload) (undo func(), err error) {
	undo = func() {
		ctx := context.Background()
		_ = agent.DeleteEndpoint(ctx, w.Tenant, w.Name)
		killWait(w.NICPID, 2*time.Second)
		if w.Tap != "" {
			_, _ = inNetns(ctx, sv.Netns, "ip", "link", "del", w.Tap)
		}
		_ = deleteNetns(ctx, w.Name)
	}
	st.Workloads = append(st.Workloads, *w)
	if err := st.save(); err != nil {
		undo()
		return nil, err
	}
	return func() {
		undo()
		st.Workloads = st.Workloads[:len(st.Workloads)-1]
		_ = st.save()
	}, nil
}

// beginWorkload checks a new workload's name and server and takes the
// lab's lock; the caller releases it.
func beginWorkload(prefix, name, server string) (unlock func(), st *State, sv Server, err error) {
	if err := Preflight(); err != nil {
		return nil, nil, sv, err
	}
	if !workloadRe.MatchString(name) {
		return nil, nil, sv, fmt.Errorf("workload name %q: want 1-31 lowercase letters, digits, '-', '_' or '.'", name)
	}
	if name == UnderlayNetns(prefix) || name == InternetNetns(prefix) || name == MgmtNetns(prefix) || regexp.MustCompile(`^`+prefix+`-s[0-9]+$`).MatchString(name) {
		return nil, nil, sv, fmt.Errorf("workload name %q is the name of one of the lab's own namespaces", name)
	}
	release, err := lock(prefix)
	if err != nil {
		return nil, nil, sv, err
	}
	if st, err = Load(prefix); err == nil {
		sv, err = st.Server(server)
	}
	if err == nil {
		if _, ok := st.Workload(name); ok || netnsExists(name) {
			err = fmt.Errorf("workload %q already exists (a network namespace of that name is there)", name)
		}
	}
	if err != nil {
		release()
		return nil, nil, sv, err
	}
	return release, st, sv, nil
}

// plumbGuest makes the guest side of a workload: a network namespace whose
// eth0 has the endpoint's MAC and address and routes through its gateway,
// the other end of the pair (nic) in the server's namespace.
func plumbGuest(ctx context.Context, ns, serverNS, nic string, ep api.Endpoint) error {
	return PlumbGuest(ctx, Guest{
		Netns: ns, HostNetns: serverNS, HostIface: nic, MAC: ep.MAC,
		Addr: netip.PrefixFrom(ep.IP, ep.PrefixLen), Gateway: ep.Gateway,
	})
}

// RemoveWorkload deletes a workload: its endpoint (through its agent, which
// tears down its sessions and port) and its namespace.
func RemoveWorkload(ctx context.Context, prefix, name string) error {
	if prefix == "" {
		prefix = "nvi"
	}
	unlock, err := lock(prefix)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := Load(prefix)
	if err != nil {
		return err
	}
	w, ok := st.Workload(name)
	if !ok {
		return fmt.Errorf("no workload %q in this lab", name)
	}
	sv, err := st.Server(w.Server)
	if err != nil {
		return err
	}
	agent := api.NewLocalClient(sv.Socket, 20*time.Second)
	defer agent.Close()
	if err := agent.DeleteEndpoint(ctx, w.Tenant, w.Name); err != nil && api.CodeOf(err) != api.CodeNotFound {
		return err
	}
	killWait(w.NICPID, 2*time.Second) // a VM's NIC process; its tap goes with it
	if err := deleteNetns(ctx, name); err != nil {
		return err
	}
	for i := range st.Workloads {
		if st.Workloads[i].Name == name {
			st.Workloads = append(st.Workloads[:i], st.Workloads[i+1:]...)
			break
		}
	}
	return st.save()
}
