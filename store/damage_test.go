package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// damagedStore writes a store of 3,000 messages, closes it and returns its
// file's path.
func damagedStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	addContacts(t, db, 3)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 1; i <= 3000; i++ {
			m := Message{ID: msgID(uint64(i)), Contact: acct(byte(1 + i%3)), Direction: Incoming, Body: benchBody, ReceivedAt: t0}
			if _, err := tx.AppendMessage(m); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	return filepath.Join(dir, FileName)
}

// readAll reads every message and contact of the store in dir.
func readAll(dir string, opts ...Option) error {
	db, err := Open(dir, opts...)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *Tx) error {
		if _, err := tx.ListContacts(); err != nil {
			return err
		}
		_, err := tx.ListMessages(nil, 0, 1<<20)
		return err
	})
}

// TestTruncatedStore: a database file cut short is refused at Open with
// ErrCorrupt naming the truncation; nothing panics.
func TestTruncatedStore(t *testing.T) {
	for _, cut := range []func(used int64) int64{
		func(used int64) int64 { return used / 2 },
		func(used int64) int64 { return used - 4096 },
		func(int64) int64 { return 3 * 4096 },
	} {
		path := damagedStore(t)
		var used int64
		db, err := Open(filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		mustView(t, db, func(tx *Tx) error { used = tx.tx.Size(); return nil })
		db.Close()
		size := cut(used)
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		err = readAll(filepath.Dir(path))
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("a store of %d bytes truncated to %d: %v, want ErrCorrupt", used, size, err)
		}
		t.Logf("truncated to %d of %d bytes: %v", size, used, err)
	}
}

// TestDamagedPages: pages overwritten with garbage are reported as errors
// (wrapping ErrCorrupt where bbolt would panic), by reads and by Check;
// nothing panics.
func TestDamagedPages(t *testing.T) {
	for _, fill := range []byte{0x00, 0xff, 0x5a} {
		path := damagedStore(t)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		const page = 4096
		n := len(b) / page
		for p := n / 3; p < n/3+3; p++ {
			for i := p * page; i < (p+1)*page; i++ {
				b[i] = fill
			}
		}
		if err := os.WriteFile(path, b, FileMode); err != nil {
			t.Fatal(err)
		}
		err = readAll(filepath.Dir(path))
		t.Logf("fill %#x: read: %v", fill, err)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("fill %#x: read: %v, want ErrCorrupt", fill, err)
		}
		db, err := Open(filepath.Dir(path))
		if err != nil {
			t.Logf("fill %#x: open: %v", fill, err)
			continue
		}
		quick := db.OpenProblems()
		cerr := db.Check()
		db.Close()
		t.Logf("fill %#x: check: %.300v", fill, cerr)
		if cerr == nil {
			t.Errorf("fill %#x: Check found nothing", fill)
		}
		if len(quick) == 0 {
			t.Errorf("fill %#x: the quick check at Open found nothing", fill)
		}
	}
}

// TestQuickCheckAtOpen: every Open runs the quick check. It finds nothing
// in an intact store; with an index entry of a message and of an outbox
// entry removed behind the store's back, the next Open lists both (the
// store still opens and reads its intact records), and Check names them.
func TestQuickCheckAtOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 1; i <= 20; i++ {
			if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(1), Direction: Outgoing, Body: []byte("text")}); err != nil {
				return err
			}
			if err := tx.PutOutbox(OutboxEntry{MsgID: msgID(uint64(i)), Contact: acct(1), Kind: OutboxMessage, Created: t0, NextAttempt: t0}); err != nil {
				return err
			}
		}
		return nil
	})
	if p := db.OpenProblems(); len(p) != 0 {
		t.Fatalf("a new store: %q", p)
	}
	db.Close()
	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p := db.OpenProblems(); len(p) != 0 {
		t.Fatalf("an intact store: %q", p)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		a := acct(1)
		if err := tx.tx.Bucket(bucketConv).Delete(convKey(a, 7)); err != nil {
			return err
		}
		c := tx.tx.Bucket(bucketOutboxDue).Cursor()
		k, _ := c.First()
		return tx.tx.Bucket(bucketOutboxDue).Delete(k)
	})
	db.Close()
	db, err = Open(dir)
	if err != nil {
		t.Fatalf("a store with two index entries missing does not open: %v", err)
	}
	defer db.Close()
	p := strings.Join(db.OpenProblems(), "\n")
	for _, want := range []string{"20 messages but 19 conversation index entries", "20 outbox entries but 19 due index entries"} {
		if !strings.Contains(p, want) {
			t.Errorf("the quick check does not say %q:\n%s", want, p)
		}
	}
	if st, err := db.Stats(); err != nil || len(st.Problems) != 2 {
		t.Errorf("Stats: %v problems (%v), want the 2 of the quick check", st.Problems, err)
	}
	if err := db.Check(); err == nil || !strings.Contains(err.Error(), "seq 8 follows 6") {
		t.Errorf("Check: %v", err)
	}
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetMessage(msgID(9)); err != nil {
			t.Errorf("an intact message: %v", err)
		}
		return nil
	})
}

