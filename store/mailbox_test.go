package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/sotto-im/sotto/protocol"
)

// mbxNow is the clock of the mailbox tests.
var mbxNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func mbxTag(n int) [32]byte {
	var t [32]byte
	binary.BigEndian.PutUint64(t[:], uint64(n)*0x9E3779B97F4A7C15)
	t[31] = 0x7A
	return t
}

func mbxToken(n int) [32]byte {
	var t [32]byte
	binary.BigEndian.PutUint64(t[8:], uint64(n))
	t[0] = 0xD7
	return t
}

// mbxEnvelope builds a valid envelope under tag with the delete token
// mbxToken(id), ciphertext of size bytes, expiring ttl after mbxNow.
func mbxEnvelope(tag [32]byte, id, size int, ttl time.Duration) []byte {
	ct := make([]byte, size)
	binary.BigEndian.PutUint64(ct, uint64(id))
	for i := 8; i < size; i++ {
		ct[i] = byte(i * id)
	}
	e := protocol.Envelope{
		Version:    protocol.EnvelopeVersion,
		Tag:        tag,
		Expiry:     mbxNow.Add(ttl),
		DeleteHash: protocol.HashDeleteToken(mbxToken(id)),
		Ciphertext: ct,
	}
	return e.Marshal()
}

func mbxPut(t testing.TB, db *DB, env []byte, lim MailboxLimits) (bool, error) {
	t.Helper()
	var stored bool
	err := db.Update(func(tx *Tx) error {
		var err error
		stored, err = tx.MailboxPut(env, mbxNow, lim)
		return err
	})
	return stored, err
}

func mustMbxPut(t testing.TB, db *DB, env []byte) {
	t.Helper()
	if stored, err := mbxPut(t, db, env, MailboxLimits{}); err != nil || !stored {
		t.Fatalf("MailboxPut = %v, %v", stored, err)
	}
}

func mbxQuery(t testing.TB, db *DB, tags [][32]byte, cursor []byte, limit int, now time.Time) MailboxPage {
	t.Helper()
	var p MailboxPage
	mustView(t, db, func(tx *Tx) error {
		var err error
		p, err = tx.MailboxQuery(tags, cursor, limit, 0, now)
		return err
	})
	return p
}

func mbxStats(t testing.TB, db *DB) (int64, int64) {
	t.Helper()
	var n, b int64
	mustView(t, db, func(tx *Tx) error {
		var err error
		n, b, err = tx.MailboxStats()
		return err
	})
	return n, b
}

