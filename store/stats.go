package store

import (
	"os"
	"slices"
)

// Stats describes the store for `sotto status`: whether it is encrypted,
// the size of its file, and how many records of each kind it holds.
type Stats struct {
	Encrypted bool
	FileBytes int64
	// Record counts.
	Contacts, Messages, Sessions, Prekeys, Outbox int
	DedupMarks, EnvelopeTokens, ReplayMarks       int
	MailboxEnvelopes                              int // held for others, when serving as a mailbox
	// RewriteDue says a deleted secret waits for the next rewrite.
	RewriteDue bool
	// Problems are what the quick check at Open found (OpenProblems),
	// then the damaged records that reads met and went on without since.
	Problems []string
}

// Stats reports the store's size and contents.
func (db *DB) Stats() (Stats, error) {
	st := Stats{Encrypted: db.Encrypted(), RewriteDue: db.due.Load(), Problems: append(slices.Clone(db.problems), db.damaged()...)}
	err := db.View(func(tx *Tx) error {
		count := func(name []byte) int {
			if b := tx.tx.Bucket(name); b != nil {
				return b.Stats().KeyN
			}
			return 0
		}
		st.Contacts = count(bucketContacts)
		st.Messages = count(bucketMessages)
		st.Sessions = count(bucketSessions)
		st.Prekeys = count(bucketPrekeys)
		st.Outbox = count(bucketOutbox)
		st.DedupMarks = count(bucketSeen)
		st.EnvelopeTokens = count(bucketTokenLog) + count(bucketTokenLegacy)
		st.ReplayMarks = count(bucketSeenInit)
		st.MailboxEnvelopes = count(bucketMbxEnv)
		st.FileBytes = tx.tx.Size()
		return nil
	})
	if fi, ferr := os.Stat(db.path()); ferr == nil {
		st.FileBytes = fi.Size()
	}
	return st, err
}
