package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"nvi/pipeline"
	"nvi/session"
)

// The scenario of DESIGN.md: client C (10.1.0.2) on this server A, server
// workload S (10.1.0.3) on server B (192.0.2.2), S listening on 80.
var (
	t0     = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	ipA    = netip.MustParseAddr("192.0.2.1")
	ipB    = netip.MustParseAddr("192.0.2.2")
	macA   = net.HardwareAddr{2, 0, 0xc0, 0, 2, 1}
	macB   = net.HardwareAddr{2, 0, 0xc0, 0, 2, 2}
	peerA  = session.Peer{Name: "a", IP: ipA, NextHop: macA}
	peerB  = session.Peer{Name: "b", IP: ipB, NextHop: macB}
	wlC    = Workload{Port: 10, Name: "c", Endpoint: session.Endpoint{IP: netip.MustParseAddr("10.1.0.2"), MAC: net.HardwareAddr{2, 0xaa, 0, 0, 0, 2}, OFPort: 10}}
	wlS    = Workload{Port: 20, Name: "s", Endpoint: session.Endpoint{IP: netip.MustParseAddr("10.1.0.3"), MAC: net.HardwareAddr{2, 0xaa, 0, 0, 0, 3}, OFPort: 20}}
	wlD    = Workload{Port: 30, Name: "d", Endpoint: session.Endpoint{IP: netip.MustParseAddr("10.1.0.4"), MAC: net.HardwareAddr{2, 0xaa, 0, 0, 0, 4}, OFPort: 30}}
	errAny = errors.New("no answer")
)

const idle = 30 * time.Second

func tuple(p session.Proto, port uint16) session.Tuple {
	return session.Tuple{Tenant: "acme", Proto: p, Client: wlC.Endpoint.IP, Server: wlS.Endpoint.IP, Port: port}
}

// newEngine is an engine with a fixed key source and a key range of
// keyBits keys.
func newEngine(t *testing.T, keyBits int) *Engine {
	t.Helper()
	r := session.KeyRange{Base: 0xf000, Mask: ^uint16(1<<keyBits - 1)}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	keys := session.NewKeyPoolFrom(r, 5*time.Second, rand.NewChaCha8([32]byte{1}))
	keys.SetTenantQuota(r.Size())
	return New(Config{Keys: keys, IdleTimeout: idle, DeafAfter: 5 * time.Second, MaxPerWorkload: 8, MaxHeld: 4})
}

// kinds names effects by type, in order: "Resolve Accept".
func kinds(fx []Effect) string {
	var b strings.Builder
	for i, f := range fx {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strings.TrimPrefix(fmt.Sprintf("%T", f), "engine."))
	}
	return b.String()
}

// only returns the single effect of type T in fx.
func only[T Effect](t *testing.T, fx []Effect) T {
	t.Helper()
	var got []T
	for _, f := range fx {
		if v, ok := f.(T); ok {
			got = append(got, v)
		}
	}
	if len(got) != 1 {
		var zero T
		t.Fatalf("want one %T among [%s]", zero, kinds(fx))
	}
	return got[0]
}

func step(t *testing.T, g *Engine, at time.Duration, ev Event, want string) []Effect {
	t.Helper()
	fx := g.Step(t0.Add(at), ev)
	if got := kinds(fx); got != want {
		t.Fatalf("after %T: effects [%s], want [%s]", ev, got, want)
	}
	return fx
}

// client brings a session from C to S on B up to the given state, and
// returns its ID and key.
func client(t *testing.T, g *Engine, p session.Proto, upTo State) (ID, uint16) {
	t.Helper()
	id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tuple(p, 80), Frame: []byte("syn")}, "Resolve")).ID
	if upTo == Resolving {
		return id, 0
	}
	acc := ask(t, g, time.Millisecond, id)
	if upTo == Agreeing {
		return id, acc.Session.Key
	}
	in := only[Install](t, step(t, g, 2*time.Millisecond, Accepted{ID: id}, "Install"))
	if len(in.Release) != 1 || in.Port != wlC.Port {
		t.Fatalf("the way out releases %q from port %d; want the held syn from %d", in.Release, in.Port, wlC.Port)
	}
	if upTo == Installing {
		return id, acc.Session.Key
	}
	step(t, g, 3*time.Millisecond, Installed{ID: id}, "")
	return id, acc.Session.Key
}

// ask resolves session id toward S on B: its way back goes in while the
// peer is asked (TCP, UDP). It returns the Accept, once the way back is in.
func ask(t *testing.T, g *Engine, at time.Duration, id ID) Accept {
	t.Helper()
	in, acc := resolve(t, g, at, id)
	step(t, g, at, Installed{ID: in.ID}, "")
	return acc
}

// resolve resolves session id toward S on B and returns the install of its
// way back and the Accept sent beside it.
func resolve(t *testing.T, g *Engine, at time.Duration, id ID) (Install, Accept) {
	t.Helper()
	peer := peerB
	fx := step(t, g, at, Resolved{ID: id, RemoteName: "s", RemoteIP: wlS.Endpoint.IP, Peer: &peer}, "Install Accept")
	in := fx[0].(Install)
	if in.Part != ReplyPath || !in.Flows {
		t.Fatalf("the first install of a client is %+v; want its way back", in)
	}
	return in, fx[1].(Accept)
}

