package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// MaxPrekeySize bounds one stored private prekey (opaque bytes).
const MaxPrekeySize = 4096

// PrekeyKind says which pool a private prekey belongs to.
type PrekeyKind uint8

// Prekey kinds.
const (
	PrekeySignedDH   PrekeyKind = 1 // signed X25519 prekey
	PrekeyOneTimeDH  PrekeyKind = 2 // one-time X25519 prekey
	PrekeyLastResort PrekeyKind = 3 // signed ML-KEM-768 last-resort prekey
	PrekeyOneTimeKEM PrekeyKind = 4 // signed one-time ML-KEM-768 prekey
)

func (k PrekeyKind) valid() bool { return k >= PrekeySignedDH && k <= PrekeyOneTimeKEM }

func (k PrekeyKind) String() string {
	switch k {
	case PrekeySignedDH:
		return "signed-dh"
	case PrekeyOneTimeDH:
		return "one-time-dh"
	case PrekeyLastResort:
		return "last-resort-kem"
	case PrekeyOneTimeKEM:
		return "one-time-kem"
	}
	return fmt.Sprintf("prekey-kind(%d)", uint8(k))
}

func prekeyKey(kind PrekeyKind, id uint32) []byte {
	k := make([]byte, 5)
	k[0] = byte(kind)
	binary.BigEndian.PutUint32(k[1:], id)
	return k
}

// PutPrekey stores a private prekey under (kind, id), replacing any
// previous one.
func (tx *Tx) PutPrekey(kind PrekeyKind, id uint32, secret []byte) error {
	b, err := tx.wbucket(bucketPrekeys)
	if err != nil {
		return err
	}
	if !kind.valid() {
		return fmt.Errorf("store: unknown prekey kind %d", kind)
	}
	if len(secret) == 0 || len(secret) > MaxPrekeySize {
		return fmt.Errorf("%w: private prekey is %d bytes, allowed 1..%d", ErrTooLarge, len(secret), MaxPrekeySize)
	}
	return b.Put(prekeyKey(kind, id), secret)
}

// GetPrekey returns a copy of the private prekey (kind, id), or an error
// wrapping ErrNotFound.
func (tx *Tx) GetPrekey(kind PrekeyKind, id uint32) ([]byte, error) {
	b, err := tx.bucket(bucketPrekeys)
	if err != nil {
		return nil, err
	}
	v := b.Get(prekeyKey(kind, id))
	if v == nil {
		return nil, fmt.Errorf("%w: %v prekey %d", ErrNotFound, kind, id)
	}
	return bytes.Clone(v), nil
}

// DeletePrekey removes a private prekey (missing is not an error).
func (tx *Tx) DeletePrekey(kind PrekeyKind, id uint32) error {
	b, err := tx.wbucket(bucketPrekeys)
	if err != nil {
		return err
	}
	return b.Delete(prekeyKey(kind, id))
}

// ConsumePrekey deletes the private prekey (kind, id) and reports whether
// it existed. Used for one-time prekeys on first use, in the same
// transaction that stores the new session.
func (tx *Tx) ConsumePrekey(kind PrekeyKind, id uint32) (bool, error) {
	b, err := tx.wbucket(bucketPrekeys)
	if err != nil {
		return false, err
	}
	k := prekeyKey(kind, id)
	if b.Get(k) == nil {
		return false, nil
	}
	return true, b.Delete(k)
}

// PrekeyIDs returns the IDs stored for kind in ascending order.
func (tx *Tx) PrekeyIDs(kind PrekeyKind) ([]uint32, error) {
	b, err := tx.bucket(bucketPrekeys)
	if err != nil {
		return nil, err
	}
	var ids []uint32
	c := b.Cursor()
	for k, _ := c.Seek([]byte{byte(kind)}); k != nil && k[0] == byte(kind); k, _ = c.Next() {
		if len(k) != 5 {
			return nil, fmt.Errorf("%w: prekey key has %d bytes", ErrCorrupt, len(k))
		}
		ids = append(ids, binary.BigEndian.Uint32(k[1:]))
	}
	return ids, nil
}

// CountPrekeys returns how many private prekeys of kind remain.
func (tx *Tx) CountPrekeys(kind PrekeyKind) (int, error) {
	ids, err := tx.PrekeyIDs(kind)
	return len(ids), err
}

// MarkInitialSeen records the ID of an accepted initial (session-creating)
// message until expires, and reports whether it was already recorded: a
// true result means a replay.
func (tx *Tx) MarkInitialSeen(id [32]byte, expires time.Time) (already bool, err error) {
	b, err := tx.wbucket(bucketSeenInit)
	if err != nil {
		return false, err
	}
	idx, err := tx.bucket(bucketSeenInitExp)
	if err != nil {
		return false, err
	}
	if b.Get(id[:]) != nil {
		return true, nil
	}
	ek := timeKey(expires)
	if err := idx.Put(concat(ek, id[:]), present); err != nil {
		return false, err
	}
	return false, b.Put(id[:], ek)
}

// InitialSeen reports whether an initial message ID is recorded (and not
// yet pruned).
func (tx *Tx) InitialSeen(id [32]byte) (bool, error) {
	b, err := tx.bucket(bucketSeenInit)
	if err != nil {
		return false, err
	}
	return b.Get(id[:]) != nil, nil
}

