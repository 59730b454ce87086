package store

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestSessions(t *testing.T) {
	db, _ := openTest(t)
	state := bytes.Repeat([]byte{7}, 5000)
	mustUpdate(t, db, func(tx *Tx) error {
		if err := tx.PutSession(acct(1), state); err != nil {
			return err
		}
		return tx.PutSession(acct(2), []byte("two"))
	})
	var got []byte
	mustView(t, db, func(tx *Tx) error {
		var err error
		got, err = tx.GetSession(acct(1))
		return err
	})
	// The returned slice must outlive the transaction.
	if !bytes.Equal(got, state) {
		t.Fatal("session state changed")
	}
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutSession(acct(1), []byte("new")) })
	mustUpdate(t, db, func(tx *Tx) error {
		if s, err := tx.GetSession(acct(1)); err != nil || string(s) != "new" {
			t.Errorf("replace: %q %v", s, err)
		}
		if err := tx.DeleteSession(acct(1)); err != nil {
			return err
		}
		if err := tx.DeleteSession(acct(99)); err != nil {
			t.Errorf("deleting a missing session: %v", err)
		}
		if _, err := tx.GetSession(acct(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted session: %v", err)
		}
		if s, _ := tx.GetSession(acct(2)); string(s) != "two" {
			t.Errorf("other session affected")
		}
		return nil
	})
	for _, bad := range [][]byte{nil, make([]byte, MaxSessionSize+1)} {
		if err := db.Update(func(tx *Tx) error { return tx.PutSession(acct(3), bad) }); err == nil {
			t.Errorf("session of %d bytes accepted", len(bad))
		}
	}
}

func tagN(n byte) [32]byte {
	var t [32]byte
	t[0], t[31] = 0x7A, n
	return t
}

