package ovsdb

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Condition is one clause of a "where": [column, function, value].
// Functions: "<", "<=", "==", "!=", ">=", ">", "includes", "excludes".
type Condition struct {
	Column   string
	Function string
	Value    any
}

// Eq is the common Condition column == value.
func Eq(column string, value any) Condition {
	return Condition{Column: column, Function: "==", Value: value}
}

// Includes is the Condition "column includes value" (value a set or map).
func Includes(column string, value any) Condition {
	return Condition{Column: column, Function: "includes", Value: value}
}

// MarshalJSON implements json.Marshaler.
func (c Condition) MarshalJSON() ([]byte, error) {
	v, err := encodeValue(c.Value)
	if err != nil {
		return nil, fmt.Errorf("condition on %q: %w", c.Column, err)
	}
	return json.Marshal([3]any{c.Column, c.Function, v})
}

// Mutation is one clause of a "mutate": [column, mutator, value].
// Mutators: "+=", "-=", "*=", "/=", "%=", "insert", "delete".
type Mutation struct {
	Column  string
	Mutator string
	Value   any
}

// MarshalJSON implements json.Marshaler.
func (m Mutation) MarshalJSON() ([]byte, error) {
	v, err := encodeValue(m.Value)
	if err != nil {
		return nil, fmt.Errorf("mutation of %q: %w", m.Column, err)
	}
	return json.Marshal([3]any{m.Column, m.Mutator, v})
}

// Operation is one element of a transact request. Build it with Insert,
// Select, Update, MutateOp, Delete, Wait or Comment: each op has its own
// mandatory members (an empty "where" must still be sent, for example) and
// MarshalJSON emits exactly those.
type Operation struct {
	Op        string
	Table     string
	Row       Row
	Rows      []Row
	Where     []Condition
	Columns   []string
	Mutations []Mutation
	UUIDName  string
	Until     string
	Timeout   *int // milliseconds, wait only; nil waits forever
	Comment   string
}

// Insert inserts row into table. uuidName, if not empty, lets later operations
// of the same transaction refer to the new row as NamedUUID(uuidName); it must
// match [_a-zA-Z][_a-zA-Z0-9]*.
func Insert(table string, row Row, uuidName string) Operation {
	return Operation{Op: "insert", Table: table, Row: row, UUIDName: uuidName}
}

// Select returns the given columns (all when none) of the rows matching where.
func Select(table string, where []Condition, columns ...string) Operation {
	return Operation{Op: "select", Table: table, Where: where, Columns: columns}
}

// Update sets the columns in row on every row matching where.
func Update(table string, where []Condition, row Row) Operation {
	return Operation{Op: "update", Table: table, Where: where, Row: row}
}

// MutateOp applies mutations to every row matching where. (Named MutateOp
// because Mutation is the clause type.)
func MutateOp(table string, where []Condition, mutations ...Mutation) Operation {
	return Operation{Op: "mutate", Table: table, Where: where, Mutations: mutations}
}

// Delete deletes the rows matching where.
func Delete(table string, where []Condition) Operation {
	return Operation{Op: "delete", Table: table, Where: where}
}

// Wait makes the transaction fail with "timed out" unless the given columns
// of the rows matching where compare (until: "==" or "!=") to rows. A
// timeout of 0 checks once, which turns Wait into an optimistic-concurrency
// assertion; a longer timeout makes the server hold the transaction.
func Wait(table string, where []Condition, columns []string, until string, rows []Row, timeoutMS int) Operation {
	t := timeoutMS
	return Operation{Op: "wait", Table: table, Where: where, Columns: columns, Until: until, Rows: rows, Timeout: &t}
}

// Comment records text in the server's log of the transaction.
func Comment(text string) Operation {
	return Operation{Op: "comment", Comment: text}
}

var uuidNameRE = regexp.MustCompile(`^[_a-zA-Z][_a-zA-Z0-9]*$`)

