package store

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sotto-im/sotto/protocol"
)

func hashN(n byte) [32]byte {
	var h [32]byte
	for i := range h {
		h[i] = n ^ byte(i*7)
	}
	return h
}

// TestEnvelopeTokens: a record is found by its envelope's expiry and
// delete hash only; bad sizes are refused.
func TestEnvelopeTokens(t *testing.T) {
	db, _ := openTest(t)
	exp := t0.Add(time.Hour)
	rec := bytes.Repeat([]byte{7}, 80)
	mustUpdate(t, db, func(tx *Tx) error {
		if err := tx.PutEnvelopeToken(exp, hashN(1), rec); err != nil {
			return err
		}
		if err := tx.PutEnvelopeToken(exp, hashN(2), rec[:32]); err != nil {
			return err
		}
		if err := tx.PutEnvelopeToken(exp, hashN(3), nil); err == nil {
			t.Error("an empty record was accepted")
		}
		if err := tx.PutEnvelopeToken(exp, hashN(3), make([]byte, MaxTokenRecordSize+1)); err == nil {
			t.Error("an oversized record was accepted")
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		if got, err := tx.EnvelopeToken(exp, hashN(1)); err != nil || !bytes.Equal(got, rec) {
			t.Errorf("record 1: %x, %v", got, err)
		}
		if got, err := tx.EnvelopeToken(exp, hashN(2)); err != nil || !bytes.Equal(got, rec[:32]) {
			t.Errorf("record 2: %x, %v", got, err)
		}
		for _, miss := range []struct {
			exp  time.Time
			hash [32]byte
		}{{exp, hashN(3)}, {exp.Add(time.Second), hashN(1)}} {
			if _, err := tx.EnvelopeToken(miss.exp, miss.hash); !errors.Is(err, ErrNotFound) {
				t.Errorf("missing record: %v, want ErrNotFound", err)
			}
		}
		if err := tx.PutEnvelopeToken(exp, hashN(4), rec); !errors.Is(err, ErrReadOnly) {
			t.Errorf("put in a read-only transaction: %v", err)
		}
		return nil
	})
	checkDB(t, db)
}

// TestPruneEnvelopeTokens: records go once their envelope expired more
// than the allowed skew ago, oldest first and at most limit at a time.
func TestPruneEnvelopeTokens(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range 10 {
			if err := tx.PutEnvelopeToken(t0.Add(time.Duration(i)*time.Hour), hashN(byte(i)), []byte{byte(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	// At t0+5h+skew, the records expiring at t0..t0+4h are prunable.
	now := t0.Add(5*time.Hour + tokenKeepAfterExpiry)
	var first, second, third int
	mustUpdate(t, db, func(tx *Tx) (err error) {
		if first, err = tx.PruneEnvelopeTokens(now, 3); err != nil {
			return err
		}
		if second, err = tx.PruneEnvelopeTokens(now, 3); err != nil {
			return err
		}
		third, err = tx.PruneEnvelopeTokens(now, 3)
		return err
	})
	if first != 3 || second != 2 || third != 0 {
		t.Fatalf("pruned %d, %d, %d; want 3, 2, 0", first, second, third)
	}
	mustView(t, db, func(tx *Tx) error {
		for i := range 10 {
			_, err := tx.EnvelopeToken(t0.Add(time.Duration(i)*time.Hour), hashN(byte(i)))
			if gone := errors.Is(err, ErrNotFound); gone != (i < 5) {
				t.Errorf("record %d: %v", i, err)
			}
		}
		return nil
	})
}

// TestTokenSchemaUpgrade: records that an older schema kept as settings
// (by the first half of the delete hash, without the expiry) are found
// after the upgrade by any expiry, until they are pruned once every
// envelope they could belong to has expired. Other settings stay.
func TestTokenSchemaUpgrade(t *testing.T) {
	skipIfSealed(t)
	old := openAtSchema(t, 3)
	rec := bytes.Repeat([]byte{9}, 80)
	h := hashN(5)
	legacy := legacyTokenPrefix + base64.RawURLEncoding.EncodeToString(h[:16])
	mustUpdate(t, old, func(tx *Tx) error {
		if err := tx.PutSetting(legacy, rec); err != nil {
			return err
		}
		if err := tx.PutSetting(legacyTokenPrefix+"not base64!", []byte{1}); err != nil {
			return err
		}
		return tx.PutSetting("other", []byte("kept"))
	})
	upgraded := time.Now()
	db := upgrade(t, old)
	mustView(t, db, func(tx *Tx) error {
		if got, err := tx.EnvelopeToken(t0.Add(13*time.Hour), h); err != nil || !bytes.Equal(got, rec) {
			t.Errorf("legacy record after the upgrade: %x, %v", got, err)
		}
		other := hashN(6)
		if _, err := tx.EnvelopeToken(t0, other); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown hash: %v", err)
		}
		if _, err := tx.GetSetting(legacy); !errors.Is(err, ErrNotFound) {
			t.Errorf("the legacy setting is still there: %v", err)
		}
		if v, err := tx.GetSetting("other"); err != nil || string(v) != "kept" {
			t.Errorf("other setting: %q, %v", v, err)
		}
		return nil
	})
	checkDB(t, db)
	// Kept while an envelope processed before the upgrade may come back.
	mustUpdate(t, db, func(tx *Tx) error {
		if n, err := tx.PruneEnvelopeTokens(upgraded.Add(protocol.MaxTTL), 100); err != nil || n != 0 {
			t.Errorf("pruned %d, %v before the legacy records lapsed", n, err)
		}
		n, err := tx.PruneEnvelopeTokens(upgraded.Add(protocol.MaxTTL+protocol.MaxClockSkew+2*tokenKeepAfterExpiry+time.Minute), 100)
		if err != nil || n != 1 {
			t.Errorf("pruned %d, %v after the legacy records lapsed", n, err)
		}
		return nil
	})
	// A database upgraded without legacy records has no fallback.
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.EnvelopeToken(t0, h); !errors.Is(err, ErrNotFound) {
			t.Errorf("pruned legacy record: %v", err)
		}
		return nil
	})
}

// TestCheckFindsBadTokenRecord: a token record of the wrong shape is
// reported by Check.
func TestCheckFindsBadTokenRecord(t *testing.T) {
	db, _ := openTest(t)
	if err := db.bolt().Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokenLog).Put([]byte("short"), []byte{1})
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Check(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check: %v, want ErrCorrupt", err)
	}
}

// TestEnvelopeTokensOneSecond: many envelopes that expire in the same
// second (sealed in the same second) are each found; records append in
// arrival order whatever their hashes.
func TestEnvelopeTokensOneSecond(t *testing.T) {
	db, _ := openTest(t)
	exp := t0.Truncate(time.Second).Add(time.Hour)
	const n = 2000
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range n {
			var h [32]byte
			h[0], h[1], h[31] = byte(i), byte(i>>8), 0xee
			if err := tx.PutEnvelopeToken(exp, h, []byte{byte(i), byte(i >> 8)}); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		for _, i := range []int{0, 1, n / 2, n - 1} {
			var h [32]byte
			h[0], h[1], h[31] = byte(i), byte(i>>8), 0xee
			got, err := tx.EnvelopeToken(exp, h)
			if err != nil || !bytes.Equal(got, []byte{byte(i), byte(i >> 8)}) {
				t.Errorf("record %d: %x, %v", i, got, err)
			}
		}
		b, _ := tx.bucket(bucketTokenLog)
		var last []byte
		return b.ForEach(func(k, _ []byte) error {
			if last != nil && bytes.Compare(k, last) <= 0 {
				t.Fatal("token log keys out of order")
			}
			last = bytes.Clone(k)
			return nil
		})
	})
}

