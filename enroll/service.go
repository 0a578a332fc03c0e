package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"nvi/pki"
)

// Paths of the enrollment API.
const (
	pathEnroll = "/v1/enroll"
	pathRenew  = "/v1/renew"
)

// DefaultCertTTL is the life of a server certificate; it is renewed at two
// thirds of it.
const DefaultCertTTL = 24 * time.Hour

// Config configures the enrollment service and revocation.
type Config struct {
	CADir   string        // the CA directory (ca.crt, ca.key, tokens/, revoked.json)
	CertTTL time.Duration // life of issued server certificates (default 24h)
	// Grant is called after a token was redeemed for name and before the
	// certificate is handed out (e.g. to give name its directory role). If
	// it fails, the enrollment fails and the token is put back.
	Grant func(ctx context.Context, name string) error
	// OnRevoke is called by Revoke after revoked.json records name (e.g. to
	// publish the revocation to peers through the directory).
	OnRevoke func(ctx context.Context, name string, at time.Time) error
	Logger   *slog.Logger
	// Rate and Burst bound requests a second overall (defaults 10, 20);
	// each source address gets a tenth of the rate and a quarter of the
	// burst (at least 5: a join and a few renewals). MaxInFlight bounds requests
	// being handled at once (default 8).
	Rate        float64
	Burst       int
	MaxInFlight int
	// Routes are further APIs served beside enrollment on the same
	// listener and certificate, by path pattern (the registrar's
	// "/v1/claims/"). They do their own limiting; [Service.Caller] tells
	// them which server a request speaks for.
	Routes map[string]http.Handler

	now func() time.Time // tests
}

func (c *Config) defaults() {
	if c.CertTTL == 0 {
		c.CertTTL = DefaultCertTTL
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Rate <= 0 {
		c.Rate = 10
	}
	if c.Burst <= 0 {
		c.Burst = 20
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 8
	}
	if c.now == nil {
		c.now = time.Now
	}
}

// Revoke revokes server name: its current certificates can no longer renew,
// its unused join tokens are removed, and cfg.OnRevoke is told.
func Revoke(ctx context.Context, cfg Config, name string) (time.Time, error) {
	cfg.defaults()
	if _, err := pki.LoadCA(cfg.CADir); err != nil {
		return time.Time{}, err
	}
	st := &store{dir: cfg.CADir}
	at, err := st.revoke(name, cfg.now())
	if err != nil {
		return time.Time{}, err
	}
	if cfg.OnRevoke != nil {
		if err := cfg.OnRevoke(ctx, name, at); err != nil {
			return at, fmt.Errorf("revoked %s in the CA directory, but: %w", name, err)
		}
	}
	return at, nil
}

// Service is the enrollment service.
type Service struct {
	cfg   Config
	ca    *pki.CA
	st    *store
	lim   *limiter
	slots chan struct{}
}

// NewService loads the CA of cfg.CADir.
func NewService(cfg Config) (*Service, error) {
	cfg.defaults()
	if cfg.CertTTL < 0 || cfg.CertTTL > pki.MaxTTL {
		return nil, fmt.Errorf("certificate lifetime %v: want a positive duration up to %v", cfg.CertTTL, pki.MaxTTL)
	}
	ca, err := pki.LoadCA(cfg.CADir)
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg:   cfg,
		ca:    ca,
		st:    &store{dir: cfg.CADir},
		lim:   newLimiter(cfg.Rate, cfg.Burst, cfg.Rate/10, max(cfg.Burst/4, 5)),
		slots: make(chan struct{}, cfg.MaxInFlight),
	}, nil
}

