package mailbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// testStampBits keeps proof of work cheap in tests; the mailbox nodes of
// one test all require it.
const testStampBits = 8

// peerKey keys the version 2 limits on the peer: on loopback every client
// has the same address.
func peerKey(c network.Conn) string { return c.RemotePeer().String() }

func v2Opts(extra ...Option) []Option {
	return append([]Option{WithStampBits(testStampBits), WithNetKey(peerKey)}, extra...)
}

// newClient2 is a client on a fresh host, as a user's sync round is.
func newClient2(t testing.TB) *Client2 {
	t.Helper()
	h := p2ptest.NewHost(t)
	return NewClient2(h.Context(), h.LibP2P())
}

// pairSession is one direction of a session: its tag seed and role.
type pairSession struct {
	seed [32]byte
	role byte
}

func newPairSession() pairSession {
	var s pairSession
	rand.Read(s.seed[:])
	s.role = protocol.FromInitiator
	return s
}

func (p pairSession) tag(e uint64) protocol.Tag { return protocol.PairTag2(p.seed, p.role, e) }

func (p pairSession) reg(e uint64) Registration {
	return Registration{Kind: store.RegPair, Tag: p.tag(e), Epoch: e}
}

// deposit returns a signed deposit of a fresh envelope under the
// session's tag for now's epoch, and the envelope's delete token.
func (p pairSession) deposit(t testing.TB, now time.Time, size int) ([]byte, []byte, [32]byte) {
	t.Helper()
	e := protocol.Epoch(now)
	tok := randToken()
	env := testEnvelope(t, p.tag(e), tok, now, time.Hour, size).Marshal()
	return protocol.SealPairDeposit(protocol.WriteKey(p.seed, p.role, e), env), env, tok
}

func wantRefusal(t testing.TB, what string, err error, s Status, r Reason) {
	t.Helper()
	var me *Error
	if !errors.As(err, &me) || me.Status != s || me.Reason != r {
		t.Fatalf("%s: got %v, want %v (%v)", what, err, s, r)
	}
}

func queryAll(t testing.TB, ctx context.Context, c *Client2, m *mailboxNode, tags ...protocol.Tag) [][]byte {
	t.Helper()
	ts := make([][32]byte, len(tags))
	for i, tg := range tags {
		ts[i] = tg
	}
	envs, _, err := c.Sync(ctx, m.h.AddrInfo(), ts, nil, 0)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return envs
}

