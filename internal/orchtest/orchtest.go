// Package orchtest gives tests the orchestrators NVI plugs into, as they
// run here: no image registry is reachable, so images are imported from a
// root filesystem of busybox-static, and Podman runs with a configuration
// of its own so that the machine's is untouched.
package orchtest

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Applets are the busybox commands the image offers.
var Applets = []string{"sh", "ip", "ping", "sleep", "cat", "true", "nc", "wget"}

// StaticBusybox says why /bin/busybox cannot serve as a container's only
// program, if it cannot: it must run without a dynamic loader.
func StaticBusybox() error {
	f, err := elf.Open("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w (apt-get install busybox-static; scripts/deps does)", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("/bin/busybox is dynamically linked (apt-get install busybox-static)")
		}
	}
	return nil
}

// BusyboxTar is a root filesystem: /bin/busybox and its applets.
func BusyboxTar() ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	hdrs := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: now},
	}
	for _, a := range Applets {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bb); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Result is what one command did.
type Result struct {
	Out, Err string
	Code     int
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.Code, r.Out, r.Err)
}

// Run runs a command with a deadline.
func Run(timeout time.Duration, env []string, stdin []byte, name string, args ...string) Result {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return Result{Err: err.Error(), Code: -1}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		err = <-done
		errb.WriteString(fmt.Sprintf("\n(killed after %v)", timeout))
	}
	r := Result{Out: out.String(), Err: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		r.Code = -1
	}
	return r
}

// DockerImage imports the busybox root filesystem as tag and removes it
// when the test ends.
func DockerImage(t testing.TB, tag string) {
	t.Helper()
	rootfs, err := BusyboxTar()
	if err != nil {
		t.Fatal(err)
	}
	if r := Run(2*time.Minute, nil, rootfs, "docker", "import", "-", tag); r.Code != 0 {
		t.Fatalf("docker import: %s", r)
	}
	t.Cleanup(func() {
		if r := Run(2*time.Minute, nil, nil, "docker", "rmi", "-f", tag); r.Code != 0 {
			t.Errorf("removing %s: %s", tag, r)
		}
	})
}

// Podman is Debian's Podman 4.3 with its CNI network backend and every
// directory it writes in a test's temporary directory.
type Podman struct {
	t      testing.TB
	dir    string
	global []string
	env    []string
	Image  string // the imported busybox image
}

// NewPodman sets Podman up with the nvi-cni of binDir as its only CNI
// plugin, one network list per entry of nets (name -> nvi-cni
// configuration, JSON), and the busybox image; the test's end removes
// containers, images and what Podman left on the machine.
func NewPodman(t testing.TB, binDir, imageTag string, nets map[string]string) *Podman {
	t.Helper()
	dir := t.TempDir()
	pluginDir, netDir := filepath.Join(dir, "plugins"), filepath.Join(dir, "net.d")
	for _, d := range []string{pluginDir, netDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(binDir, "nvi-cni"), filepath.Join(pluginDir, "nvi-cni")); err != nil {
		t.Fatal(err)
	}
	for name, conf := range nets {
		if err := os.WriteFile(filepath.Join(netDir, name+".conflist"), []byte(conflist(name, conf)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, cacheErr := os.Stat("/var/lib/containers")
	_, runcErr := os.Stat("/run/runc")
	conf := filepath.Join(dir, "containers.conf")
	text := fmt.Sprintf(`[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
`, pluginDir, netDir, filepath.Join(dir, "events.log"))
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &Podman{
		t: t, dir: dir, env: []string{"CONTAINERS_CONF=" + conf},
		global: []string{
			"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"),
			"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs", "--network-config-dir", netDir,
		},
		Image: "localhost/nvi-busybox:" + imageTag,
	}
	t.Cleanup(func() {
		if r := p.Run(2*time.Minute, "rm", "--all", "--force", "--time", "0"); r.Code != 0 {
			t.Errorf("podman rm: %s", r)
		}
		if r := p.Run(2*time.Minute, "rmi", "--all", "--force"); r.Code != 0 {
			t.Errorf("podman rmi: %s", r)
		}
		if os.IsNotExist(cacheErr) { // the image copy's blob-info cache, made here
			os.RemoveAll("/var/lib/containers")
		}
		if os.IsNotExist(runcErr) {
			os.Remove("/run/runc") // runc's state directory, if empty
		}
	})
	rootfs, err := BusyboxTar()
	if err != nil {
		t.Fatal(err)
	}
	if r := Run(2*time.Minute, p.env, rootfs, "podman", append(p.global, "import", "-", p.Image)...); r.Code != 0 {
		t.Fatalf("podman import: %s", r)
	}
	return p
}

// Run runs a podman command.
func (p *Podman) Run(timeout time.Duration, args ...string) Result {
	return Run(timeout, p.env, nil, "podman", append(p.global, args...)...)
}

// RunArgs starts "podman run" on network: raising rlimits needs
// CAP_SYS_RESOURCE, which a CI container may lack, so they are set to what
// they are.
func RunArgs(network string) []string {
	return []string{"run", "--network", network, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
}

// conflist is a CNI network list with one nvi-cni plugin configuration
// (JSON): Podman 4.3's CNI library speaks specification versions up to
// 1.0.0.
func conflist(name, pluginConf string) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[%s]}`, name, strings.TrimSpace(pluginConf))
}
