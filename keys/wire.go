package keys

import (
	"encoding/binary"
	"time"
)

// The records in this package use one canonical binary encoding each:
// fixed-width big-endian integers, fixed-size keys, and explicit one-byte
// counts and lengths that are checked against named limits. A decoder either
// consumes every byte exactly or fails, so no record has two encodings.

// builder appends fixed-width fields.
type builder struct{ b []byte }

func (w *builder) u8(v uint8)       { w.b = append(w.b, v) }
func (w *builder) u32(v uint32)     { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *builder) u64(v uint64)     { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *builder) bytes(v []byte)   { w.b = append(w.b, v...) }
func (w *builder) unix(t time.Time) { w.u64(uint64(t.Unix())) }

// parser reads fixed-width fields; after the first short read every
// further read returns zero values and ok stays false.
type parser struct {
	b  []byte
	ok bool
}

func newParser(b []byte) *parser { return &parser{b: b, ok: true} }

func (r *parser) take(n int) []byte {
	if !r.ok || n < 0 || len(r.b) < n {
		r.ok = false
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *parser) u8() uint8 {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *parser) u32() uint32 {
	v := r.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (r *parser) u64() uint64 {
	v := r.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// unix reads a time in whole seconds since the Unix epoch. Values that do
// not fit a non-negative int64 make the parse fail.
func (r *parser) unix() time.Time {
	v := r.u64()
	if v > maxUnixSeconds {
		r.ok = false
		return time.Time{}
	}
	return time.Unix(int64(v), 0).UTC()
}

// maxUnixSeconds bounds encoded times (year 9999) so that every decoded
// time re-encodes to the same bytes.
const maxUnixSeconds = 253402300799

// done reports whether every read succeeded and no bytes remain.
func (r *parser) done() bool { return r.ok && len(r.b) == 0 }

// validUnix reports whether t can be encoded: whole seconds between the
// Unix epoch and the end of year 9999.
func validUnix(t time.Time) bool {
	s := t.Unix()
	return s >= 0 && s <= maxUnixSeconds
}
