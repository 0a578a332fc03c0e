package agent

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"nvi/api"
	"nvi/engine"
	"nvi/pipeline"
	"nvi/session"
)

// TestTeardownDuringSetupRemovesItsFlows is the audit's M3 case: a
// session torn down while its peer is still accepting must not leave the
// flows its setup then installs, and the peer is told to drop its half. A
// session beside it, left alone, is set up as usual.
func TestTeardownDuringSetupRemovesItsFlows(t *testing.T) {
	gate := make(chan struct{})
	var waiting atomic.Int64
	peer := &fakePeerAgent{onAccept: func() { waiting.Add(1); <-gate }}
	peer.addr, peer.stop = servePeerService(t, peer)
	defer peer.Close()
	releases := &peer.releases
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": peer.addr})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
	fs := connectFakeSwitch(t, a)
	l := a.byAddr[addrKey{"acme", ipC}]

	doomed := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 5432}
	kept := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 80}
	_ = a.step(engine.Packet{From: l.engineWorkload(), Tuple: doomed, Frame: []byte{0}})
	_ = a.step(engine.Packet{From: l.engineWorkload(), Tuple: kept, Frame: []byte{0}})
	view := func(tu session.Tuple) engine.View {
		a.mu.Lock()
		defer a.mu.Unlock()
		v, _ := a.eng.Lookup(tu)
		return v
	}
	// Wait until both setups wait on the peer (their ways back are in,
	// their Accepts arrived).
	if err := eventually(func() bool { return waiting.Load() == 2 }); err != nil {
		t.Fatalf("%d of the setups reached the peer", waiting.Load())
	}
	ed := view(doomed)
	_ = a.step(engine.Teardown{ID: ed.ID, Reason: "endpoint deleted", Notify: true})
	close(gate)

	if err := eventually(func() bool { return view(doomed).ID == 0 && view(kept).State == engine.Established }); err != nil {
		t.Fatalf("doomed %s, kept %s; want the doomed one finished and the other established", view(doomed).State, view(kept).State)
	}
	ek := view(kept)
	a.mu.Lock()
	dc, kc := sessionCookie(ed.Session), sessionCookie(ek.Session)
	_, inTable := a.eng.Lookup(doomed)
	counted := a.eng.PerWorkload(l.ofport)
	resting := a.keys.Resting(ipS2, session.TCP, ed.Session.Key, time.Now())
	a.mu.Unlock()
	if n := fs.count(uint64(dc)); n != 0 {
		t.Errorf("the session torn down during its setup left %d flows on the bridge", n)
	}
	if inTable {
		t.Error("the session torn down during its setup is still in the table")
	}
	if counted != 1 {
		t.Errorf("the workload is counted for %d sessions, want 1 (the one left)", counted)
	}
	if releases.Load() != 1 {
		t.Errorf("the peer was asked %d times to release; want once, for the torn-down session", releases.Load())
	}
	if !resting {
		t.Error("the torn-down session's key, which the peer used, is not resting")
	}
	if n := fs.count(uint64(kc)); n != 2 {
		t.Errorf("the session beside it has %d flows, want 2", n)
	}
}

// TestAdoptionRemovesFlowsOfAKnownTupleUnderAnotherCookie: flows of a
// tuple the agent already has, under another key, belong to nobody
// (audit M3); adoption removes them and keeps the known session's.
func TestAdoptionRemovesFlowsOfAKnownTupleUnderAnotherCookie(t *testing.T) {
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
	fs := connectFakeSwitch(t, a)
	l := a.byAddr[addrKey{"acme", ipC}]
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 5432}
	mk := func(key uint16) session.Session {
		return session.Session{Tuple: tu, Role: session.RoleClient, Key: key, Zone: l.zone, Local: l.endpoint(),
			Remote: session.Endpoint{IP: ipS}, Peer: session.Peer{Name: "s2", IP: ipS2, NextHop: l.mac}}
	}
	live, orphan := mk(61447), mk(61999)
	known := inject(t, a, time.Now(), live, "s")
	for _, s := range []session.Session{live, orphan} {
		fms, err := pipeline.SessionFlows(a.br, s)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.sw.apply(w.ctx, flowMods(fms...)...); err != nil {
			t.Fatal(err)
		}
	}
	a.adoptSessions(w.ctx, false)
	if n := fs.count(uint64(pipeline.SessionCookie(orphan))); n != 0 {
		t.Errorf("the orphan's %d flows survived adoption", n)
	}
	if n := fs.count(uint64(pipeline.SessionCookie(live))); n != 2 {
		t.Errorf("the known session has %d flows after adoption, want 2", n)
	}
	if !sessionIs(a, tu, known) {
		t.Error("adoption replaced the known session")
	}
}

