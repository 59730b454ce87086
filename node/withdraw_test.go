package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// TestWithdrawalKeptUntilAnsweredOrExpired: a withdrawal is recorded only
// for an envelope of the sender's own that a version 2 mailbox holds; one
// whose mailbox does not answer stays in the store, across a restart,
// and is tried again, until its envelope expires, when it is dropped.
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

	// The mailbox is down: the withdrawal stays, across a restart.
	mbx[0].Close()
	if !note(entry) {
		t.Fatal("no withdrawal recorded")
	}
	if left := alice.withdrawPass(); left != 1 {
		t.Fatalf("%d withdrawals left with the mailbox down, want 1", left)
	}
	alice.Close()
	alice = tn.start(dir, clock)
	if pending(alice) != 1 {
		t.Fatal("the withdrawal did not survive the restart")
	}
	// Its envelope expires: the mailboxes drop it themselves.
	ahead.Store(int64(2 * time.Hour))
	testkit.WaitFor(t, ctx, func() bool { alice.kickWithdraw(); return pending(alice) == 0 })
}
