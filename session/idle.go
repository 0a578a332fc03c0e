package session

import "time"

// Activity follows the packet counters of one session's flows on this bridge
// and remembers when they last moved. Both directions of a session cross
// both of its servers' bridges, so either end alone sees all of its traffic:
// a session that carries packets in either direction is never idle.
type Activity struct {
	Packets    uint64    `json:"packets"`
	LastActive time.Time `json:"last_active"`
}

// NewActivity starts tracking at now, as if a packet had just passed.
func NewActivity(now time.Time) Activity { return Activity{LastActive: now} }

// Observe records the current sum of the session's flow counters. Any change
// counts as activity, including a drop: flows that were re-added start
// counting from zero again.
func (a *Activity) Observe(packets uint64, now time.Time) {
	if packets != a.Packets {
		a.Packets = packets
		a.LastActive = now
	}
}

// Touch records activity seen outside the flow counters (slow-path packets).
func (a *Activity) Touch(now time.Time) { a.LastActive = now }

// Idle reports whether nothing moved for at least timeout.
func (a Activity) Idle(now time.Time, timeout time.Duration) bool {
	return timeout > 0 && now.Sub(a.LastActive) >= timeout
}
