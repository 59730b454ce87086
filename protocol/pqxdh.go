package protocol

import (
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// PQXDH (Signal's "Post-Quantum Extended Diffie-Hellman", revision 3)
// establishes the shared secret SK from which a session's ratchet, header
// keys and mailbox tag seed derive. Sotto's parameters (PQXDH §2.1):
//
//	curve     X25519
//	hash      SHA-256
//	info      "Sotto_X25519_SHA-256_ML-KEM-768"
//	pqkem     ML-KEM-768 (FIPS 203)
//	EncodeEC  0x01 || the 32-byte u-coordinate (keys.KeyTypeX25519)
//	EncodeKEM 0x02 || the 1184-byte encapsulation key (keys.KeyTypeMLKEM768)
//
// The initiator ("Alice") verifies the responder's ("Bob's") bundle and
// every prekey signature, then computes
//
//	DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
//	DH4 = DH(EK_A, OPK_B)   (only if a one-time X25519 prekey was used)
//	(CT, SS) = ML-KEM-768.Encaps(PQPK_B)   (one-time KEM prekey, else last-resort)
//	SK = HKDF-SHA256(salt = 32 zero bytes,
//	                 ikm  = 32 0xFF bytes || DH1 || DH2 || DH3 [|| DH4] || SS,
//	                 info = "Sotto_X25519_SHA-256_ML-KEM-768", 32 bytes)
//
// IK is the X25519 identity key that each side's device certificate binds
// to its account key. From SK the session keys derive with HKDF-Expand
// (SK is already a pseudorandom key), one label each: see sessionKeys.

// PQXDH parameters and the labels of every key derived from SK.
const (
	// PQXDHInfo is the HKDF info string of the PQXDH KDF.
	PQXDHInfo = "Sotto_X25519_SHA-256_ML-KEM-768"

	labelRootKey        = "sotto/v1/pqxdh/root-key"
	labelHeaderKeyA     = "sotto/v1/pqxdh/header-key-initiator"
	labelNextHeaderKeyB = "sotto/v1/pqxdh/next-header-key-responder"
	labelTagSeed        = "sotto/v1/pqxdh/tag-seed"
	labelKEMKeyHash     = "sotto/v1/pqxdh/kem-public-key"
	labelIdentitySeal   = "sotto/v1/initial/identity-seal"
	labelInitialID      = "sotto/v1/initial/id"

	// SharedSecretSize is the length of SK and of every key derived from it.
	SharedSecretSize = 32

	// encodedDHSize and encodedKEMSize are the lengths of EncodeEC and
	// EncodeKEM outputs.
	encodedDHSize = 1 + keys.DHSize

	// ADSize is the length of a session's associated data:
	// EncodeEC(IK_A) || EncodeEC(IK_B) || account_A || account_B || kemKeyHash.
	ADSize = 2*encodedDHSize + 2*keys.AccountSize + sha256.Size
)

// Errors about PQXDH. Bundle problems are reported with the keys package's
// errors, wrapped.
var (
	ErrLocalIdentity    = errors.New("protocol: local identity is inconsistent (device certificate does not match the account or identity key)")
	ErrIdentityChanged  = errors.New("protocol: peer's account key differs from the one stored for this contact; verify the safety number before trusting it")
	ErrSelfSession      = errors.New("protocol: cannot start a session with one's own account")
	ErrKeyAgreement     = errors.New("protocol: key agreement failed")
	ErrEncapsulation    = errors.New("protocol: ML-KEM encapsulation failed")
	ErrUnknownPrekey    = errors.New("protocol: initial message names a signed or KEM prekey this device does not hold")
	ErrPrekeyConsumed   = errors.New("protocol: initial message names a one-time prekey that was already used")
	ErrPrekeyKind       = errors.New("protocol: initial message's one-time KEM flag does not match the kind of KEM prekey it names")
	ErrReplay           = errors.New("protocol: initial message was already accepted")
	ErrSealedIdentity   = errors.New("protocol: sealed sender identity does not open")
	ErrMalformedInitial = errors.New("protocol: malformed initial message")
)

// ffPrefix is F in PQXDH §2.2: 32 0xFF bytes that separate the KDF input
// from XEdDSA's, prepended to the key material.
var ffPrefix = [32]byte{
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
}

// DerivePQXDH is the PQXDH KDF: SK = HKDF-SHA256 with a salt of 32 zero
// bytes, input key material F || dh1 || dh2 || dh3 [|| dh4] || ss (F is 32
// 0xFF bytes) and info PQXDHInfo. dh4 is nil when no one-time X25519
// prekey was used. Every DH output must be 32 bytes and ss the 32-byte
// ML-KEM shared key.
func DerivePQXDH(dh1, dh2, dh3, dh4, ss []byte) ([SharedSecretSize]byte, error) {
	var sk [SharedSecretSize]byte
	if len(dh1) != keys.DHSize || len(dh2) != keys.DHSize || len(dh3) != keys.DHSize ||
		(dh4 != nil && len(dh4) != keys.DHSize) || len(ss) != keys.KEMSharedSize {
		return sk, fmt.Errorf("%w: input of the wrong length", ErrKeyAgreement)
	}
	ikm := make([]byte, 0, len(ffPrefix)+5*keys.DHSize)
	ikm = append(ikm, ffPrefix[:]...)
	ikm = append(ikm, dh1...)
	ikm = append(ikm, dh2...)
	ikm = append(ikm, dh3...)
	ikm = append(ikm, dh4...)
	ikm = append(ikm, ss...)
	var salt [sha256.Size]byte
	out, err := hkdf.Key(sha256.New, ikm, salt[:], PQXDHInfo, SharedSecretSize)
	clear(ikm)
	if err != nil {
		return sk, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
	}
	copy(sk[:], out)
	clear(out)
	return sk, nil
}

// sessionKeys are the values a session takes from SK.
type sessionKeys struct {
	rootKey        [32]byte // the Double Ratchet's initial root key
	headerKeyA     [32]byte // shared_hka: header key of the initiator's first sending chain
	nextHeaderKeyB [32]byte // shared_nhkb: next header key of the responder
	tagSeed        [32]byte // pairwise mailbox tag seed (PairTag)
}

// deriveSessionKeys expands SK into the session keys, one HKDF-Expand
// label each.
func deriveSessionKeys(sk [SharedSecretSize]byte) (sessionKeys, error) {
	var k sessionKeys
	for _, d := range []struct {
		label string
		out   *[32]byte
	}{
		{labelRootKey, &k.rootKey},
		{labelHeaderKeyA, &k.headerKeyA},
		{labelNextHeaderKeyB, &k.nextHeaderKeyB},
		{labelTagSeed, &k.tagSeed},
	} {
		b, err := hkdf.Expand(sha256.New, sk[:], d.label, 32)
		if err != nil {
			return sessionKeys{}, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
		}
		copy(d.out[:], b)
		clear(b)
	}
	return k, nil
}

// encodeEC is EncodeEC: the key type byte, then the key.
func encodeEC(b []byte, k keys.DHPublic) []byte {
	b = append(b, byte(keys.KeyTypeX25519))
	return append(b, k[:]...)
}

// kemKeyHash is SHA-256("sotto/v1/pqxdh/kem-public-key" || EncodeKEM(pk)),
// which binds the KEM public key used into the associated data.
func kemKeyHash(pk *keys.KEMPublic) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(labelKEMKeyHash))
	h.Write([]byte{byte(keys.KeyTypeMLKEM768)})
	h.Write(pk[:])
	return [sha256.Size]byte(h.Sum(nil))
}

