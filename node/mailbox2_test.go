package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
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

// startMailboxes starts n mailbox nodes and returns them with their
// addresses.
func (tn *testNet) startMailboxes(n int) ([]*Node, []peer.AddrInfo) {
	var mbx []*Node
	var addrs []peer.AddrInfo
	for i := range n {
		m := tn.start(tn.initNode(fmt.Sprintf("mailbox%d", i)), asMailbox)
		mbx = append(mbx, m)
		addrs = append(addrs, m.Host().AddrInfo())
	}
	return mbx, addrs
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
	mbx, addrs := tn.startMailboxes(2)
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
	// Alice's messages must go under the version 2 tags. Also there may
	// be the first message (under Bob's intro tag, when the direct try was
	// slower than the deposit) and Bob's own traffic to Alice (a receipt
	// sealed before he knew her mailboxes, say).
	var v2Tags, bobTags = map[[32]byte]bool{}, map[[32]byte]bool{}
	bobIntro := bob.introSecret
	alice.db.View(func(tx *store.Tx) error {
		s, err := alice.loadSession(tx, bobAcct)
		for _, e := range protocol.LiveEpochs(time.Now()) {
			v2Tags[s.SendTag2(e)] = true
			bobTags[s.RecvTag(e)], bobTags[s.RecvTag2(e)] = true, true
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
		ours := 0
		for _, h := range held {
			switch {
			case v2Tags[h.Tag]:
				ours++
			case !bobTags[h.Tag] && !protocol.IsIntroTag2(bobIntro, h.Tag, time.Now()):
				t.Fatalf("mailbox %d holds an envelope under a tag that is neither a version 2 tag of Alice's session nor Bob's", i)
			}
		}
		if i == 0 && ours < N {
			t.Fatalf("mailbox 0 holds %d envelopes under Alice's version 2 tags, want at least %d", ours, N)
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

// TestVersion2WipeAttack: while Bob is away, a hostile peer pushes three
// times a mailbox's capacity of junk under random tags and under Bob's
// tag without its write key to both of Bob's mailboxes, and fills one of
// them to the last byte under tags it registered itself. Every message
// Alice sent before, during and after is acknowledged by at least one
// mailbox, and Bob, back, gets every one exactly once, in order.
func TestVersion2WipeAttack(t *testing.T) {
	tn := newTestNet(t)
	const capacity = 256 << 10
	perPeer := mailbox.WithNetKey(func(c network.Conn) string { return c.RemotePeer().String() })
	var mbx []*Node
	var addrs []peer.AddrInfo
	for i, total := range []int64{capacity, 0} {
		m := tn.start(tn.initNode(fmt.Sprintf("mailbox%d", i)), asMailbox, func(c *Config) {
			c.MailboxOptions = []mailbox.Option{perPeer, mailbox.WithRateLimit(1e6, 1e6), mailbox.WithLimits(store.MailboxLimits{TotalBytes: total})}
		})
		mbx = append(mbx, m)
		addrs = append(addrs, m.Host().AddrInfo())
	}
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, receiveAt), tn.start(bobDir, receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 150*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") })
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatalf("bob's round: %v", err)
	}
	var victimTag protocol.Tag
	alice.db.View(func(tx *store.Tx) error {
		s, err := alice.loadSession(tx, storedContact(t, alice, "bob").Account)
		victimTag = s.SendTag2(protocol.Epoch(time.Now()))
		return err
	})
	bob.Close()

	sent := 1
	send := func(n int) {
		for range n {
			if _, err := alice.Send(ctx, "bob", fmt.Sprintf("msg %03d", sent)); err != nil {
				t.Error(err)
			}
			sent++
		}
	}
	send(10) // before

	h, err := p2p.NewEphemeral()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	attacker := mailbox.NewClient2(ctx, h)
	now := time.Now()
	e := protocol.Epoch(now)
	junkEnv := func(tag protocol.Tag, size int) []byte {
		ct := make([]byte, size)
		rand.Read(ct)
		return (&protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: tag, Expiry: now.Add(time.Hour), Ciphertext: ct}).Marshal()
	}
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		for junk := 0; junk < 3*capacity && ctx.Err() == nil; {
			var random protocol.Tag
			rand.Read(random[:])
			for _, tag := range []protocol.Tag{random, victimTag} {
				env := junkEnv(tag, 4000)
				dep := protocol.SealPairDeposit(protocol.WriteKey([32]byte{byte(junk)}, protocol.FromInitiator, e), env)
				for _, m := range addrs {
					if err := attacker.Push(ctx, m, dep); err == nil {
						t.Error("a mailbox stored junk pushed without the tag's write key")
					}
				}
				junk += len(env)
			}
		}
		// Then mailbox 0 filled to the last byte under its own tags.
		var seed [32]byte
		rand.Read(seed[:])
		tag := protocol.PairTag2(seed, protocol.FromInitiator, e)
		if n, _, err := attacker.Register(ctx, addrs[0], []mailbox.Registration{{Kind: store.RegPair, Tag: tag, Epoch: e}}); n != 1 {
			t.Errorf("the attacker's registration: %v", err)
			return
		}
		for _, size := range []int{4000, 50} {
			for i := 0; i < 2000; i++ {
				if attacker.Push(ctx, addrs[0], protocol.SealPairDeposit(protocol.WriteKey(seed, protocol.FromInitiator, e), junkEnv(tag, size))) != nil {
					break
				}
			}
		}
	}()
	send(10) // during
	<-flooded
	send(10) // after
	got := waitMessages(t, ctx, alice, "bob", sent, stored)
	for _, m := range got {
		if m.StoredAt < 1 && m.State != StateDelivered {
			t.Fatalf("message %q stored at %d mailboxes", m.Body, m.StoredAt)
		}
	}
	// After the flood the full mailbox refuses (it evicts nothing), and
	// the other holds them.
	for _, m := range got[len(got)-10:] {
		if m.StoredAt != 1 {
			t.Fatalf("message %q sent after the flood stored at %d mailboxes, want 1", m.Body, m.StoredAt)
		}
	}
	if held := mbx[0].mailboxHeld(); held.Bytes < capacity*9/10 {
		t.Fatalf("mailbox 0 holds %d bytes: the attacker did not fill it", held.Bytes)
	}

	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "alice", sent, incoming)
	if len(in) != sent {
		t.Fatalf("bob got %d messages, want exactly %d", len(in), sent)
	}
	for i, m := range in[1:] {
		if want := fmt.Sprintf("msg %03d", i+1); string(m.Body) != want {
			t.Fatalf("message %d = %q, want %q", i+1, m.Body, want)
		}
	}
}

// TestVersion2FirstContact: Bob's invite carries his intro secret and his
// mailboxes. Alice's first message, while Bob is offline, goes under his
// version 2 intro tag (not the one anyone can compute from his account
// key), stamped, to those mailboxes; Bob, back, reads it there.
func TestVersion2FirstContact(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(2)
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, receiveAt), tn.start(bobDir, receiveAt)
	ctx := testkit.Context(t, 90*time.Second)
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatalf("bob's round: %v", err)
	}
	inv, err := bob.invite()
	if err != nil {
		t.Fatal(err)
	}
	if inv.IntroSecret == nil || *inv.IntroSecret != bob.introSecret || len(inv.Mailboxes) != 2 {
		t.Fatalf("bob's invite has intro secret %v and %d mailboxes", inv.IntroSecret != nil, len(inv.Mailboxes))
	}
	inv.Addrs = nil
	if _, err := alice.AddContact("bob", inv.String()); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	if _, err := alice.Send(ctx, "bob", "hello from a stranger"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, alice, "bob", 1, stored)
	if got[0].StoredAt != 2 {
		t.Fatalf("first message stored at %d mailboxes, want 2", got[0].StoredAt)
	}
	e := protocol.Epoch(time.Now())
	for i, m := range mbx {
		held, err := m.MailboxPeek(10)
		if err != nil || len(held) != 1 {
			t.Fatalf("mailbox %d holds %d envelopes (%v), want 1", i, len(held), err)
		}
		if held[0].Tag != protocol.IntroTag2(bob.introSecret, e) {
			t.Fatalf("mailbox %d holds the first message under another tag than bob's version 2 intro tag", i)
		}
	}
	// Alice goes away too, so that her outbox cannot hand the message to
	// Bob directly when he is back: it must come from the mailboxes.
	alice.Close()
	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "", 1, incoming)
	if string(in[0].Body) != "hello from a stranger" || in[0].Via != ViaMailbox {
		t.Fatalf("bob got %q via %v", in[0].Body, in[0].Via)
	}
}

