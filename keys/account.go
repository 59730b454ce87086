package keys

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// AccountSize is the length of an account public key (Ed25519).
const AccountSize = ed25519.PublicKeySize

// SignatureSize is the length of an Ed25519 signature.
const SignatureSize = ed25519.SignatureSize

// Errors about account keys and signatures.
var (
	ErrAccountLength = errors.New("keys: account key must be 32 bytes")
	ErrBadSignature  = errors.New("keys: signature does not verify")
)

// AccountPublic is a user's long-term Ed25519 identity key.
type AccountPublic [AccountSize]byte

// ParseAccountPublic checks the length of b and returns it as an account key.
// Invalid curve points are caught by Verify, which then always fails.
func ParseAccountPublic(b []byte) (AccountPublic, error) {
	var k AccountPublic
	if len(b) != AccountSize {
		return k, fmt.Errorf("%w (got %d)", ErrAccountLength, len(b))
	}
	copy(k[:], b)
	if k == (AccountPublic{}) {
		return AccountPublic{}, fmt.Errorf("keys: account key is all zero")
	}
	return k, nil
}

// Verify reports whether sig is k's signature over msg.
func (k AccountPublic) Verify(msg, sig []byte) bool {
	if len(sig) != SignatureSize {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(k[:]), msg, sig)
}

// Equal compares in constant time.
func (k AccountPublic) Equal(o AccountPublic) bool {
	return subtle.ConstantTimeCompare(k[:], o[:]) == 1
}

// Bytes returns a copy of the key.
func (k AccountPublic) Bytes() []byte { return append([]byte(nil), k[:]...) }

// IsZero reports whether k is the zero value.
func (k AccountPublic) IsZero() bool { return k == AccountPublic{} }

var fingerprintEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Fingerprint is a short, stable text name for the account:
// "sotto1" followed by 26 lower-case base32 characters of
// SHA-256("sotto/account-fingerprint/v1" || key), grouped for reading.
func (k AccountPublic) Fingerprint() string {
	h := sha256.New()
	h.Write([]byte("sotto/account-fingerprint/v1"))
	h.Write(k[:])
	s := strings.ToLower(fingerprintEncoding.EncodeToString(h.Sum(nil)[:16]))
	return "sotto1" + s
}

// String returns the fingerprint.
func (k AccountPublic) String() string { return k.Fingerprint() }

// AccountPrivate is the user's long-term Ed25519 signing key.
//
// The key sits behind a pointer so that even where fmt formats the struct
// without calling Format (%p on a value, %w on an argument that is not an
// error, both reported by go vet) it prints an address, never the key
// bytes.
type AccountPrivate struct {
	k *ed25519.PrivateKey
}

// GenerateAccount returns a new account key drawn from rand.
func GenerateAccount(rand io.Reader) (*AccountPrivate, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("keys: reading randomness for account key: %w", err)
	}
	return NewAccountPrivate(seed)
}

// NewAccountPrivate builds an account key from its 32-byte seed.
func NewAccountPrivate(seed []byte) (*AccountPrivate, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("keys: account seed must be %d bytes (got %d)", ed25519.SeedSize, len(seed))
	}
	k := ed25519.NewKeyFromSeed(seed)
	return &AccountPrivate{k: &k}, nil
}

// Seed returns a copy of the 32-byte seed, for the keystore only.
func (k *AccountPrivate) Seed() []byte { return append([]byte(nil), k.k.Seed()...) }

// Public returns the account's public key.
func (k *AccountPrivate) Public() AccountPublic {
	var p AccountPublic
	copy(p[:], (*k.k)[32:])
	return p
}

// Sign signs msg. Callers must pass a domain-separated encoding.
func (k *AccountPrivate) Sign(msg []byte) []byte { return ed25519.Sign(*k.k, msg) }

// Equal compares in constant time.
func (k *AccountPrivate) Equal(o *AccountPrivate) bool {
	if k == nil || o == nil {
		return k == o
	}
	return subtle.ConstantTimeCompare(*k.k, *o.k) == 1
}

// String redacts the key. The value receiver keeps a copied struct
// redacted too.
func (k AccountPrivate) String() string { return "account-private:REDACTED" }

// GoString redacts the key in %#v.
func (k AccountPrivate) GoString() string { return "keys.AccountPrivate{REDACTED}" }

// Format writes String (GoString under %#v) for every verb, so that no
// verb (%d, %x, %c, ...) prints the key bytes.
func (k AccountPrivate) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, k.String(), k.GoString())
}

// LogValue redacts the key in slog output.
func (k AccountPrivate) LogValue() slog.Value { return slog.StringValue("REDACTED") }
