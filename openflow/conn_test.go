package openflow

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testLogger logs through t, so failures show the connection's story.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// pipeConn connects a Conn to a fake switch over net.Pipe.
func pipeConn(t *testing.T, handle func(fs *fakeSwitch, m Message, xid uint32), setup func(fs *fakeSwitch), opts ...Option) (*Conn, *fakeSwitch) {
	t.Helper()
	a, b := net.Pipe()
	fs := newFakeSwitch(t, b, handle)
	if setup != nil {
		setup(fs)
	}
	fs.start()
	c, err := NewConn(a, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		<-fs.done
	})
	return c, fs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConnHandshake(t *testing.T) {
	c, fs := pipeConn(t, nil, nil)
	if got := c.Features().DatapathID; got != 0xabcdef {
		t.Errorf("dpid %x", got)
	}
	msgs := fs.messages()
	if len(msgs) < 2 {
		t.Fatalf("switch saw %v", msgs)
	}
	if h, ok := msgs[0].(*Hello); !ok || !h.Supports(Version) {
		t.Errorf("first message %v, want a hello offering 1.3", msgs[0])
	}
	if _, ok := msgs[1].(*FeaturesRequest); !ok {
		t.Errorf("second message %v, want features request", msgs[1])
	}
}

func TestConnHandshakeVersions(t *testing.T) {
	hello10 := func(version uint8) []byte {
		return []byte{version, 0, 0, 8, 0, 0, 0, 1}
	}
	cases := []struct {
		name   string
		greet  func(nc net.Conn)
		wantOK bool
		want   error
	}{
		{"bitmap without 1.3", func(nc net.Conn) { nc.Write(mustMarshal(t, Hello{Versions: []uint8{1, 2}}, 1)) }, false, ErrVersion},
		{"bitmap with 1.3 and 1.5", func(nc net.Conn) { nc.Write(mustMarshal(t, Hello{Versions: []uint8{4, 6}}, 1)) }, true, nil},
		{"plain hello 1.0", func(nc net.Conn) { nc.Write(hello10(1)) }, false, ErrVersion},
		{"plain hello 1.5", func(nc net.Conn) { nc.Write(hello10(6)) }, true, nil},
		{"features reply first", func(nc net.Conn) { nc.Write(mustMarshal(t, FeaturesReply{}, 1)) }, false, ErrMalformed},
		{"garbage", func(nc net.Conn) { nc.Write([]byte("GET / HTTP/1.1\r\n\r\n")) }, false, ErrMalformed},
		{"silence", func(nc net.Conn) {}, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			var mu sync.Mutex
			var got []Message
			go func() {
				defer b.Close()
				go tc.greet(b)
				for {
					raw, err := ReadMessage(b)
					if err != nil {
						return
					}
					m, xid, err := Unmarshal(raw)
					if err != nil {
						return
					}
					mu.Lock()
					got = append(got, m)
					mu.Unlock()
					if _, ok := m.(*FeaturesRequest); ok {
						b.Write(mustMarshal(t, FeaturesReply{DatapathID: 1}, xid))
					}
				}
			}()
			c, err := NewConn(a, testLogger(t), WithHandshakeTimeout(300*time.Millisecond))
			if tc.wantOK {
				if err != nil {
					t.Fatalf("NewConn: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			t.Logf("error: %v", err)
			if errors.Is(err, ErrVersion) {
				sawHelloFailed := func() bool {
					mu.Lock()
					defer mu.Unlock()
					for _, m := range got {
						if em, ok := m.(*ErrorMsg); ok && em.ErrType == ErrTypeHelloFailed {
							return true
						}
					}
					return false
				}
				for deadline := time.Now().Add(5 * time.Second); !sawHelloFailed(); time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("switch was not told HELLO_FAILED")
					}
				}
			}
		})
	}
}

