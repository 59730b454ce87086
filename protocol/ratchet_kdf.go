package protocol

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
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

// kdfCK is KDF_CK: the message key for the current position of a chain and
// the chain key of the next position.
func kdfCK(ck *[ratchetKeySize]byte) (mk, next [ratchetKeySize]byte) {
	h := hmac.New(sha256.New, ck[:])
	h.Write([]byte{ckMessageKeyByte})
	h.Sum(mk[:0])
	h.Reset()
	h.Write([]byte{ckNextChainByte})
	h.Sum(next[:0])
	return mk, next
}

// messageKeys expands a message key into the body AEAD key and nonce and
// the per-message secret. It computes HKDF-Extract once and HKDF-Expand
// once per label, which is exactly two HKDF-SHA256 computations with an
// empty salt.
func messageKeys(mk *[ratchetKeySize]byte) (key [bodyKeySize]byte, nonce [bodyNonceSize]byte, secret [ratchetKeySize]byte) {
	// HKDF-Extract with no salt: HMAC keyed with HashLen zero bytes.
	var zeroSalt [sha256.Size]byte
	var prk [sha256.Size]byte
	ext := hmac.New(sha256.New, zeroSalt[:])
	ext.Write(mk[:])
	ext.Sum(prk[:0])

	exp := hmac.New(sha256.New, prk[:])
	var t [2 * sha256.Size]byte
	// T(1) and T(2) of labelRatchetMessageKey, 44 of their 64 bytes used.
	expandBlock(exp, nil, labelRatchetMessageKey, 1, t[:0])
	exp.Reset()
	expandBlock(exp, t[:sha256.Size], labelRatchetMessageKey, 2, t[sha256.Size:sha256.Size])
	copy(key[:], t[:bodyKeySize])
	copy(nonce[:], t[bodyKeySize:bodyKeySize+bodyNonceSize])
	// T(1) of labelRatchetMessageSecret.
	exp.Reset()
	expandBlock(exp, nil, labelRatchetMessageSecret, 1, secret[:0])
	clear(t[:])
	clear(prk[:])
	return key, nonce, secret
}

// expandBlock computes one HKDF-Expand block T(i) = HMAC(PRK, T(i-1) || info || i)
// into dst's spare capacity. h must be keyed with PRK and freshly reset.
func expandBlock(h hash.Hash, prev []byte, info string, i byte, dst []byte) {
	h.Write(prev)
	h.Write([]byte(info))
	h.Write([]byte{i})
	h.Sum(dst)
}
