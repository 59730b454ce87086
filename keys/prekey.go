package keys

import (
	"errors"
	"fmt"
	"log/slog"
)

// PrekeyID names a prekey within its owner's device. IDs are chosen by the
// owner; a bundle never lists the same ID twice.
type PrekeyID uint32

// KeyType tags every prekey in encodings and signatures, so that a key of
// one kind can never be presented as another.
type KeyType uint8

// Key types.
const (
	KeyTypeX25519   KeyType = 0x01
	KeyTypeMLKEM768 KeyType = 0x02
)

// String names the key type.
func (t KeyType) String() string {
	switch t {
	case KeyTypeX25519:
		return "x25519"
	case KeyTypeMLKEM768:
		return "mlkem768"
	}
	return fmt.Sprintf("keytype(%d)", uint8(t))
}

// Signature labels, one per signed prekey kind.
const (
	signedPrekeyLabel    = "sotto/v1/signed-prekey"
	signedKEMPrekeyLabel = "sotto/v1/signed-kem-prekey"
)

// Errors about prekeys.
var (
	ErrPrekeySignature = errors.New("keys: prekey signature does not verify")
	ErrKeyType         = errors.New("keys: wrong key type")
)

// SignedPrekey is a medium-term X25519 prekey (SPK in PQXDH) signed by the
// account key over "sotto/v1/signed-prekey" || type 0x01 || id (uint32 BE) || key.
type SignedPrekey struct {
	ID        PrekeyID
	Public    DHPublic
	Signature [SignatureSize]byte
}

// SignedKEMPrekey is an ML-KEM-768 prekey, last-resort or one-time, signed
// by the account key over "sotto/v1/signed-kem-prekey" || type 0x02 || id || key.
type SignedKEMPrekey struct {
	ID        PrekeyID
	Public    KEMPublic
	Signature [SignatureSize]byte
}

// OneTimePrekey is an unsigned one-time X25519 prekey (OPK); the bundle
// signature covers it.
type OneTimePrekey struct {
	ID     PrekeyID
	Public DHPublic
}

func prekeySigningInput(label string, t KeyType, id PrekeyID, pub []byte) []byte {
	w := builder{b: make([]byte, 0, len(label)+1+4+len(pub))}
	w.bytes([]byte(label))
	w.u8(uint8(t))
	w.u32(uint32(id))
	w.bytes(pub)
	return w.b
}

func (p *SignedPrekey) signingInput() []byte {
	return prekeySigningInput(signedPrekeyLabel, KeyTypeX25519, p.ID, p.Public[:])
}

func (p *SignedKEMPrekey) signingInput() []byte {
	return prekeySigningInput(signedKEMPrekeyLabel, KeyTypeMLKEM768, p.ID, p.Public[:])
}

// NewSignedPrekey signs the X25519 prekey pub under id.
func NewSignedPrekey(acct *AccountPrivate, id PrekeyID, pub DHPublic) SignedPrekey {
	p := SignedPrekey{ID: id, Public: pub}
	copy(p.Signature[:], acct.Sign(p.signingInput()))
	return p
}

// NewSignedKEMPrekey signs the ML-KEM-768 prekey pub under id.
func NewSignedKEMPrekey(acct *AccountPrivate, id PrekeyID, pub KEMPublic) SignedKEMPrekey {
	p := SignedKEMPrekey{ID: id, Public: pub}
	copy(p.Signature[:], acct.Sign(p.signingInput()))
	return p
}

// Verify checks that the key is a valid X25519 public key and that acct
// signed it.
func (p SignedPrekey) Verify(acct AccountPublic) error {
	if _, err := ParseDHPublic(p.Public[:]); err != nil {
		return fmt.Errorf("keys: signed prekey %d: %w", p.ID, err)
	}
	if !acct.Verify(p.signingInput(), p.Signature[:]) {
		return fmt.Errorf("%w (signed prekey %d)", ErrPrekeySignature, p.ID)
	}
	return nil
}

// Verify checks that the key is a valid ML-KEM-768 encapsulation key and
// that acct signed it.
func (p SignedKEMPrekey) Verify(acct AccountPublic) error {
	if _, err := ParseKEMPublic(p.Public[:]); err != nil {
		return fmt.Errorf("keys: KEM prekey %d: %w", p.ID, err)
	}
	return p.verifySignature(acct)
}

