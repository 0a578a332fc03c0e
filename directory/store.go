package directory

import (
	"context"
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
	// Endpoints are etcd client URLs: "http://198.18.0.254:2379",
	// "unix:///run/nvi/lab/etcd.sock".
	Endpoints []string
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
}

// Open connects to etcd and proves it answers within DialTimeout. clientv3
// dials lazily, so without the probe a wrong address would surface only at
// the first real request, far from the flag that caused it.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errorf(ErrInvalid, "directory: no etcd endpoints given")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
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
func (k keys) allPortMaps() string           { return k.prefix + "portmaps/" }
func (k keys) portMaps(server string) string { return k.allPortMaps() + server + "/" }
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

// getJSON reads one key. An absent key is not an error: found is false.
func getJSON[T any](ctx context.Context, s *Store, op, key string) (r record[T], found bool, err error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return r, false, unavailable(op, err)
	}
	return recordOf[T](op, key, resp.Kvs, resp.Header.Revision)
}

// recordOf decodes the result of reading one key at revision rev.
func recordOf[T any](op, key string, kvs []*mvccpb.KeyValue, rev int64) (r record[T], found bool, err error) {
	r.readRev = rev
	if len(kvs) == 0 {
		return r, false, nil
	}
	if err := json.Unmarshal(kvs[0].Value, &r.val); err != nil {
		return r, false, fmt.Errorf("directory: %s: record at %s is corrupt: %w", op, key, err)
	}
	r.modRev = kvs[0].ModRevision
	return r, true, nil
}

// listJSON reads every record under prefix, in key order.
func listJSON[T any](ctx context.Context, s *Store, op, prefix string) ([]T, int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, unavailable(op, err)
	}
	return decodeAll[T](s, resp.Kvs), resp.Header.Revision, nil
}

// decodeAll decodes records in order. A corrupt record is logged and
// skipped so that one bad value cannot hide all the others.
func decodeAll[T any](s *Store, kvs []*mvccpb.KeyValue) []T {
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := decode(kv, &v); err != nil {
			s.log.Warn("directory: skipping corrupt record", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, v)
	}
	return out
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

func decode(kv *mvccpb.KeyValue, v any) error { return json.Unmarshal(kv.Value, v) }

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
