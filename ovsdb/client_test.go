package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeServer is the far end of a socketpair: tests read the client's
// requests and write whatever bytes they like, valid or not.
type fakeServer struct {
	t    testing.TB
	conn net.Conn
	dec  *json.Decoder
}

// request is what the fake decodes from the client.
type request struct {
	Method string            `json:"method"`
	Params []json.RawMessage `json:"params"`
	ID     json.RawMessage   `json:"id"`
	Result json.RawMessage   `json:"result"`
	Error  json.RawMessage   `json:"error"`
}

func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("socketpair-%d", i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// newFake returns a client (keepalive off unless opts say otherwise)
// connected to a fake server.
func newFake(t testing.TB, opts ...Option) (*Client, *fakeServer) {
	a, b := socketPair(t)
	c := NewClient(a, append([]Option{WithLogger(quietLog), WithKeepalive(0)}, opts...)...)
	f := &fakeServer{t: t, conn: b, dec: json.NewDecoder(b)}
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, f
}

func (f *fakeServer) recv() request {
	f.t.Helper()
	_ = f.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var r request
	if err := f.dec.Decode(&r); err != nil {
		f.t.Fatalf("fake server: read: %v", err)
	}
	return r
}

func (f *fakeServer) send(s string) {
	f.t.Helper()
	if _, err := f.conn.Write([]byte(s)); err != nil {
		f.t.Fatalf("fake server: write: %v", err)
	}
}

func (f *fakeServer) reply(id json.RawMessage, result string) {
	f.t.Helper()
	f.send(fmt.Sprintf(`{"id":%s,"result":%s,"error":null}`, id, result))
}

type callResult struct {
	res json.RawMessage
	err error
}

// goCall runs Call in the background.
func goCall(c *Client, ctx context.Context, method string, params ...any) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		res, err := c.Call(ctx, method, params...)
		ch <- callResult{res, err}
	}()
	return ch
}

