package docker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"

	"nvi/api"
	"nvi/directory"
)

// Agent is what the driver asks of the local nvid; *api.LocalClient is one.
type Agent interface {
	CreateEndpoint(ctx context.Context, req api.CreateEndpointRequest) (api.Endpoint, error)
	AttachEndpoint(ctx context.Context, req api.AttachRequest) (api.Endpoint, error)
	DeleteEndpoint(ctx context.Context, tenant, name string) error
	ServerEndpoints(ctx context.Context) ([]api.Endpoint, error)
}

// Directory is what the driver reads from the directory; *directory.Store
// is one.
type Directory interface {
	Network(ctx context.Context, tenant, name string) (directory.Network, error)
	Endpoint(ctx context.Context, tenant, name string) (directory.Endpoint, error)
	EndpointByIP(ctx context.Context, tenant string, ip netip.Addr) (directory.Endpoint, error)
}

// Config assembles a Driver.
type Config struct {
	// Name is the plugin's name (its socket's file name), for messages
	// that tell the user what to type; default "nvi".
	Name      string
	Agent     Agent
	Directory Directory
	State     State
	Links     Links
	Log       *slog.Logger
}

// Driver is the network and IPAM driver. Its methods are safe for
// concurrent use; calls about one Docker endpoint or network are
// serialised.
type Driver struct {
	name  string
	agent Agent
	dir   Directory
	state State
	links Links
	log   *slog.Logger
	locks keyedMutex
}

// New returns a driver; Agent, Directory, State and Links are required.
func New(cfg Config) (*Driver, error) {
	if cfg.Agent == nil || cfg.Directory == nil || cfg.State == nil || cfg.Links == nil {
		return nil, errors.New("docker: driver needs an agent, a directory, a state store and links")
	}
	if cfg.Name == "" {
		cfg.Name = "nvi"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Driver{name: cfg.Name, agent: cfg.Agent, dir: cfg.Directory, state: cfg.State, links: cfg.Links, log: cfg.Log}, nil
}

// reservationPrefix starts the name of every NVI endpoint the IPAM driver
// creates; reservationRe matches the whole name.
const reservationPrefix = "docker-"

var reservationRe = regexp.MustCompile(`^docker-[0-9a-f]{12}$`)

// reservationName names the NVI endpoint of the container with MAC mac, and
// returns the MAC in canonical form.
func reservationName(mac string) (name, canonical string, err error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return "", "", fmt.Errorf("MAC address %q: want six octets like 02:42:0a:01:00:05", mac)
	}
	return reservationPrefix + hex.EncodeToString(hw), hw.String(), nil
}

var idRe = regexp.MustCompile(`^[0-9a-f]{12,64}$`)

func checkID(kind, id string) error {
	if !idRe.MatchString(id) {
		return fmt.Errorf("malformed %s ID %q: want 12 to 64 lowercase hex digits", kind, id)
	}
	return nil
}

// vethNames are the container and host ends of a Docker endpoint's veth
// pair: at most 15 characters, derived from the endpoint ID so that they
// need no record.
func vethNames(endpointID string) (ctr, host string) {
	return "nvc" + endpointID[:12], "nvh" + endpointID[:12]
}

// usage is the command that makes an NVI network for Docker.
func (d *Driver) usage(ref string) string {
	if ref == "" {
		ref = "TENANT/NET"
	}
	return fmt.Sprintf("docker network create -d %[1]s --ipam-driver %[1]s -o %[2]s=%[3]s --ipam-opt %[2]s=%[3]s NAME", d.name, NetworkOption, ref)
}

// network reads an NVI network, with errors that say what to do.
func (d *Driver) network(ctx context.Context, tenant, name string) (directory.Network, error) {
	nw, err := d.dir.Network(ctx, tenant, name)
	if errors.Is(err, directory.ErrNotFound) {
		return nw, fmt.Errorf("NVI network %s/%s does not exist (create it first: nvictl net create %s/%s --cidr CIDR)", tenant, name, tenant, name)
	}
	if err != nil {
		return nw, fmt.Errorf("reading NVI network %s/%s: %w", tenant, name, err)
	}
	return nw, nil
}

