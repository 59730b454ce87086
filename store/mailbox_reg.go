package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sotto-im/sotto/protocol"
)

// Version 2 mailbox registrations (protocol/SPEC.md, "Mailboxes, version
// 2", "Registration"): a recipient registers the tags it will receive
// under, and the mailbox stores a deposit only under a tag registered with
// the deposit's kind, within that registration's quota, and never evicts
// an envelope it accepted to make room for another. The envelopes
// themselves live in the version 1 buckets (mailbox.go), so MailboxQuery,
// MailboxDelete and MailboxSweep serve them unchanged.
//
// Buckets and key layouts (integers big endian):
//
//	mbx_reg      tag(32) -> kinds(1) || expiry seconds(8)   kinds: RegPair and/or RegIntro bits
//	mbx_regexp   expiry seconds(8) || tag(32) -> 0x01   registration sweep
//	mbx_meta     "registrations" -> count(8)            registrations held
//
// A registration for epoch e expires at RegistrationExpiry(e); a tag holds
// one registration, of one kind or both, with the latest expiry registered
// for it. mbx_regexp
// has exactly one entry per mbx_reg entry, at its expiry. The count in
// mbx_meta is the number of mbx_reg entries, kept so that it can be read
// without walking the bucket.

var (
	bucketMbxReg    = []byte("mbx_reg")
	bucketMbxRegExp = []byte("mbx_regexp")

	keyMbxRegistrations = []byte("registrations")
)

// createMailboxRegBuckets is the schema migration that adds version 2
// registrations.
func createMailboxRegBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMbxReg, bucketMbxRegExp} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// Registration kinds: the deposit kinds of protocol/SPEC.md, Credentials.
// A deposit is stored only under a tag registered with its kind.
const (
	RegPair  byte = protocol.DepositPair  // pairwise tag, signed deposits
	RegIntro byte = protocol.DepositIntro // intro tag, stamped deposits
)

// Version 2 limits. The quotas are the defaults of the MailboxLimits
// fields of the same names; a zero field means the default.
const (
	// DefaultMailboxPairEnvelopes and DefaultMailboxPairBytes are what a
	// pairwise registration may hold (SPEC QuotaPairEnvelopes,
	// QuotaPairBytes).
	DefaultMailboxPairEnvelopes = 1024
	DefaultMailboxPairBytes     = 8 << 20

	// DefaultMailboxIntroEnvelopes and DefaultMailboxIntroBytes are what
	// an intro registration may hold (SPEC QuotaIntroEnvelopes,
	// QuotaIntroBytes).
	DefaultMailboxIntroEnvelopes = 64
	DefaultMailboxIntroBytes     = 1 << 20

	// MaxMailboxRegistrations bounds the registrations of one
	// MailboxRegister call, as the REGISTER request bounds them.
	MaxMailboxRegistrations = 256

	// RegistrationEpochs is how many epochs a registration outlives the
	// start of its own: one for epoch e lasts until the end of epoch
	// e + 15, the last moment an envelope written in epoch e can be alive.
	RegistrationEpochs = 16

	// maxRegistrationEpoch is the last epoch that can be registered: the
	// epoch of the latest expiry an envelope can carry
	// (protocol.MaxExpiry). A registration beyond it could hold nothing.
	maxRegistrationEpoch = protocol.MaxExpiry / uint64(protocol.EpochLength/time.Second)

	// regValueSize is the length of an mbx_reg value.
	regValueSize = 1 + 8
)

// ErrMailboxUnregistered means the envelope's tag holds no live
// registration of the deposit's kind at this mailbox: its recipient has not
// registered it here (or registered it with the other kind), so the sender
// should try the recipient's next mailbox.
var ErrMailboxUnregistered = errors.New("store: mailbox tag is not registered here for this kind of deposit; try the recipient's other mailboxes")

// MailboxRegistration is one registration: a recipient's tag for one epoch
// and the kind of deposit it accepts. MailboxRegistrationOf may report
// both kinds, RegPair|RegIntro.
type MailboxRegistration struct {
	Kind  byte     // RegPair or RegIntro (a bit each)
	Tag   [32]byte // the mailbox tag
	Epoch uint64   // the tag's epoch (protocol.Epoch)
}