// associatedData is the session's AD (PQXDH §3.3 with the optional
// identifying information appended): EncodeEC(IK_A) || EncodeEC(IK_B) ||
// account_A || account_B || kemKeyHash(PQPK_B), A being the initiator.
func associatedData(ikA, ikB keys.DHPublic, acctA, acctB keys.AccountPublic, kemHash [sha256.Size]byte) []byte {
	ad := make([]byte, 0, ADSize)
	ad = encodeEC(ad, ikA)
	ad = encodeEC(ad, ikB)
	ad = append(ad, acctA[:]...)
	ad = append(ad, acctB[:]...)
	return append(ad, kemHash[:]...)
}

// initialIDOf is SHA-256("sotto/v1/initial/id" || EK_A || CT): the replay
// cache key of an initial message and the name by which a session
// recognises its own base key.
func initialIDOf(ek keys.DHPublic, ct []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(labelInitialID))
	h.Write(ek[:])
	h.Write(ct)
	return [32]byte(h.Sum(nil))
}

// identitySealKey derives the key that seals the initiator's identity in
// the initial message: HKDF-SHA256 with input DH3 || SS, no salt, info
// "sotto/v1/initial/identity-seal". DH3 = DH(EK_A, SPK_B) needs a
// private key only the two parties hold; SS keeps the sealed identity
// confidential against an adversary who records traffic now and breaks
// X25519 later.
func identitySealKey(dh3, ss []byte) ([32]byte, error) {
	ikm := make([]byte, 0, len(dh3)+len(ss))
	ikm = append(ikm, dh3...)
	ikm = append(ikm, ss...)
	out, err := hkdf.Key(sha256.New, ikm, nil, labelIdentitySeal, 32)
	clear(ikm)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
	}
	k := [32]byte(out)
	clear(out)
	return k, nil
}

