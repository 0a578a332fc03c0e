package directory

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventKind says what happened to a record.
type EventKind int

// Event kinds. Reset means the watch lost history (etcd compacted the
// revisions it needed): the event's Snapshot then lists every record that
// exists at its Revision, and anything a consumer holds that is not in it
// was deleted meanwhile.
const (
	Put EventKind = iota + 1
	Delete
	Reset
)

func (k EventKind) String() string {
	switch k {
	case Put:
		return "put"
	case Delete:
		return "delete"
	case Reset:
		return "reset"
	}
	return "unknown"
}

// Event is one change to a server, tenant, network, endpoint, policy,
// port map or revocation record; exactly one of the record pointers is set (none for
// Reset). For a Delete the record is the last stored value when etcd still
// had it, and otherwise only the identity that the key carries (names, no
// addresses).
type Event struct {
	Kind     EventKind
	Revision int64  // etcd revision of the change, or of the snapshot for Reset
	Key      string // etcd key of the record

	Server   *Server
	Tenant   *Tenant
	Network  *Network
	Endpoint *Endpoint
	Policy   *PolicyChange // one of a tenant's groups, pair rules or rules
	PortMap  *PortMap
	// Revocation: a server's credential was revoked ([Store.RevokeServer]).
	Revocation *Revocation

	Snapshot []Event // Reset only: a Put for every record at Revision
}

// PolicyChange names the policy record an event is about. Consumers mostly
// need only Tenant: whose policy to read again ([Cache.LookupPolicy] has
// dropped its copy by the time subscribers hear of the change).
type PolicyChange struct {
	Tenant string
	Kind   string // "group", "pair" or "rule"
	Name   string // the group's name, "A/B" for a pair, the rule's ID
}

// watchRetry is the pause before re-establishing a broken watch.
const watchRetry = 500 * time.Millisecond

// Watch streams changes to every record under the store's prefix, starting
// at fromRevision (inclusive; 0 means "from now"), until ctx is done, when
// the channel is closed. Index keys (addrs, ifaces, zones) are not
// reported: they mirror other records; nor are address blocks, which concern
// only the server holding them. Revocations are. Every record is checked
// before it is reported (see the package documentation, "Validation on
// read").
//
// The stream survives disconnects (the client resumes from the last
// revision delivered) and compaction: when the revisions needed were
// compacted away, Watch re-lists the prefix and delivers a Reset event with
// the full snapshot before carrying on from there, so a consumer never
// silently misses a deletion. Events are delivered in revision order; a slow
// consumer slows the watch, it does not lose events.
func (s *Store) Watch(ctx context.Context, fromRevision int64) <-chan Event {
	out := make(chan Event, 64)
	go s.watch(ctx, fromRevision, out)
	return out
}

func (s *Store) watch(ctx context.Context, next int64, out chan<- Event) {
	defer close(out)
	send := func(ev Event) bool {
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	failures := 0 // consecutive watches that ended without delivering anything
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify(), clientv3.WithProgressNotify()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		compacted := false
		for resp := range s.cli.Watch(wctx, s.k.prefix, opts...) {
			if resp.CompactRevision != 0 {
				s.log.Warn("directory: watch history compacted, re-listing", "wanted", next, "compacted", resp.CompactRevision)
				compacted = true
				break
			}
			if err := resp.Err(); err != nil {
				if failures < 3 || failures%20 == 0 {
					s.log.Warn("directory: watch interrupted, resuming", "from", next, "err", err, "attempt", failures+1)
				}
				break
			}
			failures = -1
			if next == 0 && resp.Created {
				next = resp.Header.Revision + 1
			}
			for _, ev := range resp.Events {
				next = ev.Kv.ModRevision + 1
				kind, prev := Put, ev.PrevKv
				if ev.Type == mvccpb.DELETE {
					kind = Delete
				}
				if e, ok := s.event(kind, ev.Kv, prev); ok && !send(e) {
					cancel()
					return
				}
			}
			if resp.IsProgressNotify() && resp.Header.Revision >= next {
				next = resp.Header.Revision + 1
			}
		}
		cancel()
		if compacted {
			snap, ok := s.relist(ctx)
			if !ok || !send(snap) {
				return
			}
			next = snap.Revision + 1
			continue
		}
		if ctx.Err() == nil {
			failures++
			if failures < 3 || failures%20 == 0 {
				s.log.Warn("directory: watch closed, resuming", "from", next, "attempt", failures)
			}
			// Back off while it keeps failing (a revoked credential, an
			// etcd down for long), up to 10s, so the log and etcd are
			// not hammered twice a second.
			if sleepCtx(ctx, min(watchRetry<<min(max(failures-1, 0), 5), 10*time.Second)) != nil {
				return
			}
		}
	}
}

