package node

import (
	"encoding/binary"
	"errors"
	"fmt"
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

// retiredPrefix names the settings that record retired bundles' prekeys:
// retiredPrefix + 16 hex digits of a sequence number.
const retiredPrefix = "retired/"

// A retired record is the deletion deadline (Unix seconds, uint64) and then
// the prekeys to delete, 5 bytes each: kind, ID (uint32).
const retiredEntrySize = 5

// retire records the prekeys of the bundle that is being replaced, to be
// deleted after its deadline. Prekeys no longer held (used one-time
// prekeys) are left out.
func retire(tx *store.Tx, old *keys.Bundle) error {
	v := binary.BigEndian.AppendUint64(nil, uint64(old.Expires.Add(prekeyRetention).Unix()))
	for kind, id := range bundlePrekeys(old) {
		if _, err := tx.GetPrekey(kind, id); errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		v = append(v, byte(kind))
		v = binary.BigEndian.AppendUint32(v, id)
	}
	return tx.PutSetting(fmt.Sprintf("%s%016x", retiredPrefix, old.Seq), v)
}

// prunePrekeys deletes the prekeys of retired bundles whose deadline has
// passed (never one that the current bundle offers), and returns how many
// and whether it wrote anything. Prekeys held with no record, from before
// records were kept, get one with the longest deadline they could need.
func (n *Node) prunePrekeys(tx *store.Tx, now time.Time) (deleted int, wrote bool, err error) {
	current := map[[2]uint32]bool{}
	if raw, err := tx.GetSetting(settingBundle); err == nil {
		if b, err := keys.ParseBundle(raw); err == nil {
			for k, id := range bundlePrekeys(b) {
				current[[2]uint32{uint32(k), id}] = true
			}
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return 0, false, err
	}
	names, err := tx.SettingNames(retiredPrefix)
	if err != nil {
		return 0, false, err
	}
	recorded := map[[2]uint32]bool{}
	for _, name := range names {
		v, err := tx.GetSetting(name)
		if err != nil {
			return deleted, true, err
		}
		if len(v) < 8 || (len(v)-8)%retiredEntrySize != 0 {
			return deleted, false, fmt.Errorf("%w: retired prekey record %q of %d bytes", store.ErrCorrupt, name, len(v))
		}
		due := !now.Before(time.Unix(int64(binary.BigEndian.Uint64(v)), 0))
		for e := v[8:]; len(e) > 0; e = e[retiredEntrySize:] {
			key := [2]uint32{uint32(e[0]), binary.BigEndian.Uint32(e[1:])}
			recorded[key] = true
			if !due || current[key] {
				continue
			}
			ok, err := tx.ConsumePrekey(store.PrekeyKind(e[0]), key[1])
			if err != nil {
				return deleted, true, err
			}
			if ok {
				deleted++
				wrote = true
			}
		}
		if due {
			wrote = true
			if err := tx.DeleteSetting(name); err != nil {
				return deleted, true, err
			}
		}
	}
	// Prekeys of bundles replaced before records were kept.
	var orphans []byte
	for _, kind := range []store.PrekeyKind{store.PrekeySignedDH, store.PrekeyLastResort, store.PrekeyOneTimeDH, store.PrekeyOneTimeKEM} {
		ids, err := tx.PrekeyIDs(kind)
		if err != nil {
			return deleted, true, err
		}
		for _, id := range ids {
			key := [2]uint32{uint32(kind), id}
			if !current[key] && !recorded[key] {
				orphans = append(orphans, byte(kind))
				orphans = binary.BigEndian.AppendUint32(orphans, id)
			}
		}
	}
	if len(orphans) > 0 {
		deadline := now.Add(DefaultBundleValidity + prekeyRetention)
		v := append(binary.BigEndian.AppendUint64(nil, uint64(deadline.Unix())), orphans...)
		wrote = true
		if err := tx.PutSetting(fmt.Sprintf("%s%016x", retiredPrefix, uint64(now.UnixNano())), v); err != nil {
			return deleted, true, err
		}
	}
	return deleted, wrote, nil
}

// bundlePrekeys lists the prekeys a bundle offers, by kind and ID.
func bundlePrekeys(b *keys.Bundle) func(yield func(store.PrekeyKind, uint32) bool) {
	return func(yield func(store.PrekeyKind, uint32) bool) {
		if !yield(store.PrekeySignedDH, uint32(b.SignedPrekey.ID)) || !yield(store.PrekeyLastResort, uint32(b.LastResortKEM.ID)) {
			return
		}
		for _, p := range b.OneTimeDH {
			if !yield(store.PrekeyOneTimeDH, uint32(p.ID)) {
				return
			}
		}
		for _, p := range b.OneTimeKEM {
			if !yield(store.PrekeyOneTimeKEM, uint32(p.ID)) {
				return
			}
		}
	}
}

// errNothingToPrune rolls back a prune that found nothing to do, so that
// an idle node does not write to its store.
var errNothingToPrune = errors.New("node: nothing to prune")

// pruneAltSessions drops the alternate sessions (kept for receiving after
// a simultaneous initiation) that still hold this node's signed prekey
// and have not been used for longer than an envelope for them can take to
// arrive. An alternate session kept from before their use was recorded is
// given the time of this run.
func (n *Node) pruneAltSessions(tx *store.Tx, now time.Time) (dropped int, wrote bool, err error) {
	cs, err := tx.ListContacts()
	if err != nil {
		return 0, false, err
	}
	for _, c := range cs {
		alt, err := altSession(tx, c.Account)
		if err != nil || alt == nil {
			if err != nil {
				return dropped, true, err
			}
			continue
		}
		at, ok, err := tx.GetUint64(altSessionAtSetting(c.Account))
		if err != nil {
			return dropped, true, err
		}
		if !ok {
			wrote = true
			if err := tx.PutUint64(altSessionAtSetting(c.Account), uint64(now.Unix())); err != nil {
				return dropped, true, err
			}
			continue
		}
		if !alt.HoldsSignedPrekey() || now.Before(time.Unix(int64(at), 0).Add(prekeyRetention)) {
			continue
		}
		if err := tx.DeleteSetting(altSessionSetting(c.Account)); err != nil {
			return dropped, true, err
		}
		if err := tx.DeleteSetting(altSessionAtSetting(c.Account)); err != nil {
			return dropped, true, err
		}
		dropped++
		wrote = true
	}
	return dropped, wrote, nil
}

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
		if sessionsDropped, w2, err = n.pruneAltSessions(tx, now); err != nil {
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
