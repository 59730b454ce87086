package store

import (
	"errors"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// recv builds an incoming message from contact n with PeerSeq seq; its ID
// is derived from both, and it arrives at t0 plus at.
func recv(n byte, seq uint64, at time.Duration) Message {
	return Message{
		ID: msgID(uint64(n)<<32 | seq), Contact: acct(n), Direction: Incoming, Type: 1,
		Body: []byte{byte(seq)}, SentAt: t0, ReceivedAt: t0.Add(at), PeerSeq: seq,
	}
}

func peerSeqs(ms []Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.PeerSeq)
	}
	return out
}

// receiveAll feeds messages to ReceiveMessage one transaction each and
// returns the PeerSeqs shown by each call.
func receiveAll(t *testing.T, db *DB, ms ...Message) [][]uint64 {
	t.Helper()
	var out [][]uint64
	for _, m := range ms {
		mustUpdate(t, db, func(tx *Tx) error {
			shown, err := tx.ReceiveMessage(m)
			out = append(out, peerSeqs(shown))
			return err
		})
	}
	return out
}

// conversation returns the PeerSeqs of contact n's conversation in Seq
// order.
func conversation(t *testing.T, db *DB, n byte) []uint64 {
	t.Helper()
	var out []uint64
	mustView(t, db, func(tx *Tx) error {
		a := acct(n)
		ms, err := tx.ListMessages(&a, 0, MaxPageSize)
		out = peerSeqs(ms)
		return err
	})
	return out
}

