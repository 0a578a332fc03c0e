package ovsdb

import (
	"encoding/json"
	"fmt"
	"sort"
)

// Row is a set of column values. Values are OVSDB values as decoded by this
// package (string, int64, float64, bool, UUID, NamedUUID, Set, Map) or, when
// writing, any Go value that encodeValue accepts ([]string, map[string]string...).
//
// Reading a column goes through the accessors because the server may send a
// set of one element as the bare atom and an empty optional value as an
// empty set; the accessors hide both shortcuts.
type Row map[string]any

// MarshalJSON implements json.Marshaler, validating every column value.
func (r Row) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(r))
	for col, v := range r {
		e, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("column %q: %w", col, err)
		}
		out[col] = e
	}
	return json.Marshal(out)
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *Row) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("row: %w", err)
	}
	if raw == nil {
		// JSON null: an absent row (e.g. "old" of an insert).
		*r = nil
		return nil
	}
	row := make(Row, len(raw))
	for col, v := range raw {
		val, err := decodeValue(v)
		if err != nil {
			return fmt.Errorf("row column %q: %w", col, err)
		}
		row[col] = val
	}
	*r = row
	return nil
}

// Elems returns the elements of a set column, undoing the single-element
// shortcut. A missing column yields nil.
func (r Row) Elems(col string) []any {
	switch v := r[col].(type) {
	case nil:
		return nil
	case Set:
		return v
	default:
		return []any{v}
	}
}

// one returns the single element of a column if it has type T: a scalar
// column, or an optional column (set of at most one) that is not empty.
func one[T any](r Row, col string) (T, bool) {
	e := r.Elems(col)
	if len(e) != 1 {
		var zero T
		return zero, false
	}
	v, ok := e[0].(T)
	return v, ok
}

// all returns the elements of a set column that have type T.
func all[T any](r Row, col string) []T {
	var out []T
	for _, e := range r.Elems(col) {
		if v, ok := e.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// String returns a string column, or the single element of an optional string
// column ("" when empty or of another type).
func (r Row) String(col string) string {
	s, _ := one[string](r, col)
	return s
}

// Strings returns a set-of-strings column (e.g. Bridge.protocols), sorted.
func (r Row) Strings(col string) []string {
	out := all[string](r, col)
	sort.Strings(out)
	return out
}

// Int returns an integer column or the element of an optional integer column;
// ok is false when it is empty or not an integer.
func (r Row) Int(col string) (v int64, ok bool) { return one[int64](r, col) }

// Bool returns a boolean column or the element of an optional one; ok is false
// when it is empty or not a boolean.
func (r Row) Bool(col string) (v bool, ok bool) { return one[bool](r, col) }

// UUID returns a uuid column or the element of an optional one ("" if empty).
func (r Row) UUID(col string) UUID {
	u, _ := one[UUID](r, col)
	return u
}

// UUIDs returns a set-of-uuids column such as Bridge.ports.
func (r Row) UUIDs(col string) []UUID { return all[UUID](r, col) }

// StringMap returns a string-to-string map column such as external_ids.
// It never returns nil, so callers can index it directly.
func (r Row) StringMap(col string) map[string]string {
	out := map[string]string{}
	m, _ := r[col].(Map)
	for k, v := range m {
		ks, ok1 := k.(string)
		vs, ok2 := v.(string)
		if ok1 && ok2 {
			out[ks] = vs
		}
	}
	return out
}