func (p *SignedKEMPrekey) verifySignature(acct AccountPublic) error {
	if !acct.Verify(p.signingInput(), p.Signature[:]) {
		return fmt.Errorf("%w (KEM prekey %d)", ErrPrekeySignature, p.ID)
	}
	return nil
}

// Verify checks that the key is a valid X25519 public key.
func (p OneTimePrekey) Verify() error {
	if _, err := ParseDHPublic(p.Public[:]); err != nil {
		return fmt.Errorf("keys: one-time prekey %d: %w", p.ID, err)
	}
	return nil
}

// PrekeySecrets holds the private halves of a device's prekeys, by ID.
// Its lookup methods match what the protocol's responder needs, so a
// *PrekeySecrets can serve as an in-memory prekey source; persistent
// storage keeps the same maps and deletes one-time keys once used.
type PrekeySecrets struct {
	SignedDH  map[PrekeyID]*DHPrivate
	OneTimeDH map[PrekeyID]*DHPrivate
	KEM       map[PrekeyID]*KEMPrivate // last-resort and one-time KEM prekeys
}

// NewPrekeySecrets returns empty maps.
func NewPrekeySecrets() *PrekeySecrets {
	return &PrekeySecrets{
		SignedDH:  map[PrekeyID]*DHPrivate{},
		OneTimeDH: map[PrekeyID]*DHPrivate{},
		KEM:       map[PrekeyID]*KEMPrivate{},
	}
}

// SignedPrekey looks up a signed X25519 prekey.
func (s *PrekeySecrets) SignedPrekey(id PrekeyID) (*DHPrivate, bool) {
	k, ok := s.SignedDH[id]
	return k, ok
}

// OneTimePrekey looks up a one-time X25519 prekey.
func (s *PrekeySecrets) OneTimePrekey(id PrekeyID) (*DHPrivate, bool) {
	k, ok := s.OneTimeDH[id]
	return k, ok
}

// KEMPrekey looks up an ML-KEM prekey, last-resort or one-time.
func (s *PrekeySecrets) KEMPrekey(id PrekeyID) (*KEMPrivate, bool) {
	k, ok := s.KEM[id]
	return k, ok
}

// Merge adds o's keys to s. It fails, changing nothing, if an ID is
// already present in s with a different key.
func (s *PrekeySecrets) Merge(o *PrekeySecrets) error {
	for id, k := range o.SignedDH {
		if old, ok := s.SignedDH[id]; ok && !old.Equal(k) {
			return fmt.Errorf("keys: signed prekey ID %d already in use", id)
		}
	}
	for id, k := range o.OneTimeDH {
		if old, ok := s.OneTimeDH[id]; ok && !old.Equal(k) {
			return fmt.Errorf("keys: one-time prekey ID %d already in use", id)
		}
	}
	for id, k := range o.KEM {
		if old, ok := s.KEM[id]; ok && !old.Equal(k) {
			return fmt.Errorf("keys: KEM prekey ID %d already in use", id)
		}
	}
	if s.SignedDH == nil {
		s.SignedDH = map[PrekeyID]*DHPrivate{}
	}
	if s.OneTimeDH == nil {
		s.OneTimeDH = map[PrekeyID]*DHPrivate{}
	}
	if s.KEM == nil {
		s.KEM = map[PrekeyID]*KEMPrivate{}
	}
	for id, k := range o.SignedDH {
		s.SignedDH[id] = k
	}
	for id, k := range o.OneTimeDH {
		s.OneTimeDH[id] = k
	}
	for id, k := range o.KEM {
		s.KEM[id] = k
	}
	return nil
}

// String summarises the secrets without revealing them.
func (s *PrekeySecrets) String() string {
	if s == nil {
		return "prekey-secrets(nil)"
	}
	return fmt.Sprintf("prekey-secrets(signed=%d one-time=%d kem=%d)", len(s.SignedDH), len(s.OneTimeDH), len(s.KEM))
}

// GoString is String under %#v.
func (s PrekeySecrets) GoString() string { return "keys." + s.String() }

// Format writes String (GoString under %#v) for every verb, for a value
// as for a pointer, so that no verb prints the maps.
func (s PrekeySecrets) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, s.String(), s.GoString())
}

// LogValue is String in slog output.
func (s PrekeySecrets) LogValue() slog.Value { return slog.StringValue(s.String()) }