// LocalIdentity is what a device needs of its own keys to run PQXDH.
type LocalIdentity struct {
	Account    *keys.AccountPrivate
	IdentityDH *keys.DHPrivate // IK (X25519), certified by Device
	Device     keys.DeviceCertificate
}

// check verifies that the certificate names this account and identity key.
func (me *LocalIdentity) check() error {
	if me.Account == nil || me.IdentityDH == nil {
		return ErrLocalIdentity
	}
	if !me.Device.Account.Equal(me.Account.Public()) || !me.Device.IdentityDH.Equal(me.IdentityDH.Public()) {
		return ErrLocalIdentity
	}
	return nil
}

// Encapsulator produces an ML-KEM shared key and ciphertext for pk.
// Production uses keys.KEMPublic.Encapsulate; deterministic tests and the
// known-answer vector generator pass a wrapper around kemtest.Encapsulate
// (package keys/kemtest, which production code never imports).
type Encapsulator func(pk keys.KEMPublic) (sharedKey, ciphertext []byte, err error)

// InitiateOption configures Initiate.
type InitiateOption interface{ applyInitiate(*initiateConfig) }

// AcceptOption configures Accept.
type AcceptOption interface{ applyAccept(*acceptConfig) }

type initiateConfig struct {
	encapsulate  Encapsulator
	expectedPeer *keys.AccountPublic
}

type acceptConfig struct {
	expectedPeer *keys.AccountPublic
	introSecret  *[IntroSecretSize]byte
}

// IntroSecretOption, from WithIntroSecret, makes Accept also take an
// initial message under the version 2 intro tags of the device's intro
// secret (IntroTag2), besides the version 1 ones of its account.
type IntroSecretOption struct{ secret [IntroSecretSize]byte }

func (o IntroSecretOption) applyAccept(c *acceptConfig) { c.introSecret = &o.secret }

// WithIntroSecret is the device's own intro secret, for Accept.
func WithIntroSecret(secret [IntroSecretSize]byte) IntroSecretOption {
	return IntroSecretOption{secret: secret}
}

type encapsulatorOption Encapsulator

func (o encapsulatorOption) applyInitiate(c *initiateConfig) { c.encapsulate = Encapsulator(o) }

// WithEncapsulator replaces the ML-KEM encapsulation Initiate uses (by
// default keys.KEMPublic.Encapsulate, with system randomness).
func WithEncapsulator(e Encapsulator) InitiateOption { return encapsulatorOption(e) }

// PeerOption is an option of both Initiate and Accept.
type PeerOption struct{ acct keys.AccountPublic }

func (o PeerOption) applyInitiate(c *initiateConfig) { a := o.acct; c.expectedPeer = &a }
func (o PeerOption) applyAccept(c *acceptConfig)     { a := o.acct; c.expectedPeer = &a }

// WithExpectedPeer names the account key stored for the contact the
// session is with. Initiate and Accept then fail with ErrIdentityChanged,
// building no session, if the peer's account key is a different one.
func WithExpectedPeer(acct keys.AccountPublic) PeerOption { return PeerOption{acct: acct} }

// checkExpectedPeer returns ErrIdentityChanged if want is set and differs
// from got.
func checkExpectedPeer(want *keys.AccountPublic, got keys.AccountPublic) error {
	if want != nil && !want.Equal(got) {
		return ErrIdentityChanged
	}
	return nil
}

// CheckPeer reports ErrIdentityChanged if the session's peer is not the
// account stored for the contact, and nil if it is.
func (s *Session) CheckPeer(stored keys.AccountPublic) error {
	return checkExpectedPeer(&stored, s.peer)
}

