package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"nvi/api"
	"nvi/directory"
	"nvi/engine"
	"nvi/ovsdb"
	"nvi/pipeline"
	"nvi/registrar"
	"nvi/session"
)

// Agent is one running nvid.
type Agent struct {
	cfg Config
	log *slog.Logger
	ctx context.Context // lives as long as Run

	ovs *ovsdb.Client
	dir *directory.Store
	// claims writes this server's endpoints and address blocks: the
	// registrar's client when the directory has authentication on (the
	// agent's credential may only read them), else dir itself.
	claims directory.Claimer
	cache  *directory.Cache
	sw     *switchConn // the OpenFlow connection to our bridge
	// swUp and dirUp say that Run has set sw, and dir, claims and cache:
	// the local API serves before either, and reads them only after
	// these flags (which order the writes before its reads).
	swUp, dirUp atomic.Bool
	// synced: the bridge's ports are bound and the sessions a previous
	// agent left on it adopted; until then the agent is not ready.
	synced atomic.Bool

	mu         sync.Mutex
	br         pipeline.Bridge       // facts the flows depend on; set once the switch is known
	workloads  map[uint32]*workload  // bound workloads by OpenFlow port
	byAddr     map[addrKey]*workload // ... by tenant and address
	eng        *engine.Engine        // every session's life (package nvi/engine)
	keys       *session.KeyPool      // the engine's keys, for tests
	tenants    map[string]*tenant
	pools      map[netKey]*addrPool             // address blocks this server holds, per network
	portMaps   map[portMapKey]directory.PortMap // this server's port maps
	reg        *directory.Registration
	waiting    map[string]waitingPort // labelled ports whose endpoint is not recorded yet, by iface-id
	ipamMu     sync.Mutex             // serialises address allocation; guards pools
	peers      map[peerAddr]*api.PeerClient
	registered bool
	self       directory.Server // this server's record as registered: what port maps may not take
	dirErr     string
	lim        limits // session quotas and log limits (limits.go)
}

// peerAddr names a peer client: the connection authenticates the server
// by name, and is made to its address.
type peerAddr struct{ name, addr string }

type addrKey struct {
	tenant string
	ip     netip.Addr
}

// New checks cfg and makes an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	keys := session.NewKeyPool(cfg.KeyRange, cfg.KeyRest)
	return &Agent{
		cfg:  cfg,
		keys: keys,
		eng: engine.New(engine.Config{Keys: keys, IdleTimeout: cfg.IdleTimeout, DeafAfter: clientDeafAfter,
			MaxPerWorkload: maxSessionsPerWorkload, MaxHeld: maxHeld, Logger: cfg.Logger}),
		log:       cfg.Logger,
		workloads: map[uint32]*workload{},
		byAddr:    map[addrKey]*workload{},
		tenants:   map[string]*tenant{},
		pools:     map[netKey]*addrPool{},
		portMaps:  map[portMapKey]directory.PortMap{},
		waiting:   map[string]waitingPort{},
		peers:     map[peerAddr]*api.PeerClient{},
	}, nil
}

// Run starts the agent and blocks until ctx ends. Established sessions
// survive its end: flows stay on the bridge and the next agent adopts them.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.ctx = ctx
	if err := a.cfg.checkServing(); err != nil {
		return err
	}
	peerTLS, err := a.peerServerTLS()
	if err != nil {
		return err
	}
	if err := a.reserveKeys(); err != nil {
		return err
	}

	// The local API first, so that tools can ask why the agent is not ready.
	serveLocal, err := a.listenLocalAPI(a.cfg.LocalAPI)
	if err != nil {
		return fmt.Errorf("local API: %w", err)
	}
	defer os.Remove(a.cfg.Socket)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := serveLocal(ctx); err != nil {
			a.log.Error("local API stopped", "err", err)
		}
	}()

	if err := a.setupBridge(ctx); err != nil {
		return err
	}
	defer a.ovs.Close()

	a.sw = newSwitchConn(a)
	a.swUp.Store(true)
	wg.Add(1)
	go func() { defer wg.Done(); a.sw.run(ctx) }()

	if err := a.openDirectory(ctx); err != nil {
		return err
	}
	defer a.dir.Close()
	a.cache = directory.NewCache(a.dir, a.log)
	a.cache.OnChange(a.onDirectoryChange)
	a.watchRevocations(a.cache)
	a.dirUp.Store(true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.cache.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("directory watch stopped", "err", err)
		}
	}()

	// Wait for the switch before anything that installs flows.
	if err := a.sw.waitConnected(ctx); err != nil {
		return err
	}
	a.findRouter(ctx)
	if err := a.register(ctx); err != nil {
		return err
	}
	a.loadPortMaps(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); a.watchInterfaces(ctx) }()

	pl, err := net.Listen("tcp", a.cfg.PeerListen)
	if err != nil {
		return fmt.Errorf("peer API on %s: %w", a.cfg.PeerListen, err)
	}
	if peerTLS == nil {
		a.log.Warn("THE PEER API IS UNAUTHENTICATED (--insecure-peer-api): anyone who reaches it can install, hijack and tear down sessions as any server; use it only to measure what TLS costs",
			"peer_api", a.cfg.PeerListen)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		l := api.PeerListener(pl, peerTLS, api.ListenLimits{}, a.log)
		if err := api.ServePeer(ctx, l, peerService{a}, a.peerOptions(), a.log); err != nil {
			a.log.Error("peer API stopped", "err", err)
		}
	}()
	wg.Add(1)
	go func() { defer wg.Done(); a.expireLoop(ctx) }()
	a.log.Info("agent running", "server", a.cfg.Name, "bridge", a.cfg.Bridge, "data", a.cfg.DataIP, "peer_api", a.cfg.PeerListen, "peer_tls", peerTLS != nil)
	<-ctx.Done()
	a.log.Info("agent stopping; flows stay on the bridge")
	return nil
}

