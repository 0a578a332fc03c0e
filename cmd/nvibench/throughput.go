package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// throughput runs iperf3 across the two servers, alternating between NVI
// workloads and two plain hosts plugged into the same two bridges and
// switched at L2 by flows of the same kind, so that the ratio isolates what
// NVI's rewriting costs; and, with an OVN lab (ovn not nil), between its
// two chassis' workloads too. Rounds alternate and the medians are
// compared, so that a noisy moment on the machine does not land on one side
// only. It returns every round's figures, in bit/s.
func (b *bench) throughput(seconds, rounds int, ovn *ovnSide) (nvi, plain, overlay []float64, err error) {
	fmt.Fprintln(os.Stderr, "nvibench: TCP throughput, NVI, plain L2 switching and OVN in turn...")
	cleanup, err := b.plainHosts()
	defer cleanup()
	if err != nil {
		return nil, nil, nil, err
	}
	for i := 0; i < rounds; i++ {
		n, err := b.iperf("nvb-s", "nvb-c", "10.9.0.20", seconds)
		if err != nil {
			return nil, nil, nil, err
		}
		p, err := b.iperf("nvb-l2b", "nvb-l2a", "198.18.0.202", seconds)
		if err != nil {
			return nil, nil, nil, err
		}
		nvi, plain = append(nvi, n), append(plain, p)
		if ovn != nil {
			o, err := b.iperf(ovn.server(), ovn.client(), ovnServerIP, seconds)
			if err != nil {
				return nil, nil, nil, err
			}
			overlay = append(overlay, o)
		}
		fmt.Fprintf(os.Stderr, "nvibench: round %d: NVI %.2f, plain %.2f, OVN %.2f Gbit/s\n", i+1, n/1e9, p/1e9, last(overlay)/1e9)
	}
	return nvi, plain, overlay, nil
}

func last(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func (b *bench) iperf(serverNS, clientNS, addr string, seconds int) (float64, error) {
	srv := b.startIn(serverNS, "iperf3", "-s", "-1")
	defer srv()
	time.Sleep(300 * time.Millisecond)
	out, err := b.in(clientNS, "iperf3", "-c", addr, "-t", strconv.Itoa(seconds), "-J")
	if err != nil {
		return 0, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

func (b *bench) startIn(ns string, args ...string) func() {
	cmdArgs := append([]string{"netns", "exec", ns}, args...)
	cmd := execCommand(b, "ip", cmdArgs...)
	if err := cmd.Start(); err != nil {
		return func() {}
	}
	return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

// plainHosts plugs host A into s1's bridge and host B into s2's, with
// addresses on the underlay subnet, and switches them at L2: out of the
// uplink, and frames for their MAC (or broadcast) in from it.
func (b *bench) plainHosts() (func(), error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	hosts := []struct{ ns, server, ip, mac string }{
		{"nvb-l2a", "s1", "198.18.0.201/24", "02:00:00:00:02:01"},
		{"nvb-l2b", "s2", "198.18.0.202/24", "02:00:00:00:02:02"},
	}
	for _, h := range hosts {
		srvNS := prefix + "-" + h.server
		dir := "/run/" + prefix + "/" + h.server
		veth := "pl-" + h.server
		undo = append(undo, func() { _, _ = b.run("ip", "netns", "delete", h.ns) })
		steps := [][]string{
			{"ip", "netns", "add", h.ns},
			{"ip", "link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", veth, "netns", srvNS},
			{"ip", "netns", "exec", h.ns, "ip", "link", "set", "eth0", "address", h.mac},
			{"ip", "netns", "exec", h.ns, "ip", "addr", "add", h.ip, "dev", "eth0"},
			{"ip", "netns", "exec", h.ns, "ip", "link", "set", "eth0", "up"},
			{"ip", "netns", "exec", h.ns, "ip", "link", "set", "lo", "up"},
			{"ip", "netns", "exec", h.ns, "ethtool", "-K", "eth0", "tx", "off"},
			{"ip", "netns", "exec", srvNS, "ethtool", "-K", veth, "tx", "off"},
			{"ip", "netns", "exec", srvNS, "ip", "link", "set", veth, "up"},
			{"ovs-vsctl", "--db=unix:" + dir + "/db.sock", "add-port", "br-nvi", veth, "--", "set", "interface", veth, "ofport_request=4000"},
		}
		for _, s := range steps {
			if _, err := b.run(s[0], s[1:]...); err != nil {
				return cleanup, err
			}
		}
		mgmt := "unix:" + dir + "/br-nvi.mgmt"
		for _, f := range []string{
			"table=0,priority=1000,in_port=4000,actions=output:1",
			"table=0,priority=1000,in_port=1,dl_dst=" + h.mac + ",actions=output:4000",
			"table=0,priority=1000,in_port=1,dl_dst=ff:ff:ff:ff:ff:ff,actions=output:4000,LOCAL",
		} {
			if _, err := b.run("ovs-ofctl", "-O", "OpenFlow13", "add-flow", mgmt, f); err != nil {
				return cleanup, err
			}
		}
	}
	// Warm up ARP both ways.
	if _, err := b.in("nvb-l2a", "ping", "-c", "2", "-W", "2", strings.Split(hosts[1].ip, "/")[0]); err != nil {
		return cleanup, fmt.Errorf("plain hosts cannot reach each other: %w", err)
	}
	return cleanup, nil
}
