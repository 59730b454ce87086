package group

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// The encodings below are local state, not wire formats: a node keeps its
// own sender key and each member's key as a receiver holds it, so that a
// restart reads on where it stopped and refuses what it already opened.

// ErrBadState reports a stored sender key or member key that does not
// decode.
var ErrBadState = errors.New("group: malformed stored key state")

const (
	stateVersion   = 1
	senderKeySize  = 1 + KeyIDSize + 4 + 32 + ed25519.SeedSize + 8
	seenSize       = (MaxSenderKeyMessages + 7) / 8
	memberKeyFixed = 1 + keys.AccountSize + ed25519.PublicKeySize + 4 + 32 + seenSize + 2
)

// MarshalBinary encodes k: version || key ID || uint32be(iteration) ||
// chain key || signing seed || int64be(created, Unix ms).
func (k *SenderKey) MarshalBinary() ([]byte, error) {
	if len(k.Signing) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: signing key", ErrBadState)
	}
	b := make([]byte, 0, senderKeySize)
	b = append(b, stateVersion)
	b = append(b, k.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, k.Iteration)
	b = append(b, k.Chain[:]...)
	b = append(b, k.Signing.Seed()...)
	return binary.BigEndian.AppendUint64(b, uint64(k.Created.UnixMilli())), nil
}

// UnmarshalSenderKey decodes what SenderKey.MarshalBinary wrote.
func UnmarshalSenderKey(b []byte) (*SenderKey, error) {
	if len(b) != senderKeySize || b[0] != stateVersion {
		return nil, fmt.Errorf("%w: sender key of %d bytes", ErrBadState, len(b))
	}
	k := &SenderKey{}
	b = b[1:]
	copy(k.ID[:], b)
	b = b[KeyIDSize:]
	k.Iteration = binary.BigEndian.Uint32(b)
	b = b[4:]
	copy(k.Chain[:], b)
	b = b[32:]
	k.Signing = ed25519.NewKeyFromSeed(b[:ed25519.SeedSize])
	k.Created = time.UnixMilli(int64(binary.BigEndian.Uint64(b[ed25519.SeedSize:])))
	if k.Iteration > MaxSenderKeyMessages {
		return nil, fmt.Errorf("%w: iteration %d", ErrBadState, k.Iteration)
	}
	return k, nil
}

// KeyIDs lists the IDs of the sender keys the receiver holds.
func (r *Receiver) KeyIDs() [][KeyIDSize]byte {
	var out [][KeyIDSize]byte
	for id := range r.keys {
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b [KeyIDSize]byte) int { return slices.Compare(a[:], b[:]) })
	return out
}

// MarshalKey encodes the member key id as the receiver holds it now
// (chain, skipped keys, iterations opened), and reports whether it holds
// one: version || owner || signing public key || uint32be(base) || chain
// || seen bitmap || uint16be(n) || n × (uint32be(iteration) || message
// key), the skipped iterations in increasing order.
func (r *Receiver) MarshalKey(id [KeyIDSize]byte) ([]byte, bool) {
	k, ok := r.keys[id]
	if !ok {
		return nil, false
	}
	b := make([]byte, 0, memberKeyFixed+KeyIDSize+len(k.skipped)*36)
	b = append(b, stateVersion)
	b = append(b, id[:]...)
	b = append(b, k.owner[:]...)
	b = append(b, k.public...)
	b = binary.BigEndian.AppendUint32(b, k.base)
	b = append(b, k.chain[:]...)
	b = append(b, k.seen[:]...)
	its := make([]uint32, 0, len(k.skipped))
	for i := range k.skipped {
		its = append(its, i)
	}
	slices.Sort(its)
	b = binary.BigEndian.AppendUint16(b, uint16(len(its)))
	for _, i := range its {
		mk := k.skipped[i]
		b = binary.BigEndian.AppendUint32(b, i)
		b = append(b, mk[:]...)
	}
	return b, true
}

// LoadKey restores a member key that MarshalKey encoded, replacing one
// with the same ID. A key ID held by another owner is refused, as by
// AddKey.
func (r *Receiver) LoadKey(b []byte) error {
	if len(b) < memberKeyFixed+KeyIDSize || b[0] != stateVersion {
		return fmt.Errorf("%w: member key of %d bytes", ErrBadState, len(b))
	}
	var id [KeyIDSize]byte
	k := &memberKey{skipped: map[uint32][32]byte{}}
	p := b[1:]
	copy(id[:], p)
	p = p[KeyIDSize:]
	copy(k.owner[:], p)
	p = p[keys.AccountSize:]
	k.public = ed25519.PublicKey(slices.Clone(p[:ed25519.PublicKeySize]))
	p = p[ed25519.PublicKeySize:]
	k.base = binary.BigEndian.Uint32(p)
	p = p[4:]
	copy(k.chain[:], p)
	p = p[32:]
	copy(k.seen[:], p)
	p = p[seenSize:]
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if len(p) != n*36 || k.base > MaxSenderKeyMessages || n > MaxSenderKeyMessages {
		return fmt.Errorf("%w: member key's skipped keys", ErrBadState)
	}
	next := uint32(0) // skipped iterations are in increasing order
	for ; len(p) > 0; p = p[36:] {
		i := binary.BigEndian.Uint32(p)
		if i >= k.base || i < next {
			return fmt.Errorf("%w: skipped iteration %d out of order or not below %d", ErrBadState, i, k.base)
		}
		next = i + 1
		k.skipped[i] = [32]byte(p[4:36])
	}
	if old, ok := r.keys[id]; ok && old.owner != k.owner {
		return fmt.Errorf("%w: key ID of another member's sender key", ErrGroupMismatch)
	}
	r.keys[id] = k
	return nil
}

// KeyOwner returns the owner of the sender key id, if the receiver holds it.
func (r *Receiver) KeyOwner(id [KeyIDSize]byte) (keys.AccountPublic, bool) {
	k, ok := r.keys[id]
	if !ok {
		return keys.AccountPublic{}, false
	}
	return k.owner, true
}
