package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// maxCheckErrors bounds how many problems Check reports.
const maxCheckErrors = 20

// Check verifies the database: bbolt's own page consistency, that every
// record decodes, and that the indexes agree with the records (each
// conversation's sequence numbers run 1..n without gaps, the global index
// covers every message once, outbox and tag indexes match their records).
// It returns nil or an error joining up to maxCheckErrors problems.
func (db *DB) Check() error {
	return db.View(func(tx *Tx) error {
		var errs []error
		add := func(err error) bool {
			if len(errs) < maxCheckErrors {
				errs = append(errs, err)
			}
			return len(errs) < maxCheckErrors
		}
		// Drain the whole channel: bbolt's checker goroutine reads the
		// transaction until it closes the channel.
		full := false
		for err := range tx.tx.Check() {
			if !full {
				full = !add(fmt.Errorf("bbolt: %w", err))
			}
		}
		if full {
			return errors.Join(errs...)
		}
		if !tx.checkRecords(add) {
			return errors.Join(errs...)
		}
		if err := tx.checkIndexes(add); err != nil {
			add(err)
		}
		if err := tx.checkTokens(add); err != nil && !errors.Is(err, ErrCorrupt) {
			add(err)
		}
		if tx.err != nil {
			add(tx.err)
			tx.err = nil // listed with the rest, not instead of them
		}
		return errors.Join(errs...)
	})
}