// TestConnEcho: the Conn probes the switch at its interval and stays up
// while the switch answers.
func TestConnEcho(t *testing.T) {
	c, fs := pipeConn(t, nil, nil, WithEchoInterval(10*time.Millisecond), WithEchoTimeout(200*time.Millisecond))
	time.Sleep(150 * time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("connection died: %v", c.Err())
	}
	if n := len(onlyOfType[EchoRequest](fs.messages())); n < 2 {
		t.Errorf("Conn sent %d echo requests in 150ms at a 10ms interval", n)
	}
}

func TestConnAnswersEcho(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		// A hand-driven switch: greet, answer features, then ping.
		go b.Write(mustMarshal(t, Hello{Versions: []uint8{4}}, 1))
		for {
			raw, err := ReadMessage(b)
			if err != nil {
				return
			}
			m, xid, _ := Unmarshal(raw)
			switch m := m.(type) {
			case *FeaturesRequest:
				b.Write(mustMarshal(t, FeaturesReply{DatapathID: 2}, xid))
				b.Write(mustMarshal(t, EchoRequest{Data: []byte("ping")}, 77))
			case *EchoReply:
				if xid != 77 || string(m.Data) != "ping" {
					t.Errorf("echo reply xid=%d data=%q", xid, m.Data)
				}
				b.Close()
				return
			}
		}
	}()
	c, err := NewConn(a, testLogger(t), WithEchoInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("switch never got its echo reply")
	}
}

func TestConnEchoTimeout(t *testing.T) {
	c, _ := pipeConn(t, nil, func(fs *fakeSwitch) { fs.noEcho = true },
		WithEchoInterval(10*time.Millisecond), WithEchoTimeout(100*time.Millisecond))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection to a silent switch stayed up")
	}
	if !errors.Is(c.Err(), ErrEchoTimeout) {
		t.Errorf("Err() = %v, want ErrEchoTimeout", c.Err())
	}
	if _, ok := <-c.Async(); ok {
		t.Error("Async not closed")
	}
}

func TestConnMultipartReassembly(t *testing.T) {
	flows := FlowStatsReply{
		{TableID: 1, Priority: 10, Match: Match{Fields: []Field{InPort(1)}}},
		{TableID: 2, Priority: 20},
		{TableID: 3, Priority: 30, Instructions: []Instruction{InstructionGotoTable{TableID: 4}}},
	}
	c, _ := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
		if req, ok := m.(*MultipartRequest); ok {
			if _, ok := req.Body.(FlowStatsRequest); !ok {
				return
			}
			fs.send(MultipartReply{Flags: MultipartMore, Body: flows[:1]}, xid)
			// An unrelated asynchronous message between parts.
			fs.send(PacketIn{BufferID: NoBuffer, TableID: 9, Data: []byte{1, 2}}, 0)
			fs.send(MultipartReply{Flags: MultipartMore, Body: flows[1:2]}, xid)
			fs.send(MultipartReply{Body: flows[2:]}, xid)
		}
	}, nil)
	got, err := c.FlowStats(ctxT(t), NewFlowStatsRequest())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].TableID != 1 || got[2].Instructions[0] != (InstructionGotoTable{TableID: 4}) {
		t.Errorf("got %v", got)
	}
	select {
	case m := <-c.Async():
		if pi, ok := m.(*PacketIn); !ok || pi.TableID != 9 {
			t.Errorf("async got %v", m)
		}
	case <-time.After(2 * time.Second):
		t.Error("packet-in not delivered")
	}
}

