package protocol

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sotto-im/sotto/keys"
)

// The Double Ratchet with header encryption (Signal's Double Ratchet
// specification, section 4), as Sotto uses it after PQXDH.
//
// A ratchet message is laid out as follows:
//
//	offset  size  field
//	0       1     version (RatchetVersion = 0x01)
//	1       24    header nonce, random
//	25      56    encrypted header: XChaCha20-Poly1305 under the sending
//	              header key, AD = the version byte, over the 40-byte header
//	              ratchet public key (32) || PN (uint32 BE) || N (uint32 BE)
//	81      n+16  body: ChaCha20-Poly1305 under the key and nonce derived
//	              from the message key, AD = caller's AD || bytes 1..81
//
// The receiver tries the header under its current receiving header key, then
// under the next header key (a DH ratchet step), then under the header keys
// of the old receiving chains it still holds skipped message keys or replay
// records for. Header keys are independent random values, so at most one of
// them opens a given header and the order only affects speed; the current
// chain is tried first because it is by far the most common case.
//
// The sending half of a DH ratchet step is taken lazily: Decrypt has no
// randomness, so after a step it only derives the new receiving chain, and
// the next Encrypt draws the new ratchet key pair and derives the sending
// chain. The keys are the same as in the specification's eager order.

// Wire constants of a ratchet message.
const (
	// RatchetVersion is the first byte of every ratchet message.
	RatchetVersion = 1

	// RatchetHeaderSize is the plaintext header: ratchet public key, PN, N.
	RatchetHeaderSize = keys.DHSize + 4 + 4

	// RatchetHeaderNonceSize is the random XChaCha20-Poly1305 nonce that
	// precedes the encrypted header.
	RatchetHeaderNonceSize = chacha20poly1305.NonceSizeX

	// RatchetTagSize is the Poly1305 tag length of both AEADs.
	RatchetTagSize = chacha20poly1305.Overhead

	// RatchetEncHeaderSize is the header nonce plus the sealed header.
	RatchetEncHeaderSize = RatchetHeaderNonceSize + RatchetHeaderSize + RatchetTagSize

	// RatchetOverhead is the size of a ratchet message with an empty plaintext.
	RatchetOverhead = 1 + RatchetEncHeaderSize + RatchetTagSize

	// MaxRatchetPlaintext is the longest plaintext Encrypt accepts.
	MaxRatchetPlaintext = 64 << 10

	// MaxRatchetMessage is the longest message Decrypt accepts.
	MaxRatchetMessage = RatchetOverhead + MaxRatchetPlaintext
)

// Limits on the state a ratchet keeps for late and lost messages.
const (
	// MaxSkip is the most message keys one chain may skip in one message:
	// a header whose N (or PN, for the previous chain) lies more than MaxSkip
	// beyond the next expected position is rejected with ErrTooFarAhead.
	MaxSkip = 1000

	// MaxSkippedKeys is the most skipped message keys stored in total. When
	// a message would store more, the oldest are discarded first.
	MaxSkippedKeys = 2000

	// MaxOldChains is how many previous receiving chains (their header keys
	// and replay positions) are kept after DH ratchet steps. A message on an
	// older chain no longer opens and fails with ErrAuth. Every delivery
	// receipt that comes back starts a new chain, and a copy that went
	// through a mailbox can arrive many round trips after later messages
	// went straight through, so this is well above the 5 a transport that
	// keeps order would need.
	MaxOldChains = 32

	// MaxDiscardedRecord is how many discarded skipped positions are
	// remembered so that their messages fail with ErrKeyDiscarded rather
	// than ErrDuplicate. Older discarded positions report ErrDuplicate.
	MaxDiscardedRecord = 1000
)

