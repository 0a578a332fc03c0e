package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// MonitorRequest selects what to watch in one table.
type MonitorRequest struct {
	Columns []string       // nil: all columns
	Select  *MonitorSelect // nil: everything
}

// MonitorSelect chooses which kinds of change are reported.
type MonitorSelect struct {
	Initial, Insert, Delete, Modify bool
}

// MarshalJSON implements json.Marshaler.
func (r MonitorRequest) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if r.Columns != nil {
		m["columns"] = r.Columns
	}
	if r.Select != nil {
		m["select"] = map[string]bool{
			"initial": r.Select.Initial, "insert": r.Select.Insert,
			"delete": r.Select.Delete, "modify": r.Select.Modify,
		}
	}
	return json.Marshal(m)
}

// RowUpdate is one row's change. Insert (and initial): New only. Delete: Old
// only. Modify (RFC 7047 monitor): Old holds the previous values of the
// changed columns only, New the current values of all monitored columns.
type RowUpdate struct {
	Old Row `json:"old"`
	New Row `json:"new"`
}

// TableUpdates maps table name to row UUID to change.
type TableUpdates map[string]map[UUID]RowUpdate

func parseTableUpdates(raw json.RawMessage) (TableUpdates, error) {
	var wire map[string]map[string]RowUpdate
	if err := json.Unmarshal(raw, &wire); err != nil {
		return nil, fmt.Errorf("malformed table updates: %w", err)
	}
	out := make(TableUpdates, len(wire))
	for table, rows := range wire {
		t := make(map[UUID]RowUpdate, len(rows))
		for id, u := range rows {
			t[UUID(id)] = u
		}
		out[table] = t
	}
	return out, nil
}

// Monitor is an active RFC 7047 monitor. Its callback runs on a goroutine
// of its own, one update at a time and in server order, starting with the
// initial contents; updates queue without bound while the callback is busy,
// so a slow callback never stalls the connection (and may itself call the
// Client).
type Monitor struct {
	c  *Client
	id string
	fn func(TableUpdates)

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []TableUpdates
	stopped bool
	err     error
	done    chan struct{}
}

// Monitor starts monitoring db and returns once the server accepted it. fn
// first receives the initial contents (if selected), then each change.
func (c *Client) Monitor(ctx context.Context, db string, requests map[string]MonitorRequest, fn func(TableUpdates)) (*Monitor, error) {
	m, err := c.monitor(ctx, db, requests, fn)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: monitor %s: %w", db, err)
	}
	return m, nil
}

func (c *Client) monitor(ctx context.Context, db string, requests map[string]MonitorRequest, fn func(TableUpdates)) (*Monitor, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextMon++
	m := newMonitor(c, "nvi-mon-"+strconv.FormatUint(c.nextMon, 10), fn)
	c.monitors[m.id] = m
	c.mu.Unlock()
	go m.deliver()

	_, err := c.call(ctx, "monitor", []any{db, m.id, requests}, func(res json.RawMessage) error {
		initial, err := parseTableUpdates(res)
		if err != nil {
			return err
		}
		m.push(initial)
		return nil
	})
	if err != nil {
		c.mu.Lock()
		delete(c.monitors, m.id)
		c.mu.Unlock()
		m.stop(err)
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			// The server may have created it after all.
			cctx, cancel := context.WithTimeout(context.Background(), timeoutAfterCancel)
			_, _ = c.call(cctx, "monitor_cancel", []any{m.id}, nil)
			cancel()
		}
		return nil, err
	}
	return m, nil
}

func newMonitor(c *Client, id string, fn func(TableUpdates)) *Monitor {
	m := &Monitor{c: c, id: id, fn: fn, done: make(chan struct{})}
	m.cond = sync.NewCond(&m.mu)
	return m
}

// routeUpdate handles an "update" notification: params [monitor-id, updates].
func (c *Client) routeUpdate(params json.RawMessage) {
	var p []json.RawMessage
	if err := json.Unmarshal(params, &p); err != nil || len(p) != 2 {
		c.log.Warn("ovsdb: dropping malformed update notification", "msg", truncate(params))
		return
	}
	var id string
	if err := json.Unmarshal(p[0], &id); err != nil {
		c.log.Warn("ovsdb: dropping update for a monitor id we never use", "id", truncate(p[0]))
		return
	}
	c.mu.Lock()
	m := c.monitors[id]
	c.mu.Unlock()
	if m == nil {
		c.log.Debug("ovsdb: dropping update for unknown monitor", "id", id)
		return
	}
	u, err := parseTableUpdates(p[1])
	if err != nil {
		// The monitor has now missed a change; a consumer relying on it
		// would silently diverge, so end it and let the owner restart it.
		c.mu.Lock()
		delete(c.monitors, id)
		c.mu.Unlock()
		m.stop(fmt.Errorf("monitor %s: %w", id, err))
		return
	}
	m.push(u)
}

func (m *Monitor) push(u TableUpdates) {
	m.mu.Lock()
	if !m.stopped {
		m.queue = append(m.queue, u)
		m.cond.Signal()
	}
	m.mu.Unlock()
}

// stop ends delivery; queued updates are dropped. The first reason wins.
func (m *Monitor) stop(why error) {
	m.mu.Lock()
	if !m.stopped {
		m.stopped = true
		m.err = why
		m.queue = nil
		m.cond.Signal()
	}
	m.mu.Unlock()
}

func (m *Monitor) deliver() {
	defer close(m.done)
	for {
		m.mu.Lock()
		for len(m.queue) == 0 && !m.stopped {
			m.cond.Wait()
		}
		if m.stopped {
			m.mu.Unlock()
			return
		}
		u := m.queue[0]
		m.queue[0] = nil
		m.queue = m.queue[1:]
		m.mu.Unlock()
		m.fn(u)
	}
}

// Done is closed once the monitor stopped and its callback returned.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Err says why the monitor stopped (nil while running): ErrCanceled after
// Cancel, or the connection's error.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// ErrCanceled is the Err of a monitor stopped by Cancel.
var ErrCanceled = errors.New("monitor canceled")

// timeoutAfterCancel bounds the clean-up requests sent after the caller's
// own context ended.
const timeoutAfterCancel = 2 * time.Second

// Cancel stops the monitor (no callback starts after Cancel returns) and
// tells the server with monitor_cancel. It is safe to call more than once
// and from inside the callback.
func (m *Monitor) Cancel(ctx context.Context) error {
	m.c.mu.Lock()
	_, registered := m.c.monitors[m.id]
	delete(m.c.monitors, m.id)
	m.c.mu.Unlock()
	m.stop(ErrCanceled)
	if !registered {
		return nil
	}
	if _, err := m.c.call(ctx, "monitor_cancel", []any{m.id}, nil); err != nil {
		if errors.Is(err, ErrClosed) || errors.Is(err, ErrDisconnected) {
			return nil // the server forgot the monitor with the session
		}
		return fmt.Errorf("ovsdb: monitor_cancel %s: %w", m.id, err)
	}
	return nil
}
