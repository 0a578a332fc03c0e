package enroll

import (
	"net/netip"
	"sync"
	"time"
)

// bucket is a token bucket: rate tokens a second up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take refills b for the time since its last use and takes one token if
// there is one.
func (b bucket) take(now time.Time, rate float64, burst int) (bucket, bool) {
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens += d * rate
	}
	if b.tokens > float64(burst) {
		b.tokens = float64(burst)
	}
	b.last = now
	if b.tokens < 1 {
		return b, false
	}
	b.tokens--
	return b, true
}

// limiter bounds requests overall and per source address. The per-source
// table is bounded: when full it starts over, which at worst lets a flood
// of distinct sources through at the overall rate.
type limiter struct {
	mu            sync.Mutex
	all           bucket
	bySource      map[netip.Addr]bucket
	rate, perRate float64
	burst, perBur int
}

const maxSources = 4096

func newLimiter(rate float64, burst int, perRate float64, perBurst int) *limiter {
	return &limiter{bySource: map[netip.Addr]bucket{}, rate: rate, burst: burst, perRate: perRate, perBur: perBurst}
}

func (l *limiter) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.bySource[src]
	if !ok && len(l.bySource) >= maxSources {
		l.bySource = map[netip.Addr]bucket{}
	}
	b, ok = b.take(now, l.perRate, l.perBur)
	l.bySource[src] = b
	if !ok {
		return false
	}
	l.all, ok = l.all.take(now, l.rate, l.burst)
	return ok
}
