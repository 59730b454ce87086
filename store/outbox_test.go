package store

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func entry(n uint64, next time.Time) OutboxEntry {
	return OutboxEntry{
		MsgID: msgID(n), Contact: acct(1), Envelope: []byte{byte(n), 1, 2, 3}, Kind: OutboxMessage,
		Created: t0, NextAttempt: next, Expires: t0.Add(14 * 24 * time.Hour),
	}
}

func TestOutboxOrderingAndDue(t *testing.T) {
	db, _ := openTest(t)
	// Insert out of order, including ties and a time before 1970.
	offsets := map[uint64]time.Duration{1: 5 * time.Second, 2: 1 * time.Second, 3: 3 * time.Second, 4: 1 * time.Second, 5: 10 * time.Second}
	mustUpdate(t, db, func(tx *Tx) error {
		for n, d := range offsets {
			if err := tx.PutOutbox(entry(n, t0.Add(d))); err != nil {
				return err
			}
		}
		old := entry(6, time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC))
		old.Kind = OutboxReceipt
		return tx.PutOutbox(old)
	})
	ids := func(es []OutboxEntry) []uint64 {
		var out []uint64
		for _, e := range es {
			out = append(out, uint64(e.MsgID[15]))
		}
		return out
	}
	mustView(t, db, func(tx *Tx) error {
		due, err := tx.DueOutbox(t0.Add(3*time.Second), 0)
		if err != nil {
			return err
		}
		if got := ids(due); !reflect.DeepEqual(got, []uint64{6, 2, 4, 3}) {
			t.Errorf("due order %v, want [6 2 4 3]", got)
		}
		due, _ = tx.DueOutbox(t0.Add(time.Hour), 2)
		if got := ids(due); !reflect.DeepEqual(got, []uint64{6, 2}) {
			t.Errorf("limited %v", got)
		}
		if due, _ := tx.DueOutbox(t0, 0); len(due) != 1 {
			t.Errorf("nothing but the 1960 entry is due at t0: %v", ids(due))
		}
		if n, _ := tx.PendingCount(); n != 6 {
			t.Errorf("pending %d", n)
		}
		next, ok, err := tx.NextOutboxAttempt()
		if err != nil || !ok || next.Year() != 1960 {
			t.Errorf("NextOutboxAttempt %v %v %v", next, ok, err)
		}
		return nil
	})
	// Reschedule 6 far ahead and delete 2: the index follows.
	mustUpdate(t, db, func(tx *Tx) error {
		e, err := tx.GetOutbox(msgID(6))
		if err != nil {
			return err
		}
		e.Attempts++
		e.Mailboxes = 3
		e.NextAttempt = t0.Add(time.Minute)
		if err := tx.PutOutbox(e); err != nil {
			return err
		}
		if ok, err := tx.DeleteOutbox(msgID(2)); !ok || err != nil {
			t.Errorf("delete: %v %v", ok, err)
		}
		if ok, err := tx.DeleteOutbox(msgID(2)); ok || err != nil {
			t.Errorf("delete twice: %v %v", ok, err)
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		due, _ := tx.DueOutbox(t0.Add(time.Hour), 0)
		if got := ids(due); !reflect.DeepEqual(got, []uint64{4, 3, 1, 5, 6}) {
			t.Errorf("after reschedule %v", got)
		}
		e, err := tx.GetOutbox(msgID(6))
		if err != nil || e.Attempts != 1 || e.Mailboxes != 3 || e.Kind != OutboxReceipt || !bytes.Equal(e.Envelope, []byte{6, 1, 2, 3}) {
			t.Errorf("GetOutbox %+v %v", e, err)
		}
		if _, err := tx.GetOutbox(msgID(2)); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted entry: %v", err)
		}
		if n, _ := tx.PendingCount(); n != 5 {
			t.Errorf("pending %d", n)
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestOutboxRoundTripAndLimits(t *testing.T) {
	db, _ := openTest(t)
	want := entry(1, t0)
	want.Attempts, want.Mailboxes = 7, 2
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutOutbox(want) })
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetOutbox(want.MsgID)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		next, ok, _ := tx.NextOutboxAttempt()
		if !ok || !next.Equal(t0) {
			t.Errorf("next %v", next)
		}
		return nil
	})
	// The delete token rides at the end, and only when it is known: an
	// entry without one decodes as before, a cut token is refused.
	withTok := entry(3, t0)
	withTok.DeleteToken = [32]byte{1, 2, 3, 31: 9}
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutOutbox(withTok) })
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetOutbox(withTok.MsgID)
		if err != nil || !reflect.DeepEqual(got, withTok) {
			t.Errorf("with a delete token: got %+v (%v), want %+v", got, err, withTok)
		}
		return nil
	})
	b, err := withTok.marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unmarshalOutbox(b[:len(b)-5]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a cut delete token: %v, want ErrCorrupt", err)
	}
	bad := []OutboxEntry{
		{MsgID: msgID(2), Kind: OutboxReceipt}, // receipts have no message record to seal from
		{MsgID: msgID(2), Kind: OutboxMessage, Envelope: make([]byte, MaxEnvelopeSize+1)},
		{MsgID: msgID(2), Kind: 9, Envelope: []byte{1}},
		{MsgID: msgID(2), Kind: OutboxMessage, Envelope: []byte{1}, Attempts: -1},
	}
	for i, e := range bad {
		if err := db.Update(func(tx *Tx) error { return tx.PutOutbox(e) }); err == nil {
			t.Errorf("bad entry %d accepted", i)
		}
	}
	empty, _ := openTest(t)
	mustView(t, empty, func(tx *Tx) error {
		if _, ok, err := tx.NextOutboxAttempt(); ok || err != nil {
			t.Errorf("empty outbox: %v %v", ok, err)
		}
		return nil
	})
}

