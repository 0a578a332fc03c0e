package directory

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"nvi/policy"
)

// Defaults for a [Cache].
const (
	DefaultNegativeTTL   = 2 * time.Second
	DefaultLookupTimeout = time.Second
	// DefaultMaxFetches bounds the etcd reads one cache has in flight for
	// misses, so a flood of distinct misses turns into waiting (and
	// ErrUnavailable after the look-up timeout), not into unbounded
	// goroutines and reads against a single etcd member.
	DefaultMaxFetches = 64
)

// CacheOption adjusts a Cache.
type CacheOption func(*Cache)

// WithNegativeTTL sets how long a "not found" answer is remembered (default
// 2s; 0 disables negative caching). It keeps a flood of packets toward an
// address nobody holds from turning into a flood of etcd reads, while a
// workload that appears is found within the TTL even if the watch is slow.
func WithNegativeTTL(d time.Duration) CacheOption { return func(c *Cache) { c.negTTL = d } }

// WithLookupTimeout bounds the etcd read behind a miss (default 1s), so that
// with the directory down a miss fails fast with ErrUnavailable instead of
// holding a packet-in for as long as the caller's context allows.
func WithLookupTimeout(d time.Duration) CacheOption { return func(c *Cache) { c.lookupTimeout = d } }

// WithNegativeMax bounds how many "not found" answers are remembered
// (default DefaultNegativeMax); past it the oldest are forgotten first.
func WithNegativeMax(n int) CacheOption { return func(c *Cache) { c.negMax = n } }

// WithMaxFetches bounds the etcd reads in flight for misses (default
// DefaultMaxFetches).
func WithMaxFetches(n int) CacheOption { return func(c *Cache) { c.maxFetches = n } }

// Cache is what agents consult on the packet path. It is lazy: a miss reads
// etcd once and remembers the answer; a hit is served from memory without
// contacting etcd, so a directory outage only stops look-ups of things never
// seen before. Run follows the directory's watch to keep what is cached
// current: updates replace entries, deletions evict them. It only ever holds
// what was looked up, so its size follows the agent's peers, not the whole
// directory.
//
// All methods are safe for concurrent use.
type Cache struct {
	s             *Store
	log           *slog.Logger
	negTTL        time.Duration
	negMax        int
	lookupTimeout time.Duration
	maxFetches    int
	fetches       chan struct{} // one token per etcd read in flight for a miss
	reads         atomic.Int64  // etcd reads done for misses (tests watch it)

	mu        sync.RWMutex
	servers   map[string]entry[Server]
	tenants   map[string]entry[Tenant]
	networks  map[string]entry[Network]       // "tenant/name"
	policies  map[string]entry[policy.Policy] // by tenant; modRev is the read revision
	endpoints map[epAddr]entry[Endpoint]      // by (tenant, ip): the packet path's question
	epByName  map[string]epAddr               // "tenant/name" -> address, to apply watch events
	negative  *negCache                       // lookup key -> remembered "not found"
	revoked   map[string]time.Time            // every revoked server, loaded by Run
	revokedOK bool                            // Run has loaded revoked
	watching  bool                            // Run is following the watch
	watchRev  int64                           // highest revision the watch has applied
	lowRead   int64                           // lowest read revision cached before Run started
	subs      []func(Event)
	flight    map[string]*flightCall
}

type entry[T any] struct {
	val    T
	modRev int64
}

type epAddr struct {
	tenant string
	ip     netip.Addr
}

type flightCall struct {
	done chan struct{}
	val  any
	err  error
}

// NewCache returns an empty cache over s; start Run to keep it current.
func NewCache(s *Store, logger *slog.Logger, opts ...CacheOption) *Cache {
	if logger == nil {
		logger = s.log
	}
	c := &Cache{
		s: s, log: logger, negTTL: DefaultNegativeTTL, lookupTimeout: DefaultLookupTimeout,
		servers:   map[string]entry[Server]{},
		tenants:   map[string]entry[Tenant]{},
		networks:  map[string]entry[Network]{},
		policies:  map[string]entry[policy.Policy]{},
		endpoints: map[epAddr]entry[Endpoint]{},
		epByName:  map[string]epAddr{},
		revoked:   map[string]time.Time{},
		flight:    map[string]*flightCall{},
		negMax:    DefaultNegativeMax, maxFetches: DefaultMaxFetches,
	}
	for _, o := range opts {
		o(c)
	}
	c.negative = newNegCache(c.negMax)
	if c.maxFetches <= 0 {
		c.maxFetches = DefaultMaxFetches
	}
	c.fetches = make(chan struct{}, c.maxFetches)
	return c
}

