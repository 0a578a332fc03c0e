// Command nvibench measures NVI on a lab and prints a table: the latency a
// new session adds to a connection's first packet, whether that drifts as a
// server holds 10,000 live sessions, how many sessions per second a server
// sets up, and TCP throughput across servers through NVI against the same
// two bridges doing plain L2 switching, in the same run. Then it sets NVI
// beside OVN, what users would pick instead, measured in the same run on
// the same machine (internal/ovnlab): throughput, the MTU left to the
// workload, flows per server, the time from a port's creation to its first
// packet, and the first-packet, rate and round-trip measures.
//
// It runs as root, brings up its own two-server labs and takes them down
// again: "nvb", as every lab runs (the peer API over mutual TLS), and "nvp",
// the same with --insecure-peer-api, so that the cost of authenticating
// agents is measured in the same run, rounds alternating between the two,
// and the OVN lab "nvo" (--ovn=false leaves it out), measured in the same
// rounds; then, with those down, "nvl" for the live sessions. The probe and
// the echo server run inside the workloads' namespaces: nvibench starts
// itself there with "ip netns exec".
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"nvi/internal/ovnlab"
	"nvi/lab"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "echo":
			exitOn(runEcho(os.Args[2:]))
			return
		case "probe":
			exitOn(runProbe(os.Args[2:]))
			return
		}
	}
	exitOn(runBench(os.Args[1:]))
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "nvibench: %v\n", err)
		os.Exit(1)
	}
}

// prefix is the main lab's; plainPrefix the one whose peer API runs
// without TLS, for the comparison only.
const (
	prefix      = "nvb"
	plainPrefix = "nvp"
	livePrefix  = "nvl"
)

type bench struct {
	lab     string // the lab this bench value drives
	ctx     context.Context
	nvictl  string
	self    string
	verbose bool
}

