package api

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"nvi/session"
)

var wireRequests = []any{
	&AcceptRequest{From: "s1", Tuple: acceptReq.Tuple, Key: 61441, Frames: [][]byte{[]byte("first"), make([]byte, 1500)}},
	&AcceptRequest{Tuple: session.Tuple{Proto: session.ICMP}},
	&ReleaseRequest{From: "s2", Role: session.RoleServer, Tuple: acceptReq.Tuple, Key: 65535, Reason: "idle"},
	&ReopenRequest{From: "s2", Tuple: session.Tuple{Tenant: "t", Proto: session.TCP, Client: netip.MustParseAddr("10.0.0.1"), Server: netip.MustParseAddr("fd00::1"), Port: 443}},
	&UnknownKeyRequest{From: "s3", Proto: session.UDP, Key: 61999},
}

// TestWireRoundTrip: every request decodes to what was encoded.
func TestWireRoundTrip(t *testing.T) {
	for i, req := range wireRequests {
		b, err := encodeRequest(uint32(i), req)
		if err != nil {
			t.Fatal(err)
		}
		id, op, body, err := readFrame(bufioOf(b), nil)
		if err != nil || id != uint32(i) {
			t.Fatalf("%T: frame id %d, err %v", req, id, err)
		}
		got, err := decodeRequest(op, body)
		if err != nil {
			t.Fatalf("%T: %v", req, err)
		}
		if !reflect.DeepEqual(got, req) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, req)
		}
	}
	if _, err := encodeRequest(1, &AcceptRequest{Frames: make([][]byte, MaxAcceptFrames+1)}); CodeOf(err) != CodeInvalid {
		t.Fatalf("too many first packets encoded: %v", err)
	}
}

func TestWireAnswers(t *testing.T) {
	for _, tc := range []struct {
		delivered int
		err       error
	}{
		{0, nil}, {3, nil},
		{0, Errorf(CodeDenied, "policy: isolated")},
		{0, Errorf(CodeUnavailable, "busy")},
		{0, errors.New("plain")},
	} {
		_, _, body, err := readFrame(bufioOf(encodeAnswer(9, tc.delivered, tc.err)), nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := decodeAnswer(body)
		if n != tc.delivered || CodeOf(err) != CodeOf(tc.err) && tc.err != nil || (err == nil) != (tc.err == nil) {
			t.Fatalf("answer %d/%v came back %d/%v", tc.delivered, tc.err, n, err)
		}
		if tc.err != nil && err.Error() != tc.err.Error() {
			t.Fatalf("message %q came back %q", tc.err, err)
		}
	}
}

// FuzzPeerRequest: any body decodes to a request or an "invalid" error,
// never a panic; what decodes encodes to the same bytes.
func FuzzPeerRequest(f *testing.F) {
	for i, req := range wireRequests {
		b, _ := encodeRequest(uint32(i), req)
		f.Add(b[8], b[frameHeader:])
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		req, err := decodeRequest(op, body)
		if err != nil {
			if CodeOf(err) != CodeInvalid {
				t.Fatalf("error %v has code %s", err, CodeOf(err))
			}
			return
		}
		b, err := encodeRequest(1, req)
		if err != nil {
			t.Fatalf("a decoded request does not encode: %v", err)
		}
		again, err := decodeRequest(b[8], b[frameHeader:])
		if err != nil || !reflect.DeepEqual(again, req) {
			t.Fatalf("re-encoded %+v decodes to %+v, %v", req, again, err)
		}
	})
}

// FuzzPeerFrame: any bytes on a connection give frames or an error.
func FuzzPeerFrame(f *testing.F) {
	b, _ := encodeRequest(1, wireRequests[0])
	f.Add(b)
	f.Add(encodeAnswer(2, 1, nil))
	f.Add([]byte{0, 0, 0, 5, 0, 0, 0, 1, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufioOf(data)
		for {
			_, op, body, err := readFrame(r, nil)
			if err != nil {
				return
			}
			if op == opAnswer {
				_, _ = decodeAnswer(body)
			} else {
				_, _ = decodeRequest(op, body)
			}
		}
	})
}

func bufioOf(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
