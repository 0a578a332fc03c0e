package directory

import (
	"encoding/json"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"nvi/policy"
)

// FuzzStoredRecord: any bytes under any key, decoded as any kind of record,
// are either refused with an error or pass the checks a writer makes: a
// record that decodes encodes and decodes again to the same checked value.
// Nothing panics.
func FuzzStoredRecord(f *testing.F) {
	f.Add("/nvi/v1/servers/s1", []byte(`{"name":"s1","dataIP":"192.0.2.1","dataMAC":"02:00:00:00:00:01","agentAddr":"192.0.2.1:7470"}`), uint8(0))
	f.Add("/nvi/v1/servers/v6", []byte(`{"name":"v6","dataIP":"2001:db8::9","dataMAC":"02:00:00:00:00:09"}`), uint8(0))
	f.Add("/nvi/v1/endpoints/acme/w1", []byte(`{"tenant":"acme","network":"web","name":"w1","ip":"10.1.0.2","mac":"0a:00:00:00:00:01","server":"s1"}`), uint8(1))
	f.Add("/nvi/v1/rules/acme/00000001", []byte(`{"id":"00000001","action":"Deny","from":{"kind":"any"},"to":{"kind":"any"}}`), uint8(2))
	f.Add("/nvi/v1/networks/acme/web", []byte(`{"tenant":"acme","name":"web","cidr":"10.1.0.0/24"}`), uint8(3))
	f.Add("/nvi/v1/portmaps/s1/tcp/8080", []byte(`{not json`), uint8(4))
	s := &Store{k: keys{prefix: DefaultPrefix}}
	f.Fuzz(func(t *testing.T, key string, value []byte, kind uint8) {
		fresh := func() any {
			switch kind % 6 {
			case 0:
				return &Server{}
			case 1:
				return &Endpoint{}
			case 2:
				return &policy.Rule{}
			case 3:
				return &Network{}
			case 4:
				return &PortMap{}
			default:
				return &Tenant{}
			}
		}
		v := fresh()
		if err := s.decodeStored(&mvccpb.KeyValue{Key: []byte(key), Value: value}, v); err != nil {
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("a checked %T does not encode: %v", v, err)
		}
		again := fresh()
		if err := s.decodeStored(&mvccpb.KeyValue{Key: []byte(key), Value: b}, again); err != nil {
			t.Fatalf("%s: a record that passed the checks fails them once re-encoded (%s): %v", key, b, err)
		}
	})
}