// TestCuriousMailbox: one mailbox records every request it gets while
// five users, who all receive there, write to each other around a ring
// while each recipient is away, a stranger writes first from an invite,
// and everyone comes back; then the clock (everyone's, injected) moves on
// a day and they do it again. What it sees over version 2 comes from no
// user's published peer ID; names no tag computable from an account key;
// its pushes come from other identities than its registrations, queries
// and filters; intro tags and pairwise tags never share an identity; no
// identity names a pair's tags (or a user's intro tags) of two epochs;
// and the version 1 requests (the upgrade window's sync, from the
// published peer ID) name no version 2 tag. The stranger is told where
// user0 receives only once user0 takes it as a contact.
func TestCuriousMailbox(t *testing.T) {
	tn := newTestNet(t)
	var mu sync.Mutex
	var seen []mailbox.Seen
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	m := tn.start(tn.initNode("mailbox"), asMailbox, func(c *Config) {
		c.Now = now
		c.MailboxOptions = []mailbox.Option{mailbox.WithObserver(func(s mailbox.Seen) {
			mu.Lock()
			seen = append(seen, s)
			mu.Unlock()
		})}
	})
	receiveAt := func(c *Config) { c.MailboxNodes, c.Now = []peer.AddrInfo{m.Host().AddrInfo()}, now }
	ctx := testkit.Context(t, 200*time.Second)
	const N = 5
	dirs := make([]string, N)
	users := make([]*Node, N)
	for i := range N {
		dirs[i] = tn.initNode(fmt.Sprintf("user%d", i))
		users[i] = tn.start(dirs[i], receiveAt)
	}
	name := func(i int) string { return fmt.Sprintf("user%d", i%N) }
	for i := range N - 1 { // a ring, but for the stranger's link
		befriend(t, users[i], name(i), users[i+1], name(i+1))
	}
	for i := range N - 1 {
		if _, err := users[i].Send(ctx, name(i+1), "hello"); err != nil {
			t.Fatal(err)
		}
		waitMessages(t, ctx, users[i+1], name(i), 1, incoming)
		testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, users[i], name(i+1)) })
		if _, err := users[i+1].mbx.user.Round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The stranger: user4 writes first to user0 from user0's invite.
	inv, err := users[0].invite()
	if err != nil {
		t.Fatal(err)
	}
	inv.Addrs = nil
	if _, err := users[N-1].AddContact(name(0), inv.String()); err != nil {
		t.Fatal(err)
	}
	// Each recipient away in turn while its sender writes; a day later,
	// again.
	for day := range 2 {
		if day == 1 {
			offset.Store(int64(protocol.EpochLength))
		}
		for i := range N {
			to := (i + 1) % N
			users[to].Close()
			body := fmt.Sprintf("while you were away on day %d, from %d", day, i)
			if _, err := users[i].Send(ctx, name(to), body); err != nil {
				t.Fatal(err)
			}
			waitMessages(t, ctx, users[i], name(to), 1, func(m Message) bool { return stored(m) && string(m.Body) == body })
			users[to] = tn.start(dirs[to], receiveAt)
			testkit.WaitFor(t, ctx, func() bool {
				return len(messagesWhere(t, users[to], "", func(m Message) bool {
					return m.Direction == Incoming && string(m.Body) == body
				})) == 1
			})
		}
	}

	// user0 holds user4's first message as a request and never told it
	// where it receives.
	users[0].db.View(func(tx *store.Tx) error {
		acct := users[N-1].account()
		c, err := tx.GetContact(acct)
		if err != nil || !c.IsRequest {
			t.Fatalf("the stranger at user0: %+v, %v; want a request", c, err)
		}
		if _, err := tx.GetSetting(toldMailboxesPrefix + base64.RawURLEncoding.EncodeToString(acct[:])); err == nil {
			t.Fatal("a stranger's request was told the mailboxes")
		}
		return nil
	})
	// Once user0 takes the stranger as a contact, it tells it.
	inv4, err := users[N-1].invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users[0].AddContact("stranger", inv4.String()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool {
		var told bool
		users[0].db.View(func(tx *store.Tx) error {
			acct := users[N-1].account()
			_, err := tx.GetSetting(toldMailboxesPrefix + base64.RawURLEncoding.EncodeToString(acct[:]))
			told = err == nil
			return nil
		})
		return told
	})
	// Which pair (or whose intro tags) and epoch each version 2 tag is,
	// over both days' live epochs.
	type owner struct {
		pair  string
		epoch uint64
	}
	owners := map[[32]byte]owner{}
	epochs := append(protocol.LiveEpochs(time.Now()), protocol.Epoch(now())+1)
	published := map[peer.ID]bool{}
	v1Tags := map[[32]byte]bool{}
	for i, u := range users {
		published[u.Host().ID()] = true
		for _, e := range epochs {
			v1Tags[protocol.IntroTag(u.account(), e)] = true
			owners[protocol.IntroTag2(u.introSecret, e)] = owner{fmt.Sprintf("intro of %d", i), e}
		}
		u.db.View(func(tx *store.Tx) error {
			return u.eachSession(tx, func(c store.Contact, s *protocol.Session) error {
				a, b := u.account(), c.Account
				if bytes.Compare(a[:], b[:]) > 0 {
					a, b = b, a
				}
				pair := fmt.Sprintf("%x-%x", a[:4], b[:4])
				for _, e := range epochs {
					owners[s.SendTag2(e)] = owner{pair, e}
					owners[s.RecvTag2(e)] = owner{pair, e}
				}
				return nil
			})
		})
	}
	isIntro2 := func(tag [32]byte) bool { return strings.HasPrefix(owners[tag].pair, "intro") }
	mu.Lock()
	defer mu.Unlock()
	pushers, readers := map[peer.ID]bool{}, map[peer.ID]bool{}
	introPeers, pairPeers := map[peer.ID]bool{}, map[peer.ID]bool{}
	v2Tags := map[[32]byte]bool{}
	ops := map[string]int{}
	for _, s := range seen {
		if s.Version == 1 {
			continue
		}
		ops[s.Op]++
		if published[s.Peer] {
			t.Fatalf("a version 2 %s came from a user's published peer ID", s.Op)
		}
		if s.Op == "push" {
			pushers[s.Peer] = true
		} else {
			readers[s.Peer] = true
		}
		for _, tag := range s.Tags {
			v2Tags[tag] = true
			if v1Tags[tag] {
				t.Fatalf("a version 2 %s named a tag computable from an account key", s.Op)
			}
			if s.Op == "push" {
				continue
			}
			if isIntro2(tag) {
				introPeers[s.Peer] = true
			} else {
				pairPeers[s.Peer] = true
			}
		}
	}
	for _, op := range []string{"register", "push", "query", "filter"} {
		if ops[op] == 0 {
			t.Fatalf("the mailbox saw no version 2 %s (saw %v): the test watched nothing", op, ops)
		}
	}
	t.Logf("version 2 requests seen: %v, from %d pushing and %d reading identities", ops, len(pushers), len(readers))
	for p := range pushers {
		if readers[p] {
			t.Fatal("one identity both pushed and registered, queried or filtered")
		}
	}
	for p := range introPeers {
		if pairPeers[p] {
			t.Fatal("one identity named both intro tags and pairwise tags")
		}
	}
	// No identity names one pair's tags of two epochs, though the mailbox
	// saw pairs' tags of two epochs.
	byPeer := map[peer.ID]map[string]uint64{}
	pairEpochs := map[string]map[uint64]bool{}
	for _, s := range seen {
		for _, tag := range s.Tags {
			o, ok := owners[tag]
			if s.Version == 1 || !ok {
				continue
			}
			if pairEpochs[o.pair] == nil {
				pairEpochs[o.pair] = map[uint64]bool{}
			}
			pairEpochs[o.pair][o.epoch] = true
			if byPeer[s.Peer] == nil {
				byPeer[s.Peer] = map[string]uint64{}
			}
			if e, ok := byPeer[s.Peer][o.pair]; ok && e != o.epoch {
				t.Fatalf("one identity named tags of %s in two epochs (a %s)", o.pair, s.Op)
			}
			byPeer[s.Peer][o.pair] = o.epoch
		}
	}
	spanning := 0
	for _, es := range pairEpochs {
		if len(es) > 1 {
			spanning++
		}
	}
	if spanning < N-1 {
		t.Fatalf("the mailbox saw tags of two epochs for %d pairs or intro secrets, want at least %d: the test watched too little", spanning, N-1)
	}
	for _, s := range seen {
		if s.Version != 1 {
			continue
		}
		for _, tag := range s.Tags {
			if v2Tags[tag] {
				t.Fatalf("a version 1 %s named a version 2 tag", s.Op)
			}
		}
	}
}

