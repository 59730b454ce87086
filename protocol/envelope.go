package protocol

import (
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// The envelope is all that relays, mailboxes and gossip peers see of a
// message: a version, a mailbox tag, an expiry, the hash of a delete token
// and the ciphertext. Its encoding is canonical — ParseEnvelope accepts at
// most one encoding of any envelope, and Marshal reproduces it byte for
// byte — and bounded by MaxEnvelopeSize.
//
// Layout (all integers big endian):
//
//	offset  size  field
//	0       1     version (0x01)
//	1       32    tag
//	33      8     expiry, Unix seconds
//	41      32    delete hash
//	73      4     ciphertext length n
//	77      n     ciphertext

const (
	// EnvelopeVersion is the only envelope version this package reads and
	// writes. It is the first byte of every envelope.
	EnvelopeVersion = 1

	// MaxEnvelopeSize bounds the encoded envelope, header included.
	MaxEnvelopeSize = 64 << 10

	// EnvelopeHeaderSize is the size of the fields before the ciphertext.
	EnvelopeHeaderSize = 1 + TagSize + 8 + DeleteHashSize + 4

	// MaxCiphertextSize is the longest ciphertext an envelope can carry.
	MaxCiphertextSize = MaxEnvelopeSize - EnvelopeHeaderSize

	// MaxTTL is the longest an envelope may live: its expiry is at most
	// MaxTTL after the time it is sealed.
	MaxTTL = 14 * 24 * time.Hour

	// MaxClockSkew is how far ahead of the validator's clock the sender's
	// clock may be: Validate accepts an expiry up to now + MaxTTL +
	// MaxClockSkew.
	MaxClockSkew = time.Hour

	// MaxExpiry is the latest expiry an envelope can encode, in Unix
	// seconds: the end of year 9999, the bound on every time on the wire.
	MaxExpiry = 253402300799

	// DeleteTokenSize and DeleteHashSize are the lengths of a delete token
	// and of its hash.
	DeleteTokenSize = 32
	DeleteHashSize  = sha256.Size
)

// Key derivation labels for delete tokens.
const (
	labelDeleteToken = "sotto/v1/delete-token"
	labelDeleteHash  = "sotto/v1/delete"
)

// Errors returned by ParseEnvelope and Validate. Every structural error
// wraps ErrBadEnvelope.
var (
	ErrBadEnvelope = errors.New("protocol: malformed envelope")

	ErrUnknownVersion    = fmt.Errorf("%w: unknown version", ErrBadEnvelope)
	ErrEnvelopeTruncated = fmt.Errorf("%w: truncated", ErrBadEnvelope)
	ErrEnvelopeTrailing  = fmt.Errorf("%w: trailing bytes", ErrBadEnvelope)
	ErrEnvelopeTooLarge  = fmt.Errorf("%w: larger than %d bytes", ErrBadEnvelope, MaxEnvelopeSize)
	ErrEmptyCiphertext   = fmt.Errorf("%w: empty ciphertext", ErrBadEnvelope)
	ErrExpiryOutOfRange  = fmt.Errorf("%w: expiry out of range", ErrBadEnvelope)
	ErrExpired           = errors.New("protocol: envelope expired")
	ErrTTLTooLong        = errors.New("protocol: envelope expiry too far in the future")
)

// Envelope is the outer, public form of a sealed message.
type Envelope struct {
	Version    uint8
	Tag        Tag
	Expiry     time.Time // Unix seconds precision on the wire
	DeleteHash [DeleteHashSize]byte
	Ciphertext []byte
}

// Size returns the length of e's encoding.
func (e *Envelope) Size() int { return EnvelopeHeaderSize + len(e.Ciphertext) }

// Marshal returns the encoding of e. Expiry is truncated to whole seconds.
// Marshal does not check e: an envelope that fails ValidateStructure
// marshals to bytes that ParseEnvelope rejects.
func (e *Envelope) Marshal() []byte {
	return e.AppendMarshal(make([]byte, 0, e.Size()))
}

// AppendMarshal appends the encoding of e to b.
func (e *Envelope) AppendMarshal(b []byte) []byte {
	b = append(b, e.Version)
	b = append(b, e.Tag[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Expiry.Unix()))
	b = append(b, e.DeleteHash[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Ciphertext)))
	return append(b, e.Ciphertext...)
}

