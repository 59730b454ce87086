package protocol

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// Version 2 mailboxes (SPEC.md, "Mailboxes, version 2") accept a deposit
// only with a credential in front of the envelope. A pairwise deposit is
// signed by a write key that both parties of a session derive from its tag
// seed; the tag is the hash of the write key's public half, so a mailbox
// checks the signature against the tag itself and learns nothing else. A
// first-contact (intro) deposit carries a proof of work bound to the whole
// envelope instead, because the sender has no session yet.

// Deposit kinds, the first byte of a deposit.
const (
	DepositPair  byte = 0x01
	DepositIntro byte = 0x02
)

const (
	// IntroSecretSize is the length of the secret, carried in invites,
	// from which a device's version 2 intro tags derive.
	IntroSecretSize = 32

	// WriteKeySize and DepositSignatureSize are the lengths of a pairwise
	// credential's public write key and Ed25519 signature.
	WriteKeySize         = ed25519.PublicKeySize
	DepositSignatureSize = ed25519.SignatureSize

	// StampNonceSize is the length of an intro credential.
	StampNonceSize = 8

	// DefaultStampBits is the difficulty a mailbox requires of an intro
	// deposit unless it states another; docs/BENCHMARKS.md has what it
	// costs a sender. MaxStampBits bounds what a mailbox may ask, so a
	// hostile one cannot make senders search for ever.
	DefaultStampBits = 20
	MaxStampBits     = 28

	// MaxDepositSize is the largest deposit: a kind byte, the larger
	// credential and the largest envelope.
	MaxDepositSize = 1 + WriteKeySize + DepositSignatureSize + MaxEnvelopeSize
)

// Key derivation labels of version 2 mailboxes.
const (
	labelWriteKey  = "sotto/v2/mailbox/write-key"
	labelPairTag2  = "sotto/v2/tag/pair"
	labelIntroTag2 = "sotto/v2/tag/intro"
	labelDeposit   = "sotto/v2/mailbox/deposit"
	labelStamp     = "sotto/v2/mailbox/stamp"
)

// Deposit errors. Each wraps ErrBadDeposit or ErrCredential, so a mailbox
// can map them to its rejection reasons.
var (
	ErrBadDeposit     = errors.New("protocol: malformed mailbox deposit")
	ErrDepositKind    = fmt.Errorf("%w: unknown kind", ErrBadDeposit)
	ErrDepositShort   = fmt.Errorf("%w: truncated credential", ErrBadDeposit)
	ErrCredential     = errors.New("protocol: deposit credential does not match the envelope")
	ErrWriteKeyTag    = fmt.Errorf("%w: the write key does not hash to the envelope's tag", ErrCredential)
	ErrWriteSignature = fmt.Errorf("%w: the write signature does not verify", ErrCredential)
	ErrStamp          = errors.New("protocol: intro deposit stamp is below the mailbox's difficulty")
)

// WriteKey derives the Ed25519 key that signs deposits sent by sender
// (FromInitiator or FromResponder) in epoch on the session whose tag seed
// is seed: its RFC 8032 seed is HKDF-SHA256(seed, no salt,
// "sotto/v2/mailbox/write-key" || sender || uint64be(epoch)).
func WriteKey(seed [32]byte, sender byte, epoch uint64) ed25519.PrivateKey {
	info := append([]byte(labelWriteKey), sender)
	info = binary.BigEndian.AppendUint64(info, epoch)
	return ed25519.NewKeyFromSeed(derive32(seed[:], info))
}

// WriteKeyTag returns the version 2 pairwise tag of a write public key:
// SHA-256("sotto/v2/tag/pair" || pub).
func WriteKeyTag(pub ed25519.PublicKey) Tag {
	h := sha256.New()
	h.Write([]byte(labelPairTag2))
	h.Write(pub)
	return Tag(h.Sum(nil))
}

