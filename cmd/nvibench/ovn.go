package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"nvi/internal/ovnlab"
	"nvi/lab"
)

// OVN's side of the comparison: an OVN lab (internal/ovnlab) shaped like
// NVI's two servers, with a client workload on chassis s1 and a server
// workload on s2, measured by the same probe, echo server and iperf3 as
// NVI, in the same run.
const (
	ovnNet      = "10.66.0.0/24"
	ovnClientIP = "10.66.0.10"
	ovnServerIP = "10.66.0.20"
	ovnSwitch   = "net"
)

type ovnSide struct {
	l *ovnlab.Lab
}

func (o *ovnSide) client() string { return o.l.Netns("c") }
func (o *ovnSide) server() string { return o.l.Netns("s") }

// upOVN brings up the OVN lab (cleaning up after an earlier run first) and
// its two workloads.
func (b *bench) upOVN() (*ovnSide, error) {
	fmt.Fprintln(os.Stderr, "nvibench: bringing up a two-chassis OVN lab (Geneve, userspace OVS)...")
	l, err := ovnlab.Up(b.ctx, ovnlab.Config{Prefix: ovnlab.DefaultPrefix})
	if err != nil {
		return nil, err
	}
	o := &ovnSide{l: l}
	if err := l.AddSwitch(b.ctx, ovnSwitch, netip.MustParsePrefix(ovnNet)); err != nil {
		return o, err
	}
	for _, p := range []ovnlab.Port{
		{Name: "c", Switch: ovnSwitch, Chassis: "s1", Addr: netip.MustParsePrefix(ovnClientIP + "/24")},
		{Name: "s", Switch: ovnSwitch, Chassis: "s2", Addr: netip.MustParsePrefix(ovnServerIP + "/24")},
	} {
		if err := l.AddPort(b.ctx, p); err != nil {
			return o, err
		}
	}
	return o, nil
}

// flowCount is the number of OpenFlow flows on each of two servers.
type flowCount [2]int

func (f flowCount) String() string { return fmt.Sprintf("%d / %d", f[0], f[1]) }
func (f flowCount) mean() float64  { return float64(f[0]+f[1]) / 2 }

// nviFlows counts the flows on the bridges of NVI's servers s1 and s2.
func (b *bench) nviFlows() (flowCount, error) {
	var fc flowCount
	for i, s := range []string{"s1", "s2"} {
		out, err := b.run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "unix:"+filepath.Join(lab.RunDir(b.lab), s, lab.BridgeName+".mgmt"))
		if err != nil {
			return fc, err
		}
		fc[i] = ovnlab.CountFlows(out)
	}
	return fc, nil
}

// flows counts the flows on br-int of OVN's chassis s1 and s2.
func (o *ovnSide) flows(b *bench) (flowCount, error) {
	var fc flowCount
	for i, s := range []string{"s1", "s2"} {
		n, err := o.l.Flows(b.ctx, s)
		if err != nil {
			return fc, err
		}
		fc[i] = n
	}
	return fc, nil
}

// portTimes is the time from a port's creation to its first packet
// answered, measured twice over: from the moment the port is made known to
// the system (the record in the central database, then the port on the
// bridge labelled with its iface-id, as a CNI plugin or a hypervisor does;
// the workload's namespace and veth exist already), and the same with the
// namespace and veth made inside the time.
// flows counts each server's flows with those workloads still there: all
// of them are on s1.
type portTimes struct {
	bind, full []time.Duration
	flows      flowCount
}

// portEcho is the server workloads' echo port for these measures.
const portEcho = 30000

// firstAnswer runs the probe in namespace ns until dst answers and
// returns how long after t0 that was.
func (b *bench) firstAnswer(ns, dst string, t0 time.Time) (time.Duration, error) {
	out, err := b.in(ns, b.self, "probe", "--dst", dst, "--first-port", strconv.Itoa(portEcho), "--until", "20s", "--every", "5ms")
	if err != nil {
		return 0, err
	}
	var pr probeResult
	if err := json.Unmarshal([]byte(out), &pr); err != nil {
		return 0, fmt.Errorf("probe: %w: %s", err, out)
	}
	return time.Unix(0, pr.Answered).Sub(t0), nil
}

