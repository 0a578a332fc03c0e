package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"nvi/session"
)

// The peer protocol: frames over one mutual-TLS connection per pair of
// servers (ALPN PeerALPN), requests and their answers interleaved, each
// request answered once under its ID. A session's setup is one request and
// one answer on a connection that is already open: no HTTP parsing, no
// JSON, no goroutine between the caller and the socket.
//
//	frame   = length:u32 id:u32 op:u8 body        (length counts id, op, body)
//	request = op 1 accept | 2 release | 3 reopen | 4 unknown-key
//	answer  = op 0x80, body code:u8 then, for an error, message:str;
//	          for an accepted Accept, delivered:u8
//
// Numbers are big-endian; str is length:u16 and bytes; an address is
// length:u8 (0, 4 or 16) and bytes; a tuple is tenant:str proto:u8
// client:addr server:addr port:u16. Accept is from:str tuple key:u16 then
// count:u8 and each first packet as length:u16 and bytes; Release is
// from:str role:u8 tuple key:u16 reason:str; Reopen is from:str tuple;
// unknown-key is from:str proto:u8 key:u16. A body with bytes left over
// is malformed.

// PeerALPN is the peer protocol's name in the TLS handshake.
const PeerALPN = "nvi-peer/1"

// Frame ops.
const (
	opAccept  uint8 = 1
	opRelease uint8 = 2
	opReopen  uint8 = 3
	opUnknown uint8 = 4
	opAnswer  uint8 = 0x80
)

// Bounds of the wire.
const (
	frameHeader = 9 // length, id, op
	// maxFrame bounds a frame: an Accept with its first packets is the
	// largest message, at most MaxAcceptFrameBytes of packets.
	maxFrame  = MaxAcceptFrameBytes + 4096
	maxString = 1024
)

var errMalformed = errors.New("malformed message")

// wireCodes numbers the error codes on the wire; 0 is success.
var wireCodes = []Code{"", CodeInvalid, CodeNotFound, CodeExists, CodeConflict, CodeDenied, CodeUnauthenticated, CodeUnavailable, CodeInternal}

func codeNumber(c Code) uint8 {
	for i, w := range wireCodes {
		if i > 0 && w == c {
			return uint8(i)
		}
	}
	return uint8(len(wireCodes) - 1) // internal
}

// --- writing ---

// wbuf appends a frame's fields.
type wbuf []byte

// frame starts a frame of op under id; finish fills its length in.
func frame(id uint32, op uint8) wbuf {
	b := make(wbuf, frameHeader, 128)
	binary.BigEndian.PutUint32(b[4:], id)
	b[8] = op
	return b
}

func (b wbuf) finish() []byte {
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

func (b wbuf) u8(v uint8) wbuf   { return append(b, v) }
func (b wbuf) u16(v uint16) wbuf { return binary.BigEndian.AppendUint16(b, v) }

func (b wbuf) str(s string) wbuf {
	if len(s) > maxString {
		s = s[:maxString]
	}
	return append(b.u16(uint16(len(s))), s...)
}

func (b wbuf) addr(a netip.Addr) wbuf {
	if !a.IsValid() {
		return b.u8(0)
	}
	s := a.AsSlice()
	return append(b.u8(uint8(len(s))), s...)
}

func (b wbuf) tuple(t session.Tuple) wbuf {
	return b.str(t.Tenant).u8(uint8(t.Proto)).addr(t.Client).addr(t.Server).u16(t.Port)
}

// encodeRequest is the frame of one request: *AcceptRequest,
// *ReleaseRequest, *ReopenRequest or *UnknownKeyRequest.
func encodeRequest(id uint32, req any) ([]byte, error) {
	var b wbuf
	switch r := req.(type) {
	case *AcceptRequest:
		if len(r.Frames) > MaxAcceptFrames || framesBytes(r.Frames) > MaxAcceptFrameBytes {
			return nil, Errorf(CodeInvalid, "at most %d first packets of %d bytes in all", MaxAcceptFrames, MaxAcceptFrameBytes)
		}
		b = frame(id, opAccept).str(r.From).tuple(r.Tuple).u16(r.Key).u8(uint8(len(r.Frames)))
		for _, f := range r.Frames {
			b = append(b.u16(uint16(len(f))), f...)
		}
	case *ReleaseRequest:
		b = frame(id, opRelease).str(r.From).u8(uint8(r.Role)).tuple(r.Tuple).u16(r.Key).str(r.Reason)
	case *ReopenRequest:
		b = frame(id, opReopen).str(r.From).tuple(r.Tuple)
	case *UnknownKeyRequest:
		b = frame(id, opUnknown).str(r.From).u8(uint8(r.Proto)).u16(r.Key)
	default:
		return nil, fmt.Errorf("api: no peer request of type %T", req)
	}
	return b.finish(), nil
}

// encodeAnswer is the frame answering request id: err, or for an Accept
// the number of first packets the server took on.
func encodeAnswer(id uint32, delivered int, err error) []byte {
	b := frame(id, opAnswer)
	if err != nil {
		var e *Error
		msg := err.Error()
		if errors.As(err, &e) {
			msg = e.Message
		}
		return b.u8(codeNumber(CodeOf(err))).str(msg).finish()
	}
	return b.u8(0).u8(uint8(min(delivered, 255))).finish()
}

func framesBytes(fs [][]byte) int {
	n := 0
	for _, f := range fs {
		n += len(f)
	}
	return n
}

// EncodePeerRequest is the frame of one request under id, as a client
// sends it: for tools that speak the protocol on a connection of their
// own (the security tests' attacker).
func EncodePeerRequest(id uint32, req any) ([]byte, error) { return encodeRequest(id, req) }

// DecodePeerAnswer reads an answer frame's body (after the 9-byte header):
// the number of first packets an Accept delivered, or the error.
func DecodePeerAnswer(body []byte) (int, error) { return decodeAnswer(body) }

// --- reading ---

// rbuf reads a body's fields; the first error sticks.
type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) take(n int) []byte {
	if r.err != nil || n > len(r.b) {
		r.err = errMalformed
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *rbuf) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *rbuf) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *rbuf) str() string {
	n := int(r.u16())
	if n > maxString {
		r.err = errMalformed
		return ""
	}
	return string(r.take(n))
}

