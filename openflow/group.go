package openflow

import (
	"fmt"
	"strings"
)

// Group-mod commands (ofp_group_mod_command).
const (
	GroupAdd    uint16 = 0
	GroupModify uint16 = 1
	GroupDelete uint16 = 2
)

// Group types (ofp_group_type).
const (
	GroupTypeAll          uint8 = 0
	GroupTypeSelect       uint8 = 1
	GroupTypeIndirect     uint8 = 2
	GroupTypeFastFailover uint8 = 3
)

// Bucket is one action bucket of a group.
type Bucket struct {
	Weight     uint16
	WatchPort  uint32
	WatchGroup uint32
	Actions    []Action
}

func appendBuckets(b []byte, buckets []Bucket) ([]byte, error) {
	for i, bk := range buckets {
		start := len(b)
		b = put16(put16(b, 0), bk.Weight)
		b = pad(put32(put32(b, bk.WatchPort), bk.WatchGroup), 4)
		var err error
		if b, err = appendActions(b, bk.Actions); err != nil {
			return b, fmt.Errorf("bucket %d: %w", i, err)
		}
		if err := patch16(b, start, len(b)-start); err != nil {
			return b, fmt.Errorf("bucket %d: %w", i, err)
		}
	}
	return b, nil
}

func readBuckets(ctx string, data []byte) ([]Bucket, error) {
	r := newReader(ctx, data)
	var out []Bucket
	for r.remaining() > 0 {
		n := int(r.u16())
		if r.err != nil {
			return nil, r.err
		}
		if n < 16 {
			return nil, fmt.Errorf("%w: %s: bucket length %d shorter than 16", ErrMalformed, ctx, n)
		}
		br := newReader(ctx+": bucket", r.take(n-2))
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: bucket length %d exceeds its container", ErrMalformed, ctx, n)
		}
		bk := Bucket{Weight: br.u16(), WatchPort: br.u32(), WatchGroup: br.u32()}
		br.skip(4)
		var err error
		if bk.Actions, err = readActions(ctx+": bucket", br.take(br.remaining())); err != nil {
			return nil, err
		}
		out = append(out, bk)
	}
	return out, nil
}

func bucketsString(buckets []Bucket) string {
	s := make([]string, len(buckets))
	for i, bk := range buckets {
		s[i] = fmt.Sprintf("bucket=weight:%d,watch_port:%s,watch_group:%d,actions=%s", bk.Weight, PortString(bk.WatchPort), bk.WatchGroup, ActionsString(bk.Actions))
	}
	return strings.Join(s, ",")
}

// GroupMod adds, modifies or deletes a group.
type GroupMod struct {
	Command   uint16
	GroupType uint8
	GroupID   uint32
	Buckets   []Bucket
}

func (GroupMod) Type() MsgType { return TypeGroupMod }
func (m GroupMod) appendBody(b []byte) ([]byte, error) {
	b = put32(pad(put8(put16(b, m.Command), m.GroupType), 1), m.GroupID)
	return appendBuckets(b, m.Buckets)
}
func (m GroupMod) String() string {
	return fmt.Sprintf("GROUP_MOD command=%d group_id=%d type=%d %s", m.Command, m.GroupID, m.GroupType, bucketsString(m.Buckets))
}

func init() {
	register(TypeGroupMod, func(r *reader) (Message, error) {
		m := GroupMod{Command: r.u16(), GroupType: r.u8()}
		r.skip(1)
		m.GroupID = r.u32()
		if r.err != nil {
			return nil, r.err
		}
		var err error
		m.Buckets, err = readBuckets("group_mod", r.take(r.remaining()))
		return m, err
	})
}
