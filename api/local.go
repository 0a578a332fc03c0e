package api

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"nvi/session"
)

// Status describes an agent.
type Status struct {
	Server    string     `json:"server"`
	DataIP    netip.Addr `json:"data_ip"`
	DataMAC   string     `json:"data_mac"`
	Bridge    string     `json:"bridge"`
	Ready     bool       `json:"ready"` // switch connected, pipeline installed, registered
	Switch    string     `json:"switch"`
	Directory string     `json:"directory"`
	Endpoints int        `json:"endpoints"`
	Sessions  int        `json:"sessions"`
}

// CreateEndpointRequest creates an endpoint on the agent's server. A zero IP
// asks for an address from the network; an empty MAC asks for a generated
// one.
type CreateEndpointRequest struct {
	Tenant  string     `json:"tenant"`
	Network string     `json:"network"`
	Name    string     `json:"name"`
	IP      netip.Addr `json:"ip,omitzero"`
	MAC     string     `json:"mac,omitempty"`
	IfaceID string     `json:"iface_id,omitempty"`
}

// Endpoint is an endpoint as a workload's plumbing needs it: everything to
// configure the interface inside the workload.
type Endpoint struct {
	Tenant    string     `json:"tenant"`
	Network   string     `json:"network"`
	Name      string     `json:"name"`
	IP        netip.Addr `json:"ip"`
	PrefixLen int        `json:"prefix_len"`
	Gateway   netip.Addr `json:"gateway"`
	MAC       string     `json:"mac"`
	Server    string     `json:"server"`
	IfaceID   string     `json:"iface_id"`
	OFPort    uint32     `json:"ofport,omitempty"`
	Interface string     `json:"interface,omitempty"`
	Bound     bool       `json:"bound"`
}

// AttachRequest plugs an interface of the agent's server into the bridge as
// an endpoint's port.
type AttachRequest struct {
	Tenant    string `json:"tenant"`
	Name      string `json:"name"`
	Interface string `json:"interface"`
}

// SessionInfo is a live session as the agent reports it.
type SessionInfo struct {
	session.Session
	State      string        `json:"state"`
	Packets    uint64        `json:"packets"`
	Age        time.Duration `json:"age_ns"`
	IdleFor    time.Duration `json:"idle_ns"`
	PeerServer string        `json:"peer_server,omitempty"`
}

// LocalService is what an agent offers tools on its own server.
type LocalService interface {
	Status(ctx context.Context) (Status, error)
	CreateEndpoint(ctx context.Context, req CreateEndpointRequest) (Endpoint, error)
	AttachEndpoint(ctx context.Context, req AttachRequest) (Endpoint, error)
	DeleteEndpoint(ctx context.Context, tenant, name string) error
	Endpoints(ctx context.Context) ([]Endpoint, error)
	// ServerEndpoints lists every endpoint the directory places on this
	// server, bound to a port or not: what a plugin's garbage collection
	// looks through.
	ServerEndpoints(ctx context.Context) ([]Endpoint, error)
	Sessions(ctx context.Context) ([]SessionInfo, error)
}

// LocalHandler serves svc.
func LocalHandler(svc LocalService, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	route(mux, log, "GET /v1/status", func(ctx context.Context, _ *http.Request, _ Empty) (Status, error) {
		return svc.Status(ctx)
	})
	route(mux, log, "POST /v1/endpoints", func(ctx context.Context, _ *http.Request, in CreateEndpointRequest) (Endpoint, error) {
		return svc.CreateEndpoint(ctx, in)
	})
	route(mux, log, "POST /v1/endpoints/attach", func(ctx context.Context, _ *http.Request, in AttachRequest) (Endpoint, error) {
		return svc.AttachEndpoint(ctx, in)
	})
	route(mux, log, "DELETE /v1/endpoints/{tenant}/{name}", func(ctx context.Context, r *http.Request, _ Empty) (Empty, error) {
		return Empty{}, svc.DeleteEndpoint(ctx, r.PathValue("tenant"), r.PathValue("name"))
	})
	route(mux, log, "GET /v1/endpoints", func(ctx context.Context, _ *http.Request, _ Empty) ([]Endpoint, error) {
		return svc.Endpoints(ctx)
	})
	route(mux, log, "GET /v1/server/endpoints", func(ctx context.Context, _ *http.Request, _ Empty) ([]Endpoint, error) {
		return svc.ServerEndpoints(ctx)
	})
	route(mux, log, "GET /v1/sessions", func(ctx context.Context, _ *http.Request, _ Empty) ([]SessionInfo, error) {
		return svc.Sessions(ctx)
	})
	return mux
}