// TLSConfig is the service's TLS: 1.3 only, its own certificate from the CA
// (re-issued before it expires), and client certificates verified when
// given (renewals need one, enrollments have none yet).
func (s *Service) TLSConfig(ips []netip.Addr, dns []string) (*tls.Config, error) {
	const life = 7 * 24 * time.Hour
	var mu sync.Mutex
	var cur *tls.Certificate
	get := func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil && s.cfg.now().Before(cur.Leaf.NotAfter.Add(-life/2)) {
			return cur, nil
		}
		certPEM, keyPEM, err := s.ca.IssueEnrollService(ips, dns, life)
		if err != nil {
			return nil, err
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		cur = &c
		return cur, nil
	}
	if _, err := get(); err != nil {
		return nil, fmt.Errorf("issuing the enrollment service's certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Cert())
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get() },
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      pool,
	}, nil
}

// Serve serves the enrollment API on ln until ctx ends. The certificate
// names the listener's address (and the given DNS names).
func (s *Service) Serve(ctx context.Context, ln net.Listener, dns []string) error {
	var ips []netip.Addr
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsUnspecified() {
		ips = append(ips, ap.Addr().Unmap())
	}
	tc, err := s.TLSConfig(ips, dns)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tc,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.st.sweep(s.cfg.now())
			}
		}
	}()
	s.cfg.Logger.Info("enrollment service listening", "addr", ln.Addr().String(), "ca", s.ca.Pin())
	err = srv.ServeTLS(&limitListener{Listener: ln, slots: make(chan struct{}, maxConns)}, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Serve runs the enrollment service of cfg on listen (HOST:PORT).
func Serve(ctx context.Context, cfg Config, listen string) error {
	s, err := NewService(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("enrollment service: %w", err)
	}
	return s.Serve(ctx, ln, nil)
}

type enrollRequest struct {
	Token string `json:"token"`
	CSR   string `json:"csr"`
}

type enrollResponse struct {
	Cert string `json:"cert"`
	CA   string `json:"ca"`
}

type renewRequest struct {
	CSR string `json:"csr"`
}

type renewResponse struct {
	Cert string `json:"cert"`
}

type errorResponse struct {
	Error string `json:"error"`
}

// httpError is an error with the status it answers with.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &httpError{code, fmt.Sprintf(format, args...)}
}

// Handler is the enrollment API, bounded by rate and by requests in flight.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathEnroll, s.wrap("enroll", s.enroll))
	mux.HandleFunc("POST "+pathRenew, s.wrap("renew", s.renew))
	for pattern, h := range s.cfg.Routes {
		mux.Handle(pattern, h)
	}
	return mux
}

// Caller is the server a request over the service's listener speaks for:
// the name in its client certificate, which the TLS handshake verified
// against the CA, if that certificate was issued after any revocation of
// the name.
func (s *Service) Caller(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", fail(http.StatusUnauthorized, "this needs the server's certificate (mutual TLS)")
	}
	leaf := r.TLS.VerifiedChains[0][0]
	name, err := pki.ServerNameOf(leaf)
	if err != nil {
		return "", fail(http.StatusForbidden, "%v", err)
	}
	list, err := LoadRevocations(s.cfg.CADir)
	if err != nil {
		return "", err
	}
	if err := CheckRevoked(list, name, leaf.NotBefore); err != nil {
		return "", fail(http.StatusForbidden, "%v", err)
	}
	return name, nil
}

