package node

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/store"
)

// BenchmarkSync10k: Alice sends 10,000 messages while Bob is offline;
// they wait in a mailbox. Measured: Bob's start to all 10,000 committed
// (fetch, decrypt, commit with receipts, delete at the mailbox). Run with
// -benchtime 1x: the setup deposits 10,000 envelopes.
func BenchmarkSync10k(b *testing.B) {
	N := 10_000
	if v, err := strconv.Atoi(os.Getenv("SOTTO_SYNC_N")); err == nil && v > 0 {
		N = v // a smaller run while working on it
	}
	for b.Loop() {
		b.StopTimer()
		boot := p2ptest.NewHost(b, p2p.WithBundleVerifier(p2p.VerifyBundle))
		start := func(dir string, serve bool) *Node {
			cfg := benchConfig(dir)
			cfg.Bootstrap = []peer.AddrInfo{boot.AddrInfo()}
			cfg.Mailbox, cfg.MailboxAfter = serve, time.Millisecond
			// The default per-tag quota (1,000 envelopes, 8 MiB) and
			// per-peer deposit rate (50/s) would refuse most of a
			// 10,000-message backlog from one sender to one recipient.
			cfg.MailboxOptions = []mailbox.Option{
				mailbox.WithLimits(store.MailboxLimits{TagEnvelopes: int64(2 * N), TagBytes: 64 << 20}),
				mailbox.WithRateLimit(float64(4*N), 4*N),
			}
			return benchNode(b, cfg)
		}
		dirs := map[string]string{}
		for _, name := range []string{"mailbox", "alice", "bob"} {
			dirs[name] = b.TempDir() + "/" + name
			if _, err := Init(dirs[name], name, nil); err != nil {
				b.Fatal(err)
			}
		}
		start(dirs["mailbox"], true)
		alice, bob := start(dirs["alice"], false), start(dirs["bob"], false)
		for _, p := range []struct {
			from, to *Node
			name     string
		}{{alice, bob, "bob"}, {bob, alice, "alice"}} {
			inv, err := p.to.invite()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.from.AddContact(p.name, inv.String()); err != nil {
				b.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		// A first exchange so Bob's session exists, then Bob leaves.
		feed := bob.Subscribe(ctx)
		if _, err := alice.Send(ctx, "bob", "hi"); err != nil {
			b.Fatal(err)
		}
		waitEvent(b, ctx, feed, EventMessage)
		bob.Close()
		t0 := time.Now()
		for i := range N {
			if _, err := alice.Send(ctx, "bob", fmt.Sprintf("message %05d", i)); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("%d messages sent in %s", N, time.Since(t0))
		t0 = time.Now()
		waitStoredCount(b, ctx, alice, N) // the first message may still wait for its receipt
		b.Logf("%d messages stored at the mailbox in %s", N, time.Since(t0))

		cfg := benchConfig(dirs["bob"])
		cfg.Bootstrap = []peer.AddrInfo{boot.AddrInfo()}
		n, err := Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		feed = n.Subscribe(ctx)
		b.StartTimer()
		t0 = time.Now()
		if err := n.Start(ctx); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < N; got++ {
			waitEvent(b, ctx, feed, EventMessage)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "s-sync")
	}
}

// waitStoredCount waits until n's outgoing messages to bob that are
// stored or delivered number at least want.
func waitStoredCount(b *testing.B, ctx context.Context, n *Node, want int) {
	for {
		count := len(messagesWhere(b, n, "bob", stored))
		if count >= want {
			return
		}
		select {
		case <-ctx.Done():
			b.Fatalf("only %d of %d messages stored", count, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
