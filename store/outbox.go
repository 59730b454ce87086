package store

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// Limits on outbox entries.
const (
	// MaxEnvelopeSize bounds a stored envelope. It is above the protocol's
	// own envelope limit so that the store never is the tighter bound.
	MaxEnvelopeSize = 128 << 10
	// DefaultDueLimit is the DueOutbox limit when none is given.
	DefaultDueLimit = 100
	maxAttempts     = 1 << 30
)

// OutboxKind says what an outbox entry carries.
type OutboxKind uint8

// Outbox kinds.
const (
	OutboxMessage OutboxKind = 1 // a user message
	OutboxReceipt OutboxKind = 2 // a control message: a delivery receipt or a mailbox announcement
)

func (k OutboxKind) String() string {
	switch k {
	case OutboxMessage:
		return "message"
	case OutboxReceipt:
		return "receipt"
	}
	return fmt.Sprintf("outbox-kind(%d)", uint8(k))
}

// OutboxEntry is a message waiting to be delivered. It is written before
// the envelope first goes on the wire and deleted when delivery is
// confirmed (or the entry expires). An entry with no Envelope is queued but
// not sealed yet (the message record holds its body): the running node
// seals it, in one commit with the session, before it first sends it.
type OutboxEntry struct {
	MsgID       [16]byte // the message (or receipt) ID; the entry's key
	Contact     [32]byte // recipient account
	Envelope    []byte   // marshalled envelope, opaque here; empty until sealed
	Kind        OutboxKind
	Created     time.Time
	NextAttempt time.Time // when to try again; DueOutbox orders by it
	Attempts    int       // delivery attempts so far
	Mailboxes   int       // mailboxes that acknowledged a deposit
	Expires     time.Time // give up after this
	// DeleteToken is the sealed envelope's delete token (zero when it is
	// not known: not sealed, or sealed before tokens were kept), with
	// which the sender withdraws mailbox copies of an envelope it drops.
	DeleteToken [32]byte
}

func (e *OutboxEntry) marshal() ([]byte, error) {
	switch {
	case len(e.Envelope) == 0 && e.Kind == OutboxReceipt:
		return nil, fmt.Errorf("store: a receipt outbox entry needs its sealed envelope")
	case len(e.Envelope) > MaxEnvelopeSize:
		return nil, tooLarge("envelope", len(e.Envelope), MaxEnvelopeSize)
	case e.Kind != OutboxMessage && e.Kind != OutboxReceipt:
		return nil, fmt.Errorf("store: invalid outbox kind %d", e.Kind)
	case e.Attempts < 0 || e.Attempts > maxAttempts || e.Mailboxes < 0 || e.Mailboxes > maxMailboxCount:
		return nil, fmt.Errorf("store: outbox counters out of range")
	}
	enc := newEncoder(96 + len(e.Envelope))
	enc.fixed(e.MsgID[:])
	enc.fixed(e.Contact[:])
	enc.bytes(e.Envelope)
	enc.u8(uint8(e.Kind))
	enc.time(e.Created)
	enc.time(e.NextAttempt)
	enc.uvarint(uint64(e.Attempts))
	enc.uvarint(uint64(e.Mailboxes))
	enc.time(e.Expires)
	if e.DeleteToken != ([32]byte{}) {
		enc.fixed(e.DeleteToken[:]) // absent in entries written before tokens were kept
	}
	return enc.b, nil
}

func unmarshalOutbox(b []byte) (OutboxEntry, error) {
	var e OutboxEntry
	d := newDecoder("outbox entry", b)
	d.fixed(e.MsgID[:])
	d.fixed(e.Contact[:])
	e.Envelope = d.bytes(MaxEnvelopeSize)
	e.Kind = OutboxKind(d.u8())
	e.Created = d.time()
	e.NextAttempt = d.time()
	e.Attempts = d.int(maxAttempts)
	e.Mailboxes = d.int(maxMailboxCount)
	e.Expires = d.time()
	if d.err == nil && len(d.b) > 0 {
		d.fixed(e.DeleteToken[:])
	}
	if err := d.finish(); err != nil {
		return OutboxEntry{}, err
	}
	if e.Kind != OutboxMessage && e.Kind != OutboxReceipt {
		return OutboxEntry{}, fmt.Errorf("%w: outbox entry: bad kind %d", ErrCorrupt, e.Kind)
	}
	if len(e.Envelope) == 0 {
		e.Envelope = nil // queued, not sealed yet
	}
	return e, nil
}

func dueKey(next time.Time, id [16]byte) []byte { return concat(timeKey(next), id[:]) }

// outboxNextAttempt reads only the NextAttempt of an encoded entry (what
// its due index key needs), without copying the envelope.
func outboxNextAttempt(b []byte) (time.Time, error) {
	d := newDecoder("outbox entry", b)
	var ids [16 + 32]byte
	d.fixed(ids[:])
	d.skipBytes(MaxEnvelopeSize)
	d.u8()
	d.time()
	next := d.time()
	return next, d.err
}

// PutOutbox stores an outbox entry, replacing any entry with the same
// MsgID (use it to record an attempt and reschedule).
func (tx *Tx) PutOutbox(e OutboxEntry) error {
	ob, err := tx.wbucket(bucketOutbox)
	if err != nil {
		return err
	}
	due, err := tx.bucket(bucketOutboxDue)
	if err != nil {
		return err
	}
	v, err := e.marshal()
	if err != nil {
		return err
	}
	if old := ob.Get(e.MsgID[:]); old != nil {
		prev, err := outboxNextAttempt(old)
		if err != nil {
			return err
		}
		if err := due.Delete(dueKey(prev, e.MsgID)); err != nil {
			return err
		}
	}
	if err := due.Put(dueKey(e.NextAttempt, e.MsgID), present); err != nil {
		return err
	}
	return ob.Put(e.MsgID[:], v)
}

