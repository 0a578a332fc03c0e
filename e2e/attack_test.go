package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"nvi/directory"
	"nvi/lab"
	"nvi/pipeline"
	"nvi/pki"
)

// TestAttacks tries, on a real lab, every attack of the security review
// that a workload, a host on the underlay, a host on the internet or a
// server with a valid certificate could make. Each subtest asserts that
// nothing got through — nothing delivered, no session made or ended, no
// agent crashed — while legitimate traffic of the victim tenant keeps
// flowing beside it. The closing check reads that traffic end to end.
func TestAttacks(t *testing.T) {
	// A low punt rate per workload, so that one workload's flood fills
	// its own meter well below what the userspace switch can carry.
	l := newLab(t, 3, "--agent-args", "--punt-rate=200")
	l.must("net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	l.must("net", "create", "evil/net", "--cidr", "10.9.0.0/16")
	n := func(s string) string { return l.Prefix + "-" + s }
	c := l.workload(n("c"), "s1", "acme/web") // the victim's client
	s := l.workload(n("s"), "s2", "acme/web") // the victim's server
	w := l.workload(n("w"), "s1", "evil/net") // the attacker, beside the client
	e := l.workload(n("e"), "s2", "evil/net") // the attacker's friend, beside the server

	// The victim's traffic: a UDP beacon c -> s:5353 every 100 ms, read by
	// a sink that prints who sent what.
	sink := l.start(s.Name, filepath.Join(bin, "nviattack"), "sink", "--port", "5353")
	l.listening(s.Name, "udp", 5353)
	l.start(c.Name, filepath.Join(bin, "nviattack"), "beacon", "--to", s.IP+":5353", "--count", "100000")
	victim := func() Session {
		t.Helper()
		var out Session
		eventually(t, 10*time.Second, "the victim's session on s2", func() error {
			for _, x := range l.sessions("s2") {
				if x.Tenant == "acme" && x.Proto == "udp" && x.Server == s.IP && x.Port == 5353 {
					out = x
					return nil
				}
			}
			return fmt.Errorf("not there: %+v", l.sessions("s2"))
		})
		return out
	}
	live := victim()
	pids := l.agentPIDs()

	// The attack table: what each attack sent and how much of it got
	// through (each subtest also fails on any of it).
	var table []attackRow
	t.Cleanup(func() { logAttacks(t, table) })
	note := func(attack string, sent, through int) { table = append(table, attackRow{attack, sent, through}) }

	// intact checks, after every attack, that the victim's session is the
	// same one, still carries new datagrams from c only, and that no agent
	// died.
	intact := func(t *testing.T) {
		t.Helper()
		if now := victim(); now.Key != live.Key || now.Client != c.IP {
			t.Errorf("the victim's session changed: was %+v, now %+v", live, now)
		}
		mark := strings.Count(sink.out.String(), "\n")
		eventually(t, 5*time.Second, "new victim datagrams", func() error {
			if strings.Count(sink.out.String(), "\n") < mark+3 {
				return fmt.Errorf("only %d lines", strings.Count(sink.out.String(), "\n"))
			}
			return nil
		})
		for _, line := range strings.Split(strings.TrimSpace(sink.out.String()), "\n") {
			if !strings.HasPrefix(line, "from "+c.IP+":") || !strings.Contains(line, ": legit ") {
				t.Errorf("the victim's server received %q", line)
			}
		}
		if now := l.agentPIDs(); fmt.Sprint(now) != fmt.Sprint(pids) {
			t.Errorf("agents restarted or died: pids %v, now %v", pids, now)
		}
		// No session but the victim's own (c to s, any port) touches the
		// victim's workloads.
		for _, sv := range []string{"s1", "s2", "s3"} {
			for _, x := range l.sessions(sv) {
				touches := x.Tenant == "acme" && (x.Server == s.IP || x.Client == c.IP || x.Server == c.IP || x.Client == s.IP)
				if touches && (x.Client != c.IP || x.Server != s.IP) {
					t.Errorf("a session appeared on %s: %+v", sv, x)
				}
			}
		}
	}

	forged := map[string]string{
		"accept": fmt.Sprintf(`{"from":"s1","tuple":{"tenant":"acme","proto":"udp","client":%q,"server":%q,"port":5353},"key":61999}`, c.IP, s.IP),
		"release": fmt.Sprintf(`{"from":"s1","role":"client","tuple":{"tenant":"acme","proto":"udp","client":%q,"server":%q,"port":5353},"key":%d,"reason":"forged"}`,
			c.IP, s.IP, live.Key),
		"reopen": fmt.Sprintf(`{"from":"s2","tuple":{"tenant":"acme","proto":"udp","client":%q,"server":%q,"port":5353}}`, c.IP, s.IP),
	}
	target := map[string]string{"accept": l.peerIP("s2"), "release": l.peerIP("s2"), "reopen": l.peerIP("s1")}
	targetName := map[string]string{"accept": "s2", "release": "s2", "reopen": "s1"}
	for _, origin := range []struct{ name, ns string }{
		{"from a workload's egress", w.Name},
		{"from the underlay", l.underlay()},
		{"from the internet", l.Prefix + "-internet"},
	} {
		for _, call := range []string{"accept", "release", "reopen"} {
			t.Run("forged "+call+" "+origin.name, func(t *testing.T) {
				l := l.with(t)
				through := 0
				defer func() { note("forged "+call+" "+origin.name, 2, through) }()
				// TLS without a certificate, and plain TCP.
				for _, mode := range []string{"--plain=false", "--plain"} {
					r := l.in(origin.ns, 15*time.Second, filepath.Join(bin, "nviattack"), "peer", "--to", target[call]+":7470",
						"--call", call, "--body", forged[call], mode)
					if r.Code == 0 || strings.Contains(r.Out, "answer:") {
						through++
						t.Errorf("%s (%s) to %s was answered: %s", call, mode, target[call], r)
					} else if !strings.Contains(r.Out, "refused:") && !strings.Contains(r.Out, "closed:") {
						t.Errorf("the attack did not run: %s", r)
					}
				}
				intact(t)
			})
		}
	}
	t.Run("forged calls with another server's valid certificate", func(t *testing.T) {
		l := l.with(t)
		id := filepath.Join(l.runDir(), "s3", "identity")
		through := 0
		defer func() { note("accept, release, reopen with s3's valid certificate claiming s1/s2", 3, through) }()
		for _, call := range []string{"accept", "release", "reopen"} {
			// The server certificates name servers, not addresses.
			r := l.in(l.server("s3"), 15*time.Second, filepath.Join(bin, "nviattack"), "peer", "--to", target[call]+":7470",
				"--call", call, "--body", forged[call], "--identity", id, "--server", targetName[call])
			if r.Code == 0 || !strings.Contains(r.Out, "answer: denied") {
				through++
				t.Errorf("%s with s3's certificate claiming another server: want it answered denied: %s", call, r)
			}
		}
		intact(t)
	})

	t.Run("a server's credential against other servers' claims", func(t *testing.T) {
		l := l.with(t)
		// s1 is compromised: its key and certificate are the attacker's.
		// It tries to take, move or remove what is s2's — the victim
		// server's endpoint, its address, its address block — straight in
		// etcd and through the registrar in its own name.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		op := l.operatorDirectory()
		defer op.Close()
		victimEp, err := op.EndpointByIP(ctx, "acme", netip.MustParseAddr(s.IP))
		if err != nil {
			t.Fatal(err)
		}
		blocks, err := op.Blocks(ctx, "acme", "web")
		if err != nil {
			t.Fatal(err)
		}
		var s2Block netip.Prefix
		for b, holder := range blocks {
			if holder == "s2" && b.Contains(victimEp.IP) {
				s2Block = b
			}
		}
		if !s2Block.IsValid() {
			t.Fatalf("no block of s2 holds %s: %v", victimEp.IP, blocks)
		}
		idDir := filepath.Join(l.runDir(), "s1", "identity")
		id, err := pki.LoadIdentity(idDir)
		if err != nil {
			t.Fatal(err)
		}
		st, err := lab.Load(l.Prefix)
		if err != nil {
			t.Fatal(err)
		}
		as1, err := directory.Open(ctx, directory.Config{Endpoints: st.Directory.Local, TLS: id.DirectoryTLS()})
		if err != nil {
			t.Fatal(err)
		}
		defer as1.Close()
		stolen := victimEp
		stolen.Server = "s1"
		p := "/nvi/v1/"
		raw := []struct{ what, key, val string }{
			{"rewrite s2's endpoint onto s1", p + "endpoints/acme/" + victimEp.Name, mustJSON(t, stolen)},
			{"delete s2's endpoint", p + "endpoints/acme/" + victimEp.Name, ""},
			{"take s2's workload's address", p + "addrs/acme/" + s.IP, "x"},
			{"free s2's workload's address", p + "addrs/acme/" + s.IP, ""},
			{"take s2's iface-id", p + "ifaces/" + victimEp.IfaceID, "acme/x"},
			{"take s2's block", p + "blocks/acme/web/" + s2Block.String(), "s1"},
			{"free s2's block", p + "blocks/acme/web/" + s2Block.String(), ""},
		}
		through := 0
		for _, a := range raw {
			if a.val == "" {
				_, err = as1.Client().Delete(ctx, a.key)
			} else {
				_, err = as1.Client().Put(ctx, a.key, a.val)
			}
			if err == nil {
				through++
				t.Errorf("s1's credential could %s in etcd (%s)", a.what, a.key)
			}
		}
		note("s1's certificate writing s2's endpoint, address, iface-id and block in etcd", len(raw), through)

		reg := "https://" + st.Trust.EnrollAddr + "/v1/claims/"
		calls := []struct{ what, path, body string }{
			{"delete s2's endpoint", "endpoints/delete", fmt.Sprintf(`{"tenant":"acme","name":%q}`, victimEp.Name)},
			{"rebind s2's endpoint", "endpoints/port", fmt.Sprintf(`{"tenant":"acme","name":%q,"port":99}`, victimEp.Name)},
			{"create an endpoint on s2", "endpoints/create", `{"tenant":"acme","network":"web","name":"planted","ip":"10.1.0.250","mac":"0a:66:0a:01:00:fa","server":"s2"}`},
			{"release s2's block", "blocks/release", fmt.Sprintf(`{"tenant":"acme","network":"web","block":%q}`, s2Block)},
			{"keep s2's block", "blocks/keep", fmt.Sprintf(`{"blocks":[{"tenant":"acme","network":"web","block":%q}]}`, s2Block)},
		}
		through = 0
		for _, c := range calls {
			r := l.in(l.server("s1"), 15*time.Second, "curl", "-s", "-m", "5", "-w", "\n%{http_code}",
				"--cert", filepath.Join(idDir, "cert.pem"), "--key", filepath.Join(idDir, "key.pem"), "--cacert", filepath.Join(idDir, "ca.pem"),
				"-X", "POST", "-H", "Content-Type: application/json", "-d", c.body, reg+c.path)
			lines := strings.Split(strings.TrimSpace(r.Out), "\n")
			code := lines[len(lines)-1]
			// keep answers 200 with the block in "lost": it did not move.
			if r.Code != 0 || (code == "200" && !strings.Contains(r.Out, `"lost":[{`)) {
				through++
				t.Errorf("the registrar let s1 %s: exit %d, HTTP %s: %s", c.what, r.Code, code, r)
			}
		}
		note("s1's certificate asking the registrar to delete, rebind or release s2's claims", len(calls), through)

		// Nothing of s2's moved.
		if now, err := op.Endpoint(ctx, "acme", victimEp.Name); err != nil || now != victimEp {
			t.Errorf("s2's endpoint is now %+v (%v); was %+v", now, err, victimEp)
		}
		if now, err := op.Blocks(ctx, "acme", "web"); err != nil || now[s2Block] != "s2" {
			t.Errorf("s2's block %s is held by %q now (%v)", s2Block, now[s2Block], err)
		}
		if _, err := op.Endpoint(ctx, "acme", "planted"); !errors.Is(err, directory.ErrNotFound) {
			t.Errorf("an endpoint was planted on s2: %v", err)
		}
		intact(t)
	})

	t.Run("key spraying through egress", func(t *testing.T) {
		l := l.with(t)
		r := l.in(w.Name, time.Minute, filepath.Join(bin, "nviattack"), "spray", "--to", "198.18.0.2", "--ports", "61440-65535")
		if r.Code != 0 {
			t.Fatal(r)
		}
		t.Logf("attacker: %s", strings.TrimSpace(r.Out))
		note("key spraying through egress (UDP to every key of s2)", sentOf(r.Out), strings.Count(sink.out.String(), "forged"))
		intact(t)
	})

	t.Run("source port in the key range", func(t *testing.T) {
		l := l.with(t)
		esink := l.start(e.Name, filepath.Join(bin, "nviattack"), "sink", "--port", "9000")
		l.listening(e.Name, "udp", 9000)
		// Legitimate within evil: an ordinary source port gets through ...
		l.in(w.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", e.IP, "--ports", "9000", "--payload", "ordinary")
		eventually(t, 5*time.Second, "the ordinary datagram", func() error {
			if !strings.Contains(esink.out.String(), "ordinary") {
				return fmt.Errorf("got %q", esink.out.String())
			}
			return nil
		})
		// ... a source port that could be a session key does not.
		for _, sp := range []int{61440, live.Key, 65535} {
			l.in(w.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", e.IP, "--ports", "9000",
				"--src-port", strconv.Itoa(sp), "--payload", "keyport")
		}
		l.in(w.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", e.IP, "--ports", "9000", "--payload", "after")
		eventually(t, 5*time.Second, "the datagram after", func() error {
			if !strings.Contains(esink.out.String(), "after") {
				return fmt.Errorf("got %q", esink.out.String())
			}
			return nil
		})
		note("UDP from a source port in the key range", 3, strings.Count(esink.out.String(), "keyport"))
		if strings.Contains(esink.out.String(), "keyport") {
			t.Errorf("a datagram from a key-range source port was delivered: %q", esink.out.String())
		}
		intact(t)
	})

	t.Run("datagrams from a key that no session holds", func(t *testing.T) {
		l := l.with(t)
		// What comes from a key and no session flow takes goes to the
		// agent (a session's answer may beat its way back); what is no
		// session's is host traffic, which the agent hands to the host,
		// and nothing else.
		hsink := l.start(l.server("s1"), filepath.Join(bin, "nviattack"), "sink", "--port", "9000")
		l.listening(l.server("s1"), "udp", 9000)
		for _, origin := range []string{l.underlay(), l.Prefix + "-internet"} {
			l.in(origin, 30*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", "198.18.0.1", "--ports", "9000",
				"--src-port", strconv.Itoa(live.Key), "--payload", "host")
		}
		eventually(t, 5*time.Second, "s1's host receiving both", func() error {
			if n := strings.Count(hsink.out.String(), "host"); n < 2 {
				return fmt.Errorf("got %q", hsink.out.String())
			}
			return nil
		})
		// A flood of them, from the victim session's own key, fills the
		// uplink's meter and nothing more.
		r := l.in(l.underlay(), time.Minute, filepath.Join(bin, "nviattack"), "spray", "--to", "198.18.0.1", "--ports", "1024-5119",
			"--src-port", strconv.Itoa(live.Key), "--payload", "forged")
		if r.Code != 0 {
			t.Fatal(r)
		}
		note("datagrams from a live key to a client's server, not from its peer", sentOf(r.Out), strings.Count(sink.out.String(), "forged"))
		intact(t)
	})

	t.Run("a reverse connection from a server workload", func(t *testing.T) {
		l := l.with(t)
		l.must("net", "create", "acme/front", "--cidr", "10.3.0.0/24")
		l.must("net", "create", "acme/db", "--cidr", "10.4.0.0/24")
		l.must("rule", "add", "acme", "--allow", "--from", "net:front", "--to", "net:db", "--port", "udp/5353")
		f := l.workload(n("f"), "s1", "acme/front")
		d := l.workload(n("d"), "s2", "acme/db")
		dsink := l.start(d.Name, filepath.Join(bin, "nviattack"), "sink", "--port", "5353")
		fsink := l.start(f.Name, filepath.Join(bin, "nviattack"), "sink", "--port", "9999")
		l.listening(d.Name, "udp", 5353)
		l.listening(f.Name, "udp", 9999)
		// The allowed direction works ...
		l.in(f.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", d.IP, "--ports", "5353", "--payload", "front-to-db")
		eventually(t, 5*time.Second, "front -> db:5353", func() error {
			if !strings.Contains(dsink.out.String(), "front-to-db") {
				return fmt.Errorf("got %q", dsink.out.String())
			}
			return nil
		})
		dsink.stop() // frees port 5353 for the attack below
		// ... and db, answering from the session's port, cannot open a new
		// flow to a port of front's that policy never opened.
		l.in(d.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", f.IP, "--ports", "9999", "--src-port", "5353", "--payload", "reverse")
		l.in(d.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", f.IP, "--ports", "9999", "--payload", "control")
		// Both are refused: wait until the agents have decided on them.
		eventually(t, 5*time.Second, "db's attempts refused by a flow on s2", func() error {
			if deny := strings.Join(l.flows("s2", "0x4000000000000000/0xf000000000000000"), "\n"); !strings.Contains(deny, "nw_dst="+f.IP) {
				return fmt.Errorf("no drop flow toward front yet: %s", deny)
			}
			return nil
		})
		note("a new flow from a server workload back to its client", 1, strings.Count(fsink.out.String(), "reverse"))
		if got := fsink.out.String(); got != "" {
			t.Errorf("front received %q from db, which policy never allowed to open a flow to it", got)
		}
		intact(t)
	})

	t.Run("a VLAN-tagged frame", func(t *testing.T) {
		l := l.with(t)
		dump := l.start(l.underlay(), "tcpdump", "-l", "-i", "s1", "-nn", "-e", "vlan")
		eventually(t, 10*time.Second, "tcpdump started", func() error {
			if !strings.Contains(dump.err.String(), "listening on") {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		// The kernel here has no 802.1Q driver: the attacker writes the
		// tagged frames itself, with its own MAC and address.
		r := l.in(w.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "tagged", "--to", "203.0.113.2", "--port", "9", "--vlan", "42", "--count", "5")
		if r.Code != 0 {
			t.Fatal(r)
		}
		t.Logf("attacker: %s", strings.TrimSpace(r.Out))
		// The untagged path beside it still works.
		if r := l.in(w.Name, 10*time.Second, "ping", "-c", "1", "-W", "2", "203.0.113.2"); r.Code != 0 {
			t.Errorf("untagged egress broke: %s", r)
		}
		note("802.1Q-tagged frames from a workload", sentOf(r.Out), strings.Count(dump.out.String(), "vlan 42"))
		if out := dump.out.String(); out != "" {
			t.Errorf("tagged frames reached the underlay:\n%s", out)
		}
		intact(t)
	})

	t.Run("an etcd client inside a workload", func(t *testing.T) {
		l := l.with(t)
		through := 0
		defer func() { note("an etcd client inside a workload (4 endpoints)", 4, through) }()
		for _, ep := range []string{"https://198.19.0.254:2379", "http://198.19.0.254:2379", "http://198.18.0.254:2379", "https://198.18.0.254:2379"} {
			r := l.in(w.Name, 30*time.Second, filepath.Join(bin, "nvictl"), "--etcd", ep, "servers")
			if r.Code == 0 {
				through++
				t.Errorf("a workload read the directory at %s: %s", ep, r)
			}
		}
		intact(t)
	})

	t.Run("a malformed server record", func(t *testing.T) {
		l := l.with(t)
		// Only the operator may write it now; a record written by a
		// careless tool or a bug must still crash nobody. An IPv6 data
		// address (the audit's crash), an empty one, and garbage, each
		// with an endpoint of acme placed on it.
		d := l.operatorDirectory()
		defer d.Close()
		cli := d.Client()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		bad := map[string]string{
			"v6":    `{"name":"v6","dataIP":"2001:db8::9","dataMAC":"02:00:00:00:00:09","agentAddr":"198.18.0.9:7470","site":"default","role":"server"}`,
			"empty": `{"name":"empty","dataIP":"","dataMAC":"02:00:00:00:00:0a","agentAddr":"198.18.0.10:7470","site":"default","role":"server"}`,
			"junk":  `{not json`,
		}
		ips := map[string]string{"v6": "10.1.0.201", "empty": "10.1.0.202", "junk": "10.1.0.203"}
		for name, rec := range bad {
			ep := fmt.Sprintf(`{"tenant":"acme","network":"web","name":"x-%s","ip":%q,"mac":"0a:66:0a:01:00:%02x","server":%q}`, name, ips[name], len(name), name)
			for k, v := range map[string]string{
				"/nvi/v1/servers/" + name:          rec,
				"/nvi/v1/endpoints/acme/x-" + name: ep,
				"/nvi/v1/addrs/acme/" + ips[name]:  "x-" + name,
			} {
				if _, err := cli.Put(ctx, k, v); err != nil {
					t.Fatalf("put %s: %v", k, err)
				}
			}
		}
		for _, ip := range ips {
			r := l.in(c.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", ip, "--ports", "80", "--payload", "toward-bad-record")
			if r.Code != 0 {
				t.Fatal(r)
			}
		}
		// Each first packet was decided: a drop flow for its destination.
		eventually(t, 10*time.Second, "the look-ups toward the bad records refused", func() error {
			deny := strings.Join(l.flows("s1", "0x4000000000000000/0xf000000000000000"), "\n")
			for _, ip := range ips {
				if !strings.Contains(deny, "nw_dst="+ip) {
					return fmt.Errorf("no drop flow toward %s yet: %s", ip, deny)
				}
			}
			return nil
		})
		made := 0
		for _, x := range l.sessions("s1") {
			for _, ip := range ips {
				if x.Server == ip {
					made++
					t.Errorf("a session toward a malformed server: %+v", x)
				}
			}
		}
		note("malformed server records (IPv6, empty, garbage) and first packets toward them", len(ips), made)
		for k := range bad {
			cli.Delete(ctx, "/nvi/v1/servers/"+k)
			cli.Delete(ctx, "/nvi/v1/endpoints/acme/x-"+k)
			cli.Delete(ctx, "/nvi/v1/addrs/acme/"+ips[k])
		}
		intact(t)
	})

	t.Run("a flood of first packets from one tenant", func(t *testing.T) {
		l := l.with(t)
		// evil floods its own /16 with first packets, far beyond any meter;
		// meanwhile acme's client opens 20 new sessions. Each UDP first
		// packet that a shared meter dropped would be a session never made.
		flood := l.start(w.Name, filepath.Join(bin, "nviattack"), "flood", "--net", "10.9.0.0/16", "--count", "200000", "--for", "8s", "--port", "0")
		eventually(t, 10*time.Second, "the flood saturates the attacker's meter", func() error {
			if drops := l.meterDrops("s1", w); drops < 100 {
				return fmt.Errorf("%d dropped so far", drops)
			}
			return nil
		})
		before := l.meterDrops("s1", c)
		if r := l.in(c.Name, 10*time.Second, filepath.Join(bin, "nviattack"), "spray", "--to", s.IP, "--ports", "6001-6020", "--payload", "new"); r.Code != 0 {
			t.Fatal(r)
		}
		n := 0
		defer func() {
			note("evil's flood of first packets: acme's 20 new sessions lost", sentOf(flood.out.String()), 20-n)
		}()
		eventually(t, 10*time.Second, "acme's 20 new sessions", func() error {
			n = 0
			for _, x := range l.sessions("s1") {
				if x.Client == c.IP && x.Server == s.IP && x.Port >= 6001 && x.Port <= 6020 {
					n++
				}
			}
			if n != 20 {
				return fmt.Errorf("%d of 20", n)
			}
			return nil
		})
		if after := l.meterDrops("s1", c); after != before {
			t.Errorf("acme's meter dropped %d packets during evil's flood", after-before)
		}
		flood.wait(15 * time.Second)
		t.Logf("attacker: %s; its meter dropped %d", strings.TrimSpace(flood.out.String()), l.meterDrops("s1", w))
		intact(t)
	})
}

// attackRow is one line of the attack table.
type attackRow struct {
	attack        string
	sent, through int
}

// logAttacks prints the attack table.
func logAttacks(t *testing.T, rows []attackRow) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| attack | sent | got through |\n| --- | ---: | ---: |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d |\n", r.attack, r.sent, r.through)
	}
	t.Log(b.String())
}

// sentOf reads nviattack's "sent N".
func sentOf(out string) int {
	var n int
	if i := strings.LastIndex(out, "sent "); i >= 0 {
		fmt.Sscanf(out[i:], "sent %d", &n)
	}
	return n
}

// operatorDirectory opens the lab's directory with the operator's
// certificate, as nvictl does.
func (l *Lab) operatorDirectory() *directory.Store {
	l.t.Helper()
	st, err := lab.Load(l.Prefix)
	if err != nil {
		l.t.Fatal(err)
	}
	tc, err := st.OperatorTLS()
	if err != nil {
		l.t.Fatal(err)
	}
	d, err := directory.Open(context.Background(), directory.Config{Endpoints: st.Directory.Local, TLS: tc})
	if err != nil {
		l.t.Fatal(err)
	}
	return d
}

// meterDrops is how many packets a workload's punt meter has dropped.
func (l *Lab) meterDrops(server string, w Workload) int {
	l.t.Helper()
	var st struct {
		Workloads []struct{ Name, Veth string }
	}
	l.state(&st)
	veth := ""
	for _, x := range st.Workloads {
		if x.Name == w.Name {
			veth = x.Veth
		}
	}
	r := l.in(l.server(server), 10*time.Second, "ovs-vsctl", "--db=unix:"+filepath.Join(l.runDir(), server, "db.sock"), "get", "Interface", veth, "ofport")
	ofport, err := strconv.Atoi(strings.TrimSpace(r.Out))
	if r.Code != 0 || err != nil {
		l.t.Fatalf("ofport of %s: %s", veth, r)
	}
	mgmt := fmt.Sprintf("unix:%s/%s/br-nvi.mgmt", l.runDir(), server)
	r = sh2("ovs-ofctl", "-O", "OpenFlow13", "meter-stats", mgmt, fmt.Sprintf("meter=%d", pipeline.WorkloadMeter(uint32(ofport))))
	m := bandRe.FindStringSubmatch(r.Out)
	if r.Code != 0 || m == nil {
		l.t.Fatalf("meter stats of %s on %s: %s", w.Name, server, r)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// bandRe finds the packets a meter's drop band counted.
var bandRe = regexp.MustCompile(`0: packet_count:(\d+)`)

// agentPIDs lists the lab's agents' process IDs, alive ones only.
func (l *Lab) agentPIDs() []int {
	var st struct {
		Servers []struct {
			NvidPID int `json:"nvid_pid"`
		} `json:"servers"`
	}
	l.state(&st)
	var out []int
	for _, s := range st.Servers {
		if alive := sh2("kill", "-0", strconv.Itoa(s.NvidPID)); alive.Code == 0 {
			out = append(out, s.NvidPID)
		}
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
