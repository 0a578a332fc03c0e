package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"nvi/internal/labtest"
	"nvi/internal/ovnlab"
)

// TestOVNLab: the OVN cloud that nvibench measures NVI against comes up
// with two chassis, binds a port on each the way ovn-kubernetes does, and
// carries ping, UDP and TCP (through the stateful ACL's conntrack) between
// them over Geneve on the underlay; the workloads get ovn-kubernetes' MTU;
// taking it down leaves nothing behind.
func TestOVNLab(t *testing.T) {
	labtest.RequireE2E(t, append(ovnlab.Tools, "ovn-sbctl", "ping")...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	prefix := fmt.Sprintf("o%04d", rand.IntN(10000))
	l, err := ovnlab.Up(ctx, ovnlab.Config{Prefix: prefix})
	t.Cleanup(func() {
		if err := ovnlab.Down(context.Background(), prefix); err != nil {
			t.Errorf("down: %v", err)
		}
		for _, ns := range labtest.NetnsList() {
			if strings.HasPrefix(ns, prefix+"-") {
				t.Errorf("down left namespace %s behind", ns)
			}
		}
		if pids := strings.TrimSpace(sh2("pgrep", "-f", "/run/"+prefix+"/").Out); pids != "" {
			t.Errorf("down left processes behind: %s", pids)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AddSwitch(ctx, "net", netip.MustParsePrefix("10.66.0.0/24")); err != nil {
		t.Fatal(err)
	}
	c := ovnlab.Port{Name: "c", Switch: "net", Chassis: "s1", Addr: netip.MustParsePrefix("10.66.0.10/24")}
	s := ovnlab.Port{Name: "s", Switch: "net", Chassis: "s2", Addr: netip.MustParsePrefix("10.66.0.20/24")}
	for _, p := range []ovnlab.Port{c, s} {
		if err := l.AddPort(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	in := func(ns string, args ...string) result {
		return sh(ctx, nil, "ip", append([]string{"netns", "exec", ns}, args...)...)
	}
	if r := in(l.Netns("c"), "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.66.0.20"); r.Code != 0 {
		t.Fatalf("ping from chassis s1 to s2: %s", r)
	}
	mtu := ovnlab.WorkloadMTU(ovnlab.UnderlayMTU)
	if r := in(l.Netns("c"), "cat", "/sys/class/net/eth0/mtu"); strings.TrimSpace(r.Out) != strconv.Itoa(mtu) {
		t.Errorf("workload MTU %q, want %d", r.Out, mtu)
	}
	if r := in(l.Netns("c"), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", strconv.Itoa(mtu-28), "10.66.0.20"); r.Code != 0 {
		t.Errorf("a full-MTU ping does not pass: %s", r)
	}

	// UDP and TCP through the ACL's conntrack (TCP is what broke while TX
	// checksum offload was on).
	h := &Lab{t: t}
	echo := h.start(l.Netns("s"), filepath.Join(bin, "nvibench"), "echo", "--first-port", "20000", "--count", "1", "--tcp")
	eventually(t, 10*time.Second, "echo server up", func() error {
		if !strings.Contains(echo.out.String(), "ready") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	for _, mode := range [][]string{nil, {"--tcp"}} {
		args := append([]string{filepath.Join(bin, "nvibench"), "probe", "--dst", "10.66.0.20", "--first-port", "20000", "--count", "5", "--same-port"}, mode...)
		r := in(l.Netns("c"), args...)
		var pr struct {
			RTTs []time.Duration `json:"rtts"`
			Lost int             `json:"lost"`
		}
		if r.Code != 0 || json.Unmarshal([]byte(r.Out), &pr) != nil || pr.Lost > 0 || len(pr.RTTs) != 5 {
			t.Errorf("probe %v across chassis: %s", mode, r)
		}
	}

	// It goes over Geneve on the underlay, and each chassis has OVN's flows.
	dump := h.start(l.Underlay(), "tcpdump", "-l", "-c", "2", "-i", "sw0", "-nn", "udp", "port", "6081")
	eventually(t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(dump.err.String(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if r := in(l.Netns("c"), "ping", "-c", "1", "-W", "2", "10.66.0.20"); r.Code != 0 {
		t.Errorf("ping: %s", r)
	}
	if !dump.wait(10 * time.Second) {
		t.Errorf("no Geneve packets on the underlay: %s", dump.out)
	}
	for _, ch := range l.Chassis {
		if n, err := l.Flows(ctx, ch.Name); err != nil || n < 50 {
			t.Errorf("chassis %s: %d flows in br-int (%v)", ch.Name, n, err)
		}
	}
}
