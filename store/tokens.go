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
// Keys are timeKey(expiry) || deleteHash(32): new records append at the
// end of the B+tree, in the order envelopes expire, and records of
// expired envelopes are pruned from the front.
var bucketTokens = []byte("envelope_tokens")

// MaxTokenRecordSize bounds an envelope token record.
const MaxTokenRecordSize = 128

// tokenKeepAfterExpiry is how long a record outlives its envelope's
// expiry: a copy arriving within the clock skew allowed is still
// recognised.
const tokenKeepAfterExpiry = 2 * protocol.MaxClockSkew

// Records written before envelope_tokens existed were settings named
// legacyTokenPrefix + base64url(deleteHash[:16]), without the expiry. The
// migration moves them under the key timeKey(until) || deleteHash[:16],
// where until (kept in meta under keyLegacyTokensUntil) is past the
// expiry of any envelope that could have been processed by then; lookups
// fall back to that key until it is pruned.
const legacyTokenPrefix = "dt/"

var keyLegacyTokensUntil = []byte("legacy_tokens_until")

func tokenKey(expiry time.Time, deleteHash [32]byte) []byte {
	return concat(timeKey(expiry), deleteHash[:])
}

// PutEnvelopeToken records rec for the envelope with the given expiry and
// delete hash, replacing any record for it.
func (tx *Tx) PutEnvelopeToken(expiry time.Time, deleteHash [32]byte, rec []byte) error {
	b, err := tx.wbucket(bucketTokens)
	if err != nil {
		return err
	}
	if len(rec) == 0 || len(rec) > MaxTokenRecordSize {
		return fmt.Errorf("store: envelope token record of %d bytes (1 to %d allowed)", len(rec), MaxTokenRecordSize)
	}
	return b.Put(tokenKey(expiry, deleteHash), rec)
}

// EnvelopeToken returns a copy of the record for the envelope with the
// given expiry and delete hash, or an error wrapping ErrNotFound.
func (tx *Tx) EnvelopeToken(expiry time.Time, deleteHash [32]byte) ([]byte, error) {
	b, err := tx.bucket(bucketTokens)
	if err != nil {
		return nil, err
	}
	if v := b.Get(tokenKey(expiry, deleteHash)); v != nil {
		return bytes.Clone(v), nil
	}
	meta, err := tx.bucket(bucketMeta)
	if err != nil {
		return nil, err
	}
	if until := meta.Get(keyLegacyTokensUntil); len(until) == 8 {
		if v := b.Get(concat(until, deleteHash[:16])); v != nil {
			return bytes.Clone(v), nil
		}
	}
	return nil, fmt.Errorf("%w: envelope token", ErrNotFound)
}

// PruneEnvelopeTokens deletes the records of envelopes that expired
// before now (less the allowed clock skew), at most limit of them, and
// returns how many it deleted.
func (tx *Tx) PruneEnvelopeTokens(now time.Time, limit int) (int, error) {
	b, err := tx.wbucket(bucketTokens)
	if err != nil {
		return 0, err
	}
	end := timeKey(now.Add(-tokenKeepAfterExpiry))
	var doomed [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && len(doomed) < limit && bytes.Compare(k[:min(8, len(k))], end) < 0; k, _ = c.Next() {
		doomed = append(doomed, bytes.Clone(k))
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
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

// checkTokens checks the key and record sizes of envelope_tokens.
func (tx *Tx) checkTokens(add func(error) bool) error {
	b, err := tx.bucket(bucketTokens)
	if err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		if (len(k) != 8+32 && len(k) != 8+16) || len(v) == 0 || len(v) > MaxTokenRecordSize {
			if !add(fmt.Errorf("%w: envelope token record with a %d-byte key and %d-byte value", ErrCorrupt, len(k), len(v))) {
				return ErrCorrupt
			}
		}
		return nil
	})
}
