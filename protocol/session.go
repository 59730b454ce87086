package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sotto-im/sotto/keys"
)

// A session is one pairwise Double Ratchet conversation between two
// devices, set up by PQXDH. It turns inner messages into envelopes and back.
//
// Envelope ciphertext (the payload), by kind:
//
//	initial (0x01): kind || initial header || sealed identity || ratchet message
//	message (0x02): kind || ratchet message
//
// The initiator seals every message with the initial prefix (kind, header
// and sealed identity, the same bytes each time) under the responder's
// intro tag until the first message from the responder opens; after that
// it uses kind 0x02 and the session's pairwise tags, as the responder
// always does. The responder recognises later initial-prefixed messages of
// an existing session by the prefix (see EnvelopeInitialID).
//
// Initial header (1134 bytes, integers big-endian):
//
//	0     1     kind = 0x01
//	1     1     flags: 0x01 a one-time X25519 prekey was used,
//	                   0x02 the KEM prekey is a one-time prekey; other bits 0
//	2     4     signed prekey ID (SPK_B)
//	6     4     KEM prekey ID (one-time or last-resort PQPK_B)
//	10    4     one-time X25519 prekey ID (OPK_B), 0 when flag 0x01 is clear
//	14    32    EK_A
//	46    1088  ML-KEM-768 ciphertext CT
//
// The prekey IDs travel in clear, as in Signal's PreKeySignalMessage: the
// responder needs SPK_B and PQPK_B to derive the key that opens the sealed
// identity, and trying every stored prekey instead would cost one ML-KEM
// decapsulation per candidate. They tell a mailbox nothing the intro tag
// does not: whose bundle was used.
//
// Sealed identity (219 bytes): ChaCha20-Poly1305 with the identity seal key
// (see identitySealKey), a zero nonce (the key is used once: EK_A is
// fresh, and resending the same prefix reuses the same bytes), the 1134
// header bytes as additional data, over 203 bytes of plaintext:
//
//	0     1     n, the length of the device certificate (1..202)
//	1     n     the initiator's device certificate (keys.DeviceCertificate;
//	            its account field is the initiator's account key)
//	1+n   202-n zero bytes
//
// A ratchet message's additional data is the session AD (ADSize bytes)
// followed by the envelope's version, tag and expiry (uint64 Unix
// seconds), so every outer field but the delete hash is authenticated;
// the delete hash is checked against the ratchet's message secret after
// decryption. The ratchet's plaintext is Pad(inner message), and the inner
// message is:
//
//	0     1     inner version = 0x01
//	1     32    sender account key (must equal the session's peer)
//	33    16    message ID
//	49    8     sent time, Unix milliseconds (int64)
//	57    8     conversation sequence (uint64; 0 for receipts)
//	65    1     content type
//	66    n     body (the rest; receipts: a multiple of 16 bytes)

// Payload kinds and initial header flags.
const (
	kindInitial byte = 0x01
	kindMessage byte = 0x02

	flagOneTimeDH  byte = 0x01
	flagOneTimeKEM byte = 0x02
	knownFlags          = flagOneTimeDH | flagOneTimeKEM
)

// Sizes of the initial message and the inner message.
const (
	// InitialHeaderSize is the length of the initial header, kind included.
	InitialHeaderSize = 1 + 1 + 4 + 4 + 4 + keys.DHSize + keys.KEMCiphertextSize

	// maxDeviceCertSize is the largest device certificate encoding.
	maxDeviceCertSize = 1 + keys.AccountSize + 1 + keys.MaxPeerIDSize + keys.DHSize + 8 + keys.SignatureSize

	sealedIdentityPlainSize = 1 + maxDeviceCertSize

	// SealedIdentitySize is the length of the sealed identity.
	SealedIdentitySize = sealedIdentityPlainSize + chacha20poly1305.Overhead

	// InitialPrefixSize is the length of the prefix that initial messages
	// carry before the ratchet message.
	InitialPrefixSize = InitialHeaderSize + SealedIdentitySize

	innerVersion = 1

	// MessageHeaderSize is the length of the inner message before the body.
	MessageHeaderSize = 1 + keys.AccountSize + 16 + 8 + 8 + 1

	// MaxBodySize is the longest message body a session seals.
	MaxBodySize = MaxPlaintextSize - MessageHeaderSize

	// MessageIDSize is the length of a message ID; a receipt's body is a
	// sequence of them.
	MessageIDSize = 16
)

// Errors about sessions and inner messages.
var (
	ErrUnknownKind      = errors.New("protocol: unknown payload kind")
	ErrNotForMe         = errors.New("protocol: envelope is not under one of this account's intro tags")
	ErrNotThisSession   = errors.New("protocol: envelope belongs to a different session")
	ErrSenderMismatch   = errors.New("protocol: inner message sender is not the session's peer")
	ErrMalformedMessage = errors.New("protocol: malformed inner message")
	ErrBodyTooLarge     = fmt.Errorf("protocol: message body longer than %d bytes", MaxBodySize)
	ErrBadTTL           = fmt.Errorf("protocol: message lifetime must be between 1s and %s", MaxTTL)
	ErrDeleteHash       = errors.New("protocol: envelope delete hash does not match the message")
	ErrBadSession       = errors.New("protocol: malformed session state")
)

