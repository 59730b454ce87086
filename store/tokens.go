package store

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sotto-im/sotto/protocol"
)

// Envelope tokens: what the recipient keeps about each envelope it has
// processed, found again by the envelope's outer fields when a copy of it
// comes back (from a mailbox, or retransmitted by its sender). The record
// is opaque here (the node keeps the envelope's delete token and, for a
// message, its sender and ID).
//
// Records are written for every envelope and looked up rarely (only for
// a copy of one already processed), so they are laid out for writing:
// token_log keys are timeKey(expiry) || sequence(8) and values are
// deleteHash[:16] || record. New records append at the end of the
// B+tree (a commit rewrites a page or two, where keys by hash would
// scatter a batch over as many pages as it has envelopes); a lookup scans
// the records of its envelope's expiry second (envelopes sealed in the
// same second), at most maxTokenScan of them; records of expired
// envelopes are pruned from the front.
var bucketTokenLog = []byte("token_log")

// Records kept before token_log existed, by deleteHash[:16]; they are
// dropped together once every envelope they could belong to has expired
// (meta keyLegacyTokensUntil).
var bucketTokenLegacy = []byte("token_legacy")

// bucketTokens is schema 4's layout, migrated into token_log and
// token_legacy by schema 5: timeKey(expiry) || deleteHash -> record, and
// timeKey(until) || deleteHash[:16] -> record for the records schema 4
// moved out of the settings.
var bucketTokens = []byte("envelope_tokens")

// MaxTokenRecordSize bounds an envelope token record.
const MaxTokenRecordSize = 128

// maxTokenScan bounds the records a lookup reads: past it (more envelopes
// sealed in one second than that), a copy is treated as unknown.
const maxTokenScan = 1 << 14

// tokenHashSize is the part of the delete hash a record keeps: enough to
// tell envelopes of one expiry second apart (the caller checks the token
// against the full hash anyway).
const tokenHashSize = 16

// tokenKeepAfterExpiry is how long a record outlives its envelope's
// expiry: a copy arriving within the clock skew allowed is still
// recognised.
const tokenKeepAfterExpiry = 2 * protocol.MaxClockSkew

// Records written before schema 4 were settings named legacyTokenPrefix +
// base64url(deleteHash[:16]), without the expiry.
const legacyTokenPrefix = "dt/"

var keyLegacyTokensUntil = []byte("legacy_tokens_until")