// Errors returned by the ratchet. Every error from Decrypt leaves the state
// unchanged.
var (
	// ErrMalformed: the message is not a well-formed ratchet message (size,
	// version) or its authenticated header is inconsistent.
	ErrMalformed = errors.New("protocol: ratchet: malformed message")
	// ErrAuth: no header key opens the header, or the body fails
	// authentication.
	ErrAuth = errors.New("protocol: ratchet: message authentication failed")
	// ErrDuplicate: the message was already decrypted.
	ErrDuplicate = errors.New("protocol: ratchet: duplicate message")
	// ErrTooFarAhead: accepting the message would skip more than MaxSkip
	// message keys of one chain.
	ErrTooFarAhead = errors.New("protocol: ratchet: message too far ahead")
	// ErrKeyDiscarded: the message was skipped earlier, but its key was
	// discarded to respect MaxSkippedKeys; it can no longer be decrypted.
	ErrKeyDiscarded = errors.New("protocol: ratchet: skipped message key was discarded")
	// ErrNoSendingChain: the responder cannot send before it has received a
	// message, because its only key pair is its prekey and it never sends on
	// a chain that a fresh DH step did not produce.
	ErrNoSendingChain = errors.New("protocol: ratchet: no sending chain before the first received message")
	// ErrPlaintextTooLarge: Encrypt was given more than MaxRatchetPlaintext bytes.
	ErrPlaintextTooLarge = errors.New("protocol: ratchet: plaintext too large")
	// ErrChainExhausted: a chain reached 2^32-1 messages.
	ErrChainExhausted = errors.New("protocol: ratchet: chain message counter exhausted")
)

// Ratchet is the state of one Double Ratchet session. It is not safe for
// concurrent use. A failed Decrypt never changes it; Clone makes an
// independent copy.
type Ratchet struct {
	rk  [ratchetKeySize]byte
	dhs *keys.DHPrivate // our ratchet key pair (Bob's prekey until he sends)
	dhr keys.DHPublic   // peer's current ratchet public key, if hasDHr

	cks  [ratchetKeySize]byte // sending chain key, if hasCKs
	hks  [ratchetKeySize]byte // sending header key, if hasHKs
	nhks [ratchetKeySize]byte // next sending header key, if hasNHKs
	ns   uint32               // messages sent on the sending chain
	pn   uint32               // messages sent on the previous sending chain

	ckr  [ratchetKeySize]byte // receiving chain key, if hasRecv
	hkr  [ratchetKeySize]byte // receiving header key, if hasRecv
	nhkr [ratchetKeySize]byte // next receiving header key (always set)
	nr   uint32               // next expected N on the receiving chain

	hasDHr, hasCKs, hasHKs, hasNHKs, hasRecv bool

	old       []oldChain   // previous receiving chains, oldest first
	skipped   []skippedKey // skipped message keys, oldest first
	discarded []chainPos   // positions whose skipped keys were discarded, oldest first

	kdf *kdf // scratch for the per-message key schedule; not state
}

// keySchedule returns r's scratch key schedule, creating it on first use.
func (r *Ratchet) keySchedule() *kdf {
	if r.kdf == nil {
		r.kdf = newKDF()
	}
	return r.kdf
}

// oldChain is a receiving chain that a DH step closed: its header key and the
// number of messages it carried (the peer's PN), all of which were either
// received or stored as skipped keys.
type oldChain struct {
	hk  [ratchetKeySize]byte
	end uint32
}

// skippedKey is the message key of a message not yet received.
type skippedKey struct {
	hk [ratchetKeySize]byte
	n  uint32
	mk [ratchetKeySize]byte
}

// chainPos names a message by its chain's header key and its N.
type chainPos struct {
	hk [ratchetKeySize]byte
	n  uint32
}

// NewRatchetAlice starts the initiator's side from the shared secret sk,
// the responder's ratchet (signed prekey) public key and the two shared
// header keys. Alice can send immediately.
func NewRatchetAlice(rand io.Reader, sk [32]byte, bobPub keys.DHPublic, sharedHKa, sharedNHKb [32]byte) (*Ratchet, error) {
	if _, err := keys.ParseDHPublic(bobPub[:]); err != nil {
		return nil, fmt.Errorf("protocol: ratchet: responder key: %w", err)
	}
	dhs, err := keys.GenerateDH(rand)
	if err != nil {
		return nil, fmt.Errorf("protocol: ratchet: %w", err)
	}
	dh, err := dhs.DH(bobPub)
	if err != nil {
		return nil, fmt.Errorf("protocol: ratchet: %w", err)
	}
	r := &Ratchet{dhs: dhs, dhr: bobPub, hasDHr: true}
	r.rk, r.cks, r.nhks = kdfRK(&sk, dh)
	clear(dh)
	r.hks = sharedHKa
	r.nhkr = sharedNHKb
	r.hasCKs, r.hasHKs, r.hasNHKs = true, true, true
	return r, nil
}

// NewRatchetBob starts the responder's side from the shared secret sk, the
// private key of the signed prekey Alice used, and the two shared header
// keys. Bob has no sending chain until he has received a message.
func NewRatchetBob(sk [32]byte, bobPriv *keys.DHPrivate, sharedHKa, sharedNHKb [32]byte) *Ratchet {
	return &Ratchet{
		rk:      sk,
		dhs:     bobPriv,
		nhks:    sharedNHKb,
		hasNHKs: true,
		nhkr:    sharedHKa,
	}
}

