package directory

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"nvi/session"
)

// DefaultPrefix is where NVI keeps its records in etcd. The version segment
// lets a future incompatible layout live next to this one during upgrades.
const DefaultPrefix = "/nvi/v1/"

// Defaults for [Config].
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
)

// Config says how to reach the directory.
type Config struct {
	// Endpoints are etcd client URLs: "https://10.0.0.1:2379",
	// "unixs:///run/nvi/etcd.sock"; with TLS nil, "http://..." and
	// "unix://..." instead.
	Endpoints []string
	// TLS is the client side of the directory's mutual TLS: the client's
	// certificate (its CN is its etcd user: "root", "server:<name>") and
	// the pool of CAs that signed the directory's serving certificate.
	// With TLS set every endpoint must be https:// or unixs://. A nil TLS
	// speaks plain http:// or unix:// to an etcd without authentication:
	// only for tests and old single-host setups, never for a directory
	// that workloads or other hosts can reach.
	TLS *tls.Config
	// DialTimeout bounds Open's reachability probe (default 5s).
	DialTimeout time.Duration
	// RequestTimeout bounds each call whose context has no deadline of its
	// own (default 5s), so a directory outage never hangs a caller forever.
	RequestTimeout time.Duration
	// Prefix isolates NVI's keys; tests use one per test (default "/nvi/v1/").
	Prefix string
	// Logger receives the store's own lines (default slog.Default()).
	Logger *slog.Logger
}

// Store is a thin shell over an etcd client: every method is one or a few
// etcd round trips, validating input before and translating errors after.
// It caches nothing; agents on the packet path use a [Cache].
type Store struct {
	cli        *clientv3.Client
	k          keys
	log        *slog.Logger
	reqTimeout time.Duration
	ownsClient bool
	endpoints  []string // what Open was given; their ports are reserved on servers
	warn       warned   // malformed records already logged
}

// Open connects to etcd and proves it answers within DialTimeout. clientv3
// dials lazily, so without the probe a wrong address would surface only at
// the first real request, far from the flag that caused it.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errorf(ErrInvalid, "directory: no etcd endpoints given")
	}
	if err := checkSchemes(cfg.Endpoints, cfg.TLS != nil); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes; an agent
		// must find the directory again within seconds of it returning.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: cfg.DialTimeout,
		})},
	})
	if err != nil {
		return nil, errorf(ErrUnavailable, "directory: etcd at %v: %w", cfg.Endpoints, err)
	}
	s := NewFromClient(cli, cfg.Prefix)
	s.ownsClient = true
	s.endpoints = append([]string(nil), cfg.Endpoints...)
	if cfg.Logger != nil {
		s.log = cfg.Logger
	}
	if cfg.RequestTimeout > 0 {
		s.reqTimeout = cfg.RequestTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, s.k.prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, errorf(ErrUnavailable, "directory: etcd at %v unreachable: %w%s", cfg.Endpoints, err, diagnose(cfg.Endpoints))
	}
	s.log.Debug("directory: connected", "endpoints", cfg.Endpoints, "prefix", s.k.prefix)
	return s, nil
}

// checkSchemes refuses endpoints whose scheme does not match whether TLS is
// configured: a plain URL with TLS configured would look secure and not be,
// and an https URL without it cannot work.
func checkSchemes(endpoints []string, withTLS bool) error {
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme == "" || !strings.Contains(ep, "://") {
			if !withTLS {
				continue // "host:port": etcd's client dials it plainly
			}
			return errorf(ErrInvalid, "directory: endpoint %q is not a URL like https://10.0.0.1:2379", ep)
		}
		secure := u.Scheme == "https" || u.Scheme == "unixs"
		plain := u.Scheme == "http" || u.Scheme == "unix"
		switch {
		case withTLS && !secure:
			return errorf(ErrInvalid, "directory: endpoint %s is not https:// or unixs:// although a TLS configuration is given; use the TLS scheme", ep)
		case !withTLS && secure:
			return errorf(ErrInvalid, "directory: endpoint %s needs TLS: give a client certificate and the directory's CA", ep)
		case !secure && !plain:
			return errorf(ErrInvalid, "directory: endpoint %s: scheme %q is none of https, unixs, http, unix", ep, u.Scheme)
		}
	}
	return nil
}

