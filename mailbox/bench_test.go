package mailbox

import (
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
)

// benchEnvelopeSize is a typical small envelope.
const benchEnvelopeSize = 256

// BenchmarkMailboxDeposit deposits one envelope at a time straight to a
// mailbox on loopback (TCP) and reports the round trip — request, validation,
// fsynced commit, ack — at the 50th and 99th percentiles.
func BenchmarkMailboxDeposit(b *testing.B) {
	m := newMailboxNode(b, mbxNodeOpts{
		hostOpts: []p2p.Option{p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0")},
		svcOpts:  []Option{WithRateLimit(1e9, 1<<30)},
	})
	_, c := newClient(b, false, m)
	ctx := testkit.Context(b, 10*time.Minute)
	now := time.Now()
	// Envelopes are built outside the timed loop.
	envs := make([][]byte, 0, 4096)
	for range cap(envs) {
		envs = append(envs, testEnvelope(b, randTag(), randToken(), now, time.Hour, benchEnvelopeSize).Marshal())
	}
	warm := testEnvelope(b, randTag(), randToken(), now, time.Hour, benchEnvelopeSize).Marshal()
	if err := c.DepositTo(ctx, m.h.ID(), warm); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.SetBytes(int64(len(envs[0])))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		env := envs[i%len(envs)]
		if i >= len(envs) {
			// Fresh bytes, so the mailbox stores rather than dedups.
			env = testEnvelope(b, protocol.Tag(env[1:33]), randToken(), now, time.Hour, benchEnvelopeSize).Marshal()
		}
		t0 := time.Now()
		if err := c.DepositTo(ctx, m.h.ID(), env); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