// ContentType says what a message body holds. Types this version does not
// know are carried through unchanged.
type ContentType uint8

// Content types.
const (
	ContentText    ContentType = 1
	ContentReceipt ContentType = 2 // body: concatenated 16-byte message IDs
	// ContentMailboxes names the version 2 mailboxes the sender receives
	// at (SPEC.md, "Choosing and announcing mailboxes"); package mailbox
	// encodes and checks the body.
	ContentMailboxes ContentType = 3
)

// Message is the inner, sealed message: all of it travels only inside the
// encryption.
type Message struct {
	Sender keys.AccountPublic
	ID     [MessageIDSize]byte
	Sent   time.Time // Unix milliseconds precision
	// Seq is the sender's position for this message in the conversation:
	// 1 for the first message it sends to this peer, then one more for
	// each. The receiver shows messages in this order. Receipts carry 0.
	Seq  uint64
	Type ContentType
	Body []byte
}

// marshal encodes m (the inner message, before padding).
func (m *Message) marshal() ([]byte, error) {
	if len(m.Body) > MaxBodySize {
		return nil, ErrBodyTooLarge
	}
	if m.Type == ContentReceipt && len(m.Body)%MessageIDSize != 0 {
		return nil, fmt.Errorf("%w: receipt body is not a list of message IDs", ErrMalformedMessage)
	}
	b := make([]byte, 0, MessageHeaderSize+len(m.Body))
	b = append(b, innerVersion)
	b = append(b, m.Sender[:]...)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Sent.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = append(b, byte(m.Type))
	return append(b, m.Body...), nil
}

// parseMessage decodes an inner message. The body does not alias b.
func parseMessage(b []byte) (Message, error) {
	var m Message
	if len(b) < MessageHeaderSize {
		return m, fmt.Errorf("%w: truncated", ErrMalformedMessage)
	}
	if b[0] != innerVersion {
		return m, fmt.Errorf("%w: unknown version %d", ErrMalformedMessage, b[0])
	}
	copy(m.Sender[:], b[1:33])
	copy(m.ID[:], b[33:49])
	m.Sent = time.UnixMilli(int64(binary.BigEndian.Uint64(b[49:57]))).UTC()
	m.Seq = binary.BigEndian.Uint64(b[57:65])
	m.Type = ContentType(b[65])
	m.Body = append([]byte{}, b[MessageHeaderSize:]...)
	if len(m.Body) > MaxBodySize {
		return Message{}, ErrBodyTooLarge
	}
	if m.Type == ContentReceipt && len(m.Body)%MessageIDSize != 0 {
		return Message{}, fmt.Errorf("%w: receipt body is not a list of message IDs", ErrMalformedMessage)
	}
	return m, nil
}

// initialHeader is the clear part of an initial message.
type initialHeader struct {
	flags byte
	spkID keys.PrekeyID
	kemID keys.PrekeyID
	otpID keys.PrekeyID
	ek    keys.DHPublic
	ct    [keys.KEMCiphertextSize]byte
}

func (h *initialHeader) appendTo(b []byte) []byte {
	b = append(b, kindInitial, h.flags)
	b = binary.BigEndian.AppendUint32(b, uint32(h.spkID))
	b = binary.BigEndian.AppendUint32(b, uint32(h.kemID))
	b = binary.BigEndian.AppendUint32(b, uint32(h.otpID))
	b = append(b, h.ek[:]...)
	return append(b, h.ct[:]...)
}

// parseInitialHeader decodes the header at the start of b, which may hold
// more.
func parseInitialHeader(b []byte) (initialHeader, error) {
	var h initialHeader
	if len(b) < InitialHeaderSize {
		return h, fmt.Errorf("%w: truncated", ErrMalformedInitial)
	}
	if b[0] != kindInitial {
		return h, fmt.Errorf("%w: kind %d", ErrMalformedInitial, b[0])
	}
	h.flags = b[1]
	if h.flags&^knownFlags != 0 {
		return h, fmt.Errorf("%w: unknown flags %#x", ErrMalformedInitial, h.flags)
	}
	h.spkID = keys.PrekeyID(binary.BigEndian.Uint32(b[2:]))
	h.kemID = keys.PrekeyID(binary.BigEndian.Uint32(b[6:]))
	h.otpID = keys.PrekeyID(binary.BigEndian.Uint32(b[10:]))
	if h.flags&flagOneTimeDH == 0 && h.otpID != 0 {
		return h, fmt.Errorf("%w: one-time prekey ID without its flag", ErrMalformedInitial)
	}
	ek, err := keys.ParseDHPublic(b[14 : 14+keys.DHSize])
	if err != nil {
		return h, fmt.Errorf("%w: ephemeral key: %w", ErrMalformedInitial, err)
	}
	h.ek = ek
	copy(h.ct[:], b[14+keys.DHSize:InitialHeaderSize])
	return h, nil
}