// Clone returns an independent copy of r.
func (r *Ratchet) Clone() *Ratchet {
	c := *r
	c.kdf = nil
	c.old = append([]oldChain(nil), r.old...)
	c.skipped = append([]skippedKey(nil), r.skipped...)
	c.discarded = append([]chainPos(nil), r.discarded...)
	return &c
}

// draft returns a copy of r to try an operation on, to be committed by
// replacing r with it or dropped. Unlike Clone it shares r's scratch
// space (the key schedule, which holds no state across calls but a cache
// checked against its key), so r and the draft must not be used at the
// same time.
func (r *Ratchet) draft() *Ratchet {
	c := r.Clone()
	c.kdf = r.keySchedule()
	return c
}

// sendDraft is draft for Encrypt, which sets only scalar fields (the
// sending chain) and never touches the receiving chains' lists: the copy
// shares those lists with r instead of copying them.
func (r *Ratchet) sendDraft() *Ratchet {
	c := *r
	c.kdf = r.keySchedule()
	return &c
}

// neverSent reports whether no message was ever encrypted: the ratchet key
// is still the one it started with (a responder's signed prekey).
func (r *Ratchet) neverSent() bool { return !r.hasCKs && r.ns == 0 && r.pn == 0 }

// CanSend reports whether Encrypt can produce a message: false only for a
// responder that has not received anything yet.
func (r *Ratchet) CanSend() bool { return r.hasCKs || r.hasDHr }

// Encrypt seals plaintext as the next message of the sending chain, binding
// ad. It returns the message and its per-message secret. rand supplies the
// header nonce and, on the first message after a DH step, the new ratchet
// key pair. On error r is unchanged.
func (r *Ratchet) Encrypt(rand io.Reader, plaintext, ad []byte) (msg []byte, secret [32]byte, err error) {
	if len(plaintext) > MaxRatchetPlaintext {
		return nil, secret, ErrPlaintextTooLarge
	}
	// Work on locals; commit at the end.
	dhs, rk, cks, nhks, ns := r.dhs, r.rk, r.cks, r.nhks, r.ns
	if !r.hasCKs {
		if !r.hasDHr {
			return nil, secret, ErrNoSendingChain
		}
		// The sending half of the last DH step, with a fresh key pair.
		dhs, err = keys.GenerateDH(rand)
		if err != nil {
			return nil, secret, fmt.Errorf("protocol: ratchet: %w", err)
		}
		dh, err := dhs.DH(r.dhr)
		if err != nil {
			return nil, secret, fmt.Errorf("protocol: ratchet: %w", err)
		}
		rk, cks, nhks = kdfRK(&r.rk, dh)
		clear(dh)
		ns = 0
	}
	if ns == math.MaxUint32 {
		return nil, secret, ErrChainExhausted
	}

	msg = make([]byte, RatchetOverhead+len(plaintext))
	msg[0] = RatchetVersion
	nonce := msg[1 : 1+RatchetHeaderNonceSize]
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, secret, fmt.Errorf("protocol: ratchet: reading header nonce: %w", err)
	}
	k := r.keySchedule()
	pub := dhs.Public()
	copy(k.hdr[:keys.DHSize], pub[:])
	binary.BigEndian.PutUint32(k.hdr[keys.DHSize:], r.pn)
	binary.BigEndian.PutUint32(k.hdr[keys.DHSize+4:], ns)
	haead, err := k.headerAEAD(&r.hks)
	if err != nil {
		return nil, secret, err
	}
	haead.Seal(msg[1+RatchetHeaderNonceSize:1+RatchetHeaderNonceSize], nonce, k.hdr[:], msg[:1])
	encHeader := msg[1 : 1+RatchetEncHeaderSize]

	mk, nextCK := k.chain(&cks)
	secret, err = k.sealBody(msg[1+RatchetEncHeaderSize:1+RatchetEncHeaderSize], &mk, plaintext, ad, encHeader)
	clear(mk[:])
	if err != nil {
		return nil, [32]byte{}, err
	}

	// Commit.
	if !r.hasCKs {
		r.dhs, r.rk, r.nhks = dhs, rk, nhks
		r.hasCKs, r.hasNHKs = true, true
	}
	r.cks = nextCK
	r.ns = ns + 1
	return msg, secret, nil
}

