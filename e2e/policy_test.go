package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"nvi/policy"
	"nvi/session"
)

// member is a workload of the policy test, as policy sees it.
type member struct {
	Workload
	tenant, net string
}

func (m member) subject() policy.Subject {
	return policy.Subject{Tenant: m.tenant, Network: m.net, Name: m.Name, IP: netip.MustParseAddr(m.IP)}
}

// probe is one attempt of one workload to reach another.
type probe struct {
	proto session.Proto
	port  uint16
}

var probes = []probe{{session.TCP, 5432}, {session.UDP, 53}, {session.ICMP, 0}}

// reach tries from -> to and reports whether to answered. TCP and UDP
// answers carry the answering workload's name, so an answer from another
// workload with the same address (another tenant's) does not count.
func (l *Lab) reach(from, to member, p probe) bool {
	switch p.proto {
	case session.TCP:
		r := l.in(from.Name, 10*time.Second, "sh", "-c", fmt.Sprintf("echo ping | nc -N -w 2 %s %d", to.IP, p.port))
		return strings.HasPrefix(r.Out, to.Name+":ping")
	case session.UDP:
		r := l.in(from.Name, 10*time.Second, "sh", "-c", fmt.Sprintf("echo ping | nc -u -w 1 %s %d", to.IP, p.port))
		return strings.HasPrefix(r.Out, to.Name+":ping")
	default:
		return l.in(from.Name, 10*time.Second, "ping", "-n", "-c", "1", "-W", "1", to.IP).Code == 0
	}
}

// table tries every ordered pair with every probe, in parallel, and
// compares with what pol decides; it returns the number of checks and how
// many the policy allows.
func (l *Lab) table(t *testing.T, ms []member, pols map[string]policy.Policy) (int, map[string]bool) {
	t.Helper()
	type check struct {
		from, to member
		p        probe
		want     bool
	}
	var checks []check
	for _, from := range ms {
		for _, to := range ms {
			if from.Name == to.Name {
				continue
			}
			for _, p := range probes {
				if p.proto == session.ICMP && from.tenant != to.tenant {
					continue // an echo cannot say who answered; cross-tenant pairs are probed by name
				}
				want := pols[from.tenant].Decide(policy.Request{From: from.subject(), To: to.subject(), Proto: p.proto, Port: p.port}).Allow
				checks = append(checks, check{from, to, p, want})
			}
		}
	}
	allowed := map[string]bool{}
	for _, c := range checks {
		if c.want {
			allowed[fmt.Sprintf("%s->%s %s/%d", c.from.Name, c.to.Name, c.p.proto, c.p.port)] = true
		}
	}
	if len(allowed) == 0 || len(allowed) == len(checks) {
		t.Fatalf("a truth table that allows %d of %d checks tells nothing", len(allowed), len(checks))
	}
	var mu sync.Mutex
	var wrong []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 12)
	for _, c := range checks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if got := l.reach(c.from, c.to, c.p); got != c.want {
				mu.Lock()
				wrong = append(wrong, fmt.Sprintf("%s -> %s %s/%d: reached=%v, policy says %v", c.from.Name, c.to.Name, c.p.proto, c.p.port, got, c.want))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, w := range wrong {
		t.Error(w)
	}
	return len(checks), allowed
}

