package keys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// BundleVersion is the only bundle encoding this package writes and accepts.
const BundleVersion = 1

// Limits on a bundle.
const (
	// MaxOneTimePrekeys bounds each list of one-time prekeys in a bundle.
	MaxOneTimePrekeys = 32
	// MaxBundleValidity bounds how far in the future a bundle may expire,
	// so a leaked prekey cannot be served for long.
	MaxBundleValidity = 90 * 24 * time.Hour
	// BundleClockSkew is how far ahead of the verifier's clock a
	// publisher's clock may run: Verify accepts bundles expiring up to
	// MaxBundleValidity + BundleClockSkew from now.
	BundleClockSkew = time.Hour

	signedPrekeySize  = 1 + 4 + DHSize + SignatureSize
	kemPrekeySize     = 1 + 4 + KEMPublicSize + SignatureSize
	oneTimePrekeySize = 1 + 4 + DHSize
	// MaxBundleSize is the size of the largest valid bundle encoding.
	MaxBundleSize = 1 + AccountSize + (1 + AccountSize + 1 + MaxPeerIDSize + DHSize + 8 + SignatureSize) +
		8 + 8 + signedPrekeySize + kemPrekeySize +
		1 + MaxOneTimePrekeys*oneTimePrekeySize + 1 + MaxOneTimePrekeys*kemPrekeySize + SignatureSize
)

// bundleLabel separates bundle signatures from every other signature made
// with the account key.
const bundleLabel = "sotto/v1/prekey-bundle"

// Errors from ParseBundle and Bundle.Verify. Invalid keys are reported with
// the errors of ParseDHPublic and ParseKEMPublic; device certificate
// problems with the Device errors; prekey signatures with ErrPrekeySignature;
// a key type byte that does not fit its slot with ErrKeyType.
var (
	ErrBundleMalformed   = errors.New("keys: prekey bundle is malformed")
	ErrBundleVersion     = errors.New("keys: prekey bundle has an unknown version")
	ErrBundleSignature   = errors.New("keys: prekey bundle signature does not verify")
	ErrBundleUnsigned    = errors.New("keys: prekey bundle is not signed (its signature is all zero)")
	ErrBundleExpired     = errors.New("keys: prekey bundle has expired")
	ErrBundleValidity    = errors.New("keys: prekey bundle expires too far in the future")
	ErrDeviceMismatch    = errors.New("keys: device certificate belongs to a different account than the bundle")
	ErrDuplicatePrekeyID = errors.New("keys: prekey bundle lists a prekey ID twice")
)

// Bundle is the signed, sequence-numbered, expiring record a device
// publishes so others can start sessions with it.
//
// Encoding (version 1), every integer big-endian:
//
//	version        uint8 = 1
//	account        [32]byte
//	device         DeviceCertificate encoding (self-delimiting)
//	seq            uint64
//	expires        uint64 Unix seconds
//	signed prekey  type uint8 = 0x01 | id uint32 | key [32]byte   | sig [64]byte
//	last-resort    type uint8 = 0x02 | id uint32 | key [1184]byte | sig [64]byte
//	nOneTimeDH     uint8 <= 32, then per key: type 0x01 | id uint32 | key [32]byte
//	nOneTimeKEM    uint8 <= 32, then per key: type 0x02 | id uint32 | key [1184]byte | sig [64]byte
//	signature      [64]byte Ed25519 over "sotto/v1/prekey-bundle" || all fields above
//
// All prekey IDs in a bundle are distinct.
type Bundle struct {
	Account       AccountPublic
	Device        DeviceCertificate
	Seq           uint64
	Expires       time.Time // whole seconds
	SignedPrekey  SignedPrekey
	LastResortKEM SignedKEMPrekey
	OneTimeDH     []OneTimePrekey   // at most MaxOneTimePrekeys
	OneTimeKEM    []SignedKEMPrekey // at most MaxOneTimePrekeys
	Signature     [SignatureSize]byte
}

func (b *Bundle) size() int {
	return 1 + AccountSize + b.Device.size() + 8 + 8 + signedPrekeySize + kemPrekeySize +
		1 + len(b.OneTimeDH)*oneTimePrekeySize + 1 + len(b.OneTimeKEM)*kemPrekeySize + SignatureSize
}

