package docker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestIPLinks makes and removes a pair with the real kernel: the container
// end in this namespace with the endpoint's MAC, the host end up in the
// bridge's namespace, TX checksum offload off on both; a failed pair leaves
// nothing.
func TestIPLinks(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("NVI_REQUIRE_E2E") != "" {
			t.Fatal("needs root")
		}
		t.Skip("needs root; set NVI_REQUIRE_E2E=1 to make this a failure")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := fmt.Sprintf("nvidk-links-%04d", rand.IntN(10000))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	id := fmt.Sprintf("%012x", rand.Int64N(1<<48))
	ctr, host := vethNames(id)
	l := IPLinks{BridgeNetns: ns}
	t.Cleanup(func() { _ = l.DeleteVeth(context.Background(), ctr, host) })

	if err := l.AddVeth(ctx, ctr, host, "02:42:0a:01:00:10"); err != nil {
		t.Fatal(err)
	}
	out := sh(t, "ip", "-o", "link", "show", ctr)
	if !strings.Contains(out, "link/ether 02:42:0a:01:00:10") {
		t.Errorf("container end: %s", out)
	}
	if out := sh(t, "ethtool", "-k", ctr); !strings.Contains(out, "tx-checksumming: off") {
		t.Errorf("container end keeps TX checksum offload:\n%s", out)
	}
	if out := sh(t, "ip", "netns", "exec", ns, "ip", "-o", "link", "show", host); !strings.Contains(out, ",UP") && !strings.Contains(out, "<UP") {
		t.Errorf("host end is not up: %s", out)
	}
	if out := sh(t, "ip", "netns", "exec", ns, "ethtool", "-k", host); !strings.Contains(out, "tx-checksumming: off") {
		t.Errorf("host end keeps TX checksum offload:\n%s", out)
	}
	if err := l.AddVeth(ctx, ctr, host, "02:42:0a:01:00:10"); err == nil {
		t.Error("a second pair of the same names was made")
	}
	if err := l.DeleteVeth(ctx, ctr, host); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteVeth(ctx, ctr, host); err != nil {
		t.Errorf("deleting a pair that is gone: %v", err)
	}
	for _, c := range [][]string{{"ip", "link", "show", ctr}, {"ip", "netns", "exec", ns, "ip", "link", "show", host}} {
		if err := exec.Command(c[0], c[1:]...).Run(); err == nil {
			t.Errorf("%s still exists", c[len(c)-1])
		}
	}

	// A bridge namespace that does not exist: the pair is never half made.
	bad := IPLinks{BridgeNetns: ns + "-gone"}
	if err := bad.AddVeth(ctx, ctr, host, "02:42:0a:01:00:10"); err == nil {
		t.Fatal("a pair into a missing namespace was made")
	}
	if err := exec.Command("ip", "link", "show", ctr).Run(); err == nil {
		t.Errorf("%s was left behind", ctr)
	}
	// A MAC the kernel refuses: the same.
	if err := l.AddVeth(ctx, ctr, host, "01:00:5e:00:00:01"); err == nil {
		t.Fatal("a multicast MAC was accepted")
	}
	if err := exec.Command("ip", "link", "show", ctr).Run(); err == nil {
		t.Errorf("%s was left behind", ctr)
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