// agreement is the outcome of PQXDH on either side.
type agreement struct {
	keys      sessionKeys
	ad        []byte
	initialID [32]byte
}

// derive runs the KDF and fills in the session keys.
func derive(dh1, dh2, dh3, dh4, ss []byte) (sessionKeys, error) {
	sk, err := DerivePQXDH(dh1, dh2, dh3, dh4, ss)
	if err != nil {
		return sessionKeys{}, err
	}
	k, err := deriveSessionKeys(sk)
	clear(sk[:])
	return k, err
}

// chooseIndex picks an index in [0, n) from 4 bytes of rand, so that
// initiators reading the same bundle spread over its one-time prekeys.
// The modulo bias is below 2^-26 for n <= keys.MaxOneTimePrekeys.
func chooseIndex(rand io.Reader, n int) (int, error) {
	var b [4]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return 0, fmt.Errorf("protocol: reading randomness: %w", err)
	}
	return int(binary.BigEndian.Uint32(b[:]) % uint32(n)), nil
}

// dhAll computes one DH output per pair, failing on the first error.
func dhAll(pairs ...dhPair) ([][]byte, error) {
	out := make([][]byte, len(pairs))
	for i, p := range pairs {
		s, err := p.priv.DH(p.pub)
		if err != nil {
			for _, o := range out[:i] {
				clear(o)
			}
			return nil, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
		}
		out[i] = s
	}
	return out, nil
}

type dhPair struct {
	priv *keys.DHPrivate
	pub  keys.DHPublic
}

func clearAll(bs ...[]byte) {
	for _, b := range bs {
		clear(b)
	}
}

// equal32 compares two 32-byte values in constant time.
func equal32(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// initiation is the initiator's side of PQXDH: the session keys and what
// the initial message must tell the responder.
type initiation struct {
	agreement
	header  initialHeader
	sealKey [32]byte
	spk     keys.DHPublic // SPK_B, the responder's first ratchet public key
}

// pqxdhInitiate runs the initiator's side of PQXDH against peer, whose
// bundle and prekey signatures it verifies first (PQXDH §3.3).
func pqxdhInitiate(rand io.Reader, now time.Time, me *LocalIdentity, peer *keys.Bundle, cfg *initiateConfig) (*initiation, error) {
	if err := me.check(); err != nil {
		return nil, err
	}
	if peer == nil {
		return nil, fmt.Errorf("protocol: no peer bundle")
	}
	if err := peer.VerifyForUse(now); err != nil {
		return nil, fmt.Errorf("protocol: peer bundle: %w", err)
	}
	if err := checkExpectedPeer(cfg.expectedPeer, peer.Account); err != nil {
		return nil, err
	}
	if peer.Account.Equal(me.Account.Public()) {
		return nil, ErrSelfSession
	}
	// Bundle.VerifyForUse has checked the bundle signature, the device
	// certificate, the signed prekey and the last-resort KEM prekey with
	// their signatures; the one-time KEM prekey chosen here is checked
	// (key and signature) before use. TestBundleVerification pins that a
	// forged prekey signature stops Initiate even under a valid bundle
	// signature.
	h := initialHeader{spkID: peer.SignedPrekey.ID}
	kem := peer.LastResortKEM
	if n := len(peer.OneTimeKEM); n > 0 {
		i, err := chooseIndex(rand, n)
		if err != nil {
			return nil, err
		}
		if err := peer.VerifyOneTimeKEM(i); err != nil {
			return nil, fmt.Errorf("protocol: peer bundle: %w", err)
		}
		kem = peer.OneTimeKEM[i]
		h.flags |= flagOneTimeKEM
	}
	h.kemID = kem.ID
	var opk *keys.OneTimePrekey
	if n := len(peer.OneTimeDH); n > 0 {
		i, err := chooseIndex(rand, n)
		if err != nil {
			return nil, err
		}
		opk = &peer.OneTimeDH[i]
		h.flags |= flagOneTimeDH
		h.otpID = opk.ID
	}

	ek, err := keys.GenerateDH(rand)
	if err != nil {
		return nil, fmt.Errorf("protocol: ephemeral key: %w", err)
	}
	h.ek = ek.Public()
	pairs := []dhPair{
		{me.IdentityDH, peer.SignedPrekey.Public}, // DH1 = DH(IK_A, SPK_B)
		{ek, peer.Device.IdentityDH},              // DH2 = DH(EK_A, IK_B)
		{ek, peer.SignedPrekey.Public},            // DH3 = DH(EK_A, SPK_B)
	}
	if opk != nil {
		pairs = append(pairs, dhPair{ek, opk.Public}) // DH4 = DH(EK_A, OPK_B)
	}
	dh, err := dhAll(pairs...)
	if err != nil {
		return nil, err
	}
	defer clearAll(dh...)
	var dh4 []byte
	if opk != nil {
		dh4 = dh[3]
	}

	encap := cfg.encapsulate
	if encap == nil {
		encap = keys.KEMPublic.Encapsulate
	}
	ss, ct, err := encap(kem.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEncapsulation, err)
	}
	defer clear(ss)
	if len(ss) != keys.KEMSharedSize || len(ct) != keys.KEMCiphertextSize {
		return nil, fmt.Errorf("%w: wrong output lengths", ErrEncapsulation)
	}
	copy(h.ct[:], ct)

	sk, err := derive(dh[0], dh[1], dh[2], dh4, ss)
	if err != nil {
		return nil, err
	}
	seal, err := identitySealKey(dh[2], ss)
	if err != nil {
		return nil, err
	}
	return &initiation{
		agreement: agreement{
			keys: sk,
			ad: associatedData(me.Device.IdentityDH, peer.Device.IdentityDH,
				me.Account.Public(), peer.Account, kemKeyHash(&kem.Public)),
			initialID: initialIDOf(h.ek, h.ct[:]),
		},
		header:  h,
		sealKey: seal,
		spk:     peer.SignedPrekey.Public,
	}, nil
}