func state(t *testing.T, g *Engine, tu session.Tuple) State {
	t.Helper()
	v, ok := g.Lookup(tu)
	if !ok {
		return 0
	}
	return v.State
}

// TestClientLifeCycle walks a client session through its states; the held
// packets come out only after the peer's half was acknowledged and ours
// installed (invariant 1).
func TestClientLifeCycle(t *testing.T) {
	g := newEngine(t, 12)
	tu := tuple(session.TCP, 80)
	id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tu, Frame: []byte("syn")}, "Resolve")).ID
	// More packets of the session are held, not made into new sessions.
	step(t, g, 0, Packet{From: wlC, Tuple: tu, Frame: []byte("syn again")}, "")
	if s := state(t, g, tu); s != Resolving {
		t.Fatalf("state %s", s)
	}
	// The way back goes in first; then the peer is asked, with the
	// packets held so far for it to deliver.
	acc := ask(t, g, time.Millisecond, id)
	if acc.Session.Role != session.RoleClient || acc.Session.Peer.IP != ipB || !session.DefaultKeyRange.Contains(acc.Session.Key) {
		t.Fatalf("Accept asks for %+v", acc.Session)
	}
	if len(acc.Frames) != 2 || string(acc.Frames[0]) != "syn" {
		t.Fatalf("Accept carries %q", acc.Frames)
	}
	step(t, g, time.Millisecond, Packet{From: wlC, Tuple: tu, Frame: []byte("data")}, "")
	in := only[Install](t, step(t, g, 2*time.Millisecond, Accepted{ID: id, Delivered: 1}, "Install"))
	if !in.Flows || in.Part != SendPath || in.Punt.IsValid() || in.Session.Key != acc.Session.Key {
		t.Fatalf("Install %+v", in)
	}
	// The peer took the first; the rest go out right behind our way out.
	if len(in.Release) != 2 || string(in.Release[0]) != "syn again" || string(in.Release[1]) != "data" || in.Port != wlC.Port {
		t.Fatalf("released %q from %d", in.Release, in.Port)
	}
	// An answer that comes twice, or for another step, changes nothing.
	step(t, g, 2*time.Millisecond, Accepted{ID: id}, "")
	step(t, g, 2*time.Millisecond, Removed{ID: id}, "")
	// What comes while the way out goes in is held, and delivered after.
	step(t, g, 2*time.Millisecond, Packet{From: wlC, Tuple: tu, Frame: []byte("more")}, "")
	d := only[Deliver](t, step(t, g, 3*time.Millisecond, Installed{ID: id}, "Deliver"))
	if len(d.Frames) != 1 || string(d.Frames[0]) != "more" || d.Port != wlC.Port {
		t.Fatalf("delivered %q on %d", d.Frames, d.Port)
	}
	v, _ := g.Lookup(tu)
	if v.State != Established || v.Resolve != time.Millisecond || v.Handshake != time.Millisecond || v.Install != time.Millisecond {
		t.Fatalf("view %+v", v)
	}
	// Established: a packet punted before the flows took over goes
	// through the pipeline again at once.
	step(t, g, 4*time.Millisecond, Packet{From: wlC, Tuple: tu, Frame: []byte("late")}, "Deliver")
}

// TestSetupFailures: every way a setup fails ends the session, frees what
// it held, and drops the destination only when it was refused.
func TestSetupFailures(t *testing.T) {
	peer := peerB
	for _, c := range []struct {
		name     string
		upTo     State
		ev       func(ID) Event
		want     string
		keyFree  bool // the key is free again at once (nothing used it)
		dropWhat string
	}{
		{"resolve refused", Resolving, func(id ID) Event { return Failed{ID: id, Err: errAny, Refused: true} }, "Drop", true, "no answer"},
		{"resolve failed", Resolving, func(id ID) Event { return Failed{ID: id, Err: errAny} }, "SetupFailed", true, ""},
		{"peer refused", Agreeing, func(id ID) Event { return Accepted{ID: id, Err: errAny, Refused: true} }, "Remove Drop", true, "peer b: no answer"},
		{"peer silent", Agreeing, func(id ID) Event { return Accepted{ID: id, Err: errAny} }, "Remove SetupFailed", false, ""},
		{"install failed", Installing, func(id ID) Event { return Installed{ID: id, Err: errAny} }, "ReleasePeer Remove SetupFailed", false, ""},
		{"server has no IPv4", Resolving, func(id ID) Event {
			p := peer
			p.IP = netip.MustParseAddr("2001:db8::1")
			return Resolved{ID: id, RemoteName: "s", Peer: &p}
		}, "Drop", true, "no IPv4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newEngine(t, 1) // two keys
			id, key := client(t, g, session.TCP, c.upTo)
			fx := step(t, g, 10*time.Millisecond, c.ev(id), c.want)
			if c.dropWhat != "" {
				if d := only[Drop](t, fx); !strings.Contains(d.Err.Error(), c.dropWhat) || d.Tuple != tuple(session.TCP, 80) || d.Port != wlC.Port {
					t.Fatalf("drop %+v", d)
				}
			}
			if _, ok := g.Lookup(tuple(session.TCP, 80)); ok || len(g.Sessions()) != 0 || g.PerWorkload(wlC.Port) != 0 {
				t.Fatalf("the failed session is still there: %+v", g.Sessions())
			}
			if key == 0 {
				return
			}
			// Both keys are free, or the used one rests.
			free := 2
			if !c.keyFree {
				free = 1
			}
			if got := freeKeys(t, g, 11*time.Millisecond); got != free {
				t.Fatalf("%d keys free after the failure; want %d", got, free)
			}
		})
	}
}