// sealIdentity encrypts the device certificate under the identity seal key.
func sealIdentity(key [32]byte, header []byte, cert *keys.DeviceCertificate) ([]byte, error) {
	enc := cert.Marshal()
	if len(enc) == 0 || len(enc) > maxDeviceCertSize {
		return nil, ErrLocalIdentity
	}
	pt := make([]byte, sealedIdentityPlainSize)
	pt[0] = byte(len(enc))
	copy(pt[1:], enc)
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return nil, fmt.Errorf("protocol: identity seal: %w", err)
	}
	var nonce [chacha20poly1305.NonceSize]byte
	return aead.Seal(nil, nonce[:], pt, header), nil
}

// openIdentity decrypts and parses the sealed device certificate and
// verifies its signature.
func openIdentity(key [32]byte, header, sealed []byte) (keys.DeviceCertificate, error) {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return keys.DeviceCertificate{}, fmt.Errorf("protocol: identity seal: %w", err)
	}
	var nonce [chacha20poly1305.NonceSize]byte
	pt, err := aead.Open(nil, nonce[:], sealed, header)
	if err != nil {
		return keys.DeviceCertificate{}, ErrSealedIdentity
	}
	n := int(pt[0])
	if n == 0 || n > maxDeviceCertSize {
		return keys.DeviceCertificate{}, fmt.Errorf("%w: certificate length %d", ErrMalformedInitial, n)
	}
	for _, c := range pt[1+n:] {
		if c != 0 {
			return keys.DeviceCertificate{}, fmt.Errorf("%w: non-zero identity padding", ErrMalformedInitial)
		}
	}
	cert, err := keys.ParseDeviceCertificate(pt[1 : 1+n])
	if err != nil {
		return keys.DeviceCertificate{}, fmt.Errorf("%w: %w", ErrMalformedInitial, err)
	}
	if err := cert.Verify(); err != nil {
		return keys.DeviceCertificate{}, fmt.Errorf("protocol: initiator's device certificate: %w", err)
	}
	return cert, nil
}

// EnvelopeInitialID reports whether env carries an initial-message prefix
// and, if so, the initial ID: SHA-256("sotto/v1/initial/id" || EK_A || CT).
// A responder looks the ID up among its sessions (Session.InitialID)
// before calling Accept: a match means the initiator sent the envelope on
// a session that already exists, and Session.Open handles it.
func EnvelopeInitialID(env *Envelope) ([32]byte, bool) {
	if env == nil || len(env.Ciphertext) < InitialHeaderSize || env.Ciphertext[0] != kindInitial {
		return [32]byte{}, false
	}
	h, err := parseInitialHeader(env.Ciphertext)
	if err != nil {
		return [32]byte{}, false
	}
	return initialIDOf(h.ek, h.ct[:]), true
}

// Session is the state of one pairwise conversation: the ratchet, the
// peer's account and device certificate, the associated data, the
// pairwise tag seed and, for the initiator until the responder's first
// message arrives, the initial prefix.
//
// Seal and Open change the session only when they succeed. Persist the
// session (MarshalBinary) in the same commit as whatever the message
// changes, before the envelope leaves or the receipt is acknowledged.
type Session struct {
	ratchet    *Ratchet
	local      keys.AccountPublic
	peer       keys.AccountPublic
	peerDevice keys.DeviceCertificate
	ad         []byte // ADSize bytes, never modified in place
	tagSeed    [32]byte
	initiator  bool
	initialID  [32]byte
	prefixHash [32]byte // SHA-256 of the initial prefix
	prefix     []byte   // pending initial prefix (initiator only), never modified in place

	// sendTag caches SendTag for the epoch sendTagEpoch (a derivation
	// per message would cost an HKDF); not part of the encoding.
	sendTag      Tag
	sendTagEpoch uint64
	sendTagSet   bool
}

// Sealed is what Seal tells the caller beyond the envelope.
type Sealed struct {
	// DeleteToken lets a mailbox holding the envelope delete it; its hash
	// is the envelope's DeleteHash.
	DeleteToken [DeleteTokenSize]byte
}

// Opened is what Open tells the caller beyond the message.
type Opened struct {
	DeleteToken [DeleteTokenSize]byte
}

// Accepted is what Accept tells the caller beyond the session and message.
// In the same commit as the session, the caller records InitialID in the
// replay cache and deletes the consumed one-time prekeys.
type Accepted struct {
	InitialID         [32]byte
	ConsumedOneTimeDH *keys.PrekeyID // nil if none was used
	// ConsumedKEM names the KEM prekey the initial message used if it is
	// a one-time prekey, which the caller deletes. With a PrekeySource
	// that implements KEMPrekeyKinds it is set exactly when the KEM
	// prekey was a one-time prekey. With any other source Accept cannot
	// tell, and the initiator's flag is only a claim, so it is set for
	// every KEM prekey used: the caller deletes the one-time KEM prekey
	// with that ID if it holds one, and never a last-resort prekey.
	ConsumedKEM *keys.PrekeyID
	DeleteToken [DeleteTokenSize]byte
}

