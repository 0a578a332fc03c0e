package ovsdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
)

// UUID is a reference to an existing row. On the wire it is ["uuid", "<36 chars>"].
type UUID string

// NamedUUID refers to a row inserted earlier in the same transaction by its
// "uuid-name". On the wire it is ["named-uuid", "<name>"]. The server replaces
// it by the real UUID when the transaction commits.
type NamedUUID string

// Set is an OVSDB set. It always encodes as ["set", [...]], which every server
// accepts; when decoding, the single-element shortcut (a bare atom) is also
// understood by the Row accessors, because servers use it for sets of one.
type Set []any

// Map is an OVSDB map. Keys and values are atoms (string, int64, float64,
// bool, UUID). It encodes as ["map", [[k, v], ...]] with keys sorted so that
// the same map always produces the same bytes (useful in tests and logs).
type Map map[any]any

// MarshalJSON implements json.Marshaler.
func (u UUID) MarshalJSON() ([]byte, error) {
	return json.Marshal([2]string{"uuid", string(u)})
}

// MarshalJSON implements json.Marshaler.
func (u NamedUUID) MarshalJSON() ([]byte, error) {
	return json.Marshal([2]string{"named-uuid", string(u)})
}

// MarshalJSON implements json.Marshaler.
func (s Set) MarshalJSON() ([]byte, error) {
	elems := make([]any, 0, len(s))
	for i, e := range s {
		a, err := encodeAtom(e)
		if err != nil {
			return nil, fmt.Errorf("set element %d: %w", i, err)
		}
		elems = append(elems, a)
	}
	return json.Marshal([]any{"set", elems})
}

// MarshalJSON implements json.Marshaler.
func (m Map) MarshalJSON() ([]byte, error) {
	pairs := make([][2]any, 0, len(m))
	for k, v := range m {
		ek, err := encodeAtom(k)
		if err != nil {
			return nil, fmt.Errorf("map key %v: %w", k, err)
		}
		ev, err := encodeAtom(v)
		if err != nil {
			return nil, fmt.Errorf("map value for key %v: %w", k, err)
		}
		pairs = append(pairs, [2]any{ek, ev})
	}
	// Sort by the encoded key so the output is deterministic.
	keys := make([]string, len(pairs))
	for i, p := range pairs {
		b, _ := json.Marshal(p[0]) // atoms always marshal
		keys[i] = string(b)
	}
	sort.Sort(pairSorter{pairs, keys})
	return json.Marshal([]any{"map", pairs})
}

type pairSorter struct {
	pairs [][2]any
	keys  []string
}

func (p pairSorter) Len() int           { return len(p.pairs) }
func (p pairSorter) Less(i, j int) bool { return p.keys[i] < p.keys[j] }
func (p pairSorter) Swap(i, j int) {
	p.pairs[i], p.pairs[j] = p.pairs[j], p.pairs[i]
	p.keys[i], p.keys[j] = p.keys[j], p.keys[i]
}

// encodeAtom returns a JSON-marshalable form of an atom, rejecting anything
// that is not one so that a wrong Go type becomes an error before it reaches
// the server instead of a confusing "syntax error" reply.
func encodeAtom(v any) (any, error) {
	switch a := v.(type) {
	case string, bool, UUID, NamedUUID:
		return a, nil
	case int:
		return int64(a), nil
	case int8:
		return int64(a), nil
	case int16:
		return int64(a), nil
	case int32:
		return int64(a), nil
	case int64:
		return a, nil
	case uint8:
		return int64(a), nil
	case uint16:
		return int64(a), nil
	case uint32:
		return int64(a), nil
	case uint:
		if uint64(a) > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d out of range", a)
		}
		return int64(a), nil
	case uint64:
		if a > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d out of range", a)
		}
		return int64(a), nil
	case float32:
		return encodeReal(float64(a))
	case float64:
		return encodeReal(a)
	case nil:
		return nil, errors.New("nil is not an OVSDB atom")
	default:
		return nil, fmt.Errorf("%T is not an OVSDB atom", v)
	}
}

