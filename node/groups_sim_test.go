package node

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// groupSim is a group of members on a mocknet of real nodes, each member
// the others' contact, with one mailbox node as the DHT's bootstrap.
type groupSim struct {
	s     *simNet
	users []*simNode
	g     Group
}

func newGroupSim(tb testing.TB, ctx context.Context, members int) *groupSim {
	tb.Helper()
	began := time.Now()
	// Every pair of members starts a session for its sender keys; what
	// is measured is the group, not how fast one mailbox registers
	// thousands of new sessions' tags, so a session's first envelope
	// waits for that only briefly.
	s := newSimNet(tb, members+1, 1, func(c *Config) { c.RegisterWait, c.MailboxAfter = 50*time.Millisecond, DefaultMailboxAfter })
	tb.Cleanup(s.close)
	s.start(ctx)
	tb.Logf("%d nodes up %v after the start", members+1, time.Since(began).Round(time.Millisecond))
	users := s.nodes[1:]
	for i, a := range users {
		for _, b := range users[i+1:] {
			simBefriend(tb, a, b)
		}
	}
	tb.Logf("%d pairs of contacts %v after the start", members*(members-1)/2, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	var names []string
	for _, u := range users[1:] {
		names = append(names, u.name)
	}
	g, err := users[0].node().CreateGroup(ctx, "sim", names)
	if err != nil {
		tb.Fatal(err)
	}
	for _, u := range users {
		n := u.node()
		testkit.WaitFor(tb, ctx, func() bool { gi, err := n.GroupInfo(g.ID); return err == nil && len(gi.Members) == members })
	}
	tb.Logf("%d members hold the group %v after it was created", members, time.Since(began).Round(time.Millisecond))
	// Every member holds every member's sender key (its own included).
	for _, u := range users {
		n := u.node()
		testkit.WaitFor(tb, ctx, func() bool {
			n.grp.mu.Lock()
			defer n.grp.mu.Unlock()
			lg := n.grp.live[group.ID(g.ID)]
			return lg != nil && len(lg.recv.KeyIDs()) >= members
		})
	}
	tb.Logf("every member holds every sender key %v after the group was created", time.Since(began).Round(time.Millisecond))
	return &groupSim{s: s, users: users, g: g}
}

// TestGroup50: a group of 50 members. 100 messages from random members:
// every member ends with all 100 exactly once, each sender's in its
// order.
func TestGroup50(t *testing.T) {
	if testing.Short() || raceEnabled || os.Getenv("SOTTO_SIM") == "" {
		t.Skip("a 50-node group, minutes long: set SOTTO_SIM=1 (not under the race detector)")
	}
	const members, messages = 50, 100
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 0x6750))
	ctx := testkit.Context(t, 20*time.Minute)
	gs := newGroupSim(t, ctx, members)
	began := time.Now()
	sent := map[string]int{}
	for range messages {
		u := gs.users[rng.IntN(len(gs.users))]
		if _, err := u.node().SendGroup(ctx, gs.g.ID, fmt.Sprintf("%s %d", u.name, sent[u.name])); err != nil {
			t.Fatal(err)
		}
		sent[u.name]++
	}
	for _, u := range gs.users {
		waitGroupTexts(t, ctx, u.node(), gs.g.ID, messages)
	}
	t.Logf("every member shows all %d messages %v after the first was sent", messages, time.Since(began).Round(time.Millisecond))
	for _, u := range gs.users {
		texts := groupTexts(t, u.node(), gs.g.ID)
		if len(texts) != messages {
			t.Fatalf("%s shows %d messages", u.name, len(texts))
		}
		for from, count := range sent {
			label := from
			if from == u.name {
				label = "me"
			}
			next := 0
			for _, tx := range texts {
				if tx == fmt.Sprintf("%s: %s %d", label, from, next) {
					next++
				}
			}
			if next != count {
				t.Fatalf("%s shows %d of %s's %d messages in order: %q", u.name, next, from, count, texts)
			}
		}
	}
}

