package node

import (
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

func TestEnvelopeExpiryIsTheDay(t *testing.T) {
	day := protocol.EpochStart(20000)
	for _, tc := range []struct {
		sentAt, now time.Time
		want        time.Time
	}{
		{day.Add(time.Second), day.Add(time.Second), day.Add(14 * 24 * time.Hour)},
		{day.Add(23*time.Hour + 59*time.Minute), day.Add(23*time.Hour + 59*time.Minute), day.Add(14 * 24 * time.Hour)},
		// Sealed again a week later: the same expiry.
		{day.Add(time.Hour), day.Add(7 * 24 * time.Hour), day.Add(14 * 24 * time.Hour)},
	} {
		if got := envelopeExpiry(tc.sentAt, protocol.MaxTTL); !got.Equal(tc.want) {
			t.Errorf("envelopeExpiry(%v) = %v, want %v", tc.sentAt, got, tc.want)
		}
		if got := tc.now.Add(sealTTL(tc.sentAt, tc.now, protocol.MaxTTL)); !got.Equal(tc.want) {
			t.Errorf("sealed at %v for %v: expires %v, want %v", tc.now, tc.sentAt, got, tc.want)
		}
	}
	// With less than a minute left, a minute; never more than the protocol's TTL.
	late := day.Add(14*24*time.Hour - time.Second)
	if got := sealTTL(day, late, protocol.MaxTTL); got != time.Minute {
		t.Errorf("sealTTL with a second left = %v, want a minute", got)
	}
	if got := sealTTL(day.Add(24*time.Hour), day, protocol.MaxTTL); got > protocol.MaxTTL {
		t.Errorf("sealTTL = %v, above the protocol's %v", got, protocol.MaxTTL)
	}
}

// TestEnvelopesTellOnlyTheDay: messages written at different times of
// one day, and the receipts for them, leave in envelopes with one expiry,
// the start of a day.
func TestEnvelopesTellOnlyTheDay(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	tn := newTestNet(t)
	clk := newTestClock(time.Now())
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice := tn.start(aliceDir, func(c *Config) { c.Now = clk.Now; c.MailboxAfter = time.Hour })
	bob := tn.start(bobDir, func(c *Config) { c.MailboxAfter = time.Hour })
	befriend(t, alice, "alice", bob, "bob")
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, delivered)
	bob.Close()

	// Two messages a minute apart wait in Alice's outbox, sealed.
	for _, text := range []string{"first", "second"} {
		if _, err := alice.Send(ctx, "bob", text); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Minute)
	}
	sealed := func(n *Node, kind store.OutboxKind) [][]byte {
		t.Helper()
		var out [][]byte
		if err := n.db.View(func(tx *store.Tx) error {
			es, err := tx.DueOutbox(clk.Now().Add(24*time.Hour), 1000)
			for _, e := range es {
				if e.Kind == kind && len(e.Envelope) > 0 {
					out = append(out, e.Envelope)
				}
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	msgs := sealed(alice, store.OutboxMessage)
	if len(msgs) != 2 {
		t.Fatalf("%d sealed messages in the outbox, want 2", len(msgs))
	}
	alice.Close()

	// Bob receives them (from a mailbox, say) and seals his receipts.
	bob = tn.start(bobDir, func(c *Config) { c.MailboxAfter = time.Hour })
	for _, env := range msgs {
		if err := bob.Ingest(ctx, "", env, ViaMailbox); err != nil {
			t.Fatal(err)
		}
	}
	receipts := sealed(bob, store.OutboxReceipt)
	if len(receipts) == 0 {
		t.Fatal("no receipt in Bob's outbox")
	}
	expiries := map[time.Time]bool{}
	for _, raw := range append(msgs, receipts...) {
		env, err := protocol.ParseEnvelope(raw)
		if err != nil {
			t.Fatal(err)
		}
		e := env.Expiry.UTC()
		if !e.Equal(protocol.EpochStart(protocol.Epoch(e))) {
			t.Errorf("an envelope expires at %v, not at the start of a day", e)
		}
		expiries[e] = true
	}
	if len(expiries) > 2 { // two only if the day turned during the test
		t.Errorf("envelopes written within minutes carry %d expiries: %v", len(expiries), expiries)
	}
}
