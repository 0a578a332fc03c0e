package directory

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"nvi/policy"
)

// TestCheckStored: what a record read back must satisfy, record by record.
func TestCheckStored(t *testing.T) {
	k := keys{"/p/"}
	server := `{"name":"s1","dataIP":"192.0.2.1","dataMAC":"02:00:00:00:00:01"}`
	cases := []struct {
		key, val string
		target   func() any
		want     string // "" = valid
	}{
		{"servers/s1", server, func() any { return &Server{} }, ""},
		{"servers/s1", `{"name":"s1","dataIP":"2001:db8::9","dataMAC":"02:00:00:00:00:01"}`, func() any { return &Server{} }, "is not IPv4"},
		{"servers/s1", `{"name":"s1","dataMAC":"02:00:00:00:00:01"}`, func() any { return &Server{} }, "has no data address"},
		{"servers/s1", `{"name":"s1","dataIP":"0.0.0.0","dataMAC":"02:00:00:00:00:01"}`, func() any { return &Server{} }, "not a unicast address"},
		{"servers/s1", `{"name":"s1","dataIP":"224.0.0.1","dataMAC":"02:00:00:00:00:01"}`, func() any { return &Server{} }, "not a unicast address"},
		{"servers/s1", `{"name":"s1","dataIP":"127.0.0.1","dataMAC":"02:00:00:00:00:01"}`, func() any { return &Server{} }, "not a unicast address"},
		{"servers/s1", `{"name":"s1","dataIP":"192.0.2.1","dataMAC":"01:00:5e:00:00:01"}`, func() any { return &Server{} }, "multicast"},
		{"servers/s1", `{"name":"s1","dataIP":"192.0.2.1","dataMAC":""}`, func() any { return &Server{} }, "not a 6-byte MAC"},
		{"servers/s1", `{"name":"s1","dataIP":"192.0.2.1","dataMAC":"02:00:00:00:00:01","agentAddr":"[2001:db8::1]:7470"}`, func() any { return &Server{} }, "not an IPv4 unicast address with a port"},
		{"servers/s1", `{"name":"s1","dataIP":"192.0.2.1","dataMAC":"02:00:00:00:00:01","agentAddr":"192.0.2.1:0"}`, func() any { return &Server{} }, "not an IPv4 unicast address with a port"},
		{"servers/s1", `{"name":"s1","dataIP":"192.0.2.1","dataMAC":"02:00:00:00:00:01","keyRange":{"base":3,"mask":61440}}`, func() any { return &Server{} }, "outside mask"},
		{"servers/s2", server, func() any { return &Server{} }, `names server "s1"`},
		{"servers/s1/x", server, func() any { return &Server{} }, "unexpected key layout"},
		{"endpoints/acme/a", `{"tenant":"acme","network":"web","name":"a","ip":"10.1.0.2","mac":"02:00:00:00:00:0a","server":"s1"}`, func() any { return &Endpoint{} }, ""},
		{"endpoints/acme/a", `{"tenant":"acme","network":"web","name":"a","ip":"2001:db8::2","mac":"02:00:00:00:00:0a","server":"s1"}`, func() any { return &Endpoint{} }, "is not IPv4"},
		{"endpoints/acme/a", `{"tenant":"acme","network":"web","name":"a","mac":"02:00:00:00:00:0a","server":"s1"}`, func() any { return &Endpoint{} }, "has no address"},
		{"endpoints/acme/a", `{"tenant":"evil","network":"web","name":"a","ip":"10.1.0.2","mac":"02:00:00:00:00:0a","server":"s1"}`, func() any { return &Endpoint{} }, "names endpoint evil/a"},
		{"networks/acme/web", `{"tenant":"acme","name":"web","cidr":"10.1.0.0/24"}`, func() any { return &Network{} }, ""},
		{"networks/acme/web", `{"tenant":"acme","name":"web","cidr":"fd00::/64"}`, func() any { return &Network{} }, "not IPv4"},
		{"tenants/acme", `{"name":"acme","zone":3}`, func() any { return &Tenant{} }, ""},
		{"tenants/acme", `{"name":"evil","zone":3}`, func() any { return &Tenant{} }, `names tenant "evil"`},
		{"portmaps/s1/tcp/8080", `{"server":"s1","proto":"tcp","port":8080,"tenant":"acme","endpoint":"a","targetPort":80}`, func() any { return &PortMap{} }, ""},
		{"portmaps/s1/tcp/8080", `{"server":"s2","proto":"tcp","port":8080,"tenant":"acme","endpoint":"a","targetPort":80}`, func() any { return &PortMap{} }, "maps tcp/8080 of s2"},
		{"portmaps/s1/tcp/30000", `{"server":"s1","proto":"tcp","port":30000,"tenant":"acme","endpoint":"a","targetPort":80}`, func() any { return &PortMap{} }, "egress NAT"},
		{"rules/acme/0000000a", `{"id":"0000000a","action":"deny","from":{"kind":"any"},"to":{"kind":"net","name":"web"},"ports":{}}`, func() any { return &policy.Rule{} }, ""},
		{"rules/acme/0000000a", `{"id":"0000000a","action":"Deny","from":{"kind":"any"},"to":{"kind":"any"},"ports":{}}`, func() any { return &policy.Rule{} }, `rule action "Deny"`},
		{"rules/acme/0000000a", `{"id":"0000000a","action":"","from":{"kind":"any"},"to":{"kind":"any"},"ports":{}}`, func() any { return &policy.Rule{} }, `rule action ""`},
		{"rules/acme/0000000a", `{"id":"0000000a","action":"allow","from":{"kind":"host","name":"x"},"to":{"kind":"any"},"ports":{}}`, func() any { return &policy.Rule{} }, "selector"},
		{"rules/acme/0000000a", `{"id":"0000000a","action":"allow","from":{"kind":"any"},"to":{"kind":"any"},"ports":{"proto":"tcp","first":90,"last":80}}`, func() any { return &policy.Rule{} }, "rule ports"},
		{"rules/acme/0000000b", `{"id":"0000000a","action":"allow","from":{"kind":"any"},"to":{"kind":"any"},"ports":{}}`, func() any { return &policy.Rule{} }, `has ID "0000000a"`},
		{"pairs/acme/a/b", `{"a":"a","b":"b","connect":false}`, func() any { return &policy.Pair{} }, ""},
		{"pairs/acme/a/b", `{"a":"b","b":"a","connect":true}`, func() any { return &policy.Pair{} }, "joins"},
		{"groups/acme/g", `{"name":"g","networks":["web","db"]}`, func() any { return &policy.Group{} }, ""},
		{"groups/acme/g", `{"name":"g","networks":["Web/x"]}`, func() any { return &policy.Group{} }, "network name"},
		{"revoked/s1", `{"at":"2026-01-02T03:04:05Z"}`, func() any { return &Revocation{} }, ""},
		{"revoked/s1", `{}`, func() any { return &Revocation{} }, "no revocation time"},
		{"servers/s1", `{"name":`, func() any { return &Server{} }, "not valid JSON"},
	}
	s := &Store{k: k, log: quietLogger()}
	for _, c := range cases {
		v := c.target()
		err := s.decodeStored(&mvccpb.KeyValue{Key: []byte(k.prefix + c.key), Value: []byte(c.val)}, v)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s = %s: unexpected error %v", c.key, c.val, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s = %s: error %v; want one mentioning %q", c.key, c.val, err, c.want)
		}
	}
}

