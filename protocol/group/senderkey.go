package group

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
)

// Sender key limits (SPEC.md, "Sender keys").
const (
	KeyIDSize = 16
	// MaxSenderKeyMessages is how many messages one sender key seals; a
	// receiver refuses an iteration at or past it.
	MaxSenderKeyMessages = 1000
	// SenderKeyLifetime is how long a member seals with one sender key.
	SenderKeyLifetime = 7 * 24 * time.Hour

	messageVersion   = 0x01
	headerPlainSize  = KeyIDSize + 4
	sealedHeaderSize = headerPlainSize + chacha20poly1305.Overhead
	messagePrefix    = 1 + chacha20poly1305.NonceSizeX + sealedHeaderSize // 61
	// DistributionSize is the length of a sender key as sent to a member.
	DistributionSize = IDSize + KeyIDSize + 4 + 32 + ed25519.PublicKeySize
)

// Group message errors (SPEC.md, "Receiving").
var (
	ErrMalformedGroupMessage = errors.New("group: malformed group message")
	ErrNotForGroup           = errors.New("group: message header does not open with this group's key")
	ErrUnknownSenderKey      = errors.New("group: no sender key of a member has this ID")
	ErrTooManyMessages       = errors.New("group: sender key iteration past its limit")
	ErrGroupReplay           = errors.New("group: message already received")
	ErrGroupSignature        = errors.New("group: message signature does not verify")
	ErrGroupAuth             = errors.New("group: message body does not open")
	ErrGroupMismatch         = errors.New("group: message names another group or sender")
	ErrSenderKeyUsedUp       = errors.New("group: sender key sealed its last message; make a new one")
)

// SenderKey is a member device's sending key in one group: the chain
// key at the next iteration and the signing key. Its zero value is not
// usable; make one with NewSenderKey.
type SenderKey struct {
	ID        [KeyIDSize]byte
	Iteration uint32 // of the next message
	Chain     [32]byte
	Signing   ed25519.PrivateKey
	Created   time.Time
}

// NewSenderKey draws a sender key from rand.
func NewSenderKey(rand io.Reader, now time.Time) (*SenderKey, error) {
	var b [KeyIDSize + 32 + ed25519.SeedSize]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return nil, fmt.Errorf("group: drawing a sender key: %w", err)
	}
	k := &SenderKey{Created: now, Signing: ed25519.NewKeyFromSeed(b[KeyIDSize+32:])}
	copy(k.ID[:], b[:KeyIDSize])
	copy(k.Chain[:], b[KeyIDSize:KeyIDSize+32])
	return k, nil
}

// Due reports whether the key must be replaced before it seals again: it
// sealed MaxSenderKeyMessages messages or is SenderKeyLifetime old.
func (k *SenderKey) Due(now time.Time) bool {
	return k.Iteration >= MaxSenderKeyMessages || now.Sub(k.Created) >= SenderKeyLifetime
}

// Distribution is a sender key as sent to a member over a pairwise
// session: the group, the key ID, the iteration and chain key from which
// the receiver can read, and the public signing key.
type Distribution struct {
	Group     ID
	ID        [KeyIDSize]byte
	Iteration uint32
	Chain     [32]byte
	Public    ed25519.PublicKey
}

// Distribution is what k's receivers need, from its current iteration.
func (k *SenderKey) Distribution(g ID) Distribution {
	return Distribution{Group: g, ID: k.ID, Iteration: k.Iteration, Chain: k.Chain, Public: k.Signing.Public().(ed25519.PublicKey)}
}

// Marshal encodes d: G || key ID || uint32be(iteration) || chain key ||
// signing public key.
func (d Distribution) Marshal() []byte {
	b := append(d.Group[:0:0], d.Group[:]...)
	b = append(b, d.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, d.Iteration)
	b = append(b, d.Chain[:]...)
	return append(b, d.Public...)
}

// ParseDistribution decodes a sender key sent by a member.
func ParseDistribution(b []byte) (Distribution, error) {
	if len(b) != DistributionSize {
		return Distribution{}, fmt.Errorf("%w: sender key of %d bytes, want %d", ErrMalformedGroupMessage, len(b), DistributionSize)
	}
	var d Distribution
	copy(d.Group[:], b)
	copy(d.ID[:], b[IDSize:])
	d.Iteration = binary.BigEndian.Uint32(b[IDSize+KeyIDSize:])
	copy(d.Chain[:], b[IDSize+KeyIDSize+4:])
	d.Public = ed25519.PublicKey(append([]byte(nil), b[IDSize+KeyIDSize+4+32:]...))
	if d.Iteration >= MaxSenderKeyMessages {
		return Distribution{}, fmt.Errorf("%w: sender key at iteration %d", ErrTooManyMessages, d.Iteration)
	}
	return d, nil
}

// chainStep is KDF_CK: the message key of ck and the next chain key.
func chainStep(ck [32]byte) (mk, next [32]byte) {
	m := hmac.New(sha256.New, ck[:])
	m.Write([]byte{0x01})
	copy(mk[:], m.Sum(nil))
	m = hmac.New(sha256.New, ck[:])
	m.Write([]byte{0x02})
	copy(next[:], m.Sum(nil))
	return mk, next
}

