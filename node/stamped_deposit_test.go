package node

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// TestStampedDepositWaitsWhileConnected: a session's first message, whose
// deposit costs a proof-of-work stamp, goes to mailboxes after
// StampedDepositAfter while its recipient is connected (the direct path
// usually acks it first), and after MailboxAfter once the recipient is
// gone, as any message does.
func TestStampedDepositWaitsWhileConnected(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	_, alice, bob := strangers(t)
	acct := bob.ident.Account
	initiate(t, ctx, alice, acct)
	bobID, err := peer.Decode(bob.ident.PeerID)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Host().LibP2P().Connect(ctx, bob.Host().AddrInfo()); err != nil {
		t.Fatal(err)
	}
	var sess *protocol.Session
	if err := alice.db.View(func(tx *store.Tx) (err error) { sess, err = alice.loadSession(tx, acct); return err }); err != nil || sess == nil {
		t.Fatalf("alice's session: %v, %v", sess, err)
	}
	now := alice.now()
	id, err := newMessageID(alice.cfg.Rand, now)
	if err != nil {
		t.Fatal(err)
	}
	env, _, err := sess.Seal(alice.cfg.Rand, now, protocol.Message{Sender: alice.account(), ID: id, Sent: now, Type: protocol.ContentText, Body: []byte("first")},
		sealTTL(now, now, alice.cfg.MessageTTL))
	if err != nil {
		t.Fatal(err)
	}
	if _, initial := protocol.EnvelopeInitialID(env); !initial {
		t.Fatal("the first message on an unanswered session is not an initial message")
	}
	entry := []store.OutboxEntry{{Envelope: env.Marshal(), Created: now}}

	at, ok := alice.depositTime(acct, entry)
	if want := now.Add(StampedDepositAfter); !ok || !at.Equal(want) {
		t.Errorf("connected recipient: deposit at %v (%v), want %v", at.Sub(now), ok, StampedDepositAfter)
	}

	bob.Close()
	testkit.WaitFor(t, ctx, func() bool {
		return alice.Host().LibP2P().Network().Connectedness(bobID) != network.Connected
	})
	at, ok = alice.depositTime(acct, entry)
	if want := now.Add(alice.cfg.MailboxAfter); !ok || !at.Equal(want) {
		t.Errorf("recipient gone: deposit at %v (%v), want %v", at.Sub(now), ok, alice.cfg.MailboxAfter)
	}
}
