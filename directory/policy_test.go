package directory

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"nvi/policy"
	"nvi/session"
)

func sel(s string) policy.Selector { return literal(policy.ParseSelector(s)) }
func ports(s string) policy.Ports  { return literal(policy.ParsePorts(s)) }

// literal returns a value parsed from a literal in a test, which cannot fail.
func literal[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// policyFixture: tenant acme with networks web, db, app and endpoints w1,
// w2 (web) and d1 (db) on s1.
func policyFixture(t *testing.T) *Store {
	t.Helper()
	s := newStore(t)
	addServer(t, s, "s1", 1)
	for i, n := range []string{"web", "db", "app"} {
		addNetwork(t, s, "acme", n, "10."+string(rune('1'+i))+".0.0/24")
	}
	for _, e := range []Endpoint{{Network: "web", Name: "w1"}, {Network: "web", Name: "w2"}, {Network: "db", Name: "d1"}} {
		e.Tenant, e.Server = "acme", "s1"
		must[Endpoint](t)(s.CreateEndpoint(ctxT(t), e))
	}
	return s
}

func TestGroups(t *testing.T) {
	s := policyFixture(t)
	ctx := ctxT(t)
	g := must[policy.Group](t)(s.CreateGroup(ctx, "acme", "front"))
	if g.Name != "front" || len(g.Networks) != 0 {
		t.Fatalf("CreateGroup = %+v", g)
	}
	g = must[policy.Group](t)(s.AddToGroup(ctx, "acme", "front", "web", "app"))
	if !slices.Equal(g.Networks, []string{"app", "web"}) {
		t.Fatalf("AddToGroup = %+v", g)
	}
	must[policy.Group](t)(s.CreateGroup(ctx, "acme", "back"))

	bad := []struct {
		err  error
		kind error
		want string
	}{
		{must2(s.CreateGroup(ctx, "acme", "front")), ErrExists, "group acme/front already exists"},
		{must2(s.CreateGroup(ctx, "nope", "front")), ErrNotFound, "no tenant nope"},
		{must2(s.CreateGroup(ctx, "acme", "Front")), ErrInvalid, `group name "Front"`},
		{must2(s.AddToGroup(ctx, "acme", "front", "db", "nope")), ErrNotFound, "no network acme/nope"},
		{must2(s.AddToGroup(ctx, "acme", "front", "web")), ErrExists, "network acme/web is already in group acme/front"},
		{must2(s.AddToGroup(ctx, "acme", "nope", "web")), ErrNotFound, "no group acme/nope"},
		{must2(s.AddToGroup(ctx, "acme", "front")), ErrInvalid, "no network given for group acme/front"},
		{must2(s.RemoveFromGroup(ctx, "acme", "front", "web", "db")), ErrNotFound, "network acme/db is not in group acme/front"},
		{s.DeleteGroup(ctx, "acme", "nope"), ErrNotFound, "no group acme/nope"},
	}
	for _, b := range bad {
		wantErr(t, b.err, b.kind, b.want)
	}
	// Nothing of the refused edits was applied.
	groups := must[[]policy.Group](t)(s.Groups(ctx, "acme"))
	if len(groups) != 2 || groups[0].Name != "back" || groups[1].Name != "front" || !slices.Equal(groups[1].Networks, []string{"app", "web"}) {
		t.Fatalf("Groups = %+v", groups)
	}
	_, err := s.Groups(ctx, "nope")
	wantErr(t, err, ErrNotFound, "tenant nope does not exist")

	g = must[policy.Group](t)(s.RemoveFromGroup(ctx, "acme", "front", "web"))
	if !slices.Equal(g.Networks, []string{"app"}) {
		t.Fatalf("RemoveFromGroup = %+v", g)
	}
	must[policy.Group](t)(s.AddToGroup(ctx, "acme", "back", "app"))

	// Deleting a network takes it out of every group, in one transaction.
	if err := s.DeleteNetwork(ctx, "acme", "app"); err != nil {
		t.Fatal(err)
	}
	for _, g := range must[[]policy.Group](t)(s.Groups(ctx, "acme")) {
		if len(g.Networks) != 0 {
			t.Fatalf("group %s still lists %v after the network was deleted", g.Name, g.Networks)
		}
	}

	// A group a rule names stays until the rule goes.
	r := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Allow, From: sel("group:front"), To: sel("net:db")}))
	wantErr(t, s.DeleteGroup(ctx, "acme", "front"), ErrConflict, "group acme/front is named by rule "+r.ID+" (allow group:front -> net:db on any); delete the rules first")
	if err := s.DeleteEndpoint(ctx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteNetwork(ctx, "acme", "db"), ErrConflict, "network acme/db is named by rule "+r.ID)
	if err := s.DeleteRule(ctx, "acme", r.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteGroup(ctx, "acme", "front"); err != nil {
		t.Fatal(err)
	}
	if groups := must[[]policy.Group](t)(s.Groups(ctx, "acme")); len(groups) != 1 {
		t.Fatalf("Groups after delete = %+v", groups)
	}
}

