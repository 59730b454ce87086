package store

import (
	"sync/atomic"
	"testing"
	"time"
)

// benchBody is a typical short text message.
var benchBody = make([]byte, 160)

func benchDB(b *testing.B) *DB {
	db, _ := openTest(b)
	addContacts(b, db, 8)
	return db
}

func reportRate(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkAppendMessageUpdate stores each message in its own fsynced
// transaction: the latency-bound path.
func BenchmarkAppendMessageUpdate(b *testing.B) {
	db := benchDB(b)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		id := msgID(uint64(i))
		if err := db.Update(func(tx *Tx) error {
			_, err := tx.AppendMessage(Message{ID: id, Contact: acct(byte(i%8 + 1)), Direction: Incoming, Body: benchBody})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, start)
}

// BenchmarkAppendMessageBatch stores messages from many goroutines with
// DB.Batch, which shares one fsynced transaction among concurrent callers;
// each call still returns only after its message is durable.
func BenchmarkAppendMessageBatch(b *testing.B) {
	db := benchDB(b)
	var n atomic.Uint64
	b.SetParallelism(32) // 32 × GOMAXPROCS writers, like many streams delivering at once
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			id := msgID(i)
			if err := db.Batch(func(tx *Tx) error {
				_, err := tx.AppendMessage(Message{ID: id, Contact: acct(byte(i%8 + 1)), Direction: Incoming, Body: benchBody})
				return err
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, start)
}
