package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/sotto-im/sotto/keys"
)

// The ratchet state encoding, what the store persists after every message.
// It is versioned, bounded and canonical: UnmarshalRatchet accepts at most
// one encoding of any state and MarshalBinary reproduces it byte for byte.
//
// Layout (integers big endian):
//
//	offset  size  field
//	0       1     state version (RatchetStateVersion = 0x01)
//	1       1     phase: 0 responder before its first message, 1 initiator
//	              before its first reply, 2 awaiting the sending half of a
//	              DH step, 3 running
//	2       32    root key
//	34      32    own ratchet private key
//	66      32    peer ratchet public key (zero in phase 0)
//	98      32    sending chain key (zero in phases 0 and 2)
//	130     32    sending header key (zero in phase 0)
//	162     32    next sending header key (zero in phase 2)
//	194     4     Ns
//	198     4     PN
//	202     32    receiving chain key (zero in phases 0 and 1)
//	234     32    receiving header key (zero in phases 0 and 1)
//	266     32    next receiving header key
//	298     4     Nr
//	302     1     k, old chains (at most MaxOldChains), then k × (header key 32, end 4)
//	        2     s, skipped keys (at most MaxSkippedKeys), then s × (header key 32, N 4, message key 32)
//	        2     d, discarded positions (at most MaxDiscardedRecord), then d × (header key 32, N 4)
//
// A key the phase says is absent is all zero, and a present key is not.
// Every header key in the skipped and discarded lists is the receiving
// header key or an old chain's, N lies below that chain's position, no
// position appears twice, and the lists are oldest first.

// RatchetStateVersion is the first byte of an encoded ratchet state.
const RatchetStateVersion = 1

// Sizes of the state encoding.
const (
	ratchetStateFixedSize = 302
	oldChainSize          = ratchetKeySize + 4
	skippedKeySize        = ratchetKeySize + 4 + ratchetKeySize
	chainPosSize          = ratchetKeySize + 4

	// MaxRatchetStateSize bounds an encoded ratchet state.
	MaxRatchetStateSize = ratchetStateFixedSize + 1 + MaxOldChains*oldChainSize +
		2 + MaxSkippedKeys*skippedKeySize + 2 + MaxDiscardedRecord*chainPosSize
)

// Phases of a ratchet, as encoded.
const (
	phaseResponderNew = 0
	phaseInitiatorNew = 1
	phaseAwaitingSend = 2
	phaseRunning      = 3
)

// ErrRatchetState is returned by UnmarshalRatchet for anything MarshalBinary
// cannot have produced.
var ErrRatchetState = errors.New("protocol: ratchet: malformed state")

func (r *Ratchet) phase() (byte, bool) {
	switch {
	case !r.hasDHr && !r.hasCKs && !r.hasHKs && r.hasNHKs && !r.hasRecv:
		return phaseResponderNew, true
	case r.hasDHr && r.hasCKs && r.hasHKs && r.hasNHKs && !r.hasRecv:
		return phaseInitiatorNew, true
	case r.hasDHr && !r.hasCKs && r.hasHKs && !r.hasNHKs && r.hasRecv:
		return phaseAwaitingSend, true
	case r.hasDHr && r.hasCKs && r.hasHKs && r.hasNHKs && r.hasRecv:
		return phaseRunning, true
	}
	return 0, false
}

func (r *Ratchet) setPhase(p byte) bool {
	switch p {
	case phaseResponderNew:
		r.hasNHKs = true
	case phaseInitiatorNew:
		r.hasDHr, r.hasCKs, r.hasHKs, r.hasNHKs = true, true, true, true
	case phaseAwaitingSend:
		r.hasDHr, r.hasHKs, r.hasRecv = true, true, true
	case phaseRunning:
		r.hasDHr, r.hasCKs, r.hasHKs, r.hasNHKs, r.hasRecv = true, true, true, true, true
	default:
		return false
	}
	return true
}

// checkKeys enforces that a key is all zero exactly when the phase says it
// is absent, so that the phase and the keys cannot disagree.
func (r *Ratchet) checkKeys() error {
	var zero [ratchetKeySize]byte
	for _, f := range []struct {
		present bool
		k       *[ratchetKeySize]byte
		name    string
	}{
		{true, &r.rk, "root key"},
		{r.hasCKs, &r.cks, "sending chain key"},
		{r.hasHKs, &r.hks, "sending header key"},
		{r.hasNHKs, &r.nhks, "next sending header key"},
		{r.hasRecv, &r.ckr, "receiving chain key"},
		{r.hasRecv, &r.hkr, "receiving header key"},
		{true, &r.nhkr, "next receiving header key"},
	} {
		if f.present == (*f.k == zero) {
			return fmt.Errorf("%w: %s present or absent against the phase", ErrRatchetState, f.name)
		}
	}
	return nil
}

// MarshalBinary encodes the state. The encoding holds secret keys: store it
// as such.
func (r *Ratchet) MarshalBinary() ([]byte, error) {
	p, ok := r.phase()
	if !ok || r.dhs == nil {
		return nil, fmt.Errorf("%w: inconsistent in memory", ErrRatchetState)
	}
	if err := r.checkKeys(); err != nil {
		return nil, err
	}
	size := ratchetStateFixedSize + 1 + len(r.old)*oldChainSize + 2 + len(r.skipped)*skippedKeySize +
		2 + len(r.discarded)*chainPosSize
	b := make([]byte, 0, size)
	b = append(b, RatchetStateVersion, p)
	b = append(b, r.rk[:]...)
	b = append(b, r.dhs.Bytes()...)
	b = append(b, r.dhr[:]...)
	b = append(b, r.cks[:]...)
	b = append(b, r.hks[:]...)
	b = append(b, r.nhks[:]...)
	b = binary.BigEndian.AppendUint32(b, r.ns)
	b = binary.BigEndian.AppendUint32(b, r.pn)
	b = append(b, r.ckr[:]...)
	b = append(b, r.hkr[:]...)
	b = append(b, r.nhkr[:]...)
	b = binary.BigEndian.AppendUint32(b, r.nr)
	b = append(b, byte(len(r.old)))
	for _, o := range r.old {
		b = append(b, o.hk[:]...)
		b = binary.BigEndian.AppendUint32(b, o.end)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.skipped)))
	for _, s := range r.skipped {
		b = append(b, s.hk[:]...)
		b = binary.BigEndian.AppendUint32(b, s.n)
		b = append(b, s.mk[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.discarded)))
	for _, d := range r.discarded {
		b = append(b, d.hk[:]...)
		b = binary.BigEndian.AppendUint32(b, d.n)
	}
	return b, nil
}