// OnChange registers fn to be called, in revision order and from Run's
// goroutine, with every change the watch reports (servers, tenants,
// networks, endpoints, policy records, port maps, revocations, cached or
// not), after the cache has applied it: when fn hears that a tenant's
// policy changed, LookupPolicy already reads the new one. After a Reset, fn first receives a
// synthesized Delete or Put for each cached entry that vanished or changed
// during the lost history (for each cached policy, a Put whose PolicyChange
// names only the tenant: it may have changed), then the Reset itself. fn
// must not block for long: it holds up the watch.
func (c *Cache) OnChange(fn func(Event)) {
	c.mu.Lock()
	c.subs = append(c.subs, fn)
	c.mu.Unlock()
}

// Run follows the directory's watch until ctx is done, keeping cached
// entries current. It waits (retrying, logging) until etcd answers, so it can
// be started before the directory is up.
func (c *Cache) Run(ctx context.Context) error {
	var rev int64
	var revoked map[string]time.Time
	for attempt := 1; ; attempt++ {
		var err error
		if revoked, rev, err = c.s.revocations(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("directory: cache cannot start its watch yet, retrying", "attempt", attempt, "err", err)
		if sleepCtx(ctx, watchRetry) != nil {
			return ctx.Err()
		}
	}
	c.mu.Lock()
	if c.watching {
		c.mu.Unlock()
		return errors.New("directory: cache is already running")
	}
	// Replay whatever cached entries may have missed: changes since the
	// last revision an earlier Run applied, and since the oldest read made
	// while no watch ran. If etcd compacted that history, the watch sends a
	// Reset and reconcile catches up instead.
	from := rev + 1
	for _, r := range []int64{c.watchRev, c.lowRead} {
		if r > 0 && r+1 < from {
			from = r + 1
		}
	}
	c.watching, c.watchRev, c.lowRead = true, from-1, 0
	c.revoked, c.revokedOK = revoked, true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.watching = false
		c.mu.Unlock()
	}()
	for ev := range c.s.Watch(ctx, from) {
		c.apply(ev)
	}
	return ctx.Err()
}

// LookupEndpoint returns the endpoint holding ip in tenant.
func (c *Cache) LookupEndpoint(ctx context.Context, tenant string, ip netip.Addr) (Endpoint, error) {
	ip = ip.Unmap()
	k := epAddr{tenant, ip}
	return lookup(ctx, c, "e:"+tenant+"/"+ip.String(),
		func() (entry[Endpoint], bool) { e, ok := c.endpoints[k]; return e, ok },
		func(ctx context.Context) (record[Endpoint], error) { return c.s.endpointByIP(ctx, tenant, ip) },
		func(r record[Endpoint]) { c.putEndpoint(r.val, r.modRev) })
}

// LookupServer returns a registered server.
func (c *Cache) LookupServer(ctx context.Context, name string) (Server, error) {
	return lookup(ctx, c, "s:"+name,
		func() (entry[Server], bool) { e, ok := c.servers[name]; return e, ok },
		func(ctx context.Context) (record[Server], error) { return c.s.server(ctx, name) },
		func(r record[Server]) { c.servers[name] = entry[Server]{r.val, r.modRev} })
}

// LookupTenant returns a tenant, with its conntrack zone.
func (c *Cache) LookupTenant(ctx context.Context, name string) (Tenant, error) {
	return lookup(ctx, c, "t:"+name,
		func() (entry[Tenant], bool) { e, ok := c.tenants[name]; return e, ok },
		func(ctx context.Context) (record[Tenant], error) { return c.s.tenant(ctx, name) },
		func(r record[Tenant]) { c.tenants[name] = entry[Tenant]{r.val, r.modRev} })
}

// LookupPolicy returns a tenant's policy: groups, pair rules and rules, as
// one consistent snapshot. Any change to one of the tenant's policy records
// drops the cached copy (before OnChange subscribers hear of it), and the
// next look-up reads the whole policy again.
func (c *Cache) LookupPolicy(ctx context.Context, tenant string) (policy.Policy, error) {
	return lookup(ctx, c, "p:"+tenant,
		func() (entry[policy.Policy], bool) { e, ok := c.policies[tenant]; return e, ok },
		func(ctx context.Context) (record[policy.Policy], error) { return c.s.policy(ctx, tenant) },
		func(r record[policy.Policy]) { c.policies[tenant] = entry[policy.Policy]{r.val, r.modRev} })
}

// LookupNetwork returns a network.
func (c *Cache) LookupNetwork(ctx context.Context, tenant, name string) (Network, error) {
	k := tenant + "/" + name
	return lookup(ctx, c, "n:"+k,
		func() (entry[Network], bool) { e, ok := c.networks[k]; return e, ok },
		func(ctx context.Context) (record[Network], error) { return c.s.network(ctx, tenant, name) },
		func(r record[Network]) { c.networks[k] = entry[Network]{r.val, r.modRev} })
}

