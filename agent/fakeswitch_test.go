package agent

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"nvi/openflow"
)

// fakeSwitch is just enough of an OpenFlow switch for the agent's session
// logic: it keeps the flows it is sent (adds, and deletes by cookie), says
// them back in flow stats with counters a test sets, and answers barriers.
type fakeSwitch struct {
	t  *testing.T
	mu sync.Mutex
	// flows by cookie; each add of the same table and match replaces.
	flows   map[uint64][]*openflow.FlowMod
	packets map[pktKey]uint64 // counters a test sets, per cookie and table
	// stall makes flow stats requests go unanswered (a slow switch).
	stall bool
	outs  []*openflow.PacketOut // packet-outs the agent sent
	wmu   sync.Mutex
}

type pktKey struct {
	cookie uint64
	table  uint8
}

// connectFakeSwitch gives a.sw a connection to a new fake switch.
func connectFakeSwitch(t *testing.T, a *Agent) *fakeSwitch {
	t.Helper()
	fs := &fakeSwitch{t: t, flows: map[uint64][]*openflow.FlowMod{}, packets: map[pktKey]uint64{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	attachSwitch(t, ctx, a, fs.serve)
	return fs
}

// attachSwitch serves each connection to a new unix socket with serve, and
// makes a.sw the agent's link to it until ctx ends; it returns once the
// link is up, with a channel closed once the link has closed its
// connection.
func attachSwitch(t *testing.T, ctx context.Context, a *Agent, serve func(net.Conn)) <-chan struct{} {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "of.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go serve(nc)
		}
	}()
	a.sw = &switchConn{a: a, link: openflow.NewLink(openflow.LinkConfig{Network: "unix", Addr: sock, Logger: quietLog()})}
	done := make(chan struct{})
	go func() { defer close(done); _ = a.sw.link.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := a.sw.waitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	return done
}

func (fs *fakeSwitch) send(nc net.Conn, m openflow.Message, xid uint32) {
	b, err := openflow.Marshal(m, xid)
	if err != nil {
		fs.t.Errorf("fake switch: %v", err)
		return
	}
	fs.wmu.Lock()
	defer fs.wmu.Unlock()
	_, _ = nc.Write(b)
}

func (fs *fakeSwitch) serve(nc net.Conn) {
	defer nc.Close()
	go fs.send(nc, openflow.Hello{Versions: []uint8{openflow.Version}}, 1)
	eachMessage(nc, func(m openflow.Message, xid uint32) { fs.handle(nc, m, xid) })
}

// eachMessage reads OpenFlow messages from nc until it fails, skipping
// those that do not decode.
func eachMessage(nc net.Conn, f func(openflow.Message, uint32)) {
	for {
		b, err := openflow.ReadMessage(nc)
		if err != nil {
			return
		}
		m, xid, err := openflow.Unmarshal(b)
		if err != nil {
			continue
		}
		f(m, xid)
	}
}

// handle answers one message.
func (fs *fakeSwitch) handle(nc net.Conn, m openflow.Message, xid uint32) {
	switch m := m.(type) {
	case *openflow.EchoRequest:
		fs.send(nc, openflow.EchoReply(*m), xid)
	case *openflow.FeaturesRequest:
		fs.send(nc, openflow.FeaturesReply{DatapathID: 1, NTables: 254}, xid)
	case *openflow.BarrierRequest:
		fs.send(nc, openflow.BarrierReply{}, xid)
	case *openflow.FlowMod:
		fs.apply(m)
	case *openflow.PacketOut:
		fs.mu.Lock()
		fs.outs = append(fs.outs, m)
		fs.mu.Unlock()
	case *openflow.MultipartRequest:
		req, ok := m.Body.(openflow.FlowStatsRequest)
		if !ok {
			return
		}
		fs.mu.Lock()
		stall := fs.stall
		var out openflow.FlowStatsReply
		for c, fms := range fs.flows {
			if c&req.CookieMask != req.Cookie&req.CookieMask {
				continue
			}
			for _, f := range fms {
				out = append(out, openflow.FlowStats{TableID: f.TableID, Priority: f.Priority, Cookie: f.Cookie, PacketCount: fs.packets[pktKey{c, f.TableID}], Match: f.Match, Instructions: f.Instructions})
			}
		}
		fs.mu.Unlock()
		if !stall {
			fs.send(nc, openflow.MultipartReply{MPType: openflow.MPFlow, Body: out}, xid)
		}
	}
}

func (fs *fakeSwitch) apply(m *openflow.FlowMod) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	switch m.Command {
	case openflow.FlowAdd:
		key := m.Match.String()
		fms := fs.flows[m.Cookie]
		for i, f := range fms {
			if f.TableID == m.TableID && f.Priority == m.Priority && f.Match.String() == key {
				fms[i] = m
				return
			}
		}
		fs.flows[m.Cookie] = append(fms, m)
	case openflow.FlowDelete, openflow.FlowDeleteStrict:
		for c := range fs.flows {
			if c&m.CookieMask == m.Cookie&m.CookieMask {
				delete(fs.flows, c)
			}
		}
	}
}

// count is the number of flows with cookie c.
func (fs *fakeSwitch) count(c uint64) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.flows[c])
}

// total is the number of flows whose cookie matches c under mask.
func (fs *fakeSwitch) total(c, mask uint64) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := 0
	for k, fms := range fs.flows {
		if k&mask == c&mask {
			n += len(fms)
		}
	}
	return n
}

var errTimeout = errors.New("timed out")

// eventually polls cond for up to 5 s.
func eventually(cond func() bool) error {
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return nil
		}
	}
	return errTimeout
}
