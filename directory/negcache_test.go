package directory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

var errNo = errors.New("no")

func TestNegCache(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newNegCache(3)
	c.put("a", errNo, t0, time.Second)
	if err, ok := c.get("a", t0); !ok || err != errNo {
		t.Fatalf("get(a) = %v %v", err, ok)
	}
	if _, ok := c.get("a", t0.Add(time.Second)); ok {
		t.Fatal("a still remembered at its expiry")
	}
	if _, ok := c.get("b", t0); ok {
		t.Fatal("b remembered without a put")
	}
	// Full: the oldest goes first, live or not.
	c.put("b", errNo, t0, time.Minute)
	c.put("c", errNo, t0, time.Minute)
	c.put("d", errNo, t0, time.Minute)
	if _, ok := c.get("a", t0); ok || c.len() != 3 {
		t.Fatalf("after overflow: a remembered=%v, len %d; want evicted, 3", ok, c.len())
	}
	// A re-put moves the key to the back; its old slot is skipped.
	c.put("b", errNo, t0.Add(time.Second), time.Minute)
	c.put("e", errNo, t0.Add(time.Second), time.Minute)
	for k, want := range map[string]bool{"b": true, "c": false, "d": true, "e": true} {
		if _, ok := c.get(k, t0.Add(time.Second)); ok != want {
			t.Errorf("get(%s) = %v; want %v", k, ok, want)
		}
	}
	// Expired answers leave as later ones arrive, without a sweep.
	later := t0.Add(2 * time.Minute)
	c.put("f", errNo, later, time.Minute)
	if c.len() != 1 {
		t.Fatalf("len after everything else expired = %d; want 1", c.len())
	}
	c.drop("f")
	if _, ok := c.get("f", later); ok {
		t.Fatal("f remembered after drop")
	}
	c.clear()
	c.put("g", errNo, later, time.Minute)
	if _, ok := c.get("g", later); !ok || c.len() != 1 {
		t.Fatal("put after clear lost")
	}
}

// TestNegCacheWorkPerInsert is the audit's M2 proof of concept turned
// around: 20,000 distinct misses, all still live, cost O(1) work each
// (slots examined per insert), where the old sweep examined every live
// entry on every insert past 4096.
func TestNegCacheWorkPerInsert(t *testing.T) {
	for _, n := range []int{4000, 10000, 20000} {
		c := newNegCache(DefaultNegativeMax)
		now := time.Unix(1000, 0)
		for i := range n {
			c.put(missKey(i), errNo, now, time.Minute)
		}
		if per := float64(c.steps) / float64(n); per > 2 {
			t.Errorf("%d misses: %.2f slots examined per insert; want at most 2", n, per)
		}
		if c.len() > DefaultNegativeMax {
			t.Errorf("%d misses: %d remembered; want at most %d", n, c.len(), DefaultNegativeMax)
		}
		t.Logf("%6d distinct misses: %d slots examined, %d remembered", n, c.steps, c.len())
	}
	// Through the Cache itself (what the audit timed), per-insert work
	// stays flat as the number of live entries grows.
	c := NewCache(nil, slog.New(slog.NewTextHandler(io.Discard, nil)), WithNegativeTTL(time.Minute))
	var perOp []float64
	for _, n := range []int{1000, 20000} {
		c.negative.clear()
		before := c.negative.steps
		for i := range n {
			c.remember(missKey(i), errNo)
		}
		perOp = append(perOp, float64(c.negative.steps-before)/float64(n))
	}
	if perOp[1] > perOp[0]+1 {
		t.Errorf("work per miss grew from %.2f (1000 live) to %.2f (20000 live)", perOp[0], perOp[1])
	}
}

func missKey(i int) string {
	return fmt.Sprintf("e:acme/10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
}

// BenchmarkNegativeMiss measures one remembered miss with 20,000 distinct
// misses live (go test -bench NegativeMiss ./directory).
func BenchmarkNegativeMiss(b *testing.B) {
	c := NewCache(nil, slog.New(slog.NewTextHandler(io.Discard, nil)), WithNegativeTTL(time.Minute))
	keys := make([]string, 20000)
	for i := range keys {
		keys[i] = missKey(i)
		c.remember(keys[i], errNo)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.remember(keys[i%len(keys)], errNo)
	}
}

// TestNegativeMissBenchmarkIsFlat compares the per-op cost with few and
// many live misses through testing.Benchmark; a sweep would make the second
// thousands of times slower. The bound is loose (shared CI machines).
func TestNegativeMissBenchmarkIsFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("benchmark comparison")
	}
	bench := func(live int) float64 {
		r := testing.Benchmark(func(b *testing.B) {
			c := NewCache(nil, slog.New(slog.NewTextHandler(io.Discard, nil)), WithNegativeTTL(time.Minute))
			keys := make([]string, live)
			for i := range keys {
				keys[i] = missKey(i)
				c.remember(keys[i], errNo)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c.remember(keys[i%live], errNo)
			}
		})
		return float64(r.NsPerOp())
	}
	few, many := bench(100), bench(20000)
	t.Logf("per miss: %.0f ns with 100 live, %.0f ns with 20000 live", few, many)
	if many > 20*few+2000 {
		t.Errorf("a miss costs %.0f ns with 20000 live misses vs %.0f ns with 100: not O(1)", many, few)
	}
}

// TestCacheFetchCap: with the cap reached, a further distinct miss waits at
// most the look-up timeout and fails as unavailable, instead of starting
// another etcd read; reads already in flight finish normally.
func TestCacheFetchCap(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addNetwork(t, s, "acme", "web", "10.1.0.0/24")
	c := NewCache(s, testLogger(t), WithMaxFetches(2), WithLookupTimeout(200*time.Millisecond))
	// Hold both tokens as two slow reads would.
	c.fetches <- struct{}{}
	c.fetches <- struct{}{}
	start := time.Now()
	_, err := c.LookupEndpoint(ctx, "acme", netip.MustParseAddr("10.1.0.9"))
	wantErr(t, err, ErrUnavailable, "2 directory reads already in flight")
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("refused after %v; want about the look-up timeout", took)
	}
	if n := c.reads.Load(); n != 0 {
		t.Fatalf("%d etcd reads started beyond the cap", n)
	}
	// A token freed: the next miss reads and answers.
	<-c.fetches
	_, err = c.LookupEndpoint(ctx, "acme", netip.MustParseAddr("10.1.0.9"))
	wantErr(t, err, ErrNotFound)
	<-c.fetches
	// Many concurrent distinct misses never have more than the cap in flight.
	var wg sync.WaitGroup
	var mu sync.Mutex
	maxSeen := 0
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			maxSeen = max(maxSeen, len(c.fetches))
			mu.Unlock()
			time.Sleep(50 * time.Microsecond)
		}
	}()
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = c.LookupEndpoint(context.Background(), "acme", netip.AddrFrom4([4]byte{10, 1, 1, byte(i)}))
		}()
	}
	wg.Wait()
	close(stop)
	mu.Lock()
	defer mu.Unlock()
	if maxSeen > 2 {
		t.Fatalf("%d reads in flight; cap is 2", maxSeen)
	}
}