// lookup serves a hit from memory, a remembered miss from the negative
// cache, and otherwise reads etcd once for all concurrent callers asking for
// the same key, with at most maxFetches such reads in flight per cache.
// Absent and malformed records are remembered as misses for the negative
// TTL; any other error (an outage) is returned and not remembered.
func lookup[T any](ctx context.Context, c *Cache, key string,
	hit func() (entry[T], bool),
	fetch func(context.Context) (record[T], error),
	store func(record[T]),
) (T, error) {
	var zero T
	c.mu.RLock()
	e, ok := hit()
	negErr, negOK := c.negative.get(key, time.Now())
	c.mu.RUnlock()
	if ok {
		return e.val, nil
	}
	if negOK {
		return zero, negErr
	}

	c.mu.Lock()
	call, joined := c.flight[key]
	if !joined {
		call = &flightCall{done: make(chan struct{})}
		c.flight[key] = call
	}
	c.mu.Unlock()
	if !joined {
		if err := c.acquireFetch(ctx, key); err != nil {
			c.mu.Lock()
			delete(c.flight, key)
			call.err = err
			c.mu.Unlock()
			close(call.done)
			return zero, err
		}
		// The read is not tied to this caller's context: others may be
		// waiting for it too.
		go func() {
			defer func() { <-c.fetches }()
			c.reads.Add(1)
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.lookupTimeout)
			r, err := fetch(fctx)
			cancel()
			c.mu.Lock()
			delete(c.flight, key)
			switch {
			case err == nil:
				if c.fresh(r.readRev) {
					store(r)
				}
				call.val = r.val
			case (errors.Is(err, ErrNotFound) || errors.Is(err, ErrMalformed)) && c.negTTL > 0:
				if c.fresh(r.readRev) {
					c.remember(key, err)
				}
			}
			call.err = err
			c.mu.Unlock()
			close(call.done)
		}()
	}
	select {
	case <-call.done:
		if call.err != nil {
			return zero, call.err
		}
		return call.val.(T), nil
	case <-ctx.Done():
		return zero, errorf(ErrUnavailable, "directory: look-up of %s abandoned: %w", key[2:], ctx.Err())
	}
}

// acquireFetch takes a token for one etcd read, waiting at most the
// look-up timeout (or the caller's context).
func (c *Cache) acquireFetch(ctx context.Context, key string) error {
	select {
	case c.fetches <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(c.lookupTimeout)
	defer t.Stop()
	select {
	case c.fetches <- struct{}{}:
		return nil
	case <-t.C:
		return errorf(ErrUnavailable, "directory: look-up of %s refused: %d directory reads already in flight for misses; try again", key[2:], c.maxFetches)
	case <-ctx.Done():
		return errorf(ErrUnavailable, "directory: look-up of %s abandoned: %w", key[2:], ctx.Err())
	}
}

// fresh reports whether a value read at readRev may be cached: once the
// watch runs, only if it is not older than what the watch already applied
// (later events will then bring it up to date). Caller holds c.mu.
func (c *Cache) fresh(readRev int64) bool {
	if readRev == 0 {
		return false
	}
	if !c.watching {
		if c.lowRead == 0 || readRev < c.lowRead {
			c.lowRead = readRev
		}
		return true
	}
	return readRev >= c.watchRev
}

// remember stores a negative answer (O(1): see negCache). Caller holds c.mu.
func (c *Cache) remember(key string, err error) {
	c.negative.put(key, err, time.Now(), c.negTTL)
}

// Revoked reports whether server name's credential was revoked, and when,
// from memory: Run loads every revocation when it starts and follows them
// with the watch. Before Run has loaded them it reports false; agents that
// must not accept a peer before knowing call [Cache.RevocationsLoaded].
func (c *Cache) Revoked(name string) (time.Time, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	at, ok := c.revoked[name]
	return at, ok
}

// RevocationsLoaded reports whether Revoked answers from a loaded list.
func (c *Cache) RevocationsLoaded() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.revokedOK
}

// putEndpoint caches e. Caller holds c.mu.
func (c *Cache) putEndpoint(e Endpoint, modRev int64) {
	name := e.Ref()
	if old, ok := c.epByName[name]; ok && old.ip != e.IP {
		delete(c.endpoints, old)
	}
	k := epAddr{e.Tenant, e.IP}
	c.endpoints[k] = entry[Endpoint]{e, modRev}
	c.epByName[name] = k
}

