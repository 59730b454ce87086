package mailbox

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// A version 1 DEPOSIT carries no credential: under a tag registered for
// version 2 it is refused, so a stranger who knows the tag (any mesh peer
// sees tags) can neither put junk before the recipient nor fill the tag's
// quota against the real sender.
func TestV2TagRefusesVersion1Deposits(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1e6, 1e6))})
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	recipient := newClient2(t)
	if _, _, err := recipient.Register(ctx, ai, []Registration{ps.reg(e)}); err != nil {
		t.Fatal(err)
	}
	_, attacker := newClient(t, false, m)

	junk := testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, 300).Marshal()
	if err := attacker.DepositTo(ctx, m.h.ID(), junk); err == nil {
		t.Errorf("a version 1 deposit without credential was stored under a registered version 2 pairwise tag")
	}
	for _, got := range queryAll(t, ctx, recipient, m, ps.tag(e)) {
		if bytes.Equal(got, junk) {
			t.Errorf("the version 2 QUERY serves the uncredentialed junk to the recipient")
		}
	}
	// Fill the tag's byte quota (8 MiB, the same for v1 TagBytes and v2
	// PairBytes) with version 1 junk.
	for _, size := range []int{64_000, 4_000, 300} {
		for range 200 {
			env := testEnvelope(t, ps.tag(e), randToken(), now, time.Hour, size).Marshal()
			if err := attacker.DepositTo(ctx, m.h.ID(), env); err != nil {
				break
			}
		}
	}
	dep, _, _ := ps.deposit(t, now, 300)
	if err := newClient2(t).Push(ctx, ai, dep); err != nil {
		t.Errorf("the real sender's signed deposit after a version 1 flood: %v", err)
	}
}

// Version 1 deposits need no credential and are rate-limited per peer
// ID only, so fresh IDs flood a mailbox with them for free, up to and past
// its storage cap. They must not take the room of version 2 deposits: a
// registered push into the full mailbox evicts version 1 junk, and every
// version 2 envelope acknowledged before is still served.
func TestV1FloodLeavesRoomForV2(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	const total = 64 << 10
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithLimits(store.MailboxLimits{TotalBytes: total}))})
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	victim := newPairSession()
	recipient := newClient2(t)
	if _, _, err := recipient.Register(ctx, ai, []Registration{victim.reg(e)}); err != nil {
		t.Fatal(err)
	}
	var honest [][]byte
	push := func(what string) {
		t.Helper()
		dep, env, _ := victim.deposit(t, now, 500)
		if err := newClient2(t).Push(ctx, ai, dep); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		honest = append(honest, env)
	}
	for range 3 {
		push("a registered push into an empty mailbox")
	}

	// Three times the capacity, three deposits from each fresh peer ID.
	stored, full := 0, 0
	for peers := 0; peers*3*4000 < 3*total; peers++ {
		_, attacker := newClient(t, false, m)
		for range 3 {
			junk := testEnvelope(t, randTag(), randToken(), now, time.Hour, 4000).Marshal()
			var me *Error
			switch err := attacker.DepositTo(ctx, m.h.ID(), junk); {
			case err == nil:
				stored++
			case errors.As(err, &me) && me.Status == StatusFull:
				full++
			default:
				t.Fatalf("version 1 deposit from fresh peer %d: %v", peers, err)
			}
		}
	}
	if stored == 0 || full == 0 {
		t.Fatalf("the version 1 flood stored %d and was refused %d times; want it to reach the cap", stored, full)
	}
	var held int64
	if err := m.db.View(func(tx *store.Tx) (err error) { _, held, err = tx.MailboxStats(); return }); err != nil {
		t.Fatal(err)
	}
	if held+4000 < total {
		t.Fatalf("the mailbox holds %d bytes after the flood; want it full (%d)", held, total)
	}

	// Registered pushes take the junk's room: more than a junk envelope's
	// worth, so that they need more than one eviction.
	for range 12 {
		push("a registered push into a mailbox full of version 1 junk")
	}
	got := queryAll(t, ctx, recipient, m, victim.tag(e))
	if len(got) != len(honest) {
		t.Fatalf("the mailbox serves %d of the %d acknowledged version 2 envelopes", len(got), len(honest))
	}
	for i := range got {
		if !bytes.Equal(got[i], honest[i]) {
			t.Fatalf("version 2 envelope %d changed", i)
		}
	}
}

// A round reads at most MaxSyncBytes per mailbox and kind. Junk that is
// never deleted (nobody has its token; here a hostile contact with the
// write key pushes it) and sorts first must not hide what comes after it:
// the inbox resumes each set of tags from where the last round stopped.
func TestInboxNotStarvedBehindUndeletableJunk(t *testing.T) {
	ctx := testkit.Context(t, 2*mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1e6, 1e6))})
	u := newInboxUser()
	var mu sync.Mutex
	legit := map[[32]byte]bool{}
	delivered := 0
	in, err := NewInbox(InboxConfig{
		Mailboxes:     mailboxSet(m),
		Registrations: u.registrations,
		Deliver: func(_ peer.ID, env []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if legit[sha256.Sum256(env)] {
				delivered++
				return nil
			}
			return ErrJunk
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tag := u.session.tag(protocol.Epoch(now))
	_ = tag
	for range 80 { // 80 × 60 kB > MaxSyncBytes
		junk, _, _ := u.session.deposit(t, now, 60_000)
		if _, err := PushAll(ctx, nil, mailboxSet(m), junk); err != nil {
			t.Fatal(err)
		}
	}
	dep, env, _ := u.session.deposit(t, now, 300)
	mu.Lock()
	legit[sha256.Sum256(env)] = true
	mu.Unlock()
	if n, err := PushAll(ctx, nil, mailboxSet(m), dep); err != nil || n != 1 {
		t.Fatalf("PushAll = %d, %v", n, err)
	}
	for range 3 {
		in.SyncRound(ctx)
	}
	mu.Lock()
	defer mu.Unlock()
	if delivered != 1 {
		t.Errorf("after 3 sync rounds the acknowledged envelope was delivered %d times, want 1: every round re-reads the same first %d bytes from cursor nil", delivered, MaxSyncBytes)
	}
}
