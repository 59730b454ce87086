package mailbox

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
)

// A mailbox that records every request of a user's sync rounds,
// registrations, filters, pushes and deletes never sees one peer name
// tags of two epochs, or of both kinds: each kind and epoch comes from an
// identity of its own (SPEC "One identity, one epoch"). A round within
// OldEpochsEvery of the last full one reads only the epochs the filters
// cover; the first round and one after OldEpochsEvery read them all.
func TestInboxOneEpochPerIdentity(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	var mu sync.Mutex
	var seen []Seen
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithObserver(func(s Seen) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}))})
	mark := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	u := newInboxUser()
	start := time.Now()
	var offset atomic.Int64
	now := func() time.Time { return start.Add(time.Duration(offset.Load())) }
	in, err := NewInbox(InboxConfig{Mailboxes: mailboxSet(m), Registrations: u.registrations, Deliver: u.deliver, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// What each tag is: its kind and epoch.
	type what struct {
		kind  byte
		epoch uint64
	}
	tags := map[[32]byte]what{}
	for _, r := range u.registrations(start.Add(OldEpochsEvery + time.Hour)) {
		tags[r.Tag] = what{r.Kind, r.Epoch}
	}
	for _, r := range u.registrations(start) {
		tags[r.Tag] = what{r.Kind, r.Epoch}
	}
	// epochsQueried lists the epochs queries named in seen[from:].
	epochsQueried := func(from int) map[uint64]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[uint64]bool{}
		for _, s := range seen[from:] {
			if s.Op == "query" {
				for _, tag := range s.Tags {
					out[tags[tag].epoch] = true
				}
			}
		}
		return out
	}
	e := protocol.Epoch(start)
	recent := func(ep uint64) bool { return ep+1 >= e && ep <= e+1 }

	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	if got, live := len(epochsQueried(0)), len(protocol.LiveEpochs(start)); got != live {
		t.Fatalf("the first round read %d epochs, want all %d live ones", got, live)
	}
	// Deposits of two epochs in one batch, and a delete.
	var p Pusher
	for _, ep := range []uint64{e, e + 1} {
		tok := randToken()
		env := testEnvelope(t, u.session.tag(ep), tok, start, time.Hour, 200).Marshal()
		if _, err := p.Push(ctx, u.session.tag(ep), mailboxSet(m), protocol.SealPairDeposit(protocol.WriteKey(u.session.seed, u.session.role, ep), env)); err != nil {
			t.Fatalf("push under epoch %d: %v", ep-e, err)
		}
	}
	p.Close()
	// The filters: one per kind and epoch that start ± FilterClockMargin
	// touches.
	filterEpochs := int(protocol.Epoch(start.Add(FilterClockMargin)) - protocol.Epoch(start.Add(-FilterClockMargin)) + 1)
	fctx, stop := contextWithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); in.RunFilters(fctx) }()
	testkit.WaitFor(t, ctx, func() bool {
		mu.Lock()
		defer mu.Unlock()
		groups := map[what]bool{}
		for _, s := range seen {
			if s.Op == "filter" && len(s.Tags) > 0 {
				groups[tags[s.Tags[0]]] = true
			}
		}
		return len(groups) == 2*filterEpochs
	})
	stop()
	<-done
	if _, err := in.SyncRound(ctx); err != nil { // reads what was pushed before the filters
		t.Fatal(err)
	}
	if err := in.Delete(ctx, u.session.tag(e), [][32]byte{randToken()}); err != nil {
		t.Fatal(err)
	}

	// A round soon after reads only the recent epochs.
	from := mark()
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	for ep := range epochsQueried(from) {
		if !recent(ep) {
			t.Fatalf("a round %v after a full one read epoch %+d", now().Sub(start), int64(ep)-int64(e))
		}
	}
	// One OldEpochsEvery later, all again.
	offset.Store(int64(OldEpochsEvery))
	from = mark()
	if _, err := in.SyncRound(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(epochsQueried(from)); got < len(protocol.LiveEpochs(now()))-1 {
		t.Fatalf("a round %v after the full one read %d epochs, want the live ones", OldEpochsEvery, got)
	}

	mu.Lock()
	defer mu.Unlock()
	named := map[peer.ID]map[what]bool{}
	ops := map[string]int{}
	for _, s := range seen {
		ops[s.Op]++
		for _, tag := range s.Tags {
			w, ok := tags[tag]
			if !ok {
				t.Fatalf("a %s named a tag that is not the user's", s.Op)
			}
			if named[s.Peer] == nil {
				named[s.Peer] = map[what]bool{}
			}
			named[s.Peer][w] = true
		}
	}
	for _, op := range []string{"register", "push", "query", "filter", "delete"} {
		if ops[op] == 0 {
			t.Fatalf("the mailbox saw no %s (saw %v)", op, ops)
		}
	}
	for id, ws := range named {
		if len(ws) > 1 {
			t.Fatalf("peer %s named tags of %d kinds and epochs: %v", id, len(ws), ws)
		}
	}
	t.Logf("requests %v from %d identities", ops, len(named))
	if u.count() != 2 {
		t.Fatalf("delivered %d envelopes, want the 2 pushed", u.count())
	}
}
