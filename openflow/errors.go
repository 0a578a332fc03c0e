package openflow

import "errors"

// Sentinel errors. Every decoding error wraps one of these so callers can
// tell "the peer sent garbage" (close the connection) from "we asked for
// something the codec cannot express" (a bug in the caller).
var (
	// ErrTruncated means a length field pointed past the end of the data.
	ErrTruncated = errors.New("openflow: truncated")
	// ErrMalformed means the bytes are complete but violate the layout
	// (bad lengths, wrong version, values the spec forbids).
	ErrMalformed = errors.New("openflow: malformed")
	// ErrUnsupported means a well-formed message or body this codec does
	// not implement.
	ErrUnsupported = errors.New("openflow: unsupported")
	// ErrInvalid means a value given to Marshal cannot be encoded.
	ErrInvalid = errors.New("openflow: invalid value")
	// ErrTooLong means an encoded message or part exceeds a 16-bit length.
	ErrTooLong = errors.New("openflow: too long")
)