// PrekeySource is what the responder's storage provides: its private
// prekeys by ID and the replay cache of accepted initial messages. Accept
// only reads; the caller deletes the one-time prekeys that Accepted
// reports, and records Accepted.InitialID, in the same commit as the new
// session.
//
// A source that keeps one-time and last-resort KEM prekeys apart should
// also implement KEMPrekeyKinds.
type PrekeySource interface {
	SignedPrekey(id keys.PrekeyID) (*keys.DHPrivate, bool)
	OneTimePrekey(id keys.PrekeyID) (*keys.DHPrivate, bool)
	KEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) // last-resort or one-time
	SeenInitial(id [32]byte) bool
}

// KEMPrekeyKinds is implemented by a PrekeySource that can look up each
// kind of KEM prekey on its own. Accept then uses it instead of KEMPrekey:
// the initial header's flag 0x02 says which kind to look in, an initial
// message whose flag disagrees with the kind of KEM prekey its ID names is
// rejected with ErrPrekeyKind, and Accepted.ConsumedKEM is set exactly
// when a one-time KEM prekey was used.
//
// With a source that does not implement it, Accept cannot tell the kinds
// apart (whatever the initiator's flag claims), so it reports every KEM
// prekey it used in Accepted.ConsumedKEM, and the caller deletes the
// one-time KEM prekey with that ID if it holds one.
type KEMPrekeyKinds interface {
	// OneTimeKEMPrekey looks up a one-time ML-KEM prekey not yet used.
	OneTimeKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool)
	// LastResortKEMPrekey looks up a last-resort ML-KEM prekey.
	LastResortKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool)
}

// response is the responder's state between opening the sealed identity
// and finishing PQXDH.
type response struct {
	spk    *keys.DHPrivate
	opk    *keys.DHPrivate // nil if no one-time X25519 prekey was used
	kemPub keys.KEMPublic
	// consumeKEM: the KEM prekey used is, or (with a source that cannot
	// tell) may be, a one-time prekey, which the caller deletes.
	consumeKEM bool
	dh3, ss    []byte
	sealKey    [32]byte
}

