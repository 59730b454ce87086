package node

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/store"
)

// TestFirstContactFlood: 10,000 first messages from fresh accounts,
// through mailboxes, leave the node responsive (a contact's message still
// arrives), the store bounded (requests, their conversations and the
// sessions accepted per day stay within their limits) and the contact
// list usable; a stranger flooding over a direct stream is refused before
// the store.
func TestFirstContactFlood(t *testing.T) {
	n := 10_000
	if testing.Short() || raceEnabled {
		n = 1_000
	}
	const maxRequests, perEpoch = 100, 400
	ctx := testkit.Context(t, 5*time.Minute)
	tn := newTestNet(t)
	aliceDir := tn.initNode("alice")
	alice := tn.start(aliceDir, func(c *Config) { c.MaxRequests, c.NewSessionsPerEpoch = maxRequests, perEpoch })
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	// Carol is a contact with no session yet: she will write first, after
	// the day's budget for strangers is spent.
	carol := tn.start(tn.initNode("carol"))
	befriend(t, alice, "alice", carol, "carol")
	if _, err := bob.Send(ctx, "alice", "before"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, incoming)

	// The flood: workers seal first messages with the bundle Alice serves
	// (a snapshot refreshed now and then) and hand them to her as a sync
	// would.
	var sent, refused, rejected atomic.Int64
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var raw []byte
			for i := w; i < n; i += workers {
				if ctx.Err() != nil {
					return
				}
				if raw == nil || i%(20*workers) == w {
					b, err := alice.currentBundle(alice.now())
					if err != nil {
						t.Error(err)
						return
					}
					raw = b
				}
				// One in ten is held (its sender's first message "missing"),
				// so dropped requests take held messages with them.
				env, _ := firstMessageSeq(t, raw, alice.now(), time.Hour, "", "spam", uint64(1+min(i%10, 1)))
				err := alice.Ingest(ctx, "", env, ViaMailbox)
				sent.Add(1)
				switch {
				case err == nil:
				case errors.Is(err, ErrTooManyFirstContacts):
					refused.Add(1)
				case errors.Is(err, p2p.ErrMalformedEnvelope):
					rejected.Add(1) // a one-time prekey of a stale snapshot, used already
				default:
					t.Errorf("Ingest: %v", err)
					return
				}
			}
		}()
	}

	// Halfway, Bob writes; Alice shows it while the flood goes on.
	testkit.WaitFor(t, ctx, func() bool { return sent.Load() >= int64(n/2) })
	t0 := time.Now()
	if _, err := bob.Send(ctx, "alice", "during the flood"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 2, incoming)
	t.Logf("a contact's message during the flood arrived in %v", time.Since(t0))
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d first messages: %d refused over the day's limit, %d rejected", sent.Load(), refused.Load(), rejected.Load())

	// A stranger over a direct stream: beyond its burst, refused before
	// the store (acked "try later").
	stranger := p2ptest.NewHost(t)
	if err := stranger.Connect(ctx, alice.Host().AddrInfo()); err != nil {
		t.Fatal(err)
	}
	later := 0
	for range 3 * firstContactBurst {
		env, _ := strangerFirstMessage(t, alice, "", "spam")
		if err := stranger.Sender().Send(ctx, alice.Host().ID(), env); errors.Is(err, p2p.ErrTryLater) {
			later++
		}
	}
	if later < firstContactBurst {
		t.Errorf("the direct stranger was told to retry later %d times of %d", later, 3*firstContactBurst)
	}

	// Bounded, and usable.
	st, err := alice.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests > maxRequests || st.RequestsDropped == 0 {
		t.Errorf("status: %d requests (limit %d), %d dropped", st.Requests, maxRequests, st.RequestsDropped)
	}
	if st.EnvelopesRejected != uint64(rejected.Load()) {
		t.Errorf("status counts %d envelopes refused as malformed, the flood had %d", st.EnvelopesRejected, rejected.Load())
	}
	if int(sent.Load())-int(refused.Load())-int(rejected.Load()) > perEpoch {
		t.Errorf("%d first messages accepted, limit %d a day", sent.Load()-refused.Load()-rejected.Load(), perEpoch)
	}
	cs, err := alice.Contacts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) > maxRequests+2 {
		t.Errorf("%d contacts after the flood, want at most %d requests, bob and carol", len(cs), maxRequests)
	}
	if c, err := alice.Contact("bob"); err != nil || c.Request || c.KeyChanged {
		t.Errorf("bob after the flood: %+v, %v", c, err)
	}
	if ms := allMessages(t, alice, ""); len(ms) > maxRequests+2+4 {
		t.Errorf("%d messages kept after the flood", len(ms))
	}
	// A contact's first message is not a stranger's: the spent budget
	// does not stop it.
	if _, err := carol.Send(ctx, "alice", "hello from carol"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "carol", 1, incoming)
	// Bob's conversation still works both ways.
	if _, err := alice.Send(ctx, "bob", "after"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)

	// What was dropped left no dangling index behind.
	alice.Close()
	db, err := store.Open(aliceDir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}