// TestMalformedServerRecord is the audit's H6 proof of concept turned
// around: a server record with an IPv6 data address (and one of garbage)
// written straight into etcd is refused by every reader with a clear error,
// nothing panics, and the well-formed server beside them is served.
func TestMalformedServerRecord(t *testing.T) {
	log, logged := newCapture(t)
	s := openWith(t, shared.Endpoints(), newStore(t).Prefix(), log)
	ctx := ctxT(t)
	good := addServer(t, s, "s1", 1)
	c := NewCache(s, log, WithNegativeTTL(0))
	rec := &recorder{}
	c.OnChange(rec.add)
	runCache(t, c)

	// RegisterServer refuses it outright.
	_, err := s.RegisterServer(ctx, Server{Name: "v6", DataIP: netip.MustParseAddr("2001:db8::9"), DataMAC: "02:00:00:00:00:09", AgentAddr: "192.0.2.254:9"}, 30*time.Second)
	wantErr(t, err, ErrInvalid, "data address 2001:db8::9 is not IPv4")

	raw := s.Client()
	if _, err := raw.Put(ctx, s.k.server("v6"), `{"name":"v6","dataIP":"2001:db8::9","dataMAC":"02:00:00:00:00:09","agentAddr":"192.0.2.254:9"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, s.k.server("junk"), `{"name": 12`); err != nil {
		t.Fatal(err)
	}
	_, err = s.Server(ctx, "v6")
	wantErr(t, err, ErrNotFound, "malformed and ignored", "2001:db8::9 is not IPv4")
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error %v does not wrap ErrMalformed", err)
	}
	for range 3 {
		_, err = c.LookupServer(ctx, "v6")
		wantErr(t, err, ErrMalformed, "2001:db8::9 is not IPv4")
	}
	_, err = c.LookupServer(ctx, "junk")
	wantErr(t, err, ErrNotFound, "not valid JSON")
	list := must[[]Server](t)(s.Servers(ctx))
	if len(list) != 1 || list[0].Name != good.Name {
		t.Fatalf("Servers = %+v; want only s1", list)
	}
	if got := must[Server](t)(c.LookupServer(ctx, "s1")); got.DataIP != good.DataIP {
		t.Fatalf("LookupServer(s1) = %+v", got)
	}
	// The watch never hands the bad record on: its Put arrives as a Delete.
	ev := rec.waitFor(t, "v6", func(ev Event) bool { return ev.Server != nil && ev.Server.Name == "v6" })
	if ev.Kind != Delete || ev.Server.DataIP.IsValid() {
		t.Fatalf("watch event for the malformed record = %+v %+v", ev, *ev.Server)
	}
	// A record that claims another server's name does not reach that
	// server's cached entry.
	if _, err := raw.Put(ctx, s.k.server("s9"), `{"name":"s1","dataIP":"192.0.2.66","dataMAC":"02:00:00:00:00:66"}`); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "s9", func(ev Event) bool { return ev.Server != nil && ev.Server.Name == "s9" })
	if got := must[Server](t)(c.LookupServer(ctx, "s1")); got.DataIP != good.DataIP {
		t.Fatalf("s1 after a record claiming its name: %+v", got)
	}
	// Logged once per record revision, however often it is read.
	if !logged("ignoring a malformed record") {
		t.Fatal("the malformed record was not logged")
	}
	if k := countLogged(s, s.k.server("v6")); k != 1 {
		t.Fatalf("v6 logged %d times; want 1", k)
	}
}

// countLogged counts the remembered (logged) revisions of key.
func countLogged(s *Store, key string) int {
	s.warn.mu.Lock()
	defer s.warn.mu.Unlock()
	n := 0
	for id := range s.warn.seen {
		if strings.HasPrefix(id, key+"@") {
			n++
		}
	}
	return n
}

// TestMalformedEndpoint: an endpoint record with an IPv6 address is
// ignored by look-ups and listings.
func TestMalformedEndpoint(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addServer(t, s, "s1", 1)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	must[Endpoint](t)(s.CreateEndpoint(ctx, Endpoint{Tenant: "acme", Network: "web", Name: "a", Server: "s1"}))
	raw := s.Client()
	if _, err := raw.Put(ctx, s.k.endpoint("acme", "b"), `{"tenant":"acme","network":"web","name":"b","ip":"2001:db8::2","mac":"02:00:00:00:00:0b","server":"s1"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, s.k.addr("acme", netip.MustParseAddr("10.1.0.77")), "b"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Endpoint(ctx, "acme", "b")
	wantErr(t, err, ErrMalformed, "is not IPv4")
	c := NewCache(s, testLogger(t))
	_, err = c.LookupEndpoint(ctx, "acme", netip.MustParseAddr("10.1.0.77"))
	wantErr(t, err, ErrNotFound)
	eps := must[[]Endpoint](t)(s.Endpoints(ctx, Filter{Tenant: "acme"}))
	if len(eps) != 1 || eps[0].Name != "a" {
		t.Fatalf("Endpoints = %+v; want only a", eps)
	}
}
