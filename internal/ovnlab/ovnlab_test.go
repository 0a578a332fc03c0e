package ovnlab

import (
	"net/netip"
	"testing"
)

func TestCountFlows(t *testing.T) {
	for _, tc := range []struct {
		name, dump string
		want       int
	}{
		{"empty reply", "OFPST_FLOW reply (OF1.3) (xid=0x2):\n", 0},
		{"nothing", "", 0},
		{"OpenFlow 1.3, two replies", `OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x0, duration=6.851s, table=0, n_packets=69684, n_bytes=5309202, priority=100,in_port=1 actions=move:NXM_NX_TUN_ID[0..23]->OXM_OF_METADATA[0..23],resubmit(,40)
 cookie=0x732c45f6, duration=6.787s, table=0, n_packets=2, n_bytes=33, priority=100,in_port=2 actions=set_field:0x2->reg13,resubmit(,8)
OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x0, duration=7.035s, table=0, n_packets=0, n_bytes=0, priority=0 actions=drop
`, 3},
		{"Nicira format, table names", `NXST_FLOW reply (xid=0x4):
 cookie=0x1000000000000000, duration=1.2s, table="classifier", n_packets=0, n_bytes=0, priority=0 actions=drop
`, 1},
	} {
		if got := CountFlows(tc.dump); got != tc.want {
			t.Errorf("%s: CountFlows = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestPodMAC(t *testing.T) {
	if got := PodMAC(netip.MustParseAddr("10.66.0.20")); got != "0a:58:0a:42:00:14" {
		t.Errorf("PodMAC(10.66.0.20) = %s", got)
	}
}

func TestWorkloadMTU(t *testing.T) {
	if got := WorkloadMTU(1500); got != 1400 {
		t.Errorf("WorkloadMTU(1500) = %d, want ovn-kubernetes' 1400", got)
	}
	if got := WorkloadMTU(9000); got != 8900 {
		t.Errorf("WorkloadMTU(9000) = %d", got)
	}
}

func TestHostAddr(t *testing.T) {
	if got := hostAddr(DefaultSubnet, 2); got != netip.MustParseAddr("198.18.64.2") {
		t.Errorf("hostAddr = %s", got)
	}
	if got := hostAddr(netip.MustParsePrefix("10.0.0.0/16"), 300); got != netip.MustParseAddr("10.0.1.44") {
		t.Errorf("hostAddr across a byte = %s", got)
	}
}

func TestPortFill(t *testing.T) {
	p := Port{Name: "c", Addr: netip.MustParsePrefix("10.66.0.10/24")}
	if err := p.fill(); err != nil {
		t.Fatal(err)
	}
	if p.MAC != "0a:58:0a:42:00:0a" || p.MTU != 1400 {
		t.Errorf("defaults: MAC %s MTU %d", p.MAC, p.MTU)
	}
	for _, bad := range []Port{
		{Name: "Bad", Addr: netip.MustParsePrefix("10.66.0.10/24")},
		{Name: "toolongportname", Addr: netip.MustParsePrefix("10.66.0.10/24")},
		{Name: "v6", Addr: netip.MustParsePrefix("fd00::1/64")},
		{Name: "none"},
	} {
		if err := bad.fill(); err == nil {
			t.Errorf("port %+v accepted", bad)
		}
	}
}

func TestDownRefusesBadPrefix(t *testing.T) {
	// Down removes namespaces by prefix: an empty or odd one must never
	// reach the glob.
	for _, p := range []string{"", "../x", "a-b", "Nvo"} {
		if err := Down(t.Context(), p); err == nil {
			t.Errorf("Down(%q) accepted", p)
		}
	}
}
