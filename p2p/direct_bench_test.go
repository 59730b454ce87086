package p2p

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
)

// benchEnvelopeSize is a typical small envelope.
const benchEnvelopeSize = 256

// benchTransports runs a benchmark over each transport on loopback.
var benchTransports = []struct{ name, addr string }{
	{"tcp", "/ip4/127.0.0.1/tcp/0"},
	{"quic", "/ip4/127.0.0.1/udp/0/quic-v1"},
}

// benchPair is a sender and a receiver that acks at once (no storage): the
// ceiling the libp2p stream sets on direct delivery.
func benchPair(b *testing.B, addr string) (snd *Host, dst peer.ID) {
	b.Helper()
	var stored atomic.Int64
	rcv := ReceiverFunc(func(context.Context, peer.ID, []byte) error {
		stored.Add(1)
		return nil
	})
	d := newTestHost(b, WithNAT(false), WithMetrics(false), WithListenAddrs(addr), WithReceiver(rcv))
	s := newTestHost(b, WithNAT(false), WithMetrics(false), WithListenAddrs(addr))
	ctx := testkit.Context(b, 30*time.Second)
	if err := s.Connect(ctx, d.AddrInfo()); err != nil {
		b.Fatal(err)
	}
	// Open the stream outside the timed region.
	if err := s.Sender().Send(ctx, d.ID(), make([]byte, benchEnvelopeSize)); err != nil {
		b.Fatal(err)
	}
	return s, d.ID()
}

// BenchmarkDirectPipelined sends 256-byte envelopes from many goroutines
// over one pipelined stream and reports envelopes per second.
func BenchmarkDirectPipelined(b *testing.B) {
	const workers = 128
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			snd, dst := benchPair(b, tr.addr)
			env := make([]byte, benchEnvelopeSize)
			ctx := testkit.Context(b, 10*time.Minute)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			b.SetBytes(benchEnvelopeSize)
			b.ResetTimer()
			start := time.Now()
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := snd.Sender().Send(ctx, dst, env); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkDirectLatency sends one envelope at a time and reports the
// round trip (write, receive, ack) at the 50th and 99th percentiles.
func BenchmarkDirectLatency(b *testing.B) {
	for _, tr := range benchTransports {
		b.Run(tr.name, func(b *testing.B) {
			snd, dst := benchPair(b, tr.addr)
			env := make([]byte, benchEnvelopeSize)
			ctx := testkit.Context(b, 10*time.Minute)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := snd.Sender().Send(ctx, dst, env); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[int(p*float64(len(lat)-1))].Microseconds())
			}
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}