// RegistrationExpiry returns when a registration for epoch e expires: the
// start of epoch e + 16, that is the end of epoch e + 15. Epochs after the
// last one an envelope can reach (protocol.MaxExpiry) expire as that one
// does; MailboxRegister refuses them.
func RegistrationExpiry(e uint64) time.Time {
	return protocol.EpochStart(min(e, maxRegistrationEpoch) + RegistrationEpochs)
}

// MailboxRegister records regs, at most MaxMailboxRegistrations of them
// (more fail with ErrTooLarge and record nothing), and returns how many it
// accepted. Registering a tag again is accepted and keeps the later of the
// two expiries. A registration is refused, and not counted, if its kind is
// neither RegPair nor RegIntro, or if it has expired at now (or its epoch
// is beyond the last an envelope can reach). A live registration of the
// other kind is kept with it: a tag may hold both kinds (what a stranger
// who knows a tag registers must not lock the recipient out), under the
// later expiry.
func (tx *Tx) MailboxRegister(regs []MailboxRegistration, now time.Time) (accepted int, err error) {
	r, err := tx.regBuckets(true)
	if err != nil {
		return 0, err
	}
	if len(regs) > MaxMailboxRegistrations {
		return 0, fmt.Errorf("%w: %d mailbox registrations in one call, at most %d; register them in batches",
			ErrTooLarge, len(regs), MaxMailboxRegistrations)
	}
	nowSec := now.Unix()
	for _, reg := range regs {
		if (reg.Kind != RegPair && reg.Kind != RegIntro) || reg.Epoch > maxRegistrationEpoch {
			continue
		}
		expiry := RegistrationExpiry(reg.Epoch).Unix()
		if nowSec >= expiry {
			continue
		}
		old, held, err := r.get(reg.Tag)
		if err != nil {
			return accepted, err
		}
		kind := reg.Kind
		if held {
			live := nowSec < old.expiry
			if live && old.kind&reg.Kind != 0 && old.expiry >= expiry {
				accepted++
				continue
			}
			if live {
				// A tag may hold both kinds: a registration of the
				// other kind (which a stranger who knows the tag can
				// make) must not lock the recipient's own out.
				kind |= old.kind
				expiry = max(expiry, old.expiry)
			}
			if err := r.exp.Delete(concat(be64(uint64(old.expiry)), reg.Tag[:])); err != nil {
				return accepted, err
			}
		}
		if err := r.put(reg.Tag, regValue{kind: kind, expiry: expiry}); err != nil {
			return accepted, err
		}
		if !held {
			if err := r.addCount(1); err != nil {
				return accepted, err
			}
		}
		accepted++
	}
	return accepted, nil
}

// MailboxRegistrationOf returns the registration of tag live at now, with
// the latest epoch registered for it; ok is false if there is none or it
// has expired.
func (tx *Tx) MailboxRegistrationOf(tag [32]byte, now time.Time) (reg MailboxRegistration, ok bool, err error) {
	r, err := tx.regBuckets(false)
	if err != nil {
		return MailboxRegistration{}, false, err
	}
	v, held, err := r.get(tag)
	if err != nil || !held || now.Unix() >= v.expiry {
		return MailboxRegistration{}, false, err
	}
	return MailboxRegistration{Kind: v.kind, Tag: tag, Epoch: v.epoch()}, true, nil
}

// MailboxRegisteredTags returns the tags among tags that hold a live
// registration at now, of either kind, in their order in tags and each
// once.
func (tx *Tx) MailboxRegisteredTags(tags [][32]byte, now time.Time) ([][32]byte, error) {
	r, err := tx.regBuckets(false)
	if err != nil {
		return nil, err
	}
	nowSec := now.Unix()
	out := make([][32]byte, 0, len(tags))
	seen := make(map[[32]byte]bool, len(tags))
	for _, tag := range tags {
		if seen[tag] {
			continue
		}
		seen[tag] = true
		v, held, err := r.get(tag)
		if err != nil {
			return nil, err
		}
		if held && nowSec < v.expiry {
			out = append(out, tag)
		}
	}
	return out, nil
}