// ----- network driver -----

func (d *Driver) createNetwork(ctx context.Context, req createNetworkRequest) (empty, error) {
	if err := checkID("network", req.NetworkID); err != nil {
		return empty{}, err
	}
	ref, err := d.networkOption(req.Options)
	if err != nil {
		return empty{}, err
	}
	tenant, name, err := directory.ParseNetRef(ref)
	if err != nil {
		return empty{}, fmt.Errorf("-o %s=%s: %w", NetworkOption, ref, err)
	}
	nw, err := d.network(ctx, tenant, name)
	if err != nil {
		return empty{}, err
	}
	if len(req.IPv6Data) > 0 {
		return empty{}, errors.New("NVI networks are IPv4 only: drop --ipv6")
	}
	if len(req.IPv4Data) != 1 {
		return empty{}, fmt.Errorf("want exactly one IPv4 pool, got %d: %s", len(req.IPv4Data), d.usage(ref))
	}
	pool := req.IPv4Data[0]
	if pool.AddressSpace != LocalAddressSpace && pool.AddressSpace != GlobalAddressSpace {
		return empty{}, fmt.Errorf("the network's addresses must come from NVI (its pool is in address space %q, not NVI's): %s", pool.AddressSpace, d.usage(ref))
	}
	if p, err := netip.ParsePrefix(pool.Pool); err != nil || p.Masked() != nw.CIDR {
		return empty{}, fmt.Errorf("the IPAM pool %q is not the CIDR %s of NVI network %s: -o and --ipam-opt must name the same network: %s", pool.Pool, nw.CIDR, ref, d.usage(ref))
	}
	if pool.Gateway != "" {
		if gw, err := netip.ParsePrefix(pool.Gateway); err != nil || gw.Addr() != nw.Gateway {
			return empty{}, fmt.Errorf("gateway %q is not NVI network %s's gateway %s", pool.Gateway, ref, nw.Gateway)
		}
	}
	if len(pool.AuxAddresses) > 0 {
		return empty{}, errors.New("auxiliary addresses (--aux-address) are not supported: NVI gives addresses to endpoints only")
	}
	unlock := d.locks.lock("n/" + req.NetworkID)
	defer unlock()
	rec := NetworkRecord{ID: req.NetworkID, Tenant: tenant, Network: name, CIDR: nw.CIDR, Gateway: nw.Gateway}
	if err := d.state.PutNetwork(ctx, rec); err != nil {
		return empty{}, err
	}
	d.log.Info("docker: network created", "network_id", short(req.NetworkID), "nvi_network", ref, "cidr", nw.CIDR)
	return empty{}, nil
}

