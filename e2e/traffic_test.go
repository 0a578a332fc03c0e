package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// syncBuffer is a bytes.Buffer that a running command may write while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bg is a command running in the background inside a namespace.
type bg struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	err  *syncBuffer
	done chan struct{}
}

// start runs a command in a namespace ("": this one) in the background; it
// is killed when the test ends.
func (l *Lab) start(ns string, args ...string) *bg {
	l.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	}
	b := &bg{cmd: cmd, out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.out, b.err
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %v: %v", args, err)
	}
	go func() { _ = cmd.Wait(); close(b.done) }()
	l.t.Cleanup(b.stop)
	return b
}

func (b *bg) stop() {
	if b.cmd.Process != nil {
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-b.done
}

// wait waits for the command to exit by itself.
func (b *bg) wait(timeout time.Duration) bool {
	select {
	case <-b.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// listening waits until something listens on port inside ns.
func (l *Lab) listening(ns string, proto string, port int) {
	l.t.Helper()
	flag := "-tln"
	if proto == "udp" {
		flag = "-uln"
	}
	eventually(l.t, 5*time.Second, fmt.Sprintf("%s listener on %d in %s", proto, port, ns), func() error {
		r := l.in(ns, 5*time.Second, "ss", "-H", flag, fmt.Sprintf("sport = :%d", port))
		if strings.TrimSpace(r.Out) == "" {
			return fmt.Errorf("nothing listens")
		}
		return nil
	})
}

// ping sends count echoes and reports whether they were all answered.
func (l *Lab) ping(from Workload, to string, extra ...string) result {
	args := append([]string{"ping", "-n", "-c", "3", "-i", "0.2", "-W", "2"}, extra...)
	return l.in(from.Name, 20*time.Second, append(args, to)...)
}

// tcp sends msg from one workload to another's port and returns what the
// server received.
func (l *Lab) tcp(from, to Workload, port int, msg string) (string, error) {
	l.t.Helper()
	srv := l.start(to.Name, "nc", "-l", fmt.Sprint(port))
	l.listening(to.Name, "tcp", port)
	r := l.sendTCP(from, to.IP, port, msg)
	if r.Code != 0 {
		return "", fmt.Errorf("client: %s", r)
	}
	done := srv.wait(5 * time.Second)
	srv.stop()
	if !done {
		return srv.out.String(), fmt.Errorf("server still waiting")
	}
	return srv.out.String(), nil
}

func (l *Lab) sendTCP(from Workload, ip string, port int, msg string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return shIn(ctx, nil, msg, "ip", "netns", "exec", from.Name, "nc", "-N", "-w", "3", ip, fmt.Sprint(port))
}

// udp sends one datagram and returns what the receiver got, waiting at most
// timeout for it.
func (l *Lab) udp(from, to Workload, port int, msg string, timeout time.Duration) string {
	l.t.Helper()
	srv := l.start(to.Name, "nc", "-u", "-l", "-W", "1", fmt.Sprint(port))
	l.listening(to.Name, "udp", port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shIn(ctx, nil, msg, "ip", "netns", "exec", from.Name, "nc", "-u", "-w", "1", to.IP, fmt.Sprint(port))
	srv.wait(timeout)
	srv.stop()
	return srv.out.String()
}

// capture records the underlay with tcpdump until stop is called.
type capture struct {
	b    *bg
	file string
}

func (l *Lab) capture() *capture {
	l.t.Helper()
	f, err := os.CreateTemp("", "nvi-underlay-*.pcap")
	if err != nil {
		l.t.Fatal(err)
	}
	f.Close()
	l.t.Cleanup(func() { os.Remove(f.Name()) })
	b := l.start(l.underlay(), "tcpdump", "-i", "any", "-nn", "-U", "-s", "128", "-w", f.Name())
	// tcpdump says "listening on" once the capture runs.
	eventually(l.t, 10*time.Second, "tcpdump started", func() error {
		if !strings.Contains(b.err.String(), "listening on") {
			return fmt.Errorf("not yet: %q", b.err.String())
		}
		return nil
	})
	return &capture{b: b, file: f.Name()}
}

// stop ends the capture and returns the file.
func (c *capture) stop() string {
	_ = syscall.Kill(c.b.cmd.Process.Pid, syscall.SIGINT)
	c.b.wait(5 * time.Second)
	return c.file
}