func checkDB(t *testing.T, db *DB) {
	t.Helper()
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestReceiveMessageReorders(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	got := receiveAll(t, db, recv(1, 3, 0), recv(1, 1, 0), recv(2, 1, 0), recv(1, 4, 0), recv(1, 2, 0), recv(1, 5, 0))
	want := [][]uint64{nil, {1}, {1}, nil, {2, 3, 4}, {5}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("shown per call %v, want %v", got, want)
	}
	if c := conversation(t, db, 1); !slices.Equal(c, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("conversation %v", c)
	}
	checkDB(t, db)

	// A held message is already a duplicate: a second copy is refused,
	// and nothing is held any more.
	mustUpdate(t, db, func(tx *Tx) error {
		if _, err := tx.ReceiveMessage(recv(1, 3, 0)); !errors.Is(err, ErrDuplicate) {
			t.Errorf("duplicate of a shown message: %v", err)
		}
		if n, err := tx.HeldCount(); err != nil || n != 0 {
			t.Errorf("held %d, %v", n, err)
		}
		return nil
	})
}

func TestReceiveMessageHeldIsDuplicate(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	receiveAll(t, db, recv(1, 2, 0))
	mustUpdate(t, db, func(tx *Tx) error {
		if _, err := tx.ReceiveMessage(recv(1, 2, time.Second)); !errors.Is(err, ErrDuplicate) {
			t.Errorf("duplicate of a held message: %v", err)
		}
		m, err := tx.GetMessage(recv(1, 2, 0).ID)
		if err != nil || m.Seq != 0 || m.PeerSeq != 2 {
			t.Errorf("held message %+v, %v", m, err)
		}
		return nil
	})
	if c := conversation(t, db, 1); len(c) != 0 {
		t.Fatalf("a held message is listed: %v", c)
	}
	checkDB(t, db)
}

func TestReceiveMessageUnorderedAndLate(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	// PeerSeq 0 (no order known) is shown at once, even with a gap open.
	got := receiveAll(t, db, recv(1, 2, 0), recv(1, 0, 0))
	if !slices.EqualFunc(got, [][]uint64{nil, {0}}, slices.Equal) {
		t.Fatalf("shown %v", got)
	}
	// The wait for 1 ends; 2 is shown; 1 arrives late and is shown at the
	// end; a repeated sequence number with a new ID is shown too.
	var released []uint64
	mustUpdate(t, db, func(tx *Tx) error {
		ms, err := tx.ReleaseHeld(t0)
		released = peerSeqs(ms)
		return err
	})
	if !slices.Equal(released, []uint64{2}) {
		t.Fatalf("released %v", released)
	}
	dup := recv(1, 2, 0)
	dup.ID = msgID(999)
	got = receiveAll(t, db, recv(1, 1, time.Minute), dup, recv(1, 3, time.Minute))
	if !slices.EqualFunc(got, [][]uint64{{1}, {2}, {3}}, slices.Equal) {
		t.Fatalf("shown %v", got)
	}
	if c := conversation(t, db, 1); !slices.Equal(c, []uint64{0, 2, 1, 2, 3}) {
		t.Fatalf("conversation %v", c)
	}
	checkDB(t, db)
}

func TestReleaseHeld(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	// Contact 1: 1 missing; 2 and 3 arrived early, 5 late (4 missing).
	// Contact 2: 1 missing; 2 arrived late.
	receiveAll(t, db, recv(1, 3, 0), recv(1, 2, time.Second), recv(1, 5, 10*time.Second), recv(2, 2, 10*time.Second))
	mustView(t, db, func(tx *Tx) error {
		at, ok, err := tx.NextRelease()
		if err != nil || !ok || !at.Equal(t0) {
			t.Errorf("NextRelease = %v %v %v, want %v", at, ok, err, t0)
		}
		return nil
	})
	release := func(cutoff time.Duration) []uint64 {
		var out []uint64
		mustUpdate(t, db, func(tx *Tx) error {
			ms, err := tx.ReleaseHeld(t0.Add(cutoff))
			out = peerSeqs(ms)
			return err
		})
		return out
	}
	if r := release(-time.Second); len(r) != 0 {
		t.Fatalf("released %v before anything was due", r)
	}
	// Only 3 is due, but 2 is below it: both go, in order; 5 stays.
	if r := release(0); !slices.Equal(r, []uint64{2, 3}) {
		t.Fatalf("released %v, want [2 3]", r)
	}
	// 4 arrives: 4 and 5 are shown together.
	if got := receiveAll(t, db, recv(1, 4, 11*time.Second)); !slices.Equal(got[0], []uint64{4, 5}) {
		t.Fatalf("shown %v", got)
	}
	if r := release(time.Hour); !slices.Equal(r, []uint64{2}) {
		t.Fatalf("released %v, want contact 2's message", r)
	}
	mustView(t, db, func(tx *Tx) error {
		if _, ok, err := tx.NextRelease(); ok || err != nil {
			t.Errorf("NextRelease with nothing held: %v %v", ok, err)
		}
		return nil
	})
	if c := conversation(t, db, 1); !slices.Equal(c, []uint64{2, 3, 4, 5}) {
		t.Fatalf("conversation %v", c)
	}
	checkDB(t, db)
}

func TestReceiveMessageExtremeSequence(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	const top = ^uint64(0)
	receiveAll(t, db, recv(1, top, 0))
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.ReleaseHeld(t0); return err })
	// Everything after the largest sequence is late, and shown at once.
	got := receiveAll(t, db, recv(1, 1, 0), recv(1, top-1, 0))
	if !slices.EqualFunc(got, [][]uint64{{1}, {top - 1}}, slices.Equal) {
		t.Fatalf("shown %v", got)
	}
	checkDB(t, db)
}

