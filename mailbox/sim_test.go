package mailbox

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
)

// The version 2 simulation: 5 mailbox nodes on a gossip mesh, users who
// each receive at 3 of them and have contacts among the others, and a
// workload of messages that all go through the mailboxes (every recipient
// is offline when its messages are sent, the worst case for mailbox load).
// Every user's hosts (a fresh identity per push batch and per sync round)
// report to one bandwidth counter, so the run measures what each user
// receives, byte for byte on the wire, against its own traffic.

const (
	simMailboxes   = 5
	simK           = 3
	simContacts    = 4
	simEnvelope    = 256
	simMsgsPerUser = 20
)

type simUser struct {
	bw        *metrics.BandwidthCounter
	mbxs      []peer.AddrInfo
	inbox     *Inbox
	contacts  []int
	send      map[int]pairSession // to contact j: the session direction this user writes on
	recv      []Registration      // set in setup
	ownBytes  int64               // envelope bytes this user sent and was sent
	mu        sync.Mutex
	delivered map[[32]byte]int
}

func (u *simUser) newHost() (host.Host, error) {
	return p2p.NewEphemeral(libp2p.BandwidthReporter(u.bw))
}

type simResult struct {
	users, messages, delivered, duplicates int
	recvPerUser, ownPerUser, ratio         float64
	identifyPerUser                        float64 // of recvPerUser, libp2p identify
}

// runMailboxSim runs the simulation with n users and returns its figures.
func runMailboxSim(tb testing.TB, n int, seed uint64) simResult {
	ctx := testkit.Context(tb, 15*time.Minute)
	rng := rand.New(rand.NewPCG(seed, 0))
	now := time.Now()
	e := protocol.Epoch(now)

	// Mailbox nodes, fully meshed.
	var ms []*mailboxNode
	for range simMailboxes {
		m := newMailboxNode(tb, mbxNodeOpts{gossip: true,
			hostOpts: []p2p.Option{p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0")},
			svcOpts:  v2Opts(WithRateLimit(1e6, 1e6))})
		for _, o := range ms {
			if err := m.h.Connect(ctx, o.h.AddrInfo()); err != nil {
				tb.Fatal(err)
			}
		}
		ms = append(ms, m)
	}

	// Users, their mailboxes and contacts (a random graph of degree about
	// simContacts), one session per pair.
	users := make([]*simUser, n)
	for i := range users {
		u := &simUser{bw: metrics.NewBandwidthCounter(), send: map[int]pairSession{}, delivered: map[[32]byte]int{}}
		for _, j := range rng.Perm(simMailboxes)[:simK] {
			u.mbxs = append(u.mbxs, ms[j].h.AddrInfo())
		}
		users[i] = u
	}
	linked := map[[2]int]bool{}
	for i := range users {
		for len(users[i].contacts) < simContacts/2 {
			j := rng.IntN(n)
			if j == i || linked[[2]int{min(i, j), max(i, j)}] {
				continue
			}
			linked[[2]int{min(i, j), max(i, j)}] = true
			var s pairSession
			for k := range s.seed {
				s.seed[k] = byte(rng.Uint32())
			}
			s.role = protocol.FromInitiator
			users[i].send[j] = s
			back := s
			back.role = protocol.FromResponder
			users[j].send[i] = back
			users[i].contacts = append(users[i].contacts, j)
			users[j].contacts = append(users[j].contacts, i)
		}
	}
	for i, u := range users {
		for _, j := range u.contacts {
			s := users[j].send[i]
			for _, ep := range protocol.LiveEpochs(now) {
				u.recv = append(u.recv, s.reg(ep))
			}
		}
		u := u
		in, err := NewInbox(InboxConfig{
			Mailboxes:     u.mbxs,
			Registrations: func(time.Time) []Registration { return u.recv },
			Deliver: func(_ peer.ID, env []byte) error {
				u.mu.Lock()
				u.delivered[sha256.Sum256(env)]++
				u.mu.Unlock()
				return nil
			},
			NewHost: u.newHost,
		})
		if err != nil {
			tb.Fatal(err)
		}
		u.inbox = in
	}
	// Registration: every user's first round.
	parallel(tb, n, func(i int) error { _, err := users[i].inbox.SyncRound(ctx); return err })

	// The workload: simMsgsPerUser messages per user to random contacts,
	// each pushed to the recipient's k mailboxes.
	type msg struct {
		from, to int
		hash     [32]byte
		dep      []byte
	}
	msgs := make([]msg, 0, n*simMsgsPerUser)
	for range n * simMsgsPerUser {
		from := rng.IntN(n)
		to := users[from].contacts[rng.IntN(len(users[from].contacts))]
		s := users[from].send[to]
		env := testEnvelope(tb, s.tag(e), randToken(), now, time.Hour, simEnvelope).Marshal()
		msgs = append(msgs, msg{from, to, sha256.Sum256(env), protocol.SealPairDeposit(protocol.WriteKey(s.seed, s.role, e), env)})
		users[from].ownBytes += int64(len(env))
		users[to].ownBytes += int64(len(env))
	}
	parallel(tb, len(msgs), func(k int) error {
		m := msgs[k]
		stored, err := PushAll(ctx, users[m.from].newHost, users[m.to].mbxs, m.dep)
		if stored != simK {
			return fmt.Errorf("message %d stored at %d of %d: %w", k, stored, simK, err)
		}
		return nil
	})
	// Every recipient comes online and syncs.
	parallel(tb, n, func(i int) error { _, err := users[i].inbox.SyncRound(ctx); return err })

	res := simResult{users: n, messages: len(msgs)}
	want := map[int]map[[32]byte]bool{}
	for _, m := range msgs {
		if want[m.to] == nil {
			want[m.to] = map[[32]byte]bool{}
		}
		want[m.to][m.hash] = true
	}
	// The counters' meters add what was marked to their totals once a
	// second (go-flow-metrics' sweeper): let the last second land.
	time.Sleep(2500 * time.Millisecond)
	var recv, own float64
	for i, u := range users {
		for h, c := range u.delivered {
			if !want[i][h] {
				tb.Fatalf("user %d was delivered an envelope nobody sent it", i)
			}
			res.delivered++
			res.duplicates += c - 1
		}
		recv += float64(u.bw.GetBandwidthTotals().TotalIn)
		own += float64(u.ownBytes)
	}
	res.recvPerUser, res.ownPerUser = recv/float64(n), own/float64(n)
	res.ratio = recv / own
	for _, u := range users {
		res.identifyPerUser += float64(u.bw.GetBandwidthForProtocol("/ipfs/id/1.0.0").TotalIn) / float64(n)
	}
	return res
}

// parallel runs fn(0..n-1) on 16 goroutines and fails tb on the first
// error.
func parallel(tb testing.TB, n int, fn func(i int) error) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
}

