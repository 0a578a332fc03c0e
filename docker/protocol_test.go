package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// A fixture is a conversation with Docker: the requests exactly as Docker
// 20.10 sent them (recorded with nvi-docker --record against a real lab;
// the bad-input ones derived from recorded shapes, marked so), the answers
// the driver must give, and what must exist after chosen steps.
type fixture struct {
	About     string `json:"about"`
	Exchanges []step `json:"exchanges"`
	After     *world `json:"after"`
}

type step struct {
	Note string `json:"note,omitempty"`
	Exchange
	// Raw is sent as the body instead of Request (malformed input).
	Raw *string `json:"raw,omitempty"`
	// HTTPMethod replaces POST.
	HTTPMethod string `json:"http_method,omitempty"`
	// Inject makes the next call of an operation fail: "create", "attach",
	// "delete" (agent), "directory" (network read), "addveth" (links).
	Inject map[string]string `json:"inject,omitempty"`
	// Restart replaces the driver by a new one over the same directory
	// and agent, which collects stale reservations as nvi-docker does on
	// start; a restart step sends nothing.
	Restart bool `json:"restart,omitempty"`
	// Expect is the world after this step.
	Expect *world `json:"expect,omitempty"`
}

// world is what the fakes hold: NVI endpoints ("tenant/name", with " bound
// to IFACE" when bound), interfaces, and the driver's records.
type world struct {
	Endpoints       []string `json:"endpoints"`
	Links           []string `json:"links"`
	NetworkRecords  []string `json:"network_records"`
	EndpointRecords []string `json:"endpoint_records"`
}