// diagnose says why the endpoints did not answer, as far as a plain dial
// can tell: the client only reports its deadline, and "connection refused"
// versus "accepts but does not answer" points at different mistakes. The
// dials run in parallel, so this adds at most 300ms.
func diagnose(endpoints []string) string {
	notes := make([]string, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			continue
		}
		network, addr := "tcp", u.Host
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			network, addr = "unix", u.Host+u.Path
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout(network, addr, 300*time.Millisecond)
			if err != nil {
				notes[i] = err.Error()
				return
			}
			c.Close()
			notes[i] = ep + " accepts connections but did not answer as etcd"
		}()
	}
	wg.Wait()
	notes = slices.DeleteFunc(notes, func(n string) bool { return n == "" })
	if len(notes) == 0 {
		return ""
	}
	return " (" + strings.Join(notes, "; ") + ")"
}

// NewFromClient wraps an existing client; prefix "" means DefaultPrefix.
// Close does not close a client passed in this way.
func NewFromClient(cli *clientv3.Client, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Store{cli: cli, k: keys{prefix}, log: slog.Default(), reqTimeout: DefaultRequestTimeout}
}

// Close releases the client if Open created it.
func (s *Store) Close() error {
	if !s.ownsClient {
		return nil
	}
	return s.cli.Close()
}

// Prefix returns the key prefix the store works under.
func (s *Store) Prefix() string { return s.k.prefix }

// Client exposes the underlying etcd client, for callers that need
// something the Store does not offer (and for tests).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Revision returns etcd's current revision: a starting point for Watch.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.k.prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, unavailable("reading revision", err)
	}
	return resp.Header.Revision, nil
}

// ctx applies the default request timeout unless ctx already has a deadline.
func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.reqTimeout)
}

// keys builds every etcd key the package uses; the layout is described in
// the package documentation.
type keys struct{ prefix string }

func (k keys) servers() string                     { return k.prefix + "servers/" }
func (k keys) server(name string) string           { return k.servers() + name }
func (k keys) tenants() string                     { return k.prefix + "tenants/" }
func (k keys) tenant(t string) string              { return k.tenants() + t }
func (k keys) allNetworks() string                 { return k.prefix + "networks/" }
func (k keys) networks(t string) string            { return k.allNetworks() + t + "/" }
func (k keys) network(t, n string) string          { return k.networks(t) + n }
func (k keys) allEndpoints() string                { return k.prefix + "endpoints/" }
func (k keys) endpoints(t string) string           { return k.allEndpoints() + t + "/" }
func (k keys) endpoint(t, n string) string         { return k.endpoints(t) + n }
func (k keys) addrs(t string) string               { return k.prefix + "addrs/" + t + "/" }
func (k keys) addr(t string, ip netip.Addr) string { return k.addrs(t) + ip.String() }
func (k keys) iface(id string) string              { return k.prefix + "ifaces/" + id }
func (k keys) zones() string                       { return k.prefix + "zones/" }
func (k keys) zone(z uint16) string                { return k.zones() + strconv.Itoa(int(z)) }
func (k keys) groups(t string) string              { return k.prefix + "groups/" + t + "/" }
func (k keys) group(t, g string) string            { return k.groups(t) + g }
func (k keys) pairs(t string) string               { return k.prefix + "pairs/" + t + "/" }
func (k keys) pair(t, a, b string) string          { return k.pairs(t) + a + "/" + b } // a < b
func (k keys) rules(t string) string               { return k.prefix + "rules/" + t + "/" }
func (k keys) rule(t, id string) string            { return k.rules(t) + id }
func (k keys) blocks(t, n string) string           { return k.prefix + "blocks/" + t + "/" + n + "/" }
func (k keys) block(t, n string, b netip.Prefix) string {
	return k.blocks(t, n) + b.String()
}
func (k keys) revoked() string                  { return k.prefix + "revoked/" }
func (k keys) revokedServer(name string) string { return k.revoked() + name }
func (k keys) allPortMaps() string              { return k.prefix + "portmaps/" }
func (k keys) portMaps(server string) string    { return k.allPortMaps() + server + "/" }
func (k keys) portMap(server string, proto session.Proto, port uint16) string {
	return k.portMaps(server) + proto.String() + "/" + strconv.Itoa(int(port))
}

// record is a decoded etcd value plus the revisions the cache needs to order
// it against watch events.
type record[T any] struct {
	val     T
	modRev  int64 // the key's ModRevision; 0 when absent
	readRev int64 // the revision the read observed
}

