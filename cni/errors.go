package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"nvi/api"
)

// Error codes. 1-99 are the specification's well-known codes, 100 and up
// are NVI's own.
const (
	CodeIncompatibleVersion = 1  // the configuration's cniVersion is not one we speak
	CodeUnsupportedField    = 2  // a configuration field holds something we cannot honour
	CodeUnknownContainer    = 3  // the container (its network namespace) does not exist
	CodeInvalidEnvironment  = 4  // a CNI_* variable is missing or malformed
	CodeIOFailure           = 5  // reading stdin or writing stdout failed
	CodeDecodingFailure     = 6  // the configuration is not valid JSON
	CodeInvalidConfig       = 7  // the configuration is incomplete or wrong
	CodeTryAgainLater       = 11 // the agent is unreachable or busy: retry
	CodeNotAvailable        = 50 // STATUS: the agent cannot serve ADD now

	CodeUnknownNetwork = 100 // the tenant or network does not exist
	CodeAddressTaken   = 101 // the requested address belongs to another endpoint
	CodeExists         = 102 // the attachment (endpoint or interface) already exists
	CodeRefused        = 103 // the agent refused the request as invalid or denied
	CodeInterface      = 104 // making or configuring the interfaces failed
	CodeCheckFailed    = 105 // CHECK found the attachment missing or different
	CodeAgent          = 106 // the agent failed in some other way
)

// Error is the specification's error result. It is also a Go error, so the
// operations return it up to the dispatcher, which prints it.
type Error struct {
	CNIVersion string `json:"cniVersion,omitempty"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details == "" {
		return e.Msg
	}
	return e.Msg + ": " + e.Details
}

// errorf makes an *Error whose details are formatted.
func errorf(code uint, msg, format string, args ...any) *Error {
	return &Error{Code: code, Msg: msg, Details: fmt.Sprintf(format, args...)}
}

// asError turns any error into an *Error; ones without a code become
// CodeAgent.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeAgent, Msg: "nvi-cni failed", Details: err.Error()}
}

// agentError gives an error of the agent's local API a CNI code. what says
// what was being done ("creating endpoint acme/cni-…").
func agentError(what string, err error) *Error {
	msg, code := "", uint(CodeAgent)
	switch api.CodeOf(err) {
	case api.CodeNotFound:
		code, msg = CodeUnknownNetwork, "unknown tenant or network"
	case api.CodeConflict:
		code, msg = CodeAddressTaken, "address taken"
	case api.CodeExists:
		code, msg = CodeExists, "attachment already exists"
	case api.CodeInvalid, api.CodeDenied:
		code, msg = CodeRefused, "the NVI agent refused the request"
	case api.CodeUnavailable:
		code, msg = CodeTryAgainLater, "the NVI agent is not available; try again later"
	default:
		msg = "the NVI agent failed"
	}
	return &Error{Code: code, Msg: msg, Details: fmt.Sprintf("%s: %v", what, err)}
}

// writeError prints e as the specification's error result.
func writeError(w io.Writer, version string, e *Error) {
	out := *e
	if out.CNIVersion == "" {
		out.CNIVersion = version
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil { // cannot happen for these fields
		b = []byte(`{"code":999,"msg":"cannot encode error"}`)
	}
	_, _ = w.Write(append(b, '\n'))
}
