package openflow

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// fakeSwitch is the switch side of an OpenFlow connection for tests. It
// greets with an OpenFlow 1.3 hello, answers echo, features and barrier
// requests itself, and hands every other message to handle, in order, so a
// test can script replies (and their order relative to barrier replies).
type fakeSwitch struct {
	t      testing.TB
	nc     net.Conn
	wmu    sync.Mutex
	handle func(fs *fakeSwitch, m Message, xid uint32)

	// hello is what the switch greets with; nil sends Hello{Versions: [4]}.
	hello    Message
	features FeaturesReply
	// noEcho makes the switch ignore echo requests (to test timeouts).
	noEcho bool

	mu       sync.Mutex
	received []Message
	done     chan struct{}
	err      error
}

func newFakeSwitch(t testing.TB, nc net.Conn, handle func(fs *fakeSwitch, m Message, xid uint32)) *fakeSwitch {
	return &fakeSwitch{t: t, nc: nc, handle: handle, done: make(chan struct{}),
		features: FeaturesReply{DatapathID: 0xabcdef, NBuffers: 0, NTables: 254, Capabilities: CapFlowStats | CapTableStats | CapPortStats}}
}

// start runs the switch in a goroutine until the connection ends.
func (fs *fakeSwitch) start() *fakeSwitch {
	go fs.run()
	return fs
}

func (fs *fakeSwitch) send(m Message, xid uint32) {
	b, err := Marshal(m, xid)
	if err != nil {
		fs.t.Errorf("fake switch: marshal %T: %v", m, err)
		return
	}
	fs.sendRaw(b)
}

func (fs *fakeSwitch) sendRaw(b []byte) {
	fs.wmu.Lock()
	defer fs.wmu.Unlock()
	_, _ = fs.nc.Write(b)
}

func (fs *fakeSwitch) messages() []Message {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]Message(nil), fs.received...)
}

func (fs *fakeSwitch) run() {
	defer close(fs.done)
	defer fs.nc.Close()
	hello := fs.hello
	if hello == nil {
		hello = Hello{Versions: []uint8{Version}}
	}
	go fs.send(hello, 1) // net.Pipe writes block until read
	for {
		b, err := ReadMessage(fs.nc)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
				fs.err = err
			}
			return
		}
		m, xid, err := Unmarshal(b)
		if err != nil {
			fs.err = err
			fs.t.Logf("fake switch: %v", err)
			continue
		}
		fs.mu.Lock()
		fs.received = append(fs.received, m)
		fs.mu.Unlock()
		switch m := m.(type) {
		case *Hello:
		case *EchoRequest:
			if !fs.noEcho {
				fs.send(EchoReply(*m), xid)
			}
		case *FeaturesRequest:
			fs.send(fs.features, xid)
		case *MultipartRequest:
			// ovs-ofctl asks for table features (to learn table names)
			// before it sends flow mods; like a switch without the
			// feature, refuse.
			if _, ok := m.Body.(TableFeaturesRequest); ok {
				fs.send(ErrorMsg{ErrType: ErrTypeBadRequest, Code: BadRequestBadMultipart, Data: mustMarshal(fs.t, m, xid)}, xid)
			} else if fs.handle != nil {
				fs.handle(fs, m, xid)
			}
		case *BarrierRequest:
			if fs.handle != nil {
				fs.handle(fs, m, xid)
			}
			fs.send(BarrierReply{}, xid)
		default:
			if fs.handle != nil {
				fs.handle(fs, m, xid)
			}
		}
	}
}