// networkOption finds nvi.network among the -o options and refuses any
// other.
func (d *Driver) networkOption(opts map[string]any) (string, error) {
	generic, _ := opts[genericOptions].(map[string]any)
	var unknown []string
	for k := range generic {
		if k != NetworkOption {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return "", fmt.Errorf("unknown network option %s: the NVI driver takes only -o %s=TENANT/NET", strings.Join(unknown, ", "), NetworkOption)
	}
	v, ok := generic[NetworkOption]
	if !ok {
		return "", fmt.Errorf("no NVI network named: %s", d.usage(""))
	}
	ref, ok := v.(string)
	if !ok || ref == "" {
		return "", fmt.Errorf("-o %s must be TENANT/NET, not %v", NetworkOption, v)
	}
	return ref, nil
}

func (d *Driver) networkRecord(ctx context.Context, id string) (NetworkRecord, error) {
	rec, ok, err := d.state.Network(ctx, id)
	if err != nil {
		return rec, err
	}
	if !ok {
		return rec, fmt.Errorf("unknown network %s: the NVI plugin did not create it (or its record is gone)", short(id))
	}
	return rec, nil
}

func (d *Driver) endpointRecord(ctx context.Context, networkID, id string) (EndpointRecord, error) {
	rec, ok, err := d.state.Endpoint(ctx, id)
	if err != nil {
		return rec, err
	}
	if !ok {
		return rec, fmt.Errorf("unknown endpoint %s: the NVI plugin did not create it (or it is already deleted)", short(id))
	}
	if networkID != "" && rec.NetworkID != networkID {
		return rec, fmt.Errorf("endpoint %s is in network %s, not %s", short(id), short(rec.NetworkID), short(networkID))
	}
	return rec, nil
}

func (d *Driver) deleteNetwork(ctx context.Context, req networkRequest) (empty, error) {
	unlock := d.locks.lock("n/" + req.NetworkID)
	defer unlock()
	rec, err := d.networkRecord(ctx, req.NetworkID)
	if err != nil {
		return empty{}, err
	}
	if err := d.state.DeleteNetwork(ctx, req.NetworkID); err != nil {
		return empty{}, err
	}
	d.log.Info("docker: network deleted", "network_id", short(req.NetworkID), "nvi_network", rec.Tenant+"/"+rec.Network)
	return empty{}, nil
}

func (d *Driver) createEndpoint(ctx context.Context, req createEndpointRequest) (createEndpointResponse, error) {
	var none createEndpointResponse
	if err := checkID("endpoint", req.EndpointID); err != nil {
		return none, err
	}
	nrec, err := d.networkRecord(ctx, req.NetworkID)
	if err != nil {
		return none, err
	}
	ref := nrec.Tenant + "/" + nrec.Network
	in := req.Interface
	if in == nil || in.Address == "" || in.MacAddress == "" {
		return none, fmt.Errorf("endpoint %s has no address or MAC from NVI's IPAM driver: %s", short(req.EndpointID), d.usage(ref))
	}
	if in.AddressIPv6 != "" {
		return none, errors.New("NVI networks are IPv4 only")
	}
	addr, err := netip.ParsePrefix(in.Address)
	if err != nil {
		return none, fmt.Errorf("endpoint address %q: %w", in.Address, err)
	}
	name, mac, err := reservationName(in.MacAddress)
	if err != nil {
		return none, err
	}
	unlock := d.locks.lock("e/" + req.EndpointID)
	defer unlock()
	ep, err := d.dir.Endpoint(ctx, nrec.Tenant, name)
	if errors.Is(err, directory.ErrNotFound) {
		return none, fmt.Errorf("address %s (MAC %s) was not given out by NVI's IPAM driver: no endpoint %s/%s", addr, mac, nrec.Tenant, name)
	}
	if err != nil {
		return none, fmt.Errorf("reading endpoint %s/%s: %w", nrec.Tenant, name, err)
	}
	if ep.IP != addr.Addr() || ep.Network != nrec.Network {
		return none, fmt.Errorf("endpoint %s/%s holds %s in network %s, not %s in %s", nrec.Tenant, name, ep.IP, ep.Network, addr.Addr(), nrec.Network)
	}
	rec := EndpointRecord{ID: req.EndpointID, NetworkID: req.NetworkID, Tenant: nrec.Tenant, Name: name, Address: addr, MAC: mac}
	if err := d.state.PutEndpoint(ctx, rec); err != nil {
		return none, err
	}
	d.log.Info("docker: endpoint created", "endpoint_id", short(req.EndpointID), "endpoint", nrec.Tenant+"/"+name, "address", addr, "mac", mac)
	// Docker gave the address and MAC: the answer must not repeat them.
	return none, nil
}

func (d *Driver) endpointOperInfo(ctx context.Context, req endpointRequest) (operInfoResponse, error) {
	rec, err := d.endpointRecord(ctx, req.NetworkID, req.EndpointID)
	if err != nil {
		return operInfoResponse{}, err
	}
	return operInfoResponse{Value: map[string]string{
		"nvi.endpoint": rec.Tenant + "/" + rec.Name,
		"nvi.address":  rec.Address.String(),
	}}, nil
}

func (d *Driver) knownEndpoint(ctx context.Context, req endpointRequest) (empty, error) {
	_, err := d.endpointRecord(ctx, req.NetworkID, req.EndpointID)
	return empty{}, err
}

func (d *Driver) deleteEndpoint(ctx context.Context, req endpointRequest) (empty, error) {
	unlock := d.locks.lock("e/" + req.EndpointID)
	defer unlock()
	rec, err := d.endpointRecord(ctx, req.NetworkID, req.EndpointID)
	if err != nil {
		return empty{}, err
	}
	ctr, host := vethNames(rec.ID)
	if err := d.links.DeleteVeth(ctx, ctr, host); err != nil {
		return empty{}, err
	}
	if err := d.state.DeleteEndpoint(ctx, rec.ID); err != nil {
		return empty{}, err
	}
	d.log.Info("docker: endpoint deleted", "endpoint_id", short(rec.ID), "endpoint", rec.Tenant+"/"+rec.Name)
	return empty{}, nil
}

func (d *Driver) join(ctx context.Context, req joinRequest) (joinResponse, error) {
	unlock := d.locks.lock("e/" + req.EndpointID)
	defer unlock()
	rec, err := d.endpointRecord(ctx, req.NetworkID, req.EndpointID)
	if err != nil {
		return joinResponse{}, err
	}
	ep, err := d.dir.Endpoint(ctx, rec.Tenant, rec.Name)
	if err != nil {
		return joinResponse{}, fmt.Errorf("endpoint %s/%s: %w", rec.Tenant, rec.Name, err)
	}
	nw, err := d.network(ctx, rec.Tenant, ep.Network)
	if err != nil {
		return joinResponse{}, err
	}
	ctr, host := vethNames(rec.ID)
	// A pair left by a join that was interrupted goes first.
	if err := d.links.DeleteVeth(ctx, ctr, host); err != nil {
		return joinResponse{}, err
	}
	if err := d.links.AddVeth(ctx, ctr, host, ep.MAC); err != nil {
		return joinResponse{}, err
	}
	if _, err := d.agent.AttachEndpoint(ctx, api.AttachRequest{Tenant: rec.Tenant, Name: rec.Name, Interface: host}); err != nil {
		if derr := d.links.DeleteVeth(context.WithoutCancel(ctx), ctr, host); derr != nil {
			d.log.Warn("docker: cannot remove the veth of a failed join", "endpoint_id", short(rec.ID), "err", derr)
		}
		return joinResponse{}, fmt.Errorf("attaching endpoint %s/%s to the bridge: %w", rec.Tenant, rec.Name, err)
	}
	d.log.Info("docker: joined", "endpoint_id", short(rec.ID), "endpoint", rec.Tenant+"/"+rec.Name, "port", host, "sandbox", req.SandboxKey)
	return joinResponse{
		InterfaceName: interfaceName{SrcName: ctr, DstPrefix: "eth"},
		Gateway:       nw.Gateway.String(),
	}, nil
}

func (d *Driver) leave(ctx context.Context, req endpointRequest) (empty, error) {
	unlock := d.locks.lock("e/" + req.EndpointID)
	defer unlock()
	rec, err := d.endpointRecord(ctx, req.NetworkID, req.EndpointID)
	if err != nil {
		return empty{}, err
	}
	ctr, host := vethNames(rec.ID)
	if err := d.links.DeleteVeth(ctx, ctr, host); err != nil {
		return empty{}, err
	}
	d.log.Info("docker: left", "endpoint_id", short(rec.ID), "endpoint", rec.Tenant+"/"+rec.Name)
	return empty{}, nil
}

// ----- IPAM driver -----

func (d *Driver) requestPool(ctx context.Context, req requestPoolRequest) (requestPoolResponse, error) {
	var none requestPoolResponse
	if req.V6 {
		return none, errors.New("NVI networks are IPv4 only: drop --ipv6")
	}
	var unknown []string
	for k := range req.Options {
		if k != NetworkOption {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return none, fmt.Errorf("unknown IPAM option %s: NVI's IPAM driver takes only --ipam-opt %s=TENANT/NET", strings.Join(unknown, ", "), NetworkOption)
	}
	ref := req.Options[NetworkOption]
	if ref == "" {
		return none, fmt.Errorf("NVI's IPAM driver needs the NVI network: %s", d.usage(""))
	}
	tenant, name, err := directory.ParseNetRef(ref)
	if err != nil {
		return none, fmt.Errorf("--ipam-opt %s=%s: %w", NetworkOption, ref, err)
	}
	if req.SubPool != "" {
		return none, errors.New("--ip-range is not supported: NVI gives out addresses from each server's blocks")
	}
	nw, err := d.network(ctx, tenant, name)
	if err != nil {
		return none, err
	}
	if req.Pool != "" {
		if p, err := netip.ParsePrefix(req.Pool); err != nil || p.Masked() != nw.CIDR {
			return none, fmt.Errorf("--subnet %s is not the CIDR %s of NVI network %s (leave --subnet out)", req.Pool, nw.CIDR, ref)
		}
	}
	return requestPoolResponse{PoolID: poolID(tenant, name), Pool: nw.CIDR.String(), Data: map[string]string{}}, nil
}

// poolID is a pool's ID, and parsePoolID its inverse: the pool ID names
// the network, so the IPAM driver keeps no state of its own.
func poolID(tenant, name string) string { return tenant + "/" + name }

func parsePoolID(id string) (tenant, name string, err error) {
	tenant, name, err = directory.ParseNetRef(id)
	if err != nil {
		return "", "", fmt.Errorf("pool ID %q is not one of NVI's: %w", id, err)
	}
	return tenant, name, nil
}

func (d *Driver) releasePool(ctx context.Context, req poolRequest) (empty, error) {
	_, _, err := parsePoolID(req.PoolID)
	return empty{}, err
}

func (d *Driver) requestAddress(ctx context.Context, req requestAddressRequest) (requestAddressResponse, error) {
	var none requestAddressResponse
	tenant, name, err := parsePoolID(req.PoolID)
	if err != nil {
		return none, err
	}
	nw, err := d.network(ctx, tenant, name)
	if err != nil {
		return none, err
	}
	var want netip.Addr
	if req.Address != "" {
		if want, err = parseAddr(req.Address); err != nil {
			return none, err
		}
	}
	if req.Options[requestAddressType] == gatewayType {
		if want.IsValid() && want != nw.Gateway {
			return none, fmt.Errorf("the gateway of NVI network %s is %s, not %s (leave --gateway out)", nw.Ref(), nw.Gateway, want)
		}
		return requestAddressResponse{Address: netip.PrefixFrom(nw.Gateway, nw.CIDR.Bits()).String()}, nil
	}
	macOpt := req.Options[macOption]
	if macOpt == "" {
		return none, errors.New("an address without an endpoint MAC is an auxiliary address (--aux-address), which NVI does not support")
	}
	epName, mac, err := reservationName(macOpt)
	if err != nil {
		return none, err
	}
	ep, err := d.agent.CreateEndpoint(ctx, api.CreateEndpointRequest{Tenant: tenant, Network: name, Name: epName, IP: want, MAC: mac})
	if api.CodeOf(err) == api.CodeExists {
		return none, fmt.Errorf("tenant %s already has an endpoint %s: does another container use MAC %s? (%w)", tenant, epName, mac, err)
	}
	if err != nil {
		return none, fmt.Errorf("creating endpoint %s/%s: %w", tenant, epName, err)
	}
	if ctx.Err() != nil {
		// Docker stopped waiting: it will never release what it did not get.
		d.undoReservation(tenant, epName)
		return none, fmt.Errorf("creating endpoint %s/%s: %w", tenant, epName, ctx.Err())
	}
	d.log.Info("docker: address reserved", "endpoint", tenant+"/"+epName, "ip", ep.IP, "mac", mac)
	return requestAddressResponse{Address: netip.PrefixFrom(ep.IP, ep.PrefixLen).String()}, nil
}

func (d *Driver) undoReservation(tenant, name string) {
	if err := d.agent.DeleteEndpoint(context.Background(), tenant, name); err != nil && api.CodeOf(err) != api.CodeNotFound {
		d.log.Warn("docker: cannot undo a reservation", "endpoint", tenant+"/"+name, "err", err)
	}
}

// parseAddr reads "10.1.0.5" or "10.1.0.5/24".
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("address %q: want an IPv4 address", s)
	}
	return a, nil
}