// must2 keeps the error of a two-value call.
func must2[T any](_ T, err error) error { return err }

func TestPairs(t *testing.T) {
	s := policyFixture(t)
	ctx := ctxT(t)
	p := must[policy.Pair](t)(s.Connect(ctx, "acme", "w2", "d1"))
	if p != (policy.Pair{A: "d1", B: "w2", Connect: true}) {
		t.Fatalf("Connect = %+v", p)
	}
	// The other order names the same pair; a later call replaces it.
	must[policy.Pair](t)(s.Disconnect(ctx, "acme", "d1", "w2"))
	must[policy.Pair](t)(s.Disconnect(ctx, "acme", "w1", "w2"))
	pairs := must[[]policy.Pair](t)(s.Pairs(ctx, "acme"))
	if want := []policy.Pair{{A: "d1", B: "w2"}, {A: "w1", B: "w2"}}; !slices.Equal(pairs, want) {
		t.Fatalf("Pairs = %+v; want %+v", pairs, want)
	}
	for _, b := range []struct {
		err  error
		kind error
		want string
	}{
		{must2(s.Connect(ctx, "acme", "w1", "nope")), ErrNotFound, "no workload acme/nope"},
		{must2(s.Connect(ctx, "nope", "w1", "w2")), ErrNotFound, "no tenant nope"},
		{must2(s.Connect(ctx, "acme", "w1", "w1")), ErrInvalid, "a pair rule joins two different workloads; got acme/w1 twice"},
		{must2(s.Disconnect(ctx, "acme", "W1", "w2")), ErrInvalid, `workload name "W1"`},
		{s.ForgetPair(ctx, "acme", "w1", "d1"), ErrNotFound, "no pair rule joins acme/d1 and acme/w1"},
	} {
		wantErr(t, b.err, b.kind, b.want)
	}
	if err := s.ForgetPair(ctx, "acme", "w2", "d1"); err != nil {
		t.Fatal(err)
	}
	if pairs := must[[]policy.Pair](t)(s.Pairs(ctx, "acme")); len(pairs) != 1 || pairs[0].A != "w1" {
		t.Fatalf("Pairs after forget = %+v", pairs)
	}
	// A pair rule outlives its workloads' endpoints (they come and go).
	if err := s.DeleteEndpoint(ctx, "acme", "w1"); err != nil {
		t.Fatal(err)
	}
	if pairs := must[[]policy.Pair](t)(s.Pairs(ctx, "acme")); len(pairs) != 1 {
		t.Fatalf("Pairs after endpoint delete = %+v", pairs)
	}
}