func TestConnBarrierReturnsErrors(t *testing.T) {
	var handled atomic.Int32
	var bad uint32
	c, _ := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
		if fm, ok := m.(*FlowMod); ok && fm.Priority == 666 {
			fs.send(ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6, Data: mustMarshal(t, fm, xid)}, xid)
		}
	}, nil, WithErrorHandler(func(*ErrorMsg) { handled.Add(1) }))
	ctx := ctxT(t)

	good := NewFlowMod(FlowAdd, 0, 1)
	evil := NewFlowMod(FlowAdd, 0, 666)
	if _, err := c.Send(good); err != nil {
		t.Fatal(err)
	}
	bad, err := c.Send(evil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(good); err != nil {
		t.Fatal(err)
	}
	err = c.Barrier(ctx)
	em, ok := IsSwitchError(err)
	if !ok {
		t.Fatalf("Barrier = %v, want the switch's error", err)
	}
	if x, _ := em.FailedXid(); x != bad || em.Name() != "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD" {
		t.Errorf("error %v for xid %d, want BAD_FIELD for %d", em, x, bad)
	}
	if !errors.Is(err, &ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6}) {
		t.Errorf("errors.Is does not match %v", err)
	}
	if !strings.Contains(err.Error(), "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD") || !strings.Contains(err.Error(), "FLOW_MOD") {
		t.Errorf("error text %q", err)
	}
	// The next barrier starts clean.
	if err := c.Barrier(ctx); err != nil {
		t.Errorf("second barrier: %v", err)
	}
	if handled.Load() != 1 {
		t.Errorf("error handler called %d times", handled.Load())
	}
	select {
	case m := <-c.Async():
		if _, ok := m.(*ErrorMsg); !ok {
			t.Errorf("async got %v", m)
		}
	case <-time.After(time.Second):
		t.Error("error not on Async")
	}
}

func TestConnRequestErrorReply(t *testing.T) {
	c, _ := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
		switch m.(type) {
		case *GetConfigRequest:
			fs.send(ErrorMsg{ErrType: ErrTypeBadRequest, Code: BadRequestBadType}, xid)
		case *RoleRequest:
			fs.send(RoleReply{Role: RoleMaster, GenerationID: 3}, xid)
		}
	}, nil)
	_, err := c.Request(ctxT(t), GetConfigRequest{})
	if em, ok := IsSwitchError(err); !ok || em.Name() != "OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE" {
		t.Errorf("Request error = %v", err)
	}
	r, err := c.Request(ctxT(t), &RoleRequest{Role: RoleMaster, GenerationID: 3})
	if rr, ok := r.(*RoleReply); err != nil || !ok || rr.GenerationID != 3 {
		t.Errorf("Request = %v, %v", r, err)
	}
}

func TestConnRequestCancel(t *testing.T) {
	release := make(chan struct{})
	c, _ := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
		if _, ok := m.(*GetConfigRequest); ok {
			<-release // answer only after the requester gave up
			fs.send(GetConfigReply{MissSendLen: 128}, xid)
		}
	}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Request(ctx, GetConfigRequest{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Request = %v, want deadline exceeded", err)
	}
	close(release)
	// The late reply must not wedge the reader: later requests work.
	if err := c.Barrier(ctxT(t)); err != nil {
		t.Errorf("barrier after abandoned request: %v", err)
	}
}

// TestConnBadInput: whatever garbage the switch sends after the handshake,
// the connection closes with an error naming the problem, a pending request
// fails instead of hanging, and nothing panics.
func TestConnBadInput(t *testing.T) {
	cases := map[string][]byte{
		"garbage":       []byte("\x00\x00\x00\x00this is not openflow at all"),
		"wrong version": mustMarshalVersion(t, BarrierReply{}, 1),
		"short length":  {4, 21, 0, 4, 0, 0, 0, 1},
		"bad body":      {4, 14, 0, 9, 0, 0, 0, 1, 0}, // flow mod of one byte
		"truncated":     {4, 19, 0, 100, 0, 0, 0, 1, 0, 1, 0, 0},
	}
	for name, garbage := range cases {
		t.Run(name, func(t *testing.T) {
			c, fs := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
				if _, ok := m.(*GetConfigRequest); ok {
					fs.sendRaw(garbage)
					fs.nc.Close()
				}
			}, nil)
			_, err := c.Request(ctxT(t), GetConfigRequest{})
			if err == nil {
				t.Fatal("request succeeded")
			}
			<-c.Done()
			t.Logf("request: %v; conn: %v", err, c.Err())
			if c.Err() == nil {
				t.Error("no connection error")
			}
			if _, ok := <-c.Async(); ok {
				t.Error("Async not closed")
			}
			_ = fs
		})
	}
}

