// Package policy decides whether one workload may open a session to another.
// Decisions are pure functions of plain values, so both agents of a session
// can evaluate them independently (the server's agent never trusts the
// client's) and tests can enumerate them as truth tables.
//
// A tenant's policy is decided in this order; the first step that speaks
// decides:
//
//  1. Workloads of different tenants never reach each other.
//  2. Pair rules: "connect A B" or "disconnect A B" between two named
//     workloads, both ways, whatever else says.
//  3. Port rules, from a network, group or workload (or anything) to
//     another, on a protocol and port range: a matching deny beats a
//     matching allow.
//  4. Groups: workloads of two networks in one group reach each other.
//  5. Workloads in one network reach each other.
//  6. Everything else is denied: networks are isolated by default.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

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

// Action is what a rule does.
type Action string

// Actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Kind says what a selector names.
type Kind string

// Selector kinds.
const (
	AnyKind      Kind = "any"
	NetworkKind  Kind = "net"
	GroupKind    Kind = "group"
	WorkloadKind Kind = "workload"
)

// Selector names workloads: every workload of a network or a group's
// networks, one workload, or any.
type Selector struct {
	Kind Kind   `json:"kind"`
	Name string `json:"name,omitempty"`
}

func (s Selector) String() string {
	if s.Kind == AnyKind {
		return "any"
	}
	return string(s.Kind) + ":" + s.Name
}

// ParseSelector reads "net:web", "group:front", "workload:w1" or "any".
func ParseSelector(s string) (Selector, error) {
	if s == "any" {
		return Selector{Kind: AnyKind}, nil
	}
	k, name, ok := strings.Cut(s, ":")
	sel := Selector{Kind: Kind(k), Name: name}
	if !ok || name == "" || (sel.Kind != NetworkKind && sel.Kind != GroupKind && sel.Kind != WorkloadKind) {
		return Selector{}, fmt.Errorf("selector %q: want net:NAME, group:NAME, workload:NAME or any", s)
	}
	return sel, nil
}

// Ports is a protocol and a range of server ports. Proto 0 means any
// protocol; First and Last 0 mean every port.
type Ports struct {
	Proto session.Proto `json:"proto,omitempty"`
	First uint16        `json:"first,omitempty"`
	Last  uint16        `json:"last,omitempty"`
}

func (p Ports) String() string {
	switch {
	case p.Proto == 0:
		return "any"
	case p.First == 0:
		return p.Proto.String()
	case p.First == p.Last:
		return fmt.Sprintf("%s/%d", p.Proto, p.First)
	}
	return fmt.Sprintf("%s/%d-%d", p.Proto, p.First, p.Last)
}

// ParsePorts reads "tcp/80", "udp/53", "tcp/8000-8080", "tcp" (every port),
// "icmp" or "any".
func ParsePorts(s string) (Ports, error) {
	if s == "any" {
		return Ports{}, nil
	}
	ps, rng, hasRange := strings.Cut(s, "/")
	proto, err := session.ParseProto(ps)
	if err != nil {
		return Ports{}, fmt.Errorf("port spec %q: %w", s, err)
	}
	p := Ports{Proto: proto}
	if !hasRange {
		return p, nil
	}
	if !proto.HasPorts() {
		return Ports{}, fmt.Errorf("port spec %q: %s has no ports", s, proto)
	}
	lo, hi, isRange := strings.Cut(rng, "-")
	first, err1 := strconv.ParseUint(lo, 10, 16)
	last := first
	var err2 error
	if isRange {
		last, err2 = strconv.ParseUint(hi, 10, 16)
	}
	if err1 != nil || err2 != nil || first == 0 || last < first {
		return Ports{}, fmt.Errorf("port spec %q: want PROTO/PORT or PROTO/FIRST-LAST with ports 1-65535", s)
	}
	p.First, p.Last = uint16(first), uint16(last)
	return p, nil
}

// Covers reports whether a session on proto to port falls under p.
func (p Ports) Covers(proto session.Proto, port uint16) bool {
	if p.Proto == 0 {
		return true
	}
	if p.Proto != proto {
		return false
	}
	return p.First == 0 || !proto.HasPorts() || port >= p.First && port <= p.Last
}

// Rule allows or denies sessions from one set of workloads to another.
type Rule struct {
	ID     string   `json:"id"`
	Action Action   `json:"action"`
	From   Selector `json:"from"`
	To     Selector `json:"to"`
	Ports  Ports    `json:"ports"`
}

func (r Rule) String() string {
	return fmt.Sprintf("%s %s -> %s on %s", r.Action, r.From, r.To, r.Ports)
}