// setupBridge makes sure the bridge exists as NVI wants it, with the uplink
// on OpenFlow port 1, and puts the data address on its local port.
func (a *Agent) setupBridge(ctx context.Context) error {
	var err error
	for attempt := 0; ; attempt++ {
		a.ovs, err = ovsdb.Dial(ctx, a.cfg.OVSDB, ovsdb.WithLogger(a.log))
		if err == nil {
			break
		}
		if attempt == 0 {
			a.log.Warn("OVSDB not reachable yet; retrying", "ovsdb", a.cfg.OVSDB, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("OVSDB at %s: %w", a.cfg.OVSDB, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err := a.ovs.Init(ctx); err != nil {
		return err
	}
	spec := ovsdb.BridgeSpec{
		Name:         a.cfg.Bridge,
		DatapathType: "netdev",
		FailMode:     "secure",
		Protocols:    []string{"OpenFlow13"},
		Controller:   "punix:" + a.controllerSocket(),
		OtherConfig:  map[string]string{"disable-in-band": "true"},
		ExternalIDs:  map[string]string{"nvi-server": a.cfg.Name},
		TableNames:   pipeline.TableNames(),
	}
	if a.cfg.DataMAC != nil {
		spec.HWAddr = a.cfg.DataMAC.String()
	}
	if err := a.ovs.EnsureBridge(ctx, spec); err != nil {
		return err
	}
	if err := a.ovs.AddPort(ctx, a.cfg.Bridge, ovsdb.PortSpec{Name: a.cfg.Uplink, OFPortRequest: uplinkPort}); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	port, err := a.ovs.WaitOFPort(wctx, a.cfg.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", a.cfg.Uplink, err)
	}
	a.br.Uplink = uint32(port)
	if a.cfg.ConfigIP {
		if err := configureDataIP(ctx, a.cfg.Bridge, a.cfg.DataIP, a.cfg.Gateway); err != nil {
			return err
		}
	}
	return nil
}

// findRouter resolves the underlay router once the bridge forwards the
// host's traffic, and then turns on what needs it: egress and port maps.
func (a *Agent) findRouter(ctx context.Context) {
	if !a.cfg.Gateway.IsValid() {
		return
	}
	mac, err := resolveNeighbour(ctx, a.cfg.Gateway)
	if err != nil {
		a.log.Warn("underlay router unresolved: no egress and no port maps", "gateway", a.cfg.Gateway, "err", err)
		return
	}
	a.mu.Lock()
	a.br.RouterMAC = mac
	br := a.br
	a.mu.Unlock()
	a.log.Info("underlay router", "gateway", a.cfg.Gateway, "mac", mac.String())
	msgs := append(flowMods(pipeline.BaseFlows(br)...), a.knownFlows(br)...)
	if err := a.sw.apply(ctx, msgs...); err != nil {
		a.log.Warn("cannot install egress flows", "err", err)
	}
}

// uplinkPort is the OpenFlow port the agent asks for the uplink.
const uplinkPort = 1

func (a *Agent) controllerSocket() string {
	return a.cfg.OVSRunDir + "/" + a.cfg.Bridge + ".nvid"
}

// openDirectory connects to etcd, retrying with a logged reason: a server
// whose directory is down keeps forwarding, it just cannot register yet.
func (a *Agent) openDirectory(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		d, err := directory.Open(ctx, directory.Config{Endpoints: a.cfg.Etcd, TLS: a.cfg.DirectoryTLS, Logger: a.log})
		if err == nil {
			if a.claims, err = a.claimer(d); err != nil {
				d.Close()
				return err
			}
			a.dir = d
			a.setDirErr("")
			return nil
		}
		a.setDirErr(err.Error())
		if attempt%10 == 0 {
			a.log.Warn("directory unreachable; retrying", "etcd", a.cfg.Etcd, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("directory: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// claimer is who makes this server's claims: the registrar when one is
// configured, else the directory with the agent's own credential.
func (a *Agent) claimer(d *directory.Store) (directory.Claimer, error) {
	if a.cfg.Registrar != "" {
		a.log.Info("endpoints and address blocks are claimed through the registrar", "registrar", a.cfg.Registrar)
		return registrar.NewClient(a.cfg.Registrar, a.cfg.RegistrarTLS), nil
	}
	return d.ClaimsFor(a.cfg.Name)
}

func (a *Agent) setDirErr(s string) {
	a.mu.Lock()
	a.dirErr = s
	a.mu.Unlock()
}

// register puts this server in the directory under a lease; the directory
// package keeps the lease alive.
func (a *Agent) register(ctx context.Context) error {
	a.mu.Lock()
	srv := directory.Server{
		Name:      a.cfg.Name,
		DataIP:    a.br.DataIP,
		DataMAC:   a.br.DataMAC.String(),
		Site:      a.cfg.Site,
		AgentAddr: a.cfg.PeerListen,
		Role:      directory.RoleServer,
		KeyRange:  a.cfg.KeyRange,
		Reserved:  hostReserved(),
	}
	a.self = srv
	a.mu.Unlock()
	for attempt := 0; ; attempt++ {
		reg, err := a.dir.RegisterServer(ctx, srv, a.cfg.LeaseTTL)
		if err == nil {
			reg.UseClaimer(a.claims)
			a.mu.Lock()
			a.registered, a.reg = true, reg
			a.mu.Unlock()
			a.setDirErr("")
			a.log.Info("registered in the directory", "server", srv.Name, "data_ip", srv.DataIP, "data_mac", srv.DataMAC)
			return nil
		}
		a.setDirErr(err.Error())
		if errors.Is(err, directory.ErrInvalid) || errors.Is(err, directory.ErrConflict) {
			return fmt.Errorf("register server %s: %w", srv.Name, err)
		}
		if attempt%10 == 0 {
			a.log.Warn("cannot register yet; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Ready reports whether the agent serves: switch connected with its
// pipeline, registered in the directory, and the bridge's ports bound and
// their sessions adopted (so that a restarted agent is ready only once it
// knows the sessions it inherited).
func (a *Agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.registered && a.synced.Load() && a.swUp.Load() && a.sw.connected()
}

// bridge returns the facts the flows depend on.
func (a *Agent) bridge() pipeline.Bridge {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.br
}

// peer returns the client for a peer agent, one per (name, address), kept
// for the agent's life so that its connections persist across sessions.
// It authenticates the answering agent as srv.Name.
func (a *Agent) peer(srv directory.Server) (*api.PeerClient, error) {
	if srv.AgentAddr == "" {
		return nil, api.Errorf(api.CodeUnavailable, "server %s has no agent address", srv.Name)
	}
	k := peerAddr{srv.Name, srv.AgentAddr}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.peers[k]; c != nil {
		return c, nil
	}
	var conf *tls.Config
	if a.cfg.Identity != nil {
		if conf = a.cfg.Identity.ClientTLS(srv.Name); conf == nil {
			return nil, api.Errorf(api.CodeUnavailable, "no TLS configuration toward server %s", srv.Name)
		}
	} else if !a.cfg.InsecurePeerAPI {
		return nil, api.Errorf(api.CodeUnavailable, "this server has no certificate to call server %s with", srv.Name)
	}
	for old, c := range a.peers {
		if old.name == srv.Name {
			// The server moved: its old address is no one's to trust.
			c.Close()
			delete(a.peers, old)
		}
	}
	c := api.NewPeerClientDial(srv.AgentAddr, conf, a.cfg.PeerTimeout, a.cfg.PeerDial)
	a.peers[k] = c
	return c, nil
}

// peerServerTLS is the peer API's server side: the identity's, held to
// TLS 1.3 with client certificates required. Nil means unauthenticated
// (InsecurePeerAPI).
func (a *Agent) peerServerTLS() (*tls.Config, error) {
	if a.cfg.Identity == nil {
		return nil, nil
	}
	conf := a.cfg.Identity.ServerTLS()
	if conf == nil {
		return nil, errors.New("the identity gave no server TLS configuration for the peer API")
	}
	if conf.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("the identity's server TLS configuration does not require and verify client certificates; the peer API would be open to anyone")
	}
	conf = conf.Clone()
	conf.MinVersion = tls.VersionTLS13
	conf.NextProtos = []string{api.PeerALPN}
	return conf, nil
}

// peerOptions admit to the peer API the callers that prove who they are.
func (a *Agent) peerOptions() api.PeerOptions {
	opts := api.PeerOptions{
		Rate:        rate.Limit(a.cfg.PeerRate),
		Burst:       a.cfg.PeerBurst,
		MaxInFlight: a.cfg.PeerMaxInFlight,
	}
	if a.cfg.Identity != nil {
		opts.Caller = api.TLSCaller(a.cfg.Identity.PeerName)
	} else if a.cfg.InsecurePeerAPI {
		opts.InsecureTrustFrom = true
	}
	return opts
}
