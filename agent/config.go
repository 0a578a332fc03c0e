// Package agent is nvid, the NVI agent of one server. It is the OpenFlow
// controller of its own bridge only: it binds the server's workloads to the
// bridge, and when a workload opens a connection it resolves the peer in the
// directory, checks policy, agrees the session with the peer server's agent
// and installs header-rewriting flows on both bridges.
//
// The agent is a shell around pure parts: pipeline computes flows, session
// allocates keys and judges idleness, policy decides. Here live the sockets
// (OpenFlow, OVSDB, etcd, the two APIs) and the ordering that makes the
// design's invariants hold.
package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"nvi/api"
	"nvi/session"
)

// Identity is this server's certificate as the peer API needs it;
// *pki.Identity implements it.
type Identity interface {
	ServerTLS() *tls.Config                           // TLS 1.3, client certificates required and verified against the cloud's CA
	ClientTLS(peer string) *tls.Config                // verifies that the answering certificate names server peer
	PeerName(cs *tls.ConnectionState) (string, error) // the server a verified connection speaks for
}

// Config is everything nvid is told at start.
type Config struct {
	Name      string       // this server's name in the directory
	Bridge    string       // the OVS bridge the agent controls
	Uplink    string       // the interface toward the underlay, added to the bridge
	DataIP    netip.Prefix // the server's underlay address and subnet
	ConfigIP  bool         // put DataIP on the bridge's local port (the lab does this)
	DataMAC   net.HardwareAddr
	Gateway   netip.Addr // underlay router for peers outside the subnet (optional)
	OVSDB     string     // "unix:/run/nvi/s1/db.sock"
	OVSRunDir string     // ovs-vswitchd's run directory: the controller socket goes there
	Socket    string     // the local API's unix socket
	LocalAPI  LocalAPIConfig
	// PeerListen is the "ip:port" of the peer API: the data address, or
	// one on a management network that carries the servers' control
	// traffic (declare that network in Underlay, so no workload reaches
	// it). Peers dial what the server records, so it is a concrete
	// address; it is always underlay.
	PeerListen string
	Etcd       []string // directory endpoints
	// DirectoryTLS authenticates the agent to the directory with its
	// certificate (etcd takes the user from it); nil speaks plain etcd.
	DirectoryTLS *tls.Config
	// Registrar (HOST:PORT, beside the enrollment service) makes this
	// server's claims in the directory — its endpoints and address blocks —
	// when the directory's authentication lets servers only read them;
	// RegistrarTLS presents the server's certificate to it. Empty: the
	// agent writes them itself (a directory without authentication).
	Registrar    string
	RegistrarTLS *tls.Config
	Site         string

	IdleTimeout  time.Duration    // a session with no packets this long is torn down
	KeyRange     session.KeyRange // ports reserved for keys; must hold no host service
	KeyRest      time.Duration    // how long a released key rests before reuse
	SetupTimeout time.Duration    // bound on one session setup, handshake included
	PeerTimeout  time.Duration    // bound on one peer API call
	DenyTimeout  time.Duration    // life of a drop flow
	PuntRate     uint32           // packet-ins per second each workload's meter lets through
	PuntBurst    uint32
	LeaseTTL     time.Duration // the server record's lease in the directory

	// Identity authenticates the peer API both ways (mutual TLS). Without
	// one the agent refuses to start unless InsecurePeerAPI is set, which
	// lets anyone who reaches PeerListen speak for any server: only for
	// measuring what authentication costs.
	Identity        Identity
	InsecurePeerAPI bool
	PeerRate        float64 // peer API calls per second per calling server
	PeerBurst       int
	PeerMaxInFlight int // peer API calls served at once
	// PeerDial, when set, makes the connections to other servers' agents
	// instead of TCP (the in-process cloud of the tests dials an
	// in-memory network); TLS and the peer API run over them unchanged.
	PeerDial api.DialFunc
	// UplinkPuntRate bounds the packet-ins from the uplink (ICMP errors
	// from anyone, peers' echoes), which have a meter of their own.
	UplinkPuntRate  uint32
	UplinkPuntBurst uint32
	// Underlay adds infrastructure prefixes no workload may reach (a
	// management network, other sites' server subnets) to the data
	// subnet, the underlay router and the directory, which are always in.
	Underlay []netip.Prefix

	Logger *slog.Logger
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Bridge == "" {
		c.Bridge = "br-nvi"
	}
	if c.Site == "" {
		c.Site = "default"
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.KeyRange == (session.KeyRange{}) {
		c.KeyRange = session.DefaultKeyRange
	}
	if c.KeyRest == 0 {
		c.KeyRest = 30 * time.Second
	}
	if c.SetupTimeout == 0 {
		c.SetupTimeout = 3 * time.Second
	}
	if c.PeerTimeout == 0 {
		c.PeerTimeout = 2 * time.Second
	}
	if c.DenyTimeout == 0 {
		c.DenyTimeout = 5 * time.Second
	}
	if c.PuntRate == 0 {
		c.PuntRate = 5000
	}
	if c.PuntBurst == 0 {
		c.PuntBurst = c.PuntRate / 2
	}
	if c.UplinkPuntRate == 0 {
		c.UplinkPuntRate = 1000
	}
	if c.UplinkPuntBurst == 0 {
		c.UplinkPuntBurst = c.UplinkPuntRate / 2
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.PeerRate == 0 {
		c.PeerRate = api.DefaultPeerRate
	}
	if c.PeerBurst == 0 {
		c.PeerBurst = api.DefaultPeerBurst
	}
	if c.PeerMaxInFlight == 0 {
		c.PeerMaxInFlight = api.DefaultPeerMaxInFlight
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate says what is wrong with c, all at once.
func (c *Config) Validate() error {
	var errs []error
	need := func(v, flag string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("--%s is required", flag))
		}
	}
	need(c.Name, "name")
	need(c.Uplink, "uplink")
	need(c.OVSDB, "ovsdb")
	need(c.OVSRunDir, "ovs-rundir")
	need(c.Socket, "socket")
	if !c.DataIP.IsValid() || !c.DataIP.Addr().Is4() {
		errs = append(errs, errors.New("--data-ip must be an IPv4 address with its prefix length, e.g. 198.18.0.1/24"))
	}
	if len(c.Etcd) == 0 {
		errs = append(errs, errors.New("--etcd is required"))
	}
	if c.DataMAC != nil && len(c.DataMAC) != 6 {
		errs = append(errs, fmt.Errorf("--data-mac %s is not a 6-byte MAC", c.DataMAC))
	}
	if c.Gateway.IsValid() && !c.DataIP.Contains(c.Gateway) {
		errs = append(errs, fmt.Errorf("--underlay-gateway %s is outside %s", c.Gateway, c.DataIP))
	}
	for _, p := range c.Underlay {
		if !p.IsValid() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("underlay prefix %v is not an IPv4 prefix", p))
		}
	}
	if err := c.KeyRange.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.IdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("--idle-timeout %v is below one second", c.IdleTimeout))
	}
	if c.DenyTimeout < time.Second || c.DenyTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("--deny-timeout %v: want 1s..1h", c.DenyTimeout))
	}
	if c.PeerListen != "" {
		if err := checkPeerListen(c.PeerListen); err != nil {
			errs = append(errs, err)
		}
	}
	if c.PeerRate < 0 || c.PeerBurst < 0 || c.PeerMaxInFlight < 0 {
		errs = append(errs, errors.New("peer API limits must not be negative"))
	}
	return errors.Join(errs...)
}