// freeKeys counts the keys toward B that can be allocated at 'at', and
// gives them back unused.
func freeKeys(t *testing.T, g *Engine, at time.Duration) int {
	t.Helper()
	var got []uint16
	for {
		k, err := g.cfg.Keys.Allocate(ipB, session.TCP, "acme", t0.Add(at))
		if err != nil {
			break
		}
		got = append(got, k)
	}
	for _, k := range got {
		g.cfg.Keys.ReleaseUnused(ipB, session.TCP, k)
	}
	return len(got)
}

// TestKeysRest: a key is never given to a second session while one holds
// it, and rests after its session ends before it is used again
// (invariant 2).
func TestKeysRest(t *testing.T) {
	g := newEngine(t, 1) // two keys toward B
	peer := peerB
	open := func(at time.Duration, port uint16) (ID, []Effect) {
		tu := tuple(session.UDP, port)
		id := only[Resolve](t, step(t, g, at, Packet{From: wlC, Tuple: tu, Frame: []byte("x")}, "Resolve")).ID
		fx := g.Step(t0.Add(at), Resolved{ID: id, RemoteName: "s", RemoteIP: wlS.Endpoint.IP, Peer: &peer})
		if kinds(fx) == "Install Accept" {
			g.Step(t0.Add(at), Installed{ID: id})
			fx = fx[1:]
		}
		return id, fx
	}
	id1, fx1 := open(0, 1)
	_, fx2 := open(0, 2)
	k1, k2 := only[Accept](t, fx1).Session.Key, only[Accept](t, fx2).Session.Key
	if k1 == k2 {
		t.Fatalf("two live sessions share key %d", k1)
	}
	// A third finds no key.
	if _, fx := open(0, 3); kinds(fx) != "Drop" || !errors.Is(only[Drop](t, fx).Err, ErrNoKey) {
		t.Fatalf("a third session with both keys held: [%s]", kinds(fx))
	}
	step(t, g, 0, Accepted{ID: id1, Delivered: 1}, "Install")
	step(t, g, 0, Installed{ID: id1}, "")
	step(t, g, time.Second, Teardown{ID: id1, Reason: "test", Notify: true}, "ReleasePeer Remove")
	step(t, g, time.Second, Removed{ID: id1}, "")
	// k1 rests for 5 s after its removal.
	if _, fx := open(2*time.Second, 4); kinds(fx) != "Drop" {
		t.Fatalf("a session while k1 rests: [%s]", kinds(fx))
	}
	_, fx := open(6*time.Second+time.Millisecond, 5)
	if kinds(fx) != "Accept" || only[Accept](t, fx).Session.Key != k1 {
		t.Fatalf("after the rest: [%s]", kinds(fx))
	}
}

// TestTeardownBothEnds: an established session ends at the peer's first,
// then here (invariant 3); packets that come meanwhile start a fresh
// session once it is gone.
func TestTeardownBothEnds(t *testing.T) {
	g := newEngine(t, 12)
	id, key := client(t, g, session.TCP, Established)
	fx := step(t, g, time.Second, Teardown{ID: id, Reason: "test", Notify: true}, "ReleasePeer Remove")
	if r := fx[0].(ReleasePeer); r.Session.Key != key || r.PeerName != "b" || r.Reason != "test" {
		t.Fatalf("release %+v", r)
	}
	step(t, g, time.Second, Teardown{ID: id, Reason: "again", Notify: true}, "")
	step(t, g, time.Second, Packet{From: wlC, Tuple: tuple(session.TCP, 80), Frame: []byte("next")}, "")
	r := only[Retry](t, step(t, g, time.Second, Removed{ID: id}, "Retry"))
	if len(r.Frames) != 1 || string(r.Frames[0]) != "next" || r.Port != wlC.Port {
		t.Fatalf("retry %+v", r)
	}
	if len(g.Sessions()) != 0 {
		t.Fatal("session left after its removal")
	}
	// The retried packet starts a new session with a new ID.
	if nid := only[Resolve](t, step(t, g, time.Second, Packet{From: wlC, Tuple: tuple(session.TCP, 80), Frame: []byte("next")}, "Resolve")).ID; nid == id {
		t.Fatal("a new session got the old ID")
	}
}

