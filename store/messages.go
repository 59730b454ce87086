package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Limits on messages and paging.
const (
	MaxBodySize     = 64 << 10 // bytes of a message body
	DefaultPageSize = 100      // ListMessages limit when none is given
	MaxPageSize     = 1000     // largest ListMessages page
	maxMailboxCount = 1 << 16  // bound on Message.StoredAt when decoding
)

// Direction says who wrote a message.
type Direction uint8

// Directions.
const (
	Incoming Direction = 1
	Outgoing Direction = 2
)

func (d Direction) String() string {
	switch d {
	case Incoming:
		return "in"
	case Outgoing:
		return "out"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// MessageState is where a message is on its way. Outgoing messages move
// Queued → Sent (the recipient's node acknowledged it directly) or Stored
// (StoredAt mailboxes acknowledged it) → Delivered (an end-to-end receipt
// came back); Failed is for messages that could not be sent and may be
// queued again. Incoming messages are always Received.
type MessageState uint8

// Message states.
const (
	StateQueued    MessageState = 1
	StateSent      MessageState = 2
	StateStored    MessageState = 3
	StateDelivered MessageState = 4
	StateFailed    MessageState = 5
	StateReceived  MessageState = 6
)

func (s MessageState) String() string {
	switch s {
	case StateQueued:
		return "queued"
	case StateSent:
		return "sent"
	case StateStored:
		return "stored"
	case StateDelivered:
		return "delivered"
	case StateFailed:
		return "failed"
	case StateReceived:
		return "received"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Via says which path carried a message.
type Via uint8

// Paths.
const (
	ViaUnknown Via = 0
	ViaDirect  Via = 1
	ViaMailbox Via = 2
	ViaRelay   Via = 3 // a direct stream through a relay
)

// Stream reports whether v is a stream from the sending device itself,
// whose Noise-authenticated remote peer is the sender (direct or relayed).
func (v Via) Stream() bool { return v == ViaDirect || v == ViaRelay }

func (v Via) String() string {
	switch v {
	case ViaUnknown:
		return "unknown"
	case ViaDirect:
		return "direct"
	case ViaMailbox:
		return "mailbox"
	case ViaRelay:
		return "relay"
	}
	return fmt.Sprintf("via(%d)", uint8(v))
}

// Message is one message of a conversation.
type Message struct {
	ID         [16]byte // chosen by the sender, travels inside the encryption
	Contact    [32]byte // the other party's account key
	Direction  Direction
	Type       uint8 // content type (protocol's ContentType), kept as is
	Body       []byte
	SentAt     time.Time // sender's clock
	ReceivedAt time.Time // local clock; for outgoing messages, when it was queued
	State      MessageState
	Via        Via
	StoredAt   int // number of mailboxes that acknowledged the message
	// Seq is the message's position in its conversation, 1, 2, 3…,
	// assigned by AppendMessage.
	Seq uint64
	// GlobalSeq orders messages across all conversations, assigned by
	// AppendMessage.
	GlobalSeq uint64
	// PeerSeq is the conversation sequence that travels inside the
	// encryption: for an outgoing message, the number AppendMessage gave
	// it (1, 2, 3… per contact); for an incoming one, the sender's. Zero
	// when unknown.
	PeerSeq uint64
	// SessionReset marks the first message shown from a contact after
	// its device started a new session in place of one that worked (a
	// restored backup, a reinstall): the same account key, so no key
	// change, but the conversation's earlier ratchet is gone there.
	SessionReset bool
	// Damaged marks, in what ListMessages returns, a message whose record
	// failed its check (AEAD or checksum): only the fields its index
	// entry gives are set (ID, and Contact and Seq or GlobalSeq), and
	// nothing of its content. Never stored.
	Damaged bool
}

// Message flags, a trailing byte present only when one is set (records
// written before flags existed end without it).
const msgFlagSessionReset = 1

func (m *Message) marshal() ([]byte, error) {
	if len(m.Body) > MaxBodySize {
		return nil, tooLarge("message body", len(m.Body), MaxBodySize)
	}
	if m.StoredAt < 0 || m.StoredAt > maxMailboxCount {
		return nil, fmt.Errorf("store: mailbox count %d out of range", m.StoredAt)
	}
	e := newEncoder(96 + len(m.Body))
	e.fixed(m.ID[:])
	e.fixed(m.Contact[:])
	e.u8(uint8(m.Direction))
	e.u8(m.Type)
	e.bytes(m.Body)
	e.time(m.SentAt)
	e.time(m.ReceivedAt)
	e.u8(uint8(m.State))
	e.u8(uint8(m.Via))
	e.uvarint(uint64(m.StoredAt))
	e.uvarint(m.Seq)
	e.uvarint(m.GlobalSeq)
	e.uvarint(m.PeerSeq)
	if m.SessionReset {
		e.u8(msgFlagSessionReset)
	}
	return e.b, nil
}

func unmarshalMessage(b []byte) (Message, error) {
	var m Message
	d := newDecoder("message", b)
	d.fixed(m.ID[:])
	d.fixed(m.Contact[:])
	m.Direction = Direction(d.u8())
	m.Type = d.u8()
	m.Body = d.bytes(MaxBodySize)
	m.SentAt = d.time()
	m.ReceivedAt = d.time()
	m.State = MessageState(d.u8())
	m.Via = Via(d.u8())
	m.StoredAt = d.int(maxMailboxCount)
	m.Seq = d.uvarint()
	m.GlobalSeq = d.uvarint()
	m.PeerSeq = d.uvarint()
	if d.err == nil && len(d.b) > 0 {
		switch f := d.u8(); f {
		case msgFlagSessionReset:
			m.SessionReset = true
		default:
			d.fail("unknown message flags %#x", f)
		}
	}
	if err := d.finish(); err != nil {
		return Message{}, err
	}
	if m.Direction != Incoming && m.Direction != Outgoing {
		return Message{}, fmt.Errorf("%w: message: bad direction %d", ErrCorrupt, m.Direction)
	}
	if m.State < StateQueued || m.State > StateReceived {
		return Message{}, fmt.Errorf("%w: message: bad state %d", ErrCorrupt, m.State)
	}
	return m, nil
}

func convKey(account [32]byte, seq uint64) []byte { return concat(account[:], be64(seq)) }

// AppendMessage stores a new message at the end of its conversation and
// returns it with Seq and GlobalSeq assigned. An outgoing message also
// gets the next PeerSeq of the conversation unless the caller set one.
//
// The contact must exist (ErrUnknownContact). An incoming message whose ID
// this contact already sent fails with an error wrapping ErrDuplicate, and
// the ID is marked seen in the same transaction, so storing a received
// message and deduplicating it is one atomic step. Any message whose ID is
// already stored also fails with ErrDuplicate. An incoming message gets
// state Received; an outgoing one Queued unless the caller set a state.
// Received messages that carry the sender's order go through
// ReceiveMessage instead.
func (tx *Tx) AppendMessage(m Message) (Message, error) {
	m, err := tx.admitMessage(m)
	if err != nil {
		return Message{}, err
	}
	return tx.showMessage(m)
}

// admitMessage checks a new message, marks an incoming one seen and gives
// an outgoing one its PeerSeq. It writes nothing else.
func (tx *Tx) admitMessage(m Message) (Message, error) {
	msgs, err := tx.wbucket(bucketMessages)
	if err != nil {
		return Message{}, err
	}
	if err := tx.hasContact(m.Contact); err != nil {
		return Message{}, err
	}
	switch m.Direction {
	case Incoming:
		m.State = StateReceived
		// Marked seen here, in the transaction that stores the message.
		already, err := tx.markSeen(m.Contact, m.ID, seenUntil(m))
		if err != nil {
			return Message{}, err
		}
		if already {
			return Message{}, fmt.Errorf("%w: message %x was already received", ErrDuplicate, m.ID)
		}
	case Outgoing:
		if m.State == 0 {
			m.State = StateQueued
		}
		if m.State == StateReceived || m.State > StateReceived {
			return Message{}, fmt.Errorf("store: invalid state %v for an outgoing message", m.State)
		}
	default:
		return Message{}, fmt.Errorf("store: invalid message direction %d", m.Direction)
	}
	if msgs.Get(m.ID[:]) != nil {
		return Message{}, fmt.Errorf("%w: message ID %x is already stored", ErrDuplicate, m.ID)
	}
	if m.Direction == Outgoing && m.PeerSeq == 0 {
		if m.PeerSeq, err = tx.nextOutSeq(m.Contact); err != nil {
			return Message{}, err
		}
	}
	return m, nil
}

// showMessage puts an admitted message at the end of its conversation:
// it assigns Seq and GlobalSeq, indexes the message and writes it.
func (tx *Tx) showMessage(m Message) (Message, error) {
	if err := tx.writable(); err != nil {
		return Message{}, err
	}
	mb, err := tx.messageBuckets()
	if err != nil {
		return Message{}, err
	}
	last, err := convCounter(mb.counters, m.Contact)
	if err != nil {
		return Message{}, err
	}
	m.Seq = last + 1
	if m.GlobalSeq, err = mb.global.NextSequence(); err != nil {
		return Message{}, err
	}
	v, err := m.marshal()
	if err != nil {
		return Message{}, err
	}
	if err := mb.counters.Put(m.Contact[:], be64(m.Seq)); err != nil {
		return Message{}, err
	}
	if err := mb.conv.Put(convKey(m.Contact, m.Seq), m.ID[:]); err != nil {
		return Message{}, err
	}
	if err := mb.global.Put(be64(m.GlobalSeq), m.ID[:]); err != nil {
		return Message{}, err
	}
	if err := mb.msgs.Put(m.ID[:], v); err != nil {
		return Message{}, err
	}
	return m, nil
}

// messageBuckets are the messages and the indexes that put them in order;
// whatever writes or checks one of them needs the others too.
type messageBuckets struct {
	msgs     *recordBucket // bucketMessages: id -> Message
	conv     *recordBucket // bucketConv: account || seq -> id
	counters *recordBucket // bucketConvSeq: account -> last seq
	global   *recordBucket // bucketGlobal: global seq -> id
}

// messageBuckets looks up the messages and their indexes. It does not check
// that tx is writable: writers call tx.writable first.
func (tx *Tx) messageBuckets() (messageBuckets, error) {
	var mb messageBuckets
	var err error
	if mb.msgs, err = tx.bucket(bucketMessages); err != nil {
		return messageBuckets{}, err
	}
	if mb.conv, err = tx.bucket(bucketConv); err != nil {
		return messageBuckets{}, err
	}
	if mb.counters, err = tx.bucket(bucketConvSeq); err != nil {
		return messageBuckets{}, err
	}
	if mb.global, err = tx.bucket(bucketGlobal); err != nil {
		return messageBuckets{}, err
	}
	return mb, nil
}

func convCounter(counters *recordBucket, account [32]byte) (uint64, error) {
	v := counters.Get(account[:])
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: conversation counter has %d bytes", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// GetMessage returns the message with the given ID, or an error wrapping
// ErrNotFound.
func (tx *Tx) GetMessage(id [16]byte) (Message, error) {
	msgs, err := tx.bucket(bucketMessages)
	if err != nil {
		return Message{}, err
	}
	v := msgs.Get(id[:])
	if v == nil {
		return Message{}, fmt.Errorf("%w: message %x", ErrNotFound, id)
	}
	return unmarshalMessage(v)
}

// MessageState returns the state of the message with the given ID without
// decoding the rest of it, or an error wrapping ErrNotFound.
func (tx *Tx) MessageState(id [16]byte) (MessageState, error) {
	msgs, err := tx.bucket(bucketMessages)
	if err != nil {
		return 0, err
	}
	v := msgs.Get(id[:])
	if v == nil {
		return 0, fmt.Errorf("%w: message %x", ErrNotFound, id)
	}
	d := newDecoder("message", v)
	var ids [16 + 32]byte
	d.fixed(ids[:])
	d.u8()
	d.u8()
	d.skipBytes(MaxBodySize)
	d.time()
	d.time()
	st := MessageState(d.u8())
	if d.err != nil {
		return 0, d.err
	}
	if st < StateQueued || st > StateReceived {
		return 0, fmt.Errorf("%w: message: bad state %d", ErrCorrupt, st)
	}
	return st, nil
}

// StateOption adds detail to a state change.
type StateOption func(*Message)

// WithStoredAt records how many mailboxes acknowledged the message.
func WithStoredAt(n int) StateOption { return func(m *Message) { m.StoredAt = n } }

// WithVia records which path carried the message.
func WithVia(v Via) StateOption { return func(m *Message) { m.Via = v } }

// allowedTransition reports whether an outgoing message may move from one
// state to another. States only move forward; Delivered is final; a Failed
// message may be queued again.
func allowedTransition(from, to MessageState) bool {
	switch to {
	case StateQueued:
		return from == StateFailed
	case StateStored:
		return from == StateQueued || from == StateFailed || from == StateStored
	case StateSent:
		return from == StateQueued || from == StateStored || from == StateFailed
	case StateDelivered:
		return from != StateDelivered
	case StateFailed:
		return from == StateQueued || from == StateStored
	}
	return false
}

// SetMessageState moves an outgoing message to state to and returns the
// message and whether anything changed. A transition that would go
// backwards (for example Stored after Delivered, which happens when a
// mailbox ack arrives after the receipt) changes nothing and is not an
// error. Stored may be set again to raise the mailbox count.
func (tx *Tx) SetMessageState(id [16]byte, to MessageState, opts ...StateOption) (Message, bool, error) {
	msgs, err := tx.wbucket(bucketMessages)
	if err != nil {
		return Message{}, false, err
	}
	m, err := tx.GetMessage(id)
	if err != nil {
		return Message{}, false, err
	}
	return tx.moveState(msgs, m, to, opts...)
}

// ConfirmDelivery applies a delivery receipt from contact for message id:
// contact's outgoing message becomes delivered and its outbox entry goes.
// It reports the message and whether its state changed; a message that is
// not an outgoing one to contact (or is gone) changes nothing and is no
// error: a receipt names messages, and a peer may name any.
func (tx *Tx) ConfirmDelivery(contact [32]byte, id [16]byte) (Message, bool, error) {
	msgs, err := tx.wbucket(bucketMessages)
	if err != nil {
		return Message{}, false, err
	}
	m, err := tx.GetMessage(id)
	if errors.Is(err, ErrNotFound) {
		return Message{}, false, nil
	}
	if err != nil {
		return Message{}, false, err
	}
	if m.Direction != Outgoing || m.Contact != contact {
		return Message{}, false, nil
	}
	next, changed, err := tx.moveState(msgs, m, StateDelivered)
	if err != nil {
		return Message{}, false, err
	}
	if _, err := tx.DeleteOutbox(id); err != nil {
		return Message{}, false, err
	}
	return next, changed, nil
}

// moveState is SetMessageState on the message m just read.
func (tx *Tx) moveState(msgs *recordBucket, m Message, to MessageState, opts ...StateOption) (Message, bool, error) {
	id := m.ID
	if m.Direction != Outgoing {
		return m, false, fmt.Errorf("store: message %x is incoming; its state cannot change", id)
	}
	if to < StateQueued || to > StateFailed {
		return m, false, fmt.Errorf("store: invalid state %v for an outgoing message", to)
	}
	if !allowedTransition(m.State, to) {
		return m, false, nil
	}
	next := m
	next.State = to
	for _, opt := range opts {
		opt(&next)
	}
	if to == StateStored && m.State == StateStored && next.StoredAt <= m.StoredAt {
		return m, false, nil // keep the larger count
	}
	v, err := next.marshal()
	if err != nil {
		return m, false, err
	}
	if err := msgs.Put(id[:], v); err != nil {
		return m, false, err
	}
	return next, true, nil
}

// ListMessages returns up to limit messages in order. With a contact, it
// pages through that conversation by Seq, starting after afterSeq; without
// (nil), it pages through all conversations by GlobalSeq, starting after
// afterSeq. A limit of 0 means DefaultPageSize; larger than MaxPageSize
// means MaxPageSize. Pass the last message's Seq (or GlobalSeq) to get the
// next page.
func (tx *Tx) ListMessages(contact *[32]byte, afterSeq uint64, limit int) ([]Message, error) {
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	var (
		idx    *recordBucket
		err    error
		prefix []byte
		start  []byte
	)
	if contact != nil {
		idx, err = tx.bucket(bucketConv)
		prefix = contact[:]
		start = convKey(*contact, afterSeq+1)
	} else {
		idx, err = tx.bucket(bucketGlobal)
		start = be64(afterSeq + 1)
	}
	if err != nil {
		return nil, err
	}
	if afterSeq == ^uint64(0) {
		return nil, nil
	}
	var out []Message
	c := idx.Cursor()
	for k, id := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, id = c.Next() {
		if len(id) != 16 {
			return nil, fmt.Errorf("%w: message index entry has %d bytes", ErrCorrupt, len(id))
		}
		m, err := tx.listedMessage(k, [16]byte(id), contact != nil)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// listedMessage reads the message id that the index entry k (of a
// conversation when conv, else the global index) points at. Damage is
// confined to the record: a message that fails its check comes back
// Damaged, with what the index entry says, and the listing goes on.
func (tx *Tx) listedMessage(k []byte, id [16]byte, conv bool) (Message, error) {
	msgs, err := tx.bucket(bucketMessages)
	if err != nil {
		return Message{}, err
	}
	v, err := msgs.getConfined(id[:])
	if err == nil && v == nil {
		return Message{}, fmt.Errorf("message index points at a missing message: %w: message %x", ErrNotFound, id)
	}
	var m Message
	if err == nil {
		m, err = unmarshalMessage(v)
	}
	if err == nil || !errors.Is(err, ErrCorrupt) {
		return m, err
	}
	tx.confine(bucketMessages, id[:], err)
	// What the record held about its place, the indexes say too: the
	// other index maps the other way, so it is walked (damage is rare).
	m = Message{ID: id, Damaged: true}
	convKey, globalKey := k, k
	if conv {
		globalKey, err = tx.indexKeyOf(bucketGlobal, id)
	} else {
		convKey, err = tx.indexKeyOf(bucketConv, id)
	}
	if err != nil {
		return Message{}, err
	}
	if len(convKey) == 40 {
		m.Contact, m.Seq = [32]byte(convKey[:32]), binary.BigEndian.Uint64(convKey[32:])
	}
	if len(globalKey) == 8 {
		m.GlobalSeq = binary.BigEndian.Uint64(globalKey)
	}
	return m, nil
}

// indexKeyOf returns the key of the entry of index that points at id, or
// nil.
func (tx *Tx) indexKeyOf(index []byte, id [16]byte) ([]byte, error) {
	b, err := tx.bucket(index)
	if err != nil {
		return nil, err
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if bytes.Equal(v, id[:]) {
			return bytes.Clone(k), nil
		}
	}
	return nil, nil
}

func seenKey(contact [32]byte, id [16]byte) []byte { return concat(contact[:], id[:]) }

// MarkSeen records that contact sent a message with ID id and reports
// whether it had been recorded before. AppendMessage does this for
// incoming messages; call it directly for messages that are not stored,
// such as receipts.
func (tx *Tx) MarkSeen(contact [32]byte, id [16]byte) (already bool, err error) {
	return tx.markSeen(contact, id, nil)
}

// markSeen is MarkSeen with the mark's expiry (timeKey, see PruneSeen);
// nil writes a mark without one.
func (tx *Tx) markSeen(contact [32]byte, id [16]byte, until []byte) (already bool, err error) {
	seen, err := tx.wbucket(bucketSeen)
	if err != nil {
		return false, err
	}
	k := seenKey(contact, id)
	if seen.Get(k) != nil {
		return true, nil
	}
	if until == nil {
		until = present
	}
	return false, seen.Put(k, until)
}

// Seen reports whether contact's message ID was recorded by MarkSeen.
func (tx *Tx) Seen(contact [32]byte, id [16]byte) (bool, error) {
	seen, err := tx.bucket(bucketSeen)
	if err != nil {
		return false, err
	}
	return seen.Get(seenKey(contact, id)) != nil, nil
}

// moveConversation re-keys the conversation, counter and dedup marks of
// account from to account to, keeping sequence numbers.
func (tx *Tx) moveConversation(from, to [32]byte) error {
	if err := tx.writable(); err != nil {
		return err
	}
	mb, err := tx.messageBuckets()
	if err != nil {
		return err
	}
	seen, err := tx.bucket(bucketSeen)
	if err != nil {
		return err
	}
	if mb.counters.Get(to[:]) != nil {
		return fmt.Errorf("%w: the new key already has a conversation", ErrDuplicate)
	}
	for _, b := range []*recordBucket{mb.conv, seen} {
		var keys, vals [][]byte
		c := b.Cursor()
		for k, v := c.Seek(from[:]); k != nil && bytes.HasPrefix(k, from[:]); k, v = c.Next() {
			keys = append(keys, bytes.Clone(k))
			vals = append(vals, bytes.Clone(v))
		}
		for i, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
			if err := b.Put(concat(to[:], k[32:]), vals[i]); err != nil {
				return err
			}
			if b != mb.conv {
				continue
			}
			if len(vals[i]) != 16 {
				return fmt.Errorf("%w: message index entry has %d bytes", ErrCorrupt, len(vals[i]))
			}
			m, err := tx.GetMessage([16]byte(vals[i]))
			if err != nil {
				return err
			}
			m.Contact = to
			v, err := m.marshal()
			if err != nil {
				return err
			}
			if err := mb.msgs.Put(m.ID[:], v); err != nil {
				return err
			}
		}
	}
	if v := mb.counters.Get(from[:]); v != nil {
		if err := mb.counters.Put(to[:], bytes.Clone(v)); err != nil {
			return err
		}
		return mb.counters.Delete(from[:])
	}
	return nil
}

// DeleteConversation removes every trace of a conversation with account:
// its messages and their indexes, its dedup marks, its order state
// (counters and held messages) and its outbox entries. The contact itself
// is DeleteContact's. It returns how many messages it deleted.
func (tx *Tx) DeleteConversation(account [32]byte) (int, error) {
	if err := tx.writable(); err != nil {
		return 0, err
	}
	mb, err := tx.messageBuckets()
	if err != nil {
		return 0, err
	}
	deleted := 0
	var convKeys [][]byte
	c := mb.conv.Cursor()
	for k, id := c.Seek(account[:]); k != nil && bytes.HasPrefix(k, account[:]); k, id = c.Next() {
		if len(id) != 16 {
			return deleted, fmt.Errorf("%w: message index entry has %d bytes", ErrCorrupt, len(id))
		}
		m, err := tx.GetMessage([16]byte(id))
		if err != nil {
			return deleted, fmt.Errorf("message index points at a missing message: %w", err)
		}
		if err := mb.global.Delete(be64(m.GlobalSeq)); err != nil {
			return deleted, err
		}
		if err := mb.msgs.Delete(m.ID[:]); err != nil {
			return deleted, err
		}
		convKeys = append(convKeys, bytes.Clone(k))
		deleted++
	}
	for _, k := range convKeys {
		if err := mb.conv.Delete(k); err != nil {
			return deleted, err
		}
	}
	for _, name := range [][]byte{bucketSeen, bucketHeld} {
		b, err := tx.bucket(name)
		if err != nil {
			return deleted, err
		}
		var ks [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(account[:]); k != nil && bytes.HasPrefix(k, account[:]); k, _ = c.Next() {
			ks = append(ks, bytes.Clone(k))
		}
		for _, k := range ks {
			if err := b.Delete(k); err != nil {
				return deleted, err
			}
			// A held message is in no conversation index yet: its record
			// goes with its held entry.
			if string(name) == string(bucketHeld) && len(k) == heldKeySize {
				if err := mb.msgs.Delete(k[heldKeySize-16:]); err != nil {
					return deleted, err
				}
				deleted++
			}
		}
	}
	for _, name := range [][]byte{bucketConvSeq, bucketOutSeq, bucketInSeq} {
		b, err := tx.bucket(name)
		if err != nil {
			return deleted, err
		}
		if err := b.Delete(account[:]); err != nil {
			return deleted, err
		}
	}
	for {
		es, err := tx.OutboxFor(account, DefaultDueLimit)
		if err != nil {
			return deleted, err
		}
		for _, e := range es {
			if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
				return deleted, err
			}
		}
		if len(es) < DefaultDueLimit {
			return deleted, nil
		}
	}
}

// ConvCursor returns the conversation sequence number after which the
// conversation's messages have a global sequence number above global.
// Both numbers grow together within a conversation (AppendMessage assigns
// them in one step) and conversation numbers run 1, 2, 3…, so a binary
// search over the conversation finds it.
func (tx *Tx) ConvCursor(acct [32]byte, global uint64) (uint64, error) {
	if global == 0 {
		return 0, nil
	}
	last, err := tx.LastSeq(&acct)
	if err != nil {
		return 0, err
	}
	// Invariant: messages 1..lo have GlobalSeq <= global, messages
	// hi+1..last have GlobalSeq > global.
	lo, hi := uint64(0), last
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		page, err := tx.ListMessages(&acct, mid-1, 1)
		if err != nil {
			return 0, err
		}
		if len(page) == 0 || page[0].Seq != mid {
			return 0, fmt.Errorf("%w: conversation has no message %d", ErrCorrupt, mid)
		}
		if page[0].GlobalSeq <= global {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// LastSeq returns the Seq of a conversation's latest message (0 if it has
// none), or with a nil contact the latest GlobalSeq. To show the newest n
// messages, list from LastSeq-n.
func (tx *Tx) LastSeq(contact *[32]byte) (uint64, error) {
	if contact == nil {
		global, err := tx.bucket(bucketGlobal)
		if err != nil {
			return 0, err
		}
		k, _ := global.Cursor().Last()
		if k == nil {
			return 0, nil
		}
		if len(k) != 8 {
			return 0, fmt.Errorf("%w: global index key has %d bytes", ErrCorrupt, len(k))
		}
		return binary.BigEndian.Uint64(k), nil
	}
	counters, err := tx.bucket(bucketConvSeq)
	if err != nil {
		return 0, err
	}
	return convCounter(counters, *contact)
}
