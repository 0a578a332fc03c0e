// Package ovstest starts a throwaway Open vSwitch bridge for tests that
// need a real switch: ovsdb-server and ovs-vswitchd (userspace netdev
// datapath) in a temporary directory and network namespace, one bridge
// speaking OpenFlow 1.3 in fail_mode=secure, with a passive controller
// socket for the code under test and the management socket for ovs-ofctl.
// Everything is killed and removed by t.Cleanup, also when the test fails.
//
// It builds on nvi/ovsdb/ovsdbtest, so the same skip rules apply: tests are
// skipped where OVS (or root, for the namespace) is missing, unless
// NVI_REQUIRE_OVS=1 makes that a failure.
package ovstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nvi/ovsdb/ovsdbtest"
)

// Switch is a running throwaway bridge.
type Switch struct {
	// Server is the underlying OVS (database, vswitchd, namespace).
	Server *ovsdbtest.Server
	// DBSock is ovsdb-server's unix socket.
	DBSock string
	// Rundir is ovs-vswitchd's run directory (OVS_RUNDIR).
	Rundir string
	// Bridge is the bridge's name.
	Bridge string
	// ControllerSock is the bridge's passive controller socket
	// (punix:<Rundir>/<Bridge>.nvid): dial it with openflow.Dial.
	ControllerSock string
	// MgmtSock is the bridge's management socket (<Rundir>/<Bridge>.mgmt),
	// which ovs-ofctl uses.
	MgmtSock string

	t testing.TB
}

// Start runs OVS with one bridge "br0" and returns once its controller
// and management sockets are listening.
func Start(t testing.TB) *Switch {
	t.Helper()
	srv := ovsdbtest.Start(t)
	s := &Switch{
		Server: srv, DBSock: srv.DBSock, Rundir: srv.Dir, Bridge: "br0", t: t,
	}
	// OVS accepts punix: controller paths only inside its run directory
	// and named after the bridge.
	s.ControllerSock = filepath.Join(s.Rundir, s.Bridge+".nvid")
	s.MgmtSock = filepath.Join(s.Rundir, s.Bridge+".mgmt")
	srv.MustVsctl("add-br", s.Bridge,
		"--", "set", "bridge", s.Bridge, "datapath_type=netdev", "protocols=OpenFlow13", "fail_mode=secure",
		"--", "set-controller", s.Bridge, "punix:"+s.ControllerSock)
	// ovs-vsctl returned after ovs-vswitchd applied the change, so both
	// listening sockets exist now.
	for _, sock := range []string{s.MgmtSock, s.ControllerSock} {
		if _, err := os.Stat(sock); err != nil {
			t.Fatalf("ovstest: bridge %s is up but %v", s.Bridge, err)
		}
	}
	return s
}

// Ofctl runs "ovs-ofctl -O OpenFlow13 --no-names CMD unix:<MgmtSock>
// ARGS..." and returns its trimmed stdout: Ofctl("dump-flows"),
// Ofctl("add-flow", "priority=1,actions=drop").
func (s *Switch) Ofctl(cmd string, args ...string) (string, error) {
	full := append([]string{"-O", "OpenFlow13", "--no-names", cmd, "unix:" + s.MgmtSock}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "ovs-ofctl", full...)
	c.Env = append(os.Environ(), "OVS_RUNDIR="+s.Rundir)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("ovs-ofctl %s: %w: %s", strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// MustOfctl is Ofctl that fails the test on error.
func (s *Switch) MustOfctl(cmd string, args ...string) string {
	s.t.Helper()
	out, err := s.Ofctl(cmd, args...)
	if err != nil {
		s.t.Fatalf("ovstest: %v", err)
	}
	return out
}

// Vsctl runs ovs-vsctl against the switch's database.
func (s *Switch) Vsctl(args ...string) (string, error) { return s.Server.Vsctl(args...) }
