package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLabDownAfterCrash kills "nvictl lab up" half-way, then checks that
// "nvictl lab down" removes every namespace and process it had made, and
// that running it again is harmless.
func TestLabDownAfterCrash(t *testing.T) {
	prefix := fmt.Sprintf("c%04d", rand.IntN(10000))
	env := []string{"NVI_LAB=" + prefix}
	down := func() result {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return sh(ctx, env, filepath.Join(bin, "nvictl"), "lab", "down")
	}
	t.Cleanup(func() { down() })

	for _, after := range []time.Duration{60 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond} {
		up := exec.Command(filepath.Join(bin, "nvictl"), "lab", "up", "--servers", "3")
		up.Env = append(os.Environ(), env...)
		if err := up.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(after)
		_ = up.Process.Signal(syscall.SIGKILL)
		_ = up.Wait()
		made := labNamespaces(prefix)
		t.Logf("killed lab up after %v; it had made namespaces %v", after, made)
		for i := 0; i < 2; i++ {
			if r := down(); r.Code != 0 {
				t.Fatalf("lab down #%d after a crash: %s", i+1, r)
			}
		}
		if left := labNamespaces(prefix); len(left) != 0 {
			t.Fatalf("lab down left namespaces: %v", left)
		}
		if procs := labProcesses(prefix); len(procs) != 0 {
			t.Fatalf("lab down left processes: %v", procs)
		}
		if _, err := os.Stat("/run/" + prefix); err == nil {
			t.Fatalf("lab down left /run/%s", prefix)
		}
	}
}

func labNamespaces(prefix string) []string {
	var out []string
	for _, ns := range netnsList() {
		if strings.HasPrefix(ns, prefix+"-") {
			out = append(out, ns)
		}
	}
	return out
}

// labProcesses lists live processes whose command line names the lab's run
// directory.
func labProcesses(prefix string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "/run/"+prefix+"/") {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if s := string(stat); strings.Contains(s[strings.LastIndexByte(s, ')')+1:], " Z ") {
			continue // a zombie: dead, waiting for its parent
		}
		out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return out
}