// headerAEAD returns XChaCha20-Poly1305 under hk, reusing the last one made
// when the key is the same (the common case: every message of a chain).
func (k *kdf) headerAEAD(hk *[ratchetKeySize]byte) (cipher.AEAD, error) {
	// A plain comparison: hk is always one of the state's own header keys
	// (callers pass &r.hks, &r.hkr, &r.nhkr or an old chain's), and so is
	// k.hkey; nothing an attacker sends is compared here.
	if k.haead != nil && k.hkey == *hk {
		return k.haead, nil
	}
	a, err := chacha20poly1305.NewX(hk[:])
	if err != nil {
		return nil, fmt.Errorf("protocol: ratchet: %w", err)
	}
	k.haead, k.hkey = a, *hk
	return a, nil
}

// bodyAD assembles the body's associated data, caller's AD || encrypted
// header, in the scratch buffer.
func (k *kdf) bodyAD(ad, encHeader []byte) []byte {
	k.ad = append(append(k.ad[:0], ad...), encHeader...)
	return k.ad
}

// sealBody derives the body key from mk and appends the body ciphertext to
// dst. It returns the message secret.
func (k *kdf) sealBody(dst []byte, mk *[ratchetKeySize]byte, plaintext, ad, encHeader []byte) ([32]byte, error) {
	var secret [32]byte
	k.key, k.nonce, secret = k.messageKeys(mk)
	defer clear(k.key[:])
	aead, err := chacha20poly1305.New(k.key[:])
	if err != nil {
		return [32]byte{}, fmt.Errorf("protocol: ratchet: %w", err)
	}
	aead.Seal(dst, k.nonce[:], plaintext, k.bodyAD(ad, encHeader))
	return secret, nil
}

// openBody derives the body key from mk, authenticates and decrypts body.
func (k *kdf) openBody(mk *[ratchetKeySize]byte, body, ad, encHeader []byte) ([]byte, [32]byte, error) {
	var secret [32]byte
	k.key, k.nonce, secret = k.messageKeys(mk)
	defer clear(k.key[:])
	aead, err := chacha20poly1305.New(k.key[:])
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("protocol: ratchet: %w", err)
	}
	out, err := aead.Open(make([]byte, 0, len(body)-RatchetTagSize), k.nonce[:], body, k.bodyAD(ad, encHeader))
	if err != nil {
		return nil, [32]byte{}, ErrAuth
	}
	return out, secret, nil
}

// header is a decrypted message header.
type header struct {
	dh keys.DHPublic
	pn uint32
	n  uint32
}

// openHeader tries to open the encrypted header under hk.
func (r *Ratchet) openHeader(hk *[ratchetKeySize]byte, msg []byte) (hdr header, ok bool, err error) {
	k := r.keySchedule()
	haead, err := k.headerAEAD(hk)
	if err != nil {
		return hdr, false, err
	}
	plain := k.hdr[:]
	nonce := msg[1 : 1+RatchetHeaderNonceSize]
	sealed := msg[1+RatchetHeaderNonceSize : 1+RatchetEncHeaderSize]
	if _, err := haead.Open(plain[:0], nonce, sealed, msg[:1]); err != nil {
		return hdr, false, nil
	}
	copy(hdr.dh[:], plain[:keys.DHSize])
	hdr.pn = binary.BigEndian.Uint32(plain[keys.DHSize:])
	hdr.n = binary.BigEndian.Uint32(plain[keys.DHSize+4:])
	return hdr, true, nil
}

// checkMessage applies the structural rules every message must pass before
// any cryptography.
func checkMessage(msg []byte) error {
	switch {
	case len(msg) < RatchetOverhead:
		return fmt.Errorf("%w: %d bytes, shorter than %d", ErrMalformed, len(msg), RatchetOverhead)
	case len(msg) > MaxRatchetMessage:
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrMalformed, len(msg), MaxRatchetMessage)
	case msg[0] != RatchetVersion:
		return fmt.Errorf("%w: unknown version %d", ErrMalformed, msg[0])
	}
	return nil
}