// TestMailboxReplacedAndAnnounced: Bob receives at two of three mailboxes.
// One stops answering; after MailboxFailLimit failed rounds Bob gives it
// up, takes the third, registers there and tells Alice inside the ratchet;
// Alice's next messages, while Bob is away, are stored at the new set.
func TestMailboxReplacedAndAnnounced(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(3)
	receiveAt := func(c *Config) { c.MailboxNodes, c.MailboxCopies = addrs, 2 }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, receiveAt), tn.start(bobDir, receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	bobAt := func() (ids []peer.ID) {
		c := storedContact(t, alice, "bob")
		alice.db.View(func(tx *store.Tx) error {
			for _, m := range mailbox.ContactMailboxes(tx, c.Account) {
				ids = append(ids, m.ID)
			}
			return nil
		})
		return ids
	}
	testkit.WaitFor(t, ctx, func() bool { return len(bobAt()) == 2 })
	if got := bobAt(); got[0] != addrs[0].ID || got[1] != addrs[1].ID {
		t.Fatalf("alice knows bob at %v, want the first two mailboxes", got)
	}

	mbx[0].Close()
	for range mailbox.MailboxFailLimit {
		bob.mbx.user.Round(ctx)
	}
	if _, err := bob.mbx.user.Round(ctx); err != nil { // chooses, registers
		t.Fatalf("the round after replacing: %v", err)
	}
	if got := bob.mbx.user.Mailboxes(); len(got) != 2 || got[0].ID != addrs[1].ID || got[1].ID != addrs[2].ID {
		t.Fatalf("bob receives at %v, want the second and third mailboxes", got)
	}
	bob.announceMailboxes()
	testkit.WaitFor(t, ctx, func() bool {
		got := bobAt()
		return len(got) == 2 && got[0] == addrs[1].ID && got[1] == addrs[2].ID
	})
	bob.Close()
	if _, err := alice.Send(ctx, "bob", "to the new set"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, alice, "bob", 2, stored)
	if got[1].StoredAt != 2 {
		t.Fatalf("stored at %d mailboxes, want both of the new set", got[1].StoredAt)
	}
	if held := mbx[2].mailboxHeld(); held.Envelopes < 1 {
		t.Fatal("the new mailbox holds nothing")
	}
}

