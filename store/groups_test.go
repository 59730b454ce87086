package store

import (
	"errors"
	"testing"
	"time"
)

// A group's record, operations, keys and messages come back as stored;
// messages in display order (lamport, message ID) whatever order they
// were stored in; a message ID twice is a duplicate.
func TestGroupRecords(t *testing.T) {
	db, _ := openTest(t)
	var g [32]byte
	g[0] = 7
	grp := Group{ID: g, Secrets: []GroupSecret{{Secret: acct(9)}, {Secret: acct(8), Replaced: t0}}, SenderKey: []byte("key"), Lamport: 4, Seq: 2, Joined: t0}
	msgs := []GroupMessage{
		{ID: msgID(1), Group: g, Sender: acct(2), Lamport: 5, Seq: 1, Type: 1, Body: []byte("late"), SentAt: t0, ReceivedAt: t0},
		{ID: msgID(2), Group: g, Sender: acct(1), Lamport: 1, Seq: 1, Type: 1, Body: []byte("first"), Outgoing: true,
			Recipients: [][32]byte{acct(2), acct(3)}, Receipts: [][32]byte{acct(3)}, Envelope: []byte("env")},
		{ID: msgID(3), Group: g, Sender: acct(1), Lamport: 5, Seq: 2, Type: 1, Body: []byte("tie")},
	}
	err := db.Update(func(tx *Tx) error {
		if err := tx.PutGroup(grp); err != nil {
			return err
		}
		var h1, h2 [32]byte
		h1[0], h2[0] = 2, 1
		if err := tx.PutGroupOp(g, 1, h1, []byte("child")); err != nil {
			return err
		}
		if err := tx.PutGroupOp(g, 0, h2, []byte("create")); err != nil {
			return err
		}
		if err := tx.PutGroupKey(g, [16]byte{1}, []byte("k1")); err != nil {
			return err
		}
		for _, m := range msgs {
			if err := tx.PutGroupMessage(m); err != nil {
				return err
			}
		}
		if err := tx.PutGroupMessage(msgs[0]); !errors.Is(err, ErrDuplicate) {
			t.Errorf("the same message again: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		got, err := tx.GetGroup(g)
		if err != nil || len(got.Secrets) != 2 || got.Secrets[1].Replaced != t0 || got.Lamport != 4 || string(got.SenderKey) != "key" {
			t.Errorf("group: %+v %v", got, err)
		}
		ops, _ := tx.GroupOps(g)
		if len(ops) != 2 || string(ops[0]) != "create" {
			t.Errorf("ops not parents first: %q", ops)
		}
		ks, _ := tx.GroupKeys(g)
		if len(ks) != 1 || string(ks[0]) != "k1" {
			t.Errorf("keys: %q", ks)
		}
		ms, err := tx.GroupMessages(g, 0, 10)
		if err != nil || len(ms) != 3 {
			t.Fatalf("messages: %d, %v", len(ms), err)
		}
		for i, want := range []string{"first", "late", "tie"} {
			if string(ms[i].Body) != want {
				t.Errorf("message %d is %q, want %q", i, ms[i].Body, want)
			}
		}
		if m, _ := tx.GetGroupMessage(g, msgID(2)); len(m.Recipients) != 2 || m.Receipts[0] != acct(3) || string(m.Envelope) != "env" {
			t.Errorf("outgoing message: %+v", m)
		}
		if _, err := tx.GetGroupMessage(g, msgID(9)); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown message: %v", err)
		}
		return nil
	})
}

// Sender keys for unknown groups are bounded: past the limit the oldest
// goes; taking a group's keys removes them.
func TestPendingGroupKeysBounded(t *testing.T) {
	db, _ := openTest(t)
	err := db.Update(func(tx *Tx) error {
		for i := range MaxPendingGroupKeys + 10 {
			var g [32]byte
			g[0], g[1] = byte(i), byte(i>>8)
			dist := make([]byte, 100)
			dist[32], dist[99] = byte(i), byte(i)
			if err := tx.PutPendingGroupKey(g, acct(1), dist, t0.Add(time.Duration(i)*time.Second)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *Tx) error {
		var first, last [32]byte
		last[0] = MaxPendingGroupKeys + 9
		if got, _ := tx.TakePendingGroupKeys(first); len(got) != 0 {
			t.Errorf("the oldest pending key was kept past the limit")
		}
		got, err := tx.TakePendingGroupKeys(last)
		if err != nil || len(got[acct(1)]) != 100 || got[acct(1)][99] != MaxPendingGroupKeys+9 {
			t.Errorf("the newest pending key: %v %v", got, err)
		}
		if again, _ := tx.TakePendingGroupKeys(last); len(again) != 0 {
			t.Errorf("a taken key is still there")
		}
		return nil
	})
}

// A resend schedule reads back as written, its deposited flag included;
// a record with an unknown flag is reported corrupt, not guessed at.
func TestGroupResendRecords(t *testing.T) {
	db, _ := openTest(t)
	var g [32]byte
	g[0] = 3
	rs := []GroupResend{
		{Group: g, ID: msgID(1), Epoch: 20000, Next: t0, Wait: 5 * time.Second, Topic: "/sotto/group/1/aa"},
		{Group: g, ID: msgID(2), Epoch: 20001, Next: t0.Add(time.Minute), Wait: 15 * time.Second, Topic: "/sotto/group/1/bb", Deposited: true},
	}
	if err := db.Update(func(tx *Tx) error {
		for _, r := range rs {
			if err := tx.PutGroupResend(r); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		got, err := tx.GroupResends()
		if err != nil || len(got) != 2 {
			t.Fatalf("resends: %+v, %v", got, err)
		}
		for i := range rs {
			if !got[i].Next.Equal(rs[i].Next) {
				t.Errorf("resend %d next %v, want %v", i, got[i].Next, rs[i].Next)
			}
			got[i].Next = rs[i].Next
			if got[i] != rs[i] {
				t.Errorf("resend %d read back as %+v, want %+v", i, got[i], rs[i])
			}
		}
		return nil
	})
	if err := db.Update(func(tx *Tx) error {
		b, err := tx.wbucket(bucketGroupUnacked)
		if err != nil {
			return err
		}
		v, id := concat(be64(1), be64(1), be64(1), []byte{0x80}, []byte("t")), msgID(3)
		return b.Put(concat(g[:], id[:]), v)
	}); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		if _, err := tx.GroupResends(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("a record with an unknown flag: %v, want ErrCorrupt", err)
		}
		return nil
	})
}

// TestGroupOpenedRecords: which message a (sender key, iteration) carried
// reads back for its group only, is pruned once older than the cutoff
// (and only then, at most the limit per call), and a record of the wrong
// size is reported as damage.
func TestGroupOpenedRecords(t *testing.T) {
	db, _ := openTest(t)
	var g, other [32]byte
	g[0], other[0] = 1, 2
	key := [16]byte{9}
	if err := db.Update(func(tx *Tx) error {
		for it := range uint32(3) {
			if err := tx.PutGroupOpened(g, key, it, msgID(uint64(it)), t0.Add(time.Duration(it)*time.Hour)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	read := func(g [32]byte, it uint32) ([16]byte, bool) {
		t.Helper()
		var id [16]byte
		var ok bool
		if err := db.View(func(tx *Tx) (err error) {
			id, ok, err = tx.GroupOpened(g, key, it)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return id, ok
	}
	if id, ok := read(g, 1); !ok || id != msgID(1) {
		t.Fatalf("iteration 1: %x %v, want %x", id, ok, msgID(1))
	}
	if _, ok := read(other, 1); ok {
		t.Fatal("another group's lookup found the record")
	}
	if _, ok := read(g, 3); ok {
		t.Fatal("an iteration never opened was found")
	}
	// Older than t0+90min: iterations 0 and 1, one per call.
	for i, want := range []int{1, 1, 0} {
		var n int
		if err := db.Update(func(tx *Tx) (err error) {
			n, err = tx.PruneGroupOpened(t0.Add(90*time.Minute), 1)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("prune %d deleted %d, want %d", i, n, want)
		}
	}
	for it, want := range []bool{false, false, true} {
		if _, ok := read(g, uint32(it)); ok != want {
			t.Errorf("iteration %d kept %v after the prune, want %v", it, ok, want)
		}
	}
	if err := db.Update(func(tx *Tx) error {
		b, err := tx.wbucket(bucketGroupOpened)
		if err != nil {
			return err
		}
		return b.Put(concat(g[:], key[:], []byte{0, 0, 0, 7}), []byte("short"))
	}); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		if _, _, err := tx.GroupOpened(g, key, 7); !errors.Is(err, ErrCorrupt) {
			t.Errorf("a record of the wrong size: %v, want ErrCorrupt", err)
		}
		return nil
	})
}
