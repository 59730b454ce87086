package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Conversation order across delivery paths.
//
// A sender numbers the messages it writes to one contact 1, 2, 3… (the
// PeerSeq, which travels inside the encryption). Envelopes arrive in any
// order — direct, live gossip and several mailboxes race — so a received
// message whose predecessor has not arrived yet is held: stored, marked
// seen, acknowledgeable, but not yet in the conversation. It is shown
// when the gap fills (ReceiveMessage) or once it has waited long enough
// (ReleaseHeld); a message that arrives after its successors were shown is
// shown at once, at the end.

var (
	bucketOutSeq = []byte("out_seq") // account(32) -> last PeerSeq given to an outgoing message(8)
	bucketInSeq  = []byte("in_seq")  // account(32) -> highest PeerSeq shown with nothing missing below(8)
	bucketHeld   = []byte("held")    // account(32) || PeerSeq(8) || id(16) -> received at (timeKey, 8)
)

// createOrderBuckets is the schema 3 migration: it creates the order
// buckets and appends a zero PeerSeq (one varint byte) to every message
// record written before.
func createOrderBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketOutSeq, bucketInSeq, bucketHeld} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	msgs := tx.Bucket(bucketMessages)
	if msgs == nil {
		return fmt.Errorf("%w: messages bucket missing", ErrCorrupt)
	}
	var ks, vs [][]byte
	if err := msgs.ForEach(func(k, v []byte) error {
		ks = append(ks, bytes.Clone(k))
		vs = append(vs, append(bytes.Clone(v), 0))
		return nil
	}); err != nil {
		return err
	}
	for i, k := range ks {
		if err := msgs.Put(k, vs[i]); err != nil {
			return err
		}
	}
	return nil
}

const heldKeySize = 32 + 8 + 16

func heldKey(account [32]byte, peerSeq uint64, id [16]byte) []byte {
	return concat(account[:], be64(peerSeq), id[:])
}

// nextOutSeq gives the next PeerSeq of the conversation with account.
func (tx *Tx) nextOutSeq(account [32]byte) (uint64, error) {
	b, err := tx.bucket(bucketOutSeq)
	if err != nil {
		return 0, err
	}
	last, err := convCounter(b, account)
	if err != nil {
		return 0, err
	}
	if last == ^uint64(0) {
		return 0, fmt.Errorf("%w: the conversation's sequence is exhausted", ErrCorrupt)
	}
	return last + 1, b.Put(account[:], be64(last+1))
}

// ReceiveMessage stores an incoming message in its sender's order and
// returns the messages that became visible, in conversation order: the
// message itself followed by any held ones it unblocks, or nothing when
// the message is held because an earlier one is missing. A message without
// a PeerSeq, or one whose PeerSeq was already passed, is shown at once.
// Duplicates fail as with AppendMessage.
func (tx *Tx) ReceiveMessage(m Message) ([]Message, error) {
	if m.Direction != Incoming {
		return nil, fmt.Errorf("store: ReceiveMessage takes incoming messages, not %v", m.Direction)
	}
	m, err := tx.admitMessage(m)
	if err != nil {
		return nil, err
	}
	inSeq, err := tx.bucket(bucketInSeq)
	if err != nil {
		return nil, err
	}
	shown, err := convCounter(inSeq, m.Contact)
	if err != nil {
		return nil, err
	}
	if m.PeerSeq == 0 || m.PeerSeq <= shown {
		s, err := tx.showMessage(m)
		if err != nil {
			return nil, err
		}
		return []Message{s}, nil
	}
	if m.PeerSeq-1 > shown {
		return nil, tx.hold(m)
	}
	s, err := tx.showMessage(m)
	if err != nil {
		return nil, err
	}
	if err := inSeq.Put(m.Contact[:], be64(m.PeerSeq)); err != nil {
		return nil, err
	}
	rest, err := tx.releaseReady(m.Contact)
	if err != nil {
		return nil, err
	}
	return append([]Message{s}, rest...), nil
}

// hold writes an admitted message that waits for its predecessors.
func (tx *Tx) hold(m Message) error {
	msgs, err := tx.wbucket(bucketMessages)
	if err != nil {
		return err
	}
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return err
	}
	m.Seq, m.GlobalSeq = 0, 0
	v, err := m.marshal()
	if err != nil {
		return err
	}
	if err := held.Put(heldKey(m.Contact, m.PeerSeq, m.ID), timeKey(m.ReceivedAt)); err != nil {
		return err
	}
	return msgs.Put(m.ID[:], v)
}

// releaseReady shows the held messages of account that no longer wait for
// anything: while the lowest held PeerSeq is at most one past the highest
// shown, it is shown and the highest shown advances.
func (tx *Tx) releaseReady(account [32]byte) ([]Message, error) {
	inSeq, err := tx.bucket(bucketInSeq)
	if err != nil {
		return nil, err
	}
	shown, err := convCounter(inSeq, account)
	if err != nil {
		return nil, err
	}
	var out []Message
	for {
		k, _, err := tx.firstHeld(account)
		if err != nil || k == nil {
			return out, err
		}
		peerSeq := binary.BigEndian.Uint64(k[32:40])
		if peerSeq-1 > shown && shown != ^uint64(0) {
			return out, nil
		}
		m, err := tx.unhold(k)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
		if peerSeq > shown {
			shown = peerSeq
			if err := inSeq.Put(account[:], be64(shown)); err != nil {
				return nil, err
			}
		}
	}
}

