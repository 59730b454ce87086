package store

import (
	"errors"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// sample records, one per record type, with every optional part set.
func sampleRecords(t testing.TB) map[string][]byte {
	t.Helper()
	c := contact("alice", 1)
	c.KeyChange = &KeyChange{Account: acct(2), DeviceCert: []byte("nc"), Detected: t0}
	c.Verified, c.IsRequest = true, true
	id := Identity{Name: "me", Keystore: "ks", Account: acct(3), PeerID: "p", Created: t0}
	m := Message{ID: msgID(1), Contact: acct(1), Direction: Outgoing, Type: 1, Body: []byte("body"),
		SentAt: t0, ReceivedAt: t0.Add(time.Second), State: StateStored, Via: ViaMailbox, StoredAt: 3, Seq: 9, GlobalSeq: 300}
	o := entry(1, t0)
	o.Attempts, o.Mailboxes = 2, 4
	out := map[string][]byte{}
	var err error
	if out["contact"], err = c.marshal(); err != nil {
		t.Fatal(err)
	}
	if out["identity"], err = id.marshal(); err != nil {
		t.Fatal(err)
	}
	if out["message"], err = m.marshal(); err != nil {
		t.Fatal(err)
	}
	if out["outbox"], err = o.marshal(); err != nil {
		t.Fatal(err)
	}
	return out
}

// decodeAny decodes b as the named record type and re-encodes the result.
func decodeAny(kind string, b []byte) (any, func() ([]byte, error), error) {
	switch kind {
	case "contact":
		v, err := unmarshalContact(b)
		return v, v.marshal, err
	case "identity":
		v, err := unmarshalIdentity(b)
		return v, v.marshal, err
	case "message":
		v, err := unmarshalMessage(b)
		return v, v.marshal, err
	case "outbox":
		v, err := unmarshalOutbox(b)
		return v, v.marshal, err
	}
	panic(kind)
}

func TestCorruptedRecordsDecodeToErrors(t *testing.T) {
	for kind, good := range sampleRecords(t) {
		t.Run(kind, func(t *testing.T) {
			if _, _, err := decodeAny(kind, good); err != nil {
				t.Fatalf("valid record: %v", err)
			}
			// Every truncation fails.
			for n := range len(good) {
				if _, _, err := decodeAny(kind, good[:n]); !errors.Is(err, ErrCorrupt) {
					t.Errorf("truncated to %d: %v", n, err)
				}
			}
			// Trailing bytes fail.
			if _, _, err := decodeAny(kind, append(append([]byte{}, good...), 0)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("trailing byte: %v", err)
			}
			// Unknown record version fails.
			bad := append([]byte{}, good...)
			bad[0] = 2
			if _, _, err := decodeAny(kind, bad); !errors.Is(err, ErrCorrupt) {
				t.Errorf("version 2: %v", err)
			}
			// A huge length prefix fails without allocating it.
			huge := append([]byte{recordV1}, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F)
			if _, _, err := decodeAny(kind, huge); !errors.Is(err, ErrCorrupt) {
				t.Errorf("huge length: %v", err)
			}
			// Flipping any single byte never panics.
			for i := range good {
				flip := append([]byte{}, good...)
				flip[i] ^= 0xFF
				decodeAny(kind, flip)
			}
		})
	}
}

func TestCorruptRecordInDatabase(t *testing.T) {
	skipIfSealed(t)
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		_, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Outgoing, Body: []byte("hello")})
		if err != nil {
			return err
		}
		return tx.PutOutbox(entry(1, t0))
	})
	// Damage the records behind the store's back.
	id1, a1 := msgID(1), acct(1)
	if err := db.bolt().Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMessages)
		v := append([]byte{}, m.Get(id1[:])...)
		if err := m.Put(id1[:], v[:len(v)-3]); err != nil {
			return err
		}
		if err := tx.Bucket(bucketOutbox).Put(id1[:], []byte{recordV1, 1}); err != nil {
			return err
		}
		return tx.Bucket(bucketContacts).Put(a1[:], []byte{9, 9, 9})
	}); err != nil {
		t.Fatal(err)
	}
	// A damaged record fails the transaction that meets it with
	// ErrCorrupt (the record checksum or the decoder finds it), whatever
	// the accessor itself returned.
	for name, read := range map[string]func(tx *Tx) error{
		"GetMessage":       func(tx *Tx) error { _, err := tx.GetMessage(msgID(1)); return err },
		"DueOutbox":        func(tx *Tx) error { _, err := tx.DueOutbox(t0, 0); return err },
		"GetContact":       func(tx *Tx) error { _, err := tx.GetContact(acct(1)); return err },
		"ListEveryContact": func(tx *Tx) error { _, err := tx.ListEveryContact(); return err },
	} {
		if err := db.View(read); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Listings confine it: the message comes back marked, the contact is
	// left out.
	mustView(t, db, func(tx *Tx) error {
		if ms, err := tx.ListMessages(nil, 0, 0); err != nil || len(ms) != 1 || !ms[0].Damaged || ms[0].Body != nil {
			t.Errorf("ListMessages: %+v, %v; want the message marked damaged", ms, err)
		}
		if cs, err := tx.ListContacts(); err != nil || len(cs) != 0 {
			t.Errorf("ListContacts: %d, %v; want none", len(cs), err)
		}
		return nil
	})
	if err := db.Check(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Check: %v", err)
	}
}

func TestCheckFindsBrokenIndexes(t *testing.T) {
	skipIfSealed(t)
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range uint64(3) {
			if _, err := tx.AppendMessage(Message{ID: msgID(i), Contact: acct(1), Direction: Outgoing}); err != nil {
				return err
			}
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
	// Remove the middle conversation entry: a gap.
	if err := db.bolt().Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketConv).Delete(convKey(acct(1), 2))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Check(); err == nil {
		t.Fatal("Check missed a gap in a conversation")
	}
}

func TestTimeEncoding(t *testing.T) {
	for _, tm := range []time.Time{{}, t0, time.Date(1900, 1, 1, 0, 0, 0, 1, time.UTC), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if got := nanosToTime(timeToNanos(tm)); !got.Equal(tm) || got.IsZero() != tm.IsZero() {
			t.Errorf("%v round-trips to %v", tm, got)
		}
	}
	a, b := timeKey(time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)), timeKey(t0)
	if string(a) >= string(b) {
		t.Error("timeKey does not order times before 1970 first")
	}
}

// FuzzDecodeRecords checks that no input panics a decoder, and that
// anything that decodes re-encodes to a record that decodes to the same
// value.
func FuzzDecodeRecords(f *testing.F) {
	kinds := []string{"contact", "identity", "message", "outbox"}
	for i, kind := range kinds {
		f.Add(uint8(i), sampleRecords(f)[kind])
		f.Add(uint8(i), []byte{recordV1})
	}
	f.Fuzz(func(t *testing.T, k uint8, b []byte) {
		kind := kinds[int(k)%len(kinds)]
		v, remarshal, err := decodeAny(kind, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		b2, err := remarshal()
		if err != nil {
			return // decodes but violates a write-side rule (e.g. a name)
		}
		v2, _, err := decodeAny(kind, b2)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", v, v2)
		}
	})
}