// TestTeardownDuringSetup: a session torn down at any step of its setup
// keeps its place until that step answers; then what the step installed is
// taken down, and nothing is left (audit M3).
func TestTeardownDuringSetup(t *testing.T) {
	for _, c := range []struct {
		upTo   State
		answer func(ID) Event
		want   string // effects of the answer
		then   func(ID) Event
	}{
		{Resolving, func(id ID) Event {
			p := peerB
			return Resolved{ID: id, RemoteName: "s", RemoteIP: wlS.Endpoint.IP, Peer: &p}
		}, "", nil},
		{Agreeing, func(id ID) Event { return Accepted{ID: id} }, "ReleasePeer Remove", func(id ID) Event { return Removed{ID: id} }},
		{Agreeing, func(id ID) Event { return Accepted{ID: id, Err: errAny, Refused: true} }, "Remove", func(id ID) Event { return Removed{ID: id} }},
		{Installing, func(id ID) Event { return Installed{ID: id} }, "ReleasePeer Remove", func(id ID) Event { return Removed{ID: id} }},
	} {
		t.Run(c.upTo.String()+"/"+c.want, func(t *testing.T) {
			g := newEngine(t, 12)
			id, _ := client(t, g, session.TCP, c.upTo)
			step(t, g, time.Second, Teardown{ID: id, Reason: "unbound", Notify: true}, "")
			if s := state(t, g, tuple(session.TCP, 80)); s != Closing {
				t.Fatalf("state %s", s)
			}
			step(t, g, time.Second, c.answer(id), c.want)
			if c.then != nil {
				step(t, g, time.Second, c.then(id), "")
			}
			if n := len(g.Sessions()); n != 0 {
				t.Fatalf("%d sessions left", n)
			}
		})
	}
}

// TestTeardownWhileTheWayBackGoesIn: torn down while its way back goes
// in and the peer is asked, a session waits for both answers, whichever
// comes first, then releases the peer (if it installed) and removes its own
// flow (audit M3).
func TestTeardownWhileTheWayBackGoesIn(t *testing.T) {
	for _, c := range []struct {
		name         string
		first, then  func(ID) Event
		want         string // effects of the second answer
		releasesPeer bool
	}{
		{"installed, then accepted", func(id ID) Event { return Installed{ID: id} }, func(id ID) Event { return Accepted{ID: id} }, "ReleasePeer Remove", true},
		{"accepted, then installed", func(id ID) Event { return Accepted{ID: id} }, func(id ID) Event { return Installed{ID: id} }, "ReleasePeer Remove", true},
		{"refused, then installed", func(id ID) Event { return Accepted{ID: id, Err: errAny, Refused: true} }, func(id ID) Event { return Installed{ID: id} }, "Remove", false},
		{"install failed, then accepted", func(id ID) Event { return Installed{ID: id, Err: errAny} }, func(id ID) Event { return Accepted{ID: id} }, "ReleasePeer Remove", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newEngine(t, 12)
			id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tuple(session.UDP, 80), Frame: []byte("x")}, "Resolve")).ID
			resolve(t, g, 0, id)
			step(t, g, 0, Teardown{ID: id, Reason: "unbound", Notify: true}, "")
			step(t, g, 0, c.first(id), "")
			step(t, g, 0, c.then(id), c.want)
			step(t, g, 0, Removed{ID: id}, "")
			if len(g.Sessions()) != 0 {
				t.Fatal("the session is left")
			}
		})
	}
}

// TestWayBackBesideTheAccept: the client's way back goes in while the peer
// is asked; the setup goes on only when both have answered, in either
// order, and what the peer sends before the way back is in is held, then
// run through the pipeline again (or dropped if the way back failed).
func TestWayBackBesideTheAccept(t *testing.T) {
	early := KeyReply{Peer: ipB, Proto: session.UDP, Frame: []byte("early answer")}
	for _, c := range []struct {
		name        string
		acceptFirst bool
		installErr  error
		acceptErr   error
		want        string // effects of the second answer
	}{
		{"installed, then accepted", false, nil, nil, "Install"},
		{"accepted, then installed", true, nil, nil, "Resubmit Install"},
		{"way back failed, then accepted", false, errAny, nil, "ReleasePeer Remove SetupFailed"},
		{"accepted, then the way back failed", true, errAny, nil, "ReleasePeer Remove SetupFailed"},
		{"refused, then installed", true, nil, errAny, "Remove SetupFailed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newEngine(t, 12)
			tu := tuple(session.UDP, 80)
			id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tu, Frame: []byte("x")}, "Resolve")).ID
			in, acc := resolve(t, g, 0, id)
			ev := early
			ev.Key = acc.Session.Key
			step(t, g, 0, ev, "") // held
			installed := Installed{ID: in.ID, Err: c.installErr}
			accepted := Accepted{ID: id, Err: c.acceptErr, Delivered: 1}
			var fx []Effect
			if c.acceptFirst {
				step(t, g, time.Millisecond, accepted, "")
				fx = step(t, g, 2*time.Millisecond, installed, c.want)
			} else {
				wantFirst := "Resubmit"
				if c.installErr != nil {
					wantFirst = ""
				}
				step(t, g, time.Millisecond, installed, wantFirst)
				fx = step(t, g, 2*time.Millisecond, accepted, c.want)
			}
			for _, f := range fx {
				if r, ok := f.(Resubmit); ok && (len(r.Frames) != 1 || string(r.Frames[0]) != "early answer") {
					t.Fatalf("resubmitted %q", r.Frames)
				}
			}
			if c.installErr != nil || c.acceptErr != nil {
				if len(g.Sessions()) != 0 {
					t.Fatalf("a failed setup left %+v", g.Sessions())
				}
				return
			}
			if s := state(t, g, tu); s != Installing {
				t.Fatalf("state %s", s)
			}
		})
	}
}

