package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

// TestSnapshotConsistent: a snapshot taken while writers commit is one
// transaction's view: it opens with the passphrase, passes Check, and
// holds a whole number of the writers' two-message transactions. A plain
// store is not copied.
func TestSnapshotConsistent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db := mustOpenSealed(t, dir, "pw")
	addContacts(t, db, 2)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); ; i += 2 {
			select {
			case <-stop:
				return
			default:
			}
			err := db.Update(func(tx *Tx) error {
				for j := uint64(0); j < 2; j++ {
					m := Message{ID: msgID(i + j), Contact: acct(1), Direction: Outgoing, Body: []byte(fmt.Sprint(i + j))}
					if _, err := tx.AppendMessage(m); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	snaps := filepath.Join(t.TempDir(), "snaps")
	for i := range 5 {
		sd := filepath.Join(snaps, fmt.Sprint(i))
		if err := prepareDir(sd); err != nil {
			t.Fatal(err)
		}
		if err := db.Snapshot(filepath.Join(sd, FileName)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	for i := range 5 {
		sd := filepath.Join(snaps, fmt.Sprint(i))
		if _, err := Open(sd, WithPassphrase(nil)); !errors.Is(err, ErrPassphraseRequired) {
			t.Fatalf("snapshot without the passphrase: %v", err)
		}
		s := mustOpenSealed(t, sd, "pw")
		if err := s.Check(); err != nil {
			t.Errorf("snapshot %d: %v", i, err)
		}
		st, err := s.Stats()
		if err != nil || st.Messages%2 != 0 || st.Contacts != 2 {
			t.Errorf("snapshot %d: %+v, %v", i, st, err)
		}
		s.Close()
	}
	if sealedSuite {
		return
	}
	plain, _ := openTest(t)
	if err := plain.Snapshot(filepath.Join(t.TempDir(), FileName)); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("snapshot of a plain store: %v", err)
	}
}

// TestForgetSessions: a restored store keeps contacts and history but no
// session, alternate session or tag, and its outbox's sealed envelopes go.
func TestForgetSessions(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	mustUpdate(t, db, func(tx *Tx) error {
		for _, a := range [][32]byte{acct(1), acct(2)} {
			if err := tx.PutSession(a, []byte("state")); err != nil {
				return err
			}
			if err := tx.PutAltSession(a, []byte("alt"), t0); err != nil {
				return err
			}
		}
		if err := tx.PutTag([32]byte{9}, acct(1), 5); err != nil {
			return err
		}
		m, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Outgoing, Body: []byte("queued")})
		if err != nil {
			return err
		}
		if err := tx.PutOutbox(OutboxEntry{MsgID: m.ID, Contact: acct(1), Envelope: []byte("sealed"), Kind: OutboxMessage,
			Created: t0, NextAttempt: t0, Expires: t0.Add(1e12)}); err != nil {
			return err
		}
		return tx.PutOutbox(OutboxEntry{MsgID: msgID(2), Contact: acct(1), Envelope: []byte("receipt"), Kind: OutboxReceipt,
			Created: t0, NextAttempt: t0, Expires: t0.Add(1e12)})
	})
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.ForgetSessions()
		if n != 2 {
			t.Errorf("forgot %d sessions", n)
		}
		return err
	})
	mustView(t, db, func(tx *Tx) error {
		for _, a := range [][32]byte{acct(1), acct(2)} {
			if _, err := tx.GetSession(a); !errors.Is(err, ErrNotFound) {
				t.Errorf("session: %v", err)
			}
			if alt, err := tx.GetAltSession(a); alt != nil || err != nil {
				t.Errorf("alternate session: %q %v", alt, err)
			}
		}
		if _, _, err := tx.LookupTag([32]byte{9}); !errors.Is(err, ErrNotFound) {
			t.Errorf("tag: %v", err)
		}
		e, err := tx.GetOutbox(msgID(1))
		if err != nil || e.Envelope != nil {
			t.Errorf("queued message: %+v, %v", e, err)
		}
		if _, err := tx.GetOutbox(msgID(2)); !errors.Is(err, ErrNotFound) {
			t.Errorf("receipt: %v", err)
		}
		if ms, err := tx.ListMessages(nil, 0, 10); err != nil || len(ms) != 1 {
			t.Errorf("history: %d, %v", len(ms), err)
		}
		return nil
	})
}
