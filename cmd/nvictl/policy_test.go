package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"nvi/directory"
	"nvi/policy"
)

// etcdURL is an embedded etcd the whole test binary shares.
var etcdURL string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvictl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e, err := directory.ServeEmbedded(ctx, directory.EmbedConfig{DataDir: dir, ClientURLs: []string{"http://127.0.0.1:0"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etcdURL = e.Endpoints()[0]
	code := m.Run()
	e.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nvictl runs the CLI against the test directory and checks its exit code;
// a failure must be one line on stderr that contains every part given.
func nvictl(t *testing.T, code int, args []string, parts ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	got := run(context.Background(), append([]string{"--etcd", etcdURL}, args...), &out, &errb)
	if got != code {
		t.Fatalf("nvictl %s: exit %d; want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), got, code, out.String(), errb.String())
	}
	if code != 0 {
		msg := errb.String()
		if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "nvictl: ") {
			t.Fatalf("nvictl %s: stderr is not one line: %q", strings.Join(args, " "), msg)
		}
		for _, p := range parts {
			if !strings.Contains(msg, p) {
				t.Fatalf("nvictl %s: %q does not mention %q", strings.Join(args, " "), msg, p)
			}
		}
	}
	return out.String()
}

func ok(t *testing.T, args ...string) string { t.Helper(); return nvictl(t, 0, args) }

func fails(t *testing.T, code int, line string, parts ...string) {
	t.Helper()
	nvictl(t, code, strings.Fields(line), parts...)
}

func TestPolicyCommands(t *testing.T) {
	s, err := directory.Open(context.Background(), directory.Config{Endpoints: []string{etcdURL}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reg, err := s.RegisterServer(context.Background(), directory.Server{Name: "s1", DataIP: netip.MustParseAddr("192.0.2.1"), DataMAC: "02:00:00:00:00:01"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ok(t, "net", "create", "acme/web", "--cidr", "10.1.0.0/24")
	ok(t, "net", "create", "acme/db", "--cidr", "10.2.0.0/24")
	fails(t, 1, "net create acme/web2 --cidr 10.1.0.128/25", "overlaps network acme/web")
	for _, w := range []string{"w1 --net web", "w2 --net web", "d1 --net db"} {
		ok(t, strings.Fields("endpoint create acme/"+w+" --server s1")...)
	}
	if out := ok(t, "tenant", "list"); !regexp.MustCompile(`acme\s+[1-9]`).MatchString(out) {
		t.Fatalf("tenant list shows no zone:\n%s", out)
	}
	ok(t, "tenant", "create", "zeta")
	fails(t, 2, "tenant create", "want TENANT, got 0 argument(s)")
	fails(t, 1, "tenant delete acme", "tenant acme still has networks")
	ok(t, "tenant", "delete", "zeta")

	// Groups: all or nothing.
	ok(t, "group", "create", "acme/front")
	fails(t, 1, "group create acme/front", "group acme/front already exists")
	fails(t, 1, "group create nope/front", "no tenant nope")
	fails(t, 2, "group create acme", `"acme" is not of the form TENANT/GROUP`)
	ok(t, "group", "add", "acme/front", "web", "db")
	fails(t, 1, "group remove acme/front web nope", "network acme/nope is not in group acme/front")
	fails(t, 1, "group add acme/back web", "no group acme/back")
	fails(t, 2, "group add acme/front", "want TENANT/GROUP NET [NET...]")
	ok(t, "group", "remove", "acme/front", "db")
	fails(t, 1, "group add acme/front db nope", "no network acme/nope")
	var groups []struct {
		Tenant, Name string
		Networks     []string
	}
	if err := json.Unmarshal([]byte(ok(t, "group", "list", "-o", "json")), &groups); err != nil || len(groups) != 1 || strings.Join(groups[0].Networks, ",") != "web" {
		t.Fatalf("group list -o json = %+v, %v", groups, err)
	}
	if out := ok(t, "group", "list", "acme"); !regexp.MustCompile(`acme\s+front\s+web`).MatchString(out) {
		t.Fatalf("group list acme:\n%s", out)
	}
	fails(t, 1, "group list nope", "tenant nope does not exist")

	// Pair rules.
	ok(t, "connect", "acme/w1", "acme/d1")
	ok(t, "disconnect", "acme/d1", "acme/w2")
	fails(t, 2, "connect acme/w1 beta/d1", "acme/w1 and beta/d1 are in different tenants")
	fails(t, 1, "connect acme/w1 acme/nope", "no workload acme/nope")
	fails(t, 1, "disconnect acme/w1 acme/w1", "two different workloads")
	fails(t, 2, "connect acme/w1", "want TENANT/A TENANT/B")
	ok(t, "pair", "forget", "acme/w2", "acme/d1")
	fails(t, 1, "pair forget acme/w2 acme/d1", "no pair rule joins acme/d1 and acme/w2")

	// Rules.
	id := strings.TrimSpace(ok(t, "rule", "add", "acme", "--allow", "--from", "net:web", "--to", "net:db", "--port", "tcp/5432"))
	if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(id) {
		t.Fatalf("rule add printed %q; want the rule's ID", id)
	}
	ok(t, "rule", "add", "acme", "--deny", "--from", "any", "--to", "group:front", "--port", "icmp")
	fails(t, 1, "rule add acme --deny --from net:web --to net:db --port tcp/5432", "conflicting rule: rule "+id+" says allow net:web -> net:db on tcp/5432; delete it first")
	fails(t, 1, "rule add acme --allow --from net:nope --to any", "no network acme/nope")
	fails(t, 1, "rule add nope --allow --from any --to any", "no tenant nope")
	fails(t, 2, "rule add acme --allow --from vlan:7 --to any", "--from: selector")
	fails(t, 2, "rule add acme --allow --from any --to any --port tcp/0", "--port: port spec")
	fails(t, 2, "rule add acme --allow --from any --to any --port sctp", "unknown protocol")
	fails(t, 2, "rule add acme --allow --deny --from any --to any", "say --allow or --deny")
	fails(t, 2, "rule add acme --allow --to any", "--from and --to are required")
	var rules []policy.Rule
	if err := json.Unmarshal([]byte(ok(t, "rule", "list", "acme", "-o", "json")), &rules); err != nil || len(rules) != 2 || rules[0].ID != id || rules[1].Ports.String() != "icmp" {
		t.Fatalf("rule list -o json = %+v, %v", rules, err)
	}
	fails(t, 1, "group delete acme/front", "group acme/front is named by rule")

	// The whole policy.
	show := ok(t, "policy", "show", "acme")
	for _, want := range []string{"precedence: " + policy.Precedence, "front", "d1 - w1", "connected", "net:web", "tcp/5432"} {
		if !strings.Contains(show, want) {
			t.Fatalf("policy show lacks %q:\n%s", want, show)
		}
	}
	var p struct {
		Tenant, Precedence string
		policy.Policy
	}
	if err := json.Unmarshal([]byte(ok(t, "policy", "show", "acme", "-o", "json")), &p); err != nil || p.Tenant != "acme" || len(p.Groups) != 1 || len(p.Pairs) != 1 || len(p.Rules) != 2 {
		t.Fatalf("policy show -o json = %+v, %v", p, err)
	}
	fails(t, 1, "policy show nope", "tenant nope does not exist")
	ok(t, "rule", "delete", "acme", id)
	fails(t, 1, "rule delete acme "+id, "tenant acme has no rule "+id)

	// Port maps.
	if out := ok(t, "expose", "acme/w1", "--port", "tcp/8080:80"); !regexp.MustCompile(`s1\s+tcp/8080\s+acme\s+w1\s+80`).MatchString(out) {
		t.Fatalf("expose printed:\n%s", out)
	}
	ok(t, "expose", "acme/w2", "--port", "udp/8080:53")
	fails(t, 1, "expose acme/w2 --port tcp/8080:80", "port tcp/8080 of s1 is already mapped to acme/w1:80")
	fails(t, 1, "expose acme/w2 --port tcp/61440:80", "port 61440 is in 61440-65535")
	fails(t, 1, "expose acme/nope --port tcp/81:80", "endpoint acme/nope does not exist")
	for _, bad := range []string{"tcp/8080", "icmp/1:1", "tcp/0:80", "tcp/8080:0", "tcp/80:x", ""} {
		nvictl(t, 2, []string{"expose", "acme/w2", "--port", bad}, "want PROTO/SERVERPORT:WORKLOADPORT")
	}
	var maps []directory.PortMap
	if err := json.Unmarshal([]byte(ok(t, "portmap", "list", "--server", "s1", "-o", "json")), &maps); err != nil || len(maps) != 2 {
		t.Fatalf("portmap list -o json = %+v, %v", maps, err)
	}
	ok(t, "unexpose", "s1", "tcp/8080")
	fails(t, 1, "unexpose s1 tcp/8080", "port tcp/8080 of s1 is not mapped")
	fails(t, 2, "unexpose s1 8080", `"8080": want tcp/PORT or udp/PORT`)
	ok(t, "endpoint", "delete", "acme/w2")
	if out := ok(t, "portmap", "list"); strings.Count(out, "\n") != 1 {
		t.Fatalf("port maps left after their endpoints went:\n%s", out)
	}
}