// ParseEnvelope decodes an envelope. It rejects, in this order: inputs
// longer than MaxEnvelopeSize (ErrEnvelopeTooLarge), an empty input
// (ErrEnvelopeTruncated), an unknown version (ErrUnknownVersion), a short
// header (ErrEnvelopeTruncated),
// an expiry above MaxExpiry (ErrExpiryOutOfRange), a zero ciphertext length
// (ErrEmptyCiphertext), a ciphertext length beyond MaxCiphertextSize
// (ErrEnvelopeTooLarge), fewer ciphertext bytes than announced
// (ErrEnvelopeTruncated) and bytes after the ciphertext
// (ErrEnvelopeTrailing). It does not look at the clock: call Validate.
//
// The returned envelope does not alias b.
func ParseEnvelope(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, ErrEnvelopeTooLarge
	}
	if len(b) == 0 {
		return nil, ErrEnvelopeTruncated
	}
	if b[0] != EnvelopeVersion {
		return nil, fmt.Errorf("%w %d", ErrUnknownVersion, b[0])
	}
	if len(b) < EnvelopeHeaderSize {
		return nil, ErrEnvelopeTruncated
	}
	e := &Envelope{Version: b[0]}
	p := b[1:]
	copy(e.Tag[:], p[:TagSize])
	p = p[TagSize:]
	exp := binary.BigEndian.Uint64(p)
	if exp > MaxExpiry {
		return nil, ErrExpiryOutOfRange
	}
	e.Expiry = time.Unix(int64(exp), 0).UTC()
	p = p[8:]
	copy(e.DeleteHash[:], p[:DeleteHashSize])
	p = p[DeleteHashSize:]
	n := binary.BigEndian.Uint32(p)
	p = p[4:]
	switch {
	case n == 0:
		return nil, ErrEmptyCiphertext
	case n > MaxCiphertextSize:
		return nil, ErrEnvelopeTooLarge
	case uint64(len(p)) < uint64(n):
		return nil, ErrEnvelopeTruncated
	case uint64(len(p)) > uint64(n):
		return nil, ErrEnvelopeTrailing
	}
	e.Ciphertext = append([]byte(nil), p...)
	return e, nil
}

// ValidateStructure checks the rules ParseEnvelope enforces on a decoded
// envelope: known version, expiry in range, ciphertext of 1 to
// MaxCiphertextSize bytes. It lets a sender check an envelope it built.
func (e *Envelope) ValidateStructure() error {
	if e.Version != EnvelopeVersion {
		return fmt.Errorf("%w %d", ErrUnknownVersion, e.Version)
	}
	if s := e.Expiry.Unix(); s < 0 || s > MaxExpiry {
		return ErrExpiryOutOfRange
	}
	if len(e.Ciphertext) == 0 {
		return ErrEmptyCiphertext
	}
	if len(e.Ciphertext) > MaxCiphertextSize {
		return ErrEnvelopeTooLarge
	}
	return nil
}

// Validate checks e against the clock as well as ValidateStructure: it
// returns ErrExpired if now is at or after the expiry, and ErrTTLTooLong if
// the expiry is more than MaxTTL + MaxClockSkew after now. Mailboxes and
// recipients call it on every envelope they receive.
func (e *Envelope) Validate(now time.Time) error {
	if err := e.ValidateStructure(); err != nil {
		return err
	}
	exp := e.Expiry.Unix()
	if now.Unix() >= exp {
		return ErrExpired
	}
	if exp > now.Add(MaxTTL+MaxClockSkew).Unix() {
		return ErrTTLTooLong
	}
	return nil
}

// DeleteToken derives the delete token of a message from the per-message
// secret that both ends of a ratchet learn: HKDF-SHA256 with the secret as
// input keying material, no salt, info "sotto/v1/delete-token", 32 bytes.
// Revealing the token to a mailbox lets it delete the envelope; it reveals
// nothing about the message keys.
func DeleteToken(secret [32]byte) [DeleteTokenSize]byte {
	out, err := hkdf.Key(sha256.New, secret[:], nil, labelDeleteToken, DeleteTokenSize)
	if err != nil {
		panic("protocol: delete token derivation: " + err.Error())
	}
	return [DeleteTokenSize]byte(out)
}

// HashDeleteToken returns the delete hash an envelope carries for tok:
// SHA-256("sotto/v1/delete" || tok).
func HashDeleteToken(tok [DeleteTokenSize]byte) [DeleteHashSize]byte {
	var in [len(labelDeleteHash) + DeleteTokenSize]byte
	copy(in[:], labelDeleteHash)
	copy(in[len(labelDeleteHash):], tok[:])
	return sha256.Sum256(in[:])
}

// CheckDeleteToken reports, in constant time, whether tok is the delete
// token for e.
func (e *Envelope) CheckDeleteToken(tok [DeleteTokenSize]byte) bool {
	h := HashDeleteToken(tok)
	return subtle.ConstantTimeCompare(h[:], e.DeleteHash[:]) == 1
}