// firstHeld returns the held entry of account with the lowest PeerSeq, or
// a nil key when none is held.
func (tx *Tx) firstHeld(account [32]byte) (key []byte, heldAt time.Time, err error) {
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return nil, time.Time{}, err
	}
	k, v := held.Cursor().Seek(account[:])
	if k == nil || !bytes.HasPrefix(k, account[:]) {
		return nil, time.Time{}, nil
	}
	if len(k) != heldKeySize || len(v) != 8 {
		return nil, time.Time{}, fmt.Errorf("%w: held message entry of bad size", ErrCorrupt)
	}
	return bytes.Clone(k), fromTimeKey(v), nil
}

// unhold removes a held entry and shows its message.
func (tx *Tx) unhold(key []byte) (Message, error) {
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return Message{}, err
	}
	m, err := tx.GetMessage([16]byte(key[40:]))
	if err != nil {
		return Message{}, fmt.Errorf("held entry points at a missing message: %w", err)
	}
	if err := held.Delete(key); err != nil {
		return Message{}, err
	}
	return tx.showMessage(m)
}

// heldEntries returns the held entries of account in PeerSeq order, with
// when each message arrived.
func (tx *Tx) heldEntries(account [32]byte) ([][]byte, []time.Time, error) {
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return nil, nil, err
	}
	var (
		ks  [][]byte
		ats []time.Time
	)
	c := held.Cursor()
	for k, v := c.Seek(account[:]); k != nil && bytes.HasPrefix(k, account[:]); k, v = c.Next() {
		if len(k) != heldKeySize || len(v) != 8 {
			return nil, nil, fmt.Errorf("%w: held message entry of bad size", ErrCorrupt)
		}
		ks = append(ks, bytes.Clone(k))
		ats = append(ats, fromTimeKey(v))
	}
	return ks, ats, nil
}

// heldContacts lists the accounts that have held messages, each with the
// arrival time of its longest-held message.
func (tx *Tx) heldContacts() ([][32]byte, []time.Time, error) {
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return nil, nil, err
	}
	var (
		accts [][32]byte
		ats   []time.Time
	)
	err = held.ForEach(func(k, v []byte) error {
		if len(k) != heldKeySize || len(v) != 8 {
			return fmt.Errorf("%w: held message entry of bad size", ErrCorrupt)
		}
		at := fromTimeKey(v)
		if n := len(accts); n > 0 && accts[n-1] == [32]byte(k[:32]) {
			if at.Before(ats[n-1]) {
				ats[n-1] = at
			}
			return nil
		}
		accts = append(accts, [32]byte(k[:32]))
		ats = append(ats, at)
		return nil
	})
	return accts, ats, err
}

// ReleaseHeld stops waiting for missing messages: in every conversation
// with a held message that arrived at or before cutoff, the gaps below
// that message are given up on, and it is shown together with every held
// message numbered below it and whatever follows it without a gap. It
// returns the messages shown, in order. A missing message that arrives
// later is shown when it arrives.
func (tx *Tx) ReleaseHeld(cutoff time.Time) ([]Message, error) {
	accts, oldest, err := tx.heldContacts()
	if err != nil {
		return nil, err
	}
	inSeq, err := tx.bucket(bucketInSeq)
	if err != nil {
		return nil, err
	}
	var out []Message
	for i, acct := range accts {
		if oldest[i].After(cutoff) {
			continue
		}
		ks, ats, err := tx.heldEntries(acct)
		if err != nil {
			return nil, err
		}
		last := -1
		for j, at := range ats {
			if !at.After(cutoff) {
				last = j
			}
		}
		shown, err := convCounter(inSeq, acct)
		if err != nil {
			return nil, err
		}
		for _, k := range ks[:last+1] {
			m, err := tx.unhold(k)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
			shown = max(shown, binary.BigEndian.Uint64(k[32:40]))
		}
		if err := inSeq.Put(acct[:], be64(shown)); err != nil {
			return nil, err
		}
		rest, err := tx.releaseReady(acct)
		if err != nil {
			return nil, err
		}
		out = append(out, rest...)
	}
	return out, nil
}

// NextRelease reports when the longest-held message arrived, and false
// when nothing is held. ReleaseHeld with that time as the cutoff shows at
// least one message.
func (tx *Tx) NextRelease() (time.Time, bool, error) {
	_, ats, err := tx.heldContacts()
	if err != nil || len(ats) == 0 {
		return time.Time{}, false, err
	}
	first := ats[0]
	for _, at := range ats[1:] {
		if at.Before(first) {
			first = at
		}
	}
	return first, true, nil
}

// HeldCount returns how many received messages wait for a missing
// predecessor.
func (tx *Tx) HeldCount() (int, error) {
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return 0, err
	}
	return held.Stats().KeyN, nil
}

// forgetOrder releases every held message of account and drops its
// conversation counters, for when the account's identity is replaced: the
// new identity numbers its messages from 1 again.
func (tx *Tx) forgetOrder(account [32]byte) error {
	for {
		k, _, err := tx.firstHeld(account)
		if err != nil {
			return err
		}
		if k == nil {
			break
		}
		if _, err := tx.unhold(k); err != nil {
			return err
		}
	}
	for _, name := range [][]byte{bucketInSeq, bucketOutSeq} {
		b, err := tx.bucket(name)
		if err != nil {
			return err
		}
		if err := b.Delete(account[:]); err != nil {
			return err
		}
	}
	return nil
}
