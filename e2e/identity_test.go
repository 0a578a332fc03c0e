package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIdentity: every lab server enrolled with a single-use token;
// certificates rotate under live traffic without a session noticing; a
// revoked server is refused by its peers, loses its sessions and its
// directory access, and everyone else carries on.
func TestIdentity(t *testing.T) {
	const ttl = 20 * time.Second // renewal every ~13 s
	l := newLab(t, 3, "--cert-ttl", ttl.String())
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	n := func(s string) string { return l.Prefix + "-" + s }
	a := l.workload(n("a"), "s1", "acme/web")
	b := l.workload(n("b"), "s2", "acme/web")
	x := l.workload(n("x"), "s3", "acme/web")

	t.Run("a join token works once", func(t *testing.T) {
		l := l.with(t)
		var st struct {
			Servers []struct {
				Name string   `json:"name"`
				Args []string `json:"nvid_args"`
			} `json:"servers"`
		}
		l.state(&st)
		token := ""
		for i, arg := range st.Servers[0].Args {
			if arg == "--join" {
				token = st.Servers[0].Args[i+1]
			}
		}
		if token == "" {
			t.Fatalf("s1 was not started with a join token: %v", st.Servers[0].Args)
		}
		// Someone who copied s1's token tries it from s3's host, which
		// reaches the enrollment service.
		dir := t.TempDir()
		r := l.in(l.server("s3"), 30*time.Second, filepath.Join(bin, "nvid"), "--join", token, "--identity-dir", dir,
			"--uplink", "none", "--data-ip", "198.18.0.99/24", "--ovsdb", "unix:/nonexistent", "--ovs-rundir", dir, "--socket", dir+"/s", "--etcd", "https://198.19.0.254:2379")
		if r.Code == 0 || !strings.Contains(r.Err, "token") {
			t.Fatalf("a second use of s1's token: %s", r)
		}
		if _, err := os.Stat(filepath.Join(dir, "cert.pem")); err == nil {
			t.Fatalf("a second use of s1's token got a certificate")
		}
	})

	t.Run("certificates rotate under live traffic", func(t *testing.T) {
		l := l.with(t)
		srv := l.start(b.Name, "nc", "-l", "8000")
		l.listening(b.Name, "tcp", 8000)
		const lines = 150 // 30 s at 5 a second: more than two renewals
		client := l.start(a.Name, "sh", "-c", fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep 0.2; done | nc -N %s 8000", lines, b.IP))
		first := map[string]string{"s1": l.certSerial("s1"), "s2": l.certSerial("s2")}
		renewals := map[string]int{}
		last := map[string]string{"s1": first["s1"], "s2": first["s2"]}
		eventually(t, 3*ttl, "two renewals each on s1 and s2", func() error {
			for _, sv := range []string{"s1", "s2"} {
				if now := l.certSerial(sv); now != last[sv] {
					last[sv] = now
					renewals[sv]++
				}
				if renewals[sv] < 2 {
					return fmt.Errorf("%s renewed %d times", sv, renewals[sv])
				}
			}
			return nil
		})
		// New sessions after the rotation: new TLS handshakes with the new
		// certificates.
		if got := l.udp(a, b, 6001, "after rotation", 5*time.Second); got != "after rotation" {
			t.Errorf("a new session after rotation: got %q", got)
		}
		if !client.wait(60 * time.Second) {
			t.Fatal("the stream never finished")
		}
		eventually(t, 5*time.Second, "every line arrived", func() error {
			for i := 1; i <= lines; i++ {
				if !strings.Contains(srv.out.String(), fmt.Sprintf("line %d\n", i)) {
					return fmt.Errorf("line %d missing", i)
				}
			}
			return nil
		})
	})

	t.Run("a revoked server is refused", func(t *testing.T) {
		l := l.with(t)
		if r := l.ping(x, a.IP); r.Code != 0 {
			t.Fatalf("x (s3) -> a (s1) before the revocation: %s", r)
		}
		out := l.must("server", "revoke", "s3")
		t.Logf("%s", strings.TrimSpace(out))
		// s1 ends its sessions with s3 at once.
		eventually(t, 10*time.Second, "s1's sessions with s3 gone", func() error {
			for _, s := range l.sessions("s1") {
				if s.Client == x.IP || s.Server == x.IP {
					return fmt.Errorf("still there: %+v", s)
				}
			}
			return nil
		})
		if r := l.ping(x, a.IP); r.Code == 0 {
			t.Errorf("x (s3) still reaches a (s1) after s3 was revoked")
		}
		// s3's certificate opens nothing: not s1's peer API ...
		id := filepath.Join(l.runDir(), "s3", "identity")
		r := l.in(l.server("s3"), 15*time.Second, filepath.Join(bin, "nviattack"), "peer", "--to", l.peerIP("s1")+":7470",
			"--call", "release", "--body", `{"role":"client"}`, "--identity", id, "--server", "s1")
		if r.Code == 0 {
			t.Errorf("s1's peer API took a call with s3's certificate after the revocation: %s", r)
		}
		// ... nor the directory.
		r = l.in(l.server("s3"), 30*time.Second, filepath.Join(bin, "nvictl"), "--etcd", "https://198.19.0.254:2379", "--etcd-identity", id, "servers")
		if r.Code == 0 {
			t.Errorf("s3 read the directory after the revocation: %s", r)
		}
		// Everyone else carries on.
		if r := l.ping(a, b.IP); r.Code != 0 {
			t.Errorf("a (s1) -> b (s2) after s3's revocation: %s", r)
		}
	})
}

// certSerial is the serial number of a lab server's current certificate.
func (l *Lab) certSerial(server string) string {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.runDir(), server, "identity", "cert.pem"))
	if err != nil {
		l.t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		l.t.Fatalf("%s's cert.pem holds no PEM block", server)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		l.t.Fatal(err)
	}
	return c.SerialNumber.String()
}
