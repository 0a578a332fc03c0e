package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"nvi/lab"
)

// The setup rate is measured with both servers, the probe and the echo
// server on the same two cores, so it says what this machine does, not
// what one server can. What a setup costs each server is its processes'
// CPU time over the burst: the agent, and Open vSwitch with all its threads
// (forwarding, upcalls, flow-mods, packet-ins and -outs, revalidators).

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times; Linux fixes it
// at 100 on every architecture NVI runs on.
const clockTicks = 100

// procCPU parses /proc/PID/stat: user plus system time. The command name
// may hold spaces and parentheses, so the fields are counted from the last
// ')'.
func procCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name in /proc stat")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat has %d fields after the name, want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

func cpuOfPID(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return procCPU(string(b))
}

// serverCPU is the CPU time one server's agent and Open vSwitch used.
type serverCPU struct{ agent, ovs time.Duration }

func (c serverCPU) total() time.Duration { return c.agent + c.ovs }

// serversCPU reads the CPU time so far of every server of the bench's lab.
func (b *bench) serversCPU() (map[string]serverCPU, error) {
	st, err := lab.Load(b.lab)
	if err != nil {
		return nil, err
	}
	out := map[string]serverCPU{}
	for _, s := range st.Servers {
		a, err := cpuOfPID(s.NvidPID)
		if err != nil {
			return nil, fmt.Errorf("%s's agent: %w", s.Name, err)
		}
		o, err := cpuOfPID(lab.ReadPidfile(filepath.Join(s.Dir, "ovs-vswitchd.pid")))
		if err != nil {
			return nil, fmt.Errorf("%s's ovs-vswitchd: %w", s.Name, err)
		}
		out[s.Name] = serverCPU{agent: a, ovs: o}
	}
	return out, nil
}

// cpuSpent adds what each server used between before and after to sum.
func cpuSpent(sum, before, after map[string]serverCPU) {
	for name, a := range after {
		b := before[name]
		s := sum[name]
		s.agent += a.agent - b.agent
		s.ovs += a.ovs - b.ovs
		sum[name] = s
	}
}