func (b *bench) run(name string, args ...string) (string, error) {
	cmd := exec.CommandContext(b.ctx, name, args...)
	cmd.Env = append(os.Environ(), "NVI_LAB="+b.lab)
	out, err := cmd.CombinedOutput()
	if b.verbose {
		fmt.Fprintf(os.Stderr, "$ %s %s\n%s", name, strings.Join(args, " "), out)
	}
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (b *bench) in(ns string, args ...string) (string, error) {
	return b.run("ip", append([]string{"netns", "exec", ns}, args...)...)
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("nvibench", flag.ContinueOnError)
	sessions := fs.Int("sessions", 1000, "new sessions for the first-packet latency (at least 1000)")
	burst := fs.Int("burst", 1000, "sessions set up as fast as possible for the setup rate")
	seconds := fs.Int("seconds", 4, "length of each throughput run")
	rounds := fs.Int("rounds", 3, "throughput runs of each kind, alternating; medians are compared")
	liveN := fs.Int("live", 10000, "live sessions on one server for the drift measure (a multiple of 5, at most 10200)")
	withOVN := fs.Bool("ovn", true, "measure OVN beside NVI in the same run (an OVN lab of two chassis, prefix "+ovnlab.DefaultPrefix+")")
	ports := fs.Int("ports", 5, "ports made on each side for the port-to-first-packet measure (at most 50)")
	verbose := fs.Bool("v", false, "show every command")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sessions < 1 || *sessions+*burst > 3500 {
		return errors.New("--sessions plus --burst must stay within 3500 (the lab's key range holds 4096 per peer)")
	}
	if *liveN < 2000 || *liveN > 5*liveEach || *liveN%5 != 0 {
		return fmt.Errorf("--live %d: want a multiple of 5 from 2000 to %d", *liveN, 5*liveEach)
	}
	if *rounds < 1 || *seconds < 1 {
		return errors.New("--rounds and --seconds: want at least 1")
	}
	if *ports < 1 || *ports > 50 {
		return fmt.Errorf("--ports %d: want 1 to 50", *ports)
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the benchmark brings up a lab")
	}
	if *withOVN {
		if err := ovnlab.Preflight(); err != nil {
			return fmt.Errorf("OVN, measured beside NVI: %w (make bench installs it; --ovn=false leaves it out)", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	b := &bench{lab: prefix, ctx: ctx, nvictl: filepath.Join(filepath.Dir(self), "nvictl"), self: self, verbose: *verbose}
	bp := *b
	bp.lab = plainPrefix
	bl := *b
	bl.lab = livePrefix
	for _, x := range []*bench{b, &bp, &bl} {
		_, _ = x.run(x.nvictl, "lab", "down")
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			down := exec.CommandContext(cctx, x.nvictl, "lab", "down")
			down.Env = append(os.Environ(), "NVI_LAB="+x.lab)
			_ = down.Run()
		}()
	}
	// The port-timing workloads' namespaces are not the lab's: an earlier
	// run that crashed may have left some.
	for _, ns := range lab.NetnsList() {
		if strings.HasPrefix(ns, prefix+"-p") {
			_ = lab.DeleteNetns(ctx, ns)
		}
	}
	fmt.Fprintln(os.Stderr, "nvibench: bringing up two two-server labs (peer API with and without mutual TLS)...")
	if err := b.up(); err != nil {
		return err
	}
	if err := bp.up("--agent-args", "--insecure-peer-api"); err != nil {
		return err
	}
	// NVI's figures for the comparison with OVN, and OVN's own.
	var nviR, ovnR sideResult
	if nviR.flowsIdle, err = b.nviFlows(); err != nil {
		return err
	}
	var o *ovnSide
	bo := *b // runs OVN's measures; its lab name only labels progress
	bo.lab = ovnlab.DefaultPrefix
	if *withOVN {
		defer func() { _ = ovnlab.Down(context.Background(), ovnlab.DefaultPrefix) }()
		if o, err = b.upOVN(); err != nil {
			return err
		}
		if ovnR.flowsIdle, err = o.flows(b); err != nil {
			return err
		}
	}
	// Rounds alternate between the labs, so that both see the same
	// machine: these cores are noisy, ratios from one run are what count.
	const latRounds = 4
	chunk := max(*sessions/latRounds, 1)
	var first, base, pFirst, pBase []time.Duration
	for r := 0; r < latRounds; r++ {
		f, bs, err := b.latency(1+r*chunk, chunk)
		if err != nil {
			return err
		}
		first, base = append(first, f...), append(base, bs...)
		if f, bs, err = bp.latency(1+r*chunk, chunk); err != nil {
			return err
		}
		pFirst, pBase = append(pFirst, f...), append(pBase, bs...)
		if o != nil {
			if f, bs, err = bo.latencyIn(o.client(), o.server(), ovnServerIP, 1+r*chunk, chunk); err != nil {
				return err
			}
			ovnR.first, ovnR.base = append(ovnR.first, f...), append(ovnR.base, bs...)
		}
	}
	var rate, pRate float64
	half := max(*burst/2, 1)
	setupCPU := map[string]serverCPU{} // what the main lab's servers spent on the bursts
	for r := 0; r < 2; r++ {
		before, err := b.serversCPU()
		if err != nil {
			return err
		}
		x, err := b.setupRate(20000+r*half, half)
		if err != nil {
			return err
		}
		after, err := b.serversCPU()
		if err != nil {
			return err
		}
		cpuSpent(setupCPU, before, after)
		y, err := bp.setupRate(20000+r*half, half)
		if err != nil {
			return err
		}
		rate, pRate = rate+x/2, pRate+y/2
		if o != nil {
			z, err := bo.setupRateIn(o.client(), o.server(), ovnServerIP, 20000+r*half, half)
			if err != nil {
				return err
			}
			ovnR.rate += z / 2
		}
	}
	nviR.first, nviR.base, nviR.rate = first, base, rate
	nviR.newConnsCounted = len(first) + *burst
	if nviR.flowsBusy, err = b.nviFlows(); err != nil {
		return err
	}
	if o != nil {
		if ovnR.flowsBusy, err = o.flows(b); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "nvibench: MTU left to the workloads, NVI and OVN...")
		if nviR.mtu, err = b.mtuLeft(b.lab+"-c", "10.9.0.20"); err != nil {
			return err
		}
		nviR.pathMTU = nviR.mtu // its interface has the underlay's MTU already
		if ovnR.mtu, err = bo.mtuLeft(o.client(), ovnServerIP); err != nil {
			return err
		}
		if ovnR.pathMTU, err = o.pathMTU(&bo); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "nvibench: from a port's creation to its first packet, %d ports each, NVI and OVN...\n", *ports)
		if nviR.ports, err = b.nviPortTimes(*ports); err != nil {
			return err
		}
		if ovnR.ports, err = o.portTimes(&bo, *ports); err != nil {
			return err
		}
	}
	nviRounds, plainRounds, ovnRounds, err := b.throughput(*seconds, *rounds, o)
	if err != nil {
		return err
	}
	nvi, plain := median(nviRounds), median(plainRounds)
	nviR.throughput, ovnR.throughput = nvi, median(ovnRounds)
	nviR.rounds, ovnR.rounds = nviRounds, ovnRounds
	// The drift measure has a lab of its own, with the others down, so
	// that its server holds only the sessions it counts.
	for _, x := range []*bench{b, &bp} {
		_, _ = x.run(x.nvictl, "lab", "down")
	}
	if o != nil {
		if err := o.l.Down(ctx); err != nil {
			return err
		}
	}
	live, err := bl.liveSessions(*liveN)
	if err != nil {
		return err
	}
	added := func(q float64) time.Duration { return max(percentile(first, q)-percentile(base, 0.5), 0) }
	fmt.Printf("\nNVI benchmark (lab: 2 servers, userspace OVS %s; one run, ratios from the same run)\n\n", ovsVersion())
	fmt.Printf("%-62s %14s %10s\n", "measure", "value", "target")
	fmt.Printf("%-62s %14s %10s\n", strings.Repeat("-", 62), strings.Repeat("-", 14), strings.Repeat("-", 10))
	row := func(m, v, t string) { fmt.Printf("%-62s %14s %10s\n", m, v, t) }
	row(fmt.Sprintf("first-packet added latency p50 (%d new sessions)", len(first)), fmtDur(added(0.5)), "< 1ms")
	row(fmt.Sprintf("first-packet added latency p99 (%d new sessions)", len(first)), fmtDur(added(0.99)), "< 5ms")
	row("  first-packet round trip p50 / p99", fmtDur(percentile(first, 0.5))+" / "+fmtDur(percentile(first, 0.99)), "")
	if n := len(first) / 10; n > 0 {
		row(fmt.Sprintf("  round trip p50, first %d / last %d sessions", n, n),
			fmtDur(percentile(first[:n], 0.5))+" / "+fmtDur(percentile(first[len(first)-n:], 0.5)), "")
	}
	row(fmt.Sprintf("  established-session round trip p50 (%d)", len(base)), fmtDur(percentile(base, 0.5)), "")
	liveAdded := func(ds []time.Duration, q float64) time.Duration {
		return max(percentile(ds, q)-percentile(live.base, 0.5), 0)
	}
	n := len(live.last)
	row(fmt.Sprintf("first-packet added latency p50 / p99, last %d of %d live", n, live.total),
		fmtDur(liveAdded(live.last, 0.5))+" / "+fmtDur(liveAdded(live.last, 0.99)), "")
	row(fmt.Sprintf("  round trip p50, first %d / last %d of them", len(live.first), n),
		fmtDur(percentile(live.first, 0.5))+" / "+fmtDur(percentile(live.last, 0.5)), "")
	row(fmt.Sprintf("  drift over %d live sessions (last / first p50)", live.total),
		fmt.Sprintf("%.3f", float64(percentile(live.last, 0.5))/float64(percentile(live.first, 0.5))), "<= 1.20")
	row(fmt.Sprintf("sessions set up per second (%d, 32 in parallel)", *burst), fmt.Sprintf("%.0f/s", rate), "")
	perSetup := func(d time.Duration) string { return fmtDur(d / time.Duration(max(2*half, 1))) }
	cl, sv := setupCPU["s1"], setupCPU["s2"]
	row("  CPU per setup, client's server s1: agent + Open vSwitch", perSetup(cl.agent)+" + "+perSetup(cl.ovs), "")
	row("  CPU per setup, server's server s2: agent + Open vSwitch", perSetup(sv.agent)+" + "+perSetup(sv.ovs), "")
	if busier := max(cl.total(), sv.total()); busier > 0 {
		row("  setups/s a server of 2 cores of its own would make", fmt.Sprintf("%.0f/s", 2*float64(2*half)/busier.Seconds()), "5000/s")
	}
	row(fmt.Sprintf("TCP throughput across servers, NVI (median of %d)", *rounds), fmt.Sprintf("%.2f Gbit/s", nvi/1e9), "")
	row(fmt.Sprintf("TCP throughput, plain L2 switching (median of %d)", *rounds), fmt.Sprintf("%.2f Gbit/s", plain/1e9), "")
	row("throughput ratio NVI / plain", fmt.Sprintf("%.3f", nvi/plain), ">= 0.9")

	pAdded := func(q float64) time.Duration { return max(percentile(pFirst, q)-percentile(pBase, 0.5), 0) }
	fmt.Printf("\nWhat authenticating agents costs (peer API with mutual TLS 1.3 vs --insecure-peer-api;\n%d rounds alternating between two labs)\n\n", latRounds)
	fmt.Printf("%-44s %12s %12s %10s %10s\n", "measure", "mTLS", "plain", "ratio", "target")
	fmt.Printf("%-44s %12s %12s %10s %10s\n", strings.Repeat("-", 44), strings.Repeat("-", 12), strings.Repeat("-", 12), strings.Repeat("-", 10), strings.Repeat("-", 10))
	cmp := func(m string, x, y float64, v, w, target string) {
		ratio := "-"
		if y > 0 {
			ratio = fmt.Sprintf("%.3f", x/y)
		}
		fmt.Printf("%-44s %12s %12s %10s %10s\n", m, v, w, ratio, target)
	}
	cmp("first-packet added latency p50", float64(added(0.5)), float64(pAdded(0.5)), fmtDur(added(0.5)), fmtDur(pAdded(0.5)), "<= 1.10")
	cmp("first-packet added latency p99", float64(added(0.99)), float64(pAdded(0.99)), fmtDur(added(0.99)), fmtDur(pAdded(0.99)), "")
	cmp("first-packet round trip p50", float64(percentile(first, 0.5)), float64(percentile(pFirst, 0.5)), fmtDur(percentile(first, 0.5)), fmtDur(percentile(pFirst, 0.5)), "")
	cmp("sessions set up per second", rate, pRate, fmt.Sprintf("%.0f/s", rate), fmt.Sprintf("%.0f/s", pRate), "")
	if o != nil {
		printComparison(os.Stdout, nviR, ovnR, ovnVersion(), *rounds, *ports)
	}
	return nil
}

// up brings up this bench's lab: two servers, a client and a server
// workload.
func (b *bench) up(extra ...string) error {
	steps := [][]string{
		append([]string{"lab", "up", "--servers", "2", "--idle-timeout", "5m"}, extra...),
		{"net", "create", "bench/net", "--cidr", "10.9.0.0/16"},
		{"lab", "workload", "add", b.lab + "-c", "--server", "s1", "--net", "bench/net", "--ip", "10.9.0.10"},
		{"lab", "workload", "add", b.lab + "-s", "--server", "s2", "--net", "bench/net", "--ip", "10.9.0.20"},
	}
	for _, s := range steps {
		if _, err := b.run(b.nvictl, s...); err != nil {
			return err
		}
	}
	return nil
}

// liveEach bounds each of the drift measure's five streams of sessions: a
// tenant may hold 2048 of the 4096 keys toward a peer per protocol.
const liveEach = 2040

// liveResult is the drift measure: the first packets' round trips of the
// first and the last thousand of total sessions made one after another and
// kept live, and an established session's round trip at the end.
type liveResult struct {
	total             int
	first, last, base []time.Duration
}

// liveSessions brings up a lab and makes total sessions on its server s1,
// one after another, all kept live (the idle timeout is 5 minutes): does a
// server's setup slow down with the sessions it holds? A server holds 4096
// keys toward a peer per protocol and a tenant half of them, so the
// sessions come in five streams of total/5, in two tenants, both
// protocols and both directions: UDP from c (s1) to s, TCP from c to s,
// TCP from d (s1) to t, UDP from e (s2) to c, and last UDP from d to t. The
// first and the last thousand are both UDP from s1 to s2.
func (b *bench) liveSessions(total int) (liveResult, error) {
	fmt.Fprintf(os.Stderr, "nvibench: %s: %d live sessions, one after another...\n", b.lab, total)
	w := func(name string) string { return b.lab + "-" + name }
	steps := [][]string{
		{"lab", "up", "--servers", "2", "--idle-timeout", "5m"},
		{"net", "create", "live1/net", "--cidr", "10.9.0.0/16"},
		{"net", "create", "live2/net", "--cidr", "10.8.0.0/16"},
		{"lab", "workload", "add", w("c"), "--server", "s1", "--net", "live1/net", "--ip", "10.9.0.10"},
		{"lab", "workload", "add", w("s"), "--server", "s2", "--net", "live1/net", "--ip", "10.9.0.20"},
		{"lab", "workload", "add", w("e"), "--server", "s2", "--net", "live1/net", "--ip", "10.9.0.30"},
		{"lab", "workload", "add", w("d"), "--server", "s1", "--net", "live2/net", "--ip", "10.8.0.10"},
		{"lab", "workload", "add", w("t"), "--server", "s2", "--net", "live2/net", "--ip", "10.8.0.20"},
	}
	for _, s := range steps {
		if _, err := b.run(b.nvictl, s...); err != nil {
			return liveResult{}, err
		}
	}
	per := total / 5
	const firstPort = 40000
	for _, srv := range []string{w("s"), w("t"), w("c")} {
		stop := b.startEchoIn(srv, firstPort, per, "--tcp")
		defer stop()
	}
	var first, last []time.Duration
	n := 0
	for i, st := range []struct {
		from, to string
		tcp      bool
	}{{w("c"), "10.9.0.20", false}, {w("c"), "10.9.0.20", true}, {w("d"), "10.8.0.20", true}, {w("e"), "10.9.0.10", false}, {w("d"), "10.8.0.20", false}} {
		args := []string{"probe", "--dst", st.to, "--first-port", strconv.Itoa(firstPort), "--count", strconv.Itoa(per), "--parallel", "1"}
		if st.tcp {
			args = append(args, "--tcp")
		}
		out, err := b.in(st.from, append([]string{b.self}, args...)...)
		if err != nil {
			return liveResult{}, err
		}
		var pr probeResult
		if err := json.Unmarshal([]byte(out), &pr); err != nil {
			return liveResult{}, fmt.Errorf("probe: %w: %s", err, out)
		}
		if pr.Lost > 0 {
			fmt.Fprintf(os.Stderr, "nvibench: %s: %d of %d first packets got no answer within 1s\n", st.from, pr.Lost, per)
		}
		n += len(pr.RTTs)
		switch i {
		case 0:
			first = pr.RTTs[:min(1000, len(pr.RTTs))]
		case 4:
			last = pr.RTTs[max(len(pr.RTTs)-1000, 0):]
		}
	}
	out, err := b.in(w("d"), b.self, "probe", "--dst", "10.8.0.20", "--first-port", strconv.Itoa(firstPort), "--count", "1000", "--parallel", "1", "--same-port")
	if err != nil {
		return liveResult{}, err
	}
	var bp probeResult
	if err := json.Unmarshal([]byte(out), &bp); err != nil {
		return liveResult{}, fmt.Errorf("probe: %w: %s", err, out)
	}
	return liveResult{total: n, first: first, last: last, base: bp.RTTs}, nil
}

func fmtDur(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64) + " ms"
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}