// checkMailbox verifies that every index and count agrees with the stored
// envelopes.
func checkMailbox(t testing.TB, db *DB) {
	t.Helper()
	mustView(t, db, func(tx *Tx) error {
		m, err := tx.mailboxBuckets(false)
		if err != nil {
			return err
		}
		var n, size int64
		perTag := map[[32]byte][2]int64{}
		if err := m.env.ForEach(func(k, v []byte) error {
			env, err := unmarshalMailboxRecord(v)
			if err != nil {
				return err
			}
			f := envelopeFields(env)
			n++
			size += int64(len(env))
			c := perTag[f.tag]
			perTag[f.tag] = [2]int64{c[0] + 1, c[1] + int64(len(env))}
			if m.tag.Get(concat(f.tag[:], k)) == nil || m.exp.Get(concat(be64(uint64(f.expiry)), k)) == nil ||
				m.del.Get(concat(f.tag[:], f.deleteHash[:], k)) == nil {
				t.Errorf("envelope %x lacks an index entry", k)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketMbxHash, bucketMbxTag, bucketMbxExp, bucketMbxDel} {
			if got := int64(tx.tx.Bucket(b).Stats().KeyN); got != n {
				t.Errorf("bucket %s has %d keys, want %d", b, got, n)
			}
		}
		gn, gb, err := tx.MailboxStats()
		if err != nil {
			return err
		}
		if gn != n || gb != size {
			t.Errorf("totals %d envelopes %d bytes, stored %d, %d", gn, gb, n, size)
		}
		if m.v1 != nil {
			var vn, vb int64
			if err := m.v1.ForEach(func(k, _ []byte) error {
				v := m.env.Get(k)
				if v == nil {
					t.Errorf("version 1 index names missing envelope %x", k)
					return nil
				}
				env, err := unmarshalMailboxRecord(v)
				vn, vb = vn+1, vb+int64(len(env))
				return err
			}); err != nil {
				return err
			}
			gn, gb, err := readCounts(m.meta.Get(keyMbxV1Totals), "version 1 totals")
			if err != nil {
				return err
			}
			if gn != vn || gb != vb {
				t.Errorf("version 1 totals %d envelopes %d bytes, indexed %d, %d", gn, gb, vn, vb)
			}
		}
		if got := m.tagstat.Stats().KeyN; got != len(perTag) {
			t.Errorf("%d tag stats, want %d", got, len(perTag))
		}
		for tag, c := range perTag {
			tn, tb, err := tx.MailboxTagStats(tag)
			if err != nil {
				return err
			}
			if tn != c[0] || tb != c[1] {
				t.Errorf("tag stats %d, %d, want %d, %d", tn, tb, c[0], c[1])
			}
		}
		return nil
	})
}

func TestMailboxPutQueryDelete(t *testing.T) {
	db, _ := openTest(t)
	tagA, tagB := mbxTag(1), mbxTag(2)
	envs := [][]byte{
		mbxEnvelope(tagA, 1, 100, time.Hour),
		mbxEnvelope(tagB, 2, 200, time.Hour),
		mbxEnvelope(tagA, 3, 300, time.Hour),
	}
	for _, e := range envs {
		mustMbxPut(t, db, e)
	}
	// The same bytes again (as when gossip and a direct deposit both
	// deliver them) are stored once.
	if stored, err := mbxPut(t, db, envs[0], MailboxLimits{}); err != nil || stored {
		t.Fatalf("duplicate MailboxPut = %v, %v; want false, nil", stored, err)
	}
	if n, b := mbxStats(t, db); n != 3 || b != int64(len(envs[0])+len(envs[1])+len(envs[2])) {
		t.Fatalf("stats %d, %d", n, b)
	}
	checkMailbox(t, db)

	p := mbxQuery(t, db, [][32]byte{tagA}, nil, 0, mbxNow)
	if len(p.Entries) != 2 || !bytes.Equal(p.Entries[0].Envelope, envs[0]) || !bytes.Equal(p.Entries[1].Envelope, envs[2]) {
		t.Fatalf("query tag A: %d entries", len(p.Entries))
	}
	if p.More || p.Entries[0].Tag != tagA || !p.Entries[0].Expiry.Equal(mbxNow.Add(time.Hour)) {
		t.Fatalf("query tag A: %+v", p.Entries[0])
	}
	p = mbxQuery(t, db, [][32]byte{tagB, tagA, tagB}, nil, 0, mbxNow)
	if len(p.Entries) != 3 {
		t.Fatalf("query A+B: %d entries, want 3", len(p.Entries))
	}
	for i, e := range p.Entries {
		if !bytes.Equal(e.Envelope, envs[i]) {
			t.Errorf("entry %d out of arrival order", i)
		}
	}

	// Wrong token, and the right token under the wrong tag, delete nothing.
	for _, tc := range []struct {
		name  string
		tag   [32]byte
		token [32]byte
	}{
		{"wrong token", tagA, mbxToken(99)},
		{"other tag", tagB, mbxToken(1)},
	} {
		err := db.Update(func(tx *Tx) error {
			_, err := tx.MailboxDelete(tc.tag, tc.token)
			return err
		})
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: MailboxDelete = %v, want ErrNotFound", tc.name, err)
		}
	}
	if n, _ := mbxStats(t, db); n != 3 {
		t.Fatalf("refused deletes removed envelopes: %d left", n)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.MailboxDelete(tagA, mbxToken(1))
		if n != 1 {
			t.Errorf("deleted %d", n)
		}
		return err
	})
	p = mbxQuery(t, db, [][32]byte{tagA}, nil, 0, mbxNow)
	if len(p.Entries) != 1 || !bytes.Equal(p.Entries[0].Envelope, envs[2]) {
		t.Fatalf("after delete: %d entries", len(p.Entries))
	}
	checkMailbox(t, db)
	// Deleted content may be deposited again (it is new to the mailbox).
	mustMbxPut(t, db, envs[0])
	checkMailbox(t, db)
}

