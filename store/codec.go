package store

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Record encoding: every record starts with a one-byte record version,
// followed by fields in a fixed order. Integers are unsigned varints (or
// fixed big-endian where they appear in keys), variable-length fields carry a
// uvarint length prefix and are bounded by a named limit, times are signed
// varints of Unix nanoseconds (0 encodes the zero time.Time). A decoder
// rejects unknown versions, lengths beyond the limits, truncation and
// trailing bytes.

// recordV1 is the only record version so far.
const recordV1 = 1

// encoder appends fields to a buffer.
type encoder struct{ b []byte }

func newEncoder(size int) *encoder {
	e := &encoder{b: make([]byte, 0, size)}
	e.u8(recordV1)
	return e
}

func (e *encoder) u8(v uint8)       { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) fixed(p []byte)   { e.b = append(e.b, p...) }

func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

func (e *encoder) bytes(p []byte) {
	e.uvarint(uint64(len(p)))
	e.b = append(e.b, p...)
}

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) time(t time.Time) { e.varint(timeToNanos(t)) }

// timeToNanos maps the zero time to 0 and any other time to Unix
// nanoseconds. (The instant 1970-01-01T00:00:00Z itself therefore decodes
// as the zero time, which no record uses meaningfully.)
func timeToNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func nanosToTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// decoder reads fields; after the first error every read returns a zero
// value and err keeps the first error.
type decoder struct {
	what string
	b    []byte
	err  error
}

func newDecoder(what string, b []byte) *decoder {
	d := &decoder{what: what, b: b}
	v := d.u8()
	if d.err == nil && v != recordV1 {
		d.fail("unknown record version %d", v)
	}
	return d
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", ErrCorrupt, d.what, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) u8() uint8 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bool() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bad boolean %d", v)
		return false
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int reads a uvarint that must not exceed max.
func (d *decoder) int(max int) int {
	v := d.uvarint()
	if v > uint64(max) {
		d.fail("value %d exceeds limit %d", v, max)
		return 0
	}
	return int(v)
}

func (d *decoder) fixed(dst []byte) {
	if d.err != nil {
		return
	}
	if len(d.b) < len(dst) {
		d.fail("truncated")
		return
	}
	copy(dst, d.b)
	d.b = d.b[len(dst):]
}

// bytes reads a length-prefixed field of at most max bytes into a fresh
// slice (bbolt memory is only valid inside the transaction). A zero-length
// field decodes as nil.
func (d *decoder) bytes(max int) []byte {
	n := d.int(max)
	if d.err != nil || n == 0 {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated")
		return nil
	}
	p := make([]byte, n)
	copy(p, d.b)
	d.b = d.b[n:]
	return p
}

// skipBytes passes over a length-prefixed field without copying it.
func (d *decoder) skipBytes(max int) {
	n := d.int(max)
	if d.err != nil {
		return
	}
	if len(d.b) < n {
		d.fail("truncated")
		return
	}
	d.b = d.b[n:]
}

func (d *decoder) str(max int) string { return string(d.bytes(max)) }

func (d *decoder) time() time.Time { return nanosToTime(d.varint()) }

// finish reports the first error, or an error if bytes remain.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// tooLarge returns an ErrTooLarge error naming the field.
func tooLarge(field string, n, max int) error {
	return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrTooLarge, field, n, max)
}

// Big-endian helpers for keys, so that bbolt's byte order is numeric order.

func be64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// timeKey maps a time to 8 bytes whose byte order is time order, for index
// keys (Unix nanoseconds with the sign bit flipped).
func timeKey(t time.Time) []byte { return be64(uint64(timeToNanos(t)) ^ (1 << 63)) }

// fromTimeKey inverts timeKey; b must be 8 bytes.
func fromTimeKey(b []byte) time.Time {
	return nanosToTime(int64(binary.BigEndian.Uint64(b) ^ (1 << 63)))
}

func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// present is the value of index and marker entries. (bbolt's Get returns
// nil for an empty value written in the same transaction, so markers must
// not be empty.)
var present = []byte{1}
