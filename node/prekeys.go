package node

import (
	"errors"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// The life of private prekeys. A bundle's prekeys can be used until the
// bundle expires, and an envelope sealed with them then may still arrive
// up to the message TTL (plus clock skew) later. When a new bundle
// replaces one, the old bundle is retired: its signed prekey, its
// last-resort KEM prekey and its one-time prekeys that no first message
// used stay held until that deadline, then are deleted, so that a later
// theft of the data directory cannot open old first messages with them.

// prekeyRetention is how long after its bundle expires a prekey is held.
const prekeyRetention = protocol.MaxTTL + 2*protocol.MaxClockSkew

// retire records the prekeys of the bundle that is being replaced, to be
// deleted once no envelope sealed with them can arrive.
func retire(tx *store.Tx, old *keys.Bundle) error {
	return tx.RetirePrekeys(old.Expires.Add(prekeyRetention), store.BundlePrekeys(old))
}

// prunePrekeys deletes the retired prekeys whose deadline has passed,
// never one that the current bundle offers. Prekeys held with no record,
// from before records were kept, get the longest deadline they could need.
func (n *Node) prunePrekeys(tx *store.Tx, now time.Time) (int, bool, error) {
	var keep []store.PrekeyRef
	if raw, err := tx.GetSetting(settingBundle); err == nil {
		if b, err := keys.ParseBundle(raw); err == nil {
			keep = store.BundlePrekeys(b)
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return 0, false, err
	}
	return tx.PruneRetiredPrekeys(now, keep, now.Add(DefaultBundleValidity+prekeyRetention))
}

// errNothingToPrune rolls back a prune that found nothing to do, so that
// an idle node does not write to its store.
var errNothingToPrune = errors.New("node: nothing to prune")

// pruneSecrets deletes, in one commit, the prekeys and alternate sessions
// that can no longer be needed, and past epochs' first-contact counters.
func (n *Node) pruneSecrets(now time.Time) error {
	var keysDeleted, sessionsDropped int
	err := n.db.Update(func(tx *store.Tx) error {
		var w1, w2 bool
		var err error
		if keysDeleted, w1, err = n.prunePrekeys(tx, now); err != nil {
			return err
		}
		// Alternate sessions that still hold this node's signed prekey,
		// unused for longer than an envelope for them can take to arrive.
		if sessionsDropped, w2, err = tx.PruneAltSessions(now, prekeyRetention, func(b []byte) bool {
			s, err := protocol.UnmarshalSession(b)
			return err == nil && s.HoldsSignedPrekey()
		}); err != nil {
			return err
		}
		w3, err := pruneNewSessionCounts(tx, now)
		if err != nil {
			return err
		}
		if !w1 && !w2 && !w3 {
			return errNothingToPrune
		}
		return nil
	})
	if errors.Is(err, errNothingToPrune) {
		return nil
	}
	if err == nil && (keysDeleted > 0 || sessionsDropped > 0) {
		n.cfg.Logger.Info("old secrets deleted", "prekeys", keysDeleted, "sessions", sessionsDropped)
	}
	return err
}