// MailboxPutRegistered stores an envelope deposited with a version 2
// credential of the given kind, which the caller has verified. It parses
// and validates env at now (failing with ErrMailboxInvalid, as MailboxPut
// does); fails with ErrMailboxUnregistered unless the envelope's tag holds
// a registration of kind live at now; reports stored == false, and changes
// nothing, if the same envelope bytes are already stored; fails with
// ErrMailboxTagFull if the tag would hold more than its kind's quota of
// envelopes or bytes. If the mailbox would hold more than its total cap,
// it evicts version 1 envelopes (MailboxPut's), oldest first, until the
// envelope fits, and fails with ErrMailboxFull, evicting nothing, if the
// envelopes of version 2 deposits alone leave no room. It never evicts
// one of those: such an envelope leaves the mailbox only at its expiry or
// by its delete token.
func (tx *Tx) MailboxPutRegistered(env []byte, kind byte, now time.Time, lim MailboxLimits) (stored bool, err error) {
	lim = lim.WithDefaults()
	e, err := protocol.ParseEnvelope(env)
	if err == nil {
		err = e.Validate(now)
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrMailboxInvalid, err)
	}
	m, err := tx.mailboxBuckets(true)
	if err != nil {
		return false, err
	}
	r, err := tx.regBuckets(true)
	if err != nil {
		return false, err
	}
	var maxEnvelopes, maxBytes int64
	switch kind {
	case RegPair:
		maxEnvelopes, maxBytes = lim.PairEnvelopes, lim.PairBytes
	case RegIntro:
		maxEnvelopes, maxBytes = lim.IntroEnvelopes, lim.IntroBytes
	default:
		return false, fmt.Errorf("%w (unknown deposit kind 0x%02x)", ErrMailboxUnregistered, kind)
	}
	reg, held, err := r.get(e.Tag)
	if err != nil {
		return false, err
	}
	if !held || now.Unix() >= reg.expiry || reg.kind&kind == 0 {
		return false, ErrMailboxUnregistered
	}
	if e.Expiry.Unix() > reg.expiry {
		// It would outlive its registration, and with it the promise
		// that it stays.
		return false, fmt.Errorf("%w: %w: it expires after its tag's registration (%v)",
			ErrMailboxInvalid, protocol.ErrTTLTooLong, time.Unix(reg.expiry, 0).UTC())
	}
	hash := sha256.Sum256(env)
	if m.hash.Get(hash[:]) != nil {
		return false, nil
	}
	size := int64(len(env))
	tc, tb, err := readCounts(m.tagstat.Get(e.Tag[:]), "mailbox tag stats")
	if err != nil {
		return false, err
	}
	if tc+1 > maxEnvelopes || tb+size > maxBytes {
		return false, ErrMailboxTagFull
	}
	n, b, err := readCounts(m.meta.Get(keyMbxTotals), "mailbox totals")
	if err != nil {
		return false, err
	}
	// Version 1 envelopes never take the room of version 2 deposits.
	if err := m.evictV1(n+1-lim.TotalEnvelopes, b+size-lim.TotalBytes); err != nil {
		return false, err
	}
	// Eviction may have taken version 1 envelopes under this tag (stored
	// before it was registered); read its count again.
	tc, tb, err = readCounts(m.tagstat.Get(e.Tag[:]), "mailbox tag stats")
	if err != nil {
		return false, err
	}
	if err := m.insert(env, e, hash, tc, tb, false); err != nil {
		return false, err
	}
	return true, nil
}

// MailboxRegistrationCount returns how many registrations the mailbox
// holds. Registrations that expired since the last MailboxSweep are still
// counted; they no longer accept deposits.
func (tx *Tx) MailboxRegistrationCount() (int64, error) {
	r, err := tx.regBuckets(false)
	if err != nil {
		return 0, err
	}
	return r.count()
}

