package store

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

// benchSealed runs fn on a plain and on an encrypted store (the same
// benchmark, same run), so that docs/BENCHMARKS.md can compare them.
func benchSealed(b *testing.B, fn func(b *testing.B, db *DB)) {
	for _, sealed := range []bool{false, true} {
		b.Run(fmt.Sprintf("encrypted=%v", sealed), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "data")
			var opts []Option
			if sealed {
				opts = []Option{WithPassphrase([]byte("bench")), WithKDF(testKDF)}
			} else {
				opts = []Option{WithPassphrase(nil)}
			}
			db, err := Open(dir, opts...)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			addContacts(b, db, 8)
			fn(b, db)
		})
	}
}

// BenchmarkAppendMessageBatchAtRest is BenchmarkAppendMessageBatch on a
// plain and an encrypted store.
func BenchmarkAppendMessageBatchAtRest(b *testing.B) {
	benchSealed(b, func(b *testing.B, db *DB) {
		var n atomic.Uint64
		b.SetParallelism(32)
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				id := msgID(i)
				if err := db.Batch(func(tx *Tx) error {
					_, err := tx.AppendMessage(Message{ID: id, Contact: acct(byte(i%8 + 1)), Direction: Incoming, Body: benchBody,
						ReceivedAt: t0})
					return err
				}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportRate(b, start)
	})
}

// BenchmarkListMessagesAtRest reads a conversation page of 100 messages.
func BenchmarkListMessagesAtRest(b *testing.B) {
	benchSealed(b, func(b *testing.B, db *DB) {
		mustUpdate(b, db, func(tx *Tx) error {
			for i := 1; i <= 1000; i++ {
				if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(1), Direction: Incoming, Body: benchBody}); err != nil {
					return err
				}
			}
			return nil
		})
		a := acct(1)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := db.View(func(tx *Tx) error {
				_, err := tx.ListMessages(&a, uint64(i%900), 100)
				return err
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpenEncrypted100k: opening an encrypted store of 100,000
// messages until it serves a read (the last page of a conversation),
// without and with the Argon2id time (DefaultKDF). Run with
// -benchtime 3x: the setup writes the messages.
func BenchmarkOpenEncrypted100k(b *testing.B) {
	dir := store100k(b, DefaultKDF)
	a := acct(1)
	var kdf time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		kdf += kdfTime(DefaultKDF)
		db, err := Open(dir, WithPassphrase([]byte("bench")))
		if err != nil {
			b.Fatal(err)
		}
		if err := db.View(func(tx *Tx) error {
			last, err := tx.LastSeq(&a)
			if err != nil {
				return err
			}
			_, err = tx.ListMessages(&a, max(last, 50)-50, 50)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		db.Close()
	}
	b.StopTimer()
	total := b.Elapsed() - kdf // the calibration runs are inside the timer too
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/open")
	b.ReportMetric(float64(kdf.Milliseconds())/float64(b.N), "argon2id-ms")
}

// BenchmarkQuickCheck100k is the quick check that every Open runs, on an
// encrypted store of 100,000 messages. Run with -benchtime 10x.
func BenchmarkQuickCheck100k(b *testing.B) {
	db, err := Open(store100k(b, testKDF), WithPassphrase([]byte("bench")))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p := db.quickCheck(); len(p) > 0 {
			b.Fatal(p)
		}
	}
}

// store100k writes an encrypted store of 100,000 messages to 8 contacts
// and returns its directory, closed.
func store100k(b *testing.B, kdf KDFParams) string {
	dir := filepath.Join(b.TempDir(), "data")
	db, err := Open(dir, WithPassphrase([]byte("bench")), WithKDF(kdf))
	if err != nil {
		b.Fatal(err)
	}
	addContacts(b, db, 8)
	for batch := 0; batch < 20; batch++ {
		mustUpdate(b, db, func(tx *Tx) error {
			for j := 0; j < 5000; j++ {
				i := batch*5000 + j + 1
				if _, err := tx.AppendMessage(Message{ID: msgID(uint64(i)), Contact: acct(byte(i%8 + 1)), Direction: Incoming,
					Body: benchBody, ReceivedAt: t0}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	db.Close()
	return dir
}

// BenchmarkArgon2idDefault is one derivation at DefaultKDF.
func BenchmarkArgon2idDefault(b *testing.B) {
	for i := 0; i < b.N; i++ {
		kdfTime(DefaultKDF)
	}
}

// kdfTime measures one derivation with p.
func kdfTime(p KDFParams) time.Duration {
	start := time.Now()
	argon2.IDKey([]byte("calibrate"), make([]byte, wrapSaltSize), p.Time, p.Memory, p.Threads, 32)
	return time.Since(start)
}
