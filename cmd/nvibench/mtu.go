package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// icmpHeaders is what an IPv4 ICMP echo adds to ping's payload (-s): the
// IPv4 header and the ICMP header.
const icmpHeaders = 20 + 8

// largestPassing returns the largest n in [lo, hi] for which ok holds,
// given that ok holds up to some limit and not above it; lo-1 if it holds
// for none. It asks ok about log2(hi-lo) sizes.
func largestPassing(lo, hi int, ok func(int) (bool, error)) (int, error) {
	best := lo - 1
	for lo <= hi {
		mid := lo + (hi-lo)/2
		pass, err := ok(mid)
		if err != nil {
			return 0, err
		}
		if pass {
			best, lo = mid, mid+1
		} else {
			hi = mid - 1
		}
	}
	return best, nil
}

// mtuLeft measures the MTU left to the workload in namespace ns toward
// dst: the largest ICMP echo that gets there and back whole with "don't
// fragment" set (ping -M do -s N, at most the interface's own MTU), plus
// the headers. A size passes if one of two echoes is answered.
func (b *bench) mtuLeft(ns, dst string) (int, error) {
	out, err := b.in(ns, "cat", "/sys/class/net/eth0/mtu")
	if err != nil {
		return 0, err
	}
	ifMTU, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, fmt.Errorf("MTU of %s's eth0: %w", ns, err)
	}
	n, err := largestPassing(0, ifMTU-icmpHeaders, func(n int) (bool, error) {
		_, err := b.in(ns, "ping", "-n", "-q", "-M", "do", "-c", "2", "-i", "0.2", "-W", "1", "-s", strconv.Itoa(n), dst)
		return err == nil, nil
	})
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, errors.New("no ping from " + ns + " to " + dst + " passes at all")
	}
	return n + icmpHeaders, nil
}