// stateReader reads fixed-size fields, remembering the first shortfall.
type stateReader struct {
	b   []byte
	bad bool
}

func (s *stateReader) take(n int) []byte {
	if s.bad || len(s.b) < n {
		s.bad = true
		return make([]byte, n)
	}
	out := s.b[:n]
	s.b = s.b[n:]
	return out
}

func (s *stateReader) key() (k [ratchetKeySize]byte) { copy(k[:], s.take(ratchetKeySize)); return k }
func (s *stateReader) u32() uint32                   { return binary.BigEndian.Uint32(s.take(4)) }
func (s *stateReader) u16() uint16                   { return binary.BigEndian.Uint16(s.take(2)) }
func (s *stateReader) u8() byte                      { return s.take(1)[0] }

// UnmarshalRatchet decodes a state produced by MarshalBinary. It rejects
// unknown versions, truncated or trailing data, counts above the limits,
// and any field that contradicts the phase or the other fields.
func UnmarshalRatchet(b []byte) (*Ratchet, error) {
	if len(b) < ratchetStateFixedSize || len(b) > MaxRatchetStateSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrRatchetState, len(b))
	}
	if b[0] != RatchetStateVersion {
		return nil, fmt.Errorf("%w: unknown version %d", ErrRatchetState, b[0])
	}
	r := new(Ratchet)
	if !r.setPhase(b[1]) {
		return nil, fmt.Errorf("%w: unknown phase %d", ErrRatchetState, b[1])
	}
	s := &stateReader{b: b[2:]}
	r.rk = s.key()
	dhs, err := keys.NewDHPrivate(s.take(keys.DHSize))
	if err != nil {
		return nil, fmt.Errorf("%w: ratchet private key", ErrRatchetState)
	}
	r.dhs = dhs
	r.dhr = keys.DHPublic(s.key())
	r.cks = s.key()
	r.hks = s.key()
	r.nhks = s.key()
	r.ns = s.u32()
	r.pn = s.u32()
	r.ckr = s.key()
	r.hkr = s.key()
	r.nhkr = s.key()
	r.nr = s.u32()

	var zero [ratchetKeySize]byte
	bad := func(what string) (*Ratchet, error) {
		return nil, fmt.Errorf("%w: %s", ErrRatchetState, what)
	}
	if r.hasDHr {
		if _, err := keys.ParseDHPublic(r.dhr[:]); err != nil {
			return bad("peer ratchet key")
		}
	} else if r.dhr != zero {
		return bad("peer ratchet key in phase 0")
	}
	if err := r.checkKeys(); err != nil {
		return nil, err
	}
	if !r.hasCKs && r.ns != 0 {
		return bad("Ns without a sending chain")
	}
	if !r.hasDHr && r.pn != 0 {
		return bad("PN before any step")
	}
	if !r.hasRecv && r.nr != 0 {
		return bad("Nr before any message")
	}

	nOld := int(s.u8())
	if nOld > MaxOldChains || (nOld > 0 && !r.hasRecv) {
		return bad("old chain count")
	}
	// ends maps every receiving header key to the first position it has not
	// seen.
	ends := make(map[[ratchetKeySize]byte]uint32, nOld+1)
	if r.hasRecv {
		ends[r.hkr] = r.nr
	}
	for range nOld {
		o := oldChain{hk: s.key(), end: s.u32()}
		if _, dup := ends[o.hk]; dup && !s.bad {
			return bad("repeated header key")
		}
		ends[o.hk] = o.end
		r.old = append(r.old, o)
	}
	inChain := func(hk [ratchetKeySize]byte, n uint32) bool {
		end, ok := ends[hk]
		return ok && n < end
	}

	nSkipped := int(s.u16())
	if nSkipped > MaxSkippedKeys {
		return bad("skipped key count")
	}
	seen := make(map[chainPos]struct{}, nSkipped)
	for range nSkipped {
		k := skippedKey{hk: s.key(), n: s.u32(), mk: s.key()}
		if s.bad {
			break
		}
		p := chainPos{hk: k.hk, n: k.n}
		if _, dup := seen[p]; dup || !inChain(k.hk, k.n) {
			return bad("skipped key position")
		}
		seen[p] = struct{}{}
		r.skipped = append(r.skipped, k)
	}
	nDiscarded := int(s.u16())
	if nDiscarded > MaxDiscardedRecord {
		return bad("discarded record count")
	}
	for range nDiscarded {
		p := chainPos{hk: s.key(), n: s.u32()}
		if s.bad {
			break
		}
		if _, dup := seen[p]; dup || !inChain(p.hk, p.n) {
			return bad("discarded position")
		}
		seen[p] = struct{}{}
		r.discarded = append(r.discarded, p)
	}
	if s.bad {
		return bad("truncated")
	}
	if len(s.b) != 0 {
		return bad("trailing bytes")
	}
	return r, nil
}
