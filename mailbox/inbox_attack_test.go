package mailbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// One stamped junk envelope under the user's intro tag (anyone holding an
// invite can mint it) must not get an honest mailbox replaced however many
// rounds read it: junk under intro tags is not the mailbox's doing, and
// junk counts once.
func TestInboxJunkReadAgainCountsOnce(t *testing.T) {
	ctx := testkit.Context(t, 2*mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1e6, 1e6))})
	u := newInboxUser()
	var mu sync.Mutex
	var replaced []peer.ID
	var junkHash [32]byte
	in, err := NewInbox(InboxConfig{
		Mailboxes:     mailboxSet(m),
		Registrations: u.registrations,
		Deliver: func(_ peer.ID, env []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if sha256.Sum256(env) == junkHash {
				return ErrJunk
			}
			return nil
		},
		Replace: func(p peer.ID) {
			mu.Lock()
			replaced = append(replaced, p)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	junk := testEnvelope(t, protocol.IntroTag2(u.intro, protocol.Epoch(now)), randToken(), now, time.Hour, 300).Marshal()
	mu.Lock()
	junkHash = sha256.Sum256(junk)
	mu.Unlock()
	dep, err := protocol.MintIntroDeposit(ctx, junk, testStampBits)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("PushAll = %d, %v", n, err)
	}
	for range MaxJunkPerDay {
		in.SyncRound(ctx)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(replaced) != 0 {
		t.Errorf("an honest mailbox holding ONE junk envelope was replaced after %d sync rounds", MaxJunkPerDay)
	}
}

// A mailbox that accepts REGISTER but fails every QUERY (Unavailable,
// garbage, timeouts) is replaced after MailboxFailLimit rounds.
func TestInboxQueryFailingMailboxReplaced(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	h := p2ptest.NewHost(t)
	h.LibP2P().SetStreamHandler(Protocol2, func(st network.Stream) {
		defer st.Close()
		req, err := p2p.ReadFrame(st, MaxRequestSize2)
		if err != nil {
			st.Reset()
			return
		}
		if req[0] == opRegister {
			resp := appendStatus(nil, StatusOK, ReasonNone)
			resp = binary.BigEndian.AppendUint16(resp, binary.BigEndian.Uint16(req[1:]))
			p2p.WriteFrame(st, append(resp, testStampBits), MaxResponseSize)
			return
		}
		p2p.WriteFrame(st, appendStatus(nil, StatusUnavailable, ReasonNone), MaxResponseSize)
	})
	u := newInboxUser()
	var mu sync.Mutex
	var replaced []peer.ID
	in, err := NewInbox(InboxConfig{
		Mailboxes:     []peer.AddrInfo{h.AddrInfo()},
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
	failedRounds := 0
	for range 3 * MailboxFailLimit {
		if _, err := in.SyncRound(ctx); err != nil {
			failedRounds++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if failedRounds == 3*MailboxFailLimit && len(replaced) == 0 {
		t.Errorf("a mailbox that failed %d sync rounds in a row was never replaced (MailboxFailLimit = %d)", failedRounds, MailboxFailLimit)
	}
}

// A hostile mailbox that answers each QUERY with one minimal envelope and
// "more" gets a bounded number of round trips from one Sync: every page
// costs the budget at least minPageCharge.
func TestSyncRoundTripsBounded(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	h := p2ptest.NewHost(t)
	now := time.Now()
	env := testEnvelope(t, randTag(), randToken(), now, time.Hour, 1).Marshal()
	const limit = 2000
	var mu sync.Mutex
	queries := 0
	h.LibP2P().SetStreamHandler(Protocol2, func(st network.Stream) {
		defer st.Close()
		if _, err := p2p.ReadFrame(st, MaxRequestSize2); err != nil {
			st.Reset()
			return
		}
		mu.Lock()
		queries++
		n := queries
		mu.Unlock()
		if n > limit {
			// Stop here so that the test ends.
			p2p.WriteFrame(st, appendQueryResponse(nil, store.MailboxPage{Cursor: store.MailboxCursor(uint64(n))}), MaxResponseSize)
			return
		}
		page := store.MailboxPage{More: true, Cursor: store.MailboxCursor(uint64(n)),
			Entries: []store.MailboxEntry{{Envelope: env}}}
		p2p.WriteFrame(st, appendQueryResponse(nil, page), MaxResponseSize)
	})
	c := newClient2(t)
	c.Sync(ctx, h.AddrInfo(), [][32]byte{randTag()}, nil, 0)
	mu.Lock()
	defer mu.Unlock()
	if queries > limit {
		t.Errorf("one Sync made more than %d round trips to a mailbox that sends one %d-byte envelope per page", limit, len(env))
	}
}

// A holder of the victim's invite registers the victim's coming intro tags
// first, as pairwise: the victim's own intro registration still takes
// (a tag may hold both kinds), and stamped first contacts get through.
func TestIntroTagNotSquattedByOtherKind(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	u := newInboxUser()
	now := time.Now()
	e := protocol.Epoch(now)
	var squat []Registration
	for _, ep := range []uint64{e, e + 1, e + 2} {
		squat = append(squat, Registration{Kind: store.RegPair, Tag: protocol.IntroTag2(u.intro, ep), Epoch: ep})
	}
	if acc, _, err := newClient2(t).Register(ctx, m.h.AddrInfo(), squat); err != nil || acc != 3 {
		t.Fatalf("squatter's Register = %d, %v", acc, err)
	}
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Logf("victim's sync round: %v", err)
	}
	env := testEnvelope(t, protocol.IntroTag2(u.intro, e), randToken(), now, time.Hour, 300).Marshal()
	dep, err := protocol.MintIntroDeposit(ctx, env, testStampBits)
	if err != nil {
		t.Fatal(err)
	}
	if err := newClient2(t).Push(ctx, m.h.AddrInfo(), dep); err != nil {
		t.Errorf("a stranger's stamped first contact after an invite holder squatted the intro tags: %v", err)
	}
}

// A mailbox that pushes, on a filter, an envelope under a tag the filter
// never named gets it counted as its junk and not handed over; what it
// pushes under a named tag is.
func TestInboxFilterDropsUnaskedTags(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	h := p2ptest.NewHost(t)
	u := newInboxUser()
	now := time.Now()
	e := protocol.Epoch(now)
	_, asked, _ := u.session.deposit(t, now, 200)
	unasked := testEnvelope(t, randTag(), randToken(), now, time.Hour, 200).Marshal()
	h.LibP2P().SetStreamHandler(Protocol2, func(st network.Stream) {
		defer st.Close()
		if _, err := p2p.ReadFrame(st, MaxRequestSize2); err != nil {
			st.Reset()
			return
		}
		p2p.WriteFrame(st, appendStatus(nil, StatusOK, ReasonNone), MaxResponseSize)
		for _, env := range [][]byte{unasked, asked} {
			p2p.WriteFrame(st, append([]byte{opPushed}, env...), MaxResponseSize)
		}
		io.Copy(io.Discard, st) // hold the filter open
	})
	in, err := NewInbox(InboxConfig{Mailboxes: []peer.AddrInfo{h.AddrInfo()}, Registrations: u.registrations, Deliver: u.deliver})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); in.filterOnce(fctx, h.AddrInfo(), store.RegPair, e, func() {}) }()
	testkit.WaitFor(t, ctx, func() bool { return u.count() > 0 })
	stop()
	<-done
	if u.count() != 1 || !bytes.Equal(u.delivered[0], asked) {
		t.Fatalf("delivered %d envelopes, want only the one under the filter's tag", u.count())
	}
	in.mu.Lock()
	junk := in.health[h.ID()].junk
	in.mu.Unlock()
	if junk != 1 {
		t.Fatalf("the mailbox's junk count is %d, want 1 (the envelope under a tag nobody asked for)", junk)
	}
}