func encodeReal(f float64) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("real %v cannot be encoded", f)
	}
	return f, nil
}

// encodeValue converts a Go value into its OVSDB wire form. Besides atoms,
// Set and Map it accepts the common plain Go shapes ([]string, []int,
// []int64, []UUID, []any, map[string]string, map[string]int64) so that
// callers do not have to wrap every column value.
func encodeValue(v any) (any, error) {
	switch x := v.(type) {
	case Set, Map:
		return x, nil
	case []any:
		return Set(x), nil
	case []string:
		return setOf(x, func(e string) any { return e }), nil
	case []int:
		return setOf(x, func(e int) any { return int64(e) }), nil
	case []int64:
		return setOf(x, func(e int64) any { return e }), nil
	case []UUID:
		return setOf(x, func(e UUID) any { return e }), nil
	case map[string]string:
		m := make(Map, len(x))
		for k, e := range x {
			m[k] = e
		}
		return m, nil
	case map[string]int64:
		m := make(Map, len(x))
		for k, e := range x {
			m[k] = e
		}
		return m, nil
	default:
		return encodeAtom(v)
	}
}

func setOf[T any](xs []T, atom func(T) any) Set {
	s := make(Set, len(xs))
	for i, e := range xs {
		s[i] = atom(e)
	}
	return s
}

// decodeValue parses one OVSDB value from its wire form. It never panics:
// anything that is not a valid atom, set or map is an error.
func decodeValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after value")
	}
	return fromJSON(v)
}

// fromJSON converts a generic JSON tree (decoded with UseNumber) to an OVSDB value.
func fromJSON(v any) (any, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) != 2 {
		return atomFromJSON(v)
	}
	tag, ok := arr[0].(string)
	if !ok {
		return nil, fmt.Errorf("invalid value: array does not start with a type tag")
	}
	switch tag {
	case "set":
		elems, ok := arr[1].([]any)
		if !ok {
			return nil, errors.New(`invalid set: second element is not an array`)
		}
		s := make(Set, 0, len(elems))
		for i, e := range elems {
			a, err := atomFromJSON(e)
			if err != nil {
				return nil, fmt.Errorf("set element %d: %w", i, err)
			}
			s = append(s, a)
		}
		return s, nil
	case "map":
		pairs, ok := arr[1].([]any)
		if !ok {
			return nil, errors.New(`invalid map: second element is not an array`)
		}
		m := make(Map, len(pairs))
		for i, p := range pairs {
			pair, ok := p.([]any)
			if !ok || len(pair) != 2 {
				return nil, fmt.Errorf("map pair %d is not a 2-element array", i)
			}
			k, err := atomFromJSON(pair[0])
			if err != nil {
				return nil, fmt.Errorf("map pair %d key: %w", i, err)
			}
			val, err := atomFromJSON(pair[1])
			if err != nil {
				return nil, fmt.Errorf("map pair %d value: %w", i, err)
			}
			m[k] = val
		}
		return m, nil
	default:
		return atomFromJSON(v)
	}
}

func atomFromJSON(v any) (any, error) {
	switch a := v.(type) {
	case string:
		return a, nil
	case bool:
		return a, nil
	case json.Number:
		return numberAtom(a)
	case float64: // decoders without UseNumber
		return a, nil
	case []any:
		if len(a) == 2 {
			tag, _ := a[0].(string)
			s, ok := a[1].(string)
			switch {
			case tag == "uuid" && ok:
				return UUID(s), nil
			case tag == "named-uuid" && ok:
				return NamedUUID(s), nil
			}
		}
		return nil, errors.New("invalid atom: array is not a uuid or named-uuid")
	case nil:
		return nil, errors.New("invalid atom: null")
	default:
		return nil, fmt.Errorf("invalid atom of JSON type %T", v)
	}
}

// numberAtom keeps integers exact (OVSDB integers are 64-bit, beyond what a
// float64 holds) and falls back to a real.
func numberAtom(n json.Number) (any, error) {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return i, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		return nil, fmt.Errorf("invalid number %q", string(n))
	}
	return f, nil
}
