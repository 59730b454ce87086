package node

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
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

// contactAnnounced reports whether n holds mailboxes that contact name
// announced.
func contactAnnounced(t *testing.T, n *Node, name string) bool {
	c := storedContact(t, n, name)
	var got []peer.AddrInfo
	n.db.View(func(tx *store.Tx) error {
		got = mailbox.ContactMailboxes(tx, c.Account)
		return nil
	})
	return len(got) > 0
}

// TestVersion2OfflineDelivery: Alice and Bob receive at two version 2
// mailboxes of their choosing and tell each other so inside the ratchet.
// Bob goes offline; Alice's messages are pushed to his mailboxes under
// version 2 tags with the session's write key (a version 1 deposit of
// them would be refused: the tags hold registrations); Bob comes back and
// gets each once, in order, and deletes them there; Alice sees them
// delivered. Neither user joins a gossip topic.
func TestVersion2OfflineDelivery(t *testing.T) {
	tn := newTestNet(t)
	var mbx []*Node
	var addrs []peer.AddrInfo
	for i := range 2 {
		m := tn.start(tn.initNode(fmt.Sprintf("mailbox%d", i)), asMailbox)
		mbx = append(mbx, m)
		addrs = append(addrs, m.Host().AddrInfo())
	}
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, receiveAt), tn.start(bobDir, receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)

	// A first exchange sets up the session; each side then announces.
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") && contactAnnounced(t, bob, "alice") })
	// Bob's mailboxes hold his registrations once a round ran.
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatalf("bob's round: %v", err)
	}
	bobAcct := storedContact(t, alice, "bob").Account
	var v2Tags = map[[32]byte]bool{}
	alice.db.View(func(tx *store.Tx) error {
		s, err := alice.loadSession(tx, bobAcct)
		for _, e := range protocol.LiveEpochs(time.Now()) {
			v2Tags[s.SendTag2(e)] = true
		}
		return err
	})
	bob.Close()

	const N = 20
	for i := range N {
		if _, err := alice.Send(ctx, "bob", fmt.Sprintf("away %02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	got := waitMessages(t, ctx, alice, "bob", N+1, stored)
	for _, m := range got[1:] {
		if m.StoredAt < 1 {
			t.Fatalf("message stored at %d mailboxes", m.StoredAt)
		}
	}
	for i, m := range mbx {
		held, err := m.MailboxPeek(100)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range held {
			if !v2Tags[h.Tag] {
				t.Fatalf("mailbox %d holds an envelope under a tag that is not a version 2 tag of the session", i)
			}
		}
		if i == 0 && len(held) < N {
			t.Fatalf("mailbox 0 holds %d envelopes, want at least %d", len(held), N)
		}
	}
	alice.Close()

	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "alice", N+1, incoming)
	if len(in) != N+1 {
		t.Fatalf("bob got %d messages, want exactly %d", len(in), N+1)
	}
	for i, m := range in[1:] {
		if want := fmt.Sprintf("away %02d", i); string(m.Body) != want || m.Via != ViaMailbox {
			t.Fatalf("message %d = %q via %v, want %q via mailbox", i, m.Body, m.Via, want)
		}
	}
	alice = tn.start(aliceDir, receiveAt)
	waitMessages(t, ctx, alice, "bob", N+1, delivered)
	// Users stay off the mailbox gossip; mailbox nodes carry it.
	for name, n := range map[string]*Node{"alice": alice, "bob": bob, "mailbox": mbx[1]} {
		topics := n.mbx.gossip.PubSub().GetTopics()
		if (name == "mailbox") != (len(topics) > 0) {
			t.Errorf("%s is on the gossip topics %v", name, topics)
		}
	}
	// What Bob took is deleted at his mailboxes after his next round.
	testkit.WaitFor(t, ctx, func() bool {
		if _, err := bob.mbx.user.Round(ctx); err != nil {
			return false
		}
		for _, m := range mbx {
			if m.mailboxHeld().Envelopes != 0 {
				return false
			}
		}
		return true
	})
}
