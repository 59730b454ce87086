package protocol

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// Mailbox tags name the mailbox an envelope is deposited in. A tag is 32
// bytes that look random to anyone without the secret they derive from, and
// change every epoch (one UTC day), so mailboxes cannot link one day's
// traffic between two people to the next day's.
//
// First-contact messages use an intro tag, derived from the recipient's
// account key alone: anyone who knows that key can compute it. Once a
// session exists, each direction of it uses a pairwise tag derived from a
// seed fixed at session setup.

const (
	// TagSize is the length of a mailbox tag.
	TagSize = 32

	// EpochLength is the period after which tags change.
	EpochLength = 24 * time.Hour

	// LiveEpochMargin is the clock skew, in each direction, that
	// LiveEpochs allows for between sender and recipient.
	LiveEpochMargin = 24 * time.Hour

	// Roles of the sender of a message on a session, for PairTag. The
	// initiator is the party that ran PQXDH against the other's bundle.
	FromInitiator byte = 0x01
	FromResponder byte = 0x02
)

// Key derivation labels for tags.
const (
	labelIntroTag = "sotto/v1/tag/intro"
	labelPairTag  = "sotto/v1/tag/pair"
)

// Tag is a mailbox tag.
type Tag [TagSize]byte

// String returns "tag:" followed by the hex encoding. Tags are not secret.
func (t Tag) String() string { return "tag:" + hex.EncodeToString(t[:]) }

// Shard maps t to one of n gossip shards: the first two bytes of the tag,
// big endian, modulo n. Shard returns 0 when n is 0.
func (t Tag) Shard(n uint16) uint16 {
	if n == 0 {
		return 0
	}
	return binary.BigEndian.Uint16(t[:2]) % n
}

// Epoch returns the epoch of t: the number of whole UTC days since the
// Unix epoch. Times before 1970 are epoch 0.
func Epoch(t time.Time) uint64 {
	s := t.Unix()
	if s < 0 {
		return 0
	}
	return uint64(s) / uint64(EpochLength/time.Second)
}

// IsIntroTag reports whether tag is one of account's intro tags for the
// epochs live at now.
func IsIntroTag(account keys.AccountPublic, tag Tag, now time.Time) bool {
	for _, e := range LiveEpochs(now) {
		if IntroTag(account, e) == tag {
			return true
		}
	}
	return false
}

// IsIntroTag2 reports whether tag is the version 2 intro tag of secret in
// one of the live epochs at now.
func IsIntroTag2(secret [IntroSecretSize]byte, tag Tag, now time.Time) bool {
	for _, e := range LiveEpochs(now) {
		if IntroTag2(secret, e) == tag {
			return true
		}
	}
	return false
}

// EpochStart is the first instant of epoch e.
func EpochStart(e uint64) time.Time {
	return time.Unix(int64(e)*int64(EpochLength/time.Second), 0).UTC()
}

// LiveEpochs returns, oldest first, the epochs in which an envelope that
// may still be alive at now can have been sent: from
// Epoch(now − MaxTTL − LiveEpochMargin) to Epoch(now + LiveEpochMargin).
// A recipient queries its mailboxes for the tags of all these epochs.
func LiveEpochs(now time.Time) []uint64 {
	first := Epoch(now.Add(-MaxTTL - LiveEpochMargin))
	last := Epoch(now.Add(LiveEpochMargin))
	out := make([]uint64, 0, last-first+1)
	for e := first; e <= last; e++ {
		out = append(out, e)
	}
	return out
}

// IntroTag returns the tag for first-contact messages to recipient in
// epoch: HKDF-SHA256 with the account key as input keying material, no
// salt, and info "sotto/v1/tag/intro" || uint64be(epoch).
func IntroTag(recipient keys.AccountPublic, epoch uint64) Tag {
	info := binary.BigEndian.AppendUint64([]byte(labelIntroTag), epoch)
	return deriveTag(recipient[:], info)
}

// PairTag returns the tag for messages sent by sender (FromInitiator or
// FromResponder) on the session whose tag seed is seed, in epoch:
// HKDF-SHA256 with the seed as input keying material, no salt, and info
// "sotto/v1/tag/pair" || sender || uint64be(epoch).
func PairTag(seed [32]byte, sender byte, epoch uint64) Tag {
	info := append([]byte(labelPairTag), sender)
	info = binary.BigEndian.AppendUint64(info, epoch)
	return deriveTag(seed[:], info)
}

func deriveTag(ikm, info []byte) Tag {
	out, err := hkdf.Key(sha256.New, ikm, nil, string(info), TagSize)
	if err != nil {
		// Only reachable for output lengths above 255 × 32 bytes.
		panic("protocol: tag derivation: " + err.Error())
	}
	return Tag(out)
}