func TestTagsLookupAndPrune(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		for e := uint64(100); e < 110; e++ {
			if err := tx.PutTag(tagN(byte(e)), acct(byte(e%3+1)), e); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		a, e, err := tx.LookupTag(tagN(105))
		if err != nil || a != acct(105%3+1) || e != 105 {
			t.Errorf("LookupTag = %x %d %v", a[:1], e, err)
		}
		if _, _, err := tx.LookupTag(tagN(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown tag: %v", err)
		}
		return nil
	})
	// Re-putting a tag with a newer epoch moves it in the prune index.
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutTag(tagN(100), acct(9), 200) })
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.PruneTags(105)
		if err != nil {
			return err
		}
		if n != 4 { // 101..104; 100 now has epoch 200
			t.Errorf("pruned %d, want 4", n)
		}
		for e := 100; e < 110; e++ {
			_, _, err := tx.LookupTag(tagN(byte(e)))
			gone := errors.Is(err, ErrNotFound)
			if wantGone := e > 100 && e < 105; gone != wantGone {
				t.Errorf("tag %d: gone=%v want %v", e, gone, wantGone)
			}
		}
		if a, e, _ := tx.LookupTag(tagN(100)); a != acct(9) || e != 200 {
			t.Errorf("re-put tag = %x %d", a[:1], e)
		}
		n, err = tx.PruneTags(105)
		if n != 0 || err != nil {
			t.Errorf("second prune: %d %v", n, err)
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestPrekeys(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		for id := uint32(1); id <= 5; id++ {
			if err := tx.PutPrekey(PrekeyOneTimeDH, id, []byte{byte(id)}); err != nil {
				return err
			}
			if err := tx.PutPrekey(PrekeyOneTimeKEM, id+100, bytes.Repeat([]byte{byte(id)}, 64)); err != nil {
				return err
			}
		}
		if err := tx.PutPrekey(PrekeySignedDH, 1, []byte("signed")); err != nil {
			return err
		}
		return tx.PutPrekey(PrekeyLastResort, 0xFFFFFFFF, []byte("lr"))
	})
	mustUpdate(t, db, func(tx *Tx) error {
		if n, _ := tx.CountPrekeys(PrekeyOneTimeDH); n != 5 {
			t.Errorf("count %d, want 5", n)
		}
		ok, err := tx.ConsumePrekey(PrekeyOneTimeDH, 3)
		if !ok || err != nil {
			t.Errorf("consume existing: %v %v", ok, err)
		}
		ok, err = tx.ConsumePrekey(PrekeyOneTimeDH, 3)
		if ok || err != nil {
			t.Errorf("consume twice: %v %v", ok, err)
		}
		if ok, _ := tx.ConsumePrekey(PrekeyOneTimeKEM, 3); ok {
			t.Errorf("kinds are not separate")
		}
		ids, _ := tx.PrekeyIDs(PrekeyOneTimeDH)
		if len(ids) != 4 || ids[0] != 1 || ids[2] != 4 {
			t.Errorf("ids %v", ids)
		}
		if ids, _ := tx.PrekeyIDs(PrekeyLastResort); len(ids) != 1 || ids[0] != 0xFFFFFFFF {
			t.Errorf("last resort ids %v", ids)
		}
		if v, err := tx.GetPrekey(PrekeySignedDH, 1); err != nil || string(v) != "signed" {
			t.Errorf("GetPrekey %q %v", v, err)
		}
		if _, err := tx.GetPrekey(PrekeyOneTimeDH, 3); !errors.Is(err, ErrNotFound) {
			t.Errorf("consumed prekey readable: %v", err)
		}
		if err := tx.DeletePrekey(PrekeySignedDH, 1); err != nil {
			return err
		}
		if n, _ := tx.CountPrekeys(PrekeySignedDH); n != 0 {
			t.Errorf("signed prekey not deleted")
		}
		if err := tx.PutPrekey(PrekeyKind(9), 1, []byte("x")); err == nil {
			t.Errorf("unknown kind accepted")
		}
		if err := tx.PutPrekey(PrekeySignedDH, 1, nil); err == nil {
			t.Errorf("empty prekey accepted")
		}
		if err := tx.PutPrekey(PrekeySignedDH, 1, make([]byte, MaxPrekeySize+1)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("oversized prekey: %v", err)
		}
		return nil
	})
}

func TestConsumePrekeyRollsBack(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutPrekey(PrekeyOneTimeDH, 1, []byte("k")) })
	_ = db.Update(func(tx *Tx) error {
		tx.ConsumePrekey(PrekeyOneTimeDH, 1)
		return errors.New("session setup failed")
	})
	mustView(t, db, func(tx *Tx) error {
		if n, _ := tx.CountPrekeys(PrekeyOneTimeDH); n != 1 {
			t.Errorf("prekey consumed by a failed transaction")
		}
		return nil
	})
}

func TestInitialReplayMarks(t *testing.T) {
	db, _ := openTest(t)
	var id1, id2, id3 [32]byte
	id1[0], id2[0], id3[0] = 1, 2, 3
	mustUpdate(t, db, func(tx *Tx) error {
		for i, id := range [][32]byte{id1, id2, id3} {
			already, err := tx.MarkInitialSeen(id, t0.Add(time.Duration(i)*time.Hour))
			if err != nil || already {
				t.Errorf("first mark: %v %v", already, err)
			}
		}
		already, err := tx.MarkInitialSeen(id1, t0.Add(100*time.Hour))
		if err != nil || !already {
			t.Errorf("replay not detected: %v %v", already, err)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		n, err := tx.PruneInitialSeen(t0.Add(90 * time.Minute))
		if err != nil || n != 2 {
			t.Errorf("pruned %d %v, want 2", n, err)
		}
		for id, want := range map[[32]byte]bool{id1: false, id2: false, id3: true} {
			if got, _ := tx.InitialSeen(id); got != want {
				t.Errorf("InitialSeen(%x) = %v", id[0], got)
			}
		}
		return nil
	})
}
