package agent

import (
	"sync"
	"time"
)

// Limits on what one workload can make its agent do (security audit H5,
// M6, L9). Keys are shared fairly by session.KeyPool's tenant quota; these
// bound the rest.
const (
	// maxSessionsPerWorkload bounds the sessions one local workload has
	// as the client (and, for reopened sessions, as the server) at once,
	// local ones included: they need no key, and each costs two flows.
	maxSessionsPerWorkload = 4096

	// logEvery is how often one kind of refusal or failure is logged at
	// most; the lines in between are counted, not written.
	logEvery = 10 * time.Second

	// expireDumpTimeout bounds the flow dump that expiry reads counters
	// from. When the dump fails, expiry still runs on the activity it
	// last saw, so a slow switch can never stop sessions from ending.
	expireDumpTimeout = 5 * time.Second

	// clientDeafAfter is how long a client half may send with nothing
	// coming back before its agent asks the peer, with the same Accept,
	// whether the server half still exists (audit M4).
	clientDeafAfter = 15 * time.Second

	// maxHeld bounds the packets kept per session while it is being set
	// up or torn down; a workload that sends faster than that loses the
	// surplus, as it would on a congested link.
	maxHeld = 64
)

// LocalAPIConfig says who may use the local API (Config.LocalAPI, nvid's
// --socket-group).
type LocalAPIConfig struct {
	// SocketGroup is the group that owns the socket (mode 0660) and whose
	// members may call the agent besides root. Empty means "root".
	SocketGroup string
}

// limits is the agent's bookkeeping for the limits above. The zero value
// is ready; sessions is guarded by Agent.mu, logs has its own lock.
type limits struct {
	sessions map[uint32]int // sessions counted against each local port
	logs     logLimiter
}

// take counts one more session against port, unless it has its maximum.
func (l *limits) take(port uint32) bool {
	if l.sessions == nil {
		l.sessions = map[uint32]int{}
	}
	if l.sessions[port] >= maxSessionsPerWorkload {
		return false
	}
	l.sessions[port]++
	return true
}

// done gives back what take counted.
func (l *limits) done(port uint32) {
	if l.sessions[port]--; l.sessions[port] <= 0 {
		delete(l.sessions, port)
	}
}

// logLimiter lets one line per key through every interval and counts the
// others. Keys name a kind of event (and at most a peer), never a packet's
// fields, so the map stays small.
type logLimiter struct {
	mu    sync.Mutex
	every time.Duration // 0 means logEvery
	seen  map[string]*logSlot
}

type logSlot struct {
	last       time.Time
	suppressed int
}

// allow reports whether a line for key may be written at now, and how many
// were held back since the last one that was.
func (l *logLimiter) allow(key string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	every := l.every
	if every == 0 {
		every = logEvery
	}
	if l.seen == nil {
		l.seen = map[string]*logSlot{}
	}
	s := l.seen[key]
	if s == nil {
		l.seen[key] = &logSlot{last: now}
		return true, 0
	}
	if now.Sub(s.last) < every {
		s.suppressed++
		return false, 0
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	return true, n
}
