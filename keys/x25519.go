package keys

import (
	"crypto/ecdh"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// DHSize is the length of an X25519 public key, private key and shared secret.
const DHSize = 32

// Errors returned when an X25519 public key is rejected.
var (
	ErrDHLength       = errors.New("keys: X25519 public key must be 32 bytes")
	ErrDHNonCanonical = errors.New("keys: X25519 public key is not canonical (u >= 2^255-19 or high bit set)")
	ErrDHLowOrder     = errors.New("keys: X25519 public key is a low-order point")
	ErrDHZeroOutput   = errors.New("keys: X25519 shared secret is all zero")
)

// lowOrder lists the canonical encodings of the points of small order on
// Curve25519 (RFC 7748 §6.1 and the classic Bernstein list); non-canonical
// encodings are rejected before this list is consulted.
var lowOrder = [][DHSize]byte{
	{},  // 0
	{1}, // 1
	{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
	{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
		0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, // p-1
}

// DHPublic is an X25519 public key that has passed ParseDHPublic: canonical
// and not of small order. The zero value is not a valid key.
type DHPublic [DHSize]byte

// ParseDHPublic validates b as an X25519 public key. It rejects wrong
// lengths, non-canonical encodings (high bit set, or u >= p) and the points
// of small order, each with its own error.
func ParseDHPublic(b []byte) (DHPublic, error) {
	var k DHPublic
	if len(b) != DHSize {
		return k, fmt.Errorf("%w (got %d)", ErrDHLength, len(b))
	}
	copy(k[:], b)
	if !canonicalU(k) {
		return DHPublic{}, ErrDHNonCanonical
	}
	for i := range lowOrder {
		if k == lowOrder[i] {
			return DHPublic{}, ErrDHLowOrder
		}
	}
	return k, nil
}

// canonicalU reports whether the little-endian u-coordinate is below
// p = 2^255 - 19 with the top bit clear.
func canonicalU(k DHPublic) bool {
	if k[31]&0x80 != 0 {
		return false
	}
	// u >= p only when bytes 1..30 are 0xff, byte 31 is 0x7f and byte 0 >= 0xed.
	if k[31] != 0x7f {
		return true
	}
	for i := 30; i >= 1; i-- {
		if k[i] != 0xff {
			return true
		}
	}
	return k[0] < 0xed
}

// Bytes returns a copy of the encoded key.
func (k DHPublic) Bytes() []byte { return append([]byte(nil), k[:]...) }

// Equal reports whether k and o are the same key, in constant time.
func (k DHPublic) Equal(o DHPublic) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports whether k is the zero value (never a valid key).
func (k DHPublic) IsZero() bool { return k == DHPublic{} }

// String returns "x25519:" followed by the hex encoding.
func (k DHPublic) String() string { return "x25519:" + hex.EncodeToString(k[:]) }

// DHPrivate is an X25519 private key.
type DHPrivate struct {
	k *ecdh.PrivateKey
}

// GenerateDH returns a new X25519 private key drawn from rand.
func GenerateDH(rand io.Reader) (*DHPrivate, error) {
	var seed [DHSize]byte
	if _, err := io.ReadFull(rand, seed[:]); err != nil {
		return nil, fmt.Errorf("keys: reading randomness for X25519 key: %w", err)
	}
	return NewDHPrivate(seed[:])
}

// NewDHPrivate wraps 32 bytes of private scalar (clamped by X25519 itself).
func NewDHPrivate(b []byte) (*DHPrivate, error) {
	k, err := ecdh.X25519().NewPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("keys: X25519 private key: %w", err)
	}
	return &DHPrivate{k: k}, nil
}

// Public returns the public half.
func (k *DHPrivate) Public() DHPublic {
	var p DHPublic
	copy(p[:], k.k.PublicKey().Bytes())
	return p
}

// Bytes returns a copy of the private scalar, for serialisation only.
func (k *DHPrivate) Bytes() []byte { return k.k.Bytes() }

// DH computes the X25519 shared secret with pub. An all-zero output (which
// only a low-order or otherwise malicious public key produces) is an error.
func (k *DHPrivate) DH(pub DHPublic) ([]byte, error) {
	p, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return nil, fmt.Errorf("keys: X25519 public key: %w", err)
	}
	out, err := k.k.ECDH(p)
	if err != nil {
		return nil, ErrDHZeroOutput
	}
	var zero [DHSize]byte
	if subtle.ConstantTimeCompare(out, zero[:]) == 1 {
		return nil, ErrDHZeroOutput
	}
	return out, nil
}

// Equal reports whether k and o hold the same scalar, in constant time.
func (k *DHPrivate) Equal(o *DHPrivate) bool {
	if k == nil || o == nil {
		return k == o
	}
	return subtle.ConstantTimeCompare(k.k.Bytes(), o.k.Bytes()) == 1
}

// String redacts the key. The value receiver keeps a copied struct
// redacted too.
func (k DHPrivate) String() string { return "x25519-private:REDACTED" }

// GoString redacts the key in %#v.
func (k DHPrivate) GoString() string { return "keys.DHPrivate{REDACTED}" }

// Format writes String (GoString under %#v) for every verb, so that no
// verb prints the key's fields.
func (k DHPrivate) Format(f fmt.State, verb rune) { formatRedacted(f, verb, k.String(), k.GoString()) }

// LogValue redacts the key in slog output.
func (k DHPrivate) LogValue() slog.Value { return slog.StringValue("REDACTED") }
