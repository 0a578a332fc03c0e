package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"nvi/session"
)

// AcceptRequest asks the server workload's agent to install its half of a
// session. The receiving agent re-checks everything itself (that the client
// lives on the calling server, that policy allows it) and never trusts the
// body: who calls is what the caller's certificate says.
type AcceptRequest struct {
	From  string        `json:"from,omitempty"` // the client's server; if set, it must be the caller
	Tuple session.Tuple `json:"tuple"`          // for ICMP, Port is the client's echo identifier
	Key   uint16        `json:"key"`            // chosen by the client's server, unique per (peer, protocol)
	// Frames are the session's first packets as the client workload sent
	// them (at most MaxAcceptFrames, TCP and UDP only). The peer delivers
	// them itself once its half is in place, through its own pipeline as
	// if they had come from the client's server, which has installed the
	// way back before asking; so the first packet does not wait for the
	// answer and the client's other half.
	Frames [][]byte `json:"frames,omitempty"`
}

// MaxAcceptFrames bounds the frames an Accept carries, and
// MaxAcceptFrameBytes their total size.
const (
	MaxAcceptFrames     = session.MaxFirstPackets
	MaxAcceptFrameBytes = session.MaxFirstPacketBytes
)

// AcceptReply says how many of the request's frames the peer took on
// (delivered, or dropped as not the session's); the client delivers the
// rest itself.
type AcceptReply struct {
	Delivered int `json:"delivered,omitempty"`
}

// ReleaseRequest asks the peer to remove its half of a session. It is sent
// by whichever end decides the session is over; the receiver removes its
// flows, waits for the barrier, and only then answers, so both halves go
// together. Only the session's own peer may release it.
type ReleaseRequest struct {
	From   string        `json:"from,omitempty"` // if set, it must be the caller
	Role   session.Role  `json:"role"`           // the sender's role in the session
	Tuple  session.Tuple `json:"tuple"`
	Key    uint16        `json:"key"`
	Reason string        `json:"reason"`
}

// ReopenRequest asks a client workload's agent to set its session up again
// because the server workload answers in a connection the session carried
// before it idled out. The client's agent re-checks policy and runs an
// ordinary setup; it answers once the session is established.
type ReopenRequest struct {
	From  string        `json:"from,omitempty"` // the server workload's server; if set, it must be the caller
	Tuple session.Tuple `json:"tuple"`
}

// PeerService is what an agent offers other agents. caller is the server
// the request comes from as its certificate proves it, never as the body
// claims it.
type PeerService interface {
	Accept(ctx context.Context, caller string, req AcceptRequest) (AcceptReply, error)
	Release(ctx context.Context, caller string, req ReleaseRequest) error
	Reopen(ctx context.Context, caller string, req ReopenRequest) error
}

// Peer API paths.
const (
	pathAccept  = "/v1/sessions/accept"
	pathRelease = "/v1/sessions/release"
	pathReopen  = "/v1/sessions/reopen"
)

// CallerFunc names the server that sent r. It fails with
// CodeUnauthenticated when r carries no identity, and with CodeDenied when
// the identity is not a server's.
type CallerFunc func(r *http.Request) (string, error)

// TLSCaller derives the caller from the verified client certificate of the
// request's connection; peerName maps a verified connection to the server
// it speaks for (pki.Identity.PeerName does).
func TLSCaller(peerName func(*tls.ConnectionState) (string, error)) CallerFunc {
	return func(r *http.Request) (string, error) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
			return "", Errorf(CodeUnauthenticated, "the peer API needs a verified client certificate")
		}
		name, err := peerName(r.TLS)
		if err != nil || name == "" {
			return "", Errorf(CodeDenied, "the client certificate is refused: %v", err)
		}
		return name, nil
	}
}

// Defaults of PeerOptions.
const (
	DefaultPeerRate        = 1000 // calls per second per caller
	DefaultPeerBurst       = 1000
	DefaultPeerMaxInFlight = 128
	maxLimitedCallers      = 4096 // bounds the per-caller table
)