// TestVersion1DepositsEndByDate: with every clock past the end of the
// upgrade window, a first message to an invite that names no mailboxes
// (so it would go by version 1) is not deposited anywhere: it waits in
// the outbox, and reaches Bob directly when he is back. Once reading
// version 1 has ended too, a node sends no version 1 request at all.
func TestVersion1DepositsEndByDate(t *testing.T) {
	var offset atomic.Int64
	offset.Store(int64(time.Until(protocol.Version1Ends.Add(time.Hour))))
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	tn := &testNet{t: t, boot: p2ptest.NewHost(t, p2p.WithBundleVerifier(p2p.VerifyBundle), p2p.WithClock(now))}
	initAt := func(name string) string {
		dir := t.TempDir() + "/" + name
		if _, err := Init(dir, name, nil, InitWithClock(now)); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	var mu sync.Mutex
	var seen []mailbox.Seen
	m := tn.start(initAt("mailbox"), asMailbox, func(c *Config) {
		c.Now = now
		c.MailboxOptions = []mailbox.Option{mailbox.WithObserver(func(s mailbox.Seen) {
			mu.Lock()
			seen = append(seen, s)
			mu.Unlock()
		})}
	})
	receiveAt := func(c *Config) { c.MailboxNodes, c.Now = []peer.AddrInfo{m.Host().AddrInfo()}, now }
	aliceDir, bobDir := initAt("alice"), initAt("bob")
	alice, bob := tn.start(aliceDir, receiveAt), tn.start(bobDir, receiveAt)
	ctx := testkit.Context(t, 90*time.Second)
	inv, err := bob.invite()
	if err != nil {
		t.Fatal(err)
	}
	inv.Addrs, inv.Mailboxes = nil, nil
	if _, err := alice.AddContact("bob", inv.String()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool {
		_, err := tn.boot.GetBundle(ctx, bob.ident.Account[:])
		return err == nil
	})
	bob.Close()
	if _, err := alice.Send(ctx, "bob", "after the window"); err != nil {
		t.Fatal(err)
	}
	bobAcct := storedContact(t, alice, "bob").Account
	testkit.WaitFor(t, ctx, func() bool { _, ok := alice.mbx.v1Over.Load(bobAcct); return ok })
	if got := messagesWhere(t, alice, "bob", func(Message) bool { return true }); len(got) != 1 || got[0].State != StateQueued || got[0].StoredAt != 0 {
		t.Fatalf("alice's message: %+v; want one, queued, stored nowhere", got)
	}
	if h := m.mailboxHeld(); h.Envelopes != 0 {
		t.Fatalf("the mailbox holds %d envelopes", h.Envelopes)
	}
	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "", 1, incoming)
	if string(in[0].Body) != "after the window" || in[0].Via != ViaDirect {
		t.Fatalf("bob got %q via %v, want it directly", in[0].Body, in[0].Via)
	}

	// Reading version 1 ends too: no node sends a version 1 request. A
	// sync begun before (bob's return starts one) may still finish.
	offset.Store(int64(time.Until(protocol.Version1ReadEnds.Add(time.Hour))))
	testkit.WaitFor(t, ctx, func() bool { return alice.v1Syncing.Load() == 0 && bob.v1Syncing.Load() == 0 })
	mu.Lock()
	mark := len(seen)
	mu.Unlock()
	for _, n := range []*Node{alice, bob} {
		if k, err := n.SyncMailboxes(ctx); k != 0 || err != nil {
			t.Fatalf("the version 1 sync after reading ended = %d, %v", k, err)
		}
		if _, err := n.mbx.user.Round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	v2 := 0
	for _, s := range seen[mark:] {
		if s.Version == 1 {
			t.Fatalf("a version 1 %s after reading version 1 ended", s.Op)
		}
		v2++
	}
	if v2 == 0 {
		t.Fatal("the mailbox saw no request at all after reading ended: the test watched nothing")
	}
}

// TestAnswerToNewSessionFindsTagsRegistered: a device whose mailbox
// registrations are slow (each fresh identity takes 4 s to open: longer
// than RegisterWait, as under load, and far longer than a direct delivery
// on loopback) starts a session, and goes
// offline the moment its peer has read its
// first envelope of it; what the peer writes next under the session's
// tags is stored at the device's mailboxes, not refused as Unregistered
// until the device comes back: the session's envelopes waited for the
// registration, past RegisterWait since its mailboxes answer (SPEC
// "Registration", MaxRegisterWait). Once as initiator (its first
// message), once as responder (its receipt). The device comes back while
// its peer is offline, and reads it from a mailbox.
func TestAnswerToNewSessionFindsTagsRegistered(t *testing.T) {
	for _, role := range []string{"initiator", "responder"} {
		t.Run(role, func(t *testing.T) {
			tn := newTestNet(t)
			_, addrs := tn.startMailboxes(2)
			receiveAt := func(c *Config) { c.MailboxNodes = addrs }
			// Slow until the device goes offline (so that its close does
			// not wait out the delay of every host its loops open).
			offline := make(chan struct{})
			slow := func(c *Config) {
				c.EphemeralHost = func() (host.Host, error) {
					select {
					case <-time.After(mailbox.RegisterWait + time.Second):
					case <-offline:
					}
					return p2p.NewEphemeral()
				}
			}
			aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
			// Alice writes first; the slow one goes offline.
			slowDir, slowName, otherName := aliceDir, "alice", "bob"
			aliceMods, bobMods := []func(*Config){receiveAt, slow}, []func(*Config){receiveAt}
			if role == "responder" {
				slowDir, slowName, otherName = bobDir, "bob", "alice"
				aliceMods, bobMods = bobMods, aliceMods
			}
			alice, bob := tn.start(aliceDir, aliceMods...), tn.start(bobDir, bobMods...)
			ctx := testkit.Context(t, 90*time.Second)
			// Each invite names its maker's mailboxes.
			testkit.WaitFor(t, ctx, func() bool {
				return len(alice.mbx.user.Mailboxes()) > 0 && len(bob.mbx.user.Mailboxes()) > 0
			})
			befriend(t, alice, "alice", bob, "bob")
			if !contactAnnounced(t, alice, "bob") || !contactAnnounced(t, bob, "alice") {
				t.Fatal("an invite named no mailboxes")
			}

			if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
				t.Fatal(err)
			}
			slowNode, other := alice, bob
			if role == "initiator" {
				waitMessages(t, ctx, bob, "alice", 1, incoming)
			} else {
				slowNode, other = bob, alice
				waitMessages(t, ctx, alice, "bob", 1, delivered)
			}
			close(offline)
			slowNode.Close()

			m, err := other.Send(ctx, slowName, "while you were away")
			if err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, ctx, func() bool {
				got := storedMessage(t, other, m.ID)
				return got.StoredAt > 0
			})
			// Only the mailboxes can hand it over now.
			other.Close()
			back := tn.start(slowDir, receiveAt)
			in := waitMessages(t, ctx, back, otherName, 1, func(m Message) bool {
				return m.Direction == Incoming && string(m.Body) == "while you were away"
			})
			if in[0].Via != ViaMailbox {
				t.Fatalf("the answer came %v, want from a mailbox", in[0].Via)
			}
		})
	}
}