func mustMarshalVersion(t *testing.T, m Message, v uint8) []byte {
	b := mustMarshal(t, m, 1)
	b[0] = v
	return b
}

// TestConnUnsupportedReply: a well-formed message of a type the codec
// does not know fails the waiting request but keeps the connection.
func TestConnUnsupportedReply(t *testing.T) {
	c, _ := pipeConn(t, func(fs *fakeSwitch, m Message, xid uint32) {
		if _, ok := m.(*GetConfigRequest); ok {
			fs.sendRaw([]byte{4, 30, 0, 8, byte(xid >> 24), byte(xid >> 16), byte(xid >> 8), byte(xid)}) // type 30 (OF1.4 TABLE_STATUS)
		}
	}, nil)
	_, err := c.Request(ctxT(t), GetConfigRequest{})
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("Request = %v, want ErrUnsupported", err)
	}
	if err := c.Barrier(ctxT(t)); err != nil {
		t.Errorf("connection unusable afterwards: %v", err)
	}
}

// TestConnConcurrentSenders: many goroutines send and barrier at once;
// every message arrives intact, xids are unique and non-zero.
func TestConnConcurrentSenders(t *testing.T) {
	c, fs := pipeConn(t, nil, nil)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	xids := map[uint32]bool{}
	const senders, each = 8, 50
	for g := 0; g < senders; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				fm := NewFlowMod(FlowAdd, uint8(g), uint16(i))
				xid, err := c.Send(fm)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if xid == 0 || xids[xid] {
					t.Errorf("xid %d reused or zero", xid)
				}
				xids[xid] = true
				mu.Unlock()
				if i%10 == 0 {
					if err := c.Barrier(ctx); err != nil {
						t.Error(err)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	n := len(onlyOfType[FlowMod](fs.messages()))
	if n != senders*each {
		t.Errorf("switch got %d flow mods, want %d", n, senders*each)
	}
}

func TestConnXidsSkipZero(t *testing.T) {
	c := &Conn{}
	c.xid.Store(^uint32(0) - 1)
	for i := 0; i < 4; i++ {
		if x := c.nextXid(); x == 0 {
			t.Fatal("xid 0 allocated")
		}
	}
}

func TestConnClose(t *testing.T) {
	c, _ := pipeConn(t, nil, nil)
	c.Close()
	c.Close()
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err() = %v", c.Err())
	}
	if _, err := c.Send(BarrierRequest{}); err == nil {
		t.Error("Send after Close succeeded")
	}
	if err := c.Barrier(ctxT(t)); err == nil {
		t.Error("Barrier after Close succeeded")
	}
}

// TestLinkReconnects runs a Link against a fake switch on a unix
// socket that first is absent, then drops the connection, then sends
// garbage; the session keeps coming back and runs OnConnect each time.
func TestLinkReconnects(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "br0.nvid")
	var connects atomic.Int32
	s := NewLink(LinkConfig{
		Network: "unix", Addr: sock, Logger: testLogger(t),
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		Options: []Option{WithEchoInterval(0)},
		OnConnect: func(ctx context.Context, c *Conn) error {
			connects.Add(1)
			_, err := c.Send(SetConfig{MissSendLen: 0xffff})
			if err == nil {
				err = c.Barrier(ctx)
			}
			return err
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx) }()

	time.Sleep(50 * time.Millisecond) // a few failed dials first
	if s.Conn() != nil {
		t.Fatal("connected to nothing")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *fakeSwitch, 10)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- newFakeSwitch(t, nc, nil).start()
		}
	}()
	waitConn := func() *Conn {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		c, err := s.Wait(wctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1 := waitConn()
	fs1 := <-accepted
	// The switch goes away: the session notices and reconnects.
	fs1.nc.Close()
	<-c1.Done()
	c2 := waitConn()
	if c2 == c1 {
		t.Fatal("same connection after drop")
	}
	fs2 := <-accepted
	// Garbage: the session drops the connection and reconnects again.
	fs2.sendRaw([]byte("\xff\xff\xff\xffgarbage"))
	<-c2.Done()
	if c2.Err() == nil || !strings.Contains(c2.Err().Error(), "openflow") {
		t.Errorf("garbage error %v", c2.Err())
	}
	c3 := waitConn()
	if err := c3.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if n := connects.Load(); n < 3 {
		t.Errorf("OnConnect ran %d times, want 3", n)
	}
	cancel()
	if err := <-runDone; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	if s.Conn() != nil {
		t.Error("connection left published after Run returned")
	}
	<-c3.Done()
}

// countingConn counts the writes made on it.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestConnApplyWritesOnce: Apply sends its messages and the barrier in
// one write, in order, and reports a message's error like Barrier does.
func TestConnApplyWritesOnce(t *testing.T) {
	a, b := net.Pipe()
	var mu sync.Mutex
	var seen []MsgType
	fs := newFakeSwitch(t, b, func(fs *fakeSwitch, m Message, xid uint32) {
		mu.Lock()
		seen = append(seen, m.Type())
		mu.Unlock()
		if fm, ok := m.(*FlowMod); ok && fm.Priority == 666 {
			fs.send(ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6, Data: mustMarshal(t, fm, xid)}, xid)
		}
	})
	fs.start()
	cc := &countingConn{Conn: a}
	c, err := NewConn(cc, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		<-fs.done
	})
	ctx := ctxT(t)
	out := &PacketOut{BufferID: NoBuffer, InPort: 1, Actions: []Action{ActionOutput{Port: PortTable}}, Data: make([]byte, 60)}

	before := cc.writes.Load()
	if err := c.Apply(ctx, NewFlowMod(FlowAdd, 0, 1), out); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if n := cc.writes.Load() - before; n != 1 {
		t.Errorf("Apply made %d writes, want 1", n)
	}
	mu.Lock()
	got := append([]MsgType(nil), seen...)
	seen = nil
	mu.Unlock()
	if want := []MsgType{TypeFlowMod, TypePacketOut, TypeBarrierRequest}; !slices.Equal(got, want) {
		t.Errorf("the switch saw %v, want %v", got, want)
	}

	err = c.Apply(ctx, NewFlowMod(FlowAdd, 0, 666), out)
	if em, ok := IsSwitchError(err); !ok || em.Name() != "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD" {
		t.Errorf("Apply with a bad flow = %v, want the switch's error", err)
	}
	// A message that cannot be encoded is refused before anything is sent.
	before = cc.writes.Load()
	if err := c.Apply(ctx, &PacketOut{Data: make([]byte, MaxMessageLen)}); !errors.Is(err, ErrTooLong) {
		t.Errorf("Apply of an oversized packet-out = %v, want ErrTooLong", err)
	}
	if n := cc.writes.Load() - before; n != 0 {
		t.Errorf("a refused Apply made %d writes", n)
	}
	if err := c.Apply(ctx); err != nil {
		t.Errorf("Apply of nothing (a barrier): %v", err)
	}
	// Start writes at once; its wait reports the switch's answer.
	before = cc.writes.Load()
	wait, err := c.Start(NewFlowMod(FlowAdd, 0, 666))
	if err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load() - before; n != 1 {
		t.Errorf("Start made %d writes before its wait, want 1", n)
	}
	if _, ok := IsSwitchError(wait(ctx)); !ok {
		t.Error("Start's wait did not report the switch's error")
	}
}
