// Package ovsdbtest starts a throwaway ovsdb-server, and optionally an
// ovs-vswitchd inside a throwaway network namespace, for tests that need the
// real Open vSwitch. Everything lives in a short temporary directory and is
// torn down by t.Cleanup, also when the test fails.
//
// Tests are skipped when the OVS binaries or root privileges are missing,
// unless NVI_REQUIRE_OVS=1 is set (CI sets it so that a broken install
// fails loudly instead of silently skipping).
package ovsdbtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SchemaPath is where Debian's openvswitch-common installs the schema.
const SchemaPath = "/usr/share/openvswitch/vswitch.ovsschema"

// Options selects what to start.
type Options struct {
	// VSwitchd also starts ovs-vswitchd (userspace datapath works without
	// the kernel module).
	VSwitchd bool
	// Netns runs ovs-vswitchd inside a fresh network namespace, so that the
	// bridges' internal devices and test veths never touch the host. Only
	// meaningful with VSwitchd.
	Netns bool
	// Init runs "ovs-vsctl --no-wait init" so the root row exists.
	Init bool
}

// Server is a running throwaway OVS.
type Server struct {
	Dir    string // temporary directory: database, sockets, logs
	DBSock string // ovsdb-server's unix socket
	Addr   string // "unix:" + DBSock, for ovsdb.Dial and ovs-vsctl --db
	Netns  string // network namespace of ovs-vswitchd, "" if none
	// VSwitchdCtl is ovs-vswitchd's unixctl socket ("" without it), for
	// ovs-appctl -t and ovs-ofctl.
	VSwitchdCtl string

	t        testing.TB
	vswitchd bool
}

// Start runs ovsdb-server and ovs-vswitchd in a new network namespace, with
// the root row initialized: the usual environment for nvid tests.
func Start(t testing.TB) *Server {
	return StartWith(t, Options{VSwitchd: true, Netns: true, Init: true})
}

// StartDB runs ovsdb-server alone on an empty database (not even the root
// row), for tests of the database layer.
func StartDB(t testing.TB) *Server {
	return StartWith(t, Options{})
}

// Available says why OVS tests cannot run here ("" when they can).
func Available() string {
	for _, bin := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " not installed (Debian: openvswitch-switch, iproute2)"
		}
	}
	if _, err := os.Stat(SchemaPath); err != nil {
		return "schema missing: " + err.Error()
	}
	if os.Geteuid() != 0 {
		return "not root"
	}
	return ""
}

// StartWith starts what opts asks for.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	if why := Available(); why != "" {
		if os.Getenv("NVI_REQUIRE_OVS") == "1" {
			t.Fatalf("ovsdbtest: NVI_REQUIRE_OVS=1 but %s", why)
		}
		t.Skipf("ovsdbtest: skipping: %s", why)
	}
	// A short directory: unix socket paths are limited to 107 bytes and
	// t.TempDir() paths grow with the test name.
	dir, err := os.MkdirTemp("", "nviovs")
	if err != nil {
		t.Fatalf("ovsdbtest: %v", err)
	}
	s := &Server{Dir: dir, DBSock: filepath.Join(dir, "db.sock"), t: t, vswitchd: opts.VSwitchd}
	s.Addr = "unix:" + s.DBSock
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpLogs()
		}
		_ = os.RemoveAll(dir)
	})

	db := filepath.Join(dir, "conf.db")
	if out, err := exec.Command("ovsdb-tool", "create", db, SchemaPath).CombinedOutput(); err != nil {
		t.Fatalf("ovsdbtest: ovsdb-tool create: %v: %s", err, out)
	}
	s.daemon("ovsdb-server", nil, "ovsdb-server", db,
		"--remote=punix:"+s.DBSock,
		"--unixctl="+filepath.Join(dir, "ovsdb.ctl"),
		"--log-file="+filepath.Join(dir, "ovsdb.log"),
		"-vconsole:off")
	s.waitSocket(s.DBSock)
	if opts.Init {
		s.MustVsctl("--no-wait", "init")
	}
	if !opts.VSwitchd {
		return s
	}
	var prefix []string
	if opts.Netns {
		s.Netns = "nvi-ovsdbtest-" + randomHex(4)
		if out, err := exec.Command("ip", "netns", "add", s.Netns).CombinedOutput(); err != nil {
			t.Fatalf("ovsdbtest: ip netns add: %v: %s", err, out)
		}
		ns := s.Netns
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		if _, err := s.NetnsExec("ip", "link", "set", "lo", "up"); err != nil {
			t.Fatalf("ovsdbtest: %v", err)
		}
		prefix = []string{"ip", "netns", "exec", s.Netns}
	}
	s.VSwitchdCtl = filepath.Join(dir, "vswitchd.ctl")
	args := append(prefix, "ovs-vswitchd", s.Addr,
		"--unixctl="+s.VSwitchdCtl,
		"--log-file="+filepath.Join(dir, "vswitchd.log"),
		"-vconsole:off")
	s.daemon("ovs-vswitchd", []string{"OVS_RUNDIR=" + dir}, args...)
	s.waitSocket(s.VSwitchdCtl)
	return s
}

