package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"nvi/api"
	"nvi/pki"
)

const ovsSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// Up brings up a lab and returns when every agent is ready. If anything
// fails, what was made is taken down again.
func Up(ctx context.Context, cfg Config) (st *State, err error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "nvi"
	}
	if !prefixRe.MatchString(cfg.Prefix) {
		return nil, fmt.Errorf("lab prefix %q: want 1-8 lowercase letters and digits, starting with a letter", cfg.Prefix)
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 29 {
		return nil, fmt.Errorf("lab subnet %s: want an IPv4 prefix of /29 or larger", cfg.Subnet)
	}
	maxServers := 1<<(32-cfg.Subnet.Bits()) - 3
	if cfg.Servers < 1 || cfg.Servers > maxServers || cfg.Servers > 250 {
		return nil, fmt.Errorf("--servers %d: want 1..%d", cfg.Servers, min(maxServers, 250))
	}
	nvid, err := findBinary(cfg.Bin, "nvid")
	if err != nil {
		return nil, err
	}
	nvictl, err := findBinary(cfg.Bin, "nvictl")
	if err != nil {
		return nil, err
	}
	if _, err := Load(cfg.Prefix); err == nil {
		return nil, fmt.Errorf("a lab %q is already up: run 'nvictl lab down' first", cfg.Prefix)
	}
	unlock, err := lock(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	defer unlock()

	st = &State{
		Prefix:   cfg.Prefix,
		RunDir:   RunDir(cfg.Prefix),
		Subnet:   cfg.Subnet.String(),
		Underlay: UnderlayNetns(cfg.Prefix),
	}
	defer func() {
		if err != nil {
			cfg.logf("lab up failed, taking down what was made: %v", err)
			_ = down(context.Background(), st)
		}
	}()
	if err := st.save(); err != nil {
		return nil, err
	}
	if err := makeUnderlay(ctx, &cfg, st); err != nil {
		return st, err
	}
	if err := makeCA(&cfg, st); err != nil {
		return st, err
	}
	if err := startDirectory(ctx, &cfg, st, nvid); err != nil {
		return st, err
	}
	if st.Directory.TLS {
		if err := enableAuth(ctx, st); err != nil {
			return st, fmt.Errorf("directory authentication: %w", err)
		}
	}
	if err := startEnroll(ctx, &cfg, st, nvictl); err != nil {
		return st, err
	}
	for i := 1; i <= cfg.Servers; i++ {
		if err := makeServer(ctx, &cfg, st, i, nvid); err != nil {
			return st, fmt.Errorf("server s%d: %w", i, err)
		}
	}
	for _, sv := range st.Servers {
		if err := waitAgent(ctx, sv); err != nil {
			return st, err
		}
		if err := backgroundRevalidators(sv); err != nil {
			cfg.logf("server %s: %v", sv.Name, err)
		}
		cfg.logf("server %s ready: data address %s", sv.Name, sv.DataIP)
	}
	return st, nil
}

// findBinary looks for a program next to the running one, in dir, then in
// PATH.
// DirectoryBinEnv names, when set, the program that serves a lab's
// embedded directory ("PROGRAM directory ..."; default: the lab's nvid).
// The race-built end-to-end runs point it at a plain nvid, so that the
// race detector's cost falls on NVI's own code, not on etcd's.
const DirectoryBinEnv = "NVI_LAB_DIRECTORY_BIN"

func findBinary(dir, name string) (string, error) {
	var cands []string
	if dir != "" {
		cands = append(cands, filepath.Join(dir, name))
	}
	if self, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(self), name))
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return c, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("cannot find %s (run 'make build'; it goes to ./bin)", name)
}

// The lab's switches (Linux bridges) have addresses of their own, so their
// MACs are fixed: a bridge left to itself takes the lowest MAC of its ports,
// and every server plugged in after another one resolved the bridge's
// address could change it, leaving that server sending to a MAC nobody has
// until its ARP entry went stale (the directory and the enrollment service
// then "stopped answering" for half a minute).
const (
	underlaySwitchMAC = "02:4e:56:49:00:01"
	mgmtSwitchMAC     = "02:4e:56:49:00:02"
)

