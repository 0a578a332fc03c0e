package docker

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"nvi/api"
	"nvi/directory"
	"nvi/ipam"
)

// fakeNVI is the agent of server s2 and the directory it reads, in memory,
// with NVI's rules: names unique per tenant, addresses unique per tenant,
// s2's addresses from its block 10.1.0.16/28 (the first block a second
// server claims in a /24), endpoints of other servers out of reach.
type fakeNVI struct {
	mu        sync.Mutex
	server    string
	networks  map[string]directory.Network
	endpoints map[string]*api.Endpoint // "tenant/name"
	links     *fakeLinks
	fail      map[string]string // operation -> error, for the next call only
}

func newFakeNVI(links *fakeLinks) *fakeNVI {
	f := &fakeNVI{server: "s2", networks: map[string]directory.Network{}, endpoints: map[string]*api.Endpoint{}, links: links, fail: map[string]string{}}
	f.networks["acme/web"] = directory.Network{Tenant: "acme", Name: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("10.1.0.1")}
	f.networks["acme/db"] = directory.Network{Tenant: "acme", Name: "db", CIDR: netip.MustParsePrefix("10.2.0.0/24"), Gateway: netip.MustParseAddr("10.2.0.1")}
	// A lab workload on s1, as "nvictl lab workload add dkw1 --server s1" makes it.
	f.endpoints["acme/dkw1"] = &api.Endpoint{Tenant: "acme", Network: "web", Name: "dkw1", IP: netip.MustParseAddr("10.1.0.2"), PrefixLen: 24,
		Gateway: netip.MustParseAddr("10.1.0.1"), MAC: "0a:66:0a:01:00:02", Server: "s1", IfaceID: "acme/dkw1", Bound: true, OFPort: 2}
	return f
}

// failing reports (and forgets) an injected failure of op.
func (f *fakeNVI) failing(op string) error {
	if msg, ok := f.fail[op]; ok {
		delete(f.fail, op)
		return api.Errorf(api.CodeUnavailable, "%s", msg)
	}
	return nil
}

func (f *fakeNVI) CreateEndpoint(ctx context.Context, req api.CreateEndpointRequest) (api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failing("create"); err != nil {
		return api.Endpoint{}, err
	}
	nw, ok := f.networks[req.Tenant+"/"+req.Network]
	if !ok {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "network %s/%s does not exist", req.Tenant, req.Network)
	}
	if _, ok := f.endpoints[req.Tenant+"/"+req.Name]; ok {
		return api.Endpoint{}, api.Errorf(api.CodeExists, "endpoint %s/%s already exists", req.Tenant, req.Name)
	}
	ip := req.IP
	if ip.IsValid() {
		if other := f.byIP(req.Tenant, ip); other != nil {
			return api.Endpoint{}, api.Errorf(api.CodeConflict, "address %s is already used by %s/%s", ip, req.Tenant, other.Name)
		}
	} else {
		for a := netip.MustParseAddr("10.1.0.16"); ; a = a.Next() {
			if !netip.MustParsePrefix("10.1.0.16/28").Contains(a) {
				return api.Endpoint{}, api.Errorf(api.CodeConflict, "no free address in this server's blocks")
			}
			if f.byIP(req.Tenant, a) == nil {
				ip = a
				break
			}
		}
	}
	mac := req.MAC
	if mac == "" {
		mac, _ = ipam.MACFor(req.Tenant, ip)
	}
	ep := &api.Endpoint{Tenant: req.Tenant, Network: req.Network, Name: req.Name, IP: ip, PrefixLen: nw.CIDR.Bits(), Gateway: nw.Gateway,
		MAC: mac, Server: f.server, IfaceID: req.Tenant + "/" + req.Name}
	f.endpoints[req.Tenant+"/"+req.Name] = ep
	return *ep, nil
}

func (f *fakeNVI) byIP(tenant string, ip netip.Addr) *api.Endpoint {
	for _, e := range f.endpoints {
		if e.Tenant == tenant && e.IP == ip {
			return e
		}
	}
	return nil
}

