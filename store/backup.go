package store

import (
	"bytes"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

// Snapshot writes a consistent copy of the store to path, a new file: every
// live record copied from one read transaction into a fresh bbolt file
// (no freed pages, so no deleted record goes along). Records stay sealed
// and the wrapped data key goes with them, so the copy opens only with the
// passphrase; only an encrypted store can be copied (ErrNotEncrypted).
// Writers are not held up beyond bbolt's usual read transaction.
func (db *DB) Snapshot(path string) error {
	if db.s == nil {
		return ErrNotEncrypted
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
	if err != nil {
		return fmt.Errorf("store: snapshot: %w", err)
	}
	f.Close()
	dst, err := bolt.Open(path, FileMode, &bolt.Options{Timeout: db.o.lockTimeout})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("store: snapshot: %w", err)
	}
	err = db.View(func(tx *Tx) error { return copyStore(tx.tx, dst, nil, nil) })
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("store: snapshot: %w", err)
	}
	return nil
}

// ForgetSessions drops what a restored store must not reuse: ratchet
// sessions (current and alternate) and their mailbox tags, and the sealed
// envelopes of the outbox. Messages waiting in the outbox stay there,
// unsealed, to be sealed again on a fresh session; receipts go (their
// envelopes cannot be sealed again). It returns how many sessions it
// dropped.
func (tx *Tx) ForgetSessions() (int, error) {
	sessions, err := tx.wbucket(bucketSessions)
	if err != nil {
		return 0, err
	}
	var accts [][]byte
	if err := sessions.ForEach(func(k, _ []byte) error {
		accts = append(accts, bytes.Clone(k))
		return nil
	}); err != nil {
		return 0, err
	}
	for _, a := range accts {
		if err := sessions.Delete(a); err != nil {
			return 0, err
		}
	}
	if _, err := tx.PruneTags(^uint64(0)); err != nil {
		return 0, err
	}
	for _, prefix := range []string{"alt/", "alt-at/"} {
		names, err := tx.SettingNames(prefix)
		if err != nil {
			return 0, err
		}
		for _, n := range names {
			if err := tx.DeleteSetting(n); err != nil {
				return 0, err
			}
		}
	}
	ob, err := tx.bucket(bucketOutbox)
	if err != nil {
		return 0, err
	}
	var entries []OutboxEntry
	if err := ob.ForEach(func(_, v []byte) error {
		e, err := unmarshalOutbox(v)
		if err != nil {
			return err
		}
		entries = append(entries, e)
		return nil
	}); err != nil {
		return 0, err
	}
	for _, e := range entries {
		if e.Kind == OutboxReceipt {
			if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
				return 0, err
			}
			continue
		}
		e.Envelope, e.Mailboxes = nil, 0
		if err := tx.PutOutbox(e); err != nil {
			return 0, err
		}
	}
	return len(accts), nil
}