// PutEnvelopeToken records rec for the envelope with the given expiry and
// delete hash.
func (tx *Tx) PutEnvelopeToken(expiry time.Time, deleteHash [32]byte, rec []byte) error {
	b, err := tx.wbucket(bucketTokenLog)
	if err != nil {
		return err
	}
	if len(rec) == 0 || len(rec) > MaxTokenRecordSize {
		return fmt.Errorf("store: envelope token record of %d bytes (1 to %d allowed)", len(rec), MaxTokenRecordSize)
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return b.Put(concat(timeKey(expiry), be64(seq)), concat(deleteHash[:tokenHashSize], rec))
}

// EnvelopeToken returns a copy of the record for the envelope with the
// given expiry and delete hash, or an error wrapping ErrNotFound. When
// several were kept (copies processed more than once), it returns the
// first.
func (tx *Tx) EnvelopeToken(expiry time.Time, deleteHash [32]byte) ([]byte, error) {
	b, err := tx.bucket(bucketTokenLog)
	if err != nil {
		return nil, err
	}
	prefix := timeKey(expiry)
	want := deleteHash[:tokenHashSize]
	c := b.PeekCursor() // the hash prefix is never sealed
	n := 0
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && n < maxTokenScan; k, v = c.Next() {
		n++
		if len(v) > tokenHashSize && bytes.Equal(v[:tokenHashSize], want) {
			if v = b.OpenPeeked(k, v); v == nil {
				return nil, tx.err
			}
			return bytes.Clone(v[tokenHashSize:]), nil
		}
	}
	legacy, err := tx.bucket(bucketTokenLegacy)
	if err != nil {
		return nil, err
	}
	if v := legacy.Get(want); v != nil {
		return bytes.Clone(v), nil
	}
	return nil, fmt.Errorf("%w: envelope token", ErrNotFound)
}

// PruneEnvelopeTokens deletes the records of envelopes that expired
// before now (less the allowed clock skew), at most limit of them, and
// returns how many it deleted.
func (tx *Tx) PruneEnvelopeTokens(now time.Time, limit int) (int, error) {
	b, err := tx.wbucket(bucketTokenLog)
	if err != nil {
		return 0, err
	}
	end := timeKey(now.Add(-tokenKeepAfterExpiry))
	var doomed [][]byte
	c := b.PeekCursor() // keys only
	for k, _ := c.First(); k != nil && len(doomed) < limit && bytes.Compare(k[:min(8, len(k))], end) < 0; k, _ = c.Next() {
		doomed = append(doomed, bytes.Clone(k))
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	// The legacy records go together, once their time has passed.
	meta, err := tx.bucket(bucketMeta)
	if err != nil {
		return 0, err
	}
	if until := meta.Get(keyLegacyTokensUntil); len(until) == 8 && bytes.Compare(until, end) < 0 && len(doomed) < limit {
		legacy, err := tx.bucket(bucketTokenLegacy)
		if err != nil {
			return 0, err
		}
		var old [][]byte
		c := legacy.Cursor()
		for k, _ := c.First(); k != nil && len(doomed)+len(old) < limit; k, _ = c.Next() {
			old = append(old, bytes.Clone(k))
		}
		for _, k := range old {
			if err := legacy.Delete(k); err != nil {
				return 0, err
			}
		}
		if len(doomed)+len(old) < limit {
			if err := meta.Delete(keyLegacyTokensUntil); err != nil {
				return 0, err
			}
		}
		return len(doomed) + len(old), nil
	}
	return len(doomed), nil
}

// createTokenBucket is the migration that creates envelope_tokens and
// moves the legacy records out of the settings.
func createTokenBucket(tx *bolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(bucketTokens)
	if err != nil {
		return err
	}
	settings, meta := tx.Bucket(bucketSettings), tx.Bucket(bucketMeta)
	if settings == nil || meta == nil {
		return fmt.Errorf("%w: settings or meta bucket missing", ErrCorrupt)
	}
	until := timeKey(time.Now().Add(protocol.MaxTTL + protocol.MaxClockSkew + tokenKeepAfterExpiry))
	var names [][]byte
	c := settings.Cursor()
	prefix := []byte(legacyTokenPrefix)
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		names = append(names, bytes.Clone(k))
		hash, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(string(k), legacyTokenPrefix))
		if err != nil || len(hash) != 16 || len(v) < 2 || len(v)-1 > MaxTokenRecordSize {
			continue // not a token record: dropped with the rest
		}
		if err := b.Put(concat(until, hash), bytes.Clone(v[1:])); err != nil {
			return err
		}
	}
	for _, k := range names {
		if err := settings.Delete(k); err != nil {
			return err
		}
	}
	if len(names) == 0 {
		return nil
	}
	return meta.Put(keyLegacyTokensUntil, until)
}

// splitTokenLog is the migration from schema 4's envelope_tokens to
// token_log and token_legacy.
func splitTokenLog(tx *bolt.Tx) error {
	log, err := tx.CreateBucketIfNotExists(bucketTokenLog)
	if err != nil {
		return err
	}
	legacy, err := tx.CreateBucketIfNotExists(bucketTokenLegacy)
	if err != nil {
		return err
	}
	old := tx.Bucket(bucketTokens)
	if old == nil {
		return fmt.Errorf("%w: envelope_tokens bucket missing", ErrCorrupt)
	}
	if err := old.ForEach(func(k, v []byte) error {
		if len(v) == 0 || len(v) > MaxTokenRecordSize {
			return nil // not a record: dropped
		}
		switch len(k) {
		case 8 + 32:
			seq, err := log.NextSequence()
			if err != nil {
				return err
			}
			return log.Put(concat(k[:8], be64(seq)), concat(k[8:8+tokenHashSize], v))
		case 8 + tokenHashSize:
			return legacy.Put(bytes.Clone(k[8:]), bytes.Clone(v))
		}
		return nil
	}); err != nil {
		return err
	}
	return tx.DeleteBucket(bucketTokens)
}

// checkTokens checks the key and record sizes of token_log and
// token_legacy.
func (tx *Tx) checkTokens(add func(error) bool) error {
	for _, name := range [][]byte{bucketTokenLog, bucketTokenLegacy} {
		b, err := tx.bucket(name)
		if err != nil {
			return err
		}
		log := bytes.Equal(name, bucketTokenLog)
		err = b.ForEach(func(k, v []byte) error {
			bad := len(k) != 16 || len(v) == 0 || len(v) > MaxTokenRecordSize
			if log {
				bad = len(k) != 16 || len(v) <= tokenHashSize || len(v) > tokenHashSize+MaxTokenRecordSize
			}
			if bad && !add(fmt.Errorf("%w: %s record with a %d-byte key and %d-byte value", ErrCorrupt, name, len(k), len(v))) {
				return ErrCorrupt
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