// GetOutbox returns the outbox entry for id, or an error wrapping
// ErrNotFound.
func (tx *Tx) GetOutbox(id [16]byte) (OutboxEntry, error) {
	ob, err := tx.bucket(bucketOutbox)
	if err != nil {
		return OutboxEntry{}, err
	}
	v := ob.Get(id[:])
	if v == nil {
		return OutboxEntry{}, fmt.Errorf("%w: outbox entry %x", ErrNotFound, id)
	}
	return unmarshalOutbox(v)
}

// DeleteOutbox removes the outbox entry for id and reports whether it
// existed.
func (tx *Tx) DeleteOutbox(id [16]byte) (bool, error) {
	ob, err := tx.wbucket(bucketOutbox)
	if err != nil {
		return false, err
	}
	due, err := tx.bucket(bucketOutboxDue)
	if err != nil {
		return false, err
	}
	old := ob.Get(id[:])
	if old == nil {
		return false, nil
	}
	prev, err := outboxNextAttempt(old)
	if err != nil {
		return false, err
	}
	if err := due.Delete(dueKey(prev, id)); err != nil {
		return false, err
	}
	return true, ob.Delete(id[:])
}

// DueOutbox returns up to limit entries whose NextAttempt is not after now,
// earliest first (ties by MsgID). A limit of 0 means DefaultDueLimit.
func (tx *Tx) DueOutbox(now time.Time, limit int) ([]OutboxEntry, error) {
	if limit <= 0 {
		limit = DefaultDueLimit
	}
	due, err := tx.bucket(bucketOutboxDue)
	if err != nil {
		return nil, err
	}
	end := timeKey(now)
	var out []OutboxEntry
	c := due.Cursor()
	for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
		if len(k) != 8+16 {
			return nil, fmt.Errorf("%w: outbox index key has %d bytes", ErrCorrupt, len(k))
		}
		if bytes.Compare(k[:8], end) > 0 {
			break
		}
		e, err := tx.GetOutbox([16]byte(k[8:]))
		if err != nil {
			return nil, fmt.Errorf("outbox index points at a missing entry: %w", err)
		}
		out = append(out, e)
	}
	return out, nil
}

// NextOutboxAttempt returns the earliest NextAttempt in the outbox, and
// false if the outbox is empty; the node sleeps until then.
func (tx *Tx) NextOutboxAttempt() (time.Time, bool, error) {
	due, err := tx.bucket(bucketOutboxDue)
	if err != nil {
		return time.Time{}, false, err
	}
	k, _ := due.Cursor().First()
	if k == nil {
		return time.Time{}, false, nil
	}
	if len(k) != 8+16 {
		return time.Time{}, false, fmt.Errorf("%w: outbox index key has %d bytes", ErrCorrupt, len(k))
	}
	e, err := tx.GetOutbox([16]byte(k[8:]))
	if err != nil {
		return time.Time{}, false, err
	}
	return e.NextAttempt, true, nil
}

// PendingCount returns the number of entries in the outbox.
func (tx *Tx) PendingCount() (int, error) {
	ob, err := tx.bucket(bucketOutbox)
	if err != nil {
		return 0, err
	}
	return ob.Stats().KeyN, nil
}

// CompareOutbox orders outbox entries as they were written: by Created,
// then by MsgID.
func CompareOutbox(a, b OutboxEntry) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return bytes.Compare(a.MsgID[:], b.MsgID[:])
}

// OutboxFor returns the outbox entries for contact, oldest first (by
// Created, then MsgID), at most limit (DefaultDueLimit if limit <= 0). It
// scans the outbox: the node calls it once per delivery attempt to a
// contact, so that a contact's messages always leave in the order they
// were written.
func (tx *Tx) OutboxFor(contact [32]byte, limit int) ([]OutboxEntry, error) {
	return tx.outboxWhere(contact, limit, nil)
}

// UndepositedFor is OutboxFor restricted to sealed entries that no mailbox
// holds yet (Mailboxes is 0) and that were created at or before
// createdBy: the next deposits to make, in the order they were written.
func (tx *Tx) UndepositedFor(contact [32]byte, createdBy time.Time, limit int) ([]OutboxEntry, error) {
	return tx.outboxWhere(contact, limit, func(e *OutboxEntry) bool {
		return len(e.Envelope) > 0 && e.Mailboxes == 0 && !e.Created.After(createdBy)
	})
}

func (tx *Tx) outboxWhere(contact [32]byte, limit int, keep func(*OutboxEntry) bool) ([]OutboxEntry, error) {
	if limit <= 0 {
		limit = DefaultDueLimit
	}
	ob, err := tx.bucket(bucketOutbox)
	if err != nil {
		return nil, err
	}
	var out []OutboxEntry
	err = ob.ForEach(func(k, v []byte) error {
		// The contact is the fixed field after the version byte and the
		// message ID: skip other contacts' entries without decoding them.
		const at = 1 + 16
		if len(v) >= at+32 && v[0] == recordV1 && !bytes.Equal(v[at:at+32], contact[:]) {
			return nil
		}
		e, err := unmarshalOutbox(v)
		if err != nil {
			return err
		}
		if keep == nil || keep(&e) {
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, CompareOutbox)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