// TestAdoptionTakesKeysAndNamesPeers: a previous agent's session is
// adopted with its key held (so it is never handed out twice) and its
// peer named from the directory.
func TestAdoptionTakesKeysAndNamesPeers(t *testing.T) {
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
	connectFakeSwitch(t, a)
	l := a.byAddr[addrKey{"acme", ipC}]
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 5432}
	s := session.Session{Tuple: tu, Role: session.RoleClient, Key: 61447, Zone: l.zone, Local: l.endpoint(),
		Remote: session.Endpoint{IP: ipS}, Peer: session.Peer{IP: ipS2, NextHop: l.mac}}
	fms, err := pipeline.SessionFlows(a.br, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.sw.apply(w.ctx, flowMods(fms...)...); err != nil {
		t.Fatal(err)
	}
	a.adoptSessions(w.ctx, true)
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.eng.Lookup(tu)
	if !ok {
		t.Fatal("the session was not adopted")
	}
	if e.PeerName != "s2" || e.RemoteName != "s" {
		t.Errorf("adopted session: peer %q, remote %q; want s2 and s", e.PeerName, e.RemoteName)
	}
	if err := a.keys.Adopt(ipS2, session.TCP, "acme", 61447); err == nil {
		t.Error("the adopted session's key is not held")
	}
}

// TestExpiryRunsWhenTheFlowDumpFails is the audit's M6 case: with a switch
// that never answers flow stats, sessions quiet for the idle timeout still
// end; one that was active recently stays.
func TestExpiryRunsWhenTheFlowDumpFails(t *testing.T) {
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": "192.0.2.2:7470"})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC}, addrKey{"acme", ipS})
	fs := connectFakeSwitch(t, a)
	fs.mu.Lock()
	fs.stall = true
	fs.mu.Unlock()
	c, s := a.byAddr[addrKey{"acme", ipC}], a.byAddr[addrKey{"acme", ipS}]
	now := time.Now()
	mk := func(port uint16, last time.Time) engine.View {
		tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: port}
		return inject(t, a, last, session.Session{Tuple: tu, Role: session.RoleLocal, Local: c.endpoint(), Remote: s.endpoint()}, "s")
	}
	quiet := mk(80, now.Add(-2*a.cfg.IdleTimeout))
	busy := mk(81, now)
	a.expire(w.ctx)
	if err := eventually(func() bool { return !sessionIs(a, quiet.Session.Tuple, quiet) }); err != nil {
		t.Fatal("a quiet session never expired while the flow dump failed")
	}
	if !sessionIs(a, busy.Session.Tuple, busy) {
		t.Error("a session active a moment ago was expired")
	}
}

func TestSessionCountsByDirection(t *testing.T) {
	c := pipeline.Cookie(7)
	got := sessionCounts([]pipeline.InstalledFlow{
		{Cookie: c, Table: pipeline.SessionOut, Packets: 3},
		{Cookie: c, Table: pipeline.SessionIn, Packets: 4},
		{Cookie: 8, Table: pipeline.SessionIn, Packets: 1},
	})
	if got[c] != (engine.Counts{In: 4, Out: 3}) || got[8] != (engine.Counts{In: 1}) {
		t.Fatalf("sessionCounts = %v", got)
	}
}

