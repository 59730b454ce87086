package node

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// initiate starts n's session with contact acct from the contact's
// published bundle, as Send does for a first message, without sending.
func initiate(t *testing.T, ctx context.Context, n *Node, acct [32]byte) {
	t.Helper()
	var c store.Contact
	if err := n.db.View(func(tx *store.Tx) error {
		var err error
		c, err = tx.GetContact(acct)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var bundle *keys.Bundle
	testkit.WaitFor(t, ctx, func() bool {
		var err error
		bundle, err = n.fetchBundle(ctx, c)
		return err == nil
	})
	err := n.db.Update(func(tx *store.Tx) error {
		now := n.now()
		sess, err := protocol.Initiate(n.cfg.Rand, now, *n.me, bundle, protocol.WithExpectedPeer(keys.AccountPublic(acct)))
		if err != nil {
			return err
		}
		if err := n.putTags(tx, sess, now); err != nil {
			return err
		}
		return n.putSession(tx, sess, now)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// strangers starts Alice and Bob, contacts of each other with no session
// yet.
func strangers(t *testing.T) (tn *testNet, alice, bob *Node) {
	t.Helper()
	tn = newTestNet(t)
	alice = tn.start(tn.initNode("alice"))
	bob = tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	return tn, alice, bob
}

// firstContactPair starts two befriended nodes, each with a session it
// initiated and none from the other: a simultaneous first contact. The
// winner is the side whose session both sides prefer (its initiator's
// account key is the smaller).
func firstContactPair(t *testing.T, ctx context.Context) (tn *testNet, winner, loser *Node, wName, lName string) {
	t.Helper()
	tn, a, b := strangers(t)
	initiate(t, ctx, a, b.ident.Account)
	initiate(t, ctx, b, a.ident.Account)
	aa, ba := a.ident.Account, b.ident.Account
	if bytes.Compare(aa[:], ba[:]) < 0 {
		return tn, a, b, "alice", "bob"
	}
	return tn, b, a, "bob", "alice"
}

// TestFirstContactLateInitial: in a simultaneous first contact the
// losing side's first message reaches the winner only after the winner
// has already heard from the loser on the preferred session (it went
// through a mailbox, say). The winner must keep sending on the preferred
// session and keep reading both: every message in both directions opens,
// in order, and every receipt comes back.
func TestFirstContactLateInitial(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	_, w, l, wName, lName := firstContactPair(t, ctx)
	wAcct, lAcct := w.ident.Account, l.ident.Account
	wFrom, lFrom := w.Host().ID(), l.Host().ID()

	w1 := sealFor(t, w, lAcct, "w1")[0]
	l1 := sealFor(t, l, wAcct, "l1")[0] // delayed until the end

	ingest := func(to *Node, env []byte, what string) {
		t.Helper()
		id := wFrom
		if to == w {
			id = lFrom
		}
		if err := to.Ingest(ctx, id, env, ViaMailbox); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// The loser accepts the winner's session and answers on it.
	ingest(l, w1, "w1 at the loser")
	l2 := sealFor(t, l, wAcct, "l2")[0]
	ingest(w, l2, "l2 at the winner")
	// Now the loser's own first message arrives, late.
	ingest(w, l1, "l1 at the winner")
	// Both go on talking; each side seals on whatever it now sends on.
	for i := range 3 {
		lx := sealFor(t, l, wAcct, fmt.Sprintf("l%d", 3+i))[0]
		ingest(w, lx, "later message at the winner")
		wx := sealFor(t, w, lAcct, fmt.Sprintf("w%d", 2+i))[0]
		ingest(l, wx, "later message at the loser")
	}

	shown := waitMessages(t, ctx, w, lName, 5, incoming)
	got := bodies(shown)
	if want := []string{"l1", "l2", "l3", "l4", "l5"}; !slices.Equal(got, want) {
		t.Fatalf("the winner shows %v, want %v", got, want)
	}
	// A late first message of a simultaneous initiation is no session
	// reset (node:TestBackupRestore shows one).
	for _, m := range shown {
		if m.SessionReset {
			t.Errorf("the winner marks %q as after a session reset", m.Body)
		}
	}
	got = bodies(waitMessages(t, ctx, l, wName, 4, incoming))
	if want := []string{"w1", "w2", "w3", "w4"}; !slices.Equal(got, want) {
		t.Fatalf("the loser shows %v, want %v", got, want)
	}
	// Receipts go over the network on their own; each side sees all its
	// messages delivered.
	waitMessages(t, ctx, w, lName, 4, delivered)
	waitMessages(t, ctx, l, wName, 5, delivered)
}

// TestFirstContactInterleavings: both sides start a session at once and
// go on sending while their envelopes arrive in random order, each side
// sealing on whatever session it sends on at the time. Every envelope
// opens, each conversation ends in send order, and every message is seen
// delivered.
func TestFirstContactInterleavings(t *testing.T) {
	const (
		seeds  = 12
		window = 4 // an envelope arrives after at most 3 sent later
	)
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			ctx := testkit.Context(t, 30*time.Second)
			rng := mrand.New(mrand.NewPCG(seed, 0xf1c))
			_, w, l, wName, lName := firstContactPair(t, ctx)
			side := []struct {
				n       *Node
				to      *Node
				name    string // the peer's contact name at n
				pending [][]byte
				sent    []string
			}{{n: w, to: l, name: lName}, {n: l, to: w, name: wName}}
			step := func(i int, drain bool) {
				s := &side[i]
				if len(s.pending) > 0 && (drain || rng.IntN(2) == 0) {
					k := rng.IntN(min(len(s.pending), window))
					env := s.pending[k]
					s.pending = slices.Delete(s.pending, k, k+1)
					t.Logf("deliver %d's envelope %d of %d", i, k, len(s.pending)+1)
					if err := s.to.Ingest(ctx, s.n.Host().ID(), env, ViaMailbox); err != nil {
						t.Fatalf("envelope from %s: %v", s.n.cfg.DataDir, err)
					}
					return
				}
				body := fmt.Sprintf("%d-%d", i, len(s.sent))
				t.Logf("seal %s", body)
				s.pending = append(s.pending, sealFor(t, s.n, s.to.ident.Account, body)[0])
				s.sent = append(s.sent, body)
			}
			for range 40 {
				step(rng.IntN(2), false)
			}
			for i := range side {
				for len(side[i].pending) > 0 {
					step(i, true)
				}
			}
			for i, s := range side {
				peer := side[1-i]
				shown := waitMessages(t, ctx, peer.n, peer.name, len(s.sent), incoming)
				if got := bodies(shown); !slices.Equal(got, s.sent) {
					t.Fatalf("shown %v, sent %v", got, s.sent)
				}
				for _, m := range shown {
					if m.SessionReset {
						t.Errorf("%q is marked as after a session reset", m.Body)
					}
				}
				waitMessages(t, ctx, s.n, s.name, len(s.sent), delivered)
			}
		})
	}
}

// TestFirstMessageConsumesPrekeys: accepting a first message deletes the
// one-time DH and KEM prekeys it used, in the same commit, and keeps the
// last-resort KEM prekey; the bundle offered next leaves the used ones
// out.
func TestFirstMessageConsumesPrekeys(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	_, alice, bob := strangers(t)
	ids := func() map[store.PrekeyKind][]uint32 {
		out := map[store.PrekeyKind][]uint32{}
		if err := bob.db.View(func(tx *store.Tx) error {
			for _, k := range []store.PrekeyKind{store.PrekeyOneTimeDH, store.PrekeyOneTimeKEM, store.PrekeyLastResort} {
				l, err := tx.PrekeyIDs(k)
				if err != nil {
					return err
				}
				out[k] = l
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	bundle := func() *keys.Bundle {
		raw, err := bob.currentBundle(bob.now())
		if err != nil {
			t.Fatal(err)
		}
		b, err := keys.ParseBundle(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Verify(bob.now()); err != nil {
			t.Fatal(err)
		}
		return b
	}
	before, offered := ids(), bundle()
	initiate(t, ctx, alice, bob.ident.Account)
	env := sealFor(t, alice, bob.ident.Account, "hello")[0]
	if err := bob.Ingest(ctx, alice.Host().ID(), env, ViaDirect); err != nil {
		t.Fatal(err)
	}
	after := ids()
	for kind, want := range map[store.PrekeyKind]int{store.PrekeyOneTimeDH: 1, store.PrekeyOneTimeKEM: 1, store.PrekeyLastResort: 0} {
		gone := 0
		for _, id := range before[kind] {
			if !slices.Contains(after[kind], id) {
				gone++
			}
		}
		if gone != want {
			t.Errorf("prekey kind %v: %d of %d gone, want %d", kind, gone, len(before[kind]), want)
		}
	}
	if len(before[store.PrekeyLastResort]) == 0 {
		t.Fatal("no last-resort KEM prekey stored")
	}
	// The bundle Bob offers next no longer lists the used prekeys.
	now := bundle()
	if now.Seq <= offered.Seq {
		t.Errorf("bundle sequence %d after the first message, was %d", now.Seq, offered.Seq)
	}
	if len(now.OneTimeDH) != len(offered.OneTimeDH)-1 || len(now.OneTimeKEM) != len(offered.OneTimeKEM)-1 {
		t.Errorf("bundle offers %d+%d one-time prekeys, was %d+%d", len(now.OneTimeDH), len(now.OneTimeKEM), len(offered.OneTimeDH), len(offered.OneTimeKEM))
	}
	for _, p := range now.OneTimeDH {
		if !slices.Contains(after[store.PrekeyOneTimeDH], uint32(p.ID)) {
			t.Errorf("bundle offers used one-time prekey %d", p.ID)
		}
	}
	for _, p := range now.OneTimeKEM {
		if !slices.Contains(after[store.PrekeyOneTimeKEM], uint32(p.ID)) {
			t.Errorf("bundle offers used one-time KEM prekey %d", p.ID)
		}
	}
}

// TestRejectedEarlierFirstMessage: when the recipient refuses a first
// message sealed on a session the sender has since replaced, the sender
// keeps its current session (which the recipient may have accepted);
// only a refused first message of the current session starts it over. A
// refused message is sealed again and retried within seconds.
func TestRejectedEarlierFirstMessage(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	_, alice, bob := strangers(t)
	acct := bob.ident.Account
	current := func() (id [32]byte, ok bool) {
		t.Helper()
		if err := alice.db.View(func(tx *store.Tx) error {
			s, err := alice.loadSession(tx, acct)
			if s != nil {
				id, ok = s.InitialID(), true
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return id, ok
	}
	entry := func(env []byte) store.OutboxEntry {
		t.Helper()
		// Ten attempts failed while the recipient was away.
		e := store.OutboxEntry{
			Contact: acct, Envelope: env, Kind: store.OutboxMessage, Created: alice.now(),
			NextAttempt: alice.now().Add(time.Hour), Expires: alice.now().Add(time.Hour), Attempts: 10,
		}
		if _, err := io.ReadFull(crand.Reader, e.MsgID[:]); err != nil {
			t.Fatal(err)
		}
		if err := alice.db.Update(func(tx *store.Tx) error { return tx.PutOutbox(e) }); err != nil {
			t.Fatal(err)
		}
		return e
	}

	initiate(t, ctx, alice, acct)
	old := sealFor(t, alice, acct, "m1")[0]
	first, _ := current()
	if err := alice.db.Update(func(tx *store.Tx) error { return tx.DeleteSession(acct) }); err != nil {
		t.Fatal(err)
	}
	alice.sessions.take(acct)
	initiate(t, ctx, alice, acct)
	fresh := sealFor(t, alice, acct, "m2")[0]
	second, _ := current()
	bob.Close() // nothing below reaches him
	if second == first {
		t.Fatal("the second session has the first one's initial ID")
	}

	refused := entry(old)
	before := alice.now()
	alice.recordResults(acct, []store.OutboxEntry{refused}, []error{p2p.ErrRejected}, store.ViaDirect)
	if id, ok := current(); !ok || id != second {
		t.Fatalf("a refused message of the replaced session dropped the current one (have %v)", ok)
	}
	// It is sealed again and retried within seconds, whatever failed
	// before.
	if err := alice.db.View(func(tx *store.Tx) error {
		e, err := tx.GetOutbox(refused.MsgID)
		if err != nil {
			return err
		}
		if e.Envelope != nil {
			t.Error("the refused envelope is kept for another try")
		}
		if wait := e.NextAttempt.Sub(before); wait > 4*time.Second {
			t.Errorf("the refused message is retried after %v", wait)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	alice.recordResults(acct, []store.OutboxEntry{entry(fresh)}, []error{p2p.ErrRejected}, store.ViaDirect)
	if _, ok := current(); ok {
		t.Fatal("a refused first message of the current session left it in place")
	}
}

// TestBundlePublishRetried: a node that starts with no DHT peer cannot
// publish its bundle; it tries again, so the bundle reaches the DHT once
// a peer is there.
func TestBundlePublishRetried(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	tn := newTestNet(t)
	alice := tn.start(tn.initNode("alice"), func(c *Config) { c.Bootstrap = nil })
	acct := alice.ident.Account
	status := func() Status {
		st, err := alice.Status()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	testkit.WaitFor(t, ctx, func() bool { return status().BundleError != "" })
	if !status().BundlePublished.IsZero() {
		t.Fatal("the bundle was published with no DHT peer")
	}
	if err := alice.Host().LibP2P().Connect(ctx, tn.boot.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { st := status(); return !st.BundlePublished.IsZero() && st.BundleError == "" })
	// The DHT peer holds it: with Alice gone, it still answers.
	alice.Close()
	if _, err := tn.boot.GetBundle(ctx, acct[:]); err != nil {
		t.Fatalf("bundle not in the DHT: %v", err)
	}
}

// TestBundleRenewedWhenOffersRunLow: once the bundle offers fewer than
// MinOneTimePrekeys one-time prekeys, a new one is made, even while the
// prekeys of an earlier bundle are still held, but not sooner than
// minBundleRenewal after the last one.
func TestBundleRenewedWhenOffersRunLow(t *testing.T) {
	tn := newTestNet(t)
	n := tn.start(tn.initNode("alice"))
	parse := func(raw []byte) *keys.Bundle {
		t.Helper()
		b, err := keys.ParseBundle(raw)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var second *keys.Bundle
	if err := n.db.Update(func(tx *store.Tx) error {
		// A second bundle: the first one's prekeys stay held.
		b, err := newBundle(tx, &n.cfg, n.me.Account, n.me.Device, n.now())
		if err != nil {
			return err
		}
		second = b
		// First messages use all but two of its one-time prekeys.
		for i := range len(b.OneTimeDH) - 2 {
			if _, err := tx.ConsumePrekey(store.PrekeyOneTimeDH, uint32(b.OneTimeDH[i].ID)); err != nil {
				return err
			}
			if _, err := tx.ConsumePrekey(store.PrekeyOneTimeKEM, uint32(b.OneTimeKEM[i].ID)); err != nil {
				return err
			}
		}
		_, err = n.dropUsedPrekeys(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Within minBundleRenewal of the last bundle, it stays (first
	// messages use the signed and last-resort prekeys meanwhile).
	raw, err := n.currentBundle(n.now())
	if err != nil {
		t.Fatal(err)
	}
	if b := parse(raw); b.Seq <= second.Seq || len(b.OneTimeDH) != 2 || b.SignedPrekey.ID != second.SignedPrekey.ID {
		t.Fatalf("bundle %d with %d one-time prekeys minutes after bundle %d; want that bundle, re-signed", b.Seq, len(b.OneTimeDH), second.Seq)
	}
	raw, err = n.currentBundle(n.now().Add(minBundleRenewal))
	if err != nil {
		t.Fatal(err)
	}
	b := parse(raw)
	if b.Seq <= second.Seq || len(b.OneTimeDH) != n.cfg.OneTimePrekeys || len(b.OneTimeKEM) != n.cfg.OneTimePrekeys {
		t.Fatalf("bundle %d offers %d+%d one-time prekeys; want a new one (after %d) with %d of each",
			b.Seq, len(b.OneTimeDH), len(b.OneTimeKEM), second.Seq, n.cfg.OneTimePrekeys)
	}
}