// TestStartOverWhenPrekeyTakenTwice: Carol's first message to Bob goes to
// his mailbox while he is away; before he reads it, another initiator
// takes the one-time prekeys it names (here: they are deleted from Bob's
// store), so Bob rejects it and publishes a bundle without them. Carol
// and Bob are never online together until the end, so no direct attempt
// tells her. Once her session has gone unanswered PendingRecheck after
// the deposit, she finds the prekeys gone from Bob's bundle in the DHT and
// starts the session over (SPEC "A one-time prekey taken twice"); Bob
// then shows her message exactly once and she sees it delivered. The
// copy of her first envelope that Bob could not open is held by his
// mailbox until she withdraws it (SPEC "Withdrawing a refused envelope").
func TestStartOverWhenPrekeyTakenTwice(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	// Carol's clock runs, and is moved PendingRecheck ahead while she is
	// away.
	var ahead atomic.Int64
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	carolClock := func(c *Config) { c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) } }
	ctx := testkit.Context(t, 120*time.Second)
	carolDir, bobDir := tn.initNode("carol"), tn.initNode("bob")
	carol, m, firstEnv := firstWhileAway(t, ctx, tn, carolDir, bobDir, receiveAt, carolClock)
	// The session Carol started first.
	env, _ := protocol.ParseEnvelope(firstEnv)
	first, _ := protocol.EnvelopeInitialID(env)
	if first == ([32]byte{}) {
		t.Fatal("carol's outbox entry is not sealed on a pending session")
	}
	carol.Close()

	takeOneTimePrekeys(t, bobDir)
	// Bob reads Carol's first message and cannot open it; he publishes a
	// bundle with fresh one-time prekeys, and goes away again.
	bob := tn.start(bobDir, receiveAt)
	testkit.WaitFor(t, ctx, bundlePublished(bob))
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	if got := messagesWhere(t, bob, "carol", incoming); len(got) != 0 {
		t.Fatalf("bob shows %d messages from a first message whose prekeys were gone", len(got))
	}
	bob.Close()
	if !mailboxHolds(t, mbx[0], firstEnv) {
		t.Fatal("the mailbox does not hold the first envelope Bob could not open")
	}

	ahead.Store(int64(PendingRecheck + time.Second))
	carol = tn.start(carolDir, receiveAt, carolClock)
	acct := storedContact(t, carol, "bob").Account
	session := func() (id [32]byte, deposited bool) {
		carol.db.View(func(tx *store.Tx) error {
			if s, err := carol.loadSession(tx, acct); err == nil && s != nil {
				id = s.InitialID()
			}
			e, err := tx.GetOutbox(m.ID)
			deposited = err == nil && e.Envelope != nil && e.Mailboxes > 0
			return nil
		})
		return id, deposited
	}
	testkit.WaitFor(t, ctx, func() bool {
		id, deposited := session()
		if id != first && id != ([32]byte{}) && deposited {
			// sealed on the new session, and in Bob's mailbox
			var e store.OutboxEntry
			carol.db.View(func(tx *store.Tx) (err error) { e, err = tx.GetOutbox(m.ID); return err })
			env, err := protocol.ParseEnvelope(e.Envelope)
			got, _ := protocol.EnvelopeInitialID(env)
			return err == nil && got == id
		}
		return false
	})
	// Carol withdraws the refused copy: Bob could not.
	testkit.WaitFor(t, ctx, func() bool { return !mailboxHolds(t, mbx[0], firstEnv) })
	carol.db.View(func(tx *store.Tx) error {
		if ws, err := pendingWithdrawals(tx); err != nil || len(ws) != 0 {
			t.Errorf("withdrawals left after the mailbox answered: %d (%v)", len(ws), err)
		}
		return nil
	})
	carol.Close()

	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "carol", 1, incoming)
	if len(in) != 1 || string(in[0].Body) != "hello" || in[0].Via != ViaMailbox {
		t.Fatalf("bob shows %v, want hello once, from his mailbox", in)
	}
	carol = tn.start(carolDir, receiveAt, carolClock)
	waitMessages(t, ctx, carol, "bob", 1, delivered)
	if got := messagesWhere(t, bob, "carol", incoming); len(got) != 1 {
		t.Fatalf("bob shows %d messages, want exactly 1", len(got))
	}
}

