package node

import (
	"context"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// benchConfig is a loopback configuration for the node in dir.
func benchConfig(dir string) Config {
	return Config{DataDir: dir, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, Passphrase: benchPassphrase}
}

// benchNode opens and starts a node, closed when the benchmark ends.
func benchNode(b *testing.B, cfg Config) *Node {
	b.Helper()
	n, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}

// nodePair starts two befriended nodes with an established session.
func nodePair(b *testing.B) (alice, bob *Node) {
	b.Helper()
	start := func(dir string) *Node { return benchNode(b, benchConfig(dir)) }
	var dirs []string
	for _, name := range []string{"alice", "bob"} {
		dir := b.TempDir() + "/" + name
		if _, err := Init(dir, name, nil); err != nil {
			b.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	alice, bob = start(dirs[0]), start(dirs[1])
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
	// Establish the session both ways before measuring.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	feed := bob.Subscribe(ctx)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		b.Fatal(err)
	}
	waitEvent(b, ctx, feed, EventMessage)
	afeed := alice.Subscribe(ctx)
	if _, err := bob.Send(ctx, "alice", "hello"); err != nil {
		b.Fatal(err)
	}
	waitEvent(b, ctx, afeed, EventMessage)
	return alice, bob
}

func waitEvent(b testing.TB, ctx context.Context, feed <-chan Event, typ EventType) Event {
	for {
		select {
		case ev, ok := <-feed:
			if !ok {
				b.Fatal("feed closed")
			}
			if ev.Type == typ {
				return ev
			}
		case <-ctx.Done():
			b.Fatal("timed out waiting for an event")
		}
	}
}

// BenchmarkDurableDirect256: 256-byte messages from Alice's Send (durable
// in her outbox) to Bob's commit (ratchet, message, dedup mark and receipt
// in one transaction, acked after it), many senders at once.
func BenchmarkDurableDirect256(b *testing.B) {
	gogc := daemonGC(b)
	alice, bob := nodePair(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	feed := bob.Subscribe(ctx)
	text := strings.Repeat("x", 256)
	const senders = 64
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < b.N; i += senders {
				if _, err := alice.Send(ctx, "bob", text); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for got := 0; got < b.N; {
		waitEvent(b, ctx, feed, EventMessage)
		got++
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	wg.Wait()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(float64(gogc), "gogc")
}

// BenchmarkSendLatency: one message at a time, Send call to the
// recipient's commit (its event), p50 and p99.
func BenchmarkSendLatency(b *testing.B) {
	gogc := daemonGC(b)
	alice, bob := nodePair(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	feed := bob.Subscribe(ctx)
	text := strings.Repeat("x", 256)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := alice.Send(ctx, "bob", text); err != nil {
			b.Fatal(err)
		}
		waitEvent(b, ctx, feed, EventMessage)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(gogc), "gogc")
}

// BenchmarkNodeStart: Open and Start on an existing data dir, until the
// node can receive.
func BenchmarkNodeStart(b *testing.B) {
	dir := b.TempDir() + "/n"
	if _, err := Init(dir, "n", nil); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		n, err := Open(Config{DataDir: dir, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		n.Close()
		b.StartTimer()
	}
}

// BenchmarkIdleHeap reports the heap of two idle connected nodes, per node.
func BenchmarkIdleHeap(b *testing.B) {
	for b.Loop() {
		func() {
			alice, bob := nodePair(b)
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapAlloc)/2/(1<<20), "MiB-heap/node")
			alice.Close()
			bob.Close()
		}()
	}
}

// cpuTime is the CPU time (user and system) the process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// daemonGC runs a benchmark under the garbage collector target the sotto
// command runs with (TuneGC: GCPercent, or GOGC from the environment),
// restored when it ends, and returns it for the benchmark to report.
func daemonGC(b *testing.B) int {
	prev := TuneGC()
	cur := debug.SetGCPercent(prev)
	debug.SetGCPercent(cur)
	b.Cleanup(func() { debug.SetGCPercent(prev) })
	return cur
}