func TestMailboxQueryPaging(t *testing.T) {
	db, dir := openTest(t)
	tags := [][32]byte{mbxTag(1), mbxTag(2), mbxTag(3)}
	var want [][]byte
	for i := range 30 {
		e := mbxEnvelope(tags[i%3], i, 50, time.Hour)
		want = append(want, e)
		mustMbxPut(t, db, e)
		// Noise under a tag nobody asks for.
		mustMbxPut(t, db, mbxEnvelope(mbxTag(100), 1000+i, 50, time.Hour))
	}
	var got [][]byte
	var cursor []byte
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		p := mbxQuery(t, db, tags, cursor, 7, mbxNow)
		for _, e := range p.Entries {
			got = append(got, e.Envelope)
		}
		cursor = p.Cursor
		if !p.More {
			break
		}
	}
	if len(got) != len(want) {
		t.Fatalf("paged %d envelopes, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("envelope %d differs", i)
		}
	}

	// The cursor survives a restart; new deposits come after it.
	db.Close()
	db2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if p := mbxQuery(t, db2, tags, cursor, 0, mbxNow); len(p.Entries) != 0 {
		t.Fatalf("after the last page: %d entries", len(p.Entries))
	}
	late := mbxEnvelope(tags[1], 500, 50, time.Hour)
	mustMbxPut(t, db2, late)
	p := mbxQuery(t, db2, tags, cursor, 0, mbxNow)
	if len(p.Entries) != 1 || !bytes.Equal(p.Entries[0].Envelope, late) {
		t.Fatalf("after restart and a new deposit: %d entries", len(p.Entries))
	}
	checkMailbox(t, db2)
}

func TestMailboxPageBytes(t *testing.T) {
	db, _ := openTest(t)
	tag := mbxTag(1)
	for i := range 3 {
		mustMbxPut(t, db, mbxEnvelope(tag, i, 1000, time.Hour))
	}
	mustView(t, db, func(tx *Tx) error {
		// Too small for even one: one is returned anyway.
		p, err := tx.MailboxQuery([][32]byte{tag}, nil, 0, 10, mbxNow)
		if err != nil {
			return err
		}
		if len(p.Entries) != 1 || !p.More {
			t.Errorf("maxBytes 10: %d entries, more %v", len(p.Entries), p.More)
		}
		p, err = tx.MailboxQuery([][32]byte{tag}, nil, 0, 2500, mbxNow)
		if err != nil {
			return err
		}
		if len(p.Entries) != 2 || !p.More {
			t.Errorf("maxBytes 2500: %d entries, more %v", len(p.Entries), p.More)
		}
		return nil
	})
}

func TestMailboxRandomTagsFindNothing(t *testing.T) {
	db, _ := openTest(t)
	for i := range 50 {
		mustMbxPut(t, db, mbxEnvelope(mbxTag(i), i, 40, time.Hour))
	}
	var tags [][32]byte
	for i := range MaxMailboxQueryTags {
		tags = append(tags, mbxTag(1_000_000+i))
	}
	p := mbxQuery(t, db, tags, nil, MaxMailboxPage, mbxNow)
	if len(p.Entries) != 0 || p.More {
		t.Fatalf("random tags: %d entries", len(p.Entries))
	}
	mustView(t, db, func(tx *Tx) error {
		_, err := tx.MailboxQuery(append(tags, mbxTag(1)), nil, 0, 0, mbxNow)
		if err == nil {
			t.Error("query over the tag limit accepted")
		}
		return nil
	})
}

func TestMailboxExpiry(t *testing.T) {
	db, _ := openTest(t)
	tag := mbxTag(1)
	short := mbxEnvelope(tag, 1, 60, time.Minute)
	long := mbxEnvelope(tag, 2, 60, 2*time.Hour)
	mustMbxPut(t, db, short)
	mustMbxPut(t, db, long)

	later := mbxNow.Add(time.Hour)
	// Expired but not yet swept: not served.
	p := mbxQuery(t, db, [][32]byte{tag}, nil, 0, later)
	if len(p.Entries) != 1 || !bytes.Equal(p.Entries[0].Envelope, long) {
		t.Fatalf("query after expiry: %d entries", len(p.Entries))
	}
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.MailboxSweep(later)
		if n != 1 {
			t.Errorf("swept %d, want 1", n)
		}
		return err
	})
	if n, b := mbxStats(t, db); n != 1 || b != int64(len(long)) {
		t.Fatalf("after sweep: %d, %d", n, b)
	}
	checkMailbox(t, db)
	// An expired envelope is not accepted in the first place.
	if _, err := (func() (bool, error) {
		var s bool
		err := db.Update(func(tx *Tx) error {
			var err error
			s, err = tx.MailboxPut(short, later, MailboxLimits{})
			return err
		})
		return s, err
	})(); !errors.Is(err, ErrMailboxInvalid) || !errors.Is(err, protocol.ErrExpired) {
		t.Fatalf("expired put = %v", err)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.MailboxSweep(mbxNow.Add(3 * time.Hour))
		if n != 1 {
			t.Errorf("second sweep removed %d", n)
		}
		return err
	})
	if n, _ := mbxStats(t, db); n != 0 {
		t.Fatalf("%d left", n)
	}
	checkMailbox(t, db)
}