// TestCheckListsDamagedRecords: in an encrypted store, Check names each
// damaged record (bucket and key), not only the first, while the
// undamaged records still read.
func TestCheckListsDamagedRecords(t *testing.T) {
	db := mustOpenSealed(t, filepath.Join(t.TempDir(), "data"), "pw")
	addContacts(t, db, 3)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 1; i <= 10; i++ {
			if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(1), Direction: Outgoing, Body: []byte("text")}); err != nil {
				return err
			}
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Fatalf("intact: %v", err)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		for _, d := range []struct {
			bucket, key []byte
		}{{bucketMessages, idBytes(3)}, {bucketMessages, idBytes(7)}} {
			b := tx.tx.Bucket(d.bucket)
			v := bytes.Clone(b.Get(d.key))
			v[len(v)-1] ^= 1
			if err := b.Put(d.key, v); err != nil {
				return err
			}
		}
		return nil
	})
	err := db.Check()
	if err == nil {
		t.Fatal("Check found nothing")
	}
	for _, want := range []string{fmt.Sprintf("messages record %x", msgID(3)), fmt.Sprintf("messages record %x", msgID(7))} {
		if !strings.Contains(err.Error(), want[:len("messages record ")+24]) {
			t.Errorf("Check does not name %q:\n%v", want, err)
		}
	}
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetMessage(msgID(5)); err != nil {
			t.Errorf("an intact message: %v", err)
		}
		if _, err := tx.ListContacts(); err != nil {
			t.Errorf("contacts: %v", err)
		}
		return nil
	})
}

func idBytes(n uint64) []byte { id := msgID(n); return id[:] }

// TestPlainRecordChecksums: in a store without a passphrase, one flipped
// byte in a message's text is reported as ErrCorrupt, never shown, and
// Check names the record. A store written before checksums existed gains
// them when it is opened (the schema migration "record checksums").
func TestPlainRecordChecksums(t *testing.T) {
	skipIfSealed(t)
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		_, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Incoming, Body: []byte("meet at noon")})
		return err
	})
	mustUpdate(t, db, func(tx *Tx) error {
		b := tx.tx.Bucket(bucketMessages)
		v := bytes.Clone(b.Get(idBytes(1)))
		i := bytes.Index(v, []byte("noon"))
		v[i] = 'm' // "meet at moon": still a well-formed record
		return b.Put(idBytes(1), v)
	})
	err := db.View(func(tx *Tx) error {
		m, err := tx.GetMessage(msgID(1))
		if err == nil {
			t.Errorf("the altered text was shown: %q", m.Body)
		}
		return err
	})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("altered message: %v, want ErrCorrupt", err)
	}
	if err := db.Check(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("messages record %x", idBytes(1)[:12])) {
		t.Errorf("Check: %v", err)
	}

	old := openAtSchema(t, schemaBefore(t, migrationSums))
	mustUpdate(t, old, func(tx *Tx) error {
		if err := tx.AddContact(contact("c001", 1)); err != nil {
			return err
		}
		_, err := tx.AppendMessage(Message{ID: msgID(2), Contact: acct(1), Direction: Incoming, Body: []byte("before sums")})
		return err
	})
	mustView(t, old, func(tx *Tx) error {
		if _, err := unmarshalMessage(tx.tx.Bucket(bucketMessages).Get(idBytes(2))); err != nil {
			t.Errorf("a record before the migration has something after it: %v", err)
		}
		return nil
	})
	up := upgrade(t, old)
	mustView(t, up, func(tx *Tx) error {
		m, err := tx.GetMessage(msgID(2))
		if err != nil || string(m.Body) != "before sums" {
			t.Errorf("after the migration: %q, %v", m.Body, err)
		}
		return nil
	})
	if err := up.Check(); err != nil {
		t.Errorf("Check after the migration: %v", err)
	}
}