// daemon starts a process in the foreground (not --detach) so that the test
// owns it: it is killed in Cleanup, and by the kernel (Pdeathsig) if the
// test binary dies without running Cleanup.
func (s *Server) daemon(name string, env []string, args ...string) {
	t := s.t
	t.Helper()
	out, err := os.Create(filepath.Join(s.Dir, name+".out"))
	if err != nil {
		t.Fatalf("ovsdbtest: %v", err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), append([]string{
		"OVS_RUNDIR=" + s.Dir, "OVS_LOGDIR=" + s.Dir, "OVS_DBDIR=" + s.Dir, "OVS_SYSCONFDIR=" + s.Dir,
	}, env...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("ovsdbtest: start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
}

func (s *Server) waitSocket(path string) {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.dumpLogs()
			s.t.Fatalf("ovsdbtest: %s did not come up: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) dumpLogs() {
	for _, f := range []string{"ovsdb.log", "ovsdb-server.out", "vswitchd.log", "ovs-vswitchd.out"} {
		b, err := os.ReadFile(filepath.Join(s.Dir, f))
		if err != nil || len(b) == 0 {
			continue
		}
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		s.t.Logf("ovsdbtest: tail of %s:\n%s", f, b)
	}
}

// Vsctl runs ovs-vsctl against this server (with --no-wait when there is no
// ovs-vswitchd to wait for) and returns its trimmed stdout.
func (s *Server) Vsctl(args ...string) (string, error) {
	full := []string{"--db=" + s.Addr, "--timeout=20"}
	if !s.vswitchd {
		full = append(full, "--no-wait")
	}
	full = append(full, args...)
	return s.run("ovs-vsctl", full...)
}

// MustVsctl is Vsctl that fails the test on error.
func (s *Server) MustVsctl(args ...string) string {
	s.t.Helper()
	out, err := s.Vsctl(args...)
	if err != nil {
		s.t.Fatalf("ovsdbtest: %v", err)
	}
	return out
}

// NetnsExec runs a command inside the server's namespace (on the host if
// there is none) and returns its trimmed stdout.
func (s *Server) NetnsExec(args ...string) (string, error) {
	if s.Netns != "" {
		args = append([]string{"netns", "exec", s.Netns}, args...)
		return s.run("ip", args...)
	}
	return s.run(args[0], args[1:]...)
}

// AddVeth creates a veth pair inside the namespace, both ends up. Only with
// a namespace: veths made on the host would leak into it.
func (s *Server) AddVeth(a, b string) {
	s.t.Helper()
	if s.Netns == "" {
		s.t.Fatalf("ovsdbtest: AddVeth needs a namespace (Options.Netns)")
	}
	for _, cmd := range [][]string{
		{"ip", "link", "add", a, "type", "veth", "peer", "name", b},
		{"ip", "link", "set", a, "up"},
		{"ip", "link", "set", b, "up"},
	} {
		if _, err := s.NetnsExec(cmd...); err != nil {
			s.t.Fatalf("ovsdbtest: %v", err)
		}
	}
}

func (s *Server) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "OVS_RUNDIR="+s.Dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