// Initiate starts a session with the device that published peer, running
// the initiator's side of PQXDH. The first Seal produces the initial
// message. It fails if the bundle or any prekey signature does not verify
// at now, and with ErrIdentityChanged if WithExpectedPeer names another
// account.
func Initiate(rand io.Reader, now time.Time, me LocalIdentity, peer *keys.Bundle, opts ...InitiateOption) (*Session, error) {
	var cfg initiateConfig
	for _, o := range opts {
		o.applyInitiate(&cfg)
	}
	in, err := pqxdhInitiate(rand, now, &me, peer, &cfg)
	if err != nil {
		return nil, err
	}
	return newInitiatorSession(rand, &me, peer, in)
}

// newInitiatorSession starts the initiator's ratchet from the outcome of
// PQXDH and builds the initial prefix: the header and the sealed identity.
func newInitiatorSession(rand io.Reader, me *LocalIdentity, peer *keys.Bundle, in *initiation) (*Session, error) {
	defer clear(in.sealKey[:])
	r, err := NewRatchetAlice(rand, in.keys.rootKey, in.spk, in.keys.headerKeyA, in.keys.nextHeaderKeyB)
	if err != nil {
		return nil, fmt.Errorf("protocol: starting ratchet: %w", err)
	}
	prefix := make([]byte, 0, InitialPrefixSize)
	prefix = in.header.appendTo(prefix)
	sealed, err := sealIdentity(in.sealKey, prefix, &me.Device)
	if err != nil {
		return nil, err
	}
	prefix = append(prefix, sealed...)
	return &Session{
		ratchet:    r,
		local:      me.Account.Public(),
		peer:       peer.Account,
		peerDevice: peer.Device,
		ad:         in.ad,
		tagSeed:    in.keys.tagSeed,
		initiator:  true,
		initialID:  in.initialID,
		prefixHash: sha256.Sum256(prefix),
		prefix:     prefix,
	}, nil
}

// Accept answers an initial message addressed to me: it checks the
// envelope against now, parses the initial header, rejects a replayed
// initial message, unknown or consumed prekeys and (with a source that
// implements KEMPrekeyKinds) a KEM prekey of another kind than the
// header's flag 0x02 says, opens the sealed identity, verifies the
// initiator's device certificate, completes PQXDH, starts the responder's
// ratchet and decrypts the first message. It reads pk but changes
// nothing: the caller applies Accepted.
//
// An initial-prefixed envelope whose initial ID belongs to an existing
// session goes to that session's Open instead (see EnvelopeInitialID).
func Accept(now time.Time, me LocalIdentity, pk PrekeySource, env *Envelope, opts ...AcceptOption) (*Session, Message, Accepted, error) {
	var cfg acceptConfig
	for _, o := range opts {
		o.applyAccept(&cfg)
	}
	fail := func(err error) (*Session, Message, Accepted, error) { return nil, Message{}, Accepted{}, err }
	if err := me.check(); err != nil {
		return fail(err)
	}
	if env == nil {
		return fail(ErrBadEnvelope)
	}
	if err := env.Validate(now); err != nil {
		return fail(err)
	}
	if !isIntroTag(env.Tag, me.Account.Public(), now) && (cfg.introSecret == nil || !IsIntroTag2(*cfg.introSecret, env.Tag, now)) {
		return fail(ErrNotForMe)
	}
	ct := env.Ciphertext
	if ct[0] != kindInitial {
		if ct[0] == kindMessage {
			return fail(fmt.Errorf("%w: not an initial message", ErrMalformedInitial))
		}
		return fail(fmt.Errorf("%w %d", ErrUnknownKind, ct[0]))
	}
	if len(ct) <= InitialPrefixSize {
		return fail(fmt.Errorf("%w: truncated", ErrMalformedInitial))
	}
	h, err := parseInitialHeader(ct)
	if err != nil {
		return fail(err)
	}
	resp, err := pqxdhRespondSeal(pk, &h)
	if err != nil {
		return fail(err)
	}
	defer resp.wipe()
	cert, err := openIdentity(resp.sealKey, ct[:InitialHeaderSize], ct[InitialHeaderSize:InitialPrefixSize])
	if err != nil {
		return fail(err)
	}
	if err := checkExpectedPeer(cfg.expectedPeer, cert.Account); err != nil {
		return fail(err)
	}
	if cert.Account.Equal(me.Account.Public()) {
		return fail(ErrSelfSession)
	}
	ag, err := resp.finish(&me, &h, &cert)
	if err != nil {
		return fail(err)
	}
	s := &Session{
		ratchet:    NewRatchetBob(ag.keys.rootKey, resp.spk, ag.keys.headerKeyA, ag.keys.nextHeaderKeyB),
		local:      me.Account.Public(),
		peer:       cert.Account,
		peerDevice: cert,
		ad:         ag.ad,
		tagSeed:    ag.keys.tagSeed,
		initialID:  ag.initialID,
		prefixHash: sha256.Sum256(ct[:InitialPrefixSize]),
	}
	m, tok, err := s.openRatchet(env, ct[InitialPrefixSize:])
	if err != nil {
		return fail(err)
	}
	acc := Accepted{InitialID: ag.initialID, DeleteToken: tok}
	if h.flags&flagOneTimeDH != 0 {
		id := h.otpID
		acc.ConsumedOneTimeDH = &id
	}
	if resp.consumeKEM {
		id := h.kemID
		acc.ConsumedKEM = &id
	}
	return s, m, acc, nil
}

