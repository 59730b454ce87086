package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/store"
)

// TestDeliveryFailureSchedule: how a failed direct attempt schedules the
// next. A stream this side reset for a newer connection to the peer (it
// restarted, or hole punching made a direct one) is no failed try: the
// entry goes again at once and its backoff does not grow. A dial that
// found no path waits out p2p.DialFailMemory, in which no dial to the
// peer is tried. Any other failure backs off.
func TestDeliveryFailureSchedule(t *testing.T) {
	tn := newTestNet(t)
	n, err := Open(Config{DataDir: tn.initNode("alice"), Logger: testLogger("node", "alice")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	now := time.Now()
	n.cfg.Now = func() time.Time { return now }
	acct := [32]byte{5}
	for i, c := range []struct {
		err      error
		attempts int
		min, max time.Duration
	}{
		{fmt.Errorf("%w: %w", p2p.ErrStreamFailed, fmt.Errorf("%w: the peer connected again", p2p.ErrStreamReplaced)), 3, 0, 0},
		{fmt.Errorf("%w: 12D3KooW…: no dial reached it lately", p2p.ErrNoDirectPath), 4, p2p.DialFailMemory, p2p.DialFailMemory},
		{fmt.Errorf("%w: i/o deadline reached", p2p.ErrStreamFailed), 4, minRetry << 4 / 2, minRetry << 4},
	} {
		id := [16]byte{byte(i + 1)}
		e := store.OutboxEntry{MsgID: id, Contact: acct, Kind: store.OutboxMessage, Envelope: []byte{1}, Created: now,
			NextAttempt: now, Attempts: 3, Expires: now.Add(time.Hour)}
		if err := n.db.Update(func(tx *store.Tx) error { return tx.PutOutbox(e) }); err != nil {
			t.Fatal(err)
		}
		n.recordResults(acct, []store.OutboxEntry{e}, []error{c.err}, store.ViaDirect)
		var got store.OutboxEntry
		if err := n.db.View(func(tx *store.Tx) (err error) { got, err = tx.GetOutbox(id); return err }); err != nil {
			t.Fatal(err)
		}
		if d := got.NextAttempt.Sub(now); got.Attempts != c.attempts || d < c.min || d > c.max {
			t.Errorf("after %v: attempts %d, next in %v; want %d, in %v..%v", c.err, got.Attempts, d, c.attempts, c.min, c.max)
		}
	}
}