// TestKeyReplies: a packet from a peer's key that no flow took is held,
// run again or handed to the host, by what the key's session is doing.
func TestKeyReplies(t *testing.T) {
	g := newEngine(t, 12)
	if fx := step(t, g, 0, KeyReply{Peer: ipB, Proto: session.TCP, Key: 61441, Frame: []byte("host")}, "ToHost"); string(fx[0].(ToHost).Frame) != "host" {
		t.Fatalf("to the host: %+v", fx)
	}
	id, key := client(t, g, session.TCP, Established)
	step(t, g, time.Second, KeyReply{Peer: ipB, Proto: session.TCP, Key: key, Frame: []byte("late")}, "Resubmit")
	// Another protocol's key is another session's.
	step(t, g, time.Second, KeyReply{Peer: ipB, Proto: session.UDP, Key: key, Frame: []byte("udp")}, "ToHost")
	step(t, g, 2*time.Second, Teardown{ID: id, Reason: "test", Notify: true}, "ReleasePeer Remove")
	step(t, g, 2*time.Second, KeyReply{Peer: ipB, Proto: session.TCP, Key: key, Frame: []byte("ending")}, "")
}

// TestIdleExpiry: a session that carries packets in either direction does
// not expire; a quiet one does after the idle timeout (the server's half
// after twice that); when counters cannot be read, sessions still expire on
// what was seen last (audit M6).
func TestIdleExpiry(t *testing.T) {
	g := newEngine(t, 12)
	id, _ := client(t, g, session.TCP, Established)
	v, _ := g.Lookup(tuple(session.TCP, 80))
	cookie := pipeline.SessionCookie(v.Session)
	tick := func(at time.Duration, in, out uint64, want string) []Effect {
		return step(t, g, at, Tick{Fresh: true, Counts: map[pipeline.Cookie]Counts{cookie: {In: in, Out: out}}}, want)
	}
	tick(20*time.Second, 1, 5, "") // both directions move
	tick(40*time.Second, 7, 5, "") // only the peer's answers come in
	tick(69*time.Second, 7, 5, "") // quiet for 29 s
	step(t, g, 69500*time.Millisecond, Tick{Fresh: false}, "")
	fx := step(t, g, 71*time.Second, Tick{Fresh: false}, "ReleasePeer Remove") // 31 s, counters unreadable
	if r := only[ReleasePeer](t, fx); r.Reason != "idle" {
		t.Fatalf("release %+v", r)
	}
	step(t, g, 71*time.Second, Removed{ID: id}, "")

	// The server's half waits twice as long.
	srv := newEngine(t, 12)
	acceptAt(t, srv, 0, "a", 61447)
	step(t, srv, 59*time.Second, Tick{Fresh: true}, "")
	step(t, srv, 61*time.Second, Tick{Fresh: true}, "ReleasePeer Remove")
}

// TestDeafClient: a client half that keeps sending and hears nothing back
// is checked with its peer once per DeafAfter; a peer that no longer takes
// it ends it at both ends (audit M4).
func TestDeafClient(t *testing.T) {
	g := newEngine(t, 12)
	id, _ := client(t, g, session.UDP, Established)
	v, _ := g.Lookup(tuple(session.UDP, 80))
	c := pipeline.SessionCookie(v.Session)
	out := uint64(0)
	sending := func(at time.Duration, want string) []Effect {
		out += 10
		return step(t, g, at, Tick{Fresh: true, Counts: map[pipeline.Cookie]Counts{c: {In: 0, Out: out}}}, want)
	}
	sending(2*time.Second, "")
	sending(4*time.Second, "")
	vf := only[Verify](t, sending(6*time.Second, "Verify"))
	sending(8*time.Second, "") // checked lately: not again yet
	step(t, g, 8*time.Second, Verified{ID: vf.ID, Err: errAny}, "")
	sending(12*time.Second, "Verify")
	step(t, g, 12*time.Second, Verified{ID: id, Err: errAny, Gone: true}, "ReleasePeer Remove")
}

// acceptAt has engine g accept, as the server's end, the session C→S:80
// from caller with key; it returns the session's ID.
func acceptAt(t *testing.T, g *Engine, at time.Duration, caller string, key uint16) ID {
	t.Helper()
	fx := step(t, g, at, AcceptRequest{Caller: caller, Session: serverHalf(session.TCP, caller, key), RemoteName: "c"}, "Install")
	id := only[Install](t, fx).ID
	if r := only[Reply](t, step(t, g, at, Installed{ID: id}, "Reply")); r.Err != nil {
		t.Fatalf("accept answered %v", r.Err)
	}
	return id
}