// takeOneTimePrekeys deletes every one-time prekey of the stopped node in
// dir, as if another initiator had taken them, and drops them from its
// bundle.
func takeOneTimePrekeys(t *testing.T, dir string) {
	t.Helper()
	offline, err := Open(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	err = offline.db.Update(func(tx *store.Tx) error {
		for _, kind := range []store.PrekeyKind{store.PrekeyOneTimeDH, store.PrekeyOneTimeKEM} {
			ids, err := tx.PrekeyIDs(kind)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if err := tx.DeletePrekey(kind, id); err != nil {
					return err
				}
			}
		}
		// As after accepting that initiator: the bundle without them.
		_, err := offline.dropUsedPrekeys(tx)
		return err
	})
	offline.Close()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRejectedEnvelopeWithdrawn: Carol's first message to Bob goes to his
// mailbox while he is away, and another initiator takes the one-time
// prekeys it names. Bob comes back and cannot open it; when Carol's
// outbox then tries it directly, Bob rejects it, and Carol, who seals it
// again on a fresh session, withdraws the refused copy from Bob's mailbox
// (SPEC "Withdrawing a refused envelope"). Bob shows the message once.
func TestRejectedEnvelopeWithdrawn(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	ctx := testkit.Context(t, 120*time.Second)
	bobDir := tn.initNode("bob")
	carol, _, refused := firstWhileAway(t, ctx, tn, tn.initNode("carol"), bobDir, receiveAt)
	if !mailboxHolds(t, mbx[0], refused) {
		t.Fatal("the mailbox does not hold Carol's first envelope")
	}
	takeOneTimePrekeys(t, bobDir)

	bob := tn.start(bobDir, receiveAt)
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	if got := messagesWhere(t, bob, "carol", incoming); len(got) != 0 {
		t.Fatalf("bob shows %d messages from a first message whose prekeys were gone", len(got))
	}
	if !mailboxHolds(t, mbx[0], refused) {
		t.Fatal("the copy Bob could not open left the mailbox before Carol withdrew it")
	}
	// Carol's device meets Bob's: her outbox tries the envelope directly.
	if err := carol.Host().LibP2P().Connect(ctx, bob.Host().AddrInfo()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { return !mailboxHolds(t, mbx[0], refused) })
	in := waitMessages(t, ctx, bob, "carol", 1, incoming)
	if len(in) != 1 || string(in[0].Body) != "hello" {
		t.Fatalf("bob shows %v, want hello once", in)
	}
	waitMessages(t, ctx, carol, "bob", 1, delivered)
	if got := messagesWhere(t, bob, "carol", incoming); len(got) != 1 {
		t.Fatalf("bob shows %d messages, want exactly 1", len(got))
	}
}

// firstWhileAway starts Carol and Bob from their data directories, both
// receiving as mods say, makes them contacts, has Bob publish his bundle
// and register his intro tags, and stops him; then Carol writes first to
// him, and her message is stored at his mailbox. It returns Carol, still
// running, the message and its envelope.
func firstWhileAway(t *testing.T, ctx context.Context, tn *testNet, carolDir, bobDir string, receiveAt func(*Config), carolMods ...func(*Config)) (*Node, Message, []byte) {
	t.Helper()
	carol, bob := tn.start(carolDir, append([]func(*Config){receiveAt}, carolMods...)...), tn.start(bobDir, receiveAt)
	testkit.WaitFor(t, ctx, func() bool {
		return len(carol.mbx.user.Mailboxes()) > 0 && len(bob.mbx.user.Mailboxes()) > 0
	})
	befriend(t, carol, "carol", bob, "bob")
	testkit.WaitFor(t, ctx, bundlePublished(bob))      // Carol fetches it from the DHT
	if _, err := bob.mbx.user.Round(ctx); err != nil { // his intro tags registered
		t.Fatal(err)
	}
	bob.Close()
	m, err := carol.Send(ctx, "bob", "hello")
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { return storedMessage(t, carol, m.ID).StoredAt > 0 })
	var env []byte
	if err := carol.db.View(func(tx *store.Tx) error {
		e, err := tx.GetOutbox(m.ID)
		env = e.Envelope
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return carol, m, env
}

// bundlePublished reports whether n has put its bundle into the DHT.
func bundlePublished(n *Node) func() bool {
	return func() bool { st, err := n.Status(); return err == nil && !st.BundlePublished.IsZero() }
}

// mailboxHolds reports whether the mailbox node m holds env.
func mailboxHolds(t *testing.T, m *Node, env []byte) bool {
	t.Helper()
	held := false
	if err := m.db.View(func(tx *store.Tx) error {
		es, err := tx.MailboxPeek(1 << 20)
		for _, e := range es {
			held = held || bytes.Equal(e.Envelope, env)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return held
}

// TestOutboxWakesWhenMailboxReturns: Bob is away and the one mailbox he
// and Alice receive at goes down, so Alice's message to him is stored
// nowhere and waits in her outbox with its next try far off. When the
// mailbox is back, Alice's filter there opens again, and that alone sends
// the message on to it: nothing waits for the outbox's backoff.
func TestOutboxWakesWhenMailboxReturns(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	mDir := mbx[0].cfg.DataDir
	var mListen []string
	for _, a := range addrs[0].Addrs {
		mListen = append(mListen, a.String())
	}
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	alice, bob := tn.start(tn.initNode("alice"), receiveAt), tn.start(tn.initNode("bob"), receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") })
	if _, err := bob.mbx.user.Round(ctx); err != nil { // registers the session's tags
		t.Fatalf("bob's round: %v", err)
	}
	bob.Close()
	mbx[0].Close()

	m, err := alice.Send(ctx, "bob", "while the mailbox is down")
	if err != nil {
		t.Fatal(err)
	}
	// Once tried, the entry's next try is put as far off as a backoff
	// goes (past the test's deadline), until no attempt in flight writes
	// it back.
	stable := 0
	testkit.WaitFor(t, ctx, func() bool {
		var e store.OutboxEntry
		alice.db.Update(func(tx *store.Tx) error {
			var err error
			if e, err = tx.GetOutbox(m.ID); err != nil || e.Attempts == 0 || e.Mailboxes > 0 {
				return err
			}
			if time.Until(e.NextAttempt) < maxRetry-time.Minute {
				stable = 0
				e.NextAttempt = time.Now().Add(maxRetry)
				return tx.PutOutbox(e)
			}
			stable++
			return nil
		})
		if e.Mailboxes > 0 {
			t.Fatal("the message was stored at a mailbox that is down")
		}
		return stable >= 300 // 3 s
	})
	if got := storedMessage(t, alice, m.ID); got.StoredAt != 0 {
		t.Fatalf("stored at %d mailboxes before the mailbox is back", got.StoredAt)
	}

	tn.start(mDir, asMailbox, func(c *Config) { c.ListenAddrs = mListen })
	testkit.WaitFor(t, ctx, func() bool { return storedMessage(t, alice, m.ID).StoredAt > 0 })
}

// TestAckedMessageDoesNotSpin: a message Bob acknowledged directly but
// whose receipt has not come back is sent again when its receipt is
// late; with Bob gone, that attempt fails, and the next one waits its
// backoff. (It once came back every 10 ms, as if a deposit were due,
// which a message acked directly never needs: thousands of attempts a
// second until Bob returned.)
func TestAckedMessageDoesNotSpin(t *testing.T) {
	tn := newTestNet(t)
	_, addrs := tn.startMailboxes(1)
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	alice, bob := tn.start(tn.initNode("alice"), receiveAt), tn.start(tn.initNode("bob"), receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 60*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, delivered)
	bob.Close()
	m, err := alice.Send(ctx, "bob", "acked, receipt late")
	if err != nil {
		t.Fatal(err)
	}
	// As if Bob had acked it directly and gone before his receipt: sent,
	// in no mailbox, due now.
	stable := 0
	testkit.WaitFor(t, ctx, func() bool {
		alice.db.Update(func(tx *store.Tx) error {
			e, err := tx.GetOutbox(m.ID)
			if err != nil {
				return err
			}
			if st, _ := tx.MessageState(m.ID); st != store.StateSent || e.Mailboxes != 0 || e.Attempts > 0 {
				stable = 0
				if _, _, err := tx.SetMessageState(m.ID, store.StateSent); err != nil {
					return err
				}
				e.Mailboxes, e.Attempts, e.NextAttempt = 0, 0, time.Now()
				return tx.PutOutbox(e)
			}
			stable++
			return nil
		})
		return stable >= 5
	})
	alice.kickOutbox()
	attempts := func() int {
		var a int
		alice.db.View(func(tx *store.Tx) error {
			e, err := tx.GetOutbox(m.ID)
			a = e.Attempts
			return err
		})
		return a
	}
	testkit.WaitFor(t, ctx, func() bool { return attempts() > 0 })
	first := attempts()
	time.Sleep(4 * time.Second)
	// Backoff from 1 s doubles: at most 3 more attempts in 4 s (the spin
	// made thousands).
	if more := attempts() - first; more > 4 {
		t.Fatalf("%d delivery attempts in 4 s for a message that waits for its receipt; want at most 4", more)
	}
}

// TestRestartOntoEarlierClock: Alice writes to Bob, who is away, while
// her clock runs 10 minutes ahead; her outbox schedules its tries (and
// dates the message) by that clock. She restarts onto the right clock
// and Bob comes back: the message reaches him at once, not when her old
// clock's schedule comes round. (Found by the long chaos run, where a
// user's clock goes back after a skew.)
func TestRestartOntoEarlierClock(t *testing.T) {
	tn := newTestNet(t)
	var offset atomic.Int64
	offset.Store(int64(10 * time.Minute))
	clock := func(c *Config) { c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) } }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, clock), tn.start(bobDir)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 90*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	bob.Close()
	m, err := alice.Send(ctx, "bob", "written ahead")
	if err != nil {
		t.Fatal(err)
	}
	// A failed try: the next is scheduled by the clock that runs ahead.
	testkit.WaitFor(t, ctx, func() bool {
		var e store.OutboxEntry
		alice.db.View(func(tx *store.Tx) error { e, _ = tx.GetOutbox(m.ID); return nil })
		return e.Attempts >= 1
	})
	alice.Close()
	offset.Store(0)
	alice = tn.start(aliceDir, clock)
	var e store.OutboxEntry
	alice.db.View(func(tx *store.Tx) error { e, _ = tx.GetOutbox(m.ID); return nil })
	if e.Created.After(time.Now().Add(time.Minute)) || e.NextAttempt.After(time.Now().Add(maxRetry+time.Minute)) {
		t.Fatalf("after the restart the entry is still dated %v and due %v, by the clock that ran ahead", e.Created, e.NextAttempt)
	}
	bob = tn.start(bobDir)
	in := waitMessages(t, ctx, bob, "alice", 2, incoming)
	if string(in[1].Body) != "written ahead" {
		t.Fatalf("bob got %q", in[1].Body)
	}
}

// TestClockAheadDeposits: Alice's clock runs 10 minutes ahead of the
// machine's and Bob is away. Her message goes to Bob's mailbox once it
// waited MailboxAfter by her clock, while the direct try (which takes
// seconds to give up on a peer that is gone) still runs; then Bob comes
// back and has it. (The deposit's wait was measured against the machine's
// clock, so with a clock ahead it waited for the direct try to end and
// then gave up until the outbox's next pass; TestCuriousMailbox, whose
// users' clocks move on a day, lost its deposits so.)
func TestClockAheadDeposits(t *testing.T) {
	tn := newTestNet(t)
	_, addrs := tn.startMailboxes(1)
	ahead := func(c *Config) {
		c.MailboxNodes = addrs
		c.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	}
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice, bob := tn.start(aliceDir, ahead), tn.start(bobDir, receiveAt)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 90*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") })
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	m, err := alice.Send(ctx, "bob", "while you were away")
	if err != nil {
		t.Fatal(err)
	}
	// Stored long before the direct try gives up and the outbox looks
	// again (minutes at most, by maxOutboxWait).
	sctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	defer cancel()
	for {
		got := messagesWhere(t, alice, "bob", func(x Message) bool { return x.ID == m.ID && stored(x) })
		if len(got) == 1 {
			break
		}
		select {
		case <-sctx.Done():
			t.Fatalf("the message to Bob, who is away, is not in a mailbox 8 s after it was sent (MailboxAfter %v): the deposit waited on the wrong clock", alice.cfg.MailboxAfter)
		case <-time.After(50 * time.Millisecond):
		}
	}
	bob = tn.start(bobDir, receiveAt)
	in := waitMessages(t, ctx, bob, "alice", 2, incoming)
	if string(in[1].Body) != "while you were away" {
		t.Fatalf("bob got %q", in[1].Body)
	}
}

// A mailbox node's host lets in as many version 2 streams as its service
// holds filters (MaxFilters) and requests besides under the
// infrastructure preset, and an eighth of that without it, not libp2p's
// default for a protocol it was not told about (about 640 on a 4 GiB
// server). The limits are read from the host's resource manager.
func TestMailbox2StreamLimit(t *testing.T) {
	tn := newTestNet(t)
	for _, tt := range []struct {
		infra bool
		want  int
	}{{false, mailbox.Streams2}, {true, mailbox.Streams2Infra}} {
		n := tn.start(tn.initNode(fmt.Sprintf("infra-%v", tt.infra)), asMailbox, func(c *Config) { c.Infra = tt.infra })
		limit := func(p libp2pprotocol.ID) (in, out int) {
			t.Helper()
			err := n.Host().LibP2P().Network().ResourceManager().ViewProtocol(p, func(s network.ProtocolScope) error {
				l, ok := s.(rcmgr.ResourceScopeLimiter)
				if !ok {
					return fmt.Errorf("protocol scope %T reports no limit", s)
				}
				in, out = l.Limit().GetStreamLimit(network.DirInbound), l.Limit().GetStreamLimit(network.DirOutbound)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return in, out
		}
		in, out := limit(mailbox.Protocol2)
		if in != tt.want || out != tt.want {
			t.Errorf("infra %v: %s stream limit %d inbound, %d outbound; want %d", tt.infra, mailbox.Protocol2, in, out, tt.want)
		}
		if !tt.infra {
			continue
		}
		// libp2p's default grows with the machine's memory; the preset's
		// limit is above it on any machine short of hundreds of GiB.
		if dflt, _ := limit(mailbox.Protocol2 + "-unconfigured"); in <= dflt {
			t.Errorf("infra: %s lets in %d streams, no more than libp2p's default %d", mailbox.Protocol2, in, dflt)
		}
		if in < mailbox.MaxFilters {
			t.Errorf("infra: %s lets in %d streams, fewer than MaxFilters (%d)", mailbox.Protocol2, in, mailbox.MaxFilters)
		}
	}
}

// TestVersion2IntroFloodThroughMessenger: a flooder holding Bob's invite
// pushes stamped junk under his intro tag to his mailbox, 10 times the
// tag's quota; the mailbox refuses what is past the quota. Meanwhile
// Alice, his contact, writes to Bob, who is away, and every message is
// stored. Carol, a stranger with his invite, writes first: her deposit
// is refused at the flooded tag, and her message waits, not stored. The
// next day (everyone's clock moved) it goes under that day's intro tag;
// Bob, back, shows it and all of Alice's.
func TestVersion2IntroFloodThroughMessenger(t *testing.T) {
	tn := newTestNet(t)
	const quota = 4
	var ahead atomic.Int64
	clock := func(c *Config) { c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) } }
	m := tn.start(tn.initNode("mailbox"), asMailbox, clock, func(c *Config) {
		c.MailboxOptions = []mailbox.Option{
			mailbox.WithNetKey(func(c network.Conn) string { return c.RemotePeer().String() }),
			mailbox.WithRateLimit(1e6, 1e6), mailbox.WithStampBits(8),
			mailbox.WithLimits(store.MailboxLimits{IntroEnvelopes: quota}),
		}
	})
	addrs := []peer.AddrInfo{m.Host().AddrInfo()}
	receiveAt := func(c *Config) { c.MailboxNodes = addrs }
	aliceDir, bobDir, carolDir := tn.initNode("alice"), tn.initNode("bob"), tn.initNode("carol")
	alice, bob := tn.start(aliceDir, receiveAt, clock), tn.start(bobDir, receiveAt, clock)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 150*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") })
	if _, err := bob.mbx.user.Round(ctx); err != nil {
		t.Fatal(err)
	}
	inv, err := bob.invite()
	if err != nil {
		t.Fatal(err)
	}
	inv.Addrs = nil // Carol reaches him only through his mailbox
	bob.Close()

	// The flood, from one fresh identity.
	h, err := p2p.NewEphemeral()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	flooder := mailbox.NewClient2(ctx, h)
	now := time.Now()
	tag := protocol.IntroTag2(*inv.IntroSecret, protocol.Epoch(now))
	kept, refused := 0, 0
	for range 10 * quota {
		ct := make([]byte, 300)
		rand.Read(ct)
		env := (&protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: tag, Expiry: now.Add(7 * 24 * time.Hour), Ciphertext: ct}).Marshal()
		dep, err := protocol.MintIntroDeposit(ctx, env, 8)
		if err != nil {
			t.Fatal(err)
		}
		var me *mailbox.Error
		switch err := flooder.Push(ctx, addrs[0], dep); {
		case err == nil:
			kept++
		case errors.As(err, &me) && me.Status == mailbox.StatusFull:
			refused++
		default:
			t.Fatalf("flood: %v", err)
		}
	}
	if kept != quota || refused != 9*quota {
		t.Fatalf("flood: %d stored and %d refused, want %d and %d", kept, refused, quota, 9*quota)
	}
	for i := range 5 {
		if _, err := alice.Send(ctx, "bob", fmt.Sprintf("during %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range waitMessages(t, ctx, alice, "bob", 6, stored)[1:] {
		if m.StoredAt < 1 {
			t.Fatalf("alice's %q stored at %d mailboxes during the flood", m.Body, m.StoredAt)
		}
	}

	carol := tn.start(carolDir, receiveAt, clock)
	if _, err := carol.AddContact("bob", inv.String()); err != nil {
		t.Fatal(err)
	}
	first, err := carol.Send(ctx, "bob", "hello from a stranger")
	if err != nil {
		t.Fatal(err)
	}
	bobAcct := storedContact(t, carol, "bob").Account
	testkit.WaitFor(t, ctx, func() bool { _, failed := carol.ob.failed.Load(bobAcct); return failed })
	if sm := storedMessage(t, carol, first.ID); sm.StoredAt != 0 {
		t.Fatalf("carol's first message stored at %d mailboxes under the flooded tag", sm.StoredAt)
	}

	// The next day.
	ahead.Store(int64(protocol.EpochLength))
	testkit.WaitFor(t, ctx, func() bool { carol.kickOutbox(); return storedMessage(t, carol, first.ID).StoredAt > 0 })
	carol.Close()
	bob = tn.start(bobDir, receiveAt, clock)
	waitMessages(t, ctx, bob, "alice", 6, incoming)
	in := waitMessages(t, ctx, bob, "", 7, incoming)
	if !slices.ContainsFunc(in, func(m Message) bool { return string(m.Body) == "hello from a stranger" }) {
		t.Fatalf("bob did not get carol's first message")
	}
}