// TestMailboxSim runs the simulation at two sizes: every message is
// delivered exactly once, and what a user receives per byte of its own
// traffic does not grow when the network doubles.
func TestMailboxSim(t *testing.T) {
	sizes := []int{50, 100}
	if raceEnabled {
		sizes = []int{10, 20}
	}
	var ratios []float64
	for _, n := range sizes {
		r := runMailboxSim(t, n, 1)
		t.Logf("%d users, %d messages: %.0f bytes received per user (%.0f of them identify) for %.0f bytes of own envelopes (ratio %.2f)",
			r.users, r.messages, r.recvPerUser, r.identifyPerUser, r.ownPerUser, r.ratio)
		if r.delivered != r.messages || r.duplicates != 0 {
			t.Fatalf("%d users: %d of %d messages delivered, %d duplicates", n, r.delivered, r.messages, r.duplicates)
		}
		ratios = append(ratios, r.ratio)
	}
	if ratios[0] <= 0 || ratios[1] > 1.2*ratios[0] {
		t.Fatalf("received bytes per own byte grew from %.2f to %.2f as the network doubled", ratios[0], ratios[1])
	}
}

// BenchmarkMailboxSim reports the same at 100, 200 and 500 users.
func BenchmarkMailboxSim(b *testing.B) {
	for _, n := range []int{100, 200, 500} {
		b.Run(fmt.Sprintf("users=%d", n), func(b *testing.B) {
			var r simResult
			for b.Loop() {
				r = runMailboxSim(b, n, 1)
			}
			if r.delivered != r.messages || r.duplicates != 0 {
				b.Fatalf("%d of %d delivered, %d duplicates", r.delivered, r.messages, r.duplicates)
			}
			b.ReportMetric(r.recvPerUser, "recv-B/user")
			b.ReportMetric(r.ownPerUser, "own-B/user")
			b.ReportMetric(r.ratio, "recv/own")
			b.ReportMetric(r.identifyPerUser, "identify-B/user")
		})
	}
}
