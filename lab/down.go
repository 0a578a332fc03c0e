package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Down removes everything the lab with prefix made: workloads, agents,
// switches, the directory, namespaces and files. It works from the state
// file and, should that be lost, from the namespaces' names; running it twice
// is harmless.
func Down(ctx context.Context, prefix string) error {
	if prefix == "" {
		prefix = "nvi"
	}
	if err := Preflight(); err != nil {
		return err
	}
	unlock, err := lock(prefix)
	if err != nil {
		return err
	}
	st, err := Load(prefix)
	if err != nil {
		st = &State{Prefix: prefix, RunDir: RunDir(prefix), Underlay: UnderlayNetns(prefix)}
	}
	err = down(ctx, st)
	unlock()
	// Last, the lock and the run directory itself, if nothing else is there.
	_ = os.Remove(filepath.Join(RunDir(prefix), "lab.lock"))
	_ = os.Remove(RunDir(prefix))
	return err
}

func down(ctx context.Context, st *State) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, w := range st.Workloads {
		note(deleteNetns(ctx, w.Name))
	}
	// Agents first, so that nothing re-creates what goes next.
	for _, sv := range st.Servers {
		killWait(sv.NvidPID, 3*time.Second)
	}
	// Every server directory, also of servers the state never recorded.
	dirs, _ := filepath.Glob(filepath.Join(st.RunDir, "s*"))
	for _, d := range dirs {
		for _, pf := range []string{"nvid.pid", "ovs-vswitchd.pid", "ovsdb-server.pid"} {
			killWait(readPidfile(filepath.Join(d, pf)), 3*time.Second)
		}
	}
	killWait(st.Trust.EnrollPID, 3*time.Second)
	killWait(st.Directory.PID, 3*time.Second)
	for _, ns := range netnsList() {
		if ns == st.Underlay || ns == InternetNetns(st.Prefix) || ns == MgmtNetns(st.Prefix) || strings.HasPrefix(ns, st.Prefix+"-s") {
			note(deleteNetns(ctx, ns))
		}
	}
	if st.RunDir != "" && strings.HasPrefix(st.RunDir, "/run/") {
		// Keep the lock file: we hold it.
		ents, _ := os.ReadDir(st.RunDir)
		for _, e := range ents {
			if e.Name() != "lab.lock" {
				note(os.RemoveAll(filepath.Join(st.RunDir, e.Name())))
			}
		}
	}
	if len(errs) > 0 {
		return &DownError{errs}
	}
	return nil
}

// DownError lists what could not be removed.
type DownError struct{ Problems []string }

func (e *DownError) Error() string {
	return "lab down left things behind: " + strings.Join(e.Problems, "; ")
}