func (r *rbuf) addr() netip.Addr {
	switch n := int(r.u8()); n {
	case 0:
		return netip.Addr{}
	case 4, 16:
		a, _ := netip.AddrFromSlice(r.take(n))
		return a
	}
	r.err = errMalformed
	return netip.Addr{}
}

func (r *rbuf) tuple() session.Tuple {
	return session.Tuple{Tenant: r.str(), Proto: session.Proto(r.u8()), Client: r.addr(), Server: r.addr(), Port: r.u16()}
}

// end checks that the whole body was read.
func (r *rbuf) end() error {
	if r.err == nil && len(r.b) > 0 {
		r.err = errMalformed
	}
	return r.err
}

// decodeRequest reads the body of a request of op: *AcceptRequest,
// *ReleaseRequest, *ReopenRequest or *UnknownKeyRequest.
func decodeRequest(op uint8, body []byte) (peerRequest, error) {
	r := &rbuf{b: body}
	var req peerRequest
	switch op {
	case opAccept:
		a := &AcceptRequest{From: r.str(), Tuple: r.tuple(), Key: r.u16()}
		n := int(r.u8())
		if n > MaxAcceptFrames {
			return nil, Errorf(CodeInvalid, "at most %d first packets", MaxAcceptFrames)
		}
		for range n {
			if f := r.take(int(r.u16())); f != nil {
				a.Frames = append(a.Frames, f)
			}
		}
		if framesBytes(a.Frames) > MaxAcceptFrameBytes {
			return nil, Errorf(CodeInvalid, "at most %d bytes of first packets", MaxAcceptFrameBytes)
		}
		req = a
	case opRelease:
		req = &ReleaseRequest{From: r.str(), Role: session.Role(r.u8()), Tuple: r.tuple(), Key: r.u16(), Reason: r.str()}
	case opReopen:
		req = &ReopenRequest{From: r.str(), Tuple: r.tuple()}
	case opUnknown:
		req = &UnknownKeyRequest{From: r.str(), Proto: session.Proto(r.u8()), Key: r.u16()}
	default:
		return nil, Errorf(CodeInvalid, "no peer call %d", op)
	}
	if err := r.end(); err != nil {
		return nil, Errorf(CodeInvalid, "bad request body: %v", err)
	}
	return req, nil
}

// decodeAnswer reads an answer's body: the delivered count of an Accept,
// or the error.
func decodeAnswer(body []byte) (int, error) {
	r := &rbuf{b: body}
	code := int(r.u8())
	if code == 0 {
		delivered := 0
		if len(r.b) > 0 {
			delivered = int(r.u8())
		}
		return delivered, r.end()
	}
	msg := r.str()
	if err := r.end(); err != nil {
		return 0, err
	}
	if code >= len(wireCodes) {
		return 0, Errorf(CodeInternal, "%s", msg)
	}
	return 0, &Error{Code: wireCodes[code], Message: msg}
}