func TestV2PushNeedsRegistrationAndCredential(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	recipient, sender := newClient2(t), newClient2(t)
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	dep, env, tok := ps.deposit(t, now, 300)

	wantRefusal(t, "push before registration", sender.Push(ctx, ai, dep), StatusRejected, ReasonUnregistered)

	var q [protocol.IntroSecretSize]byte
	rand.Read(q[:])
	intro := protocol.IntroTag2(q, e)
	acc, bits, err := recipient.Register(ctx, ai, []Registration{ps.reg(e), ps.reg(e + 1), {Kind: store.RegIntro, Tag: intro, Epoch: e}})
	if err != nil || acc != 3 || bits != testStampBits {
		t.Fatalf("Register = %d accepted, %d bits, %v; want 3, %d", acc, bits, err, testStampBits)
	}
	_, _, err = recipient.Register(ctx, ai, []Registration{ps.reg(e + 3)})
	wantRefusal(t, "registration 3 epochs ahead", err, StatusRejected, ReasonEpoch)
	_, _, err = recipient.Register(ctx, ai, []Registration{ps.reg(e - 16)})
	wantRefusal(t, "registration 16 epochs behind", err, StatusRejected, ReasonEpoch)

	if err := sender.Push(ctx, ai, dep); err != nil {
		t.Fatalf("signed push under a registered tag: %v", err)
	}
	if err := sender.Push(ctx, ai, dep); err != nil {
		t.Fatalf("the same push again (duplicate counts as stored): %v", err)
	}

	// Forgeries: a stranger knows the tag (say, from watching a mailbox)
	// but not the session's seed.
	stranger := pairSession{role: ps.role}
	rand.Read(stranger.seed[:])
	forged := protocol.SealPairDeposit(protocol.WriteKey(stranger.seed, ps.role, e),
		testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, 300).Marshal())
	wantRefusal(t, "deposit signed by another key", sender.Push(ctx, ai, forged), StatusRejected, ReasonCredential)
	tampered := bytes.Clone(dep)
	tampered[len(tampered)-1] ^= 1
	wantRefusal(t, "signed deposit with a changed envelope", sender.Push(ctx, ai, tampered), StatusRejected, ReasonCredential)
	otherEpoch := protocol.SealPairDeposit(protocol.WriteKey(ps.seed, ps.role, e+1),
		testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, 300).Marshal())
	wantRefusal(t, "deposit signed with the next epoch's key", sender.Push(ctx, ai, otherEpoch), StatusRejected, ReasonCredential)
	expired := protocol.SealPairDeposit(protocol.WriteKey(ps.seed, ps.role, e),
		testEnvelope(t, ps.tag(e), randToken(), now, -time.Second, 300).Marshal())
	wantRefusal(t, "expired envelope", sender.Push(ctx, ai, expired), StatusRejected, ReasonExpired)

	// Intro deposits: a stamp below the mailbox's difficulty, a stamp
	// under a pairwise registration, then a good one.
	introEnv := testEnvelope(t, intro, randToken(), now, time.Hour, 300).Marshal()
	weak := protocol.Deposit{Kind: protocol.DepositIntro, Envelope: introEnv}
	for i := uint64(0); ; i++ {
		binary.BigEndian.PutUint64(weak.Nonce[:], i)
		if protocol.LeadingZeroBits(protocol.StampHash(sha(introEnv), weak.Nonce)) < testStampBits {
			break
		}
	}
	wantRefusal(t, "weak stamp", sender.Push(ctx, ai, weak.Marshal()), StatusRejected, ReasonStamp)
	stampedPair, err := protocol.MintIntroDeposit(ctx, testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, 300).Marshal(), testStampBits)
	if err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, "stamped deposit under a pairwise tag", sender.Push(ctx, ai, stampedPair), StatusRejected, ReasonUnregistered)
	good, err := protocol.MintIntroDeposit(ctx, introEnv, testStampBits)
	if err != nil {
		t.Fatal(err)
	}
	if err := sender.Push(ctx, ai, good); err != nil {
		t.Fatalf("stamped intro deposit: %v", err)
	}

	got := queryAll(t, ctx, recipient, m, ps.tag(e), intro, randTag())
	if len(got) != 2 || !bytes.Equal(got[0], env) || !bytes.Equal(got[1], introEnv) {
		t.Fatalf("query returned %d envelopes, want the pairwise and the intro one in order", len(got))
	}
	if n, err := recipient.Delete(ctx, ai, ps.tag(e), [][32]byte{randToken(), tok}); err != nil || n != 1 {
		t.Fatalf("Delete = %d, %v; want 1", n, err)
	}
	if got := queryAll(t, ctx, recipient, m, ps.tag(e)); len(got) != 0 {
		t.Fatalf("%d envelopes left after delete", len(got))
	}
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

