package mailbox

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// benchLimits lets a benchmark fill one registration far past the default
// quotas.
var benchLimits = store.MailboxLimits{PairEnvelopes: 1 << 30, PairBytes: 1 << 40}

func reportLatency(b *testing.B, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// BenchmarkPush2 pushes signed deposits of 256-byte envelopes, one at a
// time, to a version 2 mailbox on loopback: request, credential check
// (SHA-256 of the tag key, Ed25519 verify), registration lookup, fsynced
// commit, ack. Deposits are signed outside the timed loop.
func BenchmarkPush2(b *testing.B) {
	m := newMailboxNode(b, mbxNodeOpts{
		hostOpts: []p2p.Option{p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0")},
		svcOpts:  v2Opts(WithRateLimit(1e9, 1<<30), WithLimits(benchLimits)),
	})
	ctx := testkit.Context(b, 10*time.Minute)
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	ps := newPairSession()
	c := newClient2(b)
	if _, _, err := c.Register(ctx, ai, []Registration{ps.reg(e)}); err != nil {
		b.Fatal(err)
	}
	deps := make([][]byte, 0, 8192)
	for range cap(deps) {
		d, _, _ := ps.deposit(b, now, benchEnvelopeSize)
		deps = append(deps, d)
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i == len(deps) {
			b.Fatalf("more than %d iterations: raise the prepared deposits", len(deps))
		}
		t0 := time.Now()
		if err := c.Push(ctx, ai, deps[i]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deposits/s")
}

// BenchmarkPush2Concurrent is the sustained rate with 16 senders pushing
// at once (each push still its own fsynced transaction).
func BenchmarkPush2Concurrent(b *testing.B) {
	m := newMailboxNode(b, mbxNodeOpts{
		hostOpts: []p2p.Option{p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0")},
		svcOpts:  v2Opts(WithRateLimit(1e9, 1<<30), WithLimits(benchLimits)),
	})
	ctx := testkit.Context(b, 10*time.Minute)
	ai := m.h.AddrInfo()
	now := time.Now()
	e := protocol.Epoch(now)
	const senders = 16
	per := b.N/senders + 1
	var sessions []pairSession
	var regs []Registration
	for range senders {
		ps := newPairSession()
		sessions = append(sessions, ps)
		regs = append(regs, ps.reg(e))
	}
	if _, _, err := newClient2(b).Register(ctx, ai, regs); err != nil {
		b.Fatal(err)
	}
	deps := make([][][]byte, senders)
	clients := make([]*Client2, senders)
	for i := range senders {
		clients[i] = newClient2(b)
		for range per {
			d, _, _ := sessions[i].deposit(b, now, benchEnvelopeSize)
			deps[i] = append(deps[i], d)
		}
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, d := range deps[i] {
				if err := clients[i].Push(ctx, ai, d); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(senders*per)/b.Elapsed().Seconds(), "deposits/s")
}

// BenchmarkFilterPushLatency is the time from a PUSH to the recipient's
// FILTER callback, on loopback: at the same mailbox, and at another
// mailbox the deposit reaches by replication over gossip.
func BenchmarkFilterPushLatency(b *testing.B) {
	for _, tc := range []struct {
		name    string
		viaMesh bool
	}{{"same-mailbox", false}, {"replicated", true}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := testkit.Context(b, 10*time.Minute)
			mk := func() *mailboxNode {
				return newMailboxNode(b, mbxNodeOpts{gossip: true,
					hostOpts: []p2p.Option{p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0")},
					svcOpts:  v2Opts(WithRateLimit(1e9, 1<<30), WithLimits(benchLimits))})
			}
			a, r := mk(), mk()
			if err := r.h.Connect(ctx, a.h.AddrInfo()); err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			e := protocol.Epoch(now)
			ps := newPairSession()
			waitTopic2Peer(b, ctx, a.g, ps.tag(e).Shard(Shards), r.h.ID())
			recipient, sender := newClient2(b), newClient2(b)
			for _, m := range []*mailboxNode{a, r} {
				if _, _, err := recipient.Register(ctx, m.h.AddrInfo(), []Registration{ps.reg(e)}); err != nil {
					b.Fatal(err)
				}
			}
			got := make(chan []byte, 1)
			f, err := recipient.Filter(ctx, r.h.AddrInfo(), [][32]byte{ps.tag(e)}, func(env []byte) { got <- env })
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			at := r
			if tc.viaMesh {
				at = a
			}
			push := func(timeout time.Duration) (time.Duration, bool) {
				d, _, _ := ps.deposit(b, now, benchEnvelopeSize)
				t0 := time.Now()
				if err := sender.Push(ctx, at.h.AddrInfo(), d); err != nil {
					b.Fatal(err)
				}
				select {
				case <-got:
					return time.Since(t0), true
				case <-time.After(timeout):
					return 0, false
				}
			}
			// Warm the mesh up: the first publishes can reach nobody.
			for ok := false; !ok; {
				_, ok = push(500 * time.Millisecond)
			}
			var lat []time.Duration
			b.ResetTimer()
			for b.Loop() {
				d, ok := push(5 * time.Second)
				if !ok {
					b.Fatal("a push never reached the filter")
				}
				lat = append(lat, d)
			}
			b.StopTimer()
			reportLatency(b, lat)
		})
	}
}
