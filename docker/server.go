package docker

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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// maxBody bounds a request body: no Docker message comes close.
const maxBody = 1 << 20

// contentType is what plugin responses are labelled with.
const contentType = "application/vnd.docker.plugins.v1+json"

// Handler serves the plugin protocol: Plugin.Activate, NetworkDriver.* and
// IpamDriver.*.
func (d *Driver) Handler() http.Handler {
	mux := http.NewServeMux()
	handle(d, mux, "Plugin.Activate", false, func(context.Context, empty) (activateResponse, error) {
		return activateResponse{Implements: []string{"NetworkDriver", "IpamDriver"}}, nil
	})

	handle(d, mux, "NetworkDriver.GetCapabilities", false, func(context.Context, empty) (capabilitiesResponse, error) {
		return capabilitiesResponse{Scope: "local", ConnectivityScope: "local"}, nil
	})
	handle(d, mux, "NetworkDriver.CreateNetwork", true, d.createNetwork)
	handle(d, mux, "NetworkDriver.DeleteNetwork", true, d.deleteNetwork)
	handle(d, mux, "NetworkDriver.CreateEndpoint", true, d.createEndpoint)
	handle(d, mux, "NetworkDriver.EndpointOperInfo", true, d.endpointOperInfo)
	handle(d, mux, "NetworkDriver.DeleteEndpoint", true, d.deleteEndpoint)
	handle(d, mux, "NetworkDriver.Join", true, d.join)
	handle(d, mux, "NetworkDriver.Leave", true, d.leave)
	handle(d, mux, "NetworkDriver.ProgramExternalConnectivity", true, d.knownEndpoint)
	handle(d, mux, "NetworkDriver.RevokeExternalConnectivity", true, d.knownEndpoint)
	handle(d, mux, "NetworkDriver.DiscoverNew", true, discover)
	handle(d, mux, "NetworkDriver.DiscoverDelete", true, discover)

	handle(d, mux, "IpamDriver.GetCapabilities", false, func(context.Context, empty) (ipamCapabilitiesResponse, error) {
		return ipamCapabilitiesResponse{RequiresMACAddress: true}, nil
	})
	handle(d, mux, "IpamDriver.GetDefaultAddressSpaces", false, func(context.Context, empty) (addressSpacesResponse, error) {
		return addressSpacesResponse{LocalDefaultAddressSpace: LocalAddressSpace, GlobalDefaultAddressSpace: GlobalAddressSpace}, nil
	})
	handle(d, mux, "IpamDriver.RequestPool", true, d.requestPool)
	handle(d, mux, "IpamDriver.ReleasePool", true, d.releasePool)
	handle(d, mux, "IpamDriver.RequestAddress", true, d.requestAddress)
	handle(d, mux, "IpamDriver.ReleaseAddress", true, d.releaseAddress)
	handle(d, mux, "IpamDriver.DiscoverNew", true, discover)
	handle(d, mux, "IpamDriver.DiscoverDelete", true, discover)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		d.log.Warn("docker: unknown method", "path", r.URL.Path)
		reply(w, http.StatusNotFound, errResponse{Err: fmt.Sprintf("the NVI plugin does not implement %s", strings.TrimPrefix(r.URL.Path, "/"))})
	})
	return mux
}

func discover(context.Context, discoverRequest) (empty, error) { return empty{}, nil }

// handle registers one method. With payload, the body must be a JSON
// object that decodes into In (fields Docker adds later are ignored);
// without, the body is ignored (Docker sends none).
func handle[In, Out any](d *Driver, mux *http.ServeMux, method string, payload bool, fn func(context.Context, In) (Out, error)) {
	mux.HandleFunc("/"+method, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if r.Method != http.MethodPost {
			reply(w, http.StatusMethodNotAllowed, refusal(method, method+" takes POST, not "+r.Method))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			reply(w, http.StatusBadRequest, refusal(method, fmt.Sprintf("%s: reading the request: %v", method, err)))
			return
		}
		var in In
		if payload {
			if err := decode(body, &in); err != nil {
				d.log.Warn("docker: malformed request", "method", method, "err", err)
				reply(w, http.StatusBadRequest, refusal(method, fmt.Sprintf("%s: malformed request: %v", method, err)))
				return
			}
		}
		out, err := fn(r.Context(), in)
		if err != nil {
			d.log.Warn("docker: refused", "method", method, "err", err, "took", time.Since(start), "request", string(body))
			reply(w, http.StatusOK, refusal(method, err.Error()))
			return
		}
		d.log.Debug("docker: call", "method", method, "took", time.Since(start), "request", string(body))
		reply(w, http.StatusOK, out)
	})
}

// decode reads exactly one JSON object.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("empty body, want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return fmt.Errorf("want a JSON object, got %s", te.Value)
			}
			return fmt.Errorf("field %s: want %s, got %s", te.Field, te.Type.Kind(), te.Value)
		}
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func reply(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"Err":"encoding the response failed"}`)
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// PluginName is the name Docker knows a plugin by: its socket's file name
// without ".sock".
func PluginName(socket string) string {
	return strings.TrimSuffix(filepath.Base(socket), ".sock")
}

// Listen opens the plugin socket. A stale socket file (nobody answers on
// it) is replaced; one that a live plugin serves is not.
func Listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("plugin socket directory: %w", err)
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", socket)
		}
		if c, err := net.DialTimeout("unix", socket, 500*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("another plugin already serves %s", socket)
		}
		if err := os.Remove(socket); err != nil {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("plugin socket: %w", err)
	}
	if err := os.Chmod(socket, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("plugin socket: %w", err)
	}
	return l, nil
}

// Serve answers Docker on l until ctx ends, then stops accepting, lets
// calls in progress finish (for a while) and removes the socket.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving the plugin socket: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	if err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	return nil
}

// Exchange is one call as Record writes it: what Docker sent and what it
// got back. The protocol tests' fixtures are made of these.
type Exchange struct {
	Method   string          `json:"method"`
	Request  json.RawMessage `json:"request,omitempty"`
	Status   int             `json:"status"`
	Response json.RawMessage `json:"response"`
}

// Record wraps h so that every exchange is appended to w as one line of
// JSON (nvi-docker --record): a transcript of what Docker really sends.
func Record(h http.Handler, w io.Writer) http.Handler {
	var mu sync.Mutex
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxBody))
		if err != nil {
			reply(rw, http.StatusBadRequest, errResponse{Err: "reading the request: " + err.Error()})
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := &recordingWriter{ResponseWriter: rw, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		ex := Exchange{Method: strings.TrimPrefix(r.URL.Path, "/"), Status: rec.status, Response: asJSON(rec.body.Bytes())}
		if len(bytes.TrimSpace(body)) > 0 {
			ex.Request = asJSON(body)
		}
		line, err := json.Marshal(ex)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(append(line, '\n'))
	})
}

// asJSON keeps valid JSON as it is and quotes anything else.
func asJSON(b []byte) json.RawMessage {
	b = bytes.TrimSpace(b)
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	q, _ := json.Marshal(string(b))
	return q
}

type recordingWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (w *recordingWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *recordingWriter) Write(b []byte) (int, error) {
	w.body.Write(b)
	return w.ResponseWriter.Write(b)
}
