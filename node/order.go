package node

import (
	"time"

	"github.com/sotto-im/sotto/store"
)

// DefaultReorderWait is how long a received message may wait for a
// missing predecessor before it is shown anyway. Gaps from paths racing
// (direct, gossip, several mailboxes) close within a sync; the longest
// ordinary gap is a message the recipient could not decrypt at first (a
// simultaneous first contact) being sealed again and retried with
// backoff, which takes seconds to tens of seconds.
const DefaultReorderWait = 30 * time.Second

// releaseLoop shows held messages (received while an earlier message of
// the same sender was missing) once they have waited ReorderWait. The
// ingest committer kicks it when it holds a message; it also runs once at
// start for messages held before a restart.
func (n *Node) releaseLoop() {
	n.kickLoop(n.releaseKick, func() (time.Duration, bool) {
		next, ok := n.releaseHeld()
		return max(next, time.Millisecond), ok
	})
}

// releaseHeld shows what has waited long enough and reports how long until
// the next held message is due, if any is held.
func (n *Node) releaseHeld() (time.Duration, bool) {
	now := n.now()
	var (
		due      bool
		at       time.Time
		held     bool
		released []store.Message
	)
	if err := n.db.View(func(tx *store.Tx) error {
		var err error
		at, held, err = tx.NextRelease()
		due = held && !at.Add(n.cfg.ReorderWait).After(now)
		return err
	}); err != nil {
		n.cfg.Logger.Error("reading held messages", "err", err)
		return time.Second, true
	}
	if !held {
		return 0, false
	}
	var groups [][32]byte
	if due {
		if err := n.db.Update(func(tx *store.Tx) error {
			var err error
			released, err = tx.ReleaseHeld(now.Add(-n.cfg.ReorderWait))
			if err != nil {
				return err
			}
			if groups, err = n.groupsShown(tx, released, now); err != nil {
				return err
			}
			at, held, err = tx.NextRelease()
			return err
		}); err != nil {
			n.cfg.Logger.Error("releasing held messages", "err", err)
			return time.Second, true
		}
		n.publishShown(released)
		n.groupsChanged(groups)
	}
	if !held {
		return 0, false
	}
	return at.Add(n.cfg.ReorderWait).Sub(now), true
}

// publishShown announces messages that became visible.
func (n *Node) publishShown(ms []store.Message) {
	if len(ms) == 0 {
		return
	}
	evs := make([]Event, len(ms))
	for i := range ms {
		evs[i] = messageEvent(EventMessage, ms[i])
	}
	n.events.publish(evs...)
}

func (n *Node) kickRelease() {
	select {
	case n.releaseKick <- struct{}{}:
	default:
	}
}