// isIntroTag reports whether t is acct's intro tag in one of the live
// epochs at now.
func isIntroTag(t Tag, acct keys.AccountPublic, now time.Time) bool {
	for _, e := range LiveEpochs(now) {
		if IntroTag(acct, e) == t {
			return true
		}
	}
	return false
}

// messageAD is the ratchet's additional data for one envelope: the
// session AD, then the envelope's version, tag and expiry.
func messageAD(sessionAD []byte, env *Envelope) []byte {
	ad := make([]byte, 0, len(sessionAD)+1+TagSize+8)
	ad = append(ad, sessionAD...)
	ad = append(ad, env.Version)
	ad = append(ad, env.Tag[:]...)
	return binary.BigEndian.AppendUint64(ad, uint64(env.Expiry.Unix()))
}

// Seal encrypts m for the peer in an envelope that expires ttl after now
// (at most MaxTTL). m.Sender may be left zero; it is set to the local
// account, and any other value is an error. On success the session has
// advanced: persist it before the envelope leaves.
func (s *Session) Seal(rand io.Reader, now time.Time, m Message, ttl time.Duration, opts ...SealOption) (*Envelope, Sealed, error) {
	var cfg sealConfig
	for _, o := range opts {
		o(&cfg)
	}
	if ttl <= 0 || ttl > MaxTTL {
		return nil, Sealed{}, ErrBadTTL
	}
	expiry := time.Unix(now.Add(ttl).Unix(), 0).UTC()
	if expiry.Unix() <= now.Unix() {
		return nil, Sealed{}, ErrBadTTL
	}
	if m.Sender.IsZero() {
		m.Sender = s.local
	} else if !m.Sender.Equal(s.local) {
		return nil, Sealed{}, fmt.Errorf("%w: sealing as another account", ErrSenderMismatch)
	}
	inner, err := m.marshal()
	if err != nil {
		return nil, Sealed{}, err
	}
	padded := Pad(inner)
	clear(inner)
	env := &Envelope{Version: EnvelopeVersion, Expiry: expiry}
	epoch := Epoch(now)
	switch {
	case s.prefix != nil && cfg.introSecret != nil:
		env.Tag = IntroTag2(*cfg.introSecret, epoch)
	case s.prefix != nil:
		env.Tag = IntroTag(s.peer, epoch)
	case cfg.version2:
		env.Tag = s.SendTag2(epoch)
	default:
		env.Tag = s.SendTag(epoch)
	}
	r := s.ratchet.sendDraft()
	msg, secret, err := r.Encrypt(rand, padded, messageAD(s.ad, env))
	clear(padded)
	if err != nil {
		return nil, Sealed{}, fmt.Errorf("protocol: encrypting message: %w", err)
	}
	payload := make([]byte, 0, 1+len(s.prefix)+len(msg))
	if s.prefix != nil {
		payload = append(payload, s.prefix...)
	} else {
		payload = append(payload, kindMessage)
	}
	env.Ciphertext = append(payload, msg...)
	tok := r.keySchedule().deleteToken(&secret)
	clear(secret[:])
	env.DeleteHash = HashDeleteToken(tok)
	if err := env.ValidateStructure(); err != nil {
		return nil, Sealed{}, err
	}
	s.ratchet = r
	return env, Sealed{DeleteToken: tok}, nil
}

// Open decrypts an envelope the peer sent on this session: a kind 0x02
// message, or (responder only) a later initial-prefixed message carrying
// this session's own prefix. On failure the session is unchanged. The
// first message the initiator opens ends the initial prefix on its sends.
func (s *Session) Open(now time.Time, env *Envelope) (Message, Opened, error) {
	if env == nil {
		return Message{}, Opened{}, ErrBadEnvelope
	}
	if err := env.Validate(now); err != nil {
		return Message{}, Opened{}, err
	}
	ct := env.Ciphertext
	var msg []byte
	switch ct[0] {
	case kindInitial:
		if s.initiator || len(ct) <= InitialPrefixSize {
			return Message{}, Opened{}, ErrNotThisSession
		}
		if h := sha256.Sum256(ct[:InitialPrefixSize]); !equal32(h, s.prefixHash) {
			return Message{}, Opened{}, ErrNotThisSession
		}
		msg = ct[InitialPrefixSize:]
	case kindMessage:
		msg = ct[1:]
	default:
		return Message{}, Opened{}, fmt.Errorf("%w %d", ErrUnknownKind, ct[0])
	}
	m, tok, err := s.openRatchet(env, msg)
	if err != nil {
		return Message{}, Opened{}, err
	}
	if s.initiator {
		s.prefix = nil
	}
	return m, Opened{DeleteToken: tok}, nil
}