func TestSettingsAndCursors(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		if _, ok, err := tx.GetUint64(SettingNextPrekeyID); ok || err != nil {
			t.Errorf("unset integer: %v %v", ok, err)
		}
		for want := uint64(1); want <= 3; want++ {
			if got, err := tx.NextBundleSeq(); got != want || err != nil {
				t.Errorf("NextBundleSeq = %d %v, want %d", got, err, want)
			}
		}
		if err := tx.PutUint64(SettingNextPrekeyID, 1<<40); err != nil {
			return err
		}
		if err := tx.PutSetting("empty", nil); err != nil {
			return err
		}
		if err := tx.PutSetting("blob", []byte("value")); err != nil {
			return err
		}
		if err := tx.PutSetting("", []byte("x")); err == nil {
			t.Error("empty setting name accepted")
		}
		if err := tx.PutSetting("big", make([]byte, MaxSettingSize+1)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("oversized setting: %v", err)
		}
		if c, err := tx.GetSyncCursor("mb1"); c != nil || err != nil {
			t.Errorf("no cursor yet: %v %v", c, err)
		}
		if err := tx.PutSyncCursor("mb1", []byte("c1")); err != nil {
			return err
		}
		if err := tx.PutSyncCursor("mb2", []byte{}); err != nil {
			return err
		}
		if err := tx.PutSyncCursor("mb3", make([]byte, MaxCursorSize+1)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("oversized cursor: %v", err)
		}
		if err := tx.PutSyncCursor("", nil); err == nil {
			t.Error("empty mailbox ID accepted")
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		if v, ok, _ := tx.GetUint64(SettingNextPrekeyID); !ok || v != 1<<40 {
			t.Errorf("GetUint64 = %d %v", v, ok)
		}
		if v, ok, _ := tx.GetUint64(SettingBundleSeq); !ok || v != 3 {
			t.Errorf("bundle seq = %d", v)
		}
		if v, err := tx.GetSetting("empty"); err != nil || len(v) != 0 {
			t.Errorf("empty setting: %v %v", v, err)
		}
		if v, _ := tx.GetSetting("blob"); string(v) != "value" {
			t.Errorf("blob %q", v)
		}
		if _, _, err := tx.GetUint64("blob"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("non-integer read as integer: %v", err)
		}
		if err := tx.DeleteSetting("blob"); err != nil {
			return err
		}
		if _, err := tx.GetSetting("blob"); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted setting: %v", err)
		}
		if c, _ := tx.GetSyncCursor("mb1"); string(c) != "c1" {
			t.Errorf("cursor %q", c)
		}
		if c, err := tx.GetSyncCursor("mb2"); c == nil || len(c) != 0 || err != nil {
			t.Errorf("empty cursor %v %v", c, err)
		}
		if err := tx.DeleteSyncCursor("mb1"); err != nil {
			return err
		}
		if c, _ := tx.GetSyncCursor("mb1"); c != nil {
			t.Errorf("deleted cursor %q", c)
		}
		return nil
	})
}

