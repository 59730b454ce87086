package protocol

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"
)

// TestSealVersion2Tags: with WithVersion2Tags a ratchet message goes under
// the version 2 pairwise tag of the sender's role, the peer opens it, and
// the sender's write key for that tag makes a deposit that every mailbox
// accepts under it; an initial message stays under the intro tag.
func TestSealVersion2Tags(t *testing.T) {
	rng := sessRNG(7)
	a := newSessParty(t, rng, "alice", 2)
	b := newSessParty(t, rng, "bob", 2)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle, derandEncapsulator(rng))
	if err != nil {
		t.Fatal(err)
	}
	epoch := Epoch(sessNow)
	m0 := textMessage(0, "hello")
	e0, _, err := sa.Seal(rng, sessNow, m0, sessTTL, WithVersion2Tags())
	if err != nil {
		t.Fatal(err)
	}
	if e0.Tag != IntroTag(b.account(), epoch) {
		t.Fatal("an initial message under version 2 tags left the intro tag")
	}
	if _, ok := sa.SendWriteKey(e0.Tag, sessNow); ok {
		t.Fatal("a write key for an intro tag")
	}
	sb, _ := mustAccept(t, b, e0, m0, a.account())

	// Bob answers under version 2 tags; Alice opens it.
	m1 := textMessage(1, "hi")
	e1, _, err := sb.Seal(rng, sessNow, m1, sessTTL, WithVersion2Tags())
	if err != nil {
		t.Fatal(err)
	}
	if e1.Tag != sb.SendTag2(epoch) || e1.Tag != sa.RecvTag2(epoch) {
		t.Fatal("the envelope is not under the version 2 tag both sides compute")
	}
	if e1.Tag == sb.SendTag(epoch) || sb.SendTag2(epoch) == sa.SendTag2(epoch) {
		t.Fatal("version 2 tags equal a version 1 tag or the other role's")
	}
	wire, err := ParseEnvelope(e1.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	mustOpen(t, sa, sessNow, wire, m1)

	key, ok := sb.SendWriteKey(e1.Tag, sessNow)
	if !ok {
		t.Fatal("no write key for the sender's own version 2 tag")
	}
	d, err := ParseDeposit(SealPairDeposit(key, e1.Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(e1.Tag, 0); err != nil {
		t.Fatalf("the deposit of a version 2 envelope does not check: %v", err)
	}
	// The receiver's side cannot sign for the sender's tag, nor can the
	// sender sign for a tag of an epoch that is no longer live.
	if _, ok := sa.SendWriteKey(e1.Tag, sessNow); ok {
		t.Fatal("the receiving side found a write key for the sender's tag")
	}
	if _, ok := sb.SendWriteKey(e1.Tag, sessNow.Add(MaxTTL+72*time.Hour)); ok {
		t.Fatal("a write key for a tag of an epoch past the live ones")
	}
	other, _ := sa.SendWriteKey(sa.SendTag2(epoch), sessNow)
	d2, _ := ParseDeposit(SealPairDeposit(other, e1.Marshal()))
	if err := d2.Check(e1.Tag, 0); !errors.Is(err, ErrWriteKeyTag) {
		t.Fatalf("a deposit signed with the other role's key: %v, want ErrWriteKeyTag", err)
	}
	if pub := key.Public().(ed25519.PublicKey); WriteKeyTag(pub) != e1.Tag {
		t.Fatal("the write key does not hash to the tag")
	}
}

// TestIntroSecretFirstContact: an initial message sealed with the peer's
// intro secret goes under its version 2 intro tag, and Accept takes it only
// with that secret; a session sealed without it stays under the version 1
// intro tag, which Accept takes either way.
func TestIntroSecretFirstContact(t *testing.T) {
	rng := sessRNG(9)
	a := newSessParty(t, rng, "alice", 2)
	b := newSessParty(t, rng, "bob", 2)
	var secret, other [IntroSecretSize]byte
	secret[0], other[0] = 1, 2
	sa, err := Initiate(rng, sessNow, a.me, b.bundle, derandEncapsulator(rng))
	if err != nil {
		t.Fatal(err)
	}
	m0 := textMessage(0, "hello")
	e0, _, err := sa.Seal(rng, sessNow, m0, sessTTL, WithPeerIntroSecret(secret), WithVersion2Tags())
	if err != nil {
		t.Fatal(err)
	}
	if e0.Tag != IntroTag2(secret, Epoch(sessNow)) || !IsIntroTag2(secret, e0.Tag, sessNow) {
		t.Fatal("the initial message is not under the peer's version 2 intro tag")
	}
	if IsIntroTag2(secret, e0.Tag, sessNow.Add(MaxTTL+72*time.Hour)) {
		t.Fatal("an intro tag still live past the live epochs")
	}
	for _, opts := range [][]AcceptOption{nil, {WithIntroSecret(other)}} {
		if _, _, _, err := Accept(sessNow, b.me, b.store, e0, opts...); !errors.Is(err, ErrNotForMe) {
			t.Fatalf("Accept without the intro secret: %v, want ErrNotForMe", err)
		}
	}
	if _, got, _, err := Accept(sessNow, b.me, b.store, e0, WithIntroSecret(secret)); err != nil {
		t.Fatalf("Accept with the intro secret: %v", err)
	} else {
		checkSessMessage(t, got, m0, a.account())
	}

	// Version 1: the account's intro tag, taken with or without a secret.
	sa1, err := Initiate(rng, sessNow, a.me, b.bundle, derandEncapsulator(rng))
	if err != nil {
		t.Fatal(err)
	}
	e1, _, err := sa1.Seal(rng, sessNow, m0, sessTTL)
	if err != nil {
		t.Fatal(err)
	}
	if e1.Tag != IntroTag(b.account(), Epoch(sessNow)) {
		t.Fatal("an initial message sealed without the secret left the version 1 intro tag")
	}
	if _, _, _, err := Accept(sessNow, b.me, b.store, e1, WithIntroSecret(secret)); err != nil {
		t.Fatalf("Accept of a version 1 first message with a secret set: %v", err)
	}
}