// openRatchet decrypts a ratchet message on a copy of the ratchet, checks
// the padding, the inner message, its sender and the envelope's delete
// hash, and only then commits the ratchet.
func (s *Session) openRatchet(env *Envelope, msg []byte) (Message, [DeleteTokenSize]byte, error) {
	var tok [DeleteTokenSize]byte
	r := s.ratchet.draft()
	padded, secret, err := r.Decrypt(msg, messageAD(s.ad, env))
	if err != nil {
		return Message{}, tok, fmt.Errorf("protocol: decrypting message: %w", err)
	}
	defer clear(padded)
	tok = r.keySchedule().deleteToken(&secret)
	clear(secret[:])
	if !env.CheckDeleteToken(tok) {
		return Message{}, [DeleteTokenSize]byte{}, ErrDeleteHash
	}
	inner, err := Unpad(padded)
	if err != nil {
		return Message{}, [DeleteTokenSize]byte{}, err
	}
	m, err := parseMessage(inner)
	if err != nil {
		return Message{}, [DeleteTokenSize]byte{}, err
	}
	if !m.Sender.Equal(s.peer) {
		return Message{}, [DeleteTokenSize]byte{}, ErrSenderMismatch
	}
	s.ratchet = r
	return m, tok, nil
}

// Clone returns an independent copy of the session: Seal and Open on one
// do not change the other. (Decoding a stored session costs an X25519
// scalar multiplication; a copy does not.)
func (s *Session) Clone() *Session {
	c := *s
	c.ratchet = s.ratchet.Clone()
	return &c
}

// Peer returns the peer's account key.
func (s *Session) Peer() keys.AccountPublic { return s.peer }

// PeerDevice returns the peer's device certificate.
func (s *Session) PeerDevice() keys.DeviceCertificate { return s.peerDevice }

// LocalAccount returns the local account key the session was set up with.
func (s *Session) LocalAccount() keys.AccountPublic { return s.local }

// Initiator reports whether the local side ran PQXDH against the peer's
// bundle.
func (s *Session) Initiator() bool { return s.initiator }

// HoldsSignedPrekey reports whether the session still holds the private
// key of the responder's signed prekey as its ratchet key: a responder's
// session on which nothing was ever sent. Whoever steals it can open other
// initial messages that used that prekey and no one-time prekey.
func (s *Session) HoldsSignedPrekey() bool { return !s.initiator && s.ratchet.neverSent() }

// InitialID returns the initial ID of the PQXDH exchange that set up the
// session (see EnvelopeInitialID).
func (s *Session) InitialID() [32]byte { return s.initialID }

// PendingInitial reports whether Seal still adds the initial prefix and
// uses the peer's intro tag (initiator, no message from the peer yet).
func (s *Session) PendingInitial() bool { return s.prefix != nil }

// PendingPrekeysGone reports whether s is pending (this side initiated it
// and has read nothing of the peer on it) and its initial header names a
// one-time prekey, of either kind, that b, a newer bundle of the peer, no
// longer lists: the prekey was consumed, by this session's first message
// or by another initiator's (SPEC "A one-time prekey taken twice").
func (s *Session) PendingPrekeysGone(b *keys.Bundle) bool {
	if s == nil || s.prefix == nil || b == nil {
		return false
	}
	h, err := parseInitialHeader(s.prefix)
	if err != nil {
		return false
	}
	dhGone := h.flags&flagOneTimeDH != 0 &&
		!slices.ContainsFunc(b.OneTimeDH, func(p keys.OneTimePrekey) bool { return p.ID == h.otpID })
	kemGone := h.flags&flagOneTimeKEM != 0 &&
		!slices.ContainsFunc(b.OneTimeKEM, func(p keys.SignedKEMPrekey) bool { return p.ID == h.kemID })
	return dhGone || kemGone
}

func (s *Session) role(local bool) byte {
	if s.initiator == local {
		return FromInitiator
	}
	return FromResponder
}

// SendTag returns the pairwise tag of this side's messages in epoch.
func (s *Session) SendTag(epoch uint64) Tag {
	if !s.sendTagSet || s.sendTagEpoch != epoch {
		s.sendTag, s.sendTagEpoch, s.sendTagSet = PairTag(s.tagSeed, s.role(true), epoch), epoch, true
	}
	return s.sendTag
}

// RecvTag returns the pairwise tag of the peer's messages in epoch.
func (s *Session) RecvTag(epoch uint64) Tag { return PairTag(s.tagSeed, s.role(false), epoch) }

// SealOption configures Seal.
type SealOption func(*sealConfig)

