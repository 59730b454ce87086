package store

import (
	"bytes"
	"fmt"
	"time"

	"github.com/sotto-im/sotto/protocol"
)

// Bounded growth. Records that exist only to recognise a copy of
// something already processed are kept as long as a copy can still
// arrive, then pruned by the node's hourly upkeep:
//
//   - envelope token records: until their envelope's expiry plus
//     tokenKeepAfterExpiry (PruneEnvelopeTokens);
//   - replay marks of initial messages: until their expiry
//     (PruneInitialSeen);
//   - dedup marks of received messages: SeenWindow after the message was
//     received (PruneSeen). No mailbox keeps an envelope longer than
//     protocol.MaxTTL, and a replayed envelope fails its ratchet anyway;
//     the message itself keeps its ID in the store as long as it is kept.

// SeenMargin is how long a dedup mark outlives the longest time an
// envelope can stay in a mailbox (plus the clock skew allowed).
const SeenMargin = 24 * time.Hour

// SeenWindow is how long a dedup mark is kept after its message arrived.
const SeenWindow = protocol.MaxTTL + protocol.MaxClockSkew + SeenMargin

// seenUntil is the expiry of an incoming message's dedup mark, nil when
// the message carries no time.
func seenUntil(m Message) []byte {
	at := m.ReceivedAt
	if at.IsZero() {
		at = m.SentAt
	}
	if at.IsZero() {
		return nil
	}
	return timeKey(at.Add(SeenWindow))
}

// PruneSeen deletes dedup marks that expired before now, at most limit of
// them, and gives marks written without an expiry (before expiries
// existed, or by MarkSeen) one SeenWindow from now. It returns how many
// marks it deleted.
func (tx *Tx) PruneSeen(now time.Time, limit int) (int, error) {
	seen, err := tx.wbucket(bucketSeen)
	if err != nil {
		return 0, err
	}
	cut := timeKey(now)
	var doomed, undated [][]byte
	err = seen.ForEach(func(k, v []byte) error {
		switch {
		case len(v) == 8 && bytes.Compare(v, cut) < 0 && len(doomed) < limit:
			doomed = append(doomed, bytes.Clone(k))
		case len(v) == 1:
			undated = append(undated, bytes.Clone(k))
		case len(v) != 8 && len(v) != 1:
			return fmt.Errorf("%w: dedup mark of %d bytes", ErrCorrupt, len(v))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range doomed {
		if err := seen.Delete(k); err != nil {
			return 0, err
		}
	}
	until := timeKey(now.Add(SeenWindow))
	for _, k := range undated {
		if err := seen.Put(k, until); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}
