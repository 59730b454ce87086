package store

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The 1M-envelope benchmark database: benchMbxEnvelopes envelopes of
// benchMbxCiphertext bytes spread evenly over benchMbxTags tags, built once
// and kept under the system temp dir (benchMbxDirName, rebuilt when the
// name's version changes) because building it takes minutes.
const (
	benchMbxEnvelopes  = 1_000_000
	benchMbxTags       = 10_000
	benchMbxCiphertext = 96
	benchMbxTxSize     = 50_000 // envelopes per building transaction
	benchMbxDirName    = "sotto-bench-mailbox-1m-v1"
	benchMbxDone       = "complete"
)

// benchMailbox1M opens the cached 1M-envelope database, building it first
// if needed.
func benchMailbox1M(b *testing.B) *DB {
	b.Helper()
	if testing.Short() {
		b.Skip("builds a 1M-envelope database; not in -short mode")
	}
	dir := filepath.Join(os.TempDir(), benchMbxDirName)
	if _, err := os.Stat(filepath.Join(dir, benchMbxDone)); errors.Is(err, fs.ErrNotExist) {
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		db, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		lim := MailboxLimits{TotalEnvelopes: 2 * benchMbxEnvelopes}
		for base := 0; base < benchMbxEnvelopes; base += benchMbxTxSize {
			if err := db.Update(func(tx *Tx) error {
				for i := base; i < base+benchMbxTxSize; i++ {
					env := mbxEnvelope(mbxTag(i%benchMbxTags), i, benchMbxCiphertext, 10*24*time.Hour)
					if _, err := tx.MailboxPut(env, mbxNow, lim); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				db.Close()
				b.Fatal(err)
			}
		}
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, benchMbxDone), nil, 0o600); err != nil {
			b.Fatal(err)
		}
		b.Logf("built %d-envelope mailbox in %v at %s", benchMbxEnvelopes, time.Since(start).Round(time.Second), dir)
	}
	db, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// BenchmarkMailboxQuery1M queries one tag (about 100 envelopes, one
// default page) of a mailbox holding a million envelopes, and reports the
// query latency at the 50th and 95th percentiles.
func BenchmarkMailboxQuery1M(b *testing.B) {
	db := benchMailbox1M(b)
	if n, _ := mbxStats(b, db); n != benchMbxEnvelopes {
		b.Fatalf("benchmark mailbox holds %d envelopes, want %d; remove %s", n, benchMbxEnvelopes, db.Dir())
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tag := mbxTag((i * 7919) % benchMbxTags)
		t0 := time.Now()
		var got int
		if err := db.View(func(tx *Tx) error {
			p, err := tx.MailboxQuery([][32]byte{tag}, nil, DefaultMailboxPage, 0, mbxNow)
			got = len(p.Entries)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		if got != benchMbxEnvelopes/benchMbxTags {
			b.Fatalf("query returned %d envelopes", got)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.95), "p95-µs")
}

// BenchmarkMailboxPut stores envelopes one transaction each (fsynced).
func BenchmarkMailboxPut(b *testing.B) {
	db, _ := openTest(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		env := mbxEnvelope(mbxTag(i%1000), i, 256, time.Hour)
		if _, err := mbxPut(b, db, env, MailboxLimits{}); err != nil {
			b.Fatal(err)
		}
	}
}