// TestTokenSchema4Upgrade: records in schema 4's layout are found after
// the upgrade, the legacy ones included.
func TestTokenSchema4Upgrade(t *testing.T) {
	skipIfSealed(t)
	old := openAtSchema(t, 4)
	exp := t0.Add(time.Hour)
	h, lh := hashN(1), hashN(2)
	if err := old.bolt().Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if err := b.Put(concat(timeKey(exp), h[:]), []byte("new")); err != nil {
			return err
		}
		if err := tx.Bucket(bucketMeta).Put(keyLegacyTokensUntil, timeKey(t0.Add(48*time.Hour))); err != nil {
			return err
		}
		return b.Put(concat(timeKey(t0.Add(48*time.Hour)), lh[:16]), []byte("legacy"))
	}); err != nil {
		t.Fatal(err)
	}
	db := upgrade(t, old)
	mustView(t, db, func(tx *Tx) error {
		if got, err := tx.EnvelopeToken(exp, h); err != nil || string(got) != "new" {
			t.Errorf("schema 4 record: %q, %v", got, err)
		}
		if got, err := tx.EnvelopeToken(exp, lh); err != nil || string(got) != "legacy" {
			t.Errorf("legacy record: %q, %v", got, err)
		}
		if tx.tx.Bucket(bucketTokens) != nil {
			t.Error("schema 4's bucket is still there")
		}
		return nil
	})
	checkDB(t, db)
}

// TestEnvelopeTokenScanBound: a lookup reads at most maxTokenScan records
// of one expiry second; a record past them counts as unknown.
func TestEnvelopeTokenScanBound(t *testing.T) {
	db, _ := openTest(t)
	exp := t0.Truncate(time.Second)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range maxTokenScan + 1 {
			var h [32]byte
			h[0], h[1], h[2] = byte(i), byte(i>>8), byte(i>>16)
			if err := tx.PutEnvelopeToken(exp, h, []byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		var first, last [32]byte
		n := maxTokenScan
		last[0], last[1], last[2] = byte(n), byte(n>>8), byte(n>>16)
		if _, err := tx.EnvelopeToken(exp, first); err != nil {
			t.Errorf("first record: %v", err)
		}
		if _, err := tx.EnvelopeToken(exp, last); !errors.Is(err, ErrNotFound) {
			t.Errorf("record past the scan bound: %v, want ErrNotFound", err)
		}
		return nil
	})
}