func TestMailboxRejectsInvalid(t *testing.T) {
	db, _ := openTest(t)
	valid := mbxEnvelope(mbxTag(1), 1, 10, time.Hour)
	tests := []struct {
		name string
		env  []byte
		want error
	}{
		{"empty", nil, protocol.ErrEnvelopeTruncated},
		{"garbage", []byte("hello, mailbox"), protocol.ErrUnknownVersion},
		{"truncated", valid[:len(valid)-1], protocol.ErrEnvelopeTruncated},
		{"trailing", append(append([]byte{}, valid...), 0), protocol.ErrEnvelopeTrailing},
		{"oversized", make([]byte, protocol.MaxEnvelopeSize+1), protocol.ErrEnvelopeTooLarge},
		{"expired", mbxEnvelope(mbxTag(1), 2, 10, -time.Second), protocol.ErrExpired},
		{"ttl too long", mbxEnvelope(mbxTag(1), 3, 10, protocol.MaxTTL+2*protocol.MaxClockSkew), protocol.ErrTTLTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mbxPut(t, db, tt.env, MailboxLimits{})
			if !errors.Is(err, ErrMailboxInvalid) || !errors.Is(err, tt.want) {
				t.Fatalf("MailboxPut = %v, want %v", err, tt.want)
			}
		})
	}
	if n, _ := mbxStats(t, db); n != 0 {
		t.Fatalf("%d invalid envelopes stored", n)
	}
}

func TestMailboxTagQuota(t *testing.T) {
	tests := []struct {
		name string
		lim  MailboxLimits
		fit  int // envelopes of mbxEnvelope(…, 100, …) that fit one tag
	}{
		{"count", MailboxLimits{TagEnvelopes: 5}, 5},
		{"bytes", MailboxLimits{TagBytes: 3*(protocol.EnvelopeHeaderSize+100) + 50}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			hog := mbxTag(1)
			for i := range tt.fit {
				if _, err := mbxPut(t, db, mbxEnvelope(hog, i, 100, time.Hour), tt.lim); err != nil {
					t.Fatalf("envelope %d: %v", i, err)
				}
			}
			if _, err := mbxPut(t, db, mbxEnvelope(hog, 100, 100, time.Hour), tt.lim); !errors.Is(err, ErrMailboxTagFull) {
				t.Fatalf("over quota: %v, want ErrMailboxTagFull", err)
			}
			// Other tags are unaffected.
			for i := range tt.fit {
				if _, err := mbxPut(t, db, mbxEnvelope(mbxTag(2), 200+i, 100, time.Hour), tt.lim); err != nil {
					t.Fatalf("honest envelope %d: %v", i, err)
				}
			}
			// Deleting one frees room under the hog tag.
			mustUpdate(t, db, func(tx *Tx) error { _, err := tx.MailboxDelete(hog, mbxToken(0)); return err })
			if _, err := mbxPut(t, db, mbxEnvelope(hog, 100, 100, time.Hour), tt.lim); err != nil {
				t.Fatalf("after delete: %v", err)
			}
			checkMailbox(t, db)
		})
	}
}