func TestRules(t *testing.T) {
	s := policyFixture(t)
	ctx := ctxT(t)
	must[policy.Group](t)(s.CreateGroup(ctx, "acme", "front"))
	r1 := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Allow, From: sel("net:web"), To: sel("net:db"), Ports: ports("tcp/5432")}))
	if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(r1.ID) {
		t.Fatalf("rule ID %q is not 8 hex digits", r1.ID)
	}
	r2 := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Deny, From: sel("workload:w2"), To: sel("any"), Ports: ports("udp/53")}))
	r3 := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("group:front"), Ports: ports("icmp")}))

	for _, b := range []struct {
		r    policy.Rule
		kind error
		want string
	}{
		{policy.Rule{Action: policy.Deny, From: sel("net:web"), To: sel("net:db"), Ports: ports("tcp/5432")}, ErrConflict, "tenant acme: conflicting rule: rule " + r1.ID + " says allow net:web -> net:db on tcp/5432; delete it first"},
		{policy.Rule{Action: policy.Allow, From: sel("net:web"), To: sel("net:db"), Ports: ports("tcp/5432")}, ErrConflict, "already says"},
		{policy.Rule{Action: policy.Allow, From: sel("net:nope"), To: sel("any")}, ErrNotFound, "no network acme/nope"},
		{policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("group:nope")}, ErrNotFound, "no group acme/nope"},
		{policy.Rule{Action: policy.Allow, From: sel("workload:nope"), To: sel("any")}, ErrNotFound, "no workload acme/nope"},
		{policy.Rule{Action: "maybe", From: sel("any"), To: sel("any")}, ErrInvalid, `rule action "maybe": want allow or deny`},
		{policy.Rule{Action: policy.Allow, From: policy.Selector{Kind: "vlan", Name: "x"}, To: sel("any")}, ErrInvalid, `selector "vlan:x"`},
		{policy.Rule{Action: policy.Allow, From: policy.Selector{}, To: sel("any")}, ErrInvalid, "selector"},
		{policy.Rule{Action: policy.Allow, From: policy.Selector{Kind: policy.NetworkKind, Name: "Web"}, To: sel("any")}, ErrInvalid, `net name "Web"`},
		{policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("any"), Ports: policy.Ports{Proto: session.ICMP, First: 3, Last: 3}}, ErrInvalid, "rule ports icmp 3-3"},
		{policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("any"), Ports: policy.Ports{Proto: session.TCP, First: 90, Last: 80}}, ErrInvalid, "first <= last"},
		{policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("any"), Ports: policy.Ports{First: 80, Last: 80}}, ErrInvalid, "rule ports"},
		{policy.Rule{ID: "mine", Action: policy.Allow, From: sel("any"), To: sel("any")}, ErrInvalid, "the directory assigns rule IDs"},
	} {
		_, err := s.AddRule(ctx, "acme", b.r)
		wantErr(t, err, b.kind, b.want)
	}
	_, err := s.AddRule(ctx, "nope", policy.Rule{Action: policy.Allow, From: sel("any"), To: sel("any")})
	wantErr(t, err, ErrNotFound, "no tenant nope")

	// Rules come back in the order they were added, whatever their IDs.
	rules := must[[]policy.Rule](t)(s.Rules(ctx, "acme"))
	if !slices.Equal(rules, []policy.Rule{r1, r2, r3}) {
		t.Fatalf("Rules = %+v", rules)
	}
	wantErr(t, s.DeleteRule(ctx, "acme", "00000000"), ErrNotFound, "tenant acme has no rule 00000000")
	if err := s.DeleteRule(ctx, "acme", r2.ID); err != nil {
		t.Fatal(err)
	}
	// The whole policy, as one snapshot, decides as package policy says.
	must[policy.Pair](t)(s.Disconnect(ctx, "acme", "w1", "d1"))
	must[policy.Group](t)(s.AddToGroup(ctx, "acme", "front", "web"))
	p := must[policy.Policy](t)(s.Policy(ctx, "acme"))
	if len(p.Groups) != 1 || len(p.Pairs) != 1 || !slices.Equal(p.Rules, []policy.Rule{r1, r3}) {
		t.Fatalf("Policy = %+v", p)
	}
	w1, w2, d1 := policy.Subject{Tenant: "acme", Network: "web", Name: "w1"}, policy.Subject{Tenant: "acme", Network: "web", Name: "w2"}, policy.Subject{Tenant: "acme", Network: "db", Name: "d1"}
	for _, c := range []struct {
		from, to policy.Subject
		proto    session.Proto
		port     uint16
		allow    bool
	}{
		{w2, d1, session.TCP, 5432, true},
		{w1, d1, session.TCP, 5432, false}, // pair rule beats the rule
		{w2, d1, session.TCP, 80, false},
		{d1, w1, session.ICMP, 0, false}, // pair rule, both ways
		{d1, w2, session.ICMP, 0, true},  // any -> group:front on icmp
	} {
		if v := p.Decide(policy.Request{From: c.from, To: c.to, Proto: c.proto, Port: c.port}); v.Allow != c.allow {
			t.Errorf("%s -> %s %s/%d: %+v; want allow=%v", c.from.Name, c.to.Name, c.proto, c.port, v, c.allow)
		}
	}
}