func (b *Bundle) appendBody(w *builder) {
	w.u8(BundleVersion)
	w.bytes(b.Account[:])
	b.Device.appendTo(w)
	w.u64(b.Seq)
	w.unix(b.Expires)
	w.u8(uint8(KeyTypeX25519))
	w.u32(uint32(b.SignedPrekey.ID))
	w.bytes(b.SignedPrekey.Public[:])
	w.bytes(b.SignedPrekey.Signature[:])
	appendKEMPrekey(w, &b.LastResortKEM)
	w.u8(uint8(len(b.OneTimeDH)))
	for i := range b.OneTimeDH {
		w.u8(uint8(KeyTypeX25519))
		w.u32(uint32(b.OneTimeDH[i].ID))
		w.bytes(b.OneTimeDH[i].Public[:])
	}
	w.u8(uint8(len(b.OneTimeKEM)))
	for i := range b.OneTimeKEM {
		appendKEMPrekey(w, &b.OneTimeKEM[i])
	}
}

func appendKEMPrekey(w *builder, p *SignedKEMPrekey) {
	w.u8(uint8(KeyTypeMLKEM768))
	w.u32(uint32(p.ID))
	w.bytes(p.Public[:])
	w.bytes(p.Signature[:])
}

func (b *Bundle) signingInput() []byte {
	w := builder{b: make([]byte, 0, len(bundleLabel)+b.size())}
	w.bytes([]byte(bundleLabel))
	b.appendBody(&w)
	return w.b
}

// Sign sets the bundle's account to acct's public key and signs the bundle.
// Call it after every change to the other fields.
func (b *Bundle) Sign(acct *AccountPrivate) {
	b.Account = acct.Public()
	copy(b.Signature[:], acct.Sign(b.signingInput()))
}

// Marshal returns the canonical encoding. It is meant for bundles that
// pass Verify; lists longer than MaxOneTimePrekeys do not encode.
func (b *Bundle) Marshal() []byte {
	w := builder{b: make([]byte, 0, b.size())}
	b.appendBody(&w)
	w.bytes(b.Signature[:])
	return w.b
}

// ParseBundle decodes the canonical encoding: ParseBundle(x) either fails
// or returns a bundle whose Marshal is exactly x. It checks structure,
// lengths, counts, key types and key validity, but no signature, expiry or
// ID uniqueness; call Verify before using the bundle.
func ParseBundle(data []byte) (*Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrBundleMalformed, len(data), MaxBundleSize)
	}
	r := newParser(data)
	v := r.u8()
	if !r.ok {
		return nil, fmt.Errorf("%w: empty", ErrBundleMalformed)
	}
	if v != BundleVersion {
		return nil, fmt.Errorf("%w (%d)", ErrBundleVersion, v)
	}
	b := new(Bundle)
	copy(b.Account[:], r.take(AccountSize))
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated", ErrBundleMalformed)
	}
	dev, err := parseDeviceCert(r)
	if err != nil {
		return nil, fmt.Errorf("keys: bundle device certificate: %w", err)
	}
	b.Device = dev
	b.Seq = r.u64()
	b.Expires = r.unix()
	if err := parseKeyType(r, KeyTypeX25519); err != nil {
		return nil, err
	}
	b.SignedPrekey.ID = PrekeyID(r.u32())
	if b.SignedPrekey.Public, err = parseDH(r); err != nil {
		return nil, fmt.Errorf("keys: bundle signed prekey: %w", err)
	}
	copy(b.SignedPrekey.Signature[:], r.take(SignatureSize))
	if b.LastResortKEM, err = parseKEMPrekey(r); err != nil {
		return nil, fmt.Errorf("keys: bundle last-resort KEM prekey: %w", err)
	}
	n := int(r.u8())
	if n > MaxOneTimePrekeys {
		return nil, fmt.Errorf("%w: %d one-time prekeys, limit %d", ErrBundleMalformed, n, MaxOneTimePrekeys)
	}
	if n > 0 && r.ok {
		b.OneTimeDH = make([]OneTimePrekey, n)
	}
	for i := 0; i < n && r.ok; i++ {
		if err := parseKeyType(r, KeyTypeX25519); err != nil {
			return nil, err
		}
		b.OneTimeDH[i].ID = PrekeyID(r.u32())
		if b.OneTimeDH[i].Public, err = parseDH(r); err != nil {
			return nil, fmt.Errorf("keys: bundle one-time prekey: %w", err)
		}
	}
	n = int(r.u8())
	if n > MaxOneTimePrekeys {
		return nil, fmt.Errorf("%w: %d one-time KEM prekeys, limit %d", ErrBundleMalformed, n, MaxOneTimePrekeys)
	}
	if n > 0 && r.ok {
		b.OneTimeKEM = make([]SignedKEMPrekey, n)
	}
	for i := 0; i < n && r.ok; i++ {
		if b.OneTimeKEM[i], err = parseKEMPrekey(r); err != nil {
			return nil, fmt.Errorf("keys: bundle one-time KEM prekey: %w", err)
		}
	}
	copy(b.Signature[:], r.take(SignatureSize))
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated or out-of-range field", ErrBundleMalformed)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBundleMalformed, len(r.b))
	}
	return b, nil
}

