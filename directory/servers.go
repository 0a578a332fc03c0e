package directory

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

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
	blocks  map[string]struct{} // keys of the address blocks held

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
// A record already stored under the same name is replaced: the newest agent
// claiming a name wins, which is what a restarted agent needs.
func (s *Store) RegisterServer(ctx context.Context, srv Server, ttl time.Duration) (*Registration, error) {
	srv, err := srv.normalize()
	if err != nil {
		return nil, err
	}
	if ttl < MinServerTTL {
		return nil, errorf(ErrInvalid, "server %s: lease TTL %v is shorter than %v", srv.Name, ttl, MinServerTTL)
	}
	r := &Registration{s: s, srv: srv, ttl: ttl, log: s.log.With("server", srv.Name), done: make(chan struct{}), blocks: map[string]struct{}{}}
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

// registerCtx grants a lease, puts the record under it and moves the
// address blocks the registration holds to it.
func (r *Registration) registerCtx(ctx context.Context) error {
	r.blockMu.Lock()
	defer r.blockMu.Unlock()
	lease, err := r.s.cli.Grant(ctx, int64((r.ttl+time.Second-1)/time.Second))
	if err != nil {
		return unavailable("granting lease for server "+r.srv.Name, err)
	}
	if _, err := r.s.cli.Put(ctx, r.s.k.server(r.srv.Name), mustJSON(r.srv), clientv3.WithLease(lease.ID)); err != nil {
		// The lease would expire by itself; revoking just tidies up early.
		_, _ = r.s.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return unavailable("registering server "+r.srv.Name, err)
	}
	r.mu.Lock()
	r.lease = lease.ID
	r.mu.Unlock()
	r.moveBlocks(ctx, lease.ID)
	return nil
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

// Lease returns the lease the record (and the server's address blocks) is
// currently kept under; it changes when the registration registers again.
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