func makeUnderlay(ctx context.Context, cfg *Config, st *State) error {
	ns := st.Underlay
	if netnsExists(ns) {
		return fmt.Errorf("network namespace %s already exists (a lab left over? run 'nvictl lab down')", ns)
	}
	cfg.logf("underlay switch: namespace %s, subnet %s", ns, cfg.Subnet)
	if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	sw := lastHost(cfg.Subnet)
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "sw0", "address", underlaySwitchMAC, "type", "bridge"},
		{"link", "set", "sw0", "up"},
		{"addr", "add", netip.PrefixFrom(sw, cfg.Subnet.Bits()).String(), "dev", "sw0"},
	} {
		if _, err := inNetns(ctx, ns, "ip", args...); err != nil {
			return err
		}
	}
	if err := makeInternet(ctx, cfg, st); err != nil {
		return err
	}
	return makeMgmt(ctx, cfg, st)
}

// makeMgmt makes the management network: a switch namespace that only the
// servers' hosts are plugged into, where the directory listens. Nothing
// routes between it and the underlay.
func makeMgmt(ctx context.Context, cfg *Config, st *State) error {
	st.Mgmt = MgmtNetns(cfg.Prefix)
	if err := st.save(); err != nil {
		return err
	}
	if netnsExists(st.Mgmt) {
		return fmt.Errorf("network namespace %s already exists (a lab left over? run 'nvictl lab down')", st.Mgmt)
	}
	cfg.logf("management network: namespace %s, subnet %s (the directory's; workloads cannot route to it)", st.Mgmt, MgmtSubnet)
	if _, err := run(ctx, "ip", "netns", "add", st.Mgmt); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "mg0", "address", mgmtSwitchMAC, "type", "bridge"},
		{"link", "set", "mg0", "up"},
		{"addr", "add", netip.PrefixFrom(lastHost(MgmtSubnet), MgmtSubnet.Bits()).String(), "dev", "mg0"},
	} {
		if _, err := inNetns(ctx, st.Mgmt, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// InternetNet is the lab's stand-in for the internet: a namespace beyond
// the underlay, reached through the underlay switch, which routes.
var InternetNet = netip.MustParsePrefix("203.0.113.0/24")

// InternetNetns names the internet namespace.
func InternetNetns(prefix string) string { return prefix + "-internet" }

// InternetAddr is the internet host's address in the lab.
var InternetAddr = hostAddr(InternetNet, 2)

// makeInternet puts a host beyond the underlay (a TEST-NET-3 address) and
// makes the underlay switch its router, so that workloads can reach outside
// and be reached from outside through their servers' addresses.
func makeInternet(ctx context.Context, cfg *Config, st *State) error {
	st.Internet = InternetNetns(cfg.Prefix)
	if err := st.save(); err != nil {
		return err
	}
	if netnsExists(st.Internet) {
		return fmt.Errorf("network namespace %s already exists (a lab left over? run 'nvictl lab down')", st.Internet)
	}
	cfg.logf("internet: namespace %s at %s, routed by the underlay switch", st.Internet, InternetAddr)
	router := netip.PrefixFrom(hostAddr(InternetNet, 1), InternetNet.Bits()).String()
	steps := [][]string{
		{"ip", "netns", "add", st.Internet},
		{"ip", "netns", "exec", st.Internet, "ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "wan0", "netns", st.Underlay, "type", "veth", "peer", "name", "eth0", "netns", st.Internet},
		{"ip", "netns", "exec", st.Underlay, "ip", "addr", "add", router, "dev", "wan0"},
		{"ip", "netns", "exec", st.Underlay, "ip", "link", "set", "wan0", "up"},
		{"ip", "netns", "exec", st.Underlay, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
		{"ip", "netns", "exec", st.Internet, "ip", "addr", "add", netip.PrefixFrom(InternetAddr, InternetNet.Bits()).String(), "dev", "eth0"},
		{"ip", "netns", "exec", st.Internet, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", st.Internet, "ip", "route", "add", "default", "via", hostAddr(InternetNet, 1).String()},
		{"ip", "netns", "exec", st.Underlay, "ethtool", "-K", "wan0", "tx", "off"},
		{"ip", "netns", "exec", st.Internet, "ethtool", "-K", "eth0", "tx", "off"},
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts a long-running program inside a namespace, detached from us,
// with its output in logPath.
func spawn(ns, logPath string, prog string, args ...string) (int, error) {
	return spawnEnv(ns, logPath, nil, prog, args...)
}

// spawnEnv is spawn with extra environment variables.
func spawnEnv(ns, logPath string, env []string, prog string, args ...string) (int, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, prog}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", prog, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while we still run; after we exit, init does.
	go func() { _ = cmd.Wait() }()
	return pid, nil
}

func startDirectory(ctx context.Context, cfg *Config, st *State, nvid string) error {
	if len(cfg.Etcd) > 0 {
		st.Directory = Directory{Endpoints: cfg.Etcd, Local: cfg.Etcd}
		cfg.logf("directory: external etcd %s", strings.Join(cfg.Etcd, ","))
		return st.save()
	}
	sock := filepath.Join(st.RunDir, "etcd.sock")
	st.Directory = Directory{
		Embedded:  true,
		Endpoints: []string{"https://" + netip.AddrPortFrom(lastHost(MgmtSubnet), 2379).String()},
		Local:     []string{"unixs://" + sock},
		TLS:       true,
	}
	if err := st.save(); err != nil {
		return err
	}
	dataDir := filepath.Join(st.RunDir, "etcd")
	if p := os.Getenv(DirectoryBinEnv); p != "" {
		nvid = p
	}
	pid, err := spawn(st.Mgmt, filepath.Join(st.RunDir, "directory.log"), nvid, "directory",
		"--data-dir", dataDir,
		"--listen", st.Directory.Endpoints[0]+","+st.Directory.Local[0],
		"--peer", "http://127.0.0.1:2380",
		"--tls-cert", filepath.Join(st.Trust.Directory, pki.CertFile),
		"--tls-key", filepath.Join(st.Trust.Directory, pki.KeyFile),
		"--client-ca", filepath.Join(st.Trust.Directory, pki.CAFile))
	if err != nil {
		return err
	}
	st.Directory.PID = pid
	if err := st.save(); err != nil {
		return err
	}
	cfg.logf("directory: embedded etcd on the management network at %s", st.Directory.Endpoints[0])
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitFor(wctx, 100*time.Millisecond, func() error {
		if !alive(pid) {
			return errors.New("the directory exited: " + tail(filepath.Join(st.RunDir, "directory.log")))
		}
		if _, err := os.Stat(sock); err != nil {
			return errors.New("directory socket not there yet")
		}
		return nil
	})
}

func makeServer(ctx context.Context, cfg *Config, st *State, n int, nvid string) error {
	name := "s" + strconv.Itoa(n)
	sv := Server{
		Name:    name,
		Netns:   cfg.Prefix + "-" + name,
		DataIP:  hostAddr(cfg.Subnet, n),
		DataMAC: serverMAC(n),
		MgmtIP:  hostAddr(MgmtSubnet, n),
		Dir:     filepath.Join(st.RunDir, name),
	}
	sv.Socket = filepath.Join(sv.Dir, "nvid.sock")
	if netnsExists(sv.Netns) {
		return fmt.Errorf("network namespace %s already exists (a lab left over? run 'nvictl lab down')", sv.Netns)
	}
	st.Servers = append(st.Servers, sv)
	if err := st.save(); err != nil {
		return err
	}
	idx := len(st.Servers) - 1
	if err := os.MkdirAll(sv.Dir, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "netns", "add", sv.Netns); err != nil {
		return err
	}
	// The uplink: one end in the server, the other on the underlay switch.
	steps := [][]string{
		{"ip", "netns", "exec", sv.Netns, "ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", UplinkName, "netns", sv.Netns, "type", "veth", "peer", "name", name, "netns", st.Underlay},
		{"ip", "netns", "exec", st.Underlay, "ip", "link", "set", name, "master", "sw0", "up"},
		{"ip", "netns", "exec", sv.Netns, "ip", "link", "set", UplinkName, "up"},
		// The userspace datapath sees frames before the kernel would fill
		// in offloaded checksums: make the kernel compute them.
		{"ip", "netns", "exec", st.Underlay, "ethtool", "-K", name, "tx", "off"},
		{"ip", "netns", "exec", sv.Netns, "ethtool", "-K", UplinkName, "tx", "off"},
		// The management link: the host's way to the directory, beside
		// the bridge, never through it.
		{"ip", "link", "add", MgmtName, "netns", sv.Netns, "type", "veth", "peer", "name", name, "netns", st.Mgmt},
		{"ip", "netns", "exec", st.Mgmt, "ip", "link", "set", name, "master", "mg0", "up"},
		{"ip", "netns", "exec", sv.Netns, "ip", "addr", "add", netip.PrefixFrom(sv.MgmtIP, MgmtSubnet.Bits()).String(), "dev", MgmtName},
		{"ip", "netns", "exec", sv.Netns, "ip", "link", "set", MgmtName, "up"},
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := startOVS(ctx, sv); err != nil {
		return err
	}
	token, err := joinToken(st, name)
	if err != nil {
		return err
	}
	peerAddr := sv.MgmtIP
	if cfg.PeerAPIOnData {
		peerAddr = sv.DataIP
	}
	args := []string{
		"--name", name,
		"--identity-dir", filepath.Join(sv.Dir, "identity"),
		"--join", token,
		"--bridge", BridgeName,
		"--uplink", UplinkName,
		"--data-ip", netip.PrefixFrom(sv.DataIP, cfg.Subnet.Bits()).String(),
		"--data-mac", sv.DataMAC,
		"--ovsdb", "unix:" + filepath.Join(sv.Dir, "db.sock"),
		"--ovs-rundir", sv.Dir,
		"--socket", sv.Socket,
		"--peer-listen", netip.AddrPortFrom(peerAddr, PeerPort).String(),
		"--underlay-gateway", lastHost(cfg.Subnet).String(),
		"--underlay", MgmtSubnet.String(), // infrastructure no workload may reach
		"--etcd", strings.Join(st.Directory.Endpoints, ","),
	}
	args = append(append([]string{nvid}, args...), cfg.AgentArgs...)
	st.Servers[idx].Args = args
	pid, err := spawn(sv.Netns, filepath.Join(sv.Dir, "nvid.log"), args[0], args[1:]...)
	if err != nil {
		return err
	}
	st.Servers[idx].NvidPID = pid
	return st.save()
}

// RestartAgent kills a server's nvid the way a crash would (SIGKILL, no
// cleanup) and starts it again with the same flags, returning when it is
// ready. Its bridge keeps forwarding meanwhile; the new agent adopts the
// flows it finds.
func RestartAgent(ctx context.Context, prefix, server string) error {
	if err := Preflight(); err != nil {
		return err
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
	i := slices.IndexFunc(st.Servers, func(s Server) bool { return s.Name == server })
	if i < 0 {
		_, err := st.Server(server)
		return err
	}
	sv := &st.Servers[i]
	if len(sv.Args) == 0 {
		return fmt.Errorf("server %s: the lab state does not say how its agent was started", server)
	}
	if alive(sv.NvidPID) {
		_ = syscall.Kill(sv.NvidPID, syscall.SIGKILL)
		for j := 0; j < 100 && alive(sv.NvidPID); j++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	pid, err := spawn(sv.Netns, filepath.Join(sv.Dir, "nvid.log"), sv.Args[0], sv.Args[1:]...)
	if err != nil {
		return err
	}
	sv.NvidPID = pid
	if err := st.save(); err != nil {
		return err
	}
	return waitAgent(ctx, *sv)
}

// startOVS runs the server's own ovsdb-server and ovs-vswitchd inside its
// namespace, with every socket, pidfile and log in the server's directory.
// datapathMaxIdleMS is how long a lab server's Open vSwitch keeps an idle
// datapath flow (other_config:max-idle).
const datapathMaxIdleMS = 250

func startOVS(ctx context.Context, sv Server) error {
	db := filepath.Join(sv.Dir, "conf.db")
	if _, err := run(ctx, "ovsdb-tool", "create", db, ovsSchema); err != nil {
		return err
	}
	p := func(f string) string { return filepath.Join(sv.Dir, f) }
	if _, err := inNetns(ctx, sv.Netns, "ovsdb-server", db,
		"--remote=punix:"+p("db.sock"), "--pidfile="+p("ovsdb-server.pid"),
		"--unixctl="+p("ovsdb-server.ctl"), "--log-file="+p("ovsdb-server.log"), "--detach"); err != nil {
		return err
	}
	// Datapath flows idle for a quarter of a second leave the cache (Open
	// vSwitch keeps them ten). After every flow-table change the main
	// thread commits a new translation configuration and waits (RCU) for
	// the revalidators, which re-translate every cached flow in batches; a
	// new session's packets wait behind that, and the cost grows with the
	// flows cached. A server setting sessions up fast cached those of the
	// last ten seconds. Measured on a two-server lab, 1,000 new sessions
	// one after another, three fresh labs each, round trip p50 / p99:
	// 1.20-1.21 / 5.2-5.4 ms with ten seconds, 1.07-1.14 / 3.7-5.0 with
	// one, 1.06-1.23 / 3.5-4.1 with half, 1.01-1.11 / 2.9-3.7 with a
	// quarter; and at 32 in parallel half the server's Open vSwitch CPU. A
	// flow idle that long costs one upcall when it comes back.
	if _, err := run(ctx, "ovs-vsctl", "--db=unix:"+p("db.sock"), "--no-wait", "init", "--",
		"set", "Open_vSwitch", ".", "other_config:max-idle="+strconv.Itoa(datapathMaxIdleMS)); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", sv.Netns, "ovs-vswitchd", "unix:"+p("db.sock"),
		"--pidfile="+p("ovs-vswitchd.pid"), "--unixctl="+p("ovs-vswitchd.ctl"),
		"--log-file="+p("ovs-vswitchd.log"), "--detach")
	// OVS puts the bridge's management and controller sockets in its run
	// directory, and accepts controller sockets only there.
	cmd.Env = append(os.Environ(), "OVS_RUNDIR="+sv.Dir, "OVS_DBDIR="+sv.Dir, "OVS_LOGDIR="+sv.Dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ovs-vswitchd: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// backgroundRevalidators gives the revalidator threads of a server's
// ovs-vswitchd the lowest CPU priority. After every change to its flow
// tables Open vSwitch re-translates every cached datapath flow in those
// threads; on a real server that is background work on a spare core, but a
// lab packs every server onto the same few cores, where it would take the
// CPU from forwarding and from the agents of every other server. At the
// lowest priority it runs on what they leave. The threads exist once the
// agent has its bridge.
func backgroundRevalidators(sv Server) error {
	b, err := os.ReadFile(filepath.Join(sv.Dir, "ovs-vswitchd.pid"))
	if err != nil {
		return fmt.Errorf("revalidator priority: %w", err)
	}
	pid := strings.TrimSpace(string(b))
	tasks, err := os.ReadDir(filepath.Join("/proc", pid, "task"))
	if err != nil {
		return fmt.Errorf("revalidator priority: %w", err)
	}
	n := 0
	for _, t := range tasks {
		comm, err := os.ReadFile(filepath.Join("/proc", pid, "task", t.Name(), "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "revalidator") {
			continue
		}
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, 19); err != nil {
			return fmt.Errorf("revalidator priority of thread %d: %w", tid, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("ovs-vswitchd has no revalidator threads to give a low priority")
	}
	return nil
}

func waitAgent(ctx context.Context, sv Server) error {
	c := api.NewLocalClient(sv.Socket, 2*time.Second)
	defer c.Close()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	err := waitFor(wctx, 100*time.Millisecond, func() error {
		if !alive(sv.NvidPID) {
			return errors.New("nvid exited")
		}
		s, err := c.Status(wctx)
		if err != nil {
			return err
		}
		if !s.Ready {
			return fmt.Errorf("not ready: switch %s, directory %s", s.Switch, s.Directory)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("agent of %s did not become ready: %w\n%s", sv.Name, err, tail(filepath.Join(sv.Dir, "nvid.log")))
	}
	return nil
}

// tail returns the last lines of a log, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "--- " + path + " ---\n" + strings.Join(lines, "\n")
}