// A mailbox whose storage is full refuses new deposits; it never evicts
// an envelope it acknowledged. Nothing a peer pushes or gossips without
// a registration, a credential or a stamp is stored at all.
func TestV2FloodEvictsNothing(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	const total = 64 << 10
	m := newMailboxNode(t, mbxNodeOpts{gossip: true, svcOpts: v2Opts(WithLimits(store.MailboxLimits{TotalBytes: total}))})
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	victim := newPairSession()
	recipient := newClient2(t)
	if _, _, err := recipient.Register(ctx, ai, []Registration{victim.reg(e)}); err != nil {
		t.Fatal(err)
	}
	honestSender := newClient2(t)
	var honest [][]byte
	pushHonest := func() error {
		dep, env, _ := victim.deposit(t, now, 500)
		err := honestSender.Push(ctx, ai, dep)
		if err == nil {
			honest = append(honest, env)
		}
		return err
	}
	for range 5 {
		if err := pushHonest(); err != nil {
			t.Fatal(err)
		}
	}

	// The attacker: 3× the capacity under random tags and under the
	// victim's tag without its key, then its own registrations filled
	// to the brim.
	attacker := newClient2(t)
	junk := 0
	for junk < 3*total {
		env := testEnvelope(t, randTag(), randToken(), now, time.Hour, 4000).Marshal()
		dep := protocol.SealPairDeposit(protocol.WriteKey([32]byte{1}, 1, e), env)
		wantRefusal(t, "junk under a random tag", attacker.Push(ctx, ai, dep), StatusRejected, ReasonCredential)
		stamped, err := protocol.MintIntroDeposit(ctx, env, testStampBits)
		if err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, "stamped junk under an unregistered tag", attacker.Push(ctx, ai, stamped), StatusRejected, ReasonUnregistered)
		forged := protocol.SealPairDeposit(protocol.WriteKey([32]byte{2}, 1, e), testEnvelope(t, victim.tag(e), randToken(), now, time.Hour, 4000).Marshal())
		wantRefusal(t, "junk under the victim's tag", attacker.Push(ctx, ai, forged), StatusRejected, ReasonCredential)
		junk += 3 * len(env)
	}
	own := newPairSession()
	if _, _, err := attacker.Register(ctx, ai, []Registration{own.reg(e)}); err != nil {
		t.Fatal(err)
	}
	// Fill with large envelopes, then with small ones to the last byte.
	for _, size := range []int{4000, 50} {
		var full error
		for i := 0; i < 2000 && full == nil; i++ {
			dep, _, _ := own.deposit(t, now, size)
			full = attacker.Push(ctx, ai, dep)
		}
		wantRefusal(t, "the attacker's own tag once the mailbox is full", full, StatusFull, ReasonCapacity)
	}
	wantRefusal(t, "an honest deposit while the mailbox is full", pushHonest(), StatusFull, ReasonCapacity)

	got := queryAll(t, ctx, recipient, m, victim.tag(e))
	if len(got) != len(honest) {
		t.Fatalf("the victim's mailbox holds %d envelopes, want all %d honest ones", len(got), len(honest))
	}
	for i := range got {
		if !bytes.Equal(got[i], honest[i]) {
			t.Fatalf("envelope %d changed", i)
		}
	}
}

