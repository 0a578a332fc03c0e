package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"nvi/api"
	"nvi/pki"
)

// peer makes one call to an agent's peer API as an attacker would: with a
// body of its choosing, with or without a certificate (a stolen or another
// server's), over TLS or plain TCP, or as raw bytes that are no valid
// message. It prints "refused: ..." when the connection was not taken,
// "closed: ..." when it was closed without an answer, or "answer: ok" /
// "answer: CODE: ..."; it exits 0 only when the call was accepted.
func peer(args []string) (int, error) {
	fs := flag.NewFlagSet("peer", flag.ContinueOnError)
	to := fs.String("to", "", "the peer API, IP:PORT")
	call := fs.String("call", "accept", "accept, release, reopen or unknown-key")
	body := fs.String("body", "{}", "the request as JSON (the api package's request types)")
	identity := fs.String("identity", "", "a server identity directory whose certificate to show (default: none)")
	server := fs.String("server", "", "the server name the answering certificate must have (with --identity)")
	plain := fs.Bool("plain", false, "plain TCP, no TLS")
	rawBody := fs.String("raw-body", "", "send this hex as the call's body instead of --body")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	if _, _, err := net.SplitHostPort(*to); err != nil {
		return 0, fmt.Errorf("--to %q: want IP:PORT", *to)
	}
	frame, err := peerFrame(*call, *body, *rawBody)
	if err != nil {
		return 0, err
	}
	var conf *tls.Config
	switch {
	case *plain:
	case *identity != "":
		id, err := pki.LoadIdentity(*identity)
		if err != nil {
			return 0, err
		}
		conf = id.ClientTLS(*server)
	default:
		conf = &tls.Config{InsecureSkipVerify: true} // an attacker checks nothing
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := connect(ctx, *to, conf)
	if err != nil {
		fmt.Printf("refused: %v\n", err)
		return 0, errors.New("the connection was refused")
	}
	defer nc.Close()
	if _, err := nc.Write(frame); err != nil {
		fmt.Printf("closed: %v\n", err)
		return 0, errors.New("no answer")
	}
	var h [9]byte
	if _, err := io.ReadFull(nc, h[:]); err != nil {
		fmt.Printf("closed: %v\n", err)
		return 0, errors.New("no answer")
	}
	n := binary.BigEndian.Uint32(h[:4])
	if n < 6 || n > 1<<16 {
		return 0, fmt.Errorf("an answer of %d bytes", n)
	}
	rest := make([]byte, n-5)
	if _, err := io.ReadFull(nc, rest); err != nil {
		return 0, fmt.Errorf("a short answer: %w", err)
	}
	if _, err := api.DecodePeerAnswer(rest); err != nil {
		fmt.Printf("answer: %s: %v\n", api.CodeOf(err), err)
		return 1, errors.New("refused by the peer API")
	}
	fmt.Println("answer: ok")
	return 1, nil
}

var peerOps = map[string]byte{"accept": 1, "release": 2, "reopen": 3, "unknown-key": 4}

// peerFrame is the frame of the call: the request decoded from JSON and
// encoded as the protocol says, or raw bytes as its body.
func peerFrame(call, body, rawBody string) ([]byte, error) {
	op, ok := peerOps[call]
	if !ok {
		return nil, fmt.Errorf("--call %q: want accept, release, reopen or unknown-key", call)
	}
	if rawBody != "" {
		b, err := hex.DecodeString(rawBody)
		if err != nil {
			return nil, fmt.Errorf("--raw-body: %w", err)
		}
		frame := binary.BigEndian.AppendUint32(nil, uint32(5+len(b)))
		frame = binary.BigEndian.AppendUint32(frame, 1)
		return append(append(frame, op), b...), nil
	}
	reqs := map[string]any{"accept": &api.AcceptRequest{}, "release": &api.ReleaseRequest{}, "reopen": &api.ReopenRequest{}, "unknown-key": &api.UnknownKeyRequest{}}
	req := reqs[call]
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return nil, fmt.Errorf("--body: %w", err)
	}
	return api.EncodePeerRequest(1, req)
}

// connect opens the connection: TCP, then TLS with conf unless it is nil.
func connect(ctx context.Context, to string, conf *tls.Config) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	if conf == nil {
		return nc, nil
	}
	conf = conf.Clone()
	conf.NextProtos = []string{api.PeerALPN}
	tc := tls.Client(nc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}
