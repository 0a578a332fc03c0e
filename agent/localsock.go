package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"nvi/api"
)

// socketMode is the local API socket's mode: its owner (root) and group
// may connect, nobody else.
const socketMode = 0o660

// listenLocal creates the local API's unix socket at path, owned by this
// process's user (root) and group gid with socketMode, and listens on it.
// The socket is made in a fresh 0700 directory beside path, given its mode
// and owner there, and only then renamed into place: nobody can connect to
// it before its mode protects it (audit M5). An old socket at path is
// replaced.
func listenLocal(path string, gid uint32) (net.Listener, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".nvid")
	if err != nil {
		return nil, fmt.Errorf("making a private directory for the socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("listening on %s gave a %T", sock, l)
	}
	ul.SetUnlinkOnClose(false) // the socket moves to path; Run removes it
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, err
	}
	if err := os.Chmod(sock, socketMode); err != nil {
		return fail(fmt.Errorf("setting the socket's mode: %w", err))
	}
	if err := os.Lchown(sock, os.Getuid(), int(gid)); err != nil {
		return fail(fmt.Errorf("giving the socket to group %d: %w", gid, err))
	}
	if err := os.Rename(sock, path); err != nil {
		return fail(fmt.Errorf("moving the socket to %s: %w", path, err))
	}
	return ul, nil
}

// socketGID resolves the local API's group name; "" is root's group.
func socketGID(name string) (uint32, error) {
	if name == "" || name == "root" {
		return 0, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
			g, err = user.LookupGroupId(name)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("socket group %q: %w; create the group or choose another", name, err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("socket group %q has gid %q: %w", name, g.Gid, err)
	}
	return uint32(gid), nil
}

// localAllowed decides whether a local API caller with user uid, group
// gid and supplementary groups may call: root, or a member of the socket's
// group allowed.
func localAllowed(uid, gid uint32, groups []uint32, allowed uint32) error {
	if uid == 0 || gid == allowed || slices.Contains(groups, allowed) {
		return nil
	}
	return fmt.Errorf("permission denied: uid %d is neither root nor a member of the agent's socket group (gid %d); run as root or join that group", uid, allowed)
}

// procGroups reads the supplementary groups of process pid from
// /proc/PID/status. The kernel vouches for pid and uid (SO_PEERCRED); the
// groups are read at once, while the caller waits for its answer.
func procGroups(pid int32) []uint32 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	return parseStatusGroups(string(b))
}

// parseStatusGroups reads the "Groups:" line of a /proc/PID/status file.
func parseStatusGroups(status string) []uint32 {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, f := range strings.Fields(rest) {
			if n, err := strconv.ParseUint(f, 10, 32); err == nil {
				out = append(out, uint32(n))
			}
		}
		return out
	}
	return nil
}

// listenLocalAPI opens the local API's socket for lc and returns what
// serves it until ctx ends: every connection's peer credentials are
// checked (root or a member of lc.SocketGroup), the rest get "denied".
func (a *Agent) listenLocalAPI(lc LocalAPIConfig) (serve func(ctx context.Context) error, err error) {
	gid, err := socketGID(lc.SocketGroup)
	if err != nil {
		return nil, err
	}
	l, err := listenLocal(a.cfg.Socket, gid)
	if err != nil {
		return nil, err
	}
	authorize := func(c api.PeerCred) error {
		if c.UID == 0 || c.GID == gid {
			return localAllowed(c.UID, c.GID, nil, gid)
		}
		return localAllowed(c.UID, c.GID, procGroups(c.PID), gid)
	}
	return func(ctx context.Context) error {
		return api.ServeLocal(ctx, l, api.LocalHandler(localService{a}, a.log), authorize, a.log)
	}, nil
}
