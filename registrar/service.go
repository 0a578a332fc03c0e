// Package registrar makes the claims servers share in the directory —
// their workloads' endpoints (with the address and iface indexes) and
// their address blocks — on their behalf.
//
// Those keys belong to no prefix that one server could be granted in etcd,
// so servers' credentials may only read them. The registrar holds the
// directory's root credential, takes the calling server's name from its
// client certificate (never from the request), and makes each claim for
// that name with [directory.Claims], which checks it inside the writing
// transaction: a server creates endpoints on itself only, changes and
// deletes only endpoints that live on it, and claims, moves and releases
// only its own blocks. It runs beside the enrollment service ('nvictl ca
// serve'), on the same listener and certificate, and is stateless: any
// number of them may serve one directory.
//
// An agent reaches it only to create, bind or delete a workload and to
// claim address blocks — never on the packet path.
package registrar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"

	"golang.org/x/time/rate"

	"nvi/directory"
)

// Prefix is the path under which the registrar answers; the enrollment
// service routes it here.
const Prefix = "/v1/claims/"

// Paths of the API: POST, JSON in and out.
const (
	pathCreate  = Prefix + "endpoints/create"
	pathPort    = Prefix + "endpoints/port"
	pathDelete  = Prefix + "endpoints/delete"
	pathClaim   = Prefix + "blocks/claim"
	pathAdopt   = Prefix + "blocks/adopt"
	pathKeep    = Prefix + "blocks/keep"
	pathRelease = Prefix + "blocks/release"
)

// Config configures the registrar.
type Config struct {
	// Directory writes the claims; its credential must be root.
	Directory *directory.Store
	// Caller is the server a request speaks for, from its verified client
	// certificate ([enroll.Service.Caller]); an error refuses the request.
	Caller func(r *http.Request) (string, error)
	// Rate and Burst bound each server's requests a second (defaults 50,
	// 200: a burst of workloads starting); MaxInFlight bounds requests
	// handled at once, all servers together (default 16).
	Rate        float64
	Burst       int
	MaxInFlight int
	Logger      *slog.Logger
}

// Service is the registrar.
type Service struct {
	cfg   Config
	slots chan struct{}

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // per server
}

// maxLimiters bounds the per-server table; only enrolled servers get past
// Caller, so it is reached only by a very large cloud, which then starts
// over.
const maxLimiters = 1 << 16

// New returns the registrar of cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Directory == nil || cfg.Caller == nil {
		return nil, errors.New("registrar: a directory and a caller check are required")
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 50
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 200
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, slots: make(chan struct{}, cfg.MaxInFlight), limiters: map[string]*rate.Limiter{}}, nil
}

type endpointRef struct {
	Tenant string `json:"tenant"`
	Name   string `json:"name"`
}

type portRequest struct {
	Tenant string `json:"tenant"`
	Name   string `json:"name"`
	Port   uint32 `json:"port"`
}

type networkRef struct {
	Tenant  string `json:"tenant"`
	Network string `json:"network"`
}

type blockAnswer struct {
	Block netip.Prefix `json:"block"`
}

type blocksAnswer struct {
	Blocks []netip.Prefix `json:"blocks"`
}

type keepRequest struct {
	Blocks []directory.BlockRef `json:"blocks"`
}

type keepAnswer struct {
	Lost []directory.BlockRef `json:"lost"`
}

type empty struct{}

// errorAnswer is a refusal: the directory's sentence and its kind, so that
// the client returns an error wrapping the same sentinel
// (directory.ErrConflict for a taken address, ...).
type errorAnswer struct {
	Error string `json:"error"`
	Kind  string `json:"kind,omitempty"`
}

// kinds maps the directory's sentinels to the wire and to HTTP statuses.
var kinds = []struct {
	name   string
	err    error
	status int
}{
	{"not-found", directory.ErrNotFound, http.StatusNotFound},
	{"exists", directory.ErrExists, http.StatusConflict},
	{"invalid", directory.ErrInvalid, http.StatusBadRequest},
	{"conflict", directory.ErrConflict, http.StatusConflict},
	{"denied", directory.ErrDenied, http.StatusForbidden},
	{"unavailable", directory.ErrUnavailable, http.StatusServiceUnavailable},
}

