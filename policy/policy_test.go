package policy

import (
	"net/netip"
	"testing"

	"nvi/session"
)

func TestDefaultPolicy(t *testing.T) {
	web1 := Subject{"acme", "web", "w1", netip.MustParseAddr("10.1.0.2")}
	web2 := Subject{"acme", "web", "w2", netip.MustParseAddr("10.1.0.3")}
	db := Subject{"acme", "db", "d1", netip.MustParseAddr("10.2.0.2")}
	other := Subject{"globex", "web", "g1", netip.MustParseAddr("10.1.0.3")}
	tests := []struct {
		name     string
		from, to Subject
		allow    bool
	}{
		{"same network", web1, web2, true},
		{"same network, reverse", web2, web1, true},
		{"different networks", web1, db, false},
		{"different networks, reverse", db, web1, false},
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
