package store

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/sotto-im/sotto/protocol"
)

// TestGrowthBounded simulates 30 days (an injected clock) of 200 received
// messages a day from 3 contacts, each leaving a dedup mark and an
// envelope token record, with the node's upkeep (PruneSeen,
// PruneEnvelopeTokens) run every simulated hour. Dedup marks and token
// records stay under a ceiling of what the retention windows allow,
// instead of growing with the history, and Compact shrinks the file.
func TestGrowthBounded(t *testing.T) {
	const (
		days    = 30
		perDay  = 200
		hourly  = perDay / 24
		tokenTT = protocol.MaxTTL
	)
	db, _ := openTest(t)
	addContacts(t, db, 3)
	start := t0
	maxMarks, maxTokens := 0, 0
	n := 0
	for hour := 0; hour < days*24; hour++ {
		now := start.Add(time.Duration(hour) * time.Hour)
		count := hourly
		if hour%24 < perDay%24 {
			count++ // 200 = 24*8 + 8
		}
		mustUpdate(t, db, func(tx *Tx) error {
			for i := 0; i < count; i++ {
				n++
				at := now.Add(time.Duration(i) * time.Second)
				m := Message{ID: msgID(uint64(n)), Contact: acct(byte(1 + n%3)), Direction: Incoming,
					Body: []byte(fmt.Sprintf("day %d message %d %0500d", hour/24, n, n)), SentAt: at, ReceivedAt: at}
				if _, err := tx.AppendMessage(m); err != nil {
					return err
				}
				var seed [8]byte
				binary.BigEndian.PutUint64(seed[:], uint64(n))
				dh := sha256.Sum256(seed[:])
				if err := tx.PutEnvelopeToken(at.Add(tokenTT), dh, dh[:20]); err != nil {
					return err
				}
			}
			if _, err := tx.PruneSeen(now, 1<<20); err != nil {
				return err
			}
			_, err := tx.PruneEnvelopeTokens(now, 1<<20)
			return err
		})
		st, err := db.Stats()
		if err != nil {
			t.Fatal(err)
		}
		maxMarks, maxTokens = max(maxMarks, st.DedupMarks), max(maxTokens, st.EnvelopeTokens)
	}
	if n != days*perDay {
		t.Fatalf("simulated %d messages, want %d", n, days*perDay)
	}
	window := func(d time.Duration) int { return perDay * int((d+24*time.Hour-1)/(24*time.Hour)+1) }
	markCeiling := window(SeenWindow)
	tokenCeiling := window(tokenTT + tokenKeepAfterExpiry)
	t.Logf("after %d messages: at most %d dedup marks (ceiling %d), %d token records (ceiling %d)",
		n, maxMarks, markCeiling, maxTokens, tokenCeiling)
	if maxMarks > markCeiling || maxTokens > tokenCeiling {
		t.Errorf("marks %d (ceiling %d), token records %d (ceiling %d)", maxMarks, markCeiling, maxTokens, tokenCeiling)
	}
	if maxMarks >= n*2/3 || maxTokens >= n*2/3 {
		t.Errorf("nothing was pruned")
	}
	// The user deletes two of the three conversations.
	mustUpdate(t, db, func(tx *Tx) error {
		for _, a := range [][32]byte{acct(1), acct(2)} {
			if _, err := tx.DeleteConversation(a); err != nil {
				return err
			}
		}
		return nil
	})
	before, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Compact(); err != nil {
		t.Fatal(err)
	}
	after, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("file %d bytes before compact, %d after", before.FileBytes, after.FileBytes)
	if after.FileBytes >= before.FileBytes {
		t.Errorf("compact did not shrink the file: %d -> %d bytes", before.FileBytes, after.FileBytes)
	}
	if after.Messages != n/3 || after.DedupMarks != before.DedupMarks {
		t.Errorf("compact changed the records: %+v -> %+v", before, after)
	}
}

// TestPruneSeenUndated: marks written without an expiry get one window
// from the first prune, then go.
func TestPruneSeenUndated(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error { _, err := tx.MarkSeen(acct(1), msgID(1)); return err })
	prune := func(now time.Time) int {
		var n int
		mustUpdate(t, db, func(tx *Tx) error { var err error; n, err = tx.PruneSeen(now, 100); return err })
		return n
	}
	if n := prune(t0); n != 0 {
		t.Fatalf("pruned %d undated marks at once", n)
	}
	if n := prune(t0.Add(SeenWindow - time.Minute)); n != 0 {
		t.Fatalf("pruned %d marks before their window ended", n)
	}
	mustView(t, db, func(tx *Tx) error {
		if ok, err := tx.Seen(acct(1), msgID(1)); !ok || err != nil {
			t.Errorf("mark gone early: %v %v", ok, err)
		}
		return nil
	})
	if n := prune(t0.Add(SeenWindow + time.Minute)); n != 1 {
		t.Fatalf("pruned %d marks after the window", n)
	}
}
