package node

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/store"
)

// TestDamagedContactDoesNotHoldBackOthers: while Bob is away, Alice and
// Carol each leave 5 messages at his mailbox, and one byte of his record
// of Alice changes on his disk. One commit of all ten envelopes, in turn,
// fails on the damaged record; the envelopes then go one by one, so
// Carol's are stored and only Alice's fail (her device and the mailbox
// keep them). When Bob comes back for real, his sync shows Carol's 5
// messages, Alice's stay at the mailbox, and `Status` lists the damaged
// record.
func TestDamagedContactDoesNotHoldBackOthers(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, carolDir, bobDir := tn.initNode("alice"), tn.initNode("carol"), tn.initNode("bob")
	alice, carol, bob := tn.start(aliceDir, receiveAt), tn.start(carolDir, receiveAt), tn.start(bobDir, receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	befriend(t, carol, "carol", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)
	for _, n := range []*Node{alice, carol} {
		if _, err := n.Send(ctx, "bob", "hello"); err != nil {
			t.Fatal(err)
		}
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	waitMessages(t, ctx, bob, "carol", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool {
		return contactAnnounced(t, alice, "bob") && contactAnnounced(t, carol, "bob")
	})
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	aliceAcct := storedContact(t, bob, "alice").Account
	bob.Close()

	envs := map[*Node][][]byte{}
	for _, n := range []*Node{alice, carol} {
		for i := range 5 {
			m, err := n.Send(ctx, "bob", fmt.Sprintf("away %d", i))
			if err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, ctx, func() bool { return storedMessage(t, n, m.ID).StoredAt > 0 })
			n.db.View(func(tx *store.Tx) error {
				e, err := tx.GetOutbox(m.ID)
				envs[n] = append(envs[n], e.Envelope)
				return err
			})
		}
	}
	aliceEnvs := envs[alice]
	// One byte of Bob's record of Alice changes (the store is plain:
	// keyed by her account, a checksum at the end).
	bdb, err := bolt.Open(filepath.Join(bobDir, store.FileName), store.FileMode, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("contacts"))
		v := bytes.Clone(b.Get(aliceAcct[:]))
		if v == nil {
			return errors.New("no record of alice")
		}
		v[len(v)/2] ^= 1
		return b.Put(aliceAcct[:], v)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}

	// One commit of all ten, Alice's and Carol's in turn.
	offline, err := Open(Config{DataDir: bobDir, Logger: testLogger("node", "bob-offline")})
	if err != nil {
		t.Fatal(err)
	}
	var reqs []*ingestReq
	for i := range 5 {
		for _, n := range []*Node{alice, carol} {
			reqs = append(reqs, &ingestReq{raw: envs[n][i], via: store.ViaMailbox, res: make(chan error, 1)})
		}
	}
	offline.commitBatch(reqs)
	for i, r := range reqs {
		err := <-r.res
		if fromAlice := i%2 == 0; fromAlice != (err != nil) {
			t.Errorf("envelope %d (from alice: %v): %v", i, fromAlice, err)
		}
	}
	if got := messagesWhere(t, offline, "carol", incoming); len(got) != 6 {
		t.Errorf("%d messages from carol stored, want 6", len(got))
	}
	offline.Close()

	bob = tn.start(bobDir, receiveAt)
	got := waitMessages(t, ctx, bob, "carol", 6, incoming)
	for i, m := range got[1:] {
		if string(m.Body) != fmt.Sprintf("away %d", i) {
			t.Errorf("carol's message %d: %q", i, m.Body)
		}
	}
	for i, env := range aliceEnvs {
		if !mailboxHolds(t, mbx[0], env) {
			t.Errorf("alice's message %d left the mailbox though bob could not store it", i)
		}
	}
	st, err := bob.Status()
	if err != nil || !strings.Contains(strings.Join(st.Store.Problems, "\n"), "contacts record") {
		t.Errorf("status lists %q (%v), want the damaged contact", st.Store.Problems, err)
	}
}
