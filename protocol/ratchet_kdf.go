package protocol

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding"
	"hash"
)

// Key derivation for the Double Ratchet. Every function here is pinned by a
// known-answer test against crypto/hkdf and crypto/hmac used directly.
//
//	KDF_RK(rk, dh)  = HKDF-SHA256(salt = rk, ikm = dh, info = labelRatchetRoot, 96 bytes)
//	                  -> new root key (0..32) || chain key (32..64) || next header key (64..96)
//	KDF_CK(ck)      = HMAC-SHA256(ck, 0x01) -> message key,
//	                  HMAC-SHA256(ck, 0x02) -> next chain key
//	message key mk  -> HKDF-SHA256(salt = none, ikm = mk, info = labelRatchetMessageKey, 44 bytes)
//	                   = AEAD key (0..32) || AEAD nonce (32..44)
//	                -> HKDF-SHA256(salt = none, ikm = mk, info = labelRatchetMessageSecret, 32 bytes)
//	                   = the per-message secret returned by Encrypt and Decrypt

// Labels and constants of the ratchet's key derivations.
const (
	labelRatchetRoot          = "sotto/v1/ratchet/root"
	labelRatchetMessageKey    = "sotto/v1/ratchet/message-key"
	labelRatchetMessageSecret = "sotto/v1/ratchet/message-secret"

	// ckMessageKeyByte and ckNextChainByte are the HMAC inputs of KDF_CK.
	ckMessageKeyByte = 0x01
	ckNextChainByte  = 0x02
)

// ratchetKeySize is the size of every root, chain, header and message key.
const ratchetKeySize = 32

// Sizes of the body AEAD (ChaCha20-Poly1305) key and nonce derived from a
// message key.
const (
	bodyKeySize   = 32
	bodyNonceSize = 12
)

// kdfRK is KDF_RK: it mixes a DH output into the root key and returns the new
// root key, a chain key and the next header key for that direction.
func kdfRK(rk *[ratchetKeySize]byte, dh []byte) (newRK, ck, nhk [ratchetKeySize]byte) {
	out, err := hkdf.Key(sha256.New, dh, rk[:], labelRatchetRoot, 3*ratchetKeySize)
	if err != nil {
		// hkdf.Key fails only for output lengths above 255*32 bytes.
		panic("protocol: ratchet: HKDF: " + err.Error())
	}
	copy(newRK[:], out[0:32])
	copy(ck[:], out[32:64])
	copy(nhk[:], out[64:96])
	clear(out)
	return newRK, ck, nhk
}

// Byte strings fed to the HMACs, as package variables so that passing them
// to a hash.Hash does not allocate.
var (
	ckMessageKeyInput = []byte{ckMessageKeyByte}
	ckNextChainInput  = []byte{ckNextChainByte}
	hkdfBlock1        = []byte{1}
	hkdfBlock2        = []byte{2}
	messageKeyInfo    = []byte(labelRatchetMessageKey)
	deleteTokenInfo   = []byte(labelDeleteToken)
	messageSecretInfo = []byte(labelRatchetMessageSecret)
	hkdfZeroSaltState = newZeroSaltState()
)

// hmacMaxMessage bounds the HMAC inputs of the key schedule; the longest is
// an HKDF-Expand block, T(i-1) || info || i.
const hmacMaxMessage = 2 * sha256.BlockSize

// kdfStatePanic prefixes the panic for a SHA-256 state that does not
// round-trip, which would be a bug in crypto/sha256.
const kdfStatePanic = "protocol: ratchet: SHA-256 state: "

// kdf computes the per-message key schedule (KDF_CK and the message key
// expansion) without allocating. It holds two SHA-256 digests and the
// marshaled states of HMAC's inner and outer hashes after the padded key
// block (the precomputation FIPS 198-1 section 6 describes), so each HMAC
// under an already loaded key costs only the message's blocks. A kdf is
// scratch space owned by one Ratchet; it holds key-derived state only
// between the calls of one derivation, and every result is checked by the
// known-answer tests against crypto/hmac and crypto/hkdf.
type kdf struct {
	inner, outer hash.Hash
	ck, prk      hmacKeyState
	sum          [sha256.Size]byte
	pad          [sha256.BlockSize]byte
	in           [hmacMaxMessage]byte // HMAC input, assembled here so callers' arrays stay on the stack

	// AEAD scratch used by ratchet.go.
	hdr   [RatchetHeaderSize]byte
	nonce [bodyNonceSize]byte
	key   [bodyKeySize]byte
	ad    []byte
	hkey  [ratchetKeySize]byte // the header key haead was made with
	haead cipher.AEAD
}

// hmacKeyState is the marshaled SHA-256 state after (key XOR ipad) and
// after (key XOR opad).
type hmacKeyState struct{ inner, outer []byte }

type sha256State interface {
	encoding.BinaryAppender
	encoding.BinaryUnmarshaler
}

