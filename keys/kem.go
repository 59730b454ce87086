package keys

import (
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// Sizes of ML-KEM-768 values.
const (
	KEMPublicSize     = mlkem.EncapsulationKeySize768 // 1184
	KEMCiphertextSize = mlkem.CiphertextSize768       // 1088
	KEMSeedSize       = mlkem.SeedSize                // 64
	KEMSharedSize     = mlkem.SharedKeySize           // 32
)

// Errors about ML-KEM keys and ciphertexts.
var (
	ErrKEMLength           = errors.New("keys: ML-KEM-768 public key must be 1184 bytes")
	ErrKEMInvalid          = errors.New("keys: ML-KEM-768 public key is not a valid encapsulation key")
	ErrKEMCiphertextLength = errors.New("keys: ML-KEM-768 ciphertext must be 1088 bytes")
	ErrKEMSeedLength       = errors.New("keys: ML-KEM-768 seed must be 64 bytes")
)

// KEMPublic is an ML-KEM-768 encapsulation key in its standard encoding.
// Values from ParseKEMPublic or KEMPrivate.Public are valid keys.
type KEMPublic [KEMPublicSize]byte

// ParseKEMPublic checks the length of b and that it is a valid ML-KEM-768
// encapsulation key: the FIPS 203 §7.2 modulus check, which is exactly
// what mlkem.NewEncapsulationKey768 checks, without the cost of expanding
// the key's matrix (a test holds the two to agreement).
func ParseKEMPublic(b []byte) (KEMPublic, error) {
	var k KEMPublic
	if len(b) != KEMPublicSize {
		return k, fmt.Errorf("%w (got %d)", ErrKEMLength, len(b))
	}
	if !kemModulusOK(b) {
		return k, ErrKEMInvalid
	}
	copy(k[:], b)
	return k, nil
}

// kemModulusOK reports whether every 12-bit coefficient of the encoded
// vector t (the first 1152 bytes; the last 32 are the seed rho) is below
// q = 3329, i.e. ByteEncode12(ByteDecode12(t)) == t.
func kemModulusOK(b []byte) bool {
	const q = 3329
	t := b[:KEMPublicSize-32]
	ok := true
	for i := 0; i+3 <= len(t); i += 3 {
		d1 := uint16(t[i]) | uint16(t[i+1]&0x0f)<<8
		d2 := uint16(t[i+1])>>4 | uint16(t[i+2])<<4
		ok = ok && d1 < q && d2 < q
	}
	return ok
}

func (k *KEMPublic) key() (*mlkem.EncapsulationKey768, error) {
	ek, err := mlkem.NewEncapsulationKey768(k[:])
	if err != nil {
		return nil, ErrKEMInvalid
	}
	return ek, nil
}

// Encapsulate returns a fresh shared key and the ciphertext that carries it
// to the holder of the private key, using the system's secure randomness.
func (k KEMPublic) Encapsulate() (sharedKey, ciphertext []byte, err error) {
	ek, err := k.key()
	if err != nil {
		return nil, nil, err
	}
	sharedKey, ciphertext = ek.Encapsulate()
	return sharedKey, ciphertext, nil
}

// Bytes returns a copy of the encoded key.
func (k KEMPublic) Bytes() []byte { return append([]byte(nil), k[:]...) }

// Equal reports whether k and o are the same key, in constant time.
func (k KEMPublic) Equal(o KEMPublic) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports whether k is the zero value.
func (k KEMPublic) IsZero() bool { return k == KEMPublic{} }

// String returns "mlkem768:" followed by the hex of the first 16 bytes of
// the key's SHA-256 (the key itself is too long to print).
func (k KEMPublic) String() string {
	h := sha256.Sum256(k[:])
	return "mlkem768:" + hex.EncodeToString(h[:16])
}

// KEMPrivate is an ML-KEM-768 decapsulation key, kept as its 64-byte seed.
type KEMPrivate struct {
	k *mlkem.DecapsulationKey768
}

// GenerateKEM returns a new ML-KEM-768 key whose 64-byte seed is read from rand.
func GenerateKEM(rand io.Reader) (*KEMPrivate, error) {
	seed := make([]byte, KEMSeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("keys: reading randomness for ML-KEM key: %w", err)
	}
	return NewKEMPrivate(seed)
}

// NewKEMPrivate builds an ML-KEM-768 key from its 64-byte seed (d || z).
func NewKEMPrivate(seed []byte) (*KEMPrivate, error) {
	if len(seed) != KEMSeedSize {
		return nil, fmt.Errorf("%w (got %d)", ErrKEMSeedLength, len(seed))
	}
	dk, err := mlkem.NewDecapsulationKey768(seed)
	if err != nil {
		return nil, fmt.Errorf("keys: ML-KEM-768 private key: %w", err)
	}
	return &KEMPrivate{k: dk}, nil
}

// Seed returns a copy of the 64-byte seed, for serialisation only.
func (k *KEMPrivate) Seed() []byte { return k.k.Bytes() }

// Public returns the encapsulation key.
func (k *KEMPrivate) Public() KEMPublic {
	var p KEMPublic
	copy(p[:], k.k.EncapsulationKey().Bytes())
	return p
}

// Decapsulate recovers the shared key from ct. A ciphertext of the right
// length always yields a key (ML-KEM rejects implicitly); a wrong key only
// shows up when the caller's AEAD fails.
func (k *KEMPrivate) Decapsulate(ct []byte) ([]byte, error) {
	if len(ct) != KEMCiphertextSize {
		return nil, fmt.Errorf("%w (got %d)", ErrKEMCiphertextLength, len(ct))
	}
	ss, err := k.k.Decapsulate(ct)
	if err != nil {
		return nil, fmt.Errorf("keys: ML-KEM-768 decapsulation: %w", err)
	}
	return ss, nil
}

// Equal reports whether k and o hold the same seed, in constant time.
func (k *KEMPrivate) Equal(o *KEMPrivate) bool {
	if k == nil || o == nil {
		return k == o
	}
	return subtle.ConstantTimeCompare(k.k.Bytes(), o.k.Bytes()) == 1
}

// String redacts the key. The value receiver keeps a copied struct
// redacted too.
func (k KEMPrivate) String() string { return "mlkem768-private:REDACTED" }

// GoString redacts the key in %#v.
func (k KEMPrivate) GoString() string { return "keys.KEMPrivate{REDACTED}" }

// Format writes String (GoString under %#v) for every verb, so that no
// verb prints the key's fields.
func (k KEMPrivate) Format(f fmt.State, verb rune) { formatRedacted(f, verb, k.String(), k.GoString()) }

// LogValue redacts the key in slog output.
func (k KEMPrivate) LogValue() slog.Value { return slog.StringValue("REDACTED") }
