package directory

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"nvi/policy"
	"nvi/session"
)

// ErrMalformed marks a stored record that does not decode or does not pass
// the checks its writer should have made (an IPv6 or empty data address, an
// unknown rule action, a name that differs from its key, garbage JSON).
// Such a record is ignored as if absent: its errors wrap ErrNotFound too,
// except for policy records, whose tenant's policy then fails closed (its
// errors wrap ErrInvalid instead, see [Store.Policy]).
var ErrMalformed = errors.New("malformed record")

// malformed returns the error for a malformed record at key, logging it
// once per record revision so that a bad record read on every miss cannot
// flood the log.
func (s *Store) malformed(key string, modRev int64, kind error, cause error) error {
	s.warnOnce(key, modRev, cause)
	return &kindError{kind: errors.Join(kind, ErrMalformed), err: cause}
}

// warned remembers which malformed record revisions were logged.
type warned struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// maxWarned bounds warned: past it the set starts again (and a record may
// be logged a second time).
const maxWarned = 4096

func (s *Store) warnOnce(key string, modRev int64, err error) {
	id := key + "@" + strconv.FormatInt(modRev, 10)
	s.warn.mu.Lock()
	_, seen := s.warn.seen[id]
	if !seen {
		if s.warn.seen == nil || len(s.warn.seen) >= maxWarned {
			s.warn.seen = map[string]struct{}{}
		}
		s.warn.seen[id] = struct{}{}
	}
	s.warn.mu.Unlock()
	if !seen {
		s.log.Warn("directory: ignoring a malformed record; fix or delete it", "key", key, "revision", modRev, "err", err)
	}
}

// decodeStored decodes kv into v and checks it against its key (see
// checkStored).
func (s *Store) decodeStored(kv *mvccpb.KeyValue, v any) error {
	key := string(kv.Key)
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return errorf(ErrInvalid, "record %s is not valid JSON: %w", key, err)
	}
	return s.k.checkStored(key, v)
}

// checkStored validates a decoded record as the package's writers would
// have, fills its defaults, and checks that the names it carries are the
// ones its key gives: a record that claims another identity than its key
// (servers/s1 holding {"name":"s2"}) would let whoever may write one key
// speak for another.
func (k keys) checkStored(key string, v any) error {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return errorf(ErrInvalid, "key %s is outside the prefix %s", key, k.prefix)
	}
	p := strings.Split(rest, "/")
	bad := func(format string, args ...any) error {
		return errorf(ErrInvalid, "record %s: "+format, append([]any{key}, args...)...)
	}
	want := func(n int) error {
		if len(p) != n {
			return bad("unexpected key layout")
		}
		return nil
	}
	switch r := v.(type) {
	case *Server:
		if err := want(2); err != nil {
			return err
		}
		n, err := r.normalize()
		if err != nil {
			return err
		}
		if n.Name != p[1] {
			return bad("names server %q", n.Name)
		}
		*r = n
	case *Tenant:
		if err := want(2); err != nil {
			return err
		}
		if err := ValidateName("tenant", r.Name); err != nil {
			return err
		}
		if r.Name != p[1] {
			return bad("names tenant %q", r.Name)
		}
	case *Network:
		if err := want(3); err != nil {
			return err
		}
		n, _, err := r.normalize()
		if err != nil {
			return err
		}
		if n.Tenant != p[1] || n.Name != p[2] {
			return bad("names network %s", n.Ref())
		}
		*r = n
	case *Endpoint:
		if err := want(3); err != nil {
			return err
		}
		e, err := r.validate()
		if err != nil {
			return err
		}
		if e.Tenant != p[1] || e.Name != p[2] {
			return bad("names endpoint %s", e.Ref())
		}
		if !e.IP.IsValid() {
			return bad("endpoint %s has no address", e.Ref())
		}
		if e.MAC == "" {
			return bad("endpoint %s has no MAC", e.Ref())
		}
		*r = e
	case *PortMap:
		if err := want(4); err != nil {
			return err
		}
		if err := r.validate(); err != nil {
			return err
		}
		if r.Server != p[1] || r.Proto.String() != p[2] || strconv.Itoa(int(r.Port)) != p[3] {
			return bad("maps %s/%d of %s", r.Proto, r.Port, r.Server)
		}
	case *policy.Group:
		if err := want(3); err != nil {
			return err
		}
		if err := validateNames("tenant", p[1], "group", r.Name); err != nil {
			return err
		}
		if r.Name != p[2] {
			return bad("names group %q", r.Name)
		}
		for _, n := range r.Networks {
			if err := ValidateName("network", n); err != nil {
				return err
			}
		}
	case *policy.Pair:
		if err := want(4); err != nil {
			return err
		}
		if err := validateNames("tenant", p[1], "workload", r.A, "workload", r.B); err != nil {
			return err
		}
		if r.A != p[2] || r.B != p[3] || r.A >= r.B {
			return bad("joins %q and %q", r.A, r.B)
		}
	case *policy.Rule:
		if err := want(3); err != nil {
			return err
		}
		if err := validateNames("tenant", p[1], "rule", r.ID); err != nil {
			return err
		}
		if r.ID != p[2] {
			return bad("has ID %q", r.ID)
		}
		if err := r.Validate(); err != nil {
			return bad("%w", err)
		}
	case *Revocation:
		if err := want(2); err != nil {
			return err
		}
		if err := ValidateName("server", p[1]); err != nil {
			return err
		}
		if r.At.IsZero() {
			return bad("has no revocation time")
		}
		r.Name = p[1]
	default:
		return bad("no check for %T", v)
	}
	return nil
}

// portMapKey parses the protocol and port of a port map key's tail.
func portMapKey(tail string) (session.Proto, uint16, bool) {
	ps, port, ok := strings.Cut(tail, "/")
	proto, err := session.ParseProto(ps)
	if !ok || err != nil {
		return 0, 0, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return 0, 0, false
	}
	return proto, uint16(n), true
}