type sealConfig struct {
	version2    bool
	introSecret *[IntroSecretSize]byte
}

// WithPeerIntroSecret makes Seal put an initial message under the peer's
// version 2 intro tag (IntroTag2 of the intro secret its invite carried)
// instead of the version 1 one of its account.
func WithPeerIntroSecret(secret [IntroSecretSize]byte) SealOption {
	return func(c *sealConfig) { c.introSecret = &secret }
}

// WithVersion2Tags makes Seal put a ratchet message (not an initial one)
// under the version 2 pairwise tag (SendTag2), for a peer that announced
// version 2 mailboxes.
func WithVersion2Tags() SealOption { return func(c *sealConfig) { c.version2 = true } }

// SendTag2 returns the version 2 pairwise tag of this side's messages in
// epoch.
func (s *Session) SendTag2(epoch uint64) Tag { return PairTag2(s.tagSeed, s.role(true), epoch) }

// RecvTag2 returns the version 2 pairwise tag of the peer's messages in
// epoch.
func (s *Session) RecvTag2(epoch uint64) Tag { return PairTag2(s.tagSeed, s.role(false), epoch) }

// SendWriteKey returns the write key that signs the deposit of an
// envelope this side sealed under the version 2 tag tag, looking for the
// tag's epoch among the live epochs at now; false if tag is none of them
// (or s is nil).
func (s *Session) SendWriteKey(tag Tag, now time.Time) (ed25519.PrivateKey, bool) {
	if s == nil {
		return nil, false
	}
	for _, e := range LiveEpochs(now) {
		k := WriteKey(s.tagSeed, s.role(true), e)
		if WriteKeyTag(k.Public().(ed25519.PublicKey)) == tag {
			return k, true
		}
	}
	return nil, false
}

// initiatorAccount is the account of the side that ran PQXDH as initiator.
func (s *Session) initiatorAccount() keys.AccountPublic {
	if s.initiator {
		return s.local
	}
	return s.peer
}

// PreferSession decides between two sessions with the same peer, as when
// both sides initiated at once: it returns the one whose initiator has the
// lexicographically smaller account key (between two sessions with the
// same initiator, the one with the smaller initial ID). Both sides reach
// the same decision, so both send on the same session. The caller sends
// only on the preferred session and keeps the other for receiving until
// the peer's messages on it have drained. A nil argument yields the other.
func PreferSession(a, b *Session) *Session {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	ia, ib := a.initiatorAccount(), b.initiatorAccount()
	if c := bytes.Compare(ia[:], ib[:]); c != 0 {
		if c < 0 {
			return a
		}
		return b
	}
	if bytes.Compare(a.initialID[:], b.initialID[:]) <= 0 {
		return a
	}
	return b
}

// Session state encoding (version 1), integers big-endian:
//
//	0     1     state version = 0x01
//	1     1     flags: 0x01 local side is the initiator,
//	                   0x02 initial prefix pending (only with 0x01)
//	2     32    local account key
//	34    32    peer account key
//	66    1     n, length of the peer's device certificate (1..202)
//	67    n     peer's device certificate
//	      162   session AD
//	      32    pairwise tag seed
//	      32    initial ID
//	      32    SHA-256 of the initial prefix
//	      1353  initial prefix (only with flag 0x02)
//	      4     r, length of the ratchet state (1..MaxRatchetStateSize)
//	      r     ratchet state (Ratchet.MarshalBinary)
//
// The encoding holds secrets: store it encrypted at rest.
const (
	sessionStateVersion = 1

	stateFlagInitiator = 0x01
	stateFlagPending   = 0x02

	// MaxSessionStateSize bounds a whole session state encoding.
	MaxSessionStateSize = 2 + 2*keys.AccountSize + 1 + maxDeviceCertSize + ADSize + 3*32 +
		InitialPrefixSize + 4 + MaxRatchetStateSize
)

// MarshalBinary encodes the session state.
func (s *Session) MarshalBinary() ([]byte, error) {
	rs, err := s.ratchet.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("protocol: encoding ratchet: %w", err)
	}
	if len(rs) == 0 || len(rs) > MaxRatchetStateSize {
		return nil, fmt.Errorf("%w: ratchet state of %d bytes", ErrBadSession, len(rs))
	}
	cert := s.peerDevice.Marshal()
	if len(cert) == 0 || len(cert) > maxDeviceCertSize || len(s.ad) != ADSize {
		return nil, ErrBadSession
	}
	var flags byte
	if s.initiator {
		flags |= stateFlagInitiator
	}
	if s.prefix != nil {
		flags |= stateFlagPending
	}
	b := make([]byte, 0, 2+2*keys.AccountSize+1+len(cert)+ADSize+3*32+len(s.prefix)+4+len(rs))
	b = append(b, sessionStateVersion, flags)
	b = append(b, s.local[:]...)
	b = append(b, s.peer[:]...)
	b = append(b, byte(len(cert)))
	b = append(b, cert...)
	b = append(b, s.ad...)
	b = append(b, s.tagSeed[:]...)
	b = append(b, s.initialID[:]...)
	b = append(b, s.prefixHash[:]...)
	b = append(b, s.prefix...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(rs)))
	return append(b, rs...), nil
}