// nviPortTimes measures NVI: n ports on s1 recorded with "nvictl endpoint
// create" and plugged with their iface-id, and n workloads made with
// "nvictl lab workload add", each until its first datagram to the server
// workload on s2 is answered (a new session's setup included).
func (b *bench) nviPortTimes(n int) (portTimes, error) {
	var pt portTimes
	stop := b.startEchoIn(b.lab+"-s", portEcho, 1)
	defer stop()
	srvNS := b.lab + "-s1"
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s-p%d", b.lab, i)
		ip := netip.AddrFrom4([4]byte{10, 9, 1, byte(i)})
		mac := fmt.Sprintf("52:54:00:09:01:%02x", i) // NVI derives its own in 0a:...
		veth := fmt.Sprintf("%sp%d", b.lab, i)
		defer func() { _ = lab.DeleteNetns(b.ctx, name) }()
		if err := lab.PlumbGuest(b.ctx, lab.Guest{Netns: name, HostNetns: srvNS, HostIface: veth, MAC: mac, Addr: netip.PrefixFrom(ip, 16)}); err != nil {
			return pt, err
		}
		t0 := time.Now()
		if _, err := b.run(b.nvictl, "endpoint", "create", "bench/"+fmt.Sprintf("p%d", i), "--net", "net", "--server", "s1",
			"--ip", ip.String(), "--mac", mac, "--iface-id", name); err != nil {
			return pt, err
		}
		if _, err := b.run("ovs-vsctl", "--db=unix:"+filepath.Join(lab.RunDir(b.lab), "s1", "db.sock"), "add-port", lab.BridgeName, veth,
			"--", "set", "Interface", veth, "external_ids:iface-id="+name, "external_ids:attached-mac="+mac); err != nil {
			return pt, err
		}
		d, err := b.firstAnswer(name, "10.9.0.20", t0)
		if err != nil {
			return pt, fmt.Errorf("NVI port %s: %w", name, err)
		}
		pt.bind = append(pt.bind, d)

		wname := fmt.Sprintf("%s-w%d", b.lab, i)
		t0 = time.Now()
		if _, err := b.run(b.nvictl, "lab", "workload", "add", wname, "--server", "s1", "--net", "bench/net", "--ip", fmt.Sprintf("10.9.2.%d", i)); err != nil {
			return pt, err
		}
		if d, err = b.firstAnswer(wname, "10.9.0.20", t0); err != nil {
			return pt, fmt.Errorf("NVI workload %s: %w", wname, err)
		}
		pt.full = append(pt.full, d)
	}
	var err error
	pt.flows, err = b.nviFlows()
	return pt, err
}

// portTimes measures OVN the same way: n logical switch ports on chassis
// s1 created with ovn-nbctl and plugged into br-int with their iface-id
// (ovnlab.Bind), and n more whose namespace and veth are made inside the
// time, each until its first datagram to the server workload on s2 is
// answered.
func (o *ovnSide) portTimes(b *bench, n int) (portTimes, error) {
	var pt portTimes
	stop := b.startEchoIn(o.server(), portEcho, 1)
	defer stop()
	for i := 1; i <= n; i++ {
		p := ovnlab.Port{Name: fmt.Sprintf("p%d", i), Switch: ovnSwitch, Chassis: "s1", Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 66, 0, byte(100 + i)}), 24)}
		if err := o.l.Plumb(b.ctx, p); err != nil {
			return pt, err
		}
		t0 := time.Now()
		if err := o.l.Bind(b.ctx, p); err != nil {
			return pt, err
		}
		d, err := b.firstAnswer(o.l.Netns(p.Name), ovnServerIP, t0)
		if err != nil {
			return pt, fmt.Errorf("OVN port %s: %w", p.Name, err)
		}
		pt.bind = append(pt.bind, d)

		w := ovnlab.Port{Name: fmt.Sprintf("w%d", i), Switch: ovnSwitch, Chassis: "s1", Addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 66, 0, byte(200 + i)}), 24)}
		t0 = time.Now()
		if err := o.l.Plumb(b.ctx, w); err != nil {
			return pt, err
		}
		if err := o.l.Bind(b.ctx, w); err != nil {
			return pt, err
		}
		if d, err = b.firstAnswer(o.l.Netns(w.Name), ovnServerIP, t0); err != nil {
			return pt, fmt.Errorf("OVN port %s: %w", w.Name, err)
		}
		pt.full = append(pt.full, d)
	}
	var err error
	pt.flows, err = o.flows(b)
	return pt, err
}