func serverHalf(p session.Proto, caller string, key uint16) session.Session {
	peer := peerA
	peer.Name = caller
	return session.Session{
		Tuple: tuple(p, 80), Role: session.RoleServer, Key: key,
		Local: wlS.Endpoint, Remote: session.Endpoint{IP: wlC.Endpoint.IP}, Peer: peer,
	}
}

// TestOnlyThePeer: a live session is replaced or released only on its own
// peer's word (trust: a valid certificate of another server cannot end
// it); its own peer replacing it removes the old half before the new one
// goes in.
func TestOnlyThePeer(t *testing.T) {
	g := newEngine(t, 12)
	old := acceptAt(t, g, 0, "a", 61447)
	if r := only[Reply](t, step(t, g, time.Second, AcceptRequest{Caller: "x", Session: serverHalf(session.TCP, "x", 61448)}, "Reply")); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("another server replacing the session: %v", r.Err)
	}
	step(t, g, time.Second, ReleaseRequest{Caller: "x", Tuple: tuple(session.TCP, 80), Key: 61447, Role: session.RoleClient}, "Reply")
	step(t, g, time.Second, ReleaseRequest{Caller: "a", Tuple: tuple(session.TCP, 80), Key: 61448, Role: session.RoleClient}, "Reply")
	step(t, g, time.Second, ReleaseRequest{Caller: "a", Tuple: tuple(session.TCP, 80), Key: 61447, Role: session.RoleServer}, "Reply")
	if s := state(t, g, tuple(session.TCP, 80)); s != Established {
		t.Fatalf("after calls by others the session is %s", s)
	}
	// A retry of the same setup is answered at once.
	if r := only[Reply](t, step(t, g, time.Second, AcceptRequest{Caller: "a", Session: serverHalf(session.TCP, "a", 61447)}, "Reply")); r.Err != nil {
		t.Fatal(r.Err)
	}
	// Its own peer sets it up anew (it restarted without its flows).
	fx := step(t, g, 2*time.Second, AcceptRequest{Caller: "a", Session: serverHalf(session.TCP, "a", 61500)}, "Remove Install")
	if fx[0].(Remove).ID != old || fx[1].(Install).Session.Key != 61500 {
		t.Fatalf("replace: %+v", fx)
	}
	step(t, g, 2*time.Second, Removed{ID: old}, "")
	step(t, g, 2*time.Second, Installed{ID: fx[1].(Install).ID}, "Reply")
	if v, _ := g.Lookup(tuple(session.TCP, 80)); v.State != Established || v.Session.Key != 61500 {
		t.Fatalf("after the replacement: %+v", v)
	}
	// Its peer releases it: our half goes, then the answer.
	step(t, g, 3*time.Second, ReleaseRequest{Caller: "a", Tuple: tuple(session.TCP, 80), Key: 61500, Role: session.RoleClient, Reason: "idle"}, "Remove Reply")
}

// TestAcceptConflicts: a key in use by another session, or a session still
// being installed, is refused rather than overwritten.
func TestAcceptConflicts(t *testing.T) {
	g := newEngine(t, 12)
	acceptAt(t, g, 0, "a", 61447)
	other := serverHalf(session.TCP, "a", 61447)
	other.Port = 443
	if r := only[Reply](t, step(t, g, 0, AcceptRequest{Caller: "a", Session: other}, "Reply")); !errors.Is(r.Err, ErrConflict) {
		t.Fatalf("the same key for another tuple: %v", r.Err)
	}
	other.Key = 61449
	step(t, g, 0, AcceptRequest{Caller: "a", Session: other}, "Install")
	again := other
	again.Key = 61450
	if r := only[Reply](t, step(t, g, 0, AcceptRequest{Caller: "a", Session: again}, "Reply")); !errors.Is(r.Err, ErrBusy) {
		t.Fatalf("while the first setup installs: %v", r.Err)
	}
}

// TestReopen: the server workload answers after its session idled out at
// this end; the client's agent is asked to set it up again, its Accept
// takes the reopening session's place, and the held answers go out once
// the Reopen call returns.
func TestReopen(t *testing.T) {
	g := newEngine(t, 12)
	tu := tuple(session.TCP, 80)
	id := only[Resolve](t, step(t, g, 0, ReplyWithoutSession{From: wlS, Tuple: tu, ReplyPort: 40000, Frame: []byte("ack")}, "Resolve")).ID
	step(t, g, 0, ReplyWithoutSession{From: wlS, Tuple: tu, ReplyPort: 40000, Frame: []byte("data")}, "")
	peer := peerA
	if r := only[Reopen](t, step(t, g, time.Millisecond, Resolved{ID: id, RemoteName: "c", RemoteIP: wlC.Endpoint.IP, Peer: &peer}, "Reopen")); r.Tuple != tu || r.Peer.Name != "a" {
		t.Fatalf("reopen %+v", r)
	}
	in := only[Install](t, step(t, g, 2*time.Millisecond, AcceptRequest{Caller: "a", Session: serverHalf(session.TCP, "a", 61447), RemoteName: "c"}, "Install"))
	if in.ID != id {
		t.Fatal("the Accept did not take the reopening session's place")
	}
	step(t, g, 3*time.Millisecond, Installed{ID: id}, "Reply")
	d := only[Deliver](t, step(t, g, 4*time.Millisecond, Reopened{ID: id}, "Deliver"))
	if len(d.Frames) != 2 || d.Port != wlS.Port {
		t.Fatalf("deliver %+v", d)
	}

	// Refused by the client's agent: the answers are dropped for a while
	// (the drop names the answer's direction).
	g = newEngine(t, 12)
	id = only[Resolve](t, step(t, g, 0, ReplyWithoutSession{From: wlS, Tuple: tu, ReplyPort: 40000, Frame: []byte("ack")}, "Resolve")).ID
	step(t, g, time.Millisecond, Resolved{ID: id, RemoteName: "c", RemoteIP: wlC.Endpoint.IP, Peer: &peer}, "Reopen")
	drop := only[Drop](t, step(t, g, 2*time.Millisecond, Reopened{ID: id, Err: errAny, Refused: true}, "Drop"))
	if drop.Tuple.Client != wlS.Endpoint.IP || drop.Tuple.Port != 40000 || drop.Port != wlS.Port {
		t.Fatalf("drop %+v", drop.Tuple)
	}
	if len(g.Sessions()) != 0 {
		t.Fatal("a refused reopen left a session")
	}
}