func newKDF() *kdf {
	return &kdf{inner: sha256.New(), outer: sha256.New()}
}

// newZeroSaltState precomputes the HMAC states for HKDF-Extract without a
// salt (an HMAC key of HashLen zero bytes).
func newZeroSaltState() hmacKeyState {
	var zero [ratchetKeySize]byte
	var st hmacKeyState
	newKDF().load(&zero, &st)
	return st
}

// load computes the HMAC states of key into st, reusing st's buffers.
func (k *kdf) load(key *[ratchetKeySize]byte, st *hmacKeyState) {
	for i := range k.pad {
		k.pad[i] = 0x36
	}
	for i, b := range key {
		k.pad[i] ^= b
	}
	k.inner.Reset()
	k.inner.Write(k.pad[:])
	st.inner = k.marshal(k.inner, st.inner[:0])
	for i := range k.pad {
		k.pad[i] = 0x5c
	}
	for i, b := range key {
		k.pad[i] ^= b
	}
	k.outer.Reset()
	k.outer.Write(k.pad[:])
	st.outer = k.marshal(k.outer, st.outer[:0])
	clear(k.pad[:])
}

func (k *kdf) marshal(h hash.Hash, dst []byte) []byte {
	b, err := h.(sha256State).AppendBinary(dst)
	if err != nil {
		panic(kdfStatePanic + err.Error())
	}
	return b
}

func (k *kdf) restore(h hash.Hash, state []byte) {
	if err := h.(sha256State).UnmarshalBinary(state); err != nil {
		panic(kdfStatePanic + err.Error())
	}
}

// mac returns HMAC-SHA256 of a || b || c under the key loaded into st.
func (k *kdf) mac(st *hmacKeyState, a, b, c []byte) (out [sha256.Size]byte) {
	if len(a)+len(b)+len(c) > hmacMaxMessage {
		panic("protocol: ratchet: HMAC input too long")
	}
	m := append(append(append(k.in[:0], a...), b...), c...)
	k.restore(k.inner, st.inner)
	k.inner.Write(m)
	clear(m)
	k.inner.Sum(k.sum[:0])
	k.restore(k.outer, st.outer)
	k.outer.Write(k.sum[:])
	k.outer.Sum(k.sum[:0])
	out = k.sum
	clear(k.sum[:])
	return out
}

// wipe clears the key-derived states.
func (k *kdf) wipe() {
	clear(k.prk.inner)
	clear(k.prk.outer)
}

// chain is KDF_CK: the message key for the current position of a chain and
// the chain key of the next position.
func (k *kdf) chain(ck *[ratchetKeySize]byte) (mk, next [ratchetKeySize]byte) {
	k.load(ck, &k.ck)
	mk = k.mac(&k.ck, ckMessageKeyInput, nil, nil)
	next = k.mac(&k.ck, ckNextChainInput, nil, nil)
	clear(k.ck.inner)
	clear(k.ck.outer)
	return mk, next
}

// deleteToken is DeleteToken computed with the key schedule's precomputed
// zero-salt state and scratch space: HKDF-Extract (no salt) of the
// per-message secret, then T(1) of HKDF-Expand with the delete-token
// label, which is all 32 bytes of the token.
func (k *kdf) deleteToken(secret *[ratchetKeySize]byte) [DeleteTokenSize]byte {
	prk := k.mac(&hkdfZeroSaltState, secret[:], nil, nil)
	k.load(&prk, &k.prk)
	clear(prk[:])
	tok := k.mac(&k.prk, deleteTokenInfo, hkdfBlock1, nil)
	k.wipe()
	return tok
}

// messageKeys expands a message key into the body AEAD key and nonce and
// the per-message secret: HKDF-Extract once (no salt), then HKDF-Expand
// once per label. That is exactly HKDF-SHA256(salt = none, ikm = mk,
// info = label) for each of the two labels.
func (k *kdf) messageKeys(mk *[ratchetKeySize]byte) (key [bodyKeySize]byte, nonce [bodyNonceSize]byte, secret [ratchetKeySize]byte) {
	prk := k.mac(&hkdfZeroSaltState, mk[:], nil, nil)
	k.load(&prk, &k.prk)
	clear(prk[:])
	// T(1) || T(2) of labelRatchetMessageKey; 44 of the 64 bytes are used.
	t1 := k.mac(&k.prk, messageKeyInfo, hkdfBlock1, nil)
	t2 := k.mac(&k.prk, t1[:], messageKeyInfo, hkdfBlock2)
	copy(key[:], t1[:])
	copy(nonce[:], t2[:bodyNonceSize])
	clear(t1[:])
	clear(t2[:])
	// T(1) of labelRatchetMessageSecret.
	secret = k.mac(&k.prk, messageSecretInfo, hkdfBlock1, nil)
	k.wipe()
	return key, nonce, secret
}