// Decrypt authenticates and decrypts msg with the caller's ad and returns
// the plaintext and the per-message secret. It computes everything on the
// side and changes r only once the body has authenticated; on any error r
// is exactly as before.
func (r *Ratchet) Decrypt(msg, ad []byte) (plaintext []byte, secret [32]byte, err error) {
	if err := checkMessage(msg); err != nil {
		return nil, secret, err
	}
	encHeader := msg[1 : 1+RatchetEncHeaderSize]
	body := msg[1+RatchetEncHeaderSize:]

	// 1. The current receiving chain (including its skipped keys).
	if r.hasRecv {
		hdr, ok, err := r.openHeader(&r.hkr, msg)
		if err != nil {
			return nil, secret, err
		}
		if ok {
			if !hdr.dh.Equal(r.dhr) {
				return nil, secret, fmt.Errorf("%w: ratchet key differs from the chain's", ErrMalformed)
			}
			if hdr.n < r.nr {
				return r.decryptSkipped(&r.hkr, hdr.n, body, ad, encHeader)
			}
			if hdr.n-r.nr > MaxSkip {
				return nil, secret, ErrTooFarAhead
			}
			var fresh []skippedKey
			if hdr.n > r.nr {
				fresh = make([]skippedKey, 0, hdr.n-r.nr)
			}
			ck := r.ckr
			fresh = r.skipChain(fresh, &ck, &r.hkr, r.nr, hdr.n)
			mk, next := r.keySchedule().chain(&ck)
			plaintext, secret, err = r.decryptWith(&mk, body, ad, encHeader)
			if err != nil {
				return nil, [32]byte{}, err
			}
			r.ckr = next
			r.nr = hdr.n + 1
			r.storeSkipped(fresh)
			return plaintext, secret, nil
		}
	}

	// 2. The next receiving header key: a DH ratchet step. Only allowed once
	// our own last step is complete (we have a next sending header key).
	if r.hasNHKs {
		hdr, ok, err := r.openHeader(&r.nhkr, msg)
		if err != nil {
			return nil, secret, err
		}
		if ok {
			return r.decryptStep(hdr, body, ad, encHeader)
		}
	}

	// 3. Old receiving chains, newest first: late messages and replays.
	for i := len(r.old) - 1; i >= 0; i-- {
		oc := &r.old[i]
		hdr, ok, err := r.openHeader(&oc.hk, msg)
		if err != nil {
			return nil, secret, err
		}
		if ok {
			if hdr.n >= oc.end {
				return nil, secret, fmt.Errorf("%w: N beyond the end of a closed chain", ErrMalformed)
			}
			return r.decryptSkipped(&oc.hk, hdr.n, body, ad, encHeader)
		}
	}
	return nil, secret, ErrAuth
}