// storedWithin reports whether m stores env before ctx ends.
func storedWithin(ctx context.Context, m *mailboxNode, env []byte) bool {
	for {
		select {
		case got := <-m.stored:
			if bytes.Equal(got, env) {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}

// waitTopic2Peer waits until g's version 2 topic of shard lists p.
func waitTopic2Peer(t testing.TB, ctx context.Context, g *p2p.Gossip, shard uint16, p peer.ID) {
	t.Helper()
	top, err := g.Join(Topic2(shard), func(peer.ID, []byte) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	for !containsPeer(top.ListPeers(), p) {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s on version 2 shard %d: %v", p, shard, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func containsPeer(ps []peer.ID, p peer.ID) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// A push to one of a recipient's mailboxes reaches the others over the
// mailbox mesh, and live to the recipient's filter at another mailbox; a
// mailbox node without the registration relays but stores nothing.
func TestV2ReplicationAndFilter(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	mk := func() *mailboxNode { return newMailboxNode(t, mbxNodeOpts{gossip: true, svcOpts: v2Opts()}) }
	a, b, other := mk(), mk(), mk()
	for _, x := range []*mailboxNode{b, other} {
		if err := x.h.Connect(ctx, a.h.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	shard := ps.tag(e).Shard(Shards)
	waitTopic2Peer(t, ctx, a.g, shard, b.h.ID())
	waitTopic2Peer(t, ctx, a.g, shard, other.h.ID())

	recipient := newClient2(t)
	for _, m := range []*mailboxNode{a, b} {
		if _, _, err := recipient.Register(ctx, m.h.AddrInfo(), []Registration{ps.reg(e)}); err != nil {
			t.Fatal(err)
		}
	}
	// Gossip is best effort: a publish can reach nobody while a's stream
	// to a new mesh peer is still opening (the reason a sender pushes to
	// each of the recipient's mailboxes itself). Warm the mesh up with a
	// probe session until one of its deposits is replicated.
	probe := newPairSession()
	for _, m := range []*mailboxNode{a, b} {
		if _, _, err := recipient.Register(ctx, m.h.AddrInfo(), []Registration{probe.reg(e)}); err != nil {
			t.Fatal(err)
		}
	}
	for replicated := false; !replicated; {
		dep, env, _ := probe.deposit(t, now, 100)
		if err := newClient2(t).Push(ctx, a.h.AddrInfo(), dep); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		replicated = storedWithin(wctx, b, env)
		cancel()
	}
	pushed := make(chan []byte, 4)
	f, err := recipient.Filter(ctx, b.h.AddrInfo(), [][32]byte{ps.tag(e)}, func(env []byte) { pushed <- env })
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	dep, env, _ := ps.deposit(t, now, 700)
	if err := newClient2(t).Push(ctx, a.h.AddrInfo(), dep); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-pushed:
		if !bytes.Equal(got, env) {
			t.Fatal("the filter pushed another envelope")
		}
	case <-ctx.Done():
		t.Fatal("the envelope pushed at mailbox a never reached the filter at mailbox b")
	}
	waitStored(t, ctx, b, env)
	if got := queryAll(t, ctx, recipient, b, ps.tag(e)); len(got) != 1 {
		t.Fatalf("mailbox b holds %d envelopes, want 1", len(got))
	}
	// The node that holds no registration for the tag stored nothing.
	time.Sleep(200 * time.Millisecond)
	if n := mbxStatsOf(t, other.db); n != 0 {
		t.Fatalf("a mailbox without the registrations stored %d envelopes", n)
	}
}

// A mesh peer that forwards deposits failing validation is scored down
// until graylisted, while valid deposits keep flowing.
func TestV2InvalidGossipScoredDown(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	h := p2ptest.NewHost(t)
	var mu sync.Mutex
	scores := map[peer.ID]float64{}
	inspect := pubsub.WithPeerScoreInspect(func(m map[peer.ID]float64) {
		mu.Lock()
		defer mu.Unlock()
		for k, v := range m {
			scores[k] = v
		}
	}, 100*time.Millisecond)
	g, err := p2p.NewGossip(h, p2p.WithPubSubOptions(append(GossipScoring(), inspect)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	db := openMailboxDB(t, filepath.Join(t.TempDir(), "mbx"))
	svc, err := NewService(h, g, db, v2Opts(WithProvide(false, 0, 0))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })

	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	shard := ps.tag(e).Shard(Shards)
	bad := p2ptest.NewHost(t)
	bps, err := pubsub.NewGossipSub(bad.Context(), bad.LibP2P(), pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(), pubsub.WithMessageIdFn(p2p.MessageID))
	if err != nil {
		t.Fatal(err)
	}
	bt, err := bps.Join(Topic2(shard))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bt.Subscribe(); err != nil {
		t.Fatal(err)
	}
	if err := bad.Connect(ctx, h.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	waitTopic2Peer(t, ctx, g, shard, bad.ID())
	// The forger publishes a forged deposit every 50 ms (the first may
	// reach nobody while its stream opens) until the mailbox's score of
	// it falls below the graylist threshold.
	for i := 0; ; i++ {
		mu.Lock()
		s := scores[bad.ID()]
		mu.Unlock()
		if s <= -300 {
			t.Logf("graylisted after %d forged deposits (score %.0f)", i, s)
			break
		}
		if i == 200 {
			t.Fatalf("the forwarder of %d forged deposits still scores %v, want graylisted (<= -300)", i, s)
		}
		env := testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, 100+i).Marshal()
		forged := protocol.SealPairDeposit(protocol.WriteKey([32]byte{9}, 1, e), env)
		if err := bt.Publish(ctx, forged); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n := mbxStatsOf(t, db); n != 0 {
		t.Fatalf("%d forged deposits stored", n)
	}
}

// A hostile mailbox answers every query with a full page and "more";
// one sync round still stops at its byte budget.
func TestV2SyncBoundedAgainstEndlessMailbox(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	h := p2ptest.NewHost(t)
	now := time.Now()
	env := testEnvelope(t, randTag(), randToken(), now, time.Hour, 60_000).Marshal()
	var queries int
	var mu sync.Mutex
	h.LibP2P().SetStreamHandler(Protocol2, func(st network.Stream) {
		defer st.Close()
		if _, err := p2p.ReadFrame(st, MaxRequestSize2); err != nil {
			st.Reset()
			return
		}
		mu.Lock()
		queries++
		seq := uint64(queries)
		mu.Unlock()
		page := store.MailboxPage{More: true, Cursor: store.MailboxCursor(seq)}
		for range 16 {
			page.Entries = append(page.Entries, store.MailboxEntry{Envelope: env})
		}
		p2p.WriteFrame(st, appendQueryResponse(nil, page), MaxResponseSize)
	})
	c := newClient2(t)
	envs, _, err := c.Sync(ctx, h.AddrInfo(), [][32]byte{randTag()}, nil, 0)
	if !errors.Is(err, ErrSyncBudget) {
		t.Fatalf("Sync from an endless mailbox = %v, want ErrSyncBudget", err)
	}
	read := 0
	for _, e := range envs {
		read += len(e)
	}
	if read > MaxSyncBytes {
		t.Fatalf("one round read %d bytes from a hostile mailbox, the budget is %d", read, MaxSyncBytes)
	}
	if read < MaxSyncBytes-MaxResponseSize {
		t.Fatalf("one round read only %d bytes, less than the budget allows", read)
	}
}

// A filter stream falls FilterBacklog pushes behind: the mailbox closes
// it rather than buffering without bound.
func TestV2FilterClosedWhenBehind(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1e6, 1e6),
		WithLimits(store.MailboxLimits{PairEnvelopes: 1 << 20, PairBytes: 1 << 30}))})
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	recipient := newClient2(t)
	if _, _, err := recipient.Register(ctx, ai, []Registration{ps.reg(e)}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	f, err := recipient.Filter(ctx, ai, [][32]byte{ps.tag(e)}, func([]byte) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	defer close(release)
	_ = f
	sender := newClient2(t)
	open := func() int {
		m.svc.v2.mu.Lock()
		defer m.svc.v2.mu.Unlock()
		return len(m.svc.v2.filterNets)
	}
	if open() != 1 {
		t.Fatalf("%d filters open at the mailbox, want 1", open())
	}
	for i := 0; ; i++ {
		// The client's reader is stuck in its callback, so the end shows
		// at the mailbox, not in f.Done.
		if open() == 0 {
			if i < FilterBacklog {
				t.Fatalf("filter closed after %d pushes, before its backlog of %d", i, FilterBacklog)
			}
			t.Logf("filter closed after %d unread pushes", i)
			return
		}
		if i > 8*FilterBacklog {
			t.Fatalf("filter still open after %d unread pushes", i)
		}
		dep, _, _ := ps.deposit(t, now, 30_000)
		if err := sender.Push(ctx, ai, dep); err != nil {
			t.Fatal(err)
		}
	}
}

// Registrations count against the remote network; renewing one is free.
func TestV2RegistrationsPerNet(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRegistrationsPerNet(10))})
	ai := m.h.AddrInfo()
	e := protocol.Epoch(time.Now())
	var regs []Registration
	for range 10 {
		regs = append(regs, newPairSession().reg(e))
	}
	c := newClient2(t)
	for round := range 3 {
		if acc, _, err := c.Register(ctx, ai, regs); err != nil || acc != 10 {
			t.Fatalf("round %d: Register of the same 10 tags = %d, %v", round, acc, err)
		}
	}
	_, _, err := c.Register(ctx, ai, []Registration{newPairSession().reg(e)})
	wantRefusal(t, "an 11th new tag from the same network", err, StatusThrottled, ReasonNone)
	if acc, _, err := newClient2(t).Register(ctx, ai, []Registration{newPairSession().reg(e)}); err != nil || acc != 1 {
		t.Fatalf("another network's registration = %d, %v", acc, err)
	}
}

// First-contact spam at 100× an intro tag's quota, from a flooder who
// holds the victim's invite (its intro secret) and pays every stamp: the
// flooded tag fills and refuses (the sender is told, nothing acknowledged
// is evicted), the victim's contacts' pairwise deposits are untouched, and
// once the flood stops a stranger with the invite gets through under the
// next epoch's intro tag.
func TestV2IntroFloodBounded(t *testing.T) {
	ctx := testkit.Context(t, 2*mbxTestTimeout)
	const quota = 8
	clock := newFakeClock(time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC))
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithClock(clock.Now), WithRateLimit(1e6, 1e6),
		WithLimits(store.MailboxLimits{IntroEnvelopes: quota}))})
	ai := m.h.AddrInfo()
	var q [protocol.IntroSecretSize]byte
	rand.Read(q[:])
	contact := newPairSession()
	e := protocol.Epoch(clock.Now())
	regs := []Registration{contact.reg(e), contact.reg(e + 1)}
	for _, ep := range []uint64{e, e + 1} {
		regs = append(regs, Registration{Kind: store.RegIntro, Tag: protocol.IntroTag2(q, ep), Epoch: ep})
	}
	victim := newClient2(t)
	if _, _, err := victim.Register(ctx, ai, regs); err != nil {
		t.Fatal(err)
	}
	introDeposit := func(ep uint64) []byte {
		now := clock.Now()
		env := testEnvelope(t, protocol.IntroTag2(q, ep), randToken(), now, 14*24*time.Hour, 300).Marshal()
		d, err := protocol.MintIntroDeposit(ctx, env, testStampBits)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	flooder, friend := newClient2(t), newClient2(t)
	var friendly [][]byte
	stored, refused := 0, 0
	for i := range 100 * quota {
		err := flooder.Push(ctx, ai, introDeposit(e))
		switch {
		case err == nil:
			stored++
		default:
			wantRefusal(t, "flood past the intro quota", err, StatusFull, ReasonTagQuota)
			refused++
		}
		if i%50 == 0 {
			dep, env, _ := contact.deposit(t, clock.Now(), 200)
			if err := friend.Push(ctx, ai, dep); err != nil {
				t.Fatalf("a contact's pairwise deposit during the flood: %v", err)
			}
			friendly = append(friendly, env)
		}
	}
	if stored != quota || refused != 99*quota {
		t.Fatalf("flood: %d stored, %d refused; want %d and %d", stored, refused, quota, 99*quota)
	}
	stranger := newClient2(t)
	wantRefusal(t, "a stranger's first contact on the flooded tag", stranger.Push(ctx, ai, introDeposit(e)), StatusFull, ReasonTagQuota)
	if got := queryAll(t, ctx, victim, m, contact.tag(e)); len(got) != len(friendly) {
		t.Fatalf("the victim's contact's deposits: %d held, %d sent", len(got), len(friendly))
	}
	// The flood stops; the next day the stranger writes under that day's
	// intro tag.
	clock.Advance(24 * time.Hour)
	if err := stranger.Push(ctx, ai, introDeposit(e+1)); err != nil {
		t.Fatalf("a stranger's stamped first contact after the flood: %v", err)
	}
}

// With version 1 deposits off, a version 1 client is told it runs an older
// protocol, and what waits at the mailbox is still fetched and deleted by
// version 1.
func TestV2MigrationRefusesOldDeposits(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	dir := filepath.Join(t.TempDir(), "mbx")
	m := newMailboxNode(t, mbxNodeOpts{dir: dir})
	_, c := newClient(t, false, m)
	tag, tok := randTag(), randToken()
	waiting := testEnvelope(t, tag, tok, time.Now(), time.Hour, 100).Marshal()
	if err := c.DepositTo(ctx, m.h.ID(), waiting); err != nil {
		t.Fatal(err)
	}
	m.close()

	m2 := newMailboxNode(t, mbxNodeOpts{dir: dir, svcOpts: v2Opts(WithLegacyDeposits(false))})
	_, c2 := newClient(t, false, m2)
	err := c2.DepositTo(ctx, m2.h.ID(), testEnvelope(t, tag, randToken(), time.Now(), time.Hour, 100).Marshal())
	wantRefusal(t, "a version 1 deposit at a mailbox that moved on", err, StatusRejected, ReasonOldProtocol)
	if !strings.Contains(err.Error(), "older mailbox protocol") {
		t.Fatalf("the refusal does not say what to do: %v", err)
	}
	res, err := c2.Query(ctx, m2.h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], waiting) {
		t.Fatalf("version 1 query of what waits: %d envelopes, %v", len(res.Envelopes), err)
	}
	if n, err := c2.Delete(ctx, m2.h.ID(), tag, [][32]byte{tok}); err != nil || n != 1 {
		t.Fatalf("version 1 delete = %d, %v", n, err)
	}
}