// TestConcurrentContradictingRules: of two contradicting rules added at
// once from two clients, exactly one lands.
func TestConcurrentContradictingRules(t *testing.T) {
	t.Parallel()
	s := policyFixture(t)
	s2 := openOn(t, shared.Endpoints(), s.Prefix())
	for round := range 10 {
		r := policy.Rule{From: sel("net:web"), To: sel("net:db"), Ports: policy.Ports{Proto: session.TCP, First: uint16(1000 + round), Last: uint16(1000 + round)}}
		var errs [2]error
		var wg sync.WaitGroup
		for i, st := range []*Store{s, s2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := r
				r.Action = []policy.Action{policy.Allow, policy.Deny}[i]
				_, errs[i] = st.AddRule(ctxT(t), "acme", r)
			}()
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: %v / %v; want exactly one rule to land", round, errs[0], errs[1])
		}
		for _, err := range errs {
			if err != nil && !errors.Is(err, ErrConflict) {
				t.Fatalf("round %d: loser got %v; want ErrConflict", round, err)
			}
		}
	}
	if n := len(must[[]policy.Rule](t)(s.Rules(ctxT(t), "acme"))); n != 10 {
		t.Fatalf("%d rules stored; want 10", n)
	}
}

// TestPolicyWatchAndCache: policy writes reach watchers and OnChange
// subscribers quickly, and the cache serves the new policy afterwards.
func TestPolicyWatchAndCache(t *testing.T) {
	s := policyFixture(t)
	ctx := ctxT(t)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, must[int64](t)(s.Revision(ctx))+1)

	c := NewCache(s, testLogger(t))
	got := make(chan Event, 64)
	c.OnChange(func(ev Event) {
		if ev.Policy != nil {
			got <- ev
		}
	})
	runCache(t, c)
	p := must[policy.Policy](t)(c.LookupPolicy(ctx, "acme"))
	if len(p.Rules)+len(p.Groups)+len(p.Pairs) != 0 {
		t.Fatalf("fresh policy = %+v", p)
	}
	tn := must[Tenant](t)(c.LookupTenant(ctx, "acme"))
	if tn.Zone == 0 {
		t.Fatalf("LookupTenant = %+v", tn)
	}
	reads := c.reads.Load()
	for range 100 {
		must[policy.Policy](t)(c.LookupPolicy(ctx, "acme"))
		must[Tenant](t)(c.LookupTenant(ctx, "acme"))
	}
	if c.reads.Load() != reads {
		t.Fatal("cached policy look-ups read etcd")
	}

	write := time.Now()
	r := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Deny, From: sel("net:web"), To: sel("net:db")}))
	select {
	case ev := <-got:
		if took := time.Since(write); took > time.Second {
			t.Fatalf("policy change reached OnChange after %v", took)
		}
		if ev.Policy.Tenant != "acme" || ev.Policy.Kind != "rule" || ev.Policy.Name != r.ID || ev.Kind != Put {
			t.Fatalf("OnChange event = %+v %+v", ev, ev.Policy)
		}
		// By the time subscribers hear of it, the cache serves the new policy.
		if p := must[policy.Policy](t)(c.LookupPolicy(ctx, "acme")); len(p.Rules) != 1 || p.Rules[0] != r {
			t.Fatalf("policy after the change = %+v", p)
		}
	case <-time.After(time.Second):
		t.Fatal("no policy change within a second of the write")
	}
	if ev := next(t, ch); ev.Policy == nil || ev.Policy.Tenant != "acme" || ev.Policy.Kind != "rule" {
		t.Fatalf("watch event = %+v", ev)
	}
	must[policy.Group](t)(s.CreateGroup(ctx, "acme", "front"))
	must[policy.Pair](t)(s.Connect(ctx, "acme", "w1", "d1"))
	for _, want := range []string{"group front", "pair d1/w1"} {
		ev := next(t, ch)
		if ev.Policy == nil || ev.Policy.Kind+" "+ev.Policy.Name != want {
			t.Fatalf("watch event = %+v; want %s", ev, want)
		}
	}
	eventually(t, "cached policy with group and pair", func() bool {
		p, err := c.LookupPolicy(ctx, "acme")
		return err == nil && len(p.Groups) == 1 && len(p.Pairs) == 1
	})
	if err := s.DeleteRule(ctx, "acme", r.ID); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Kind != Delete || ev.Policy == nil || ev.Policy.Name != r.ID {
		t.Fatalf("delete event = %+v", ev)
	}
	eventually(t, "rule gone from the cache", func() bool {
		p, err := c.LookupPolicy(ctx, "acme")
		return err == nil && len(p.Rules) == 0
	})
	_, err := c.LookupPolicy(ctx, "nope")
	wantErr(t, err, ErrNotFound, "tenant nope does not exist")
	_, err = c.LookupTenant(ctx, "nope")
	wantErr(t, err, ErrNotFound, "tenant nope does not exist")
}