// relist reads the whole prefix as a Reset event, retrying until it works
// or ctx is done.
func (s *Store) relist(ctx context.Context) (Event, bool) {
	for attempt := 1; ; attempt++ {
		gctx, cancel := s.ctx(ctx)
		resp, err := s.cli.Get(gctx, s.k.prefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			reset := Event{Kind: Reset, Revision: resp.Header.Revision}
			for _, kv := range resp.Kvs {
				if e, ok := s.event(Put, kv, nil); ok && e.Kind == Put {
					reset.Snapshot = append(reset.Snapshot, e)
				}
			}
			return reset, true
		}
		if ctx.Err() != nil {
			return Event{}, false
		}
		s.log.Warn("directory: re-listing after compaction failed, retrying", "attempt", attempt, "err", err)
		if sleepCtx(ctx, watchRetry) != nil {
			return Event{}, false
		}
	}
}

// event turns a key-value (and, for deletes, its previous value) into a
// typed event; ok is false for keys that are not records. A Put of a
// malformed record comes out as a Delete carrying only the identity its key
// gives (logged once): what it holds must not be used, and whatever a
// consumer had from before it is stale. Policy events carry no record, so
// a malformed policy record is found by the next read of the policy.
func (s *Store) event(kind EventKind, kv, prev *mvccpb.KeyValue) (ev Event, ok bool) {
	key := string(kv.Key)
	ev = Event{Kind: kind, Revision: kv.ModRevision, Key: key}
	val := kv.Value
	if kind == Delete {
		val = nil
		if prev != nil {
			val = prev.Value
		}
	}
	rest, found := strings.CutPrefix(key, s.k.prefix)
	if !found {
		return ev, false
	}
	section, rest, _ := strings.Cut(rest, "/")
	first, second, two := strings.Cut(rest, "/")
	var target any
	identity := func() {}
	switch {
	case section == "servers" && !two:
		identity = func() { ev.Server = &Server{Name: first} }
		identity()
		target = ev.Server
	case section == "tenants" && !two:
		identity = func() { ev.Tenant = &Tenant{Name: first} }
		identity()
		target = ev.Tenant
	case section == "networks" && two:
		identity = func() { ev.Network = &Network{Tenant: first, Name: second} }
		identity()
		target = ev.Network
	case section == "endpoints" && two:
		identity = func() { ev.Endpoint = &Endpoint{Tenant: first, Name: second} }
		identity()
		target = ev.Endpoint
	case (section == "groups" || section == "pairs" || section == "rules") && two:
		ev.Policy = &PolicyChange{Tenant: first, Kind: strings.TrimSuffix(section, "s"), Name: second}
	case section == "portmaps" && two:
		proto, port, ok := portMapKey(second)
		if !ok {
			s.warnOnce(key, kv.ModRevision, errorf(ErrInvalid, "not a port map key"))
			return ev, false
		}
		identity = func() { ev.PortMap = &PortMap{Server: first, Proto: proto, Port: port} }
		identity()
		target = ev.PortMap
	case section == "revoked" && !two:
		identity = func() { ev.Revocation = &Revocation{Name: first} }
		identity()
		target = ev.Revocation
	default:
		return ev, false
	}
	if target == nil || len(val) == 0 && kind == Delete {
		return ev, true
	}
	err := json.Unmarshal(val, target)
	if err == nil {
		err = s.k.checkStored(key, target)
	}
	if err != nil {
		rev := kv.ModRevision
		if kind == Delete && prev != nil {
			rev = prev.ModRevision
		}
		s.warnOnce(key, rev, err)
		ev.Kind = Delete
		identity()
	}
	return ev, true
}