// TestLocalSession: both workloads here: no key, no peer, one install.
func TestLocalSession(t *testing.T) {
	g := newEngine(t, 12)
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: wlC.Endpoint.IP, Server: wlD.Endpoint.IP, Port: 22}
	id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tu, Frame: []byte("syn")}, "Resolve")).ID
	here := wlD
	in := only[Install](t, step(t, g, 0, Resolved{ID: id, RemoteName: "d", RemoteIP: wlD.Endpoint.IP, Here: &here}, "Install"))
	if in.Session.Role != session.RoleLocal || in.Session.Remote.OFPort != wlD.Port || in.Session.Key != 0 {
		t.Fatalf("install %+v", in.Session)
	}
	step(t, g, 0, Installed{ID: id}, "Deliver")
	// The server workload leaves: the session ends, nobody to release.
	step(t, g, time.Second, Unbound{Port: wlD.Port}, "Remove")
}

// TestICMPShareOnePunt: ICMP sessions toward one peer share its punt flow:
// the first installs it, the last removes it.
func TestICMPShareOnePunt(t *testing.T) {
	g := newEngine(t, 12)
	peer := peerB
	var ids []ID
	for i, want := range []bool{true, false} {
		tu := tuple(session.ICMP, uint16(100+i))
		id := only[Resolve](t, step(t, g, 0, Packet{From: wlC, Tuple: tu, Frame: []byte("ping")}, "Resolve")).ID
		step(t, g, 0, Resolved{ID: id, RemoteName: "s", RemoteIP: wlS.Endpoint.IP, Peer: &peer}, "Accept")
		in := only[Install](t, step(t, g, 0, Accepted{ID: id}, "Install"))
		if in.Flows || in.Punt.IsValid() != want {
			t.Fatalf("install %d: %+v", i, in)
		}
		step(t, g, 0, Installed{ID: id}, "Deliver")
		ids = append(ids, id)
	}
	if p := g.Punts(); len(p) != 1 || p[0] != ipB {
		t.Fatalf("punts %v", p)
	}
	for i, want := range []bool{false, true} {
		rm := only[Remove](t, step(t, g, time.Second, Teardown{ID: ids[i], Reason: "test"}, "Remove"))
		if rm.Punt.IsValid() != want {
			t.Fatalf("remove %d: %+v", i, rm)
		}
	}
}

// TestWorkloadLimit: one workload's sessions are bounded; its surplus is
// dropped for a while, other workloads are not affected.
func TestWorkloadLimit(t *testing.T) {
	g := newEngine(t, 12)
	for i := range 8 {
		step(t, g, 0, Packet{From: wlC, Tuple: tuple(session.UDP, uint16(i+1)), Frame: []byte("x")}, "Resolve")
	}
	if d := only[Drop](t, step(t, g, 0, Packet{From: wlC, Tuple: tuple(session.UDP, 99), Frame: []byte("x")}, "Drop")); !errors.Is(d.Err, ErrTooMany) {
		t.Fatal(d.Err)
	}
	other := session.Tuple{Tenant: "acme", Proto: session.UDP, Client: wlD.Endpoint.IP, Server: wlS.Endpoint.IP, Port: 1}
	step(t, g, 0, Packet{From: wlD, Tuple: other, Frame: []byte("x")}, "Resolve")
}

// TestDirectoryChanges: a peer that left, or a remote endpoint deleted or
// moved, ends the sessions that involve it, and only those.
func TestDirectoryChanges(t *testing.T) {
	g := newEngine(t, 12)
	client(t, g, session.TCP, Established)
	step(t, g, time.Second, PeerGone{Name: "b", NewIP: ipB}, "") // back at the same address
	step(t, g, time.Second, PeerGone{Name: "z"}, "")
	step(t, g, time.Second, EndpointChanged{Tenant: "acme", Name: "s", Server: "b", IP: wlS.Endpoint.IP}, "") // rewritten, same place
	step(t, g, time.Second, EndpointChanged{Tenant: "acme", Name: "s", Server: "c", IP: wlS.Endpoint.IP}, "ReleasePeer Remove")

	g = newEngine(t, 12)
	client(t, g, session.TCP, Established)
	step(t, g, time.Second, PeerGone{Name: "b", Reachable: false}, "Remove")
}