// TestPolicyFailsClosed: a tenant whose policy holds a record that does not
// decode or validate (here a deny rule with a mistyped action, then a group
// of garbage) gets an error from Store.Policy and the cache, not the policy
// without that record; another tenant is unaffected, and once the record is
// deleted the policy reads again.
func TestPolicyFailsClosed(t *testing.T) {
	s := policyFixture(t)
	ctx := ctxT(t)
	addNetwork(t, s, "globex", "web", "10.1.0.0/24")
	c := NewCache(s, testLogger(t))
	runCache(t, c)
	good := must[policy.Rule](t)(s.AddRule(ctx, "acme", policy.Rule{Action: policy.Allow, From: sel("net:web"), To: sel("net:db")}))
	must[policy.Policy](t)(c.LookupPolicy(ctx, "acme"))

	raw := s.Client()
	bad := s.k.rule("acme", "0000dead")
	if _, err := raw.Put(ctx, bad, `{"id":"0000dead","action":"Deny","from":{"kind":"net","name":"web"},"to":{"kind":"net","name":"db"},"ports":{}}`); err != nil {
		t.Fatal(err)
	}
	_, err := s.Policy(ctx, "acme")
	wantErr(t, err, ErrInvalid, "policy of tenant acme fails closed", bad, `rule action "Deny"`)
	if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrNotFound) {
		t.Fatalf("error %v: want ErrMalformed, not ErrNotFound", err)
	}
	eventually(t, "the cache to refuse acme's policy", func() bool {
		_, err := c.LookupPolicy(ctx, "acme")
		return errors.Is(err, ErrMalformed)
	})
	must[policy.Policy](t)(c.LookupPolicy(ctx, "globex"))

	if err := s.DeleteRule(ctx, "acme", "0000dead"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "acme's policy to read again", func() bool {
		p, err := c.LookupPolicy(ctx, "acme")
		return err == nil && len(p.Rules) == 1 && p.Rules[0] == good
	})

	if _, err := raw.Put(ctx, s.k.group("acme", "g"), `not json`); err != nil {
		t.Fatal(err)
	}
	_, err = s.Policy(ctx, "acme")
	wantErr(t, err, ErrMalformed, "not valid JSON")
	eventually(t, "the cache to refuse acme's policy again", func() bool {
		_, err := c.LookupPolicy(ctx, "acme")
		return errors.Is(err, ErrMalformed)
	})
}