// Validate checks a rule on its own: a known action, selectors of a known
// kind with a name (none for any), and ports as [ParsePorts] reads them. A
// rule read back from storage is checked with it before it is used.
func (r Rule) Validate() error {
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("rule action %q: want allow or deny", r.Action)
	}
	for _, s := range []Selector{r.From, r.To} {
		if err := s.Validate(); err != nil {
			return err
		}
	}
	if q, err := ParsePorts(r.Ports.String()); err != nil || q != r.Ports {
		return fmt.Errorf("rule ports %s %d-%d: want a protocol (tcp, udp, icmp) or any, and for tcp and udp optionally ports 1-65535, first <= last", r.Ports.Proto, r.Ports.First, r.Ports.Last)
	}
	return nil
}

// Validate checks that s is "any" (with no name) or a known kind with a
// name.
func (s Selector) Validate() error {
	if s.Kind == AnyKind && s.Name == "" {
		return nil
	}
	if got, err := ParseSelector(s.String()); err != nil || got != s {
		return fmt.Errorf("selector %q: want net:NAME, group:NAME, workload:NAME or any", string(s.Kind)+":"+s.Name)
	}
	return nil
}

// Pair connects or disconnects two named workloads, both ways.
type Pair struct {
	A       string `json:"a"`
	B       string `json:"b"`
	Connect bool   `json:"connect"`
}

// Group is a set of networks whose workloads reach each other.
type Group struct {
	Name     string   `json:"name"`
	Networks []string `json:"networks"`
}

// Policy is one tenant's rules. The zero value is the default policy.
type Policy struct {
	Groups []Group `json:"groups,omitempty"`
	Pairs  []Pair  `json:"pairs,omitempty"`
	Rules  []Rule  `json:"rules,omitempty"`
}

func (s Selector) matches(sub Subject, p *Policy) bool {
	switch s.Kind {
	case AnyKind:
		return true
	case NetworkKind:
		return sub.Network == s.Name
	case WorkloadKind:
		return sub.Name == s.Name
	case GroupKind:
		for _, g := range p.Groups {
			if g.Name == s.Name && slices.Contains(g.Networks, sub.Network) {
				return true
			}
		}
	}
	return false
}

// Decide answers r, in the order the package documentation gives.
func (p Policy) Decide(r Request) Verdict {
	if r.From.Tenant != r.To.Tenant {
		return Verdict{false, "different tenants"}
	}
	for _, pr := range p.Pairs {
		if pr.A == r.From.Name && pr.B == r.To.Name || pr.A == r.To.Name && pr.B == r.From.Name {
			if pr.Connect {
				return Verdict{true, fmt.Sprintf("pair rule: %s and %s connected", pr.A, pr.B)}
			}
			return Verdict{false, fmt.Sprintf("pair rule: %s and %s disconnected", pr.A, pr.B)}
		}
	}
	var allow *Rule
	for i, ru := range p.Rules {
		if !ru.From.matches(r.From, &p) || !ru.To.matches(r.To, &p) || !ru.Ports.Covers(r.Proto, r.Port) {
			continue
		}
		// Only an explicit allow allows: a deny, and any action this
		// version does not know ("Deny", "", a future one), denies.
		if ru.Action != Allow {
			return Verdict{false, "rule " + ru.ID + ": " + ru.String()}
		}
		if allow == nil {
			allow = &p.Rules[i]
		}
	}
	if allow != nil {
		return Verdict{true, "rule " + allow.ID + ": " + allow.String()}
	}
	if r.From.Network == r.To.Network {
		return Verdict{true, "same network"}
	}
	for _, g := range p.Groups {
		if slices.Contains(g.Networks, r.From.Network) && slices.Contains(g.Networks, r.To.Network) {
			return Verdict{true, fmt.Sprintf("group %s joins %s and %s", g.Name, r.From.Network, r.To.Network)}
		}
	}
	return Verdict{false, fmt.Sprintf("networks %s and %s are isolated", r.From.Network, r.To.Network)}
}

// Precedence is the order of the package documentation in one line, for
// tools that show a policy.
const Precedence = "tenants apart > pair rules > port rules (deny beats allow) > groups > same network > isolated"

// ErrConflict marks a rule that contradicts one already there.
var ErrConflict = errors.New("conflicting rule")

// CheckRule validates a new rule against the policy it would join: a rule
// that says the opposite of an existing one for exactly the same workloads
// and ports is refused, so that no policy holds both.
func (p Policy) CheckRule(r Rule) error {
	if err := r.Validate(); err != nil {
		return err
	}
	for _, old := range p.Rules {
		if old.From == r.From && old.To == r.To && old.Ports == r.Ports {
			if old.Action == r.Action {
				return fmt.Errorf("%w: rule %s already says %s", ErrConflict, old.ID, old)
			}
			return fmt.Errorf("%w: rule %s says %s; delete it first", ErrConflict, old.ID, old)
		}
	}
	return nil
}