// Handler is the registrar's API.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	handle(mux, s, pathCreate, func(ctx context.Context, c *directory.Claims, in directory.Endpoint) (directory.Endpoint, error) {
		return c.CreateEndpoint(ctx, in)
	})
	handle(mux, s, pathPort, func(ctx context.Context, c *directory.Claims, in portRequest) (directory.Endpoint, error) {
		return c.UpdateEndpointPort(ctx, in.Tenant, in.Name, in.Port)
	})
	handle(mux, s, pathDelete, func(ctx context.Context, c *directory.Claims, in endpointRef) (empty, error) {
		return empty{}, c.DeleteEndpoint(ctx, in.Tenant, in.Name)
	})
	handle(mux, s, pathClaim, func(ctx context.Context, c *directory.Claims, in networkRef) (blockAnswer, error) {
		b, err := c.ClaimBlock(ctx, in.Tenant, in.Network)
		return blockAnswer{b}, err
	})
	handle(mux, s, pathAdopt, func(ctx context.Context, c *directory.Claims, in networkRef) (blocksAnswer, error) {
		bs, err := c.AdoptBlocks(ctx, in.Tenant, in.Network)
		return blocksAnswer{bs}, err
	})
	handle(mux, s, pathKeep, func(ctx context.Context, c *directory.Claims, in keepRequest) (keepAnswer, error) {
		if len(in.Blocks) > maxKeep {
			return keepAnswer{}, badRequest("at most %d blocks at a time", maxKeep)
		}
		lost, err := c.KeepBlocks(ctx, in.Blocks)
		return keepAnswer{lost}, err
	})
	handle(mux, s, pathRelease, func(ctx context.Context, c *directory.Claims, in directory.BlockRef) (empty, error) {
		return empty{}, c.ReleaseBlock(ctx, in)
	})
	return mux
}

// maxKeep bounds the blocks one keep request moves (the client splits).
const maxKeep = 256

// handle routes path to op, made for the calling server: who it is, whether
// it is within its rate, and a slot to run in are settled first.
func handle[In, Out any](mux *http.ServeMux, s *Service, path string, op func(context.Context, *directory.Claims, In) (Out, error)) {
	mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		server, err := s.cfg.Caller(r)
		if err != nil {
			s.cfg.Logger.Warn("registrar: request refused", "path", path, "from", r.RemoteAddr, "err", err)
			writeJSON(w, http.StatusForbidden, errorAnswer{Error: "registrar: " + err.Error(), Kind: "denied"})
			return
		}
		if !s.limiter(server).Allow() {
			writeJSON(w, http.StatusTooManyRequests, errorAnswer{Error: "registrar: too many requests from server " + server + ": try again shortly", Kind: "unavailable"})
			return
		}
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
		case <-r.Context().Done():
			return
		}
		claims, err := s.cfg.Directory.ClaimsFor(server)
		if err != nil {
			writeError(w, err)
			return
		}
		var in In
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeError(w, badRequest("bad request body: %v", err))
			return
		}
		out, err := op(r.Context(), claims, in)
		if err != nil {
			s.cfg.Logger.Info("registrar: claim refused", "server", server, "path", path, "err", err)
			writeError(w, err)
			return
		}
		s.cfg.Logger.Debug("registrar: claim made", "server", server, "path", path)
		writeJSON(w, http.StatusOK, out)
	})
}

func (s *Service) limiter(server string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limiters[server]
	if l == nil {
		if len(s.limiters) >= maxLimiters {
			s.limiters = map[string]*rate.Limiter{}
		}
		l = rate.NewLimiter(rate.Limit(s.cfg.Rate), s.cfg.Burst)
		s.limiters[server] = l
	}
	return l
}

// badRequest is a malformed request, refused as the directory refuses an
// invalid one.
func badRequest(format string, args ...any) error {
	return &remoteError{kind: directory.ErrInvalid, msg: "registrar: " + fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, err error) {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			writeJSON(w, k.status, errorAnswer{Error: err.Error(), Kind: k.name})
			return
		}
	}
	writeJSON(w, http.StatusInternalServerError, errorAnswer{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