func TestOutboxUnsealedEntry(t *testing.T) {
	db, _ := openTest(t)
	e := OutboxEntry{MsgID: msgID(7), Contact: acct(1), Kind: OutboxMessage, NextAttempt: time.Unix(100, 0)}
	if err := db.Update(func(tx *Tx) error { return tx.PutOutbox(e) }); err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx *Tx) error {
		got, err := tx.GetOutbox(e.MsgID)
		if err != nil {
			return err
		}
		if got.Envelope != nil || got.Kind != OutboxMessage || got.Contact != e.Contact {
			t.Errorf("unsealed entry read back as %+v", got)
		}
		due, err := tx.DueOutbox(time.Unix(200, 0), 10)
		if err != nil || len(due) != 1 {
			t.Errorf("DueOutbox = %v, %v", due, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOutboxFor(t *testing.T) {
	db, _ := openTest(t)
	t0 := time.Unix(1000, 0)
	// Written out of order, for two contacts, with due times unrelated to
	// creation.
	for _, e := range []OutboxEntry{
		{MsgID: msgID(3), Contact: acct(1), Kind: OutboxMessage, Created: t0.Add(3), NextAttempt: t0},
		{MsgID: msgID(1), Contact: acct(1), Kind: OutboxMessage, Created: t0.Add(1), NextAttempt: t0.Add(9)},
		{MsgID: msgID(2), Contact: acct(2), Kind: OutboxMessage, Created: t0.Add(2), NextAttempt: t0},
		{MsgID: msgID(4), Contact: acct(1), Kind: OutboxReceipt, Envelope: []byte{1}, Created: t0.Add(2), NextAttempt: t0.Add(5)},
	} {
		if err := db.Update(func(tx *Tx) error { return tx.PutOutbox(e) }); err != nil {
			t.Fatal(err)
		}
	}
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.OutboxFor(acct(1), 0)
		if err != nil {
			return err
		}
		var ids []byte
		for _, e := range got {
			if e.Contact != acct(1) {
				t.Errorf("entry for another contact: %+v", e)
			}
			ids = append(ids, e.MsgID[15])
		}
		if want := []byte{msgID(1)[15], msgID(4)[15], msgID(3)[15]}; !bytes.Equal(ids, want) {
			t.Errorf("order %v, want %v", ids, want)
		}
		if got, _ := tx.OutboxFor(acct(1), 2); len(got) != 2 {
			t.Errorf("limit 2 gave %d", len(got))
		}
		if got, _ := tx.OutboxFor(acct(9), 0); len(got) != 0 {
			t.Errorf("unknown contact gave %d", len(got))
		}
		return nil
	})
}

func TestUndepositedFor(t *testing.T) {
	db, _ := openTest(t)
	t0 := time.Unix(1000, 0)
	for _, e := range []OutboxEntry{
		{MsgID: msgID(1), Contact: acct(1), Kind: OutboxMessage, Created: t0.Add(1), NextAttempt: t0},                                    // unsealed
		{MsgID: msgID(2), Contact: acct(1), Kind: OutboxMessage, Envelope: []byte{2}, Created: t0.Add(2), NextAttempt: t0, Mailboxes: 3}, // deposited
		{MsgID: msgID(3), Contact: acct(1), Kind: OutboxMessage, Envelope: []byte{3}, Created: t0.Add(4), NextAttempt: t0},
		{MsgID: msgID(4), Contact: acct(1), Kind: OutboxReceipt, Envelope: []byte{4}, Created: t0.Add(3), NextAttempt: t0},
		{MsgID: msgID(5), Contact: acct(2), Kind: OutboxMessage, Envelope: []byte{5}, Created: t0.Add(1), NextAttempt: t0}, // other contact
		{MsgID: msgID(6), Contact: acct(1), Kind: OutboxMessage, Envelope: []byte{6}, Created: t0.Add(9), NextAttempt: t0}, // too new
	} {
		if err := db.Update(func(tx *Tx) error { return tx.PutOutbox(e) }); err != nil {
			t.Fatal(err)
		}
	}
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.UndepositedFor(acct(1), t0.Add(5), 0)
		if err != nil {
			return err
		}
		var ids []byte
		for _, e := range got {
			ids = append(ids, e.MsgID[15])
		}
		if want := []byte{msgID(4)[15], msgID(3)[15]}; !bytes.Equal(ids, want) {
			t.Errorf("UndepositedFor = %v, want %v", ids, want)
		}
		if got, _ := tx.UndepositedFor(acct(1), t0.Add(5), 1); len(got) != 1 || got[0].MsgID != msgID(4) {
			t.Errorf("limit 1 gave %+v", got)
		}
		return nil
	})
}
