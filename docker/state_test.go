package docker

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/directory"
)

// TestEtcdState keeps records in a real (embedded) etcd, as the plugin
// does in the directory, and reads them back from a second client: what
// a restarted plugin sees.
func TestEtcdState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := directory.ServeEmbedded(ctx, directory.EmbedConfig{DataDir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1:0"}, Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	open := func() *EtcdState {
		cli, err := clientv3.New(clientv3.Config{Endpoints: m.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return NewEtcdState(cli, "/test/docker")
	}
	a, b := open(), open()

	n := NetworkRecord{ID: strings.Repeat("ab", 32), Tenant: "acme", Network: "web", CIDR: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("10.1.0.1")}
	e := EndpointRecord{ID: strings.Repeat("cd", 32), NetworkID: n.ID, Tenant: "acme", Name: "docker-0242b22484d3", Address: netip.MustParsePrefix("10.1.0.16/24"), MAC: "02:42:b2:24:84:d3"}
	if err := a.PutNetwork(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := a.PutEndpoint(ctx, e); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := b.Network(ctx, n.ID); err != nil || !ok || got != n {
		t.Errorf("Network = %+v %v %v, want %+v", got, ok, err, n)
	}
	if got, ok, err := b.Endpoint(ctx, e.ID); err != nil || !ok || got != e {
		t.Errorf("Endpoint = %+v %v %v, want %+v", got, ok, err, e)
	}
	if got, err := b.Endpoints(ctx); err != nil || !reflect.DeepEqual(got, []EndpointRecord{e}) {
		t.Errorf("Endpoints = %+v %v", got, err)
	}
	if _, ok, err := b.Network(ctx, "0123456789ab"); ok || err != nil {
		t.Errorf("a missing network: found %v, err %v", ok, err)
	}
	if err := b.DeleteEndpoint(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteNetwork(ctx, n.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := a.Endpoint(ctx, e.ID); ok {
		t.Error("the endpoint record is still there")
	}
	if got, err := a.Endpoints(ctx); err != nil || len(got) != 0 {
		t.Errorf("Endpoints after delete = %+v %v", got, err)
	}
	// A corrupt record is an error, not a crash or a silent miss.
	if _, err := a.cli.Put(ctx, "/test/docker/networks/bad", "{"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Network(ctx, "bad"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("corrupt record: %v", err)
	}
}
