package ovstest

import (
	"strings"
	"testing"
)

func TestStart(t *testing.T) {
	sw := Start(t)
	out := sw.MustOfctl("show")
	if !strings.Contains(out, "LOCAL("+sw.Bridge+")") {
		t.Errorf("ovs-ofctl show:\n%s", out)
	}
	sw.MustOfctl("add-flow", "table=3,priority=7,actions=drop")
	if out := sw.MustOfctl("dump-flows"); !strings.Contains(out, "table=3, n_packets=0, n_bytes=0, priority=7 actions=drop") {
		t.Errorf("dump-flows:\n%s", out)
	}
	if got, err := sw.Vsctl("get", "bridge", sw.Bridge, "datapath_type"); err != nil || got != "netdev" {
		t.Errorf("datapath_type = %q, %v", got, err)
	}
	if _, err := sw.Ofctl("no-such-command"); err == nil {
		t.Error("a bad ovs-ofctl command succeeded")
	}
}