// getJSON reads one key. An absent key is not an error: found is false. A
// malformed record is an error wrapping ErrMalformed and ErrNotFound.
func getJSON[T any](ctx context.Context, s *Store, op, key string) (r record[T], found bool, err error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return r, false, unavailable(op, err)
	}
	return recordOf[T](s, op, key, resp.Kvs, resp.Header.Revision)
}

// recordOf decodes and checks the result of reading one key at revision rev.
func recordOf[T any](s *Store, op, key string, kvs []*mvccpb.KeyValue, rev int64) (r record[T], found bool, err error) {
	r.readRev = rev
	if len(kvs) == 0 {
		return r, false, nil
	}
	if err := s.decodeStored(kvs[0], &r.val); err != nil {
		var zero T
		r.val = zero
		return r, false, s.malformed(key, kvs[0].ModRevision, ErrNotFound, fmt.Errorf("directory: %s: the record at %s is malformed and ignored: %w", op, key, err))
	}
	r.modRev = kvs[0].ModRevision
	return r, true, nil
}

// listJSON reads every record under prefix, in key order, leaving out
// malformed ones (logged once).
func listJSON[T any](ctx context.Context, s *Store, op, prefix string) ([]T, int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, unavailable(op, err)
	}
	return decodeAll[T](s, resp.Kvs), resp.Header.Revision, nil
}

// decodeAll decodes and checks records in order. A malformed record is
// logged (once) and left out, so that one bad value cannot hide all the
// others.
func decodeAll[T any](s *Store, kvs []*mvccpb.KeyValue) []T {
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := s.decodeStored(kv, &v); err != nil {
			s.warnOnce(string(kv.Key), kv.ModRevision, err)
			continue
		}
		out = append(out, v)
	}
	return out
}

// decodeStrict decodes and checks records in order, and fails on the first
// malformed one: for records whose absence would change a decision (a lost
// deny rule allows), where skipping fails open.
func decodeStrict[T any](s *Store, op string, kvs []*mvccpb.KeyValue) ([]T, error) {
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := s.decodeStored(kv, &v); err != nil {
			return nil, s.malformed(string(kv.Key), kv.ModRevision, ErrInvalid, fmt.Errorf("directory: %s: %w", op, err))
		}
		out = append(out, v)
	}
	return out, nil
}

// txn runs one transaction under the request timeout.
func (s *Store) txn(ctx context.Context, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, unavailable(op, err)
	}
	return resp, nil
}

// read does several reads at one revision, so that what they return is a
// consistent snapshot.
func (s *Store) read(ctx context.Context, op string, gets ...clientv3.Op) (*clientv3.TxnResponse, error) {
	return s.txn(ctx, op, nil, gets, nil)
}

// kvs returns the key-values of the i-th read of a transaction.
func kvs(resp *clientv3.TxnResponse, i int) []*mvccpb.KeyValue {
	return resp.Responses[i].GetResponseRange().GetKvs()
}

// retry runs attempt until it reports done, returns an error, or has lost
// casRetries compare-and-swap races (then the error says op gave up because
// why: "the tenant's rules keep changing"). Attempts after the first wait a
// little, at random, so that creators racing for the same value spread out.
func retry[T any](ctx context.Context, op, why string, attempt func() (T, bool, error)) (T, error) {
	for n := range casRetries {
		if n > 0 {
			if err := sleepCtx(ctx, time.Duration(rand.IntN(n*2+1))*time.Millisecond); err != nil {
				var zero T
				return zero, errorf(ErrUnavailable, "%s: %w", op, err)
			}
		}
		v, done, err := attempt()
		if err != nil || done {
			return v, err
		}
	}
	var zero T
	return zero, errorf(ErrConflict, "%s: gave up after %d attempts: %s", op, casRetries, why)
}

// mustJSON encodes a model value; they contain nothing json can refuse.
func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Unreachable for the plain structs of this package; keep a value
		// that fails decoding loudly rather than panicking.
		return fmt.Sprintf("unencodable: %v", err)
	}
	return string(b)
}

// exists is the compare "key exists".
func exists(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
}

// absent is the compare "key does not exist".
func absent(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
}

// unchanged is the compare "key still has the revision we read" (0: still absent).
func unchanged(key string, modRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
}

// quietSince is the compare "nothing under prefix was created or modified
// after revision rev". Deletions are not seen, which is fine for the guards
// that use it: they only need to notice additions.
func quietSince(prefix string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()
}

// casRetries bounds how often an operation re-reads and retries after losing
// a compare-and-swap race.
const casRetries = 32