// PeerOptions say who may call the peer API and how much.
type PeerOptions struct {
	// Caller names the server a request comes from. With none, and
	// InsecureTrustFrom unset, every call is refused.
	Caller CallerFunc
	// InsecureTrustFrom takes the caller from the body's From, unproven:
	// anyone who reaches the port can then speak for any server. Only for
	// measuring what authentication costs.
	InsecureTrustFrom bool
	Rate              rate.Limit // calls per second per caller; 0: DefaultPeerRate
	Burst             int        // 0: DefaultPeerBurst
	MaxInFlight       int        // calls served at once, all callers together; 0: DefaultPeerMaxInFlight
}

func (o *PeerOptions) defaults() {
	if o.Rate == 0 {
		o.Rate = DefaultPeerRate
	}
	if o.Burst == 0 {
		o.Burst = DefaultPeerBurst
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultPeerMaxInFlight
	}
}

// peerHandler admits calls: caller identified, under its rate, under the
// concurrency bound, body consistent with the caller.
type peerHandler struct {
	opts     PeerOptions
	log      *slog.Logger
	inFlight chan struct{}

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

// PeerHandler serves svc to the callers opts admits.
func PeerHandler(svc PeerService, opts PeerOptions, log *slog.Logger) http.Handler {
	opts.defaults()
	h := &peerHandler{opts: opts, log: log, inFlight: make(chan struct{}, opts.MaxInFlight), limiters: map[string]*rate.Limiter{}}
	mux := http.NewServeMux()
	peerRoute(mux, h, "POST "+pathAccept, func(r *AcceptRequest) string { return r.From }, svc.Accept)
	peerRoute(mux, h, "POST "+pathRelease, func(r *ReleaseRequest) string { return r.From }, noReply(svc.Release))
	peerRoute(mux, h, "POST "+pathReopen, func(r *ReopenRequest) string { return r.From }, noReply(svc.Reopen))
	return mux
}

// retryAfter is what a refused-because-busy caller is told to wait.
const retryAfter = time.Second

// noReply makes a call that answers nothing answer the empty object.
func noReply[In any](call func(context.Context, string, In) error) func(context.Context, string, In) (Empty, error) {
	return func(ctx context.Context, caller string, in In) (Empty, error) { return Empty{}, call(ctx, caller, in) }
}

func peerRoute[In, Out any](mux *http.ServeMux, h *peerHandler, pattern string, from func(*In) string, call func(context.Context, string, In) (Out, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		caller := ""
		if !h.opts.InsecureTrustFrom {
			var err error
			if caller, err = h.caller(r); err != nil {
				h.log.Info("peer API call refused", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
				writeError(w, err)
				return
			}
			if !h.allow(caller) {
				busy(w, "too many calls from %s; retry later", caller)
				return
			}
		}
		select {
		case h.inFlight <- struct{}{}:
			defer func() { <-h.inFlight }()
		default:
			busy(w, "the peer API is busy; retry later")
			return
		}
		var in In
		if r.Body != nil && r.ContentLength != 0 {
			dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in); err != nil && !errors.Is(err, io.EOF) {
				writeError(w, Errorf(CodeInvalid, "bad request body: %v", err))
				return
			}
		}
		claimed := from(&in)
		switch {
		case h.opts.InsecureTrustFrom && claimed == "":
			writeError(w, Errorf(CodeInvalid, "the request must say which server it is from"))
			return
		case h.opts.InsecureTrustFrom:
			caller = claimed
			if !h.allow(caller) {
				busy(w, "too many calls from %s; retry later", caller)
				return
			}
		case claimed != "" && claimed != caller:
			h.log.Warn("peer API call speaks for another server", "path", r.URL.Path, "caller", caller, "from", claimed, "remote", r.RemoteAddr)
			writeError(w, Errorf(CodeDenied, "the request says it is from %s but the certificate is %s's", claimed, caller))
			return
		}
		out, err := call(r.Context(), caller, in)
		if err != nil {
			if CodeOf(err) == CodeInternal {
				h.log.Warn("peer API call failed", "path", r.URL.Path, "caller", caller, "err", err)
			}
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

func (h *peerHandler) caller(r *http.Request) (string, error) {
	if h.opts.Caller == nil {
		return "", Errorf(CodeUnauthenticated, "this peer API accepts no callers")
	}
	name, err := h.opts.Caller(r)
	if err != nil {
		if c := CodeOf(err); c != CodeUnauthenticated && c != CodeDenied {
			err = Errorf(CodeDenied, "%v", err)
		}
		return "", err
	}
	if name == "" {
		return "", Errorf(CodeUnauthenticated, "the caller has no name")
	}
	return name, nil
}

// allow takes a token from caller's bucket. The table of buckets is
// bounded: full buckets are forgotten first, and past the bound new
// callers wait.
func (h *peerHandler) allow(caller string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.limiters[caller]
	if l == nil {
		if len(h.limiters) >= maxLimitedCallers {
			for name, other := range h.limiters {
				if other.Tokens() >= float64(h.opts.Burst) {
					delete(h.limiters, name)
				}
			}
			if len(h.limiters) >= maxLimitedCallers {
				return false
			}
		}
		l = rate.NewLimiter(h.opts.Rate, h.opts.Burst)
		h.limiters[caller] = l
	}
	return l.Allow()
}

// busy refuses a call for now, saying when to come back.
func busy(w http.ResponseWriter, format string, args ...any) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	writeError(w, Errorf(CodeUnavailable, format, args...))
}

// PeerClient calls one peer agent over one pool of persistent connections,
// so that a session's setup rarely pays for a TLS handshake.
type PeerClient struct{ c *client }

// Bounds of a PeerClient's connection pool.
const (
	peerMaxConns  = 32
	peerIdleConns = 32
)

// NewPeerClient calls the agent at addr ("ip:port") over TLS with conf
// (which must verify that the answering certificate is the expected
// server's), or over plain HTTP when conf is nil; calls without a deadline
// of their own get timeout.
func NewPeerClient(addr string, conf *tls.Config, timeout time.Duration) *PeerClient {
	return NewPeerClientDial(addr, conf, timeout, nil)
}

// DialFunc makes a connection to addr on network ("tcp"), as
// net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// NewPeerClientDial is NewPeerClient over the connections dial makes (TCP
// when nil); TLS and HTTP run on top of them as over TCP.
func NewPeerClientDial(addr string, conf *tls.Config, timeout time.Duration, dial DialFunc) *PeerClient {
	if dial == nil {
		dial = (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext
	}
	tr := &http.Transport{
		DialContext:         dial,
		MaxConnsPerHost:     peerMaxConns,
		MaxIdleConnsPerHost: peerIdleConns,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: timeout,
	}
	scheme := "http://"
	if conf != nil {
		scheme = "https://"
		conf = conf.Clone()
		conf.MinVersion = tls.VersionTLS13
		conf.NextProtos = []string{"http/1.1"}
		if conf.ClientSessionCache == nil {
			conf.ClientSessionCache = tls.NewLRUClientSessionCache(peerMaxConns)
		}
		tr.TLSClientConfig = conf
	}
	return &PeerClient{newClientWith(scheme+addr, tr, timeout)}
}

// Accept asks the peer to install its half (and to deliver the frames the
// request carries).
func (p *PeerClient) Accept(ctx context.Context, req AcceptRequest) (AcceptReply, error) {
	var out AcceptReply
	err := p.c.call(ctx, http.MethodPost, pathAccept, req, &out)
	return out, err
}

// Release asks the peer to remove its half.
func (p *PeerClient) Release(ctx context.Context, req ReleaseRequest) error {
	return p.c.call(ctx, http.MethodPost, pathRelease, req, nil)
}

// Reopen asks the client's agent to set a session up again.
func (p *PeerClient) Reopen(ctx context.Context, req ReopenRequest) error {
	return p.c.call(ctx, http.MethodPost, pathReopen, req, nil)
}

// Close drops idle connections.
func (p *PeerClient) Close() { p.c.Close() }