// TestRecordSumKnownAnswer pins the record checksum: CRC-32C (Castagnoli)
// over len(bucket) (1 byte), bucket, uvarint len(key), key and value,
// appended big-endian.
func TestRecordSumKnownAnswer(t *testing.T) {
	name, key, v := []byte("messages"), []byte("key-1"), []byte("hello, world")
	msg := append([]byte{byte(len(name))}, name...)
	msg = append(append(append(msg, byte(len(key))), key...), v...)
	want := crc32.Checksum(msg, crc32.MakeTable(crc32.Castagnoli))
	if got := recordSum(name, key, v); got != want || got != 0xbf1de041 {
		t.Fatalf("recordSum = %08x, want %08x (pinned bf1de041)", got, want)
	}
	s := appendSum(name, key, v)
	if !bytes.Equal(s[:len(v)], v) || binary.BigEndian.Uint32(s[len(v):]) != want {
		t.Fatalf("appendSum = %x", s)
	}
	if body, err := stripSum(name, key, s); err != nil || !bytes.Equal(body, v) {
		t.Fatalf("stripSum: %q, %v", body, err)
	}
	for _, bad := range [][]byte{s[:3], append(bytes.Clone(s[:len(s)-1]), s[len(s)-1]^1)} {
		if _, err := stripSum(name, key, bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("stripSum(%x): %v", bad, err)
		}
	}
	if _, err := stripSum([]byte("outbox"), key, s); !errors.Is(err, ErrCorrupt) {
		t.Errorf("another bucket: %v", err)
	}
}

// TestDamagedMessageConfined: with two message records damaged (one
// flipped byte each), plain and encrypted, a listing of the conversation
// and of all conversations still returns every message: the two come
// back Damaged, with their ID, contact and both sequence numbers and none
// of their text, and the rest as written. Paging by GlobalSeq
// (ConvCursor) goes past them, and the transaction is not failed.
func TestDamagedMessageConfined(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		t.Run(fmt.Sprintf("sealed=%v", sealed), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			var db *DB
			if sealed {
				db = mustOpenSealed(t, dir, "pw")
			} else {
				var err error
				if db, err = Open(dir); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { db.Close() })
			}
			addContacts(t, db, 2)
			mustUpdate(t, db, func(tx *Tx) error {
				for i := 1; i <= 10; i++ {
					// Messages 1, 3, 5… to contact 1, the others to 2.
					if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(byte(2 - i%2)), Direction: Outgoing,
						Body: []byte(fmt.Sprintf("text %d", i))}); err != nil {
						return err
					}
				}
				return nil
			})
			mustUpdate(t, db, func(tx *Tx) error {
				for _, i := range []uint64{3, 7} {
					b := tx.tx.Bucket(bucketMessages)
					v := bytes.Clone(b.Get(idBytes(i)))
					v[len(v)-1] ^= 1
					if err := b.Put(idBytes(i), v); err != nil {
						return err
					}
				}
				return nil
			})
			a := acct(1)
			mustView(t, db, func(tx *Tx) error {
				conv, err := tx.ListMessages(&a, 0, 100)
				if err != nil {
					t.Fatalf("a conversation with damaged records: %v", err)
				}
				all, err := tx.ListMessages(nil, 0, 100)
				if err != nil {
					t.Fatalf("all conversations: %v", err)
				}
				if len(conv) != 5 || len(all) != 10 {
					t.Fatalf("%d and %d messages listed, want 5 and 10", len(conv), len(all))
				}
				for _, m := range append(conv, all...) {
					n := binary.BigEndian.Uint64(m.ID[8:])
					damaged := n == 3 || n == 7
					wantContact := acct(byte(2 - n%2))
					switch {
					case m.Damaged != damaged:
						t.Errorf("message %d: damaged %v", n, m.Damaged)
					case damaged && (m.Body != nil || m.Contact != wantContact || m.GlobalSeq != n || m.Seq != (n+1)/2):
						t.Errorf("damaged message %d: %+v", n, m)
					case !damaged && string(m.Body) != fmt.Sprintf("text %d", n):
						t.Errorf("message %d: %q", n, m.Body)
					}
				}
				// Paging by GlobalSeq: after message 3 (damaged), the
				// conversation goes on at message 5.
				seq, err := tx.ConvCursor(a, 3)
				if err != nil || seq != 2 {
					t.Errorf("ConvCursor after a damaged message: %d, %v; want 2", seq, err)
				}
				return nil
			})
		})
	}
}