func TestMailboxTotalCapEvictsOldest(t *testing.T) {
	size := protocol.EnvelopeHeaderSize + 100
	tests := []struct {
		name string
		lim  MailboxLimits
		keep int
	}{
		{"count", MailboxLimits{TotalEnvelopes: 4}, 4},
		{"bytes", MailboxLimits{TotalBytes: int64(3*size + 10)}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			var envs [][]byte
			for i := range 10 {
				e := mbxEnvelope(mbxTag(i%2), i, 100, time.Hour)
				envs = append(envs, e)
				if stored, err := mbxPut(t, db, e, tt.lim); err != nil || !stored {
					t.Fatalf("envelope %d: %v, %v", i, stored, err)
				}
			}
			p := mbxQuery(t, db, [][32]byte{mbxTag(0), mbxTag(1)}, nil, 0, mbxNow)
			if len(p.Entries) != tt.keep {
				t.Fatalf("%d kept, want %d", len(p.Entries), tt.keep)
			}
			for i, e := range p.Entries {
				if !bytes.Equal(e.Envelope, envs[10-tt.keep+i]) {
					t.Fatalf("entry %d is not among the newest", i)
				}
			}
			checkMailbox(t, db)
			if _, err := mbxPut(t, db, mbxEnvelope(mbxTag(5), 50, 100, time.Hour), MailboxLimits{TotalBytes: 50}); !errors.Is(err, ErrMailboxFull) {
				t.Fatalf("envelope above the total cap: %v, want ErrMailboxFull", err)
			}
		})
	}
}

func TestMailboxCursorRejects(t *testing.T) {
	db, _ := openTest(t)
	for _, c := range [][]byte{{1}, {2, 0, 0, 0, 0, 0, 0, 0, 1}, make([]byte, MailboxCursorSize+1)} {
		mustView(t, db, func(tx *Tx) error {
			if _, err := tx.MailboxQuery([][32]byte{mbxTag(1)}, c, 0, 0, mbxNow); !errors.Is(err, ErrBadCursor) {
				t.Errorf("cursor %x: %v, want ErrBadCursor", c, err)
			}
			return nil
		})
	}
	if s, err := ParseMailboxCursor(MailboxCursor(^uint64(0))); err != nil || s != ^uint64(0) {
		t.Fatalf("max cursor: %d, %v", s, err)
	}
	mustMbxPut(t, db, mbxEnvelope(mbxTag(1), 1, 10, time.Hour))
	if p := mbxQuery(t, db, [][32]byte{mbxTag(1)}, MailboxCursor(^uint64(0)), 0, mbxNow); len(p.Entries) != 0 {
		t.Fatal("max cursor returned entries")
	}
}

func TestMailboxReadOnly(t *testing.T) {
	db, _ := openTest(t)
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.MailboxPut(mbxEnvelope(mbxTag(1), 1, 10, time.Hour), mbxNow, MailboxLimits{}); !errors.Is(err, ErrReadOnly) {
			t.Errorf("put in View: %v", err)
		}
		if _, err := tx.MailboxSweep(mbxNow); !errors.Is(err, ErrReadOnly) {
			t.Errorf("sweep in View: %v", err)
		}
		return nil
	})
}

func TestMailboxSchemaUpgrade(t *testing.T) {
	// A database made before the mailbox existed gains its buckets on open.
	db := upgrade(t, openAtSchema(t, 1))
	mustMbxPut(t, db, mbxEnvelope(mbxTag(1), 1, 10, time.Hour))
}

func FuzzParseMailboxCursor(f *testing.F) {
	f.Add([]byte{})
	f.Add(MailboxCursor(42))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, c []byte) {
		seq, err := ParseMailboxCursor(c)
		if err != nil {
			return
		}
		if len(c) != 0 && !bytes.Equal(MailboxCursor(seq), c) {
			t.Fatalf("cursor %x parses to %d, which encodes as %x", c, seq, MailboxCursor(seq))
		}
	})
}

func TestMailboxPeek(t *testing.T) {
	db, _ := openTest(t)
	envs := [][]byte{
		mbxEnvelope(mbxTag(1), 1, 100, time.Hour),
		mbxEnvelope(mbxTag(2), 2, 200, time.Hour),
		mbxEnvelope(mbxTag(1), 3, 300, time.Hour),
	}
	for _, e := range envs {
		mustMbxPut(t, db, e)
	}
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.MailboxPeek(2)
		if err != nil {
			return err
		}
		if len(got) != 2 || !bytes.Equal(got[0].Envelope, envs[0]) || !bytes.Equal(got[1].Envelope, envs[1]) || got[1].Tag != mbxTag(2) {
			t.Errorf("MailboxPeek(2) = %+v", got)
		}
		all, err := tx.MailboxPeek(10)
		if err != nil || len(all) != 3 || all[0].Seq >= all[2].Seq {
			t.Errorf("MailboxPeek(10) = %d entries, %v", len(all), err)
		}
		return nil
	})
}
