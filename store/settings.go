package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Limits on settings and sync cursors.
const (
	MaxSettingNameLen = 64
	MaxSettingSize    = 1 << 20 // a prekey bundle or a spare session state fits
	MaxMailboxIDLen   = 128     // bytes of a mailbox identifier (its peer ID)
	MaxCursorSize     = 256
)

// Names of settings the node keeps.
const (
	// SettingBundleSeq is the sequence number of the last published
	// prekey bundle (see NextBundleSeq).
	SettingBundleSeq = "bundle_seq"
	// SettingNextPrekeyID is the next free prekey ID.
	SettingNextPrekeyID = "next_prekey_id"
)

func checkSettingName(name string) error {
	if name == "" || len(name) > MaxSettingNameLen {
		return fmt.Errorf("store: setting name must be 1..%d bytes", MaxSettingNameLen)
	}
	return nil
}

// PutSetting stores a small value under name.
func (tx *Tx) PutSetting(name string, value []byte) error {
	b, err := tx.wbucket(bucketSettings)
	if err != nil {
		return err
	}
	if err := checkSettingName(name); err != nil {
		return err
	}
	if len(value) > MaxSettingSize {
		return tooLarge("setting "+name, len(value), MaxSettingSize)
	}
	return b.Put([]byte(name), concat(present, value))
}

// GetSetting returns a copy of the value stored under name, or an error
// wrapping ErrNotFound.
func (tx *Tx) GetSetting(name string) ([]byte, error) {
	b, err := tx.bucket(bucketSettings)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(name))
	if v == nil {
		return nil, fmt.Errorf("%w: setting %q", ErrNotFound, name)
	}
	return unwrapValue("setting "+name, v, MaxSettingSize)
}

// DeleteSetting removes a setting (missing is not an error).
func (tx *Tx) DeleteSetting(name string) error {
	b, err := tx.wbucket(bucketSettings)
	if err != nil {
		return err
	}
	return b.Delete([]byte(name))
}

// SettingNames returns the names of the settings that begin with prefix,
// in ascending order.
func (tx *Tx) SettingNames(prefix string) ([]string, error) {
	b, err := tx.bucket(bucketSettings)
	if err != nil {
		return nil, err
	}
	var out []string
	c := b.Cursor()
	for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
		out = append(out, string(k))
	}
	return out, nil
}

// PutUint64 stores an integer setting.
func (tx *Tx) PutUint64(name string, v uint64) error { return tx.PutSetting(name, be64(v)) }

// GetUint64 returns an integer setting and whether it was set.
func (tx *Tx) GetUint64(name string) (uint64, bool, error) {
	v, err := tx.GetSetting(name)
	if errors.Is(err, ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if len(v) != 8 {
		return 0, false, fmt.Errorf("%w: setting %q is not an integer", ErrCorrupt, name)
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// NextBundleSeq increments and returns the prekey bundle sequence number
// (1 the first time), so every published bundle supersedes the last.
func (tx *Tx) NextBundleSeq() (uint64, error) {
	v, _, err := tx.GetUint64(SettingBundleSeq)
	if err != nil {
		return 0, err
	}
	v++
	return v, tx.PutUint64(SettingBundleSeq, v)
}

func checkMailboxID(mailbox string) error {
	if mailbox == "" || len(mailbox) > MaxMailboxIDLen {
		return fmt.Errorf("store: mailbox ID must be 1..%d bytes", MaxMailboxIDLen)
	}
	return nil
}

// PutSyncCursor stores the sync cursor reached at a mailbox.
func (tx *Tx) PutSyncCursor(mailbox string, cursor []byte) error {
	b, err := tx.wbucket(bucketCursors)
	if err != nil {
		return err
	}
	if err := checkMailboxID(mailbox); err != nil {
		return err
	}
	if len(cursor) > MaxCursorSize {
		return tooLarge("sync cursor", len(cursor), MaxCursorSize)
	}
	return b.Put([]byte(mailbox), concat(present, cursor))
}

// GetSyncCursor returns the sync cursor for a mailbox, or nil (sync from
// the start) if there is none.
func (tx *Tx) GetSyncCursor(mailbox string) ([]byte, error) {
	b, err := tx.bucket(bucketCursors)
	if err != nil {
		return nil, err
	}
	v := b.Get([]byte(mailbox))
	if v == nil {
		return nil, nil
	}
	return unwrapValue("sync cursor", v, MaxCursorSize)
}

// DeleteSyncCursor forgets a mailbox's cursor.
func (tx *Tx) DeleteSyncCursor(mailbox string) error {
	b, err := tx.wbucket(bucketCursors)
	if err != nil {
		return err
	}
	return b.Delete([]byte(mailbox))
}

// Settings and cursors are stored behind a one-byte prefix (present), so
// that an empty value is distinguishable from a missing one.
func unwrapValue(what string, v []byte, max int) ([]byte, error) {
	if len(v) == 0 || v[0] != present[0] || len(v)-1 > max {
		return nil, fmt.Errorf("%w: %s has a bad encoding", ErrCorrupt, what)
	}
	return bytes.Clone(v[1:]), nil
}
