package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/protocol"
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

// BenchmarkMailboxStoragePerUser measures what one user costs a mailbox
// on disk in the model's worst case (docs/MAILBOX-MODEL.md, A5, A6, A11):
// 378 registrations (21 tags a day for 18 days) and 14 days of
// undeleted envelopes (60 a day of 383 bytes, under the user's pairwise
// tags), for benchStorageUsers users in one file. It reports the bytes of
// bbolt pages in use (the file's high-water mark, without its
// preallocation) per registration, per envelope and per user.
func BenchmarkMailboxStoragePerUser(b *testing.B) {
	const (
		users         = 200
		tagsPerEpoch  = 21
		epochs        = 18
		envsPerDay    = 60
		days          = 14
		envCiphertext = 383 - 77 // the model's mean envelope, less the header
	)
	var perReg, perEnv, perUser float64
	for b.Loop() {
		db, _ := openTest(b)
		used := func() int64 {
			var n int64
			db.View(func(tx *Tx) error { n = tx.tx.Size(); return nil })
			return n
		}
		e := protocol.Epoch(mbxNow)
		tag := func(u, t int, ep uint64) [32]byte {
			x := mbxTag(u*1_000_003 + t*1_009 + int(ep))
			x[30] = byte(t)
			return x
		}
		start := used()
		for u := range users {
			var regs []MailboxRegistration
			for ep := e - 15; ep <= e+2; ep++ {
				for t := range tagsPerEpoch {
					regs = append(regs, MailboxRegistration{Kind: RegPair, Tag: tag(u, t, ep), Epoch: ep})
				}
			}
			if err := db.Update(func(tx *Tx) error {
				for len(regs) > 0 {
					chunk := regs[:min(len(regs), MaxMailboxRegistrations)]
					regs = regs[len(chunk):]
					if n, err := tx.MailboxRegister(chunk, mbxNow); err != nil || n != len(chunk) {
						return fmt.Errorf("registered %d of %d: %v", n, len(chunk), err)
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
		afterRegs := used()
		id := 0
		for u := range users {
			if err := db.Update(func(tx *Tx) error {
				for d := range days {
					for i := range envsPerDay {
						id++
						env := mbxEnvelope(tag(u, i%(tagsPerEpoch-1), e-uint64(d)), id, envCiphertext, 24*time.Hour)
						if ok, err := tx.MailboxPutRegistered(env, RegPair, mbxNow, MailboxLimits{}); err != nil || !ok {
							return fmt.Errorf("envelope %d not stored: %v", id, err)
						}
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
		end := used()
		perReg = float64(afterRegs-start) / (users * tagsPerEpoch * epochs)
		perEnv = float64(end-afterRegs) / (users * envsPerDay * days)
		perUser = float64(end-start) / users
	}
	b.ReportMetric(perReg, "disk-B/registration")
	b.ReportMetric(perEnv, "disk-B/envelope")
	b.ReportMetric(perUser, "disk-B/user")
}