// PairTag2 returns the version 2 pairwise tag for messages sent by sender
// in epoch on the session whose tag seed is seed. Deriving it costs an
// Ed25519 key generation (tens of microseconds), and a node derives every
// session's tags for every live epoch at each registration, so results
// are remembered under a hash of their inputs (never the seed itself).
func PairTag2(seed [32]byte, sender byte, epoch uint64) Tag {
	h := sha256.New()
	h.Write([]byte("sotto/v2/tag/pair-cache-key")) // in memory only
	h.Write(seed[:])
	h.Write([]byte{sender})
	h.Write(binary.BigEndian.AppendUint64(nil, epoch))
	key := [32]byte(h.Sum(nil))
	pairTags.Lock()
	defer pairTags.Unlock()
	if t, ok := pairTags.m[key]; ok {
		return t
	}
	t := WriteKeyTag(WriteKey(seed, sender, epoch).Public().(ed25519.PublicKey))
	if len(pairTags.m) >= maxPairTagCache {
		clear(pairTags.m)
	}
	pairTags.m[key] = t
	return t
}

// maxPairTagCache bounds the remembered version 2 pairwise tags (17 live
// epochs × 2 roles × about 2,000 sessions).
const maxPairTagCache = 1 << 16

var pairTags = struct {
	sync.Mutex
	m map[[32]byte]Tag
}{m: map[[32]byte]Tag{}}

// IntroTag2 returns the version 2 intro tag of the device whose intro
// secret is secret, in epoch: HKDF-SHA256(secret, no salt,
// "sotto/v2/tag/intro" || uint64be(epoch)).
func IntroTag2(secret [IntroSecretSize]byte, epoch uint64) Tag {
	info := binary.BigEndian.AppendUint64([]byte(labelIntroTag2), epoch)
	return Tag(derive32(secret[:], info))
}

func derive32(ikm, info []byte) []byte {
	out, err := hkdf.Key(sha256.New, ikm, nil, string(info), 32)
	if err != nil {
		panic("protocol: mailbox key derivation: " + err.Error())
	}
	return out
}

// Deposit is a parsed version 2 deposit. Envelope aliases the parsed bytes.
type Deposit struct {
	Kind      byte
	WriteKey  [WriteKeySize]byte         // DepositPair
	Signature [DepositSignatureSize]byte // DepositPair
	Nonce     [StampNonceSize]byte       // DepositIntro
	Envelope  []byte
}

// SealPairDeposit returns the pairwise deposit of env signed with key: the
// signature covers "sotto/v2/mailbox/deposit" || SHA-256(env).
func SealPairDeposit(key ed25519.PrivateKey, env []byte) []byte {
	sig := ed25519.Sign(key, depositMessage(env))
	out := make([]byte, 0, 1+WriteKeySize+DepositSignatureSize+len(env))
	out = append(out, DepositPair)
	out = append(out, key.Public().(ed25519.PublicKey)...)
	out = append(out, sig...)
	return append(out, env...)
}

func depositMessage(env []byte) []byte {
	h := sha256.Sum256(env)
	return append([]byte(labelDeposit), h[:]...)
}

// StampHash is SHA-256("sotto/v2/mailbox/stamp" || SHA-256(env) || nonce).
func StampHash(envHash [32]byte, nonce [StampNonceSize]byte) [32]byte {
	var buf [len(labelStamp) + 32 + StampNonceSize]byte
	n := copy(buf[:], labelStamp)
	n += copy(buf[n:], envHash[:])
	copy(buf[n:], nonce[:])
	return sha256.Sum256(buf[:])
}

// LeadingZeroBits counts the zero bits at the start of h, most significant
// bit of byte 0 first.
func LeadingZeroBits(h [32]byte) int {
	n := 0
	for _, b := range h {
		if b != 0 {
			return n + bits.LeadingZeros8(b)
		}
		n += 8
	}
	return n
}

