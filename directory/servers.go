package directory

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MinServerTTL is the shortest lease RegisterServer accepts. etcd itself
// raises tiny TTLs to about 1.5 election timeouts anyway.
const MinServerTTL = time.Second

// Registration keeps a server record alive under an etcd lease.
type Registration struct {
	s      *Store
	srv    Server
	ttl    time.Duration
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	lease clientv3.LeaseID

	// blockMu orders block claims against moving the blocks to a new lease,
	// so that no claim lands under a lease the registration left behind.
	blockMu sync.Mutex
	blocks  map[BlockRef]struct{} // the address blocks held
	claimer Claimer               // who writes them
	// conflicted: Reassert found another agent holding the name (logged
	// once until it is resolved). Guarded by blockMu.
	conflicted bool

	closeOnce sync.Once
}

// RegisterServer stores srv under a fresh lease of the given TTL and keeps
// the lease alive in the background, so that the record lives exactly as long
// as the agent does. When etcd is briefly unreachable the keep-alive logs
// and retries; when the lease was lost (etcd down for longer than the TTL) it
// registers again under a new lease.
//
// ctx bounds the initial registration and the life of the background loop:
// when ctx is done the loop stops without revoking (the record then expires
// with its lease, as for a crashed agent); Close stops it and revokes at once.
//
// The record is written with compare-and-swap: it is created if absent, and
// replaces a stored one only when that one is no live agent's (it has no
// lease) or was written from the same host at the same data address (its
// Instance and DataIP match: a restarted agent). Any other agent holding the
// name gets an error wrapping ErrConflict that names its data address. An
// empty Instance is filled with the kernel's boot ID; the ports of the
// directory endpoints the store uses are added to Reserved. The keep-alive
// also re-asserts the record if it vanishes while the lease lives
// ([Registration.Reassert]).
func (s *Store) RegisterServer(ctx context.Context, srv Server, ttl time.Duration) (*Registration, error) {
	if srv.Instance == "" {
		srv.Instance = hostInstance()
	}
	srv.Reserved = reserveEndpointPorts(srv.Reserved, s.endpoints)
	srv, err := srv.normalize()
	if err != nil {
		return nil, err
	}
	if ttl < MinServerTTL {
		return nil, errorf(ErrInvalid, "server %s: lease TTL %v is shorter than %v", srv.Name, ttl, MinServerTTL)
	}
	r := &Registration{s: s, srv: srv, ttl: ttl, log: s.log.With("server", srv.Name), done: make(chan struct{}), blocks: map[BlockRef]struct{}{}}
	r.claimer = &Claims{s: s, server: srv.Name}
	if err := r.register(ctx); err != nil {
		return nil, err
	}
	r.log.Info("directory: server registered", "ttl", ttl, "lease", int64(r.lease))
	lctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.keepAlive(lctx)
	}()
	return r, nil
}

// register grants a lease and puts the record under it.
func (r *Registration) register(ctx context.Context) error {
	ctx, cancel := r.s.ctx(ctx)
	defer cancel()
	return r.registerCtx(ctx)
}

// registerCtx grants a lease, puts the record under it and forgets the
// address blocks another server took over while the record was gone.
func (r *Registration) registerCtx(ctx context.Context) error {
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	lease, err := r.s.cli.Grant(ctx, int64((r.ttl+time.Second-1)/time.Second))
	if err != nil {
		return unavailable("granting lease for server "+r.srv.Name, err)
	}
	if err := r.claim(ctx, lease.ID, true); err != nil {
		// The lease would expire by itself; revoking just tidies up early.
		if _, rerr := r.s.cli.Revoke(context.WithoutCancel(ctx), lease.ID); rerr != nil {
			r.log.Debug("directory: could not revoke an unused lease; it expires by itself", "lease", int64(lease.ID), "err", rerr)
		}
		return err
	}
	r.mu.Lock()
	r.lease = lease.ID
	r.mu.Unlock()
	r.keepBlocks(ctx)
	return nil
}

