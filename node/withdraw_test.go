package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// TestWithdrawalKeptUntilAnsweredOrExpired: a withdrawal is recorded only
// for an envelope of the sender's own that a version 2 mailbox holds, and
// at most MaxWithdrawalsPerContact of them per contact; one whose mailbox
// does not answer stays in the store, across a restart, and is tried
// again WithdrawRetry later (not at every kick), until its envelope
// expires, when it is dropped.
func TestWithdrawalKeptUntilAnsweredOrExpired(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	var ahead atomic.Int64
	clock := func(c *Config) { c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) } }
	dir := tn.initNode("alice")
	alice := tn.start(dir, clock)
	ctx := testkit.Context(t, 60*time.Second)

	acct := [32]byte{7}
	tok := [32]byte{1, 2, 3}
	env := (&protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: protocol.Tag{9}, Expiry: time.Now().Add(time.Hour),
		DeleteHash: protocol.HashDeleteToken(tok), Ciphertext: []byte("sealed")}).Marshal()
	entry := store.OutboxEntry{MsgID: [16]byte{1}, Contact: acct, Kind: store.OutboxMessage, Envelope: env, Mailboxes: 1, DeleteToken: tok}
	note := func(e store.OutboxEntry) (ok bool) {
		t.Helper()
		if err := alice.db.Update(func(tx *store.Tx) (err error) { ok, err = noteWithdrawal(tx, e); return err }); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	pending := func(n *Node) int {
		t.Helper()
		var ws []withdrawal
		if err := n.db.View(func(tx *store.Tx) (err error) { ws, err = pendingWithdrawals(tx); return err }); err != nil {
			t.Fatal(err)
		}
		return len(ws)
	}

	// The contact announced no version 2 mailboxes: nothing to withdraw.
	if note(entry) {
		t.Fatal("a withdrawal was recorded for a contact without version 2 mailboxes")
	}
	if err := alice.db.Update(func(tx *store.Tx) error {
		return mailbox.PutContactInvite(tx, acct, nil, []peer.AddrInfo{addrs[0]})
	}); err != nil {
		t.Fatal(err)
	}
	notDeposited, otherToken := entry, entry
	notDeposited.Mailboxes = 0
	otherToken.DeleteToken = [32]byte{4}
	if note(notDeposited) || note(otherToken) {
		t.Fatal("a withdrawal was recorded for an envelope no mailbox holds, or with a token that does not delete it")
	}
	if pending(alice) != 0 {
		t.Fatal("withdrawals recorded")
	}

	// The mailbox is down: the withdrawal stays, across a restart, and is
	// tried again WithdrawRetry later.
	mbx[0].Close()
	alice.Close() // its loop does not race the passes below
	alice, err := Open(Config{DataDir: dir, Logger: testLogger("node", "alice-offline")})
	if err != nil {
		t.Fatal(err)
	}
	clock(&alice.cfg)
	if !note(entry) {
		t.Fatal("no withdrawal recorded")
	}
	nextOf := func() time.Time {
		t.Helper()
		var ws []withdrawal
		alice.db.View(func(tx *store.Tx) (err error) { ws, err = pendingWithdrawals(tx); return err })
		if len(ws) != 1 {
			t.Fatalf("%d withdrawals, want 1", len(ws))
		}
		return ws[0].next
	}
	if next, left := alice.withdrawPass(); !left || next.Sub(alice.now()) < WithdrawRetry-time.Minute {
		t.Fatalf("with the mailbox down: left %v, next in %v; want one, in about %v", left, next.Sub(alice.now()), WithdrawRetry)
	}
	first := nextOf()
	if alice.withdrawPass(); !nextOf().Equal(first) {
		t.Fatal("a withdrawal not due was tried again")
	}
	ahead.Store(int64(WithdrawRetry + time.Minute))
	if alice.withdrawPass(); !nextOf().After(first) {
		t.Fatal("a due withdrawal was not tried again")
	}
	alice.Close()
	alice = tn.start(dir, clock)
	if pending(alice) != 1 {
		t.Fatal("the withdrawal did not survive the restart")
	}
	// Its envelope expires: the mailboxes drop it themselves.
	ahead.Store(int64(2 * time.Hour))
	testkit.WaitFor(t, ctx, func() bool { alice.kickWithdraw(); return pending(alice) == 0 })

	// At most MaxWithdrawalsPerContact per contact.
	for i := range MaxWithdrawalsPerContact + 1 {
		e := entry
		e.DeleteToken = [32]byte{byte(i), byte(i >> 8), 1}
		e.Envelope = (&protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: protocol.Tag{9}, Expiry: alice.now().Add(time.Hour),
			DeleteHash: protocol.HashDeleteToken(e.DeleteToken), Ciphertext: []byte("sealed")}).Marshal()
		if got := note(e); got != (i < MaxWithdrawalsPerContact) {
			t.Fatalf("withdrawal %d recorded: %v", i+1, got)
		}
	}
}

// TestDepositRacingRejectWithdrawn: the deposit of an envelope runs while
// its direct attempt is refused, and the refusal is recorded first (the
// entry then still counts no mailbox, so it records no withdrawal).
// The deposit, recorded after, finds the entry's envelope dropped: it
// records the withdrawal of the copy it made instead of counting it for
// the entry, and the copy leaves the mailbox.
func TestDepositRacingRejectWithdrawn(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	noAutoDeposit := func(c *Config) { c.MailboxAfter = time.Hour }
	carolDir, bobDir := tn.initNode("carol"), tn.initNode("bob")
	carol, bob := tn.start(carolDir, receiveAt, noAutoDeposit), tn.start(bobDir, receiveAt)
	ctx := testkit.Context(t, 90*time.Second)
	befriend(t, carol, "carol", bob, "bob")
	if _, err := carol.Send(ctx, "bob", "first"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "carol", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, carol, "bob") })
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	bobAcct := storedContact(t, carol, "bob").Account

	m, err := carol.Send(ctx, "bob", "hello")
	if err != nil {
		t.Fatal(err)
	}
	var e store.OutboxEntry
	testkit.WaitFor(t, ctx, func() bool {
		carol.db.View(func(tx *store.Tx) (err error) { e, err = tx.GetOutbox(m.ID); return err })
		return e.Envelope != nil
	})
	carol.recordResults(bobAcct, []store.OutboxEntry{e}, []error{p2p.ErrRejected}, store.ViaDirect)
	if done, ok := carol.depositBatch(ctx, []store.OutboxEntry{e}); done != 1 || !ok {
		t.Fatalf("the deposit: %d done, %v", done, ok)
	}
	var cur store.OutboxEntry
	carol.db.View(func(tx *store.Tx) (err error) { cur, err = tx.GetOutbox(m.ID); return err })
	if cur.Mailboxes != 0 || storedMessage(t, carol, m.ID).StoredAt != 0 {
		t.Errorf("the dropped envelope's deposit was counted for the entry: %d mailboxes", cur.Mailboxes)
	}
	testkit.WaitFor(t, ctx, func() bool { return !mailboxHolds(t, mbx[0], e.Envelope) })
}