func (d *Driver) releaseAddress(ctx context.Context, req releaseAddressRequest) (empty, error) {
	tenant, name, err := parsePoolID(req.PoolID)
	if err != nil {
		return empty{}, err
	}
	ip, err := parseAddr(req.Address)
	if err != nil {
		return empty{}, err
	}
	nw, err := d.dir.Network(ctx, tenant, name)
	if errors.Is(err, directory.ErrNotFound) {
		// The network is gone, and the directory deletes none that holds
		// endpoints: nothing of it is left to release.
		return empty{}, nil
	}
	if err != nil {
		return empty{}, fmt.Errorf("reading NVI network %s/%s: %w", tenant, name, err)
	}
	if ip == nw.Gateway {
		return empty{}, nil
	}
	ep, err := d.dir.EndpointByIP(ctx, tenant, ip)
	if errors.Is(err, directory.ErrNotFound) {
		return empty{}, fmt.Errorf("no NVI endpoint holds %s in tenant %s", ip, tenant)
	}
	if err != nil {
		return empty{}, fmt.Errorf("looking up %s in tenant %s: %w", ip, tenant, err)
	}
	if !reservationRe.MatchString(ep.Name) || ep.Network != name {
		return empty{}, fmt.Errorf("%s in tenant %s belongs to endpoint %s/%s, which is not a Docker container's in network %s", ip, tenant, tenant, ep.Name, name)
	}
	// Docker deletes its endpoint before releasing the address; if that
	// failed, what is left of it goes now.
	recs, err := d.state.Endpoints(ctx)
	if err != nil {
		return empty{}, err
	}
	for _, r := range recs {
		if r.Tenant == tenant && r.Name == ep.Name {
			if _, err := d.deleteEndpoint(ctx, endpointRequest{EndpointID: r.ID}); err != nil {
				return empty{}, err
			}
		}
	}
	if err := d.agent.DeleteEndpoint(ctx, tenant, ep.Name); err != nil && api.CodeOf(err) != api.CodeNotFound {
		return empty{}, fmt.Errorf("deleting endpoint %s/%s: %w", tenant, ep.Name, err)
	}
	d.log.Info("docker: address released", "endpoint", tenant+"/"+ep.Name, "ip", ip)
	return empty{}, nil
}