// claim puts the record under lease with compare-and-swap (see
// RegisterServer for when a stored record may be replaced; takeover allows
// replacing an earlier process of the same agent).
func (r *Registration) claim(ctx context.Context, lease clientv3.LeaseID, takeover bool) error {
	key, name := r.s.k.server(r.srv.Name), r.srv.Name
	op := "registering server " + name
	_, err := retry(ctx, op, "the record keeps changing", func() (struct{}, bool, error) {
		resp, err := r.s.read(ctx, op, clientv3.OpGet(key))
		if err != nil {
			return struct{}{}, false, err
		}
		var modRev int64
		if kv := kvs(resp, 0); len(kv) > 0 {
			if err := r.replaceable(kv[0], lease, takeover); err != nil {
				return struct{}{}, false, err
			}
			modRev = kv[0].ModRevision
		}
		tresp, err := r.s.txn(ctx, op, []clientv3.Cmp{unchanged(key, modRev)},
			[]clientv3.Op{clientv3.OpPut(key, mustJSON(r.srv), clientv3.WithLease(lease))}, nil)
		if err != nil {
			return struct{}{}, false, err
		}
		return struct{}{}, tresp.Succeeded, nil
	})
	return err
}

// replaceable says whether the stored record kv may be replaced by r's
// under lease, and if not, why (ErrConflict).
func (r *Registration) replaceable(kv *mvccpb.KeyValue, lease clientv3.LeaseID, takeover bool) error {
	r.mu.Lock()
	mine := r.lease
	r.mu.Unlock()
	held := clientv3.LeaseID(kv.Lease)
	if held == 0 || held == lease || held == mine {
		return nil // no live agent's, or already ours
	}
	var old Server
	if err := r.s.decodeStored(kv, &old); err != nil {
		r.log.Warn("directory: replacing a malformed server record", "err", err)
		return nil
	}
	if takeover && old.Instance != "" && old.Instance == r.srv.Instance && old.DataIP == r.srv.DataIP {
		return nil // an earlier process of this agent, its lease not run out yet
	}
	return errorf(ErrConflict, "server name %s is already registered by another agent at data address %s (agent %s, instance %s), whose lease is live; give this server another name, or stop that agent and wait for its record to expire", r.srv.Name, old.DataIP, cmpOr(old.AgentAddr, "-"), cmpOr(old.Instance, "-"))
}

func cmpOr(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// Reassert checks that the stored record is still the one this
// registration wrote, under its lease, and puts it back if it vanished (or
// was replaced by a leaseless or malformed record) while the lease lives.
// A record another agent now holds under a live lease (even a newer
// process of this same agent) is not fought over: the error wraps
// ErrConflict. The keep-alive calls it after each renewal;
// agents may call it too (e.g. when the watch reports their record gone).
func (r *Registration) Reassert(ctx context.Context) error {
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	ctx, cancel := r.s.ctx(ctx)
	defer cancel()
	key := r.s.k.server(r.srv.Name)
	lease := r.Lease()
	resp, err := r.s.read(ctx, "checking the record of server "+r.srv.Name, clientv3.OpGet(key))
	if err != nil {
		return err
	}
	want := mustJSON(r.srv)
	if kv := kvs(resp, 0); len(kv) > 0 && clientv3.LeaseID(kv[0].Lease) == lease && string(kv[0].Value) == want {
		r.conflicted = false
		return nil
	}
	switch kv := kvs(resp, 0); {
	case r.conflicted: // said already
	case len(kv) > 0:
		r.log.Warn("directory: the server record was changed by another writer; putting ours back unless another agent holds it", "stored", string(kv[0].Value), "lease", kv[0].Lease)
	default:
		r.log.Warn("directory: the server record vanished while its lease lives; putting it back")
	}
	if err := r.claim(ctx, lease, false); err != nil {
		if errors.Is(err, ErrConflict) && !r.conflicted {
			r.log.Error("directory: another agent holds this server's name; not fighting over it", "err", err)
			r.conflicted = true
		}
		return err
	}
	r.conflicted = false
	return nil
}

// hostInstance is the kernel's boot ID, which differs between hosts and
// between boots of one host: what tells a restarted agent from another
// one claiming the same name. "" if it cannot be read.
func hostInstance() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// reserveEndpointPorts adds the TCP ports of the directory endpoints to
// reserved: a port map on one would take the host's own directory traffic
// (when the directory runs on that server).
func reserveEndpointPorts(reserved []PortRange, endpoints []string) []PortRange {
	out := slices.Clone(reserved)
	for _, ep := range endpoints {
		host := ep
		if u, err := url.Parse(ep); err == nil && strings.Contains(ep, "://") {
			if u.Scheme == "unix" || u.Scheme == "unixs" {
				continue
			}
			host = u.Host
		}
		_, ps, err := net.SplitHostPort(host)
		if err != nil {
			continue
		}
		p, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || p == 0 {
			continue
		}
		if !slices.ContainsFunc(out, func(r PortRange) bool { return r.Contains(uint16(p)) }) {
			out = append(out, PortRange{uint16(p), uint16(p)})
		}
	}
	return out
}

// keepAlive renews the lease every third of its TTL. It does its own loop
// (rather than clientv3's KeepAlive channel) so that every failed renewal is
// logged and the loss of the lease is noticed and repaired.
func (r *Registration) keepAlive(ctx context.Context) {
	interval := r.ttl / 3
	lastOK := time.Now()
	failures := 0
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := interval
		err := r.renew(ctx)
		switch {
		case err == nil:
			if failures > 0 {
				r.log.Info("directory: lease renewed again", "after_failures", failures)
			}
			failures = 0
			lastOK = time.Now()
			actx, cancel := context.WithTimeout(ctx, r.retryTimeout())
			if err := r.Reassert(actx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrConflict) {
				r.log.Warn("directory: could not re-assert the server record", "err", err)
			}
			cancel()
		case ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || time.Since(lastOK) > r.ttl:
			// The record is gone (or about to be): register afresh.
			failures++
			r.log.Warn("directory: server lease lost, registering again", "err", err, "attempt", failures)
			rctx, cancel := context.WithTimeout(ctx, r.retryTimeout())
			err := r.registerCtx(rctx)
			cancel()
			if err != nil {
				r.log.Warn("directory: re-registration failed, retrying", "err", err)
				next = min(interval, time.Second)
			} else {
				r.log.Info("directory: server registered again", "lease", int64(r.lease))
				failures = 0
				lastOK = time.Now()
			}
		default:
			failures++
			r.log.Warn("directory: lease renewal failed, retrying", "err", err, "attempt", failures)
			next = min(interval, time.Second)
		}
		t.Reset(next)
	}
}