// parseKeyType reads a key type byte and checks it against want. A short
// read is left for the caller's final truncation check.
func parseKeyType(r *parser, want KeyType) error {
	t := KeyType(r.u8())
	if r.ok && t != want {
		return fmt.Errorf("%w: %v where %v belongs", ErrKeyType, t, want)
	}
	return nil
}

func parseDH(r *parser) (DHPublic, error) {
	raw := r.take(DHSize)
	if !r.ok {
		return DHPublic{}, nil
	}
	return ParseDHPublic(raw)
}

func parseKEMPrekey(r *parser) (SignedKEMPrekey, error) {
	var p SignedKEMPrekey
	if err := parseKeyType(r, KeyTypeMLKEM768); err != nil {
		return p, err
	}
	p.ID = PrekeyID(r.u32())
	raw := r.take(KEMPublicSize)
	if r.ok {
		pub, err := ParseKEMPublic(raw)
		if err != nil {
			return p, err
		}
		p.Public = pub
	}
	copy(p.Signature[:], r.take(SignatureSize))
	return p, nil
}

// Verify checks the whole bundle as a recipient of it must before use:
// structure and limits (ErrBundleMalformed), that the device certificate
// names the bundle's account (ErrDeviceMismatch), every public key
// (ParseDHPublic / ParseKEMPublic errors), distinct prekey IDs
// (ErrDuplicatePrekeyID), expiry against now (ErrBundleExpired, and
// ErrBundleValidity beyond MaxBundleValidity plus BundleClockSkew), the
// bundle signature (ErrBundleUnsigned when it is all zero, as in a bundle
// never signed; ErrBundleSignature when it does not verify), the device
// certificate (Device errors) and each prekey signature (ErrPrekeySignature).
func (b *Bundle) Verify(now time.Time) error {
	if err := b.VerifyForUse(now); err != nil {
		return err
	}
	for i := range b.OneTimeKEM {
		if err := b.VerifyOneTimeKEM(i); err != nil {
			return err
		}
	}
	return nil
}

// VerifyOneTimeKEM checks the i-th one-time KEM prekey: a valid ML-KEM-768
// key signed by the bundle's account. Call it (after VerifyForUse) for the
// one prekey an initiator is about to use.
func (b *Bundle) VerifyOneTimeKEM(i int) error {
	if i < 0 || i >= len(b.OneTimeKEM) {
		return fmt.Errorf("%w: no one-time KEM prekey %d", ErrBundleMalformed, i)
	}
	p := &b.OneTimeKEM[i]
	if _, err := ParseKEMPublic(p.Public[:]); err != nil {
		return fmt.Errorf("keys: bundle one-time KEM prekey %d: %w", p.ID, err)
	}
	return p.verifySignature(b.Account)
}

// VerifyForUse checks everything Verify checks except each one-time KEM
// prekey's own encoding and signature, which cost a KEM key check and an
// Ed25519 verification apiece: an initiator uses one of them and checks
// just that one with VerifyOneTimeKEM before use. (The bundle signature
// covers all of them all the same.)
func (b *Bundle) VerifyForUse(now time.Time) error {
	if b.Account.IsZero() {
		return fmt.Errorf("%w: no account key", ErrBundleMalformed)
	}
	if len(b.OneTimeDH) > MaxOneTimePrekeys || len(b.OneTimeKEM) > MaxOneTimePrekeys {
		return fmt.Errorf("%w: more than %d one-time prekeys of a kind", ErrBundleMalformed, MaxOneTimePrekeys)
	}
	if !validUnix(b.Expires) {
		return fmt.Errorf("%w: expiry time out of range", ErrBundleMalformed)
	}
	if !b.Device.Account.Equal(b.Account) {
		return ErrDeviceMismatch
	}
	if _, err := ParseDHPublic(b.SignedPrekey.Public[:]); err != nil {
		return fmt.Errorf("keys: bundle signed prekey: %w", err)
	}
	for i := range b.OneTimeDH {
		if err := b.OneTimeDH[i].Verify(); err != nil {
			return err
		}
	}
	if _, err := ParseKEMPublic(b.LastResortKEM.Public[:]); err != nil {
		return fmt.Errorf("keys: bundle last-resort KEM prekey: %w", err)
	}
	if err := b.checkUniqueIDs(); err != nil {
		return err
	}
	if !now.Before(b.Expires) {
		return fmt.Errorf("%w (at %s)", ErrBundleExpired, b.Expires.UTC().Format(time.RFC3339))
	}
	if b.Expires.Sub(now) > MaxBundleValidity+BundleClockSkew {
		return fmt.Errorf("%w (expires %s, limit %s from now)", ErrBundleValidity, b.Expires.UTC().Format(time.RFC3339), MaxBundleValidity+BundleClockSkew)
	}
	if b.Signature == ([SignatureSize]byte{}) {
		return ErrBundleUnsigned
	}
	if !b.Account.Verify(b.signingInput(), b.Signature[:]) {
		return ErrBundleSignature
	}
	if err := b.Device.Verify(); err != nil {
		return fmt.Errorf("keys: bundle device certificate: %w", err)
	}
	if err := b.SignedPrekey.Verify(b.Account); err != nil {
		return err
	}
	return b.LastResortKEM.verifySignature(b.Account)
}

