package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// runEcho answers UDP datagrams on count consecutive ports, and with
// --tcp TCP connections on the same ports too. With --name, every answer
// starts with "NAME:", so that a test knows who answered.
func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	first := fs.Int("first-port", 20000, "first port")
	count := fs.Int("count", 1, "number of ports")
	name := fs.String("name", "", "prefix answers with NAME:")
	withTCP := fs.Bool("tcp", false, "answer TCP connections too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	prefix := []byte{}
	if *name != "" {
		prefix = []byte(*name + ":")
	}
	for i := 0; i < *count; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *first + i})
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDP(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteToUDP(append(slices.Clone(prefix), buf[:n]...), from)
			}
		}()
		if !*withTCP {
			continue
		}
		l, err := net.ListenTCP("tcp4", &net.TCPAddr{Port: *first + i})
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = c.Write(prefix)
					_, _ = io.Copy(c, c)
				}()
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

// runProbe sends one datagram to each of count ports (or count datagrams
// to the first port, with --same-port) and times each answer.
func runProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	dst := fs.String("dst", "", "server address")
	first := fs.Int("first-port", 20000, "first port")
	count := fs.Int("count", 1, "datagrams")
	parallel := fs.Int("parallel", 1, "datagrams in flight")
	same := fs.Bool("same-port", false, "all to the first port (an established session)")
	tcp := fs.Bool("tcp", false, "time TCP handshakes (SYN to SYN-ACK) instead of datagrams")
	until := fs.Duration("until", 0, "send a datagram to the first port every --every until one is answered, for up to this long, and print when")
	every := fs.Duration("every", 5*time.Millisecond, "with --until: how often")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ip := net.ParseIP(*dst)
	if ip == nil {
		return fmt.Errorf("--dst %q is not an address", *dst)
	}
	if *until > 0 {
		at, err := firstAnswer(ip, *first, *until, *every)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(probeResult{Answered: at.UnixNano()})
	}
	jobs := make(chan int)
	var mu sync.Mutex
	res := probeResult{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for i := range jobs {
				port := *first + i
				if *same {
					port = *first
				}
				probe := once
				if *tcp {
					probe = handshake
				}
				rtt, err := probe(ip, port, uint64(i), buf)
				mu.Lock()
				if err != nil {
					res.Lost++
				} else {
					res.RTTs = append(res.RTTs, rtt)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *count; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	res.Took = time.Since(start)
	return json.NewEncoder(os.Stdout).Encode(res)
}

// firstAnswer sends a datagram to ip:port every interval until one is
// answered and returns when: how long a new port waits until it can talk.
// Sends that fail meanwhile (no route, no neighbour yet) are retried. The
// kernel's ARP retransmit timer (a second) would measure itself rather
// than the port's binding, so eth0's is set to the interval first, with
// attempts enough to last the wait.
func firstAnswer(ip net.IP, port int, wait, interval time.Duration) (time.Time, error) {
	neigh := "/proc/sys/net/ipv4/neigh/eth0/"
	_ = os.WriteFile(neigh+"retrans_time_ms", []byte(strconv.FormatInt(max(interval.Milliseconds(), 1), 10)), 0o644)
	_ = os.WriteFile(neigh+"mcast_solicit", []byte("100"), 0o644)
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		return time.Time{}, err
	}
	defer c.Close()
	msg := []byte("nvibench-first-answer")
	buf := make([]byte, 64)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		next := time.Now().Add(interval)
		_, _ = c.Write(msg)
		_ = c.SetReadDeadline(next)
		for {
			n, err := c.Read(buf)
			if err != nil {
				// A timeout, or an ICMP error: send again at the next
				// tick.
				time.Sleep(time.Until(next))
				break
			}
			if string(buf[:n]) == string(msg) {
				return time.Now(), nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("no answer from %s:%d within %v", ip, port, wait)
}

// handshake times a TCP connection's opening: the SYN, the first packet of
// the session, and the answering SYN-ACK.
func handshake(ip net.IP, port int, _ uint64, _ []byte) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp4", net.JoinHostPort(ip.String(), strconv.Itoa(port)), time.Second)
	if err != nil {
		return 0, err
	}
	rtt := time.Since(t0)
	return rtt, c.Close()
}

func once(ip net.IP, port int, seq uint64, buf []byte) (time.Duration, error) {
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	msg := binary.BigEndian.AppendUint64([]byte("nvibench"), seq)
	t0 := time.Now()
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(t0.Add(time.Second))
	for {
		n, err := c.Read(buf)
		if err != nil {
			return 0, err
		}
		if n == len(msg) && string(buf[8:n]) == string(msg[8:]) {
			return time.Since(t0), nil
		}
	}
}
