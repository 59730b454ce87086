package node

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// testClock is a settable clock.
type testClock struct{ ns atomic.Int64 }

func newTestClock(t time.Time) *testClock {
	c := &testClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *testClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *testClock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// held reports whether n holds the private prekey kind/id.
func held(t *testing.T, n *Node, kind store.PrekeyKind, id keys.PrekeyID) bool {
	t.Helper()
	var ok bool
	if err := n.db.View(func(tx *store.Tx) error {
		_, err := tx.GetPrekey(kind, uint32(id))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		ok = err == nil
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestRetiredPrekeysDeleted: once a new bundle replaces one, the old
// bundle's signed, last-resort and unused one-time prekeys stay held while
// a first message sealed with them may still arrive, and are deleted after;
// a first message that needs them is then refused. Prekeys held from
// before records were kept are given a deadline and deleted after it.
func TestRetiredPrekeysDeleted(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	start := time.Now()
	clk := newTestClock(start)
	tn := newTestNet(t)
	dir := tn.t.TempDir() + "/alice"
	if _, err := Init(dir, "alice", nil, InitWithClock(clk.Now)); err != nil {
		t.Fatal(err)
	}
	alice := tn.start(dir, func(c *Config) { c.Now = clk.Now })
	raw, err := alice.currentBundle(clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	old, err := keys.ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}

	// An orphan: a prekey held with no bundle and no record (a data
	// directory from before records were kept).
	const orphanID = 0x7fff0001
	if err := alice.db.Update(func(tx *store.Tx) error {
		return tx.PutPrekey(store.PrekeySignedDH, orphanID, make([]byte, 32))
	}); err != nil {
		t.Fatal(err)
	}
	// It gets the longest deadline it could need, from now.
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	orphanDeadline := start.Add(DefaultBundleValidity + prekeyRetention).Truncate(time.Second)

	// A week later a new bundle replaces the old one.
	clk.Add(7 * 24 * time.Hour)
	var cur *keys.Bundle
	if err := alice.db.Update(func(tx *store.Tx) error {
		cur, err = newBundle(tx, &alice.cfg, alice.me.Account, alice.me.Device, clk.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	oldKeys := map[store.PrekeyKind][]keys.PrekeyID{}
	for _, r := range store.BundlePrekeys(old) {
		oldKeys[r.Kind] = append(oldKeys[r.Kind], keys.PrekeyID(r.ID))
	}
	for k, ids := range oldKeys {
		for _, id := range ids {
			if !held(t, alice, k, id) {
				t.Fatalf("old %v prekey %d deleted while the old bundle is still valid", k, id)
			}
		}
	}

	// The last first message the old bundle allows: sealed a minute
	// before it expires, with the longest TTL, and arriving just before
	// that runs out. It is still accepted then.
	sealedAt := old.Expires.Add(-time.Minute)
	late, _ := firstMessage(t, raw, sealedAt, protocol.MaxTTL, "", "sent with the old bundle")
	clk.Set(sealedAt.Add(protocol.MaxTTL - time.Minute))
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if !held(t, alice, store.PrekeySignedDH, old.SignedPrekey.ID) || !held(t, alice, store.PrekeyLastResort, old.LastResortKEM.ID) {
		t.Fatal("old prekeys deleted while a first message sealed with them may still arrive")
	}
	if !held(t, alice, store.PrekeySignedDH, orphanID) {
		t.Fatal("an orphan prekey was deleted before the longest deadline it could need")
	}
	if err := alice.Ingest(ctx, "", late, ViaMailbox); err != nil {
		t.Fatalf("the last first message the old bundle allows: %v", err)
	}
	deadline := old.Expires.Add(prekeyRetention)
	if !deadline.After(sealedAt.Add(protocol.MaxTTL + protocol.MaxClockSkew)) {
		t.Fatalf("deadline %v leaves no room for clock skew", deadline)
	}

	// At the deadline: gone, and the current bundle's stay.
	clk.Set(deadline)
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	for k, ids := range oldKeys {
		for _, id := range ids {
			if held(t, alice, k, id) {
				t.Fatalf("old %v prekey %d still held after its deadline", k, id)
			}
		}
	}
	for _, r := range store.BundlePrekeys(cur) {
		if !held(t, alice, r.Kind, keys.PrekeyID(r.ID)) {
			t.Fatalf("current %v prekey %d deleted", r.Kind, r.ID)
		}
	}
	// The orphan's deadline.
	if clk.Now().Before(orphanDeadline) && !held(t, alice, store.PrekeySignedDH, orphanID) {
		t.Fatal("an orphan prekey was deleted before the longest deadline it could need")
	}
	clk.Set(orphanDeadline)
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if held(t, alice, store.PrekeySignedDH, orphanID) {
		t.Fatal("an orphan prekey outlived its deadline")
	}
	// Every record whose deadline has passed is gone. (The node's own
	// renewal may retire the current bundle once the clock has jumped
	// past its renewal time; that record's deadline is still ahead.)
	if err := alice.db.View(func(tx *store.Tx) error {
		names, err := tx.SettingNames("retired/")
		if err != nil {
			return err
		}
		for _, name := range names {
			v, err := tx.GetSetting(name)
			if err != nil {
				return err
			}
			if len(v) < 8 {
				return fmt.Errorf("retired record %q of %d bytes", name, len(v))
			}
			if at := time.Unix(int64(binary.BigEndian.Uint64(v)), 0); !clk.Now().Before(at) {
				return fmt.Errorf("retired record %q remains after its deadline %v", name, at)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestAltSessionHoldingPrekeyExpires: an alternate session that still
// holds this node's signed prekey (a responder's that never sent) is
// dropped once no envelope for it can still arrive; one that has sent is
// kept.
func TestAltSessionHoldingPrekeyExpires(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	clk := newTestClock(time.Now())
	tn := newTestNet(t)
	dir := tn.t.TempDir() + "/alice"
	if _, err := Init(dir, "alice", nil, InitWithClock(clk.Now)); err != nil {
		t.Fatal(err)
	}
	alice := tn.start(dir, func(c *Config) { c.Now = clk.Now })
	// Two contacts (message requests), each given an alternate session.
	var accts [2][32]byte
	for i := range accts {
		env, acct := strangerFirstMessage(t, alice, "", "hello")
		if err := alice.Ingest(ctx, "", env, ViaMailbox); err != nil {
			t.Fatal(err)
		}
		accts[i] = acct
	}
	t0 := clk.Now()
	raw, err := alice.currentBundle(t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.db.Update(func(tx *store.Tx) error {
		for i, acct := range accts {
			env, _ := firstMessage(t, raw, t0, time.Hour, "", "simultaneous")
			e, err := protocol.ParseEnvelope(env)
			if err != nil {
				return err
			}
			alt, _, _, err := protocol.Accept(t0, *alice.me, &prekeySource{tx: tx}, e)
			if err != nil {
				return err
			}
			if !alt.HoldsSignedPrekey() {
				return errors.New("a fresh responder session does not hold the signed prekey")
			}
			if i == 1 { // this one has answered
				if _, _, err := alt.Seal(rand.Reader, t0, protocol.Message{Sender: alice.account(), Sent: t0, Type: protocol.ContentText, Body: []byte("hi")}, time.Hour); err != nil {
					return err
				}
			}
			if err := putAltSession(tx, acct, alt, t0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	hasAlt := func(acct [32]byte) bool {
		var s *protocol.Session
		if err := alice.db.View(func(tx *store.Tx) error {
			var err error
			s, err = altSession(tx, acct)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return s != nil
	}
	clk.Set(t0.Add(prekeyRetention - time.Second))
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if !hasAlt(accts[0]) || !hasAlt(accts[1]) {
		t.Fatal("an alternate session was dropped while envelopes for it may still arrive")
	}
	clk.Set(t0.Add(prekeyRetention))
	if err := alice.pruneSecrets(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if hasAlt(accts[0]) {
		t.Fatal("the alternate session holding the signed prekey was kept")
	}
	if !hasAlt(accts[1]) {
		t.Fatal("the alternate session that has sent was dropped")
	}
}

// TestReplayMarksOutliveTheirPrekeys: an initial message's replay mark
// lasts at least as long as any prekey it can have used is held: its
// bundle was made before the message was accepted, expires at most
// DefaultBundleValidity later, and its prekeys go prekeyRetention after
// that.
func TestReplayMarksOutliveTheirPrekeys(t *testing.T) {
	made := time.Unix(1_800_000_000, 0)
	for _, acceptedAfter := range []time.Duration{0, time.Hour, DefaultBundleValidity} {
		accepted := made.Add(acceptedAfter)
		markGone := accepted.Add(replayMarkLifetime)
		prekeysGone := made.Add(DefaultBundleValidity).Add(prekeyRetention)
		if markGone.Before(prekeysGone) {
			t.Fatalf("accepted %v after the bundle was made: mark gone at %v, prekeys at %v", acceptedAfter, markGone, prekeysGone)
		}
	}
}
