package policy

import (
	"errors"
	"net/netip"
	"testing"

	"nvi/session"
)

func sub(tenant, network, name, ip string) Subject {
	return Subject{tenant, network, name, netip.MustParseAddr(ip)}
}

var (
	web1  = sub("acme", "web", "w1", "10.1.0.2")
	web2  = sub("acme", "web", "w2", "10.1.0.3")
	db1   = sub("acme", "db", "d1", "10.2.0.2")
	ops1  = sub("acme", "ops", "o1", "10.3.0.2")
	other = sub("globex", "web", "g1", "10.1.0.3") // same network name and address, other tenant
)

func TestDefaultPolicy(t *testing.T) {
	tests := []struct {
		name     string
		from, to Subject
		allow    bool
	}{
		{"same network", web1, web2, true},
		{"same network, reverse", web2, web1, true},
		{"different networks", web1, db1, false},
		{"different networks, reverse", db1, web1, false},
		{"same network name, other tenant", web1, other, false},
	}
	for _, tt := range tests {
		for _, p := range []session.Proto{session.TCP, session.UDP, session.ICMP} {
			v := Policy{}.Decide(Request{From: tt.from, To: tt.to, Proto: p, Port: 80})
			if v.Allow != tt.allow || v.Reason == "" {
				t.Errorf("%s/%s: got %+v, want allow=%v with a reason", tt.name, p, v, tt.allow)
			}
		}
	}
}

func mustPorts(t *testing.T, s string) Ports {
	t.Helper()
	p, err := ParsePorts(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrecedence walks the documented order: tenants, pairs, deny rules,
// allow rules, groups, same network, default.
func TestPrecedence(t *testing.T) {
	p := Policy{
		Groups: []Group{{Name: "back", Networks: []string{"db", "ops"}}},
		Pairs: []Pair{
			{A: "w1", B: "o1", Connect: true},  // beats the default isolation
			{A: "w2", B: "w1", Connect: false}, // beats "same network"
		},
		Rules: []Rule{
			{ID: "r1", Action: Allow, From: Selector{NetworkKind, "web"}, To: Selector{NetworkKind, "db"}, Ports: mustPorts(t, "tcp/5432")},
			{ID: "r2", Action: Deny, From: Selector{WorkloadKind, "o1"}, To: Selector{GroupKind, "back"}, Ports: mustPorts(t, "tcp/22")},
			{ID: "r3", Action: Allow, From: Selector{Kind: AnyKind}, To: Selector{WorkloadKind, "d1"}, Ports: mustPorts(t, "icmp")},
			{ID: "r4", Action: Deny, From: Selector{NetworkKind, "web"}, To: Selector{NetworkKind, "db"}, Ports: mustPorts(t, "tcp/5000-5432")},
		},
	}
	tests := []struct {
		name     string
		from, to Subject
		proto    session.Proto
		port     uint16
		allow    bool
	}{
		{"other tenant, whatever the rules", web1, other, session.TCP, 80, false},
		{"pair connect beats isolation", web1, ops1, session.UDP, 53, true},
		{"pair connect works both ways", ops1, web1, session.TCP, 1, true},
		{"pair disconnect beats same network", web1, web2, session.TCP, 80, false},
		{"deny beats allow on the same port", web1, db1, session.TCP, 5432, false},
		{"deny range covers its ports", web1, db1, session.TCP, 5000, false},
		{"allow rule below the deny range... none matches", web1, db1, session.TCP, 4999, false},
		{"deny rule on a group beats the group", ops1, db1, session.TCP, 22, false},
		{"group allows the rest", ops1, db1, session.TCP, 80, true},
		{"group is symmetric", db1, ops1, session.UDP, 53, true},
		{"allow from any to a workload, protocol only", ops1, db1, session.ICMP, 0, true},
		{"protocol mismatch falls through to isolation", web1, db1, session.UDP, 5432, false},
		{"rules are directional", db1, web1, session.TCP, 5432, false},
	}
	for _, tt := range tests {
		v := p.Decide(Request{From: tt.from, To: tt.to, Proto: tt.proto, Port: tt.port})
		if v.Allow != tt.allow {
			t.Errorf("%s: %s -> %s %s/%d: got %+v, want allow=%v", tt.name, tt.from.Name, tt.to.Name, tt.proto, tt.port, v, tt.allow)
		}
	}
	// With the deny range gone, the allow rule opens the database port.
	p.Rules = p.Rules[:3]
	if v := p.Decide(Request{From: web1, To: db1, Proto: session.TCP, Port: 5432}); !v.Allow {
		t.Errorf("allow rule: %+v", v)
	}
}

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in   string
		want Ports
		err  bool
	}{
		{"tcp/80", Ports{session.TCP, 80, 80}, false},
		{"udp/53", Ports{session.UDP, 53, 53}, false},
		{"tcp/8000-8080", Ports{session.TCP, 8000, 8080}, false},
		{"tcp", Ports{Proto: session.TCP}, false},
		{"icmp", Ports{Proto: session.ICMP}, false},
		{"any", Ports{}, false},
		{"icmp/8", Ports{}, true},
		{"tcp/0", Ports{}, true},
		{"tcp/80-70", Ports{}, true},
		{"tcp/65536", Ports{}, true},
		{"sctp/9", Ports{}, true},
		{"tcp/x", Ports{}, true},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if (err != nil) != tt.err || err == nil && got != tt.want {
			t.Errorf("ParsePorts(%q) = %+v, %v", tt.in, got, err)
		}
		if err == nil {
			if back, _ := ParsePorts(got.String()); back != got {
				t.Errorf("%q does not round-trip: %q", tt.in, got.String())
			}
		}
	}
}