// LocalClient calls the agent on this server over its unix socket.
type LocalClient struct{ c *client }

// NewLocalClient calls the agent listening on the unix socket at path.
func NewLocalClient(path string, timeout time.Duration) *LocalClient {
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	return &LocalClient{newClient("http://nvid", dial, timeout)}
}

// Status implements LocalService.
func (l *LocalClient) Status(ctx context.Context) (s Status, err error) {
	return s, l.c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// CreateEndpoint implements LocalService.
func (l *LocalClient) CreateEndpoint(ctx context.Context, req CreateEndpointRequest) (e Endpoint, err error) {
	return e, l.c.call(ctx, http.MethodPost, "/v1/endpoints", req, &e)
}

// AttachEndpoint implements LocalService.
func (l *LocalClient) AttachEndpoint(ctx context.Context, req AttachRequest) (e Endpoint, err error) {
	return e, l.c.call(ctx, http.MethodPost, "/v1/endpoints/attach", req, &e)
}

// DeleteEndpoint implements LocalService.
func (l *LocalClient) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	return l.c.call(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(tenant)+"/"+url.PathEscape(name), nil, nil)
}

// Endpoints implements LocalService.
func (l *LocalClient) Endpoints(ctx context.Context) (es []Endpoint, err error) {
	return es, l.c.call(ctx, http.MethodGet, "/v1/endpoints", nil, &es)
}

// ServerEndpoints implements LocalService.
func (l *LocalClient) ServerEndpoints(ctx context.Context) (es []Endpoint, err error) {
	return es, l.c.call(ctx, http.MethodGet, "/v1/server/endpoints", nil, &es)
}

// Sessions implements LocalService.
func (l *LocalClient) Sessions(ctx context.Context) (ss []SessionInfo, err error) {
	return ss, l.c.call(ctx, http.MethodGet, "/v1/sessions", nil, &ss)
}

// Close drops idle connections.
func (l *LocalClient) Close() { l.c.Close() }

// PeerCred is who is at the other end of a unix socket connection, as the
// kernel tells it (SO_PEERCRED): it cannot be forged by the caller.
type PeerCred struct {
	PID      int32
	UID, GID uint32
}

type credKey struct{}

type credResult struct {
	cred PeerCred
	err  error
}

// PeerCredOf returns the credentials ServeLocal read for the connection
// of a request.
func PeerCredOf(ctx context.Context) (PeerCred, bool) {
	r, ok := ctx.Value(credKey{}).(credResult)
	return r.cred, ok && r.err == nil
}

// ServeLocal runs h on the unix socket listener l until ctx ends, like
// Serve, but first asks authorize about the process at the other end of
// each connection. A caller it refuses (or whose credentials cannot be
// read) gets CodeDenied with the reason, and h never sees the request.
func ServeLocal(ctx context.Context, l net.Listener, h http.Handler, authorize func(PeerCred) error, log *slog.Logger) error {
	guarded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, ok := r.Context().Value(credKey{}).(credResult)
		switch {
		case !ok:
			writeError(w, Errorf(CodeDenied, "the agent cannot tell who is calling: not a unix socket connection"))
			return
		case res.err != nil:
			writeError(w, Errorf(CodeDenied, "the agent cannot tell who is calling: %v", res.err))
			return
		}
		if err := authorize(res.cred); err != nil {
			log.Warn("local API caller refused", "pid", res.cred.PID, "uid", res.cred.UID, "gid", res.cred.GID, "path", r.URL.Path, "reason", err)
			writeError(w, Errorf(CodeDenied, "%v", err))
			return
		}
		h.ServeHTTP(w, r)
	})
	srv := newServer(guarded, log)
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		cred, err := peerCred(c)
		return context.WithValue(ctx, credKey{}, credResult{cred, err})
	}
	return serveUntil(ctx, srv, l)
}