// checkPeerListen: peers dial the address the server records, so it must
// be a concrete IPv4 address and port.
func checkPeerListen(listen string) error {
	ap, err := netip.ParseAddrPort(listen)
	switch {
	case err != nil:
		return fmt.Errorf("--peer-listen %q: want IP:PORT, e.g. 198.18.0.1:7470 (the data address) or an address on the management network", listen)
	case !ap.Addr().Unmap().Is4() || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast():
		return fmt.Errorf("--peer-listen %s: peers dial this address, so it must be one IPv4 unicast address of this server", listen)
	case ap.Port() == 0:
		return fmt.Errorf("--peer-listen %s: peers need a fixed port, not 0", listen)
	}
	return nil
}

// checkServing says what keeps the agent from serving peers: no peer API
// address, or a peer API with no authentication that nobody asked for.
// New does not check it, so that tests can make agents without either.
func (c *Config) checkServing() error {
	var errs []error
	if c.PeerListen == "" {
		errs = append(errs, errors.New("--peer-listen is required: without it no peer can set up sessions with this server"))
	}
	switch {
	case c.Identity == nil && !c.InsecurePeerAPI:
		errs = append(errs, errors.New("the peer API needs this server's certificate (--identity-dir); --insecure-peer-api runs it unauthenticated, for benchmarks only"))
	case c.Identity != nil && c.InsecurePeerAPI:
		errs = append(errs, errors.New("--insecure-peer-api contradicts the server's certificate: pick one"))
	}
	return errors.Join(errs...)
}