// sessionReader reads fixed-size fields; after a short read ok is false and
// every further read returns nil.
type sessionReader struct {
	b  []byte
	ok bool
}

func (r *sessionReader) take(n int) []byte {
	if !r.ok || n < 0 || len(r.b) < n {
		r.ok = false
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// UnmarshalSession decodes a session state written by MarshalBinary. It
// checks the structure and the consistency of the fields; garbage fails
// with an error wrapping ErrBadSession (or the ratchet's error).
func UnmarshalSession(b []byte) (*Session, error) {
	if len(b) > MaxSessionStateSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadSession, len(b))
	}
	r := &sessionReader{b: b, ok: true}
	head := r.take(2)
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated", ErrBadSession)
	}
	if head[0] != sessionStateVersion {
		return nil, fmt.Errorf("%w: unknown version %d", ErrBadSession, head[0])
	}
	flags := head[1]
	if flags&^(stateFlagInitiator|stateFlagPending) != 0 ||
		(flags&stateFlagPending != 0 && flags&stateFlagInitiator == 0) {
		return nil, fmt.Errorf("%w: flags %#x", ErrBadSession, flags)
	}
	s := &Session{initiator: flags&stateFlagInitiator != 0}
	copy(s.local[:], r.take(keys.AccountSize))
	copy(s.peer[:], r.take(keys.AccountSize))
	n := r.take(1)
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated", ErrBadSession)
	}
	certBytes := r.take(int(n[0]))
	s.ad = append([]byte(nil), r.take(ADSize)...)
	copy(s.tagSeed[:], r.take(32))
	copy(s.initialID[:], r.take(32))
	copy(s.prefixHash[:], r.take(32))
	if flags&stateFlagPending != 0 {
		s.prefix = append([]byte(nil), r.take(InitialPrefixSize)...)
	}
	rl := r.take(4)
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated", ErrBadSession)
	}
	rn := binary.BigEndian.Uint32(rl)
	if rn == 0 || rn > MaxRatchetStateSize {
		return nil, fmt.Errorf("%w: ratchet state of %d bytes", ErrBadSession, rn)
	}
	rs := r.take(int(rn))
	if !r.ok {
		return nil, fmt.Errorf("%w: truncated", ErrBadSession)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadSession, len(r.b))
	}

	if _, err := keys.ParseAccountPublic(s.local[:]); err != nil {
		return nil, fmt.Errorf("%w: local account: %w", ErrBadSession, err)
	}
	if _, err := keys.ParseAccountPublic(s.peer[:]); err != nil {
		return nil, fmt.Errorf("%w: peer account: %w", ErrBadSession, err)
	}
	if s.local.Equal(s.peer) {
		return nil, fmt.Errorf("%w: peer is the local account", ErrBadSession)
	}
	cert, err := keys.ParseDeviceCertificate(certBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: peer device: %w", ErrBadSession, err)
	}
	if !cert.Account.Equal(s.peer) {
		return nil, fmt.Errorf("%w: peer device belongs to another account", ErrBadSession)
	}
	s.peerDevice = cert
	if err := s.checkAD(); err != nil {
		return nil, err
	}
	if s.prefix != nil {
		if _, err := parseInitialHeader(s.prefix); err != nil {
			return nil, fmt.Errorf("%w: initial prefix: %w", ErrBadSession, err)
		}
		if !equal32(sha256.Sum256(s.prefix), s.prefixHash) {
			return nil, fmt.Errorf("%w: initial prefix does not match its hash", ErrBadSession)
		}
	}
	if s.ratchet, err = UnmarshalRatchet(rs); err != nil {
		return nil, fmt.Errorf("%w: ratchet: %w", ErrBadSession, err)
	}
	return s, nil
}

// checkAD verifies that the stored AD names the session's accounts in the
// initiator's order and the peer's certified identity key.
func (s *Session) checkAD() error {
	a, b := s.local, s.peer
	ikPeerAt := encodedDHSize
	if !s.initiator {
		a, b = b, a
		ikPeerAt = 0
	}
	ad := s.ad
	ok := ad[0] == byte(keys.KeyTypeX25519) && ad[encodedDHSize] == byte(keys.KeyTypeX25519) &&
		bytes.Equal(ad[ikPeerAt+1:ikPeerAt+encodedDHSize], s.peerDevice.IdentityDH[:]) &&
		bytes.Equal(ad[2*encodedDHSize:2*encodedDHSize+keys.AccountSize], a[:]) &&
		bytes.Equal(ad[2*encodedDHSize+keys.AccountSize:2*encodedDHSize+2*keys.AccountSize], b[:])
	if !ok {
		return fmt.Errorf("%w: associated data does not match the session's keys", ErrBadSession)
	}
	return nil
}
