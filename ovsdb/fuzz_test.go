package ovsdb

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

var streamSeeds = []string{
	`{"id":1,"result":[{"rows":[{"name":"br0","ports":["set",[["uuid","u1"]]]}]},{"uuid":["uuid","u2"]}],"error":null}`,
	`{"id":1,"result":[{"error":"constraint violation","details":"x"},null],"error":null}`,
	`{"id":1,"result":[{},{},{"error":"referential integrity violation"}],"error":null}`,
	`{"id":1,"result":null,"error":{"error":"unknown database","details":"x"}}`,
	`{"method":"update","params":["nvi-mon-1",{"Interface":{"u1":{"new":{"name":"tap0","ofport":7,"external_ids":["map",[["iface-id","a"]]]}}}}],"id":null}`,
	`{"method":"update","params":["nvi-mon-1",{"Interface":{"u1":{"old":{"ofport":["set",[]]},"new":{"name":"tap0","ofport":7}}}}],"id":null}`,
	`{"method":"update","params":["nvi-mon-1",{"Interface":{"u1":{"old":{"name":"tap0"}}}}],"id":null}`,
	`{"method":"echo","params":[],"id":"echo"}`,
	`{"method":"echo","params":{"a":1},"id":[1]}`,
	`{"id":1,"result":[`,
	`{"id":"1","result":1} 7 [] {"id":1}`,
	"\x00\xff{",
}

// FuzzClientStream feeds arbitrary bytes to a client that has a transact
// outstanding (id 1) and a monitor registered ("nvi-mon-1"), the two paths
// that decode server data most deeply. Whatever the bytes, nothing panics
// and the session ends cleanly once the server hangs up.
func FuzzClientStream(f *testing.F) {
	for _, s := range streamSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := socketPair(t)
		defer b.Close()
		c := NewClient(a, WithLogger(quietLog), WithKeepalive(0))
		defer c.Close()

		tracker := &ifaceTracker{rows: map[UUID]Row{}}
		m := newMonitor(c, "nvi-mon-1", func(u TableUpdates) { tracker.apply(u) })
		c.mu.Lock()
		c.monitors[m.id] = m
		c.mu.Unlock()
		go m.deliver()

		res := make(chan error, 1)
		go func() {
			_, err := c.Transact(context.Background(), "Open_vSwitch",
				Select("Bridge", nil), Insert("Interface", Row{"name": "x"}, "i"))
			res <- err
		}()
		for deadline := time.Now().Add(5 * time.Second); ; {
			c.mu.Lock()
			n := len(c.pending)
			c.mu.Unlock()
			if n == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("transact never became outstanding")
			}
			time.Sleep(time.Millisecond)
		}

		if _, err := b.Write(data); err != nil {
			t.Fatal(err)
		}
		b.Close()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("session did not end after the server hung up")
		}
		select {
		case <-res:
		case <-time.After(5 * time.Second):
			t.Fatal("outstanding transact never returned")
		}
		select {
		case <-m.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("monitor never stopped")
		}
	})
}

// FuzzDecodeValue checks the atom/set/map decoder and the row accessors.
func FuzzDecodeValue(f *testing.F) {
	for _, s := range []string{`"x"`, `7`, `1.5`, `true`, `["uuid","u"]`, `["named-uuid","n"]`,
		`["set",[1,2]]`, `["map",[["k","v"]]]`, `["map",[[1,["uuid","u"]]]]`, `[`, `null`, `["set",[["set",[]]]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeValue(data)
		if err != nil {
			return
		}
		r := Row{"c": v}
		_ = r.String("c")
		_ = r.Strings("c")
		_ = r.UUIDs("c")
		_ = r.StringMap("c")
		_, _ = r.Int("c")
		_, _ = r.Bool("c")
		// Whatever decoded must encode again.
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("decoded %#v does not re-encode: %v", v, err)
		}
	})
}
