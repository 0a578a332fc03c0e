package directory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"nvi/pipeline"
	"nvi/session"
)

// PortMap exposes a workload's port on the data address of the server the
// workload lives on: what reaches Server's address on Proto/Port goes to
// Tenant/Endpoint on TargetPort. A (server, protocol, port) is mapped at most
// once. Agents follow their own server's port maps through [Store.Watch]
// (events with PortMap set).
type PortMap struct {
	Server     string        `json:"server"`
	Proto      session.Proto `json:"proto"` // session.TCP or session.UDP
	Port       uint16        `json:"port"`  // on the server's data address
	Tenant     string        `json:"tenant"`
	Endpoint   string        `json:"endpoint"`
	TargetPort uint16        `json:"targetPort"`
}

// String reads "tcp/8080 of s1 -> acme/web1:80".
func (p PortMap) String() string {
	return fmt.Sprintf("%s/%d of %s -> %s/%s:%d", p.Proto, p.Port, p.Server, p.Tenant, p.Endpoint, p.TargetPort)
}

// validate checks what can be checked of p without the directory.
func (p PortMap) validate() error {
	if err := validateNames("tenant", p.Tenant, "endpoint", p.Endpoint); err != nil {
		return err
	}
	if p.Server != "" {
		if err := ValidateName("server", p.Server); err != nil {
			return err
		}
	}
	switch {
	case !p.Proto.HasPorts():
		return errorf(ErrInvalid, "port maps are for tcp and udp, not %s", p.Proto)
	case p.Port == 0 || p.TargetPort == 0:
		return errorf(ErrInvalid, "port map of %s/%s: ports must be 1-65535", p.Tenant, p.Endpoint)
	case session.DefaultKeyRange.Contains(p.Port):
		return errorf(ErrInvalid, "port %d is in %s, the range NVI keeps for session keys; expose another port", p.Port, session.DefaultKeyRange)
	case natPorts.Contains(p.Port):
		return errorf(ErrInvalid, "port %d is in %s, the range egress NAT uses on every server; expose another port", p.Port, natPorts)
	}
	return nil
}

// natPorts is the egress NAT range (pipeline.NATPortBase/NATPortMask): a
// port map there would take the replies to other workloads' egress.
var natPorts = PortRange{pipeline.NATPortBase, pipeline.NATPortBase | ^pipeline.NATPortMask}

// CheckPort says why port may not be exposed on server s's data address,
// or returns nil: the server's session-key range, the egress NAT range, the
// agent's own port and the ports it reserved are its own. [Store.Expose]
// checks it, and an agent should check it again before installing a map.
func (s Server) CheckPort(port uint16) error {
	keys := s.KeyRange
	if keys == (session.KeyRange{}) {
		keys = session.DefaultKeyRange
	}
	switch {
	case port == 0:
		return errorf(ErrInvalid, "port 0 cannot be exposed")
	case keys.Contains(port):
		return errorf(ErrInvalid, "port %d is in %s, the range server %s keeps for session keys; expose another port", port, keys, s.Name)
	case natPorts.Contains(port):
		return errorf(ErrInvalid, "port %d is in %s, the range egress NAT uses on every server; expose another port", port, natPorts)
	}
	if ap, err := netip.ParseAddrPort(s.AgentAddr); err == nil && ap.Port() == port {
		return errorf(ErrInvalid, "port %d is the agent API port of server %s; expose another port", port, s.Name)
	}
	for _, r := range s.Reserved {
		if r.Contains(port) {
			return errorf(ErrInvalid, "port %d is reserved on server %s (%s: host services); expose another port", port, s.Name, r)
		}
	}
	return nil
}

// Expose maps p.Port of the server the endpoint lives on to the endpoint's
// p.TargetPort, and returns the map with its server filled in. p.Server may
// be empty; when given, it must be the endpoint's server. That server must
// be registered, and the port free of what it keeps for itself
// ([Server.CheckPort]: its key range, egress NAT, its agent and reserved
// ports). The write compares the port unmapped and the endpoint and server
// record unchanged, so a port is never mapped twice, never to an endpoint
// being deleted, and never past a change of the server's reserved ports.
func (s *Store) Expose(ctx context.Context, p PortMap) (PortMap, error) {
	if err := p.validate(); err != nil {
		return PortMap{}, err
	}
	op := fmt.Sprintf("exposing %s/%s:%d", p.Tenant, p.Endpoint, p.TargetPort)
	return retry(ctx, op, "the endpoint keeps changing", func() (PortMap, bool, error) {
		er, err := s.endpoint(ctx, p.Tenant, p.Endpoint)
		if err != nil {
			return PortMap{}, false, err
		}
		if p.Server != "" && p.Server != er.val.Server {
			return PortMap{}, false, errorf(ErrInvalid, "endpoint %s lives on server %s, not %s", er.val.Ref(), er.val.Server, p.Server)
		}
		p.Server = er.val.Server
		sr, err := s.server(ctx, p.Server)
		if errors.Is(err, ErrNotFound) {
			return PortMap{}, false, errorf(ErrNotFound, "server %s of endpoint %s is not registered, so the ports it keeps are unknown; expose the port once it runs", p.Server, er.val.Ref())
		}
		if err != nil {
			return PortMap{}, false, err
		}
		if err := sr.val.CheckPort(p.Port); err != nil {
			return PortMap{}, false, err
		}
		key := s.k.portMap(p.Server, p.Proto, p.Port)
		resp, err := s.txn(ctx, op, []clientv3.Cmp{absent(key), unchanged(s.k.endpoint(p.Tenant, p.Endpoint), er.modRev), unchanged(s.k.server(p.Server), sr.modRev)},
			[]clientv3.Op{clientv3.OpPut(key, mustJSON(p))}, []clientv3.Op{clientv3.OpGet(key)})
		if err != nil || resp.Succeeded {
			return p, true, err
		}
		if kv := kvs(resp, 0); len(kv) > 0 {
			var old PortMap
			if err := s.decodeStored(kv[0], &old); err != nil {
				return PortMap{}, false, errorf(ErrConflict, "port %s/%d of %s is already taken by a malformed port map (%v); unexpose it first", p.Proto, p.Port, p.Server, err)
			}
			return PortMap{}, false, errorf(ErrConflict, "port %s/%d of %s is already mapped to %s/%s:%d", p.Proto, p.Port, p.Server, old.Tenant, old.Endpoint, old.TargetPort)
		}
		return PortMap{}, false, nil // the endpoint changed: look again
	})
}

// Unexpose removes the map of server's proto/port.
func (s *Store) Unexpose(ctx context.Context, server string, proto session.Proto, port uint16) error {
	if err := ValidateName("server", server); err != nil {
		return err
	}
	return s.deleteKey(ctx, "unexposing a port", s.k.portMap(server, proto, port), fmt.Sprintf("port %s/%d of %s is not mapped", proto, port, server))
}

// PortMaps lists the port maps of one server, or of all servers when server
// is "", sorted by server, protocol and port.
func (s *Store) PortMaps(ctx context.Context, server string) ([]PortMap, error) {
	prefix := s.k.allPortMaps()
	if server != "" {
		if err := ValidateName("server", server); err != nil {
			return nil, err
		}
		prefix = s.k.portMaps(server)
	}
	out, _, err := listJSON[PortMap](ctx, s, "listing port maps", prefix)
	slices.SortFunc(out, func(a, b PortMap) int {
		return cmp.Or(cmp.Compare(a.Server, b.Server), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	return out, err
}