func (tx *Tx) checkIndexes(add func(error) bool) error {
	for _, name := range [][]byte{bucketContacts} {
		b, err := tx.bucket(name)
		if err != nil {
			return err
		}
		if err := b.ForEach(func(k, v []byte) error {
			if _, err := unmarshalContact(v); err != nil && !add(err) {
				return err
			}
			return nil
		}); err != nil {
			return err
		}
	}

	// Messages: each conversation 1..n contiguous, counter = n, entries
	// point at messages with matching contact and seq.
	mb, err := tx.messageBuckets()
	if err != nil {
		return err
	}
	var (
		cur    []byte
		expect uint64
		fail   = func(format string, args ...any) bool { return add(fmt.Errorf("check: "+format, args...)) }
	)
	endConv := func() {
		if cur == nil {
			return
		}
		n, err := convCounter(mb.counters, [32]byte(cur))
		if err != nil {
			add(err)
		} else if n != expect {
			fail("conversation %x: counter %d, last seq %d", cur[:6], n, expect)
		}
	}
	convCount := 0
	err = mb.conv.ForEach(func(k, id []byte) error {
		if len(k) != 40 || len(id) != 16 {
			fail("conversation index entry of bad size")
			return nil
		}
		if cur == nil || !bytes.Equal(k[:32], cur) {
			endConv()
			cur, expect = bytes.Clone(k[:32]), 0
		}
		seq := binary.BigEndian.Uint64(k[32:])
		if seq != expect+1 {
			fail("conversation %x: seq %d follows %d", cur[:6], seq, expect)
		}
		expect = seq
		convCount++
		v := mb.msgs.Get(id)
		if v == nil {
			fail("conversation %x seq %d: message %x missing", cur[:6], seq, id)
			return nil
		}
		m, err := unmarshalMessage(v)
		if err != nil {
			add(err)
			return nil
		}
		if !bytes.Equal(m.Contact[:], cur) || m.Seq != seq {
			fail("message %x: index says %x/%d, record says %x/%d", id, cur[:6], seq, m.Contact[:6], m.Seq)
		}
		return nil
	})
	if err != nil {
		return err
	}
	endConv()
	held, err := tx.bucket(bucketHeld)
	if err != nil {
		return err
	}
	heldCount := 0
	err = held.ForEach(func(k, v []byte) error {
		heldCount++
		if len(k) != heldKeySize || len(v) != 8 {
			fail("held entry of bad size")
			return nil
		}
		mv := mb.msgs.Get(k[40:])
		if mv == nil {
			fail("held message %x missing", k[40:])
			return nil
		}
		m, err := unmarshalMessage(mv)
		if err != nil {
			add(err)
			return nil
		}
		if m.Seq != 0 || m.GlobalSeq != 0 || m.Direction != Incoming || m.Contact != [32]byte(k[:32]) ||
			m.PeerSeq != binary.BigEndian.Uint64(k[32:40]) {
			fail("held message %x does not match its entry", k[40:])
		}
		return nil
	})
	if err != nil {
		return err
	}
	msgCount := mb.msgs.Stats().KeyN
	if convCount+heldCount != msgCount {
		fail("%d messages but %d conversation index entries and %d held", msgCount, convCount, heldCount)
	}
	globalCount := 0
	err = mb.global.ForEach(func(k, id []byte) error {
		globalCount++
		if len(k) != 8 || len(id) != 16 {
			fail("global index entry of bad size")
			return nil
		}
		v := mb.msgs.Get(id)
		if v == nil {
			fail("global seq %d: message %x missing", binary.BigEndian.Uint64(k), id)
			return nil
		}
		if m, err := unmarshalMessage(v); err == nil && m.GlobalSeq != binary.BigEndian.Uint64(k) {
			fail("message %x: global seq %d, index %d", id, m.GlobalSeq, binary.BigEndian.Uint64(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if globalCount+heldCount != msgCount {
		fail("%d messages but %d global index entries and %d held", msgCount, globalCount, heldCount)
	}

	// Outbox: one due entry per record, with matching time.
	ob, err := tx.bucket(bucketOutbox)
	if err != nil {
		return err
	}
	due, err := tx.bucket(bucketOutboxDue)
	if err != nil {
		return err
	}
	if err := ob.ForEach(func(k, v []byte) error {
		e, err := unmarshalOutbox(v)
		if err != nil {
			add(err)
			return nil
		}
		if due.Get(dueKey(e.NextAttempt, e.MsgID)) == nil {
			fail("outbox entry %x has no due index entry", k)
		}
		return nil
	}); err != nil {
		return err
	}
	if a, b := ob.Stats().KeyN, due.Stats().KeyN; a != b {
		fail("%d outbox entries but %d due index entries", a, b)
	}

	// Tags: one epoch index entry per tag.
	tags, err := tx.bucket(bucketTags)
	if err != nil {
		return err
	}
	tagIdx, err := tx.bucket(bucketTagEpochs)
	if err != nil {
		return err
	}
	if err := tags.ForEach(func(k, v []byte) error {
		if len(v) != tagValueSize || tagIdx.Get(concat(v[32:], k)) == nil {
			fail("tag %x has no epoch index entry", k[:min(6, len(k))])
		}
		return nil
	}); err != nil {
		return err
	}
	if a, b := tags.Stats().KeyN, tagIdx.Stats().KeyN; a != b {
		fail("%d tags but %d epoch index entries", a, b)
	}
	return nil
}

// quickCheck is the check Open runs every time: bbolt's walk of every
// page (no record is read), and that the indexes count as many entries
// as the records they index. It reads no value, so it costs a small part
// of Check (BenchmarkOpenEncrypted100k); what it finds, Check names
// record by record.
func (db *DB) quickCheck() []string {
	var out []string
	add := func(err error) bool {
		if len(out) < maxCheckErrors {
			out = append(out, err.Error())
		}
		return len(out) < maxCheckErrors
	}
	err := safely(func() error {
		return db.bolt().View(func(btx *bolt.Tx) error {
			full := false
			for err := range btx.Check() {
				if !full {
					full = !add(fmt.Errorf("bbolt: %w", err))
				}
			}
			if full {
				return nil
			}
			count := func(name []byte) int {
				if b := btx.Bucket(name); b != nil {
					return b.Stats().KeyN
				}
				return 0
			}
			msgs, conv, global, held := count(bucketMessages), count(bucketConv), count(bucketGlobal), count(bucketHeld)
			if conv+held != msgs {
				add(fmt.Errorf("check: %d messages but %d conversation index entries and %d held", msgs, conv, held))
			}
			if global+held != msgs {
				add(fmt.Errorf("check: %d messages but %d global index entries and %d held", msgs, global, held))
			}
			if a, b := count(bucketOutbox), count(bucketOutboxDue); a != b {
				add(fmt.Errorf("check: %d outbox entries but %d due index entries", a, b))
			}
			if a, b := count(bucketTags), count(bucketTagEpochs); a != b {
				add(fmt.Errorf("check: %d tags but %d epoch index entries", a, b))
			}
			return nil
		})
	})
	if err != nil {
		add(err)
	}
	return out
}