// apply brings the cache up to date with one watch event and then tells the
// subscribers.
func (c *Cache) apply(ev Event) {
	c.mu.Lock()
	var notify []Event
	if ev.Kind == Reset {
		notify = c.reconcile(ev)
	} else {
		c.applyOne(ev)
	}
	notify = append(notify, ev)
	if ev.Revision > c.watchRev {
		c.watchRev = ev.Revision
	}
	subs := c.subs
	c.mu.Unlock()
	for _, n := range notify {
		for _, fn := range subs {
			fn(n)
		}
	}
}

// applyOne updates or evicts the cached entry an event concerns, ignoring
// events older than the entry. Caller holds c.mu.
func (c *Cache) applyOne(ev Event) {
	put := ev.Kind == Put
	switch {
	case ev.Server != nil:
		k := ev.Server.Name
		if put {
			c.negative.drop("s:" + k)
		}
		applyTo(c.servers, k, ev, *ev.Server)
	case ev.Tenant != nil:
		k := ev.Tenant.Name
		if put {
			c.negative.drop("t:" + k)
			c.negative.drop("p:" + k)
		}
		applyTo(c.tenants, k, ev, *ev.Tenant)
		c.dropPolicy(k, ev.Revision) // a deleted tenant has no policy
	case ev.Policy != nil:
		c.negative.drop("p:" + ev.Policy.Tenant)
		c.dropPolicy(ev.Policy.Tenant, ev.Revision)
	case ev.Network != nil:
		k := ev.Network.Ref()
		if put {
			c.negative.drop("n:" + k)
		}
		applyTo(c.networks, k, ev, *ev.Network)
	case ev.Revocation != nil:
		if put {
			c.revoked[ev.Revocation.Name] = ev.Revocation.At
		} else {
			delete(c.revoked, ev.Revocation.Name)
		}
	case ev.Endpoint != nil:
		e := ev.Endpoint
		if put {
			c.negative.drop("e:" + e.Tenant + "/" + e.IP.String())
		}
		k, ok := c.epByName[e.Ref()]
		if !ok || ev.Revision <= c.endpoints[k].modRev {
			return
		}
		if put {
			c.putEndpoint(*e, ev.Revision)
		} else {
			delete(c.endpoints, k)
			delete(c.epByName, e.Ref())
		}
	}
}

// dropPolicy forgets the tenant's cached policy if it was read before rev.
// Caller holds c.mu.
func (c *Cache) dropPolicy(tenant string, rev int64) {
	if e, ok := c.policies[tenant]; ok && e.modRev < rev {
		delete(c.policies, tenant)
	}
}

// applyTo updates or evicts m[k] if it is cached and older than ev.
func applyTo[T any](m map[string]entry[T], k string, ev Event, v T) {
	if old, ok := m[k]; !ok || ev.Revision <= old.modRev {
		return
	}
	if ev.Kind == Put {
		m[k] = entry[T]{v, ev.Revision}
	} else {
		delete(m, k)
	}
}

// reconcile applies a Reset: every cached entry older than the snapshot is
// compared with it, and the changes found are returned as events for the
// subscribers. Negative entries are dropped: anything may have appeared.
// Caller holds c.mu.
func (c *Cache) reconcile(reset Event) []Event {
	now := map[string]Event{}
	for _, e := range reset.Snapshot {
		now[e.Key] = e
	}
	var changes []Event
	diff := func(key string, modRev int64, gone Event) {
		if modRev > reset.Revision {
			return // read after the snapshot: newer than it
		}
		cur, ok := now[key]
		switch {
		case !ok:
			gone.Kind, gone.Revision, gone.Key = Delete, reset.Revision, key
			changes = append(changes, gone)
		case cur.Revision != modRev:
			changes = append(changes, cur)
		}
	}
	for name, e := range c.servers {
		v := e.val
		diff(c.s.k.server(name), e.modRev, Event{Server: &v})
	}
	for name, e := range c.tenants {
		v := e.val
		diff(c.s.k.tenant(name), e.modRev, Event{Tenant: &v})
	}
	for _, e := range c.networks {
		v := e.val
		diff(c.s.k.network(v.Tenant, v.Name), e.modRev, Event{Network: &v})
	}
	for t, e := range c.policies {
		if e.modRev < reset.Revision {
			changes = append(changes, Event{Kind: Put, Revision: reset.Revision, Key: c.s.k.rules(t), Policy: &PolicyChange{Tenant: t}})
		}
	}
	for _, e := range c.endpoints {
		v := e.val
		diff(c.s.k.endpoint(v.Tenant, v.Name), e.modRev, Event{Endpoint: &v})
	}
	for _, ch := range changes {
		c.applyOne(ch)
	}
	c.negative.clear()
	revoked := map[string]time.Time{}
	for _, e := range reset.Snapshot {
		if e.Revocation != nil {
			revoked[e.Revocation.Name] = e.Revocation.At
		}
	}
	c.revoked = revoked
	return changes
}
