package docker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const testNetworkID = "604cdffbbffd7fcad0ce674eaa746ed67b0675ccbecb57e5632dfa51f892439e"

// TestConcurrentContainers runs ten containers' whole lives at once, the
// way several "docker run" in parallel call the plugin: every one gets its
// own address, MAC-named endpoint and veth, and nothing is left after.
func TestConcurrentContainers(t *testing.T) {
	r := newRig(t)
	post := func(method string, req any) map[string]any {
		b, _ := json.Marshal(req)
		status, got := r.call("", method, b)
		m, _ := got.(map[string]any)
		if status != 200 || m["Err"] != nil {
			t.Errorf("%s %s: %d %v", method, b, status, got)
		}
		return m
	}
	post("IpamDriver.RequestPool", map[string]any{"AddressSpace": "nvi", "Options": map[string]string{NetworkOption: "acme/web"}})
	post("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": testNetworkID,
		"Options":   map[string]any{genericOptions: map[string]any{NetworkOption: "acme/web"}},
		"IPv4Data":  []map[string]string{{"AddressSpace": "nvi", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}},
	})
	ids := func(i int) (mac, eid string) {
		return fmt.Sprintf("02:42:0a:00:00:%02x", i), fmt.Sprintf("%02d", i) + strings.Repeat("e", 62)
	}
	addrs := make([]string, 10)
	parallel := func(fn func(i int)) {
		var wg sync.WaitGroup
		for i := range len(addrs) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fn(i)
			}()
		}
		wg.Wait()
	}
	parallel(func(i int) {
		mac, eid := ids(i)
		got := post("IpamDriver.RequestAddress", map[string]any{"PoolID": "acme/web", "Options": map[string]string{macOption: mac}})
		addrs[i], _ = got["Address"].(string)
		post("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": testNetworkID, "EndpointID": eid, "Interface": map[string]string{"Address": addrs[i], "MacAddress": mac}})
		join := post("NetworkDriver.Join", map[string]any{"NetworkID": testNetworkID, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"})
		if want := map[string]any{"SrcName": "nvc" + eid[:12], "DstPrefix": "eth"}; !reflect.DeepEqual(join["InterfaceName"], want) {
			t.Errorf("Join: %v", join)
		}
	})
	distinct := map[string]bool{}
	for _, a := range addrs {
		distinct[a] = true
	}
	if len(distinct) != len(addrs) || len(r.links.names()) != 2*len(addrs) {
		t.Errorf("addresses %v, interfaces %v: want %d of each pair, all distinct", addrs, r.links.names(), len(addrs))
	}
	parallel(func(i int) {
		_, eid := ids(i)
		ep := map[string]string{"NetworkID": testNetworkID, "EndpointID": eid}
		post("NetworkDriver.EndpointOperInfo", ep)
		post("NetworkDriver.Leave", ep)
		post("NetworkDriver.DeleteEndpoint", ep)
		post("IpamDriver.ReleaseAddress", map[string]string{"PoolID": "acme/web", "Address": strings.TrimSuffix(addrs[i], "/24")})
	})
	post("NetworkDriver.DeleteNetwork", map[string]string{"NetworkID": testNetworkID})
	checkWorld(t, -1, r.world(), world{Endpoints: []string{"acme/dkw1"}})
}

func TestReservationName(t *testing.T) {
	for _, c := range []struct{ mac, name, canonical string }{
		{"02:42:b2:24:84:d3", "docker-0242b22484d3", "02:42:b2:24:84:d3"},
		{"02:42:B2:24:84:D3", "docker-0242b22484d3", "02:42:b2:24:84:d3"},
		{"02-42-b2-24-84-d3", "docker-0242b22484d3", "02:42:b2:24:84:d3"},
	} {
		name, canonical, err := reservationName(c.mac)
		if err != nil || name != c.name || canonical != c.canonical || !reservationRe.MatchString(name) {
			t.Errorf("reservationName(%q) = %q %q %v", c.mac, name, canonical, err)
		}
	}
	for _, bad := range []string{"", "02:42", "00:00:00:00:00:00:00:01", "zz:42:b2:24:84:d3"} {
		if _, _, err := reservationName(bad); err == nil {
			t.Errorf("reservationName(%q) accepted", bad)
		}
	}
}