// sweepRegistrations deletes at most limit registrations that expire at or
// before now and returns how many it deleted.
func (tx *Tx) sweepRegistrations(now time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	r, err := tx.regBuckets(true)
	if err != nil {
		return 0, err
	}
	until := be64(uint64(max(now.Unix(), 0)))
	var keys [][]byte
	c := r.exp.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
		if len(k) != 8+32 {
			return 0, fmt.Errorf("%w: mailbox registration expiry key of %d bytes", ErrCorrupt, len(k))
		}
		if bytes.Compare(k[:8], until) > 0 {
			break
		}
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		tag := [32]byte(k[8:])
		v, held, err := r.get(tag)
		if err != nil {
			return 0, err
		}
		if !held || uint64(v.expiry) != binary.BigEndian.Uint64(k) {
			return 0, fmt.Errorf("%w: mailbox registration expiry index disagrees with the registration of tag %x", ErrCorrupt, tag[:6])
		}
		if err := r.reg.Delete(tag[:]); err != nil {
			return 0, err
		}
		if err := r.exp.Delete(k); err != nil {
			return 0, err
		}
	}
	if err := r.addCount(-int64(len(keys))); err != nil {
		return 0, err
	}
	return len(keys), nil
}

// registrations is the set of registration buckets of one transaction.
type registrations struct {
	reg, exp, meta *recordBucket
}

func (tx *Tx) regBuckets(write bool) (*registrations, error) {
	get := tx.bucket
	if write {
		get = tx.wbucket
	}
	var r registrations
	for _, b := range []struct {
		dst  **recordBucket
		name []byte
	}{
		{&r.reg, bucketMbxReg}, {&r.exp, bucketMbxRegExp}, {&r.meta, bucketMbxMeta},
	} {
		bk, err := get(b.name)
		if err != nil {
			return nil, err
		}
		*b.dst = bk
	}
	return &r, nil
}

// regValue is a decoded mbx_reg value.
type regValue struct {
	kind   byte
	expiry int64 // Unix seconds, RegistrationExpiry of the epoch
}

// epoch returns the epoch whose registration expires at v.expiry.
func (v regValue) epoch() uint64 {
	return protocol.Epoch(time.Unix(v.expiry, 0)) - RegistrationEpochs
}

// get returns the registration of tag, held or not, expired or not.
func (r *registrations) get(tag [32]byte) (regValue, bool, error) {
	b := r.reg.Get(tag[:])
	if b == nil {
		return regValue{}, false, nil
	}
	if len(b) != regValueSize {
		return regValue{}, false, fmt.Errorf("%w: mailbox registration of %d bytes", ErrCorrupt, len(b))
	}
	v := regValue{kind: b[0]}
	exp := binary.BigEndian.Uint64(b[1:])
	day := uint64(protocol.EpochLength / time.Second)
	if v.kind&^(RegPair|RegIntro) != 0 || v.kind == 0 || exp%day != 0 || exp/day < RegistrationEpochs ||
		exp/day > maxRegistrationEpoch+RegistrationEpochs {
		return regValue{}, false, fmt.Errorf("%w: mailbox registration of kind 0x%02x expiring at %d", ErrCorrupt, v.kind, exp)
	}
	v.expiry = int64(exp)
	return v, true, nil
}

// put writes the registration of tag and its expiry index entry. The
// caller deletes the index entry of a registration it replaces.
func (r *registrations) put(tag [32]byte, v regValue) error {
	exp := be64(uint64(v.expiry))
	if err := r.reg.Put(tag[:], concat([]byte{v.kind}, exp)); err != nil {
		return err
	}
	return r.exp.Put(concat(exp, tag[:]), present)
}

// count reads the number of registrations held.
func (r *registrations) count() (int64, error) {
	v := r.meta.Get(keyMbxRegistrations)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: mailbox registration count of %d bytes", ErrCorrupt, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

func (r *registrations) addCount(d int64) error {
	if d == 0 {
		return nil
	}
	n, err := r.count()
	if err != nil {
		return err
	}
	return r.meta.Put(keyMbxRegistrations, be64(uint64(max(n+d, 0))))
}