// TestDeafClientHalfIsCheckedWithThePeer is the audit's M4 case: a client
// half that sends while nothing comes back is checked with the peer by
// repeating its Accept; a peer that no longer takes it ends it here too,
// and one that confirms keeps it.
func TestDeafClientHalfIsCheckedWithThePeer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer api.Code
		ends   bool
	}{
		{"peer confirms", "", false},
		{"peer refuses", api.CodeDenied, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, accepts, _ := peerAnswering(t, tc.answer)
			defer peer.Close()
			w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": peer.addr})
			a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), nil, addrKey{"acme", ipC})
			fs := connectFakeSwitch(t, a)
			l := a.byAddr[addrKey{"acme", ipC}]
			tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 5432}
			s := session.Session{Tuple: tu, Role: session.RoleClient, Key: 61447, Zone: l.zone, Local: l.endpoint(),
				Remote: session.Endpoint{IP: ipS}, Peer: session.Peer{Name: "s2", IP: ipS2, NextHop: l.mac}}
			// Adopted long ago; it has sent since, and heard nothing.
			e := inject(t, a, time.Now().Add(-2*clientDeafAfter), s, "s")
			fms, err := pipeline.SessionFlows(a.br, s)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.sw.apply(w.ctx, flowMods(fms...)...); err != nil {
				t.Fatal(err)
			}
			ck := sessionCookie(s)
			fs.mu.Lock()
			fs.packets[pktKey{uint64(ck), uint8(pipeline.SessionOut)}] = 20
			fs.mu.Unlock()
			a.expire(w.ctx)
			if err := eventually(func() bool { return accepts.Load() == 1 }); err != nil {
				t.Fatalf("%d Accept calls to check the session, want 1", accepts.Load())
			}
			if tc.ends {
				if eventually(func() bool { return !sessionIs(a, tu, e) }) != nil {
					t.Fatal("the peer refused the session, yet it lives on here")
				}
				return
			}
			// A second look soon after, with more sent and still nothing
			// back, does not ask again.
			a.mu.Lock()
			fx := a.eng.Step(time.Now(), engine.Tick{Fresh: true, Counts: map[pipeline.Cookie]engine.Counts{ck: {Out: 30}}})
			a.mu.Unlock()
			for _, f := range fx {
				if _, ok := f.(engine.Verify); ok {
					t.Fatalf("checked again at once; want one check per %v", clientDeafAfter)
				}
			}
			if !sessionIs(a, tu, e) {
				t.Fatal("the peer confirmed the session, yet it ended")
			}
		})
	}
}

// TestPeerGoneTellsThePeer: when a server's record goes away and stays
// away, its sessions end here, and its agent, if it answers at its last
// address, is told to drop its halves (audit M4).
func TestPeerGoneTellsThePeer(t *testing.T) {
	peer, _, releases := peerAnswering(t, "")
	defer peer.Close()
	w := newWorld(t, map[string]string{"s1": "192.0.2.1:7470", "s2": peer.addr})
	a := w.agentOf(t, "s1", netip.MustParsePrefix("192.0.2.1/24"), func(c *Config) { c.LeaseTTL = 50 * time.Millisecond }, addrKey{"acme", ipC})
	l := a.byAddr[addrKey{"acme", ipC}]
	last, err := w.store.Server(w.ctx, "s2")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.regs["s2"].Close(); err != nil {
		t.Fatal(err)
	}
	tu := session.Tuple{Tenant: "acme", Proto: session.TCP, Client: ipC, Server: ipS, Port: 5432}
	e := inject(t, a, time.Now(), session.Session{Tuple: tu, Role: session.RoleClient, Key: 61447, Local: l.endpoint(), Remote: session.Endpoint{IP: ipS},
		Peer: session.Peer{Name: "s2", IP: ipS2}}, "s")
	a.peerGone(last)
	if sessionIs(a, tu, e) {
		t.Fatal("the session with the server that left lives on")
	}
	if releases.Load() != 1 {
		t.Fatalf("the server that left was asked %d times to release, want once", releases.Load())
	}
}
