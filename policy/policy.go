// Package policy decides whether one workload may open a session to another.
// Decisions are pure functions of plain values, so both agents of a session
// can evaluate them independently (the server's agent never trusts the
// client's) and tests can enumerate them as truth tables.
package policy

import (
	"fmt"
	"net/netip"

	"nvi/session"
)

// Subject is a workload as policy sees it.
type Subject struct {
	Tenant  string     `json:"tenant"`
	Network string     `json:"network"`
	Name    string     `json:"name"`
	IP      netip.Addr `json:"ip"`
}

func (s Subject) String() string { return fmt.Sprintf("%s/%s(%s)", s.Tenant, s.Name, s.IP) }

// Request is one session's worth of question: may From reach To on
// Proto/Port?
type Request struct {
	From  Subject       `json:"from"`
	To    Subject       `json:"to"`
	Proto session.Proto `json:"proto"`
	Port  uint16        `json:"port"`
}

// Verdict is the answer, with the reason a human would want in a log line.
type Verdict struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason"`
}

// Policy is a tenant's set of rules. The zero value is the default policy:
// networks are isolated from each other, and workloads inside one network
// reach each other.
type Policy struct{}

// Decide answers r. Tenants never reach each other: their address spaces are
// separate, whatever the rules say.
func (Policy) Decide(r Request) Verdict {
	switch {
	case r.From.Tenant != r.To.Tenant:
		return Verdict{false, "different tenants"}
	case r.From.Network == r.To.Network:
		return Verdict{true, "same network"}
	default:
		return Verdict{false, fmt.Sprintf("networks %s and %s are isolated", r.From.Network, r.To.Network)}
	}
}