// decryptStep handles a header that opened under the next receiving header
// key: skip the rest of the current chain up to PN, derive the new receiving
// chain, skip to N, decrypt, and only then commit.
func (r *Ratchet) decryptStep(hdr header, body, ad, encHeader []byte) ([]byte, [32]byte, error) {
	var secret [32]byte
	peer, err := keys.ParseDHPublic(hdr.dh[:])
	if err != nil {
		return nil, secret, fmt.Errorf("%w: ratchet key: %w", ErrMalformed, err)
	}
	if r.hasRecv {
		if hdr.pn < r.nr {
			return nil, secret, fmt.Errorf("%w: PN below messages already received", ErrMalformed)
		}
		if hdr.pn-r.nr > MaxSkip {
			return nil, secret, ErrTooFarAhead
		}
	} else if hdr.pn != 0 {
		return nil, secret, fmt.Errorf("%w: PN on the first receiving chain", ErrMalformed)
	}
	if hdr.n > MaxSkip {
		return nil, secret, ErrTooFarAhead
	}
	if r.hasDHr && peer.Equal(r.dhr) {
		return nil, secret, fmt.Errorf("%w: DH step reuses the current ratchet key", ErrMalformed)
	}

	var fresh []skippedKey
	if total := int(hdr.n); r.hasRecv {
		total += int(hdr.pn - r.nr)
		fresh = make([]skippedKey, 0, total)
	} else if total > 0 {
		fresh = make([]skippedKey, 0, total)
	}
	if r.hasRecv {
		ck := r.ckr
		fresh = r.skipChain(fresh, &ck, &r.hkr, r.nr, hdr.pn)
	}
	dh, err := r.dhs.DH(peer)
	if err != nil {
		return nil, secret, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	rk, ckr, nhkr := kdfRK(&r.rk, dh)
	clear(dh)
	hkr := r.nhkr
	fresh = r.skipChain(fresh, &ckr, &hkr, 0, hdr.n)
	mk, next := r.keySchedule().chain(&ckr)
	plaintext, secret, err := r.decryptWith(&mk, body, ad, encHeader)
	if err != nil {
		return nil, [32]byte{}, err
	}

	// Commit the receiving half of the step.
	if r.hasRecv {
		r.old = append(r.old, oldChain{hk: r.hkr, end: hdr.pn})
	}
	r.pn = r.ns
	r.ns = 0
	r.hks = r.nhks
	r.hasHKs = true
	r.nhks = [ratchetKeySize]byte{}
	r.hasNHKs = false
	r.cks = [ratchetKeySize]byte{}
	r.hasCKs = false
	r.dhr = peer
	r.hasDHr = true
	r.rk = rk
	r.hkr = hkr
	r.ckr = next
	r.nr = hdr.n + 1
	r.nhkr = nhkr
	r.hasRecv = true
	r.storeSkipped(fresh)
	r.dropOldChains()
	return plaintext, secret, nil
}

// decryptSkipped handles a message at a position below the receiving
// position of the chain with header key hk: a skipped key, a discarded
// one, or a duplicate.
func (r *Ratchet) decryptSkipped(hk *[ratchetKeySize]byte, n uint32, body, ad, encHeader []byte) ([]byte, [32]byte, error) {
	// Plain comparisons: hk is the state's receiving header key or an old
	// chain's (the one the header opened under), and the skipped and
	// discarded lists hold state keys too; nothing an attacker sends is
	// compared here.
	for i := range r.skipped {
		s := &r.skipped[i]
		if s.n == n && s.hk == *hk {
			plaintext, secret, err := r.decryptWith(&s.mk, body, ad, encHeader)
			if err != nil {
				return nil, [32]byte{}, err
			}
			clear(s.mk[:])
			r.skipped = append(r.skipped[:i], r.skipped[i+1:]...)
			return plaintext, secret, nil
		}
	}
	for _, d := range r.discarded {
		if d.n == n && d.hk == *hk { // state keys only, as above
			return nil, [32]byte{}, ErrKeyDiscarded
		}
	}
	return nil, [32]byte{}, ErrDuplicate
}

// decryptWith derives the body key from mk and opens the body.
func (r *Ratchet) decryptWith(mk *[ratchetKeySize]byte, body, ad, encHeader []byte) ([]byte, [32]byte, error) {
	return r.keySchedule().openBody(mk, body, ad, encHeader)
}

// skipChain advances ck from position from to position until, appending the
// message key of every position in between to dst.
func (r *Ratchet) skipChain(dst []skippedKey, ck *[ratchetKeySize]byte, hk *[ratchetKeySize]byte, from, until uint32) []skippedKey {
	for n := from; n < until; n++ {
		mk, next := r.keySchedule().chain(ck)
		dst = append(dst, skippedKey{hk: *hk, n: n, mk: mk})
		*ck = next
	}
	return dst
}

// storeSkipped appends fresh skipped keys and discards the oldest beyond
// MaxSkippedKeys, remembering their positions.
func (r *Ratchet) storeSkipped(fresh []skippedKey) {
	if len(fresh) == 0 {
		return
	}
	r.skipped = append(r.skipped, fresh...)
	if over := len(r.skipped) - MaxSkippedKeys; over > 0 {
		for i := range over {
			s := &r.skipped[i]
			r.discarded = append(r.discarded, chainPos{hk: s.hk, n: s.n})
			clear(s.mk[:])
		}
		r.skipped = append(r.skipped[:0], r.skipped[over:]...)
		if extra := len(r.discarded) - MaxDiscardedRecord; extra > 0 {
			r.discarded = append(r.discarded[:0], r.discarded[extra:]...)
		}
	}
}

// dropOldChains forgets the oldest receiving chains beyond MaxOldChains,
// with their skipped keys and discard records.
func (r *Ratchet) dropOldChains() {
	extra := len(r.old) - MaxOldChains
	if extra <= 0 {
		return
	}
	gone := r.old[:extra]
	// Both sides of these comparisons are keys this state holds; nothing
	// an attacker sends is compared here.
	isGone := func(hk *[ratchetKeySize]byte) bool {
		for i := range gone {
			if gone[i].hk == *hk {
				return true
			}
		}
		return false
	}
	keep := r.skipped[:0]
	for _, s := range r.skipped {
		if !isGone(&s.hk) {
			keep = append(keep, s)
		}
	}
	clear(r.skipped[len(keep):])
	r.skipped = keep
	keepD := r.discarded[:0]
	for _, d := range r.discarded {
		if !isGone(&d.hk) {
			keepD = append(keepD, d)
		}
	}
	r.discarded = keepD
	r.old = append(r.old[:0], r.old[extra:]...)
}
