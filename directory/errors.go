package directory

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns wraps exactly one of them
// (plus, where there is one, the underlying cause), so callers can branch
// with errors.Is while the message stays a plain sentence for people.
var (
	// ErrNotFound: the record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a record with that name (or index entry) already exists.
	ErrExists = errors.New("already exists")
	// ErrInvalid: the request itself is malformed (bad name, CIDR, address...).
	ErrInvalid = errors.New("invalid")
	// ErrConflict: the request is well formed but clashes with what is stored
	// (address in use, overlapping CIDR, deleting something still in use,
	// losing a compare-and-swap race too often).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: etcd could not be reached or did not answer in time.
	ErrUnavailable = errors.New("directory unavailable")
	// ErrDenied: etcd refused the request for the credential the store
	// uses: its user may not do that (a server writing another's record, a
	// tenant's policy), or it was revoked ([Store.RevokeServer]).
	ErrDenied = errors.New("permission denied")
)

// kindError carries a sentinel without putting its text in the message:
// "address 10.1.0.5 is already used by acme/db" reads better than the same
// sentence with ": conflict" appended.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// errorf formats a message (which may itself wrap a cause with %w) and tags
// it with kind.
func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// unavailable wraps an etcd client error met while doing op: ErrDenied for
// an authorization refusal, ErrUnavailable otherwise.
func unavailable(op string, err error) error {
	if isPermissionDenied(err) {
		return errorf(ErrDenied, "directory: %s: refused: %w (this credential may not do that, or it was revoked; see the package documentation, Credentials)", op, err)
	}
	return errorf(ErrUnavailable, "directory: %s: %w", op, err)
}