// TestPolicyTruthTable: three servers, two tenants with an overlapping
// CIDR (and the same addresses), several networks, a group, pair rules and
// port rules. Every ordered pair of workloads is tried with TCP, UDP and
// ICMP and compared with what the policy decides; then the policy changes
// and the table is checked again with the sessions of the first round live.
func TestPolicyTruthTable(t *testing.T) {
	l := newLab(t, 3, "--idle-timeout", "5m")
	n := func(s string) string { return l.Prefix + "-" + s }
	for _, nw := range [][2]string{{"acme/web", "10.1.0.0/24"}, {"acme/db", "10.2.0.0/24"}, {"acme/ops", "10.3.0.0/24"}, {"globex/web", "10.1.0.0/24"}} {
		l.must("net", "create", nw[0], "--cidr", nw[1])
	}
	add := func(name, server, tenant, net, ip string) member {
		return member{l.workload(n(name), server, tenant+"/"+net, "--ip", ip), tenant, net}
	}
	ms := []member{
		add("w1", "s1", "acme", "web", "10.1.0.11"),
		add("w2", "s2", "acme", "web", "10.1.0.12"),
		add("d1", "s2", "acme", "db", "10.2.0.11"),
		add("d2", "s3", "acme", "db", "10.2.0.12"),
		add("o1", "s3", "acme", "ops", "10.3.0.11"),
		add("g1", "s1", "globex", "web", "10.1.0.11"), // w1's address, other tenant, same server
		add("g2", "s3", "globex", "web", "10.1.0.12"), // w2's address
	}
	for _, m := range ms {
		for _, port := range []string{"5432", "53"} {
			e := l.start(m.Name, filepath.Join(bin, "nvibench"), "echo", "--first-port", port, "--count", "1", "--tcp", "--name", m.Name)
			eventually(t, 5*time.Second, "echo server in "+m.Name, func() error {
				if !strings.Contains(e.out.String(), "ready") {
					return fmt.Errorf("not yet: %s", e.err.String())
				}
				return nil
			})
		}
	}
	// The policy, as nvictl is told it and as the oracle holds it.
	l.must("group", "create", "acme/back")
	l.must("group", "add", "acme/back", "db", "ops")
	l.must("connect", "acme/"+n("w1"), "acme/"+n("o1"))
	l.must("disconnect", "acme/"+n("w2"), "acme/"+n("d1"))
	webToDB := strings.TrimSpace(l.must("rule", "add", "acme", "--allow", "--from", "net:web", "--to", "net:db", "--port", "tcp/5432"))
	l.must("rule", "add", "acme", "--deny", "--from", "workload:"+n("o1"), "--to", "workload:"+n("d2"), "--port", "tcp/5432")
	sel := func(k policy.Kind, name string) policy.Selector { return policy.Selector{Kind: k, Name: name} }
	tcp5432 := policy.Ports{Proto: session.TCP, First: 5432, Last: 5432}
	acme := policy.Policy{
		Groups: []policy.Group{{Name: "back", Networks: []string{"db", "ops"}}},
		Pairs:  []policy.Pair{{A: n("w1"), B: n("o1"), Connect: true}, {A: n("w2"), B: n("d1"), Connect: false}},
		Rules: []policy.Rule{
			{ID: "r1", Action: policy.Allow, From: sel(policy.NetworkKind, "web"), To: sel(policy.NetworkKind, "db"), Ports: tcp5432},
			{ID: "r2", Action: policy.Deny, From: sel(policy.WorkloadKind, n("o1")), To: sel(policy.WorkloadKind, n("d2")), Ports: tcp5432},
		},
	}
	pols := map[string]policy.Policy{"acme": acme, "globex": {}}
	checks, allowed1 := l.table(t, ms, pols)
	t.Logf("round 1: %d checks, %d allowed", checks, len(allowed1))
	if t.Failed() {
		return
	}
	before := map[string]int{}
	for _, sv := range []string{"s1", "s2", "s3"} {
		before[sv] = len(l.sessions(sv))
	}

	// Change the policy under live sessions: web may no longer reach db,
	// ops leaves the group, w2 and d1 are no longer kept apart, w1 and o1
	// are cut.
	l.must("rule", "delete", "acme", webToDB)
	l.must("group", "remove", "acme/back", "ops")
	l.must("pair", "forget", "acme/"+n("w2"), "acme/"+n("d1"))
	l.must("disconnect", "acme/"+n("w1"), "acme/"+n("o1"))
	l.must("rule", "add", "acme", "--allow", "--from", "net:ops", "--to", "net:web", "--port", "udp/53")
	acme.Rules = append(acme.Rules[1:], policy.Rule{ID: "r3", Action: policy.Allow, From: sel(policy.NetworkKind, "ops"),
		To: sel(policy.NetworkKind, "web"), Ports: policy.Ports{Proto: session.UDP, First: 53, Last: 53}})
	acme.Groups[0].Networks = []string{"db"}
	acme.Pairs = []policy.Pair{{A: n("w1"), B: n("o1"), Connect: false}}
	pols["acme"] = acme
	time.Sleep(time.Second) // "within a second"
	// Revoked sessions are gone at both ends.
	for _, sv := range []string{"s1", "s2", "s3"} {
		for _, s := range l.sessions(sv) {
			from, okf := memberByIP(ms, s.Tenant, s.Client)
			to, okt := memberByIP(ms, s.Tenant, s.Server)
			if !okf || !okt {
				t.Errorf("%s has a session between unknown workloads: %+v", sv, s)
				continue
			}
			p, _ := session.ParseProto(s.Proto)
			if !acme.Decide(policy.Request{From: from.subject(), To: to.subject(), Proto: p, Port: uint16(s.Port)}).Allow && s.Tenant == "acme" {
				t.Errorf("%s still has a revoked session: %+v", sv, s)
			}
		}
	}
	checks, allowed2 := l.table(t, ms, pols)
	revoked, granted := 0, 0
	for k := range allowed1 {
		if !allowed2[k] {
			revoked++
		}
	}
	for k := range allowed2 {
		if !allowed1[k] {
			granted++
		}
	}
	if revoked == 0 || granted == 0 {
		t.Fatalf("the policy change revoked %d and granted %d of the checks: it should do both", revoked, granted)
	}
	t.Logf("round 2, after the policy change: %d checks, %d allowed (%d revoked, %d newly granted); sessions before it: %v",
		checks, len(allowed2), revoked, granted, before)
}

func memberByIP(ms []member, tenant, ip string) (member, bool) {
	for _, m := range ms {
		if m.tenant == tenant && m.IP == ip {
			return m, true
		}
	}
	return member{}, false
}