// TestDamagedContactConfined: with one contact's record damaged, plain
// and encrypted, the contact list holds the other two and the store goes
// on working; the damage is reported once through WithOnDamage however
// often it is met, and Stats lists it.
func TestDamagedContactConfined(t *testing.T) {
	for _, sealed := range []bool{false, true} {
		t.Run(fmt.Sprintf("sealed=%v", sealed), func(t *testing.T) {
			var reported []error
			opts := []Option{WithOnDamage(func(err error) { reported = append(reported, err) })}
			if sealed {
				opts = append(opts, WithPassphrase([]byte("pw")), WithKDF(testKDF))
			}
			db, err := Open(filepath.Join(t.TempDir(), "data"), opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			addContacts(t, db, 3)
			a := acct(2)
			mustUpdate(t, db, func(tx *Tx) error {
				rb, err := tx.bucket(bucketContacts)
				if err != nil {
					return err
				}
				sk, err := rb.storedKey(a[:], false)
				if err != nil {
					return err
				}
				b := tx.tx.Bucket(bucketContacts)
				v := bytes.Clone(b.Get(sk))
				v[len(v)/2] ^= 1
				return b.Put(sk, v)
			})
			for range 2 {
				mustView(t, db, func(tx *Tx) error {
					cs, err := tx.ListContacts()
					if err != nil {
						t.Fatalf("contacts with one damaged: %v", err)
					}
					if len(cs) != 2 || cs[0].Account == a || cs[1].Account == a {
						t.Errorf("listed %d contacts, want the 2 intact ones", len(cs))
					}
					return nil
				})
			}
			if len(reported) != 1 || !errors.Is(reported[0], ErrCorrupt) || !strings.Contains(reported[0].Error(), fmt.Sprintf("contacts record %x", a[:12])) {
				t.Errorf("reported %v, want the damaged contact once", reported)
			}
			st, err := db.Stats()
			if err != nil || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "contacts record") {
				t.Errorf("Stats problems %q (%v)", st.Problems, err)
			}
			// A check that must see every contact fails on it instead,
			// and whether it is a contact is still known.
			mustView(t, db, func(tx *Tx) error {
				if has, err := tx.HasContact(a); !has || err != nil {
					t.Errorf("HasContact of the damaged contact: %v, %v", has, err)
				}
				return nil
			})
			if err := db.View(func(tx *Tx) error { _, err := tx.ListEveryContact(); return err }); !errors.Is(err, ErrCorrupt) {
				t.Errorf("ListEveryContact: %v, want ErrCorrupt", err)
			}
			// The store goes on: another contact is added and read.
			mustUpdate(t, db, func(tx *Tx) error { return tx.AddContact(contact("c004", 4)) })
			mustView(t, db, func(tx *Tx) error {
				if _, err := tx.GetContact(acct(4)); err != nil {
					t.Errorf("a contact added after: %v", err)
				}
				return nil
			})
		})
	}
}

// TestDamageReportedOnce: 30 damaged messages, listed three times, are
// reported once each, and Stats names 20 of them and counts the rest.
func TestDamageReportedOnce(t *testing.T) {
	reported := 0
	db, err := Open(filepath.Join(t.TempDir(), "data"), WithOnDamage(func(error) { reported++ }))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 1; i <= 40; i++ {
			if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(1), Direction: Outgoing, Body: []byte("text")}); err != nil {
				return err
			}
		}
		b := tx.tx.Bucket(bucketMessages)
		for i := 1; i <= 30; i++ {
			v := bytes.Clone(b.Get(idBytes(uint64(i))))
			v[len(v)-1] ^= 1
			if err := b.Put(idBytes(uint64(i)), v); err != nil {
				return err
			}
		}
		return nil
	})
	for range 3 {
		mustView(t, db, func(tx *Tx) error {
			ms, err := tx.ListMessages(nil, 0, 100)
			if err != nil || len(ms) != 40 {
				t.Fatalf("listed %d messages (%v), want 40", len(ms), err)
			}
			return nil
		})
	}
	if reported != 30 {
		t.Errorf("%d reports, want one for each of the 30 damaged records", reported)
	}
	st, err := db.Stats()
	if err != nil || len(st.Problems) != 21 || !strings.Contains(st.Problems[20], "and 10 more") {
		t.Errorf("Stats problems: %d (%v), last %q", len(st.Problems), err, st.Problems[len(st.Problems)-1])
	}
}
