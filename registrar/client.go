package registrar

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"nvi/directory"
)

// Client asks a registrar to make this server's claims; it is the
// [directory.Claimer] of an agent whose credential may not write them.
// Its connection persists between calls.
type Client struct {
	addr string
	hc   *http.Client
}

var _ directory.Claimer = (*Client)(nil)

// NewClient speaks to the registrar at addr (HOST:PORT, the enrollment
// service's) with tc, which presents this server's certificate and checks
// the service's (pki.Identity.EnrollClientTLS).
func NewClient(addr string, tc *tls.Config) *Client {
	tr := &http.Transport{
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{addr: addr, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Close drops the idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) CreateEndpoint(ctx context.Context, e directory.Endpoint) (directory.Endpoint, error) {
	var out directory.Endpoint
	err := c.call(ctx, pathCreate, e, &out)
	return out, err
}

func (c *Client) UpdateEndpointPort(ctx context.Context, tenant, name string, port uint32) (directory.Endpoint, error) {
	var out directory.Endpoint
	err := c.call(ctx, pathPort, portRequest{tenant, name, port}, &out)
	return out, err
}

func (c *Client) DeleteEndpoint(ctx context.Context, tenant, name string) error {
	return c.call(ctx, pathDelete, endpointRef{tenant, name}, &empty{})
}

func (c *Client) ClaimBlock(ctx context.Context, tenant, network string) (netip.Prefix, error) {
	var out blockAnswer
	err := c.call(ctx, pathClaim, networkRef{tenant, network}, &out)
	return out.Block, err
}

func (c *Client) AdoptBlocks(ctx context.Context, tenant, network string) ([]netip.Prefix, error) {
	var out blocksAnswer
	err := c.call(ctx, pathAdopt, networkRef{tenant, network}, &out)
	return out.Blocks, err
}

func (c *Client) KeepBlocks(ctx context.Context, held []directory.BlockRef) ([]directory.BlockRef, error) {
	var lost []directory.BlockRef
	for len(held) > 0 {
		n := min(len(held), maxKeep)
		var out keepAnswer
		if err := c.call(ctx, pathKeep, keepRequest{held[:n]}, &out); err != nil {
			return lost, err
		}
		lost = append(lost, out.Lost...)
		held = held[n:]
	}
	return lost, nil
}

func (c *Client) ReleaseBlock(ctx context.Context, b directory.BlockRef) error {
	return c.call(ctx, pathRelease, b, &empty{})
}

// call posts in and decodes the answer into out; a refusal comes back as an
// error wrapping the directory's sentinel for its kind.
func (c *Client) call(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("registrar: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+c.addr+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("registrar %s: %w", c.addr, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return &remoteError{kind: directory.ErrUnavailable, msg: fmt.Sprintf("registrar %s: %v", c.addr, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &remoteError{kind: directory.ErrUnavailable, msg: fmt.Sprintf("registrar %s: %v", c.addr, err)}
	}
	if resp.StatusCode != http.StatusOK {
		var e errorAnswer
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("registrar %s answered %s", c.addr, resp.Status)
		}
		return &remoteError{kind: kindOf(e.Kind), msg: e.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &remoteError{kind: directory.ErrUnavailable, msg: fmt.Sprintf("registrar %s: bad answer: %v", c.addr, err)}
	}
	return nil
}

// remoteError is a refusal as the registrar worded it, wrapping the
// directory's sentinel of its kind.
type remoteError struct {
	kind error
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// kindOf is the sentinel of a kind on the wire; an unknown kind is an
// unavailable registrar (the request may be tried again).
func kindOf(name string) error {
	for _, k := range kinds {
		if k.name == name {
			return k.err
		}
	}
	return directory.ErrUnavailable
}
