package directory

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// One embedded etcd serves the whole test binary: starting one takes a
// moment. Tests isolate themselves with a prefix each.
var shared *Embedded

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "nvi-directory-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shared, err = ServeEmbedded(ctx, EmbedConfig{
		DataDir:    dir + "/etcd",
		ClientURLs: []string{"http://127.0.0.1:0"},
		Logger:     quietLogger(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer shared.Close()
	return m.Run()
}

func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var prefixes atomic.Int64

// newStore opens a store on the shared etcd under a fresh prefix.
func newStore(t *testing.T) *Store {
	t.Helper()
	return openOn(t, shared.Endpoints(), fmt.Sprintf("/test/%s/%d/", t.Name(), prefixes.Add(1)))
}

func openOn(t *testing.T, endpoints []string, prefix string) *Store {
	t.Helper()
	return openWith(t, endpoints, prefix, testLogger(t))
}

func openWith(t *testing.T, endpoints []string, prefix string, log *slog.Logger) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Endpoints: endpoints, Prefix: prefix, DialTimeout: 5 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testLogger sends the package's log lines to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// rawClient is a plain etcd client for poking at keys directly.
func rawClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantErr fails unless err wraps kind and its message contains every part.
func wantErr(t *testing.T, err error, kind error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error; want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error %q does not wrap %v", err, kind)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// addServer registers a server for the duration of the test.
func addServer(t *testing.T, s *Store, name string, last byte) Server {
	t.Helper()
	reg, err := s.RegisterServer(ctxT(t), Server{
		Name:    name,
		DataIP:  netip.AddrFrom4([4]byte{192, 0, 2, last}),
		DataMAC: fmt.Sprintf("02:00:00:00:00:%02x", last),
	}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	return reg.Server()
}

// etcdPort is the TCP port of the shared etcd, which RegisterServer reserves.
func etcdPort(t *testing.T) uint16 {
	t.Helper()
	r := reserveEndpointPorts(nil, shared.Endpoints())
	if len(r) != 1 {
		t.Fatalf("shared etcd endpoints %v: want one TCP port", shared.Endpoints())
	}
	return r[0].First
}

// addNetwork creates tenant/name with cidr.
func addNetwork(t *testing.T, s *Store, tenant, name, cidr string) Network {
	t.Helper()
	n, err := s.CreateNetwork(ctxT(t), Network{Tenant: tenant, Name: name, CIDR: netip.MustParsePrefix(cidr)})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// capture is a slog handler that remembers messages (and passes them on to
// the test log), for tests that check what the package reports.
type capture struct {
	mu   *sync.Mutex
	msgs *[]string
	next slog.Handler
}

func newCapture(t *testing.T) (*slog.Logger, func(substr string) bool) {
	c := capture{mu: &sync.Mutex{}, msgs: &[]string{}, next: testLogger(t).Handler()}
	return slog.New(c), func(substr string) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range *c.msgs {
			if strings.Contains(m, substr) {
				return true
			}
		}
		return false
	}
}

func (c capture) Enabled(context.Context, slog.Level) bool { return true }
func (c capture) Handle(ctx context.Context, r slog.Record) error {
	c.mu.Lock()
	*c.msgs = append(*c.msgs, r.Message)
	c.mu.Unlock()
	return c.next.Handle(ctx, r)
}
func (c capture) WithAttrs(as []slog.Attr) slog.Handler {
	c.next = c.next.WithAttrs(as)
	return c
}
func (c capture) WithGroup(g string) slog.Handler {
	c.next = c.next.WithGroup(g)
	return c
}

func withPrefix() clientv3.OpOption { return clientv3.WithPrefix() }
