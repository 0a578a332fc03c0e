package api

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"nvi/session"
)

// AcceptRequest asks the server workload's agent to install its half of a
// session. The receiving agent re-checks everything itself (that the client
// lives where From says, that policy allows it) and never trusts the caller.
type AcceptRequest struct {
	From  string        `json:"from"`  // the client's server
	Tuple session.Tuple `json:"tuple"` // for ICMP, Port is the client's echo identifier
	Key   uint16        `json:"key"`   // chosen by the client's server, unique per (peer, protocol)
}

// ReleaseRequest asks the peer to remove its half of a session. It is sent
// by whichever end decides the session is over; the receiver removes its
// flows, waits for the barrier, and only then answers, so both halves go
// together.
type ReleaseRequest struct {
	From   string        `json:"from"`
	Role   session.Role  `json:"role"` // the sender's role in the session
	Tuple  session.Tuple `json:"tuple"`
	Key    uint16        `json:"key"`
	Reason string        `json:"reason"`
}

// ReopenRequest asks a client workload's agent to set its session up again
// because the server workload answers in a connection the session carried
// before it idled out. The client's agent re-checks policy and runs an
// ordinary setup; it answers once the session is established.
type ReopenRequest struct {
	From  string        `json:"from"` // the server workload's server
	Tuple session.Tuple `json:"tuple"`
}

// PeerService is what an agent offers other agents.
type PeerService interface {
	Accept(ctx context.Context, req AcceptRequest) error
	Release(ctx context.Context, req ReleaseRequest) error
	Reopen(ctx context.Context, req ReopenRequest) error
}

// Peer API paths.
const (
	pathAccept  = "/v1/sessions/accept"
	pathRelease = "/v1/sessions/release"
	pathReopen  = "/v1/sessions/reopen"
)

// PeerHandler serves svc.
func PeerHandler(svc PeerService, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	route(mux, log, "POST "+pathAccept, func(ctx context.Context, _ *http.Request, in AcceptRequest) (Empty, error) {
		return Empty{}, svc.Accept(ctx, in)
	})
	route(mux, log, "POST "+pathRelease, func(ctx context.Context, _ *http.Request, in ReleaseRequest) (Empty, error) {
		return Empty{}, svc.Release(ctx, in)
	})
	route(mux, log, "POST "+pathReopen, func(ctx context.Context, _ *http.Request, in ReopenRequest) (Empty, error) {
		return Empty{}, svc.Reopen(ctx, in)
	})
	return mux
}

// PeerClient calls one peer agent.
type PeerClient struct{ c *client }

// NewPeerClient calls the agent at addr ("ip:port"); calls without a
// deadline of their own get timeout.
func NewPeerClient(addr string, timeout time.Duration) *PeerClient {
	return &PeerClient{newClient("http://"+addr, nil, timeout)}
}

// Accept implements PeerService over the network.
func (p *PeerClient) Accept(ctx context.Context, req AcceptRequest) error {
	return p.c.call(ctx, http.MethodPost, pathAccept, req, nil)
}

// Release implements PeerService over the network.
func (p *PeerClient) Release(ctx context.Context, req ReleaseRequest) error {
	return p.c.call(ctx, http.MethodPost, pathRelease, req, nil)
}

// Reopen implements PeerService over the network.
func (p *PeerClient) Reopen(ctx context.Context, req ReopenRequest) error {
	return p.c.call(ctx, http.MethodPost, pathReopen, req, nil)
}

// Close drops idle connections.
func (p *PeerClient) Close() { p.c.Close() }
