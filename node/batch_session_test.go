package node

import (
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// TestInboundBatchRefusesSessionStoredBehindIt: an inbound batch that
// holds a session never commits over a state of it that another writer
// stored in the same transaction. Whatever that writer sealed took a
// place in the chain the batch's copy does not know of; overwriting it
// would have the batch seal there again (two messages under one message
// key, and one of them dropped by the peer). After release, the batch
// takes the session again and sees the other writer's state.
func TestInboundBatchRefusesSessionStoredBehindIt(t *testing.T) {
	tn := newTestNet(t)
	alice := tn.start(tn.initNode("alice"))
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 60*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello bob"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	acct := storedContact(t, bob, "alice").Account
	now := bob.now()

	// sealBehind seals a message on the session as stored, as code that
	// takes sessions on its own does, and stores it.
	sealBehind := func(tx *store.Tx) {
		t.Helper()
		s, _, err := bob.takeSession(tx, acct)
		if err != nil || s == nil {
			t.Fatalf("takeSession: %v, %v", s, err)
		}
		if err := bob.queueControl(tx, s, acct, protocol.ContentReceipt, make([]byte, protocol.MessageIDSize), now); err != nil {
			t.Fatal(err)
		}
		if err := bob.putSession(tx, s, now); err != nil {
			t.Fatal(err)
		}
	}

	err := bob.db.Update(func(tx *store.Tx) error {
		rc := &ingestBatch{}
		s, err := rc.session(bob, tx, acct)
		if err != nil || s == nil {
			t.Fatalf("batch session: %v, %v", s, err)
		}
		sealBehind(tx)
		rc.changed(s)
		return rc.flush(bob, tx, now)
	})
	if err == nil || !strings.Contains(err.Error(), "stored behind") {
		t.Fatalf("flush over a session stored behind the batch: %v, want a refusal", err)
	}

	var sealed, again []byte
	if err := bob.db.Update(func(tx *store.Tx) error {
		rc := &ingestBatch{}
		if _, err := rc.session(bob, tx, acct); err != nil {
			return err
		}
		if err := rc.release(bob, tx, now); err != nil {
			return err
		}
		sealBehind(tx)
		sealed, _ = tx.GetSession(acct)
		s, err := rc.session(bob, tx, acct)
		if err != nil {
			return err
		}
		again, _ = s.MarshalBinary()
		rc.changed(s)
		return rc.flush(bob, tx, now)
	}); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if string(sealed) != string(again) {
		t.Error("after release the batch took an older state of the session than the one stored")
	}
}