// BenchmarkGroupDelivery: one member of a group sends; the time until
// every other member has stored it (p50 and p99 over b.N sends), and the
// sender's CPU per send (ns/op covers sealing and storing only: the
// publish is the same one envelope whatever the group's size).
func BenchmarkGroupDelivery(b *testing.B) {
	for _, members := range []int{50, 100} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			ctx := testkit.Context(b, 10*time.Minute)
			gs := newGroupSim(b, ctx, members)
			sender := gs.users[0].node()
			var lat []time.Duration
			var seal time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				if _, err := sender.SendGroup(ctx, gs.g.ID, fmt.Sprintf("m%d", i)); err != nil {
					b.Fatal(err)
				}
				seal += time.Since(start)
				for _, u := range gs.users[1:] {
					n := u.node()
					for {
						ms, _ := n.GroupMessages(gs.g.ID, i, 1)
						if len(ms) == 1 {
							break
						}
						if ctx.Err() != nil {
							b.Fatalf("%s never got message %d", u.name, i)
						}
						time.Sleep(time.Millisecond)
					}
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(seal.Microseconds())/float64(b.N), "send-µs")
		})
	}
}

// BenchmarkGroupRemoval: in a group of 50 or 100, the admin removes one member
// per iteration; the time until every remaining member holds the new
// sender key of every other remaining member, which is when each can
// send again and be read by all (and not by the removed one).
func BenchmarkGroupRemoval(b *testing.B) {
	for _, members := range []int{50, 100} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) { benchmarkGroupRemoval(b, members) })
	}
}

func benchmarkGroupRemoval(b *testing.B, members int) {
	ctx := testkit.Context(b, 15*time.Minute)
	gs := newGroupSim(b, ctx, members)
	admin := gs.users[0].node()
	left := slices.Clone(gs.users)
	var took []time.Duration
	// Sessions that wait for their first answer: those sent on (whose
	// messages' deposits cost a stamp), and the spares kept for reading
	// after a simultaneous initiation (nothing is sent on them).
	sending, spare := 0, 0
	for _, u := range gs.users {
		n := u.node()
		n.db.View(func(tx *store.Tx) error {
			return n.eachSession(tx, func(c store.Contact, s *protocol.Session) error {
				if !s.PendingInitial() {
					return nil
				}
				if cur, err := n.loadSession(tx, c.Account); err == nil && cur != nil && cur.InitialID() == s.InitialID() {
					sending++
				} else {
					spare++
				}
				return nil
			})
		})
	}
	b.Logf("of %d pairs' sessions, %d sent on and %d spares still wait for their first answer", members*(members-1), sending, spare)
	b.ResetTimer()
	defer profileTimed(b)()
	for range b.N {
		if len(left) < 3 {
			b.Fatal("the group ran out of members to remove")
		}
		gone := left[len(left)-1]
		left = left[:len(left)-1]
		before := map[[group.KeyIDSize]byte]bool{}
		for _, u := range left {
			if id, ok := mineKeyID(u.node(), gs.g.ID); ok {
				before[id] = true
			}
		}
		start := time.Now()
		if _, err := admin.RemoveFromGroup(ctx, gs.g.ID, gone.name); err != nil {
			b.Fatal(err)
		}
		for _, u := range left {
			n := u.node()
			testkit.WaitFor(b, ctx, func() bool {
				for _, v := range left {
					id, ok := mineKeyID(v.node(), gs.g.ID)
					if !ok || before[id] || (v != u && !holdsKey(n, gs.g.ID, id)) {
						return false
					}
				}
				return true
			})
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
}

// profileTimed writes a CPU profile of what follows, until the function
// it returns is called, to the file SOTTO_BENCH_CPUPROFILE names, if set:
// go test's -cpuprofile would mostly show the group's start.
func profileTimed(b *testing.B) func() {
	path := os.Getenv("SOTTO_BENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// mineKeyID is the ID of n's own current sender key in group id.
func mineKeyID(n *Node, id [32]byte) ([group.KeyIDSize]byte, bool) {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[group.ID(id)]
	if lg == nil || lg.mine == nil {
		return [group.KeyIDSize]byte{}, false
	}
	return lg.mine.ID, true
}

// holdsKey reports whether n can read sender key kid in group id.
func holdsKey(n *Node, id [32]byte, kid [group.KeyIDSize]byte) bool {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[group.ID(id)]
	return lg != nil && slices.Contains(lg.recv.KeyIDs(), kid)
}