func (f *fakeNVI) AttachEndpoint(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failing("attach"); err != nil {
		return api.Endpoint{}, err
	}
	ep, ok := f.endpoints[req.Tenant+"/"+req.Name]
	if !ok {
		return api.Endpoint{}, api.Errorf(api.CodeNotFound, "endpoint %s/%s does not exist", req.Tenant, req.Name)
	}
	if ep.Server != f.server {
		return api.Endpoint{}, api.Errorf(api.CodeConflict, "endpoint %s/%s lives on server %s", req.Tenant, req.Name, ep.Server)
	}
	if !f.links.exists(req.Interface) {
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "interface %s does not exist", req.Interface)
	}
	ep.Bound, ep.Interface, ep.OFPort = true, req.Interface, 7
	return *ep, nil
}

func (f *fakeNVI) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failing("delete"); err != nil {
		return err
	}
	ep, ok := f.endpoints[tenant+"/"+name]
	if !ok {
		return api.Errorf(api.CodeNotFound, "endpoint %s/%s does not exist", tenant, name)
	}
	if ep.Server != f.server {
		return api.Errorf(api.CodeConflict, "endpoint %s/%s lives on server %s, not on %s", tenant, name, ep.Server, f.server)
	}
	delete(f.endpoints, tenant+"/"+name)
	return nil
}

func (f *fakeNVI) ServerEndpoints(ctx context.Context) ([]api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Endpoint
	for _, e := range f.endpoints {
		if e.Server == f.server {
			ep := *e
			// A port whose interface vanished is no longer bound.
			ep.Bound = ep.Bound && f.links.exists(ep.Interface)
			out = append(out, ep)
		}
	}
	return out, nil
}

func (f *fakeNVI) Network(ctx context.Context, tenant, name string) (directory.Network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failing("directory"); err != nil {
		return directory.Network{}, fmt.Errorf("%w: %w", directory.ErrUnavailable, err)
	}
	nw, ok := f.networks[tenant+"/"+name]
	if !ok {
		return nw, fmt.Errorf("network %s/%s: %w", tenant, name, directory.ErrNotFound)
	}
	return nw, nil
}

func (f *fakeNVI) record(e *api.Endpoint) directory.Endpoint {
	return directory.Endpoint{Tenant: e.Tenant, Network: e.Network, Name: e.Name, IP: e.IP, MAC: e.MAC, Server: e.Server, Port: e.OFPort, IfaceID: e.IfaceID}
}

func (f *fakeNVI) Endpoint(ctx context.Context, tenant, name string) (directory.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.endpoints[tenant+"/"+name]
	if !ok {
		return directory.Endpoint{}, fmt.Errorf("endpoint %s/%s: %w", tenant, name, directory.ErrNotFound)
	}
	return f.record(e), nil
}

func (f *fakeNVI) EndpointByIP(ctx context.Context, tenant string, ip netip.Addr) (directory.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.byIP(tenant, ip)
	if e == nil {
		return directory.Endpoint{}, fmt.Errorf("no endpoint has address %s in tenant %s: %w", ip, tenant, directory.ErrNotFound)
	}
	return f.record(e), nil
}

// names lists the endpoints as "tenant/name", with " (bound to IFACE)" for
// bound ones.
func (f *fakeNVI) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []string{}
	for k, e := range f.endpoints {
		if e.Server == f.server && e.Bound && f.links.exists(e.Interface) {
			k += " bound to " + e.Interface
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fakeLinks is the kernel's interfaces, by name.
type fakeLinks struct {
	mu    sync.Mutex
	links map[string]string // name -> MAC ("" for host ends)
	fail  map[string]string
}

func newFakeLinks() *fakeLinks {
	return &fakeLinks{links: map[string]string{}, fail: map[string]string{}}
}

func (l *fakeLinks) exists(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.links[name]
	return ok
}

func (l *fakeLinks) AddVeth(ctx context.Context, ctr, host, mac string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if msg, ok := l.fail["addveth"]; ok {
		delete(l.fail, "addveth")
		return fmt.Errorf("ip link add %s: %s", ctr, msg)
	}
	for _, n := range []string{ctr, host} {
		if _, ok := l.links[n]; ok {
			return fmt.Errorf("ip link add %s: RTNETLINK answers: File exists", n)
		}
	}
	l.links[ctr], l.links[host] = mac, ""
	return nil
}

func (l *fakeLinks) DeleteVeth(ctx context.Context, ctr, host string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.links, ctr)
	delete(l.links, host)
	return nil
}

func (l *fakeLinks) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []string{}
	for n := range l.links {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
