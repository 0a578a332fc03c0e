// Package lab builds a cloud of NVI servers on one machine: each server is a
// network namespace with its own ovsdb-server, ovs-vswitchd (userspace netdev
// datapath) and nvid; an underlay switch namespace joins their uplinks; the
// directory (embedded etcd) runs on a management network of its own, which
// the servers' hosts reach and their workloads and the lab's internet do not;
// workloads are network namespaces plugged into a server's bridge through its
// agent.
//
// Everything the lab makes is recorded in a state file before it is made, so
// Down removes it all, also after a crash, and is safe to run twice.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

// Config shapes a lab.
type Config struct {
	Prefix  string       // names namespaces and the run directory; default "nvi"
	Servers int          // number of servers, named s1..sN
	Subnet  netip.Prefix // underlay subnet; servers take .1.., the underlay switch the last host
	Bin     string       // directory holding nvid
	Etcd    []string     // an external directory; empty starts the embedded one
	// AgentArgs are extra flags for every nvid (e.g. "--idle-timeout=5s").
	AgentArgs []string
	// PeerAPIOnData puts the agents' peer API on their data addresses.
	// By default it is on the management network, with the directory: the
	// servers' control traffic then does not cross the bridges, whose
	// userspace datapath forwards every packet on one thread per server.
	PeerAPIOnData bool
	// CertTTL is the life of the servers' certificates (default
	// DefaultCertTTL); they renew at two thirds of it.
	CertTTL time.Duration
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any)
}

// DefaultSubnet is the lab's underlay: a benchmarking range (RFC 2544) that no
// real network routes.
var DefaultSubnet = netip.MustParsePrefix("198.18.0.0/24")

// MgmtSubnet is the lab's management network, where the directory listens:
// the servers' hosts are on it, the underlay router is not, so no workload
// egress and no internet host can reach it. Servers take .1.., the
// directory the last host. (Also an RFC 2544 range.)
var MgmtSubnet = netip.MustParsePrefix("198.19.0.0/24")

// MgmtNetns names the management network's namespace.
func MgmtNetns(prefix string) string { return prefix + "-mgmt" }

// MgmtName is the server-side name of a lab server's management interface.
const MgmtName = "mg0"

// PeerPort is the TCP port of every agent's peer API.
const PeerPort = 7470

// BridgeName is the OVS bridge of every lab server.
const BridgeName = "br-nvi"

// UplinkName is the server-side name of a lab server's uplink.
const UplinkName = "up0"

// Server is one lab server.
type Server struct {
	Name    string     `json:"name"`
	Netns   string     `json:"netns"`
	DataIP  netip.Addr `json:"data_ip"`
	DataMAC string     `json:"data_mac"`
	MgmtIP  netip.Addr `json:"mgmt_ip"`
	Dir     string     `json:"dir"`
	Socket  string     `json:"socket"` // the agent's local API
	NvidPID int        `json:"nvid_pid"`
	Args    []string   `json:"nvid_args"` // how nvid was started, for restarts
}

// Workload is one lab workload: a network namespace with one interface.
type Workload struct {
	Name    string     `json:"name"`
	Server  string     `json:"server"`
	Tenant  string     `json:"tenant"`
	Network string     `json:"network"`
	IP      netip.Addr `json:"ip"`
	MAC     string     `json:"mac"`
	Veth    string     `json:"veth"` // the host end, in the server's namespace
	// A VM's tap on the bridge and the process that owns it (its "QEMU").
	Tap    string `json:"tap,omitempty"`
	NICPID int    `json:"nic_pid,omitempty"`
}

// Directory is where the lab's directory runs.
type Directory struct {
	Embedded  bool     `json:"embedded"`
	Endpoints []string `json:"endpoints"` // reachable from the servers
	Local     []string `json:"local"`     // reachable from the machine's own namespace
	TLS       bool     `json:"tls"`       // mutual TLS with the lab's certificates
	PID       int      `json:"pid,omitempty"`
}

// State is what a lab is made of. It is written before each thing is made.
type State struct {
	Prefix    string     `json:"prefix"`
	RunDir    string     `json:"run_dir"`
	Subnet    string     `json:"subnet"`
	Underlay  string     `json:"underlay"`
	Internet  string     `json:"internet"`
	Mgmt      string     `json:"mgmt"` // the management network's namespace
	Trust     Trust      `json:"trust"`
	Directory Directory  `json:"directory"`
	Servers   []Server   `json:"servers"`
	Workloads []Workload `json:"workloads"`
}

var prefixRe = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// RunDir is where a lab with prefix keeps its files.
func RunDir(prefix string) string { return filepath.Join("/run", prefix) }

// UnderlayNetns names the underlay switch's namespace.
func UnderlayNetns(prefix string) string { return prefix + "-underlay" }

func statePath(prefix string) string { return filepath.Join(RunDir(prefix), "lab.json") }

// Load reads the state of the lab with prefix.
func Load(prefix string) (*State, error) {
	b, err := os.ReadFile(statePath(prefix))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab %q is up (no %s): run 'nvictl lab up' first", prefix, statePath(prefix))
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s is damaged: %w (run 'nvictl lab down' to clean up)", statePath(prefix), err)
	}
	return &s, nil
}

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(s.Prefix) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(s.Prefix))
}

// Server finds a lab server by name.
func (s *State) Server(name string) (Server, error) {
	for _, sv := range s.Servers {
		if sv.Name == name {
			return sv, nil
		}
	}
	return Server{}, fmt.Errorf("unknown server %q (this lab has s1..s%d)", name, len(s.Servers))
}

// Workload finds a lab workload by name.
func (s *State) Workload(name string) (Workload, bool) {
	for _, w := range s.Workloads {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// lock serialises nvictl invocations on one lab.
func lock(prefix string) (func(), error) {
	if err := os.MkdirAll(RunDir(prefix), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(RunDir(prefix), "lab.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log(format, args...)
	}
}

// hostAddr returns the n-th host address of p (1-based).
func hostAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// lastHost is the highest host address of p.
func lastHost(p netip.Prefix) netip.Addr {
	return hostAddr(p, 1<<(32-p.Bits())-2)
}

func serverMAC(n int) string { return fmt.Sprintf("02:00:c6:12:%02x:%02x", n>>8, n&0xff) }

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, every time.Duration, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(every):
		}
	}
}