// Collect deletes reservations of this server that no Docker endpoint
// record names: addresses whose container never came, because Docker gave
// up or the plugin stopped between RequestAddress and CreateEndpoint. Run it
// before serving, when no request can be between those two steps.
func (d *Driver) Collect(ctx context.Context) (int, error) {
	eps, err := d.agent.ServerEndpoints(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing this server's endpoints: %w", err)
	}
	recs, err := d.state.Endpoints(ctx)
	if err != nil {
		return 0, err
	}
	named := map[string]bool{}
	for _, r := range recs {
		named[r.Tenant+"/"+r.Name] = true
	}
	n := 0
	for _, ep := range eps {
		if !reservationRe.MatchString(ep.Name) || named[ep.Tenant+"/"+ep.Name] || ep.Bound {
			continue
		}
		if err := d.agent.DeleteEndpoint(ctx, ep.Tenant, ep.Name); err != nil && api.CodeOf(err) != api.CodeNotFound {
			return n, fmt.Errorf("deleting stale reservation %s/%s: %w", ep.Tenant, ep.Name, err)
		}
		d.log.Info("docker: stale reservation deleted", "endpoint", ep.Tenant+"/"+ep.Name, "ip", ep.IP)
		n++
	}
	return n, nil
}

// short abbreviates a Docker ID the way Docker prints it.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// keyedMutex serialises work per key; entries go away when unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