func (r *Registration) renew(ctx context.Context) error {
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, r.retryTimeout())
	defer cancel()
	resp, err := r.s.cli.KeepAliveOnce(ctx, lease)
	if err != nil {
		return err
	}
	if resp.TTL <= 0 {
		return rpctypes.ErrLeaseNotFound
	}
	return nil
}

// retryTimeout bounds one renewal or re-registration attempt: a third of the
// TTL, so that a failing renewal is noticed, logged and retried well before
// the lease runs out.
func (r *Registration) retryTimeout() time.Duration { return max(r.ttl/3, 200*time.Millisecond) }

// Server returns the record as stored (with defaults filled).
func (r *Registration) Server() Server { return r.srv }

// Lease returns the lease the record is currently kept under; it changes when the registration registers again.
func (r *Registration) Lease() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Close stops the keep-alive and revokes the lease, deleting the record at
// once instead of after the TTL. It is safe to call more than once.
func (r *Registration) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		// Revoking only hastens what the TTL does anyway, so a directory
		// outage should not hold up an agent's shutdown for long.
		ctx, cancel := context.WithTimeout(context.Background(), min(r.s.reqTimeout, 2*time.Second))
		defer cancel()
		if _, rerr := r.s.cli.Revoke(ctx, lease); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			err = unavailable("revoking lease of server "+r.srv.Name, rerr)
			return
		}
		r.log.Info("directory: server unregistered")
	})
	return err
}

// Server reads one server record.
func (s *Store) Server(ctx context.Context, name string) (Server, error) {
	r, err := s.server(ctx, name)
	return r.val, err
}

func (s *Store) server(ctx context.Context, name string) (record[Server], error) {
	if err := ValidateName("server", name); err != nil {
		return record[Server]{}, err
	}
	r, found, err := getJSON[Server](ctx, s, "reading server "+name, s.k.server(name))
	if err == nil && !found {
		err = errorf(ErrNotFound, "server %s is not registered", name)
	}
	return r, err
}

// Servers lists every registered server, sorted by name.
func (s *Store) Servers(ctx context.Context) ([]Server, error) {
	out, _, err := listJSON[Server](ctx, s, "listing servers", s.k.servers())
	return out, err
}
