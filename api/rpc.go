// Package api holds NVI's two RPC services: the peer API that agents use to
// agree sessions with each other, and the local API through which a server's
// tools (nvictl, the CNI plugin, the lab) talk to its agent. The local API
// is JSON over HTTP on a unix socket. The peer API is on a session's setup
// path, so it is a binary protocol of its own (peerwire.go): one persistent
// mutual-TLS 1.3 connection per pair of servers carrying every call at
// once. A caller is the server its certificate names, and what it may do is
// bounded per caller (rate), in all (calls at once) and before
// authentication (connections and handshakes per address). Every call has
// a deadline.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Code classifies an error so that callers can react without parsing text.
type Code string

// Error codes.
const (
	CodeInvalid         Code = "invalid"         // the request is malformed or breaks a rule
	CodeNotFound        Code = "not_found"       // something named does not exist
	CodeExists          Code = "exists"          // something to create already exists
	CodeConflict        Code = "conflict"        // the request clashes with current state
	CodeDenied          Code = "denied"          // policy or the caller's identity refuses it
	CodeUnauthenticated Code = "unauthenticated" // the caller proved no identity
	CodeUnavailable     Code = "unavailable"     // a dependency (directory, switch) is down, or the service is busy
	CodeInternal        Code = "internal"
)

// Error is an error carried across the API.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of err, CodeInternal if it has none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

var httpStatus = map[Code]int{
	CodeInvalid:         http.StatusBadRequest,
	CodeNotFound:        http.StatusNotFound,
	CodeExists:          http.StatusConflict,
	CodeConflict:        http.StatusConflict,
	CodeDenied:          http.StatusForbidden,
	CodeUnauthenticated: http.StatusUnauthorized,
	CodeUnavailable:     http.StatusServiceUnavailable,
	CodeInternal:        http.StatusInternalServerError,
}

// maxBody bounds request and response bodies: no NVI message comes close.
const maxBody = 1 << 20

// route registers one JSON method: the request body (if In is not struct{})
// decodes into In, fn's result encodes as the response.
func route[In, Out any](mux *http.ServeMux, log *slog.Logger, pattern string, fn func(context.Context, *http.Request, In) (Out, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var in In
		if r.Body != nil && r.ContentLength != 0 {
			dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in); err != nil && !errors.Is(err, io.EOF) {
				writeError(w, Errorf(CodeInvalid, "bad request body: %v", err))
				return
			}
		}
		out, err := fn(r.Context(), r, in)
		if err != nil {
			if CodeOf(err) == CodeInternal {
				log.Warn("api call failed", "path", r.URL.Path, "err", err)
			}
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

func writeError(w http.ResponseWriter, err error) {
	e := &Error{Code: CodeInternal, Message: err.Error()}
	errors.As(err, &e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus[e.Code])
	_ = json.NewEncoder(w).Encode(e)
}

// Empty is the body of calls that take or return nothing.
type Empty struct{}

// client calls one service. Every call has a deadline: the caller's, or
// timeout if the caller set none.
type client struct {
	base    string // "http://host:port" or "http://unix"
	hc      *http.Client
	timeout time.Duration
}

func newClient(base string, dial func(ctx context.Context) (net.Conn, error), timeout time.Duration) *client {
	tr := &http.Transport{
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	if dial != nil {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }
	} else {
		d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		tr.DialContext = d.DialContext
	}
	return &client{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr}, timeout: timeout}
}

func (c *client) call(ctx context.Context, method, path string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("%s %s: %v", method, path, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("%s %s: reading reply: %v", method, path, err)}
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			return &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, data)}
		}
		if e.Code == "" {
			e.Code = CodeInternal
		}
		return &e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: bad reply: %w", method, path, err)
		}
	}
	return nil
}

// Close drops idle connections.
func (c *client) Close() { c.hc.CloseIdleConnections() }

// newServer wraps h with the timeouts every NVI listener has.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Serve runs h on l until ctx ends, then shuts down gracefully.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	return serveUntil(ctx, newServer(h, log), l)
}

// serveUntil runs srv on l until ctx ends, then shuts it down gracefully.
func serveUntil(ctx context.Context, srv *http.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}