// MintIntroDeposit searches for a stamp nonce of at least difficulty bits
// for env and returns the intro deposit. It fails if difficulty is above
// MaxStampBits or when ctx ends first. The search costs about
// 2^difficulty hashes.
func MintIntroDeposit(ctx context.Context, env []byte, difficulty int) ([]byte, error) {
	if difficulty < 0 || difficulty > MaxStampBits {
		return nil, fmt.Errorf("protocol: stamp difficulty %d is outside 0..%d; use another mailbox", difficulty, MaxStampBits)
	}
	h := sha256.Sum256(env)
	var nonce [StampNonceSize]byte
	for i := uint64(0); ; i++ {
		if i&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("protocol: stamp search stopped after %d hashes: %w", i, err)
			}
		}
		binary.BigEndian.PutUint64(nonce[:], i)
		if LeadingZeroBits(StampHash(h, nonce)) >= difficulty {
			break
		}
	}
	out := make([]byte, 0, 1+StampNonceSize+len(env))
	out = append(out, DepositIntro)
	out = append(out, nonce[:]...)
	return append(out, env...), nil
}

// ParseDeposit splits a deposit into its kind, credential and envelope. It
// checks only the deposit's own framing; Check verifies the credential and
// the envelope is parsed by the caller.
func ParseDeposit(b []byte) (Deposit, error) {
	if len(b) == 0 {
		return Deposit{}, ErrDepositShort
	}
	if len(b) > MaxDepositSize {
		return Deposit{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadDeposit, len(b), MaxDepositSize)
	}
	d := Deposit{Kind: b[0]}
	rest := b[1:]
	switch d.Kind {
	case DepositPair:
		if len(rest) < WriteKeySize+DepositSignatureSize {
			return Deposit{}, ErrDepositShort
		}
		copy(d.WriteKey[:], rest)
		copy(d.Signature[:], rest[WriteKeySize:])
		rest = rest[WriteKeySize+DepositSignatureSize:]
	case DepositIntro:
		if len(rest) < StampNonceSize {
			return Deposit{}, ErrDepositShort
		}
		copy(d.Nonce[:], rest)
		rest = rest[StampNonceSize:]
	default:
		return Deposit{}, fmt.Errorf("%w 0x%02x", ErrDepositKind, d.Kind)
	}
	if len(rest) == 0 {
		return Deposit{}, fmt.Errorf("%w: no envelope", ErrBadDeposit)
	}
	d.Envelope = rest
	return d, nil
}

// Marshal encodes d.
func (d *Deposit) Marshal() []byte {
	out := []byte{d.Kind}
	switch d.Kind {
	case DepositPair:
		out = append(out, d.WriteKey[:]...)
		out = append(out, d.Signature[:]...)
	case DepositIntro:
		out = append(out, d.Nonce[:]...)
	}
	return append(out, d.Envelope...)
}

// Check verifies d's credential against its envelope, whose tag is tag
// (the caller has parsed the envelope): for a pairwise deposit, that the
// write key hashes to tag and signs the envelope; for an intro deposit,
// that the stamp has at least stampBits leading zero bits.
func (d *Deposit) Check(tag Tag, stampBits int) error {
	switch d.Kind {
	case DepositPair:
		want := WriteKeyTag(d.WriteKey[:])
		if subtle.ConstantTimeCompare(want[:], tag[:]) != 1 {
			return ErrWriteKeyTag
		}
		if !ed25519.Verify(d.WriteKey[:], depositMessage(d.Envelope), d.Signature[:]) {
			return ErrWriteSignature
		}
		return nil
	case DepositIntro:
		if got := LeadingZeroBits(StampHash(sha256.Sum256(d.Envelope), d.Nonce)); got < stampBits {
			return fmt.Errorf("%w: %d bits, %d required", ErrStamp, got, stampBits)
		}
		return nil
	default:
		return fmt.Errorf("%w 0x%02x", ErrDepositKind, d.Kind)
	}
}