func TestOutgoingPeerSeq(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	var seqs []uint64
	mustUpdate(t, db, func(tx *Tx) error {
		for i, c := range []byte{1, 1, 2, 1} {
			m, err := tx.AppendMessage(Message{ID: msgID(uint64(i + 1)), Contact: acct(c), Direction: Outgoing})
			if err != nil {
				return err
			}
			seqs = append(seqs, m.PeerSeq)
		}
		// A caller-given PeerSeq is kept and does not move the counter.
		m, err := tx.AppendMessage(Message{ID: msgID(9), Contact: acct(2), Direction: Outgoing, PeerSeq: 7})
		if err != nil || m.PeerSeq != 7 {
			t.Errorf("given PeerSeq: %+v %v", m, err)
		}
		return nil
	})
	if !slices.Equal(seqs, []uint64{1, 2, 1, 3}) {
		t.Fatalf("PeerSeqs %v", seqs)
	}
	mustView(t, db, func(tx *Tx) error {
		m, err := tx.GetMessage(msgID(4))
		if err != nil || m.PeerSeq != 3 {
			t.Errorf("stored %+v %v", m, err)
		}
		return nil
	})
}

func TestKeyChangeRestartsOrder(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	receiveAll(t, db, recv(1, 1, 0), recv(1, 3, 0))
	mustUpdate(t, db, func(tx *Tx) error {
		_, err := tx.AppendMessage(Message{ID: msgID(50), Contact: acct(1), Direction: Outgoing})
		return err
	})
	mustUpdate(t, db, func(tx *Tx) error {
		c, err := tx.GetContact(acct(1))
		if err != nil {
			return err
		}
		c.KeyChange = &KeyChange{Account: acct(9), DeviceCert: c.DeviceCert, Detected: t0}
		if err := tx.PutContact(c); err != nil {
			return err
		}
		_, err = tx.AcceptKeyChange(acct(1))
		return err
	})
	// The held message was shown and moved; the new identity's first
	// message (PeerSeq 1) is shown at once, and ours to it is number 1.
	if c := conversation(t, db, 9); !slices.Equal(c, []uint64{1, 1, 3}) {
		t.Fatalf("moved conversation %v", c)
	}
	got := receiveAll(t, db, recv(9, 1, 0))
	if !slices.Equal(got[0], []uint64{1}) {
		t.Fatalf("shown %v", got)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		m, err := tx.AppendMessage(Message{ID: msgID(51), Contact: acct(9), Direction: Outgoing})
		if err != nil || m.PeerSeq != 1 {
			t.Errorf("first message to the new identity: %+v %v", m, err)
		}
		return nil
	})
	checkDB(t, db)
}

// TestOrderSchemaUpgrade: a schema 2 database with messages opens under
// schema 3 with every message intact and PeerSeq 0.
func TestOrderSchemaUpgrade(t *testing.T) {
	skipIfSealed(t)
	old := openAtSchema(t, 2)
	addContacts(t, old, 1)
	m := Message{ID: msgID(1), Contact: acct(1), Direction: Incoming, Type: 1, Body: []byte("old"),
		SentAt: t0, ReceivedAt: t0, State: StateReceived, Seq: 1, GlobalSeq: 1}
	v, err := m.marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := old.bolt().Update(func(tx *bolt.Tx) error {
		// A schema 2 record is the schema 3 one without its last field.
		if err := tx.Bucket(bucketMessages).Put(m.ID[:], v[:len(v)-1]); err != nil {
			return err
		}
		if err := tx.Bucket(bucketConv).Put(convKey(m.Contact, 1), m.ID[:]); err != nil {
			return err
		}
		if err := tx.Bucket(bucketConvSeq).Put(m.Contact[:], be64(1)); err != nil {
			return err
		}
		return tx.Bucket(bucketGlobal).Put(be64(1), m.ID[:])
	}); err != nil {
		t.Fatal(err)
	}
	db := upgrade(t, old)
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetMessage(m.ID)
		if err != nil || string(got.Body) != "old" || got.PeerSeq != 0 || got.Seq != 1 {
			t.Errorf("after upgrade %+v, %v", got, err)
		}
		return nil
	})
	checkDB(t, db)
	if got := receiveAll(t, db, recv(1, 1, 0)); !slices.Equal(got[0], []uint64{1}) {
		t.Fatalf("shown %v", got)
	}
}
