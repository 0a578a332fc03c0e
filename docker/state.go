package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultStatePrefix is where the driver keeps its records in the directory's
// etcd, beside (not under) NVI's own prefix, so agents never see them:
//
//	networks/<docker network ID>    NetworkRecord
//	endpoints/<docker endpoint ID>  EndpointRecord
const DefaultStatePrefix = "/nvi/docker/v1/"

// NetworkRecord is a Docker network the driver created.
type NetworkRecord struct {
	ID      string       `json:"id"`
	Tenant  string       `json:"tenant"`
	Network string       `json:"network"`
	CIDR    netip.Prefix `json:"cidr"`
	Gateway netip.Addr   `json:"gateway"`
}

// EndpointRecord is a Docker endpoint and the NVI endpoint that carries it.
type EndpointRecord struct {
	ID        string       `json:"id"`
	NetworkID string       `json:"network_id"`
	Tenant    string       `json:"tenant"`
	Name      string       `json:"name"` // the NVI endpoint's name in Tenant
	Address   netip.Prefix `json:"address"`
	MAC       string       `json:"mac"`
}

// State keeps the driver's records. Missing records are reported by found
// being false, not as errors.
type State interface {
	PutNetwork(ctx context.Context, r NetworkRecord) error
	Network(ctx context.Context, id string) (r NetworkRecord, found bool, err error)
	DeleteNetwork(ctx context.Context, id string) error
	PutEndpoint(ctx context.Context, r EndpointRecord) error
	Endpoint(ctx context.Context, id string) (r EndpointRecord, found bool, err error)
	DeleteEndpoint(ctx context.Context, id string) error
	Endpoints(ctx context.Context) ([]EndpointRecord, error)
}

// EtcdState keeps records in etcd under a prefix.
type EtcdState struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
}

// NewEtcdState keeps records under prefix ("" means DefaultStatePrefix).
func NewEtcdState(cli *clientv3.Client, prefix string) *EtcdState {
	if prefix == "" {
		prefix = DefaultStatePrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &EtcdState{cli: cli, prefix: prefix, timeout: 5 * time.Second}
}

func (s *EtcdState) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

func (s *EtcdState) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if _, err := s.cli.Put(ctx, s.prefix+key, string(b)); err != nil {
		return fmt.Errorf("directory: writing %s: %w", key, err)
	}
	return nil
}

func (s *EtcdState) get(ctx context.Context, key string, v any) (bool, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+key)
	if err != nil {
		return false, fmt.Errorf("directory: reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return false, fmt.Errorf("directory: record %s is corrupt: %w", key, err)
	}
	return true, nil
}

func (s *EtcdState) del(ctx context.Context, key string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if _, err := s.cli.Delete(ctx, s.prefix+key); err != nil {
		return fmt.Errorf("directory: deleting %s: %w", key, err)
	}
	return nil
}

// PutNetwork implements State.
func (s *EtcdState) PutNetwork(ctx context.Context, r NetworkRecord) error {
	return s.put(ctx, "networks/"+r.ID, r)
}

// Network implements State.
func (s *EtcdState) Network(ctx context.Context, id string) (r NetworkRecord, found bool, err error) {
	found, err = s.get(ctx, "networks/"+id, &r)
	return r, found, err
}

// DeleteNetwork implements State.
func (s *EtcdState) DeleteNetwork(ctx context.Context, id string) error {
	return s.del(ctx, "networks/"+id)
}

// PutEndpoint implements State.
func (s *EtcdState) PutEndpoint(ctx context.Context, r EndpointRecord) error {
	return s.put(ctx, "endpoints/"+r.ID, r)
}

// Endpoint implements State.
func (s *EtcdState) Endpoint(ctx context.Context, id string) (r EndpointRecord, found bool, err error) {
	found, err = s.get(ctx, "endpoints/"+id, &r)
	return r, found, err
}

// DeleteEndpoint implements State.
func (s *EtcdState) DeleteEndpoint(ctx context.Context, id string) error {
	return s.del(ctx, "endpoints/"+id)
}

// Endpoints implements State.
func (s *EtcdState) Endpoints(ctx context.Context) ([]EndpointRecord, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"endpoints/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("directory: listing endpoint records: %w", err)
	}
	out := make([]EndpointRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r EndpointRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("directory: record %s is corrupt: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// MemState keeps records in memory: for tests, and for a driver that may
// forget everything when it stops.
type MemState struct {
	mu        sync.Mutex
	networks  map[string]NetworkRecord
	endpoints map[string]EndpointRecord
}

// NewMemState returns an empty MemState.
func NewMemState() *MemState {
	return &MemState{networks: map[string]NetworkRecord{}, endpoints: map[string]EndpointRecord{}}
}

// PutNetwork implements State.
func (m *MemState) PutNetwork(_ context.Context, r NetworkRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.networks[r.ID] = r
	return nil
}

// Network implements State.
func (m *MemState) Network(_ context.Context, id string) (NetworkRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.networks[id]
	return r, ok, nil
}

// DeleteNetwork implements State.
func (m *MemState) DeleteNetwork(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.networks, id)
	return nil
}

// PutEndpoint implements State.
func (m *MemState) PutEndpoint(_ context.Context, r EndpointRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.endpoints[r.ID] = r
	return nil
}

// Endpoint implements State.
func (m *MemState) Endpoint(_ context.Context, id string) (EndpointRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.endpoints[id]
	return r, ok, nil
}

// DeleteEndpoint implements State.
func (m *MemState) DeleteEndpoint(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.endpoints, id)
	return nil
}

// Endpoints implements State.
func (m *MemState) Endpoints(context.Context) ([]EndpointRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]EndpointRecord, 0, len(m.endpoints))
	for _, r := range m.endpoints {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Networks lists the network records (for tests).
func (m *MemState) Networks() []NetworkRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]NetworkRecord, 0, len(m.networks))
	for _, r := range m.networks {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