// pathMTU measures what OVN's path itself carries: the client's and the
// server's interfaces (both ends of each veth) are raised to the
// underlay's MTU for the measure and put back after.
func (o *ovnSide) pathMTU(b *bench) (int, error) {
	set := func(mtu int) error {
		for _, w := range []struct{ port, chassis string }{{"c", "s1"}, {"s", "s2"}} {
			c, err := o.l.Find(w.chassis)
			if err != nil {
				return err
			}
			if _, err := b.in(o.l.Netns(w.port), "ip", "link", "set", "eth0", "mtu", strconv.Itoa(mtu)); err != nil {
				return err
			}
			if _, err := b.in(c.Netns, "ip", "link", "set", "ov-"+w.port, "mtu", strconv.Itoa(mtu)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := set(ovnlab.UnderlayMTU); err != nil {
		return 0, err
	}
	defer func() { _ = set(ovnlab.WorkloadMTU(ovnlab.UnderlayMTU)) }()
	return b.mtuLeft(o.client(), ovnServerIP)
}

// sideResult is what one system measured.
type sideResult struct {
	first, base     []time.Duration // first packets of new connections; an established one
	rate            float64         // new connections per second
	throughput      float64         // bit/s, the median of rounds
	rounds          []float64       // every throughput round's
	mtu             int             // left to the workload
	pathMTU         int             // what the path carries (OVN: the workload's MTU raised)
	flowsIdle       flowCount       // with the two workloads only
	flowsBusy       flowCount       // after the latency and rate runs' connections
	ports           portTimes
	newConnsCounted int
}

func (r sideResult) added(q float64) time.Duration {
	return max(percentile(r.first, q)-percentile(r.base, 0.5), 0)
}

func medianDur(ds []time.Duration) time.Duration { return percentile(ds, 0.5) }

// printComparison prints NVI beside OVN, with which is ahead on each
// measure: the ratio is NVI's over OVN's, and "ahead" says who wins
// whichever way the measure counts.
func printComparison(w io.Writer, nvi, ovn sideResult, ovnVersion string, rounds, ports int) {
	fmt.Fprintf(w, "\nNVI beside OVN %s (Geneve between chassis, ports bound as ovn-kubernetes binds them,\n"+
		"stateful ACL), both on userspace OVS in the same run; ratios NVI / OVN\n\n", ovnVersion)
	const f = "%-56s %14s %14s %8s %6s\n"
	fmt.Fprintf(w, f, "measure", "NVI", "OVN", "ratio", "ahead")
	fmt.Fprintf(w, f, strings.Repeat("-", 56), strings.Repeat("-", 14), strings.Repeat("-", 14), strings.Repeat("-", 8), strings.Repeat("-", 6))
	row := func(m string, x, y float64, v, u string, higherBetter bool) {
		ratio := "-"
		if y > 0 {
			ratio = fmt.Sprintf("%.2f", x/y)
		}
		fmt.Fprintf(w, f, m, v, u, ratio, ahead(x, y, higherBetter))
	}
	dur := func(m string, x, y time.Duration) {
		row(m, float64(x), float64(y), fmtDur(x), fmtDur(y), false)
	}
	row(fmt.Sprintf("TCP throughput (median of %d)", rounds), nvi.throughput, ovn.throughput,
		fmt.Sprintf("%.2f Gbit/s", nvi.throughput/1e9), fmt.Sprintf("%.2f Gbit/s", ovn.throughput/1e9), true)
	span := func(v []float64) string {
		return fmt.Sprintf("%.2f-%.2f", slices.Min(v)/1e9, slices.Max(v)/1e9)
	}
	fmt.Fprintf(w, f, "  lowest-highest round, Gbit/s", span(nvi.rounds), span(ovn.rounds), "", "")
	row("MTU left to the workload (largest ping -M do + 28)", float64(nvi.mtu), float64(ovn.mtu), strconv.Itoa(nvi.mtu), strconv.Itoa(ovn.mtu), true)
	row("  what the path carries (OVN: workload MTU raised)", float64(nvi.pathMTU), float64(ovn.pathMTU), strconv.Itoa(nvi.pathMTU), strconv.Itoa(ovn.pathMTU), true)
	row("OpenFlow flows per server s1 / s2, 2 workloads", nvi.flowsIdle.mean(), ovn.flowsIdle.mean(), nvi.flowsIdle.String(), ovn.flowsIdle.String(), false)
	row(fmt.Sprintf("  after %d new connections", nvi.newConnsCounted), nvi.flowsBusy.mean(), ovn.flowsBusy.mean(), nvi.flowsBusy.String(), ovn.flowsBusy.String(), false)
	row(fmt.Sprintf("  and %d more workloads on s1 (none on s2)", 2*ports), nvi.ports.flows.mean(), ovn.ports.flows.mean(), nvi.ports.flows.String(), ovn.ports.flows.String(), false)
	dur(fmt.Sprintf("port created -> first packet answered (median of %d)", ports), medianDur(nvi.ports.bind), medianDur(ovn.ports.bind))
	dur("  with the workload's namespace and veth made too", medianDur(nvi.ports.full), medianDur(ovn.ports.full))
	dur(fmt.Sprintf("first-packet added latency p50 (%d new connections)", len(nvi.first)), nvi.added(0.5), ovn.added(0.5))
	dur("first-packet added latency p99", nvi.added(0.99), ovn.added(0.99))
	dur("first-packet round trip p50", medianDur(nvi.first), medianDur(ovn.first))
	row("new connections per second (32 in parallel)", nvi.rate, ovn.rate, fmt.Sprintf("%.0f/s", nvi.rate), fmt.Sprintf("%.0f/s", ovn.rate), true)
	dur("established round trip p50", medianDur(nvi.base), medianDur(ovn.base))
	fmt.Fprintln(w, "\nNVI: a new connection to a new (workload, port) sets up a session (agents, peer API, flows on both")
	fmt.Fprintln(w, "bridges); OVN's first packet of a new connection costs upcalls and conntrack only. NVI's flows grow")
	fmt.Fprintln(w, "with the sessions a server carries; OVN's with the logical network (ports, switches, ACLs),")
	fmt.Fprintln(w, "wherever its ports are.")
}

// ahead says which of NVI (x) and OVN (y) is ahead on a measure.
// evenWithin is how close two figures of one run are called even: these
// cores are shared and noisy, and a difference of a few percent is no
// one's lead.
const evenWithin = 0.03

func ahead(x, y float64, higherBetter bool) string {
	switch {
	case x == y || y != 0 && x/y > 1-evenWithin && x/y < 1+evenWithin:
		return "even"
	case (x > y) == higherBetter:
		return "NVI"
	default:
		return "OVN"
	}
}

// ovnVersion is the installed OVN's version.
func ovnVersion() string {
	out, err := exec.Command("ovn-controller", "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	return f[len(f)-1]
}
