package mailbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// inboxUser is a recipient: one session a contact writes on, and an
// intro secret.
type inboxUser struct {
	session pairSession
	intro   [protocol.IntroSecretSize]byte

	mu        sync.Mutex
	delivered [][]byte
	junk      bool // Deliver reports every envelope as junk
}

func newInboxUser() *inboxUser {
	u := &inboxUser{session: newPairSession()}
	rand.Read(u.intro[:])
	return u
}

func (u *inboxUser) registrations(now time.Time) []Registration {
	var out []Registration
	for _, e := range protocol.LiveEpochs(now) {
		out = append(out, u.session.reg(e), Registration{Kind: store.RegIntro, Tag: protocol.IntroTag2(u.intro, e), Epoch: e})
	}
	return out
}

func (u *inboxUser) deliver(_ peer.ID, env []byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.junk {
		return ErrJunk
	}
	u.delivered = append(u.delivered, bytes.Clone(env))
	return nil
}

func (u *inboxUser) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.delivered)
}

func mailboxSet(ms ...*mailboxNode) []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, m := range ms {
		out = append(out, m.h.AddrInfo())
	}
	return out
}

// remotePeers records every peer that opens a connection to m.
func remotePeers(m *mailboxNode) func() []peer.ID {
	var mu sync.Mutex
	var seen []peer.ID
	m.h.LibP2P().Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		mu.Lock()
		seen = append(seen, c.RemotePeer())
		mu.Unlock()
	}})
	return func() []peer.ID {
		mu.Lock()
		defer mu.Unlock()
		return append([]peer.ID(nil), seen...)
	}
}

// The sender pushes to each of the recipient's three mailboxes from one
// fresh identity; the recipient's sync round delivers the envelope once,
// from identities of its own that change every round and differ between
// pairwise and intro tags, and its delete clears all three.
func TestInboxSyncOncePerEnvelopeFreshIdentities(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	var ms []*mailboxNode
	for range 3 {
		ms = append(ms, newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()}))
	}
	seen := remotePeers(ms[0])
	u := newInboxUser()
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(ms...), Registrations: u.registrations, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := in.SyncRound(ctx); err != nil || n != 0 {
		t.Fatalf("first round (registers) = %d, %v", n, err)
	}
	now := time.Now()
	dep, env, tok := u.session.deposit(t, now, 400)
	if n, err := PushAll(ctx, nil, mailboxSet(ms...), dep); err != nil || n != 3 {
		t.Fatalf("PushAll = %d stored, %v; want 3", n, err)
	}
	introEnv := testEnvelope(t, protocol.IntroTag2(u.intro, protocol.Epoch(now)), randToken(), now, time.Hour, 300).Marshal()
	introDep, err := protocol.MintIntroDeposit(ctx, introEnv, testStampBits)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := PushAll(ctx, nil, mailboxSet(ms...), introDep); err != nil || n != 3 {
		t.Fatalf("PushAll of a first-contact deposit = %d stored, %v; want 3", n, err)
	}
	if n, err := in.SyncRound(ctx); err != nil || n != 2 {
		t.Fatalf("second round delivered %d, %v; want 2 (each envelope once of its three copies)", n, err)
	}
	if u.count() != 2 || !bytes.Equal(u.delivered[0], env) || !bytes.Equal(u.delivered[1], introEnv) {
		t.Fatalf("delivered %d envelopes, want the pairwise then the intro one", u.count())
	}
	if err := in.Delete(ctx, u.session.tag(protocol.Epoch(now)), [][32]byte{tok}); err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if got := queryAll(t, ctx, newClient2(t), m, u.session.tag(protocol.Epoch(now))); len(got) != 0 {
			t.Fatalf("mailbox %d still holds %d envelopes after the delete", i, len(got))
		}
	}
	// Two rounds (two identities each), a delete and two pushes: all
	// different peer IDs, and none of them a mailbox's.
	ids := seen()
	uniq := map[peer.ID]bool{}
	for _, id := range ids {
		uniq[id] = true
	}
	if len(ids) < 7 || len(uniq) != len(ids) {
		t.Fatalf("mailbox saw %d connections from %d peer IDs; want at least 7, all distinct", len(ids), len(uniq))
	}
}