// The upgrade window ends by the mailbox's clock: version 1 deposits are
// taken until protocol.Version1Ends and refused with "older mailbox
// protocol" from then; what waits is still read and deleted by version 1
// until protocol.Version1ReadEnds, and from then version 1 reads are
// refused the same way.
func TestV2MigrationWindowEndsByDate(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	clock := newFakeClock(protocol.Version1Ends.Add(-time.Hour))
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithClock(clock.Now))})
	_, c := newClient(t, false, m)
	tag, tok := randTag(), randToken()
	waiting := testEnvelope(t, tag, tok, clock.Now(), protocol.MaxTTL, 100).Marshal()
	if err := c.DepositTo(ctx, m.h.ID(), waiting); err != nil {
		t.Fatalf("a version 1 deposit an hour before the window ends: %v", err)
	}
	clock.Advance(time.Hour)
	err := c.DepositTo(ctx, m.h.ID(), testEnvelope(t, tag, randToken(), clock.Now(), time.Hour, 100).Marshal())
	wantRefusal(t, "a version 1 deposit when the window has ended", err, StatusRejected, ReasonOldProtocol)
	if !strings.Contains(err.Error(), "older mailbox protocol") {
		t.Fatalf("the refusal does not say what to do: %v", err)
	}
	// Just before the last deposit of the window expires, it is read.
	clock.Advance(protocol.MaxTTL - 2*time.Hour)
	res, err := c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], waiting) {
		t.Fatalf("a version 1 query of what waits, %v after the window ended: %d envelopes, %v", clock.Now().Sub(protocol.Version1Ends), len(res.Envelopes), err)
	}
	clock.Advance(protocol.Version1ReadEnds.Sub(clock.Now()) - time.Minute)
	if _, err := c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 0); err != nil {
		t.Fatalf("a version 1 query a minute before reading ends: %v", err)
	}
	clock.Advance(time.Minute)
	_, err = c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 0)
	wantRefusal(t, "a version 1 query when reading has ended", err, StatusRejected, ReasonOldProtocol)
	_, err = c.Delete(ctx, m.h.ID(), tag, [][32]byte{tok})
	wantRefusal(t, "a version 1 delete when reading has ended", err, StatusRejected, ReasonOldProtocol)
}