// pqxdhRespondSeal looks up the prekeys h names and computes DH3 and SS,
// enough to open the sealed identity. It rejects replays and prekeys that
// are unknown, already consumed or of another kind than the header says.
func pqxdhRespondSeal(pk PrekeySource, h *initialHeader) (*response, error) {
	id := initialIDOf(h.ek, h.ct[:])
	if pk.SeenInitial(id) {
		return nil, ErrReplay
	}
	r := &response{}
	var ok bool
	if r.spk, ok = pk.SignedPrekey(h.spkID); !ok || r.spk == nil {
		return nil, fmt.Errorf("%w (signed prekey %d)", ErrUnknownPrekey, h.spkID)
	}
	kem, err := lookupKEMPrekey(pk, h)
	if err != nil {
		return nil, err
	}
	r.consumeKEM = h.flags&flagOneTimeKEM != 0
	if _, kinds := pk.(KEMPrekeyKinds); !kinds {
		r.consumeKEM = true
	}
	if h.flags&flagOneTimeDH != 0 {
		if r.opk, ok = pk.OneTimePrekey(h.otpID); !ok || r.opk == nil {
			return nil, fmt.Errorf("%w (one-time prekey %d)", ErrPrekeyConsumed, h.otpID)
		}
	}
	dh3, err := r.spk.DH(h.ek)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
	}
	ss, err := kem.Decapsulate(h.ct[:])
	if err != nil {
		clear(dh3)
		return nil, fmt.Errorf("%w: %w", ErrKeyAgreement, err)
	}
	r.dh3, r.ss, r.kemPub = dh3, ss, kem.Public()
	if r.sealKey, err = identitySealKey(dh3, ss); err != nil {
		r.wipe()
		return nil, err
	}
	return r, nil
}

// lookupKEMPrekey finds the KEM prekey h names. With a source that keeps
// the kinds apart, flag 0x02 picks the kind, and a key found only under
// the other kind is ErrPrekeyKind.
func lookupKEMPrekey(pk PrekeySource, h *initialHeader) (*keys.KEMPrivate, error) {
	oneTime := h.flags&flagOneTimeKEM != 0
	kinds, ok := pk.(KEMPrekeyKinds)
	if !ok {
		kem, ok := pk.KEMPrekey(h.kemID)
		if !ok || kem == nil {
			if oneTime {
				return nil, fmt.Errorf("%w (KEM prekey %d)", ErrPrekeyConsumed, h.kemID)
			}
			return nil, fmt.Errorf("%w (KEM prekey %d)", ErrUnknownPrekey, h.kemID)
		}
		return kem, nil
	}
	want, other := kinds.LastResortKEMPrekey, kinds.OneTimeKEMPrekey
	if oneTime {
		want, other = other, want
	}
	if kem, ok := want(h.kemID); ok && kem != nil {
		return kem, nil
	}
	if kem, ok := other(h.kemID); ok && kem != nil {
		if oneTime {
			return nil, fmt.Errorf("%w (KEM prekey %d is a last-resort prekey, marked one-time)", ErrPrekeyKind, h.kemID)
		}
		return nil, fmt.Errorf("%w (KEM prekey %d is a one-time prekey, not marked so)", ErrPrekeyKind, h.kemID)
	}
	if oneTime {
		return nil, fmt.Errorf("%w (KEM prekey %d)", ErrPrekeyConsumed, h.kemID)
	}
	return nil, fmt.Errorf("%w (KEM prekey %d)", ErrUnknownPrekey, h.kemID)
}

// finish completes the responder's side of PQXDH once the initiator's
// device certificate is known and verified.
func (r *response) finish(me *LocalIdentity, h *initialHeader, peer *keys.DeviceCertificate) (*agreement, error) {
	pairs := []dhPair{
		{r.spk, peer.IdentityDH}, // DH1 = DH(SPK_B, IK_A)
		{me.IdentityDH, h.ek},    // DH2 = DH(IK_B, EK_A)
	}
	if r.opk != nil {
		pairs = append(pairs, dhPair{r.opk, h.ek}) // DH4 = DH(OPK_B, EK_A)
	}
	dh, err := dhAll(pairs...)
	if err != nil {
		return nil, err
	}
	defer clearAll(dh...)
	var dh4 []byte
	if r.opk != nil {
		dh4 = dh[2]
	}
	sk, err := derive(dh[0], dh[1], r.dh3, dh4, r.ss)
	if err != nil {
		return nil, err
	}
	return &agreement{
		keys: sk,
		ad: associatedData(peer.IdentityDH, me.Device.IdentityDH,
			peer.Account, me.Account.Public(), kemKeyHash(&r.kemPub)),
		initialID: initialIDOf(h.ek, h.ct[:]),
	}, nil
}

func (r *response) wipe() {
	clearAll(r.dh3, r.ss)
	clear(r.sealKey[:])
}