// TestAdopt: sessions a previous agent left on the bridge are taken over
// with their keys; a tuple or key already in use is refused.
func TestAdopt(t *testing.T) {
	g := newEngine(t, 12)
	s := session.Session{Tuple: tuple(session.TCP, 80), Role: session.RoleClient, Key: 61447, Local: wlC.Endpoint, Remote: session.Endpoint{IP: wlS.Endpoint.IP}, Peer: peerB}
	if a := only[Adoption](t, step(t, g, 0, Adopt{Session: s, RemoteName: "s"}, "Adoption")); a.Err != nil {
		t.Fatal(a.Err)
	}
	if a := only[Adoption](t, step(t, g, 0, Adopt{Session: s}, "Adoption")); a.Err == nil {
		t.Fatal("the same session adopted twice")
	}
	s2 := s
	s2.Port = 443
	if a := only[Adoption](t, step(t, g, 0, Adopt{Session: s2}, "Adoption")); a.Err == nil {
		t.Fatal("a second session with the same key adopted")
	}
	if v, ok := g.LookupWire(Wire{Peer: ipB, Proto: session.TCP, Key: 61447, Role: session.RoleClient}); !ok || v.State != Established {
		t.Fatalf("adopted session by wire: %+v %v", v, ok)
	}
}

// TestReopenRequest: the client's end of a reopen sets the session up like
// a new one, without packets, and answers the asking peer when it is in
// place, or why not.
func TestReopenRequest(t *testing.T) {
	g := newEngine(t, 12)
	tu := tuple(session.TCP, 80)
	r := only[Resolve](t, step(t, g, 0, ReopenRequest{Caller: "b", From: wlC, Tuple: tu}, "Resolve"))
	if !r.Wait {
		t.Fatal("a reopen's setup must run in the asking peer's call")
	}
	peer := peerB
	ask(t, g, 0, r.ID)
	step(t, g, 0, Accepted{ID: r.ID}, "Install")
	if rep := only[Reply](t, step(t, g, 0, Installed{ID: r.ID}, "Reply")); rep.Err != nil {
		t.Fatal(rep.Err)
	}
	// Asked again while it exists: answered at once.
	step(t, g, 0, ReopenRequest{Caller: "b", From: wlC, Tuple: tu}, "Reply")

	// Refused by policy: the peer hears a refusal.
	g = newEngine(t, 12)
	r = only[Resolve](t, step(t, g, 0, ReopenRequest{Caller: "b", From: wlC, Tuple: tu}, "Resolve"))
	fx := step(t, g, 0, Failed{ID: r.ID, Err: errAny, Refused: true}, "Drop Reply")
	if rep := only[Reply](t, fx); !errors.Is(rep.Err, ErrRefused) {
		t.Fatalf("refused reopen answered %v", rep.Err)
	}
	// Torn down during its setup: the peer hears so.
	r = only[Resolve](t, step(t, g, 0, ReopenRequest{Caller: "b", From: wlC, Tuple: tu}, "Resolve"))
	step(t, g, 0, Teardown{ID: r.ID, Reason: "unbound"}, "")
	if rep := only[Reply](t, step(t, g, 0, Resolved{ID: r.ID, RemoteName: "s", RemoteIP: wlS.Endpoint.IP, Peer: &peer}, "Reply")); !errors.Is(rep.Err, ErrAborted) {
		t.Fatalf("aborted reopen answered %v", rep.Err)
	}
}

// TestServerDeliversFirstPackets: the first packets an Accept carries go
// to the switch with the server's half, and the answer says they were
// taken on; more than session.MaxFirstPackets are not taken at all.
func TestServerDeliversFirstPackets(t *testing.T) {
	g := newEngine(t, 12)
	frames := [][]byte{[]byte("syn"), []byte("data")}
	in := only[Install](t, step(t, g, 0, AcceptRequest{Caller: "a", Session: serverHalf(session.TCP, "a", 61441), RemoteName: "c", Frames: frames}, "Install"))
	if len(in.Inject) != 2 || string(in.Inject[1]) != "data" || len(in.Release) != 0 {
		t.Fatalf("install %+v", in)
	}
	if r := only[Reply](t, step(t, g, time.Millisecond, Installed{ID: in.ID}, "Reply")); r.Err != nil || r.Delivered != 2 {
		t.Fatalf("reply %+v", r)
	}
	tooMany := make([][]byte, session.MaxFirstPackets+1)
	in = only[Install](t, step(t, g, 0, AcceptRequest{Caller: "a", Session: serverHalf(session.UDP, "a", 61442), RemoteName: "c", Frames: tooMany}, "Install"))
	if len(in.Inject) != 0 {
		t.Fatalf("took %d frames", len(in.Inject))
	}
	if r := only[Reply](t, step(t, g, time.Millisecond, Installed{ID: in.ID}, "Reply")); r.Delivered != 0 {
		t.Fatalf("reply %+v", r)
	}
}
