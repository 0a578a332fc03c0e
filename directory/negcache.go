package directory

import "time"

// negCache remembers "not found" answers for a fixed TTL, at most max of
// them. Every entry lives equally long, so insertion order is expiry order:
// a FIFO ring of keys gives O(1) insert and O(1) amortized eviction (each
// insert pops at most what it and earlier inserts pushed), where a sweep of
// the whole map on each insert made a scan of many absent addresses
// quadratic. Past max, the oldest answer goes first, expired or not.
//
// It is not safe for concurrent use; the Cache guards it with its mutex.
type negCache struct {
	max     int
	entries map[string]negEntry
	ring    []negSlot // FIFO of inserts, ring[head:] then ring[:tail] when wrapped
	head    int
	n       int // slots in use
	seq     uint64
	steps   int64 // slots examined by put, for tests that check the work done
}

type negEntry struct {
	until time.Time
	err   error
	seq   uint64 // which insert of the key this is; older ring slots are stale
}

type negSlot struct {
	key string
	seq uint64
}

// DefaultNegativeMax bounds a cache's negative entries.
const DefaultNegativeMax = 16384

func newNegCache(max int) *negCache {
	if max <= 0 {
		max = DefaultNegativeMax
	}
	return &negCache{max: max, entries: map[string]negEntry{}, ring: make([]negSlot, max)}
}

// get returns the remembered error for key if it has not expired.
func (c *negCache) get(key string, now time.Time) (error, bool) {
	e, ok := c.entries[key]
	if !ok || !now.Before(e.until) {
		return nil, false
	}
	return e.err, true
}

// put remembers err for key until now+ttl.
func (c *negCache) put(key string, err error, now time.Time, ttl time.Duration) {
	// Drop expired answers from the front, then make room if full.
	for c.n > 0 {
		s := c.ring[c.head]
		e, live := c.entries[s.key]
		current := live && e.seq == s.seq
		if current && now.Before(e.until) && c.n < c.max {
			break
		}
		c.steps++
		c.pop(current)
	}
	c.seq++
	c.entries[key] = negEntry{until: now.Add(ttl), err: err, seq: c.seq}
	c.ring[(c.head+c.n)%c.max] = negSlot{key, c.seq}
	c.n++
	c.steps++
}

// pop removes the oldest slot, and its entry when the slot is current.
func (c *negCache) pop(current bool) {
	s := c.ring[c.head]
	if current {
		delete(c.entries, s.key)
	}
	c.ring[c.head] = negSlot{}
	c.head = (c.head + 1) % c.max
	c.n--
}

// drop forgets key (its ring slot goes stale and is skipped later).
func (c *negCache) drop(key string) { delete(c.entries, key) }

// clear forgets everything.
func (c *negCache) clear() {
	clear(c.entries)
	clear(c.ring)
	c.head, c.n = 0, 0
}

// len is the number of remembered keys, expired or not.
func (c *negCache) len() int { return len(c.entries) }