func TestParseSelector(t *testing.T) {
	for _, ok := range []string{"net:web", "group:back", "workload:w1", "any"} {
		s, err := ParseSelector(ok)
		if err != nil || s.String() != ok {
			t.Errorf("ParseSelector(%q) = %v, %v", ok, s, err)
		}
	}
	for _, bad := range []string{"", "web", "net:", "host:x", "any:x"} {
		if _, err := ParseSelector(bad); err == nil {
			t.Errorf("ParseSelector(%q) accepted", bad)
		}
	}
}

func TestCheckRule(t *testing.T) {
	r := Rule{ID: "a", Action: Allow, From: Selector{NetworkKind, "web"}, To: Selector{NetworkKind, "db"}, Ports: Ports{session.TCP, 80, 80}}
	p := Policy{Rules: []Rule{r}}
	opposite := r
	opposite.ID, opposite.Action = "b", Deny
	if err := p.CheckRule(opposite); !errors.Is(err, ErrConflict) {
		t.Errorf("contradicting rule: %v", err)
	}
	if err := p.CheckRule(r); !errors.Is(err, ErrConflict) {
		t.Errorf("duplicate rule: %v", err)
	}
	other := r
	other.Ports.First, other.Ports.Last = 81, 81
	if err := p.CheckRule(other); err != nil {
		t.Errorf("a rule for another port: %v", err)
	}
	bad := r
	bad.Action = "maybe"
	if err := p.CheckRule(bad); err == nil {
		t.Error("a rule with an unknown action was accepted")
	}
}

// TestDecideFailsClosed: only an explicit allow action allows; a rule with
// any other action (a typo, an empty one, one a later version adds) that
// matches denies, even where the default would allow.
func TestDecideFailsClosed(t *testing.T) {
	anyAny := func(a Action) Rule {
		return Rule{ID: "r", Action: a, From: Selector{Kind: AnyKind}, To: Selector{Kind: AnyKind}}
	}
	tests := []struct {
		action   Action
		from, to Subject
		allow    bool
	}{
		{Allow, web1, db1, true},  // explicit allow opens isolated networks
		{Deny, web1, web2, false}, // explicit deny closes a network
		{"Deny", web1, web2, false},
		{"ALLOW", web1, db1, false},
		{"", web1, web2, false},
		{"allow-all", web1, db1, false},
		{"permit", web1, web2, false},
	}
	for _, tt := range tests {
		v := Policy{Rules: []Rule{anyAny(tt.action)}}.Decide(Request{From: tt.from, To: tt.to, Proto: session.TCP, Port: 80})
		if v.Allow != tt.allow {
			t.Errorf("action %q %s -> %s: got %+v, want allow=%v", tt.action, tt.from, tt.to, v, tt.allow)
		}
	}
	// An unknown action denies even next to an allow that matches.
	p := Policy{Rules: []Rule{anyAny(Allow), anyAny("Deny")}}
	if v := p.Decide(Request{From: web1, To: web2, Proto: session.TCP, Port: 80}); v.Allow {
		t.Errorf("allow + unknown action: %+v; want deny", v)
	}
}

func TestRuleValidate(t *testing.T) {
	anySel := Selector{Kind: AnyKind}
	tests := []struct {
		r  Rule
		ok bool
	}{
		{Rule{Action: Allow, From: anySel, To: anySel}, true},
		{Rule{Action: Deny, From: Selector{Kind: NetworkKind, Name: "web"}, To: Selector{Kind: WorkloadKind, Name: "w1"}, Ports: Ports{Proto: session.TCP, First: 80, Last: 90}}, true},
		{Rule{Action: "Deny", From: anySel, To: anySel}, false},
		{Rule{Action: "", From: anySel, To: anySel}, false},
		{Rule{Action: Allow, From: Selector{Kind: AnyKind, Name: "x"}, To: anySel}, false},
		{Rule{Action: Allow, From: Selector{Kind: NetworkKind}, To: anySel}, false},
		{Rule{Action: Allow, From: Selector{Kind: "host", Name: "h"}, To: anySel}, false},
		{Rule{Action: Allow, From: anySel, To: anySel, Ports: Ports{Proto: session.TCP, First: 90, Last: 80}}, false},
		{Rule{Action: Allow, From: anySel, To: anySel, Ports: Ports{Proto: session.ICMP, First: 1, Last: 1}}, false},
		{Rule{Action: Allow, From: anySel, To: anySel, Ports: Ports{Proto: 99}}, false},
	}
	for _, tt := range tests {
		if err := tt.r.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v) = %v; want ok=%v", tt.r, err, tt.ok)
		}
	}
}