func (b *Bundle) checkUniqueIDs() error {
	seen := make(map[PrekeyID]struct{}, 2+len(b.OneTimeDH)+len(b.OneTimeKEM))
	add := func(id PrekeyID) error {
		if _, dup := seen[id]; dup {
			return fmt.Errorf("%w (%d)", ErrDuplicatePrekeyID, id)
		}
		seen[id] = struct{}{}
		return nil
	}
	if err := add(b.SignedPrekey.ID); err != nil {
		return err
	}
	if err := add(b.LastResortKEM.ID); err != nil {
		return err
	}
	for i := range b.OneTimeDH {
		if err := add(b.OneTimeDH[i].ID); err != nil {
			return err
		}
	}
	for i := range b.OneTimeKEM {
		if err := add(b.OneTimeKEM[i].ID); err != nil {
			return err
		}
	}
	return nil
}

// GeneratePrekeys creates a signed prekey, a last-resort KEM prekey and
// nOneTime one-time prekeys of each kind, all drawn from rand, and returns
// them as a bundle signed by acct (sequence seq, expiring validity after
// now, truncated to seconds) together with their private halves.
//
// Prekey IDs are consecutive from a random start read from rand (skipping
// 0), so batches made at different times are unlikely to collide; callers
// that keep older secrets should still add new ones with
// PrekeySecrets.Merge, which reports a collision.
func GeneratePrekeys(rand io.Reader, acct *AccountPrivate, device DeviceCertificate, now time.Time, seq uint64, nOneTime int, validity time.Duration) (*Bundle, *PrekeySecrets, error) {
	if nOneTime < 0 || nOneTime > MaxOneTimePrekeys {
		return nil, nil, fmt.Errorf("keys: %d one-time prekeys requested, want 0..%d", nOneTime, MaxOneTimePrekeys)
	}
	if validity < time.Second || validity > MaxBundleValidity {
		return nil, nil, fmt.Errorf("keys: bundle validity %s out of range (1s..%s)", validity, MaxBundleValidity)
	}
	if !device.Account.Equal(acct.Public()) {
		return nil, nil, ErrDeviceMismatch
	}
	var start [4]byte
	if _, err := io.ReadFull(rand, start[:]); err != nil {
		return nil, nil, fmt.Errorf("keys: reading randomness for prekey IDs: %w", err)
	}
	next := PrekeyID(binary.BigEndian.Uint32(start[:]))
	newID := func() PrekeyID {
		if next == 0 {
			next++
		}
		id := next
		next++
		return id
	}
	sec := NewPrekeySecrets()
	b := &Bundle{
		Account: acct.Public(),
		Device:  device,
		Seq:     seq,
		Expires: time.Unix(now.Add(validity).Unix(), 0).UTC(),
	}
	spk, err := GenerateDH(rand)
	if err != nil {
		return nil, nil, err
	}
	id := newID()
	sec.SignedDH[id] = spk
	b.SignedPrekey = NewSignedPrekey(acct, id, spk.Public())
	lr, err := GenerateKEM(rand)
	if err != nil {
		return nil, nil, err
	}
	id = newID()
	sec.KEM[id] = lr
	b.LastResortKEM = NewSignedKEMPrekey(acct, id, lr.Public())
	for range nOneTime {
		k, err := GenerateDH(rand)
		if err != nil {
			return nil, nil, err
		}
		id := newID()
		sec.OneTimeDH[id] = k
		b.OneTimeDH = append(b.OneTimeDH, OneTimePrekey{ID: id, Public: k.Public()})
	}
	for range nOneTime {
		k, err := GenerateKEM(rand)
		if err != nil {
			return nil, nil, err
		}
		id := newID()
		sec.KEM[id] = k
		b.OneTimeKEM = append(b.OneTimeKEM, NewSignedKEMPrekey(acct, id, k.Public()))
	}
	b.Sign(acct)
	return b, sec, nil
}

// Equal reports whether b and o encode to the same bytes.
func (b *Bundle) Equal(o *Bundle) bool {
	if b == nil || o == nil {
		return b == o
	}
	return string(b.Marshal()) == string(o.Marshal())
}
