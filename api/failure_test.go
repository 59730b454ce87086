package api_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/node"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/store"
)

// TestNodeBackendFailReasonExpired: a message that no device or mailbox
// took before it expired fails in the outbox; the state event and the
// listing both say so with fail_reason "expired".
func TestNodeBackendFailReasonExpired(t *testing.T) {
	ctx := testkit.Context(t, time.Minute)
	bob := openNode(t, "bob") // never on the network
	dir := filepath.Join(t.TempDir(), "alice")
	if _, err := node.Init(dir, "alice", nil); err != nil {
		t.Fatal(err)
	}
	// Messages expire at once: the outbox's first look at one fails it.
	alice, err := node.Open(node.Config{DataDir: dir, ListenAddrs: p2ptest.LoopbackAddrs,
		NoMDNS: true, NoNAT: true, MessageTTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alice.Close() })
	if err := alice.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b := api.NodeBackend(alice)
	if _, err := b.AddContact(ctx, "bob", inviteOf(t, bob)); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := b.Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := b.Send(ctx, "bob", "too late")
	if err != nil {
		t.Fatal(err)
	}
	if m.State != api.StateQueued || m.FailReason != "" {
		t.Fatalf("sent message %+v, want queued without a fail reason", m)
	}
	for done := false; !done; {
		select {
		case ev := <-events:
			if ev.Message == nil || ev.Message.ID != m.ID || ev.Message.State != api.StateFailed {
				continue
			}
			if ev.Type != api.EventState || ev.Message.FailReason != api.FailExpired {
				t.Errorf("failure event %s %+v, want a state event with fail_reason expired", ev.Type, ev.Message)
			}
			done = true
		case <-ctx.Done():
			t.Fatal("no failure event")
		}
	}
	ms, err := b.Messages(ctx, api.MessageQuery{Contact: "bob"})
	if err != nil || len(ms) != 1 {
		t.Fatalf("Messages = %+v, %v", ms, err)
	}
	if ms[0].State != api.StateFailed || ms[0].FailReason != api.FailExpired {
		t.Errorf("listed %+v, want failed with fail_reason expired", ms[0])
	}
}

// TestNodeBackendFailReasonKeyChanged: accepting a contact's new key when
// the new key wrote first leaves the copy of each waiting message under
// the old key failed (the node queues it again to the new key); such a
// message, listed under the old key's fingerprint, has fail_reason
// "key_changed". The store is set up here as that acceptance leaves it:
// the old account no longer a contact, its waiting message failed.
func TestNodeBackendFailReasonKeyChanged(t *testing.T) {
	ctx := testkit.Context(t, time.Minute)
	bob := openNode(t, "bob")
	dir := filepath.Join(t.TempDir(), "alice")
	if _, err := node.Init(dir, "alice", nil); err != nil {
		t.Fatal(err)
	}
	open := func() *node.Node {
		t.Helper()
		n, err := node.Open(node.Config{DataDir: dir, NoMDNS: true, NoNAT: true})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	alice := open()
	b := api.NodeBackend(alice)
	if _, err := b.AddContact(ctx, "bob", inviteOf(t, bob)); err != nil {
		t.Fatal(err)
	}
	failed, err := b.Send(ctx, "bob", "to the old key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Send(ctx, "bob", "still waiting"); err != nil {
		t.Fatal(err)
	}
	sent, err := alice.Messages("bob", 0, 10)
	if err != nil || len(sent) != 2 {
		t.Fatalf("alice's messages: %d, %v", len(sent), err)
	}
	alice.Close()

	db, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *store.Tx) error {
		if _, _, err := tx.SetMessageState(sent[0].ID, store.StateFailed); err != nil {
			return err
		}
		return tx.DeleteContact(bob.Identity().Account)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	alice = open()
	defer alice.Close()
	b = api.NodeBackend(alice)
	ms, err := b.Messages(ctx, api.MessageQuery{})
	if err != nil || len(ms) != 2 {
		t.Fatalf("Messages = %+v, %v", ms, err)
	}
	if m := ms[0]; m.ID != failed.ID || m.State != api.StateFailed || m.FailReason != api.FailKeyChanged || m.Contact != bob.Identity().Fingerprint {
		t.Errorf("the old key's copy: %+v, want failed with fail_reason key_changed, under %s", m, bob.Identity().Fingerprint)
	}
	if m := ms[1]; m.State != api.StateQueued || m.FailReason != "" {
		t.Errorf("a message still waiting: %+v, want queued without a fail reason", m)
	}
}