type rig struct {
	t     *testing.T
	nvi   *fakeNVI
	links *fakeLinks
	state *MemState
	h     http.Handler
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newRig(t *testing.T) *rig {
	links := newFakeLinks()
	r := &rig{t: t, links: links, nvi: newFakeNVI(links), state: NewMemState()}
	r.start()
	return r
}

// start (re)starts the driver the way nvi-docker does.
func (r *rig) start() {
	r.t.Helper()
	d, err := New(Config{Name: "nvi", Agent: r.nvi, Directory: r.nvi, State: r.state, Links: r.links, Log: testLog(r.t)})
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := d.Collect(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	r.h = d.Handler()
}

func (r *rig) world() world {
	w := world{Endpoints: r.nvi.names(), Links: r.links.names(), NetworkRecords: []string{}, EndpointRecords: []string{}}
	for _, n := range r.state.Networks() {
		w.NetworkRecords = append(w.NetworkRecords, short(n.ID)+" "+n.Tenant+"/"+n.Network)
	}
	eps, _ := r.state.Endpoints(context.Background())
	for _, e := range eps {
		w.EndpointRecords = append(w.EndpointRecords, short(e.ID)+" "+e.Tenant+"/"+e.Name)
	}
	sort.Strings(w.NetworkRecords)
	sort.Strings(w.EndpointRecords)
	return w
}

// call sends one request and returns the status and the decoded answer.
func (r *rig) call(httpMethod, method string, body []byte) (int, any) {
	r.t.Helper()
	if httpMethod == "" {
		httpMethod = http.MethodPost
	}
	req := httptest.NewRequest(httpMethod, "/"+method, bytes.NewReader(body))
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	rec := httptest.NewRecorder()
	r.h.ServeHTTP(rec, req)
	var got any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		r.t.Fatalf("%s: the answer is not JSON: %q", method, rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != contentType {
		r.t.Errorf("%s: Content-Type %q, want %q", method, ct, contentType)
	}
	return rec.Code, got
}

var update = flag.Bool("update", false, "fill in the fixtures' missing answers (status 0) with the driver's (review them!)")

func TestFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".json"), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var fx fixture
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&fx); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			r := newRig(t)
			for i, s := range fx.Exchanges {
				for op, msg := range s.Inject {
					if op == "addveth" {
						r.links.fail[op] = msg
					} else {
						r.nvi.fail[op] = msg
					}
				}
				if s.Restart {
					r.start()
				} else if s.Method != "" {
					body := []byte(s.Request)
					if s.Raw != nil {
						body = []byte(*s.Raw)
					}
					status, got := r.call(s.HTTPMethod, s.Method, body)
					if *update && s.Status == 0 {
						fx.Exchanges[i].Status = status
						fx.Exchanges[i].Response, _ = json.Marshal(got)
						continue
					}
					var want any
					if err := json.Unmarshal(s.Response, &want); err != nil {
						t.Fatalf("step %d (%s): fixture response: %v", i, s.Method, err)
					}
					if status != s.Status || !reflect.DeepEqual(got, want) {
						gotJSON, _ := json.Marshal(got)
						t.Errorf("step %d %s %s:\n got %d %s\nwant %d %s", i, s.Method, s.Note, status, gotJSON, s.Status, s.Response)
					}
				}
				if s.Expect != nil {
					checkWorld(t, i, r.world(), *s.Expect)
				}
			}
			if fx.After != nil {
				checkWorld(t, len(fx.Exchanges), r.world(), *fx.After)
			}
			if *update {
				if err := os.WriteFile(file, formatFixture(t, fx), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// formatFixture writes a fixture with one exchange per block.
func formatFixture(t *testing.T, fx fixture) []byte {
	t.Helper()
	var b bytes.Buffer
	line := func(v any) string {
		j, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(j)
	}
	fmt.Fprintf(&b, "{\n  \"about\": %s,\n  \"exchanges\": [\n", line(fx.About))
	for i, s := range fx.Exchanges {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line(s)), &m); err != nil {
			t.Fatal(err)
		}
		b.WriteString("    {\n")
		keys := []string{"note", "method", "http_method", "raw", "request", "inject", "restart", "status", "response", "expect"}
		var fields []string
		for _, k := range keys {
			if (k == "status" || k == "response") && s.Method == "" {
				continue
			}
			if v, ok := m[k]; ok && string(v) != "null" {
				fields = append(fields, fmt.Sprintf("      %q: %s", k, v))
			}
		}
		b.WriteString(strings.Join(fields, ",\n"))
		b.WriteString("\n    }")
		if i < len(fx.Exchanges)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("  ]")
	if fx.After != nil {
		fmt.Fprintf(&b, ",\n  \"after\": %s", line(fx.After))
	}
	b.WriteString("\n}\n")
	return b.Bytes()
}

func checkWorld(t *testing.T, step int, got, want world) {
	t.Helper()
	norm := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	for _, c := range []struct {
		what      string
		got, want []string
	}{
		{"NVI endpoints", got.Endpoints, want.Endpoints},
		{"interfaces", got.Links, want.Links},
		{"network records", got.NetworkRecords, want.NetworkRecords},
		{"endpoint records", got.EndpointRecords, want.EndpointRecords},
	} {
		if !reflect.DeepEqual(norm(c.got), norm(c.want)) {
			t.Errorf("after step %d, %s:\n got %q\nwant %q", step, c.what, c.got, c.want)
		}
	}
}

// TestServeOnSocket talks to the driver the way Docker does: HTTP over the
// plugin's unix socket, which is replaced when stale and refused when live.
func TestServeOnSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "plugins", "nvi-test.sock")
	if got := PluginName(sock); got != "nvi-test" {
		t.Fatalf("PluginName = %q", got)
	}
	// A stale socket file, as a killed plugin leaves.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	r := newRig(t)
	l, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("a second Listen on a live socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var transcript lockedBuffer
	go func() { done <- Serve(ctx, l, Record(r.h, &transcript), testLog(t)) }()

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	post := func(method, body string) (int, string) {
		resp, err := hc.Post("http://plugin/"+method, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := post("Plugin.Activate", ""); code != 200 || body != `{"Implements":["NetworkDriver","IpamDriver"]}` {
		t.Errorf("Activate: %d %s", code, body)
	}
	if code, body := post("NetworkDriver.Join", "{"); code != 400 || !strings.Contains(body, `"Err":"NetworkDriver.Join: malformed request`) {
		t.Errorf("malformed Join: %d %s", code, body)
	}
	if code, body := post("NetworkDriver.AllocateNetwork", "{}"); code != 404 || !strings.Contains(body, `"Err"`) {
		t.Errorf("unknown method: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after Serve returned: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(transcript.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("transcript has %d lines, want 3:\n%s", len(lines), transcript.String())
	}
	var ex Exchange
	if err := json.Unmarshal([]byte(lines[1]), &ex); err != nil || ex.Method != "NetworkDriver.Join" || ex.Status != 400 || string(ex.Request) != `"{"` {
		t.Errorf("transcript line %q: %+v %v", lines[1], ex, err)
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FuzzHandler sends anything to any method: the answer is always one JSON
// object, a refusal always carries its message in "Err", and no call on
// its own leaves an interface behind.
func FuzzHandler(f *testing.F) {
	methods := []string{
		"Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork", "NetworkDriver.DeleteNetwork",
		"NetworkDriver.CreateEndpoint", "NetworkDriver.EndpointOperInfo", "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join",
		"NetworkDriver.Leave", "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
		"NetworkDriver.DiscoverNew", "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
		"IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress", "NetworkDriver.Nonsense",
	}
	files, _ := filepath.Glob("testdata/*.json")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var fx fixture
		if err := json.Unmarshal(b, &fx); err != nil {
			f.Fatal(err)
		}
		for _, s := range fx.Exchanges {
			for i, m := range methods {
				if m == s.Method {
					f.Add(uint8(i), []byte(s.Request))
				}
			}
		}
	}
	f.Fuzz(func(t *testing.T, m uint8, body []byte) {
		r := newRig(t)
		method := methods[int(m)%len(methods)]
		status, got := r.call("", method, body)
		obj, ok := got.(map[string]any)
		if !ok {
			t.Fatalf("%s %q: the answer is not an object: %v", method, body, got)
		}
		if status != http.StatusOK || obj["Err"] != nil {
			if msg, ok := obj["Err"].(string); !ok || msg == "" {
				t.Fatalf("%s %q: a refusal without a message: %d %v", method, body, status, got)
			}
		}
		if links := r.links.names(); len(links) != 0 {
			t.Fatalf("%s %q left interfaces %v", method, body, links)
		}
	})
}