func wait[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

func TestListDBsAndSchema(t *testing.T) {
	c, f := newFake(t)
	ctx := context.Background()
	done := make(chan error, 1)
	go func() {
		dbs, err := c.ListDBs(ctx)
		if err == nil && (len(dbs) != 2 || dbs[1] != "_Server") {
			err = fmt.Errorf("dbs %v", dbs)
		}
		if err == nil {
			var s *Schema
			s, err = c.GetSchema(ctx, "Open_vSwitch")
			if err == nil && (s.Version != "8.3.1" || !s.Tables["Bridge"].IsRoot || s.Tables["Bridge"].Columns["name"].Mutable == nil) {
				err = fmt.Errorf("schema %+v", s)
			}
		}
		done <- err
	}()
	r := f.recv()
	if r.Method != "list_dbs" || len(r.Params) != 0 || string(r.ID) == "null" {
		t.Fatalf("list_dbs request %+v", r)
	}
	f.reply(r.ID, `["Open_vSwitch","_Server"]`)
	r = f.recv()
	if r.Method != "get_schema" || string(r.Params[0]) != `"Open_vSwitch"` {
		t.Fatalf("get_schema request %+v", r)
	}
	f.reply(r.ID, `{"name":"Open_vSwitch","version":"8.3.1","tables":{"Bridge":{"isRoot":true,"columns":{"name":{"type":"string","mutable":false}}}}}`)
	if err := wait(t, done); err != nil {
		t.Fatal(err)
	}
}

// Replies come back in reverse order; each caller must get its own.
func TestConcurrentCallsMatchedByID(t *testing.T) {
	c, f := newFake(t)
	const n = 20
	results := make([]<-chan callResult, n)
	for i := range n {
		results[i] = goCall(c, context.Background(), "echo", i)
	}
	var reqs []request
	for range n {
		reqs = append(reqs, f.recv())
	}
	seen := map[string]bool{}
	for i := len(reqs) - 1; i >= 0; i-- {
		if seen[string(reqs[i].ID)] {
			t.Fatalf("duplicate request id %s", reqs[i].ID)
		}
		seen[string(reqs[i].ID)] = true
		f.reply(reqs[i].ID, fmt.Sprintf("[%s]", reqs[i].Params[0]))
	}
	for i, ch := range results {
		r := wait(t, ch)
		if r.err != nil || string(r.res) != fmt.Sprintf("[%d]", i) {
			t.Errorf("call %d: %s, %v", i, r.res, r.err)
		}
	}
}

func TestErrorReplies(t *testing.T) {
	c, f := newFake(t)
	for _, tc := range []struct{ wire, want string }{
		{`{"error":"unknown database","details":"get_schema asked for database \"x\""}`, `server error: unknown database: get_schema asked for database "x"`},
		{`"not allowed"`, "server error: not allowed"},
		{`{"weird":1}`, `server error: {"weird":1}`},
	} {
		ch := goCall(c, context.Background(), "get_schema", "x")
		r := f.recv()
		f.send(fmt.Sprintf(`{"id":%s,"result":null,"error":%s}`, r.ID, tc.wire))
		res := wait(t, ch)
		var re *RPCError
		if !errors.As(res.err, &re) || re.Method != "get_schema" {
			t.Fatalf("got %v, want RPCError", res.err)
		}
		if want := "ovsdb: get_schema: " + tc.want; res.err.Error() != want {
			t.Errorf("got %q, want %q", res.err, want)
		}
	}
}

func TestTransactOpErrorNamesOperation(t *testing.T) {
	c, f := newFake(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Transact(context.Background(), "Open_vSwitch",
			Insert("Interface", Row{"name": "a"}, "i"),
			Insert("Port", Row{"name": "a", "interfaces": NamedUUID("i")}, "p"),
		)
		done <- err
	}()
	r := f.recv()
	if r.Method != "transact" || len(r.Params) != 3 || string(r.Params[0]) != `"Open_vSwitch"` {
		t.Fatalf("transact request %+v", r)
	}
	f.reply(r.ID, `[{"uuid":["uuid","u"]},{"error":"constraint violation","details":"Transaction causes multiple rows in \"Port\" table to have identical values (\"a\") for index on column \"name\"."}]`)
	err := wait(t, done)
	var oe *OpError
	if !errors.As(err, &oe) || oe.Index != 1 || oe.Op != "insert Port" || !IsOpError(err, "constraint violation") {
		t.Fatalf("got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "ovsdb: transact Open_vSwitch: operation 1 (insert Port) failed: constraint violation: ") {
		t.Errorf("message %q", err)
	}
	// A bad Go value fails before anything is sent.
	_, err = c.Transact(context.Background(), "Open_vSwitch", Select("Port", nil), Insert("Port", Row{"x": struct{}{}}, ""))
	if err == nil || !strings.Contains(err.Error(), "operation 1 (insert Port)") {
		t.Errorf("bad value: %v", err)
	}
}

func TestAnswersServerEcho(t *testing.T) {
	c, f := newFake(t)
	f.send(`{"method":"echo","params":["x",1],"id":"echo"}`)
	r := f.recv()
	if string(r.ID) != `"echo"` || string(r.Result) != `["x",1]` || string(r.Error) != "null" {
		t.Fatalf("echo reply %+v (result %s)", r, r.Result)
	}
	f.send(`{"method":"lock","params":["x"],"id":5}`)
	r = f.recv()
	if string(r.ID) != "5" || !strings.Contains(string(r.Error), "unknown method") {
		t.Fatalf("unknown request reply %+v", r)
	}
	// Notifications we do not handle are ignored; the session lives on.
	f.send(`{"method":"locked","params":["x"],"id":null}`)
	ch := goCall(c, context.Background(), "echo")
	r = f.recv()
	f.reply(r.ID, "[]")
	if res := wait(t, ch); res.err != nil {
		t.Fatal(res.err)
	}
}

// Valid JSON that is not a valid reply is dropped; the session survives.
func TestIgnoresStrayMessages(t *testing.T) {
	c, f := newFake(t)
	ch := goCall(c, context.Background(), "echo")
	r := f.recv()
	f.send(`42 "str" [1,2] null {} {"id":"abc","result":1} {"id":99999,"result":1} {"id":-1,"result":1}`)
	f.send(`{"method":"update","params":"nope","id":null} {"method":"update","params":[{},{}],"id":null}`)
	f.send(`{"method":"update","params":["nobody",{}],"id":null} {"method":7}`)
	f.reply(r.ID, `["ok"]`)
	if res := wait(t, ch); res.err != nil || string(res.res) != `["ok"]` {
		t.Fatalf("got %s, %v", res.res, res.err)
	}
	// A reply with neither result nor error fails just that call.
	ch = goCall(c, context.Background(), "echo")
	r = f.recv()
	f.send(fmt.Sprintf(`{"id":%s}`, r.ID))
	if res := wait(t, ch); res.err == nil || !strings.Contains(res.err.Error(), "no result") {
		t.Fatalf("empty reply: %v", res.err)
	}
	if c.Err() != nil {
		t.Fatalf("session ended: %v", c.Err())
	}
}

func TestGarbageEndsSessionAndFailsCalls(t *testing.T) {
	for name, garbage := range map[string]string{
		"not json":  "hello\n",
		"truncated": `{"id":1,"result":[`,
		"bad token": `{"id":1,"result":]}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, f := newFake(t)
			var chans []<-chan callResult
			for range 3 {
				chans = append(chans, goCall(c, context.Background(), "transact", "Open_vSwitch"))
			}
			for range 3 {
				f.recv()
			}
			f.send(garbage)
			f.conn.(*net.UnixConn).CloseWrite()
			for _, ch := range chans {
				res := wait(t, ch)
				if !errors.Is(res.err, ErrDisconnected) {
					t.Errorf("outstanding call: %v, want ErrDisconnected", res.err)
				}
			}
			wait(t, c.Done())
			if _, err := c.Call(context.Background(), "echo"); !errors.Is(err, ErrDisconnected) {
				t.Errorf("later call: %v", err)
			}
			if !errors.Is(c.Err(), ErrDisconnected) || !strings.Contains(c.Err().Error(), "pipe") && !strings.Contains(c.Err().Error(), "unix") {
				t.Errorf("Err() = %v", c.Err())
			}
		})
	}
}

func TestServerHangupFailsCalls(t *testing.T) {
	c, f := newFake(t)
	ch := goCall(c, context.Background(), "echo")
	f.recv()
	f.conn.Close()
	res := wait(t, ch)
	if !errors.Is(res.err, ErrDisconnected) || !strings.Contains(res.err.Error(), "EOF") {
		t.Fatalf("got %v", res.err)
	}
}

func TestCloseFailsCalls(t *testing.T) {
	c, f := newFake(t)
	ch := goCall(c, context.Background(), "echo")
	f.recv()
	c.Close()
	if res := wait(t, ch); !errors.Is(res.err, ErrClosed) {
		t.Fatalf("outstanding: %v", res.err)
	}
	if err := c.Echo(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	c.Close() // twice is fine
}

func TestCancelTransactSendsCancel(t *testing.T) {
	c, f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Transact(ctx, "Open_vSwitch", Wait("Bridge", nil, nil, "!=", nil, 60000))
		done <- err
	}()
	r := f.recv()
	cancel()
	if err := wait(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	cr := f.recv()
	if cr.Method != "cancel" || string(cr.ID) != "null" || len(cr.Params) != 1 || string(cr.Params[0]) != string(r.ID) {
		t.Fatalf("cancel notification %+v", cr)
	}
	// The server then answers the original request with an error; that late
	// reply is dropped and the session carries on.
	f.send(fmt.Sprintf(`{"id":%s,"result":null,"error":"canceled"}`, r.ID))
	ch := goCall(c, context.Background(), "echo")
	r = f.recv()
	f.reply(r.ID, "[]")
	if res := wait(t, ch); res.err != nil {
		t.Fatal(res.err)
	}
	// An already-expired context sends nothing.
	if _, err := c.Call(ctx, "echo"); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestKeepalive(t *testing.T) {
	t.Run("answered", func(t *testing.T) {
		c, f := newFake(t, WithKeepalive(40*time.Millisecond))
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var r request
				if f.dec.Decode(&r) != nil {
					return
				}
				if r.Method == "echo" {
					f.conn.Write(fmt.Appendf(nil, `{"id":%s,"result":[],"error":null}`, r.ID))
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		if err := c.Err(); err != nil {
			t.Fatalf("session ended although echoes were answered: %v", err)
		}
		close(stop)
		c.Close()
		wg.Wait()
	})
	t.Run("unanswered", func(t *testing.T) {
		c, f := newFake(t, WithKeepalive(40*time.Millisecond))
		r := f.recv()
		if r.Method != "echo" {
			t.Fatalf("got %q, want echo", r.Method)
		}
		wait(t, c.Done())
		if err := c.Err(); !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "keepalive") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestMonitorDeliversInOrder(t *testing.T) {
	c, f := newFake(t)
	got := make(chan TableUpdates, 10)
	type monResult struct {
		m   *Monitor
		err error
	}
	mch := make(chan monResult, 1)
	go func() {
		m, err := c.Monitor(context.Background(), "Open_vSwitch", map[string]MonitorRequest{
			"Interface": {Columns: []string{"name", "ofport"}, Select: &MonitorSelect{Initial: true, Insert: true, Delete: true, Modify: true}},
		}, func(u TableUpdates) { got <- u })
		mch <- monResult{m, err}
	}()
	r := f.recv()
	if r.Method != "monitor" || len(r.Params) != 3 || string(r.Params[0]) != `"Open_vSwitch"` {
		t.Fatalf("monitor request %+v", r)
	}
	var reqs map[string]map[string]any
	if err := json.Unmarshal(r.Params[2], &reqs); err != nil || reqs["Interface"]["select"].(map[string]any)["modify"] != true {
		t.Fatalf("monitor requests %s: %v", r.Params[2], err)
	}
	monID := r.Params[1]
	// Reply and two updates back to back: the initial contents must still
	// be delivered first.
	f.send(fmt.Sprintf(`{"id":%s,"result":{"Interface":{"u1":{"new":{"name":"a","ofport":1}}}},"error":null}`, r.ID) +
		fmt.Sprintf(`{"method":"update","params":[%s,{"Interface":{"u2":{"new":{"name":"b","ofport":["set",[]]}}}}],"id":null}`, monID) +
		fmt.Sprintf(`{"method":"update","params":[%s,{"Interface":{"u1":{"old":{"ofport":1},"new":{"name":"a","ofport":3}}}}],"id":null}`, monID))
	mr := wait(t, mch)
	if mr.err != nil {
		t.Fatal(mr.err)
	}
	u := wait(t, got)
	if u["Interface"]["u1"].New.String("name") != "a" {
		t.Fatalf("first delivery %+v", u)
	}
	u = wait(t, got)
	if u["Interface"]["u2"].New.String("name") != "b" {
		t.Fatalf("second delivery %+v", u)
	}
	u = wait(t, got)
	if v, _ := u["Interface"]["u1"].Old.Int("ofport"); v != 1 {
		t.Fatalf("third delivery %+v", u)
	}

	cancelDone := make(chan error, 1)
	go func() { cancelDone <- mr.m.Cancel(context.Background()) }()
	r = f.recv()
	if r.Method != "monitor_cancel" || string(r.Params[0]) != string(monID) {
		t.Fatalf("monitor_cancel request %+v", r)
	}
	f.reply(r.ID, "{}")
	if err := wait(t, cancelDone); err != nil {
		t.Fatal(err)
	}
	wait(t, mr.m.Done())
	if !errors.Is(mr.m.Err(), ErrCanceled) {
		t.Errorf("Err() = %v", mr.m.Err())
	}
	// Updates after cancel are dropped.
	f.send(fmt.Sprintf(`{"method":"update","params":[%s,{"Interface":{}}],"id":null}`, monID))
	if err := mr.m.Cancel(context.Background()); err != nil {
		t.Errorf("second cancel: %v", err)
	}
	select {
	case u := <-got:
		t.Fatalf("delivery after cancel: %+v", u)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestMonitorEnds(t *testing.T) {
	start := func(t *testing.T) (*Monitor, *fakeServer, json.RawMessage) {
		c, f := newFake(t)
		mch := make(chan *Monitor, 1)
		go func() {
			m, err := c.Monitor(context.Background(), "db", map[string]MonitorRequest{"T": {}}, func(TableUpdates) {})
			if err != nil {
				t.Error(err)
			}
			mch <- m
		}()
		r := f.recv()
		f.reply(r.ID, `{}`)
		return wait(t, mch), f, r.Params[1]
	}
	t.Run("disconnect", func(t *testing.T) {
		m, f, _ := start(t)
		f.conn.Close()
		wait(t, m.Done())
		if !errors.Is(m.Err(), ErrDisconnected) {
			t.Fatalf("Err() = %v", m.Err())
		}
		if err := m.Cancel(context.Background()); err != nil {
			t.Fatalf("cancel after disconnect: %v", err)
		}
	})
	t.Run("malformed update", func(t *testing.T) {
		m, f, id := start(t)
		f.send(fmt.Sprintf(`{"method":"update","params":[%s,{"T":{"u":{"new":{"c":{}}}}}],"id":null}`, id))
		wait(t, m.Done())
		if m.Err() == nil || !strings.Contains(m.Err().Error(), "malformed") {
			t.Fatalf("Err() = %v", m.Err())
		}
	})
	// refused answers a monitor request with reply and returns Monitor's error.
	refused := func(t *testing.T, reply func(f *fakeServer, id json.RawMessage)) error {
		c, f := newFake(t)
		ch := make(chan error, 1)
		go func() {
			_, err := c.Monitor(context.Background(), "db", map[string]MonitorRequest{"T": {}}, func(TableUpdates) {})
			ch <- err
		}()
		reply(f, f.recv().ID)
		return wait(t, ch)
	}
	t.Run("server refuses", func(t *testing.T) {
		err := refused(t, func(f *fakeServer, id json.RawMessage) {
			f.send(fmt.Sprintf(`{"id":%s,"result":null,"error":{"error":"unknown database"}}`, id))
		})
		var re *RPCError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "ovsdb: monitor db: server error: unknown database") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("bad initial contents", func(t *testing.T) {
		err := refused(t, func(f *fakeServer, id json.RawMessage) { f.reply(id, `[1]`) })
		if err == nil || !strings.Contains(err.Error(), "malformed table updates") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"", "/var/run/db.sock", "ssl:1.2.3.4:6640", "unix:", "tcp"} {
		if _, err := Dial(ctx, addr); err == nil || !strings.Contains(err.Error(), "unix:PATH or tcp:HOST:PORT") {
			t.Errorf("%q: %v", addr, err)
		}
	}
	_, err := Dial(ctx, "unix:"+t.TempDir()+"/none.sock")
	if err == nil || !strings.Contains(err.Error(), "ovsdb: dial unix:") {
		t.Errorf("missing socket: %v", err)
	}
}

func TestDialTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		dec := json.NewDecoder(conn)
		var r request
		if dec.Decode(&r) == nil {
			conn.Write(fmt.Appendf(nil, `{"id":%s,"result":["Open_vSwitch"],"error":null}`, r.ID))
		}
		io.Copy(io.Discard, conn)
	}()
	c, err := Dial(context.Background(), "tcp:"+ln.Addr().String(), WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if dbs, err := c.ListDBs(context.Background()); err != nil || len(dbs) != 1 {
		t.Fatalf("%v %v", dbs, err)
	}
	if c.Addr() != "tcp:"+ln.Addr().String() {
		t.Errorf("Addr() = %q", c.Addr())
	}
}

// While a caller's large write is stuck because the server is not reading,
// the reader must keep going: an echo request from the server must not
// wedge it behind that write.
func TestReaderNotBlockedByStuckWrite(t *testing.T) {
	c, f := newFake(t)
	got := make(chan TableUpdates, 1)
	mch := make(chan *Monitor, 1)
	go func() {
		m, err := c.Monitor(context.Background(), "db", map[string]MonitorRequest{"T": {}}, func(u TableUpdates) {
			if len(u) > 0 {
				got <- u
			}
		})
		if err != nil {
			t.Error(err)
		}
		mch <- m
	}()
	r := f.recv()
	f.reply(r.ID, `{}`)
	monID := r.Params[1]
	wait(t, mch)

	big := make(chan error, 1)
	go func() {
		_, err := c.Transact(context.Background(), "db", Comment(strings.Repeat("x", 2<<20)))
		big <- err
	}()
	// Wait until the big write holds the stream (blocked on full buffers).
	for deadline := time.Now().Add(5 * time.Second); c.writeMu.TryLock(); time.Sleep(time.Millisecond) {
		c.writeMu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("big write never started")
		}
	}
	f.send(`{"method":"echo","params":[],"id":"e1"}`)
	f.send(fmt.Sprintf(`{"method":"update","params":[%s,{"T":{"u":{"new":{"c":1}}}}],"id":null}`, monID))
	wait(t, got)

	// Drain: the big transact, then the echo reply, both arrive intact.
	r = f.recv()
	if r.Method != "transact" {
		t.Fatalf("got %+v", r)
	}
	f.reply(r.ID, `[{}]`)
	if err := wait(t, big); err != nil {
		t.Fatal(err)
	}
	if r = f.recv(); string(r.ID) != `"e1"` {
		t.Fatalf("echo reply %+v", r)
	}
}

// A write stuck on a server that stopped reading gives up with the caller's
// context; half a message is on the wire then, so the session must end.
func TestStuckWriteHonoursContext(t *testing.T) {
	c, f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		_, err := c.Transact(ctx, "db", Comment(strings.Repeat("x", 2<<20)))
		done <- result{err, time.Since(start)}
	}()
	// The write has begun once its first byte reaches the server, which
	// then reads no more: cancel only then (cancelled earlier, nothing is
	// written and only the call fails, which is another case).
	_ = f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(f.conn, make([]byte, 1)); err != nil {
		t.Fatalf("the write never started: %v", err)
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a write stuck on a server that stopped reading ignored its cancelled context")
	}
	if r.err == nil {
		t.Fatal("a cancelled stuck write succeeded")
	}
	t.Logf("stuck write: %v after %v", r.err, r.took)
	wait(t, c.Done())
	if !errors.Is(c.Err(), ErrDisconnected) || !errors.Is(r.err, ErrDisconnected) || !errors.Is(r.err, context.Canceled) {
		t.Fatalf("call: %v; session: %v", r.err, c.Err())
	}
}
