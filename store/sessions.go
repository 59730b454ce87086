package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// MaxSessionSize bounds a stored session state (ratchet plus skipped
// message keys).
const MaxSessionSize = 1 << 20

// PutSession stores the opaque session state for a contact's account,
// replacing any previous state.
func (tx *Tx) PutSession(account [32]byte, state []byte) error {
	b, err := tx.wbucket(bucketSessions)
	if err != nil {
		return err
	}
	if len(state) > MaxSessionSize {
		return tooLarge("session state", len(state), MaxSessionSize)
	}
	if len(state) == 0 {
		return fmt.Errorf("store: empty session state")
	}
	return b.Put(account[:], state)
}

// GetSession returns a copy of the session state for account, or an error
// wrapping ErrNotFound.
func (tx *Tx) GetSession(account [32]byte) ([]byte, error) {
	b, err := tx.bucket(bucketSessions)
	if err != nil {
		return nil, err
	}
	v := b.Get(account[:])
	if v == nil {
		return nil, fmt.Errorf("%w: no session with account %x…", ErrNotFound, account[:6])
	}
	if len(v) > MaxSessionSize {
		return nil, fmt.Errorf("%w: session state is %d bytes", ErrCorrupt, len(v))
	}
	return bytes.Clone(v), nil
}

// SessionIs reports whether the stored session state for account is
// exactly state, without copying it (a cache of decoded sessions checks
// its entries against the store with it).
func (tx *Tx) SessionIs(account [32]byte, state []byte) (bool, error) {
	b, err := tx.bucket(bucketSessions)
	if err != nil {
		return false, err
	}
	v := b.Get(account[:])
	return v != nil && bytes.Equal(v, state), nil
}

// DeleteSession removes the session for account; deleting a missing
// session is not an error.
func (tx *Tx) DeleteSession(account [32]byte) error {
	b, err := tx.wbucket(bucketSessions)
	if err != nil {
		return err
	}
	return b.Delete(account[:])
}

// tagValueSize is account(32) || epoch(8).
const tagValueSize = 32 + 8

// PutTag records that envelopes carrying tag come from (or are addressed
// through) the contact with the given account, for the given epoch. Putting
// an existing tag replaces its mapping.
func (tx *Tx) PutTag(tag [32]byte, account [32]byte, epoch uint64) error {
	tags, err := tx.wbucket(bucketTags)
	if err != nil {
		return err
	}
	idx, err := tx.bucket(bucketTagEpochs)
	if err != nil {
		return err
	}
	if old := tags.Get(tag[:]); old != nil {
		if len(old) != tagValueSize {
			return fmt.Errorf("%w: tag entry has %d bytes", ErrCorrupt, len(old))
		}
		if err := idx.Delete(concat(old[32:], tag[:])); err != nil {
			return err
		}
	}
	if err := idx.Put(concat(be64(epoch), tag[:]), present); err != nil {
		return err
	}
	return tags.Put(tag[:], concat(account[:], be64(epoch)))
}

// LookupTag returns the account and epoch a tag was recorded for, or an
// error wrapping ErrNotFound.
func (tx *Tx) LookupTag(tag [32]byte) (account [32]byte, epoch uint64, err error) {
	tags, err := tx.bucket(bucketTags)
	if err != nil {
		return account, 0, err
	}
	v := tags.Get(tag[:])
	if v == nil {
		return account, 0, fmt.Errorf("%w: unknown mailbox tag", ErrNotFound)
	}
	if len(v) != tagValueSize {
		return account, 0, fmt.Errorf("%w: tag entry has %d bytes", ErrCorrupt, len(v))
	}
	copy(account[:], v)
	return account, binary.BigEndian.Uint64(v[32:]), nil
}

// PruneTags deletes every tag whose epoch is lower than before and returns
// how many it deleted.
func (tx *Tx) PruneTags(before uint64) (int, error) {
	tags, err := tx.wbucket(bucketTags)
	if err != nil {
		return 0, err
	}
	idx, err := tx.bucket(bucketTagEpochs)
	if err != nil {
		return 0, err
	}
	var doomed [][]byte
	c := idx.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) != 8+32 {
			return 0, fmt.Errorf("%w: tag index key has %d bytes", ErrCorrupt, len(k))
		}
		if binary.BigEndian.Uint64(k) >= before {
			break
		}
		doomed = append(doomed, bytes.Clone(k))
	}
	for _, k := range doomed {
		if err := idx.Delete(k); err != nil {
			return 0, err
		}
		if err := tags.Delete(k[8:]); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

// deleteTagsFor deletes all tags mapped to account.
func (tx *Tx) deleteTagsFor(account [32]byte) (int, error) {
	tags, err := tx.wbucket(bucketTags)
	if err != nil {
		return 0, err
	}
	idx, err := tx.bucket(bucketTagEpochs)
	if err != nil {
		return 0, err
	}
	var doomed [][]byte // tag || value
	err = tags.ForEach(func(k, v []byte) error {
		if len(v) == tagValueSize && bytes.Equal(v[:32], account[:]) {
			doomed = append(doomed, concat(k, v))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, kv := range doomed {
		tag, epoch := kv[:32], kv[32+32:]
		if err := idx.Delete(concat(epoch, tag)); err != nil {
			return 0, err
		}
		if err := tags.Delete(tag); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}
