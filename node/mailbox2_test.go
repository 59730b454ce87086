package node

import (
	"bytes"
	"crypto/rand"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
)

// A node run with the mailbox role serves version 2 mailboxes: a client
// on a fresh identity registers a tag, pushes a deposit signed with the
// tag's write key, and reads it back; a forged one is refused.
func TestMailboxRoleServesVersion2(t *testing.T) {
	tn := newTestNet(t)
	m := tn.start(tn.initNode("mailbox"), asMailbox)
	ctx := testkit.Context(t, 60*time.Second)
	h, err := p2p.NewEphemeral()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c := mailbox.NewClient2(ctx, h)
	ai := m.Host().AddrInfo()

	var seed [32]byte
	rand.Read(seed[:])
	now := time.Now()
	e := protocol.Epoch(now)
	tag := protocol.PairTag2(seed, protocol.FromInitiator, e)
	if n, _, err := c.Register(ctx, ai, []mailbox.Registration{{Kind: protocol.DepositPair, Tag: tag, Epoch: e}}); err != nil || n != 1 {
		t.Fatalf("Register = %d, %v", n, err)
	}
	env := (&protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: tag, Expiry: now.Add(time.Hour), Ciphertext: []byte("sealed")}).Marshal()
	if err := c.Push(ctx, ai, protocol.SealPairDeposit(protocol.WriteKey(seed, protocol.FromInitiator, e), env)); err != nil {
		t.Fatalf("Push: %v", err)
	}
	var other [32]byte
	other[0] = 1
	if err := c.Push(ctx, ai, protocol.SealPairDeposit(protocol.WriteKey(other, protocol.FromInitiator, e), env)); err == nil {
		t.Fatal("a deposit signed with another session's key was accepted")
	}
	res, err := c.Query(ctx, ai, [][32]byte{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], env) {
		t.Fatalf("Query = %d envelopes, %v", len(res.Envelopes), err)
	}
}