// bodyKey expands a message key into the body's XChaCha20-Poly1305 key
// and nonce.
func bodyKey(mk [32]byte) (key, nonce []byte) {
	out, err := hkdf.Key(sha256.New, mk[:], nil, labelMessageKey, chacha20poly1305.KeySize+chacha20poly1305.NonceSizeX)
	if err != nil {
		panic("group: hkdf: " + err.Error())
	}
	return out[:chacha20poly1305.KeySize], out[chacha20poly1305.KeySize:]
}

func signedMessage(tag protocol.Tag, expiry time.Time, body []byte) []byte {
	b := append([]byte(labelMessage), tag[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(expiry.Unix()))
	return append(b, body...)
}

// Seal encrypts inner (an encoded group inner message) once for every
// member: the envelope of the group's tag in epoch, with expiry and a
// random delete hash. It advances k; the caller stores k before the
// envelope leaves.
func (k *SenderKey) Seal(rand io.Reader, g Secret, epoch uint64, expiry time.Time, inner []byte) (*protocol.Envelope, error) {
	if k.Iteration >= MaxSenderKeyMessages {
		return nil, ErrSenderKeyUsedUp
	}
	return k.seal(rand, g, epoch, expiry, inner)
}

func (k *SenderKey) seal(rand io.Reader, g Secret, epoch uint64, expiry time.Time, inner []byte) (*protocol.Envelope, error) {
	if len(inner) > protocol.MaxPlaintextSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformedGroupMessage, len(inner), protocol.MaxPlaintextSize)
	}
	env := &protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: g.Tag(epoch), Expiry: time.Unix(expiry.Unix(), 0)}
	var nonce [chacha20poly1305.NonceSizeX]byte
	if _, err := io.ReadFull(rand, env.DeleteHash[:]); err != nil {
		return nil, fmt.Errorf("group: %w", err)
	}
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("group: %w", err)
	}
	hk := g.HeaderKey(epoch)
	ha, err := chacha20poly1305.NewX(hk[:])
	if err != nil {
		return nil, err
	}
	var plainHeader [headerPlainSize]byte
	copy(plainHeader[:], k.ID[:])
	binary.BigEndian.PutUint32(plainHeader[KeyIDSize:], k.Iteration)
	out := append([]byte{messageVersion}, nonce[:]...)
	out = ha.Seal(out, nonce[:], plainHeader[:], env.Tag[:])

	mk, next := chainStep(k.Chain)
	key, bnonce := bodyKey(mk)
	ba, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	prefix := out[:messagePrefix:messagePrefix]
	out = ba.Seal(out, bnonce, protocol.Pad(inner), prefix)
	out = append(out, ed25519.Sign(k.Signing, signedMessage(env.Tag, env.Expiry, out))...)
	env.Ciphertext = out
	k.Chain, k.Iteration = next, k.Iteration+1
	return env, nil
}

// Inner is a group inner message (SPEC.md, "Group messages").
type Inner struct {
	Sender  keys.AccountPublic
	Group   ID
	ID      [16]byte
	Sent    time.Time // millisecond precision
	Lamport uint64
	Seq     uint64
	Type    byte
	Body    []byte
}

// Group message content types.
const (
	ContentText     byte = 0x01
	ContentReceipts byte = 0x02
)

const innerVersion = 0x01

// InnerHeaderSize is the length of a group inner message before its body.
const InnerHeaderSize = 1 + keys.AccountSize + IDSize + 16 + 8 + 8 + 8 + 1

// MaxBody is the longest body a group message holds.
const MaxBody = protocol.MaxPlaintextSize - InnerHeaderSize

// Marshal encodes m.
func (m *Inner) Marshal() ([]byte, error) {
	if len(m.Body) > MaxBody {
		return nil, fmt.Errorf("%w: a body of %d bytes, at most %d", ErrMalformedGroupMessage, len(m.Body), MaxBody)
	}
	if err := checkBody(m.Type, m.Body); err != nil {
		return nil, err
	}
	b := make([]byte, 0, InnerHeaderSize+len(m.Body))
	b = append(b, innerVersion)
	b = append(b, m.Sender[:]...)
	b = append(b, m.Group[:]...)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Sent.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, m.Lamport)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = append(b, m.Type)
	return append(b, m.Body...), nil
}

func checkBody(typ byte, body []byte) error {
	switch {
	case typ == ContentText && !utf8.Valid(body):
		return fmt.Errorf("%w: text that is not UTF-8", ErrMalformedGroupMessage)
	case typ == ContentReceipts && (len(body) == 0 || len(body)%16 != 0):
		return fmt.Errorf("%w: receipts of %d bytes", ErrMalformedGroupMessage, len(body))
	}
	return nil
}

// ParseInner decodes a group inner message. Unknown content types are
// kept, as in pairwise messages.
func ParseInner(b []byte) (*Inner, error) {
	if len(b) < InnerHeaderSize || b[0] != innerVersion {
		return nil, fmt.Errorf("%w: inner message header", ErrMalformedGroupMessage)
	}
	m := &Inner{}
	r := b[1:]
	copy(m.Sender[:], r)
	r = r[keys.AccountSize:]
	copy(m.Group[:], r)
	r = r[IDSize:]
	copy(m.ID[:], r)
	r = r[16:]
	m.Sent = time.UnixMilli(int64(binary.BigEndian.Uint64(r)))
	m.Lamport = binary.BigEndian.Uint64(r[8:])
	m.Seq = binary.BigEndian.Uint64(r[16:])
	m.Type = r[24]
	m.Body = append([]byte(nil), r[25:]...)
	if err := checkBody(m.Type, m.Body); err != nil {
		return nil, err
	}
	return m, nil
}
