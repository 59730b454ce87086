package node

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
)

// strangerFirstMessage is a first message to n from a fresh account whose
// device certificate claims the peer ID claimed: anyone can sign such a
// certificate for their own account, since every peer ID is public.
func strangerFirstMessage(t *testing.T, n *Node, claimed peer.ID, text string) (env []byte, acct [32]byte) {
	t.Helper()
	raw, err := n.currentBundle(n.now())
	if err != nil {
		t.Fatal(err)
	}
	return firstMessage(t, raw, n.now(), time.Hour, claimed, text)
}

// firstMessage is a first message from a fresh account, sealed at now
// with the bundle raw, to expire ttl later.
func firstMessage(t *testing.T, raw []byte, now time.Time, ttl time.Duration, claimed peer.ID, text string) (env []byte, acct [32]byte) {
	t.Helper()
	return firstMessageSeq(t, raw, now, ttl, claimed, text, 1)
}

// firstMessageSeq is firstMessage with the sender's sequence number seq
// (above 1: the recipient holds it, waiting for the earlier ones).
func firstMessageSeq(t *testing.T, raw []byte, now time.Time, ttl time.Duration, claimed peer.ID, text string, seq uint64) (env []byte, acct [32]byte) {
	t.Helper()
	a, err := keys.GenerateAccount(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := keys.GenerateDH(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if claimed == "" {
		if claimed, err = peer.IDFromPrivateKey(p2ptest.NewKey(t)); err != nil {
			t.Fatal(err)
		}
	}
	cert, err := keys.NewDeviceCertificate(a, []byte(claimed), ik.Public(), now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	b, err := keys.ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	me := protocol.LocalIdentity{Account: a, IdentityDH: ik, Device: cert}
	sess, err := protocol.Initiate(rand.Reader, now, me, b)
	if err != nil {
		t.Fatal(err)
	}
	id, err := newMessageID(rand.Reader, now)
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := sess.Seal(rand.Reader, now, protocol.Message{
		Sender: a.Public(), ID: id, Sent: now, Seq: seq, Type: protocol.ContentText, Body: []byte(text),
	}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return e.Marshal(), [32]byte(a.Public())
}

// TestStrangerCannotFlagKeyChange: a stranger's first message whose
// device certificate claims a contact's peer ID, through a mailbox or over
// a direct stream from the stranger's own peer, is an ordinary message
// request; the contact stays as it was and sending to it still works.
func TestStrangerCannotFlagKeyChange(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	tn := newTestNet(t)
	alice := tn.start(tn.initNode("alice"))
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	bobPeer := bob.Host().ID()

	// Through a mailbox (no authenticated sender).
	env, viaMailbox := strangerFirstMessage(t, alice, bobPeer, "I am bob now")
	if err := alice.Ingest(ctx, "", env, ViaMailbox); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	// Over a real direct stream from the stranger's own host.
	stranger := p2ptest.NewHost(t)
	if err := stranger.Connect(ctx, alice.Host().AddrInfo()); err != nil {
		t.Fatal(err)
	}
	env, viaStream := strangerFirstMessage(t, alice, bobPeer, "no, I am bob")
	if err := stranger.Sender().Send(ctx, alice.Host().ID(), env); err != nil {
		t.Fatalf("direct send from the stranger: %v", err)
	}

	c, err := alice.Contact("bob")
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyChanged || c.Account != bob.ident.Account {
		t.Fatalf("bob after the strangers' claims: %+v", c)
	}
	for _, acct := range [][32]byte{viaMailbox, viaStream} {
		r, err := alice.ContactByAccount(acct)
		if err != nil || !r.Request {
			t.Fatalf("the stranger %x is %+v, %v; want a message request", acct[:4], r, err)
		}
	}
	if _, err := alice.Send(ctx, "bob", "still you?"); err != nil {
		t.Fatalf("Send to bob: %v", err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
}

// TestProvenKeyChangeAndReject: a new account on bob's own device that
// writes to alice over a direct stream from bob's peer ID flags bob as
// changed; rejecting keeps the old key and leaves the new account a
// request.
func TestProvenKeyChangeAndReject(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	tn := newTestNet(t)
	hostSeed := randomSeed(t)
	oldDir, newDir := t.TempDir()+"/bob-old", t.TempDir()+"/bob-new"
	oldIdent, err := Init(oldDir, "bob", nil, InitWithRand(seededRand(randomSeed(t), hostSeed)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(newDir, "bob", nil, InitWithRand(seededRand(randomSeed(t), hostSeed))); err != nil {
		t.Fatal(err)
	}
	alice := tn.start(tn.initNode("alice"))
	oldBob := tn.start(oldDir, func(c *Config) { c.Bootstrap = nil })
	inv, err := oldBob.invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.AddContact("bob", inv.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.RejectKeyChange("bob"); !errors.Is(err, ErrNoKeyChange) {
		t.Fatalf("RejectKeyChange with nothing pending = %v, want ErrNoKeyChange", err)
	}
	oldBob.Close()

	// The new account on the same device writes first, straight to alice.
	newBob := tn.start(newDir, func(c *Config) { c.MailboxAfter = time.Hour })
	aliceInv, err := alice.invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newBob.AddContact("alice", aliceInv.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := newBob.Send(ctx, "alice", "new key, same device"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool {
		c, err := alice.Contact("bob")
		return err == nil && c.KeyChanged
	})
	newAcct := newBob.ident.Account
	if r, err := alice.ContactByAccount(newAcct); err != nil || !r.Request {
		t.Fatalf("the new account is %+v, %v; want a message request", r, err)
	}

	v, err := alice.RejectKeyChange("bob")
	if err != nil {
		t.Fatal(err)
	}
	want := keys.SafetyNumber(alice.account(), keys.AccountPublic(oldIdent.Account))
	if v.KeyChanged || v.Contact.KeyChanged || v.Contact.Account != oldIdent.Account || v.SafetyNumber != want {
		t.Fatalf("after rejecting: %+v", v)
	}
	if r, err := alice.ContactByAccount(newAcct); err != nil || !r.Request {
		t.Fatalf("after rejecting, the new account is %+v, %v; want it still a request", r, err)
	}
	if _, err := alice.RejectKeyChange("bob"); !errors.Is(err, ErrNoKeyChange) {
		t.Fatalf("a second RejectKeyChange = %v, want ErrNoKeyChange", err)
	}
}

// TestServedBundleMustBeTheServers: a bundle that a peer serves proves a
// key change only if its device certificate names that peer.
func TestServedBundleMustBeTheServers(t *testing.T) {
	tn := newTestNet(t)
	n := tn.start(tn.initNode("alice"))
	raw, err := n.currentBundle(n.now())
	if err != nil {
		t.Fatal(err)
	}
	ctx := testkit.Context(t, 30*time.Second)
	n.Host().LibP2P().Peerstore().AddAddrs(tn.boot.ID(), tn.boot.LibP2P().Addrs(), time.Hour)
	if got, err := tn.boot.AskBundle(ctx, n.Host().ID()); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("a device's own bundle: %v", err)
	}
	tn.boot.ServeBundles(func() ([]byte, error) { return raw, nil })
	if _, err := n.Host().AskBundle(ctx, tn.boot.ID()); err == nil {
		t.Fatal("another peer serving alice's bundle was taken as alice's device")
	}
}