// While the recipient is online its filters get new envelopes pushed.
func TestInboxFilterLive(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	defer runLiveFilters(t, ctx, in, m, u)()
}

// runLiveFilters registers u's tags at m, runs in's filters and pushes
// under u's session until the filter hands one over (until it is open,
// pushes only wait at the mailbox). It returns what stops the filters.
func runLiveFilters(t *testing.T, ctx context.Context, in *Inbox, m *mailboxNode, u *inboxUser) (stop func()) {
	t.Helper()
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := contextWithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); in.RunFilters(fctx) }()
	stop = func() { cancel(); <-done }
	now := time.Now()
	for i := 0; u.count() == 0; i++ {
		if i == 100 {
			stop()
			t.Fatal("no envelope pushed to the filter")
		}
		dep, _, _ := u.session.deposit(t, now, 200)
		if _, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil {
			stop()
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return stop
}

// A filter that ended (here: the mailbox dropped every connection) opens
// again and asks for a round: what was deposited while no filter was
// open is not pushed, and would otherwise wait for the periodic sync.
func TestInboxFilterReopenAsksForRound(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	kicks := make(chan struct{}, 16)
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver,
		Reopened: func() { kicks <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	fctx, stop := contextWithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); in.RunFilters(fctx) }()
	defer func() { stop(); <-done }()
	now := time.Now()
	for i := 0; u.count() == 0; i++ {
		if i == 100 {
			t.Fatal("no envelope pushed to the filter")
		}
		dep, _, _ := u.session.deposit(t, now, 200)
		if _, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(kicks) != 0 {
		t.Fatalf("the first filter asked for %d rounds; only a reopened one should", len(kicks))
	}
	pushed := u.count()
	net := m.h.LibP2P().Network()
	for _, p := range net.Peers() {
		net.ClosePeer(p)
	}
	dep, env, _ := u.session.deposit(t, now, 300)
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("deposit while the filter is down: %d stored, %v", n, err)
	}
	select {
	case <-kicks:
	case <-ctx.Done():
		t.Fatal("the filter opened again (or not) without asking for a round")
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	found := false
	for _, d := range u.delivered[pushed:] {
		found = found || bytes.Equal(d, env)
	}
	if !found {
		t.Fatal("the envelope deposited while no filter was open was not delivered by the round the reopened filter asked for")
	}
}

// A mailbox that keeps failing, and one that returns envelopes that do
// not open, are given up after MailboxFailLimit rounds and MaxJunkPerDay
// envelopes.
func TestInboxReplacesFailingAndJunkMailboxes(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	good := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1e6, 1e6))})
	deadHost, err := p2p.NewEphemeral()
	if err != nil {
		t.Fatal(err)
	}
	dead := peer.AddrInfo{ID: deadHost.ID(), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1")}}
	deadHost.Close()
	u := newInboxUser()
	var mu sync.Mutex
	var replaced []peer.ID
	in, err := NewInbox(InboxConfig{
		Mailboxes:     []peer.AddrInfo{good.h.AddrInfo(), dead},
		Registrations: u.registrations,
		Deliver:       u.deliver,
		Replace: func(p peer.ID) {
			mu.Lock()
			replaced = append(replaced, p)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= MailboxFailLimit; round++ {
		in.SyncRound(ctx)
		mu.Lock()
		n := len(replaced)
		mu.Unlock()
		if round < MailboxFailLimit && n != 0 {
			t.Fatalf("a mailbox replaced after %d failed rounds", round)
		}
	}
	mu.Lock()
	if len(replaced) != 1 || replaced[0] != dead.ID {
		t.Fatalf("replaced %v after %d failed rounds, want the dead mailbox", replaced, MailboxFailLimit)
	}
	mu.Unlock()

	// Now every envelope is junk to the owner.
	u.mu.Lock()
	u.junk = true
	u.mu.Unlock()
	now := time.Now()
	for range MaxJunkPerDay - 1 {
		dep, _, _ := u.session.deposit(t, now, 100)
		if _, err := PushAll(ctx, nil, mailboxSet(good), dep); err != nil {
			t.Fatal(err)
		}
	}
	in.SyncRound(ctx)
	mu.Lock()
	if len(replaced) != 1 {
		t.Fatalf("replaced %v after %d junk envelopes, below the limit", replaced, MaxJunkPerDay-1)
	}
	mu.Unlock()
	dep, _, _ := u.session.deposit(t, now, 100)
	if _, err := PushAll(ctx, nil, mailboxSet(good), dep); err != nil {
		t.Fatal(err)
	}
	in.SyncRound(ctx)
	mu.Lock()
	defer mu.Unlock()
	if len(replaced) != 2 || replaced[1] != good.h.ID() {
		t.Fatalf("replaced %v after %d junk envelopes, want the junk mailbox too", replaced, MaxJunkPerDay)
	}
}

func contextWithCancel(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithCancel(ctx)
}

// An envelope the owner cannot take for a reason of its own (its store
// failed) is read again in the next round, and the mailbox is not held to
// blame: nothing read is lost because the owner failed once.
func TestInboxRereadsWhatWasNotTaken(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	var mu sync.Mutex
	failing, replaced := true, 0
	var got [][]byte
	in, err := NewInbox(InboxConfig{
		Mailboxes:     mailboxSet(m),
		Registrations: u.registrations,
		Deliver: func(_ peer.ID, env []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if failing {
				return errors.New("disk full")
			}
			got = append(got, bytes.Clone(env))
			return nil
		},
		Replace: func(peer.ID) { mu.Lock(); replaced++; mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err) // registers
	}
	now := time.Now()
	var want [][]byte
	for range 3 {
		dep, env, _ := u.session.deposit(t, now, 200)
		if n, err := PushAll(ctx, nil, mailboxSet(m), dep); n != 1 {
			t.Fatal(err)
		}
		want = append(want, env)
	}
	for range MailboxFailLimit + 1 {
		if n, err := in.SyncRound(ctx); n != 0 || err == nil {
			t.Fatalf("a round whose deliveries all failed: %d delivered, err %v", n, err)
		}
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	if n, err := in.SyncRound(ctx); n != len(want) || err != nil {
		t.Fatalf("after the store recovered: %d of %d delivered, err %v", n, len(want), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if replaced != 0 {
		t.Fatal("the mailbox was replaced for the owner's own failures")
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("envelope %d differs or is out of order", i)
		}
	}
}

// Register registers new tags at every mailbox without reading any, so a
// push under a new session's tag is taken at once; a second Register has
// nothing to send.
func TestInboxRegisterOnly(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	hosts := 0
	in, err := NewInbox(InboxConfig{
		Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver,
		NewHost: func() (host.Host, error) { hosts++; return p2p.NewEphemeral() },
	})
	if err != nil {
		t.Fatal(err)
	}
	dep, _, _ := u.session.deposit(t, time.Now(), 200)
	if _, err := PushAll(ctx, nil, mailboxSet(m), dep); err == nil {
		t.Fatal("a push under a tag nobody registered was taken")
	}
	if err := in.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if hosts != 4 {
		t.Fatalf("Register opened %d hosts, want one per kind and epoch (this one and the next)", hosts)
	}
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); n != 1 {
		t.Fatalf("a push after Register: %v", err)
	}
	if u.count() != 0 {
		t.Fatal("Register read envelopes")
	}
	if err := in.Register(ctx); err != nil || hosts != 4 {
		t.Fatalf("a second Register: %v, %d hosts in all", err, hosts)
	}
}

// A session that starts while the filters are open: once its tags are
// registered, the filters read under them at once, not at their next
// refresh (a minute): an answer pushed under them arrives live.
// laterSession returns u's registrations and a function that starts a
// new session, whose tags the registrations list from then on.
func laterSession(u *inboxUser) (regs func(time.Time) []Registration, start func() pairSession) {
	var mu sync.Mutex
	var later *pairSession
	regs = func(now time.Time) []Registration {
		out := u.registrations(now)
		mu.Lock()
		defer mu.Unlock()
		if later != nil {
			for _, e := range protocol.LiveEpochs(now) {
				out = append(out, later.reg(e))
			}
		}
		return out
	}
	start = func() pairSession {
		s := newPairSession()
		mu.Lock()
		later = &s
		mu.Unlock()
		return s
	}
	return regs, start
}

func TestInboxFilterTakesNewSession(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	regs, startLater := laterSession(u)
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: regs, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	defer runLiveFilters(t, ctx, in, m, u)() // the filter is open
	now := time.Now()
	s := startLater()
	if err := in.Register(ctx); err != nil {
		t.Fatal(err)
	}
	before := u.count()
	dep, env, _ := s.deposit(t, now, 300)
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("push under the new session's tag = %d, %v", n, err)
	}
	wait, cancel := context.WithTimeout(ctx, filterRefresh/4)
	defer cancel()
	for {
		u.mu.Lock()
		got := len(u.delivered) > before && bytes.Equal(u.delivered[len(u.delivered)-1], env)
		u.mu.Unlock()
		if got {
			return
		}
		select {
		case <-wait.Done():
			t.Fatalf("the envelope under the new session's tag was not pushed within %v of its registration (filters refresh every %v)", filterRefresh/4, filterRefresh)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitDelivered waits until u was handed env, or fails with why.
func waitDelivered(t *testing.T, ctx context.Context, u *inboxUser, env []byte, within time.Duration, why string) {
	t.Helper()
	wait, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		u.mu.Lock()
		got := slices.ContainsFunc(u.delivered, func(d []byte) bool { return bytes.Equal(d, env) })
		u.mu.Unlock()
		if got {
			return
		}
		select {
		case <-wait.Done():
			t.Fatalf("not delivered within %v: %s", within, why)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// An envelope deposited after its tag was registered and before any
// filter named it is read when the filter opens: pushes carry only what
// arrives later, and the next round may be minutes away.
func TestInboxFilterOpenReadsWhatCameBefore(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil { // registers, reads nothing
		t.Fatal(err)
	}
	dep, env, _ := u.session.deposit(t, time.Now(), 300)
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("push = %d, %v", n, err)
	}
	fctx, cancel := contextWithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); in.RunFilters(fctx) }()
	defer func() { cancel(); <-done }()
	waitDelivered(t, ctx, u, env, 10*time.Second, "the filter opened and never read what its tags held")
}

// The same for a new session's tags that an open filter takes: the peer
// may answer under them between their registration and the moment the
// filter names them.
func TestInboxFilterNewTagsReadWhatCameBefore(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	regs, startLater := laterSession(u)
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: regs, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	defer runLiveFilters(t, ctx, in, m, u)() // the filter is open
	s := startLater()
	// A round registers the new tags; it does not touch the filter.
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	dep, env, _ := s.deposit(t, time.Now(), 300)
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("push under the new session's tag = %d, %v", n, err)
	}
	time.Sleep(300 * time.Millisecond)
	u.mu.Lock()
	early := slices.ContainsFunc(u.delivered, func(d []byte) bool { return bytes.Equal(d, env) })
	u.mu.Unlock()
	if early {
		t.Fatal("delivered before the filter named the new tags")
	}
	if err := in.Register(ctx); err != nil { // wakes the filter
		t.Fatal(err)
	}
	waitDelivered(t, ctx, u, env, filterRefresh/4, "the filter took the new tags and never read what they held")
}