// PruneInitialSeen deletes replay marks that expired before now and
// returns how many it deleted.
func (tx *Tx) PruneInitialSeen(now time.Time) (int, error) {
	b, err := tx.wbucket(bucketSeenInit)
	if err != nil {
		return 0, err
	}
	idx, err := tx.bucket(bucketSeenInitExp)
	if err != nil {
		return 0, err
	}
	limit := timeKey(now)
	var doomed [][]byte
	c := idx.Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k[:min(8, len(k))], limit) < 0; k, _ = c.Next() {
		if len(k) != 8+32 {
			return 0, fmt.Errorf("%w: replay index key has %d bytes", ErrCorrupt, len(k))
		}
		doomed = append(doomed, bytes.Clone(k))
	}
	for _, k := range doomed {
		if err := idx.Delete(k); err != nil {
			return 0, err
		}
		if err := b.Delete(k[8:]); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

// Prekeys that a replaced bundle offered are retired: recorded with the
// time after which no envelope can need them, and deleted then. A record
// is a setting named retiredPrefix + 16 hex digits (a sequence number):
// the deadline (Unix seconds, uint64be) followed by 5 bytes per prekey,
// its kind and its ID (uint32be).
const (
	retiredPrefix    = "retired/"
	retiredEntrySize = 5
)

// PrekeyRef names a stored private prekey.
type PrekeyRef struct {
	Kind PrekeyKind
	ID   uint32
}

// BundlePrekeys lists the prekeys a bundle offers.
func BundlePrekeys(b *keys.Bundle) []PrekeyRef {
	refs := []PrekeyRef{
		{Kind: PrekeySignedDH, ID: uint32(b.SignedPrekey.ID)},
		{Kind: PrekeyLastResort, ID: uint32(b.LastResortKEM.ID)},
	}
	for _, p := range b.OneTimeDH {
		refs = append(refs, PrekeyRef{Kind: PrekeyOneTimeDH, ID: uint32(p.ID)})
	}
	for _, p := range b.OneTimeKEM {
		refs = append(refs, PrekeyRef{Kind: PrekeyOneTimeKEM, ID: uint32(p.ID)})
	}
	return refs
}

// RetirePrekeys records that the prekeys refs, those still held, are to
// be deleted at deadline (PruneRetiredPrekeys).
func (tx *Tx) RetirePrekeys(deadline time.Time, refs []PrekeyRef) error {
	b, err := tx.wbucket(bucketSettings)
	if err != nil {
		return err
	}
	v := binary.BigEndian.AppendUint64(nil, uint64(deadline.Unix()))
	for _, r := range refs {
		if _, err := tx.GetPrekey(r.Kind, r.ID); errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		v = append(v, byte(r.Kind))
		v = binary.BigEndian.AppendUint32(v, r.ID)
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	return tx.PutSetting(fmt.Sprintf("%s%016x", retiredPrefix, seq), v)
}

// PruneRetiredPrekeys deletes the prekeys of retirement records whose
// deadline is not after now, except those in keep (the current bundle's),
// and the records. Prekeys held with no record and not in keep (kept from
// before records existed) are retired until orphansUntil. It returns how
// many prekeys it deleted and whether it wrote anything.
func (tx *Tx) PruneRetiredPrekeys(now time.Time, keep []PrekeyRef, orphansUntil time.Time) (deleted int, wrote bool, err error) {
	kept := map[PrekeyRef]bool{}
	for _, r := range keep {
		kept[r] = true
	}
	names, err := tx.SettingNames(retiredPrefix)
	if err != nil {
		return 0, false, err
	}
	recorded := map[PrekeyRef]bool{}
	for _, name := range names {
		v, err := tx.GetSetting(name)
		if err != nil {
			return deleted, wrote, err
		}
		if len(v) < 8 || (len(v)-8)%retiredEntrySize != 0 {
			return deleted, wrote, fmt.Errorf("%w: retired prekey record %q of %d bytes", ErrCorrupt, name, len(v))
		}
		due := !now.Before(time.Unix(int64(binary.BigEndian.Uint64(v)), 0))
		for e := v[8:]; len(e) > 0; e = e[retiredEntrySize:] {
			r := PrekeyRef{PrekeyKind(e[0]), binary.BigEndian.Uint32(e[1:])}
			recorded[r] = true
			if !due || kept[r] {
				continue
			}
			ok, err := tx.ConsumePrekey(r.Kind, r.ID)
			if err != nil {
				return deleted, true, err
			}
			if ok {
				deleted++
			}
		}
		if due {
			wrote = true
			if err := tx.DeleteSetting(name); err != nil {
				return deleted, wrote, err
			}
		}
	}
	var orphans []PrekeyRef
	for _, kind := range []PrekeyKind{PrekeySignedDH, PrekeyOneTimeDH, PrekeyLastResort, PrekeyOneTimeKEM} {
		ids, err := tx.PrekeyIDs(kind)
		if err != nil {
			return deleted, wrote, err
		}
		for _, id := range ids {
			if r := (PrekeyRef{kind, id}); !kept[r] && !recorded[r] {
				orphans = append(orphans, r)
			}
		}
	}
	if len(orphans) > 0 {
		wrote = true
		if err := tx.RetirePrekeys(orphansUntil, orphans); err != nil {
			return deleted, wrote, err
		}
	}
	return deleted, wrote, nil
}