// MarshalJSON implements json.Marshaler.
func (o Operation) MarshalJSON() ([]byte, error) {
	m := map[string]any{"op": o.Op}
	where := o.Where
	if where == nil {
		where = []Condition{}
	}
	row := o.Row
	if row == nil {
		row = Row{}
	}
	switch o.Op {
	case "insert":
		m["table"], m["row"] = o.Table, row
		if o.UUIDName != "" {
			if !uuidNameRE.MatchString(o.UUIDName) {
				return nil, fmt.Errorf("invalid uuid-name %q", o.UUIDName)
			}
			m["uuid-name"] = o.UUIDName
		}
	case "select":
		m["table"], m["where"] = o.Table, where
		if o.Columns != nil {
			m["columns"] = o.Columns
		}
	case "update":
		m["table"], m["where"], m["row"] = o.Table, where, row
	case "mutate":
		muts := o.Mutations
		if muts == nil {
			muts = []Mutation{}
		}
		m["table"], m["where"], m["mutations"] = o.Table, where, muts
	case "delete":
		m["table"], m["where"] = o.Table, where
	case "wait":
		rows := o.Rows
		if rows == nil {
			rows = []Row{}
		}
		cols := o.Columns
		if cols == nil {
			cols = []string{}
		}
		until := o.Until
		if until == "" {
			until = "=="
		}
		m["table"], m["where"], m["columns"], m["until"], m["rows"] = o.Table, where, cols, until, rows
		if o.Timeout != nil {
			m["timeout"] = *o.Timeout
		}
	case "comment":
		m["comment"] = o.Comment
	default:
		return nil, fmt.Errorf("unknown operation %q", o.Op)
	}
	return json.Marshal(m)
}

// describe names the operation in error messages ("insert Port").
func (o Operation) describe() string {
	if o.Table == "" {
		return o.Op
	}
	return o.Op + " " + o.Table
}

// OpResult is the result of one operation: Count for update/mutate/delete,
// UUID for insert, Rows for select.
type OpResult struct {
	Count int
	UUID  UUID
	Rows  []Row
}

// opResultWire is the union of everything a result element may hold.
type opResultWire struct {
	Count   *int            `json:"count"`
	UUID    json.RawMessage `json:"uuid"`
	Rows    []Row           `json:"rows"`
	Error   *string         `json:"error"`
	Details json.RawMessage `json:"details"`
}

// OpError reports a failed operation (or, with Op "commit", a transaction
// whose operations all succeeded but which could not be committed, e.g. a
// referential integrity violation). Err is the RFC 7047 error string such as
// "constraint violation", "timed out" or "referential integrity violation".
type OpError struct {
	Index   int    // position in the transaction; len(ops) for a commit error
	Op      string // "insert Port", "wait Bridge", "commit"...
	Err     string
	Details string
}

func (e *OpError) Error() string {
	msg := fmt.Sprintf("operation %d (%s) failed: %s", e.Index, e.Op, e.Err)
	if e.Op == "commit" {
		msg = "commit failed: " + e.Err
	}
	if e.Details != "" {
		msg += ": " + e.Details
	}
	return msg
}

// IsOpError reports whether err contains an OpError with the given RFC error
// string (e.g. "timed out", "constraint violation").
func IsOpError(err error, rfcError string) bool {
	var oe *OpError
	return errors.As(err, &oe) && oe.Err == rfcError
}

// parseTransactResult turns the raw result array into per-op results and the
// first error. It is strict about shape but never panics.
func parseTransactResult(raw json.RawMessage, ops []Operation) ([]OpResult, error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, fmt.Errorf("ovsdb: transact: malformed result: %w", err)
	}
	if len(elems) < len(ops) || len(elems) > len(ops)+1 {
		return nil, fmt.Errorf("ovsdb: transact: %d results for %d operations", len(elems), len(ops))
	}
	results := make([]OpResult, len(ops))
	for i, e := range elems {
		name := "commit"
		if i < len(ops) {
			name = ops[i].describe()
		}
		if isJSONNull(e) {
			continue // not attempted because an earlier op failed
		}
		var w opResultWire
		if err := json.Unmarshal(e, &w); err != nil {
			return results, fmt.Errorf("ovsdb: transact: malformed result of operation %d (%s): %w", i, name, err)
		}
		if w.Error != nil {
			return results, &OpError{Index: i, Op: name, Err: *w.Error, Details: detailsString(w.Details)}
		}
		if i == len(ops) {
			return results, fmt.Errorf("ovsdb: transact: extra result without error")
		}
		r := OpResult{Rows: w.Rows}
		if w.Count != nil {
			r.Count = *w.Count
		}
		if len(w.UUID) > 0 {
			v, err := decodeValue(w.UUID)
			u, ok := v.(UUID)
			if err != nil || !ok {
				return results, fmt.Errorf("ovsdb: transact: malformed uuid in result of operation %d (%s)", i, name)
			}
			r.UUID = u
		}
		results[i] = r
	}
	return results, nil
}

func isJSONNull(b json.RawMessage) bool {
	return strings.TrimSpace(string(b)) == "null"
}

// detailsString renders the optional "details" member, which servers send as
// a string but the RFC allows to be any JSON.
func detailsString(raw json.RawMessage) string {
	if len(raw) == 0 || isJSONNull(raw) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}