func ovsVersion() string {
	out, err := exec.Command("ovs-vswitchd", "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	return f[len(f)-1]
}

// probeResult is what a probe reports, as JSON on stdout.
type probeResult struct {
	RTTs []time.Duration `json:"rtts"`
	Lost int             `json:"lost"`
	Took time.Duration   `json:"took"`
	// Answered is when --until got its answer (Unix nanoseconds).
	Answered int64 `json:"answered,omitempty"`
}

// latency measures the round trip of the first datagram of n new sessions
// (each to a fresh server port) and of datagrams on one established
// session, back to back in one run.
func (b *bench) latency(firstPort, n int) (first, base []time.Duration, err error) {
	return b.latencyIn(b.lab+"-c", b.lab+"-s", "10.9.0.20", firstPort, n)
}

// latencyIn is latency between any two workload namespaces, the server's
// at address dst.
func (b *bench) latencyIn(client, server, dst string, firstPort, n int) (first, base []time.Duration, err error) {
	fmt.Fprintf(os.Stderr, "nvibench: %s: first packets of %d new connections...\n", b.lab, n)
	echo := b.startEchoIn(server, firstPort, n)
	defer echo()
	out, err := b.in(client, b.self, "probe", "--dst", dst, "--first-port", strconv.Itoa(firstPort), "--count", strconv.Itoa(n), "--parallel", "1")
	if err != nil {
		return nil, nil, err
	}
	var pr probeResult
	if err := json.Unmarshal([]byte(out), &pr); err != nil {
		return nil, nil, fmt.Errorf("probe: %w: %s", err, out)
	}
	if pr.Lost > 0 {
		fmt.Fprintf(os.Stderr, "nvibench: %s: %d of %d first packets got no answer within 1s\n", b.lab, pr.Lost, n)
	}
	out, err = b.in(client, b.self, "probe", "--dst", dst, "--first-port", strconv.Itoa(firstPort), "--count", strconv.Itoa(n), "--parallel", "1", "--same-port")
	if err != nil {
		return nil, nil, err
	}
	var bp probeResult
	if err := json.Unmarshal([]byte(out), &bp); err != nil {
		return nil, nil, fmt.Errorf("probe: %w: %s", err, out)
	}
	return pr.RTTs, bp.RTTs, nil
}

func (b *bench) setupRate(firstPort, n int) (float64, error) {
	return b.setupRateIn(b.lab+"-c", b.lab+"-s", "10.9.0.20", firstPort, n)
}

// setupRateIn is setupRate between any two workload namespaces.
func (b *bench) setupRateIn(client, server, dst string, firstPort, n int) (float64, error) {
	fmt.Fprintf(os.Stderr, "nvibench: %s: %d new connections as fast as they go...\n", b.lab, n)
	echo := b.startEchoIn(server, firstPort, n)
	defer echo()
	out, err := b.in(client, b.self, "probe", "--dst", dst, "--first-port", strconv.Itoa(firstPort), "--count", strconv.Itoa(n), "--parallel", "32")
	if err != nil {
		return 0, err
	}
	var pr probeResult
	if err := json.Unmarshal([]byte(out), &pr); err != nil {
		return 0, fmt.Errorf("probe: %w: %s", err, out)
	}
	return float64(len(pr.RTTs)) / pr.Took.Seconds(), nil
}

// startEcho runs the UDP echo server in the server workload.
func (b *bench) startEcho(firstPort, n int) func() { return b.startEchoIn(b.lab+"-s", firstPort, n) }

// startEchoIn runs the echo server in workload ns.
func (b *bench) startEchoIn(ns string, firstPort, n int, extra ...string) func() {
	args := append([]string{"netns", "exec", ns, b.self, "echo", "--first-port", strconv.Itoa(firstPort), "--count", strconv.Itoa(n)}, extra...)
	cmd := exec.CommandContext(b.ctx, "ip", args...)
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return func() {}
	}
	buf := make([]byte, 16)
	_, _ = stdout.Read(buf) // "ready"
	return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

func execCommand(b *bench, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(b.ctx, name, args...)
	if b.verbose {
		cmd.Stderr = os.Stderr
	}
	return cmd
}