func (s *Service) wrap(op string, h func(r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		src := sourceAddr(r.RemoteAddr)
		log := s.cfg.Logger.With("op", op, "from", src.String())
		if !s.lim.allow(src, s.cfg.now()) {
			writeJSON(w, http.StatusTooManyRequests, errorResponse{"too many requests: try again in a few seconds"})
			return
		}
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
		default:
			writeJSON(w, http.StatusServiceUnavailable, errorResponse{"enrollment service busy: try again in a few seconds"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		out, err := h(r)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) {
				log.Error("request failed", "err", err)
				he = &httpError{http.StatusInternalServerError, "internal error: " + err.Error()}
			} else {
				log.Warn("request refused", "err", err)
			}
			writeJSON(w, he.code, errorResponse{he.msg})
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func sourceAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fail(http.StatusBadRequest, "bad request body: %v", err)
	}
	return nil
}

// enroll redeems a join token for a certificate naming the token's server.
func (s *Service) enroll(r *http.Request) (any, error) {
	var req enrollRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	tok, err := ParseToken(req.Token)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	if tok.Pin != s.ca.Pin() {
		return nil, fail(http.StatusForbidden, "the token is for another CA (%s)", tok.Pin)
	}
	// Check the request before the token is used up.
	if _, err := pki.ParseCSR([]byte(req.CSR)); err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	now := s.cfg.now()
	rec, err := s.st.consume(tok.ID, tok.Secret, now)
	switch {
	case errors.Is(err, ErrTokenUnknown), errors.Is(err, ErrTokenSecret):
		return nil, fail(http.StatusForbidden, "%v: issue a new one with 'nvictl server token %s'", ErrTokenUnknown, tok.Name)
	case errors.Is(err, ErrTokenExpired):
		return nil, fail(http.StatusForbidden, "%v", err)
	case err != nil:
		return nil, err
	}
	name := rec.Name // the stored record decides the name, not the request
	notBefore := now.Add(-pki.Skew)
	list, err := LoadRevocations(s.cfg.CADir)
	if err != nil {
		s.putBack(rec)
		return nil, err
	}
	if at, ok := list[name]; ok && !notBefore.After(at) {
		// A re-enrolled server must pass CheckRevoked: its certificate
		// starts after the revocation, which is at most a second ahead
		// (revocation times are whole seconds). Wait for it rather than
		// hand out a certificate that is not valid yet.
		notBefore = at.Add(time.Second)
		if d := notBefore.Sub(now); d > 2*time.Second {
			s.putBack(rec)
			return nil, fmt.Errorf("%s was revoked at %s, in the future: check this machine's clock", name, at.Format(time.RFC3339))
		} else if d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				s.putBack(rec)
				return nil, r.Context().Err()
			}
			now = now.Add(d)
		}
	}
	certPEM, err := s.ca.SignServerWindow([]byte(req.CSR), name, notBefore, now.Add(s.cfg.CertTTL))
	if err != nil {
		s.putBack(rec)
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	if s.cfg.Grant != nil {
		if err := s.cfg.Grant(r.Context(), name); err != nil {
			s.putBack(rec)
			return nil, fail(http.StatusBadGateway, "could not grant %s its access (the token still works, try again): %v", name, err)
		}
	}
	s.cfg.Logger.Info("server enrolled", "server", name, "token", rec.ID, "from", r.RemoteAddr)
	return enrollResponse{Cert: string(certPEM), CA: string(s.ca.CertPEM())}, nil
}

func (s *Service) putBack(rec record) {
	if err := s.st.restore(rec); err != nil {
		s.cfg.Logger.Error("could not put back a join token after a failed enrollment", "token", rec.ID, "server", rec.Name, "err", err)
	}
}

// renew issues a new certificate for the key and name of the caller's
// current certificate.
func (s *Service) renew(r *http.Request) (any, error) {
	name, err := s.Caller(r)
	if err != nil {
		return nil, err
	}
	leaf := r.TLS.VerifiedChains[0][0]
	var req renewRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	pub, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	if !pub.Equal(leaf.PublicKey) {
		return nil, fail(http.StatusBadRequest, "renewal keeps the key: the request is for another key than the current certificate's")
	}
	certPEM, err := s.ca.SignServer([]byte(req.CSR), name, s.cfg.CertTTL)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	s.cfg.Logger.Info("server certificate renewed", "server", name)
	return renewResponse{Cert: string(certPEM)}, nil
}

// maxConns bounds the service's open connections (each costs a TLS
// handshake before any rate limit can look at it).
const maxConns = 64

// limitListener accepts at most cap(slots) connections at a time; more wait
// in the kernel's backlog.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
