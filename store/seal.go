package store

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// Data at rest. With a passphrase, the store is encrypted record by record:
//
//   - A random 32-byte data key is generated when the store is first opened
//     with a passphrase. It is kept in the meta bucket only wrapped:
//     XChaCha20-Poly1305 under Argon2id(passphrase, salt, parameters), with
//     the parameters and salt stored next to it (see wrappedKey).
//   - Two subkeys come from the data key by HKDF-SHA256: the record key
//     (label sealRecordLabel) and the key-hash key (label sealHashLabel).
//   - The value of every record in a sealed bucket (every bucket but meta
//     and a mailbox node's own buckets, see bucketPolicy) is
//     0x01 || nonce(24) || XChaCha20-Poly1305(recordKey, nonce, value, ad)
//     with ad = 0x01 || len(bucket) (1 byte) || bucket || stored key, so a
//     record copied to another key or bucket fails to open.
//   - Keys that would name a contact (an account key, or a contact's name)
//     are stored as HMAC-SHA256(hashKey, domain || key part) instead. The
//     key directory bucket maps each such hash back to its sealed original,
//     so iteration still returns the original keys.
//
// Changing the passphrase rewraps the data key; the records stay as they
// are. The file is then rewritten so that the old wrapping is gone.

// Labels of the data key's subkeys and the version byte of sealed values.
const (
	sealRecordLabel = "sotto store record key v1"
	sealHashLabel   = "sotto store key hash v1"
	sealedV1        = 0x01
	// sealOverhead is what sealing adds to a value.
	sealOverhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
	// DataKeySize is the size of the store's data key.
	DataKeySize = 32
)

// Domains of hashed keys.
const (
	hashAccount = 'a' // an account key (32 bytes)
	hashName    = 'n' // a folded contact name
)

// Errors about the store's encryption. Each says what to do.
var (
	// ErrPassphraseRequired means the store is encrypted and no passphrase
	// was given.
	ErrPassphraseRequired = errors.New("store: the data dir is encrypted; give its passphrase with --passphrase-file (or SOTTO_PASSPHRASE_FILE)")
	// ErrWrongPassphrase means the passphrase does not unwrap the store's
	// data key.
	ErrWrongPassphrase = errors.New("store: wrong passphrase for the data dir; try again with the right passphrase")
	// ErrNotEncrypted means a passphrase operation was asked of a store
	// that has no passphrase.
	ErrNotEncrypted = errors.New("store: the data dir is not encrypted; open it with a passphrase to encrypt it")
)

// KDFParams are Argon2id parameters for wrapping the data key.
type KDFParams struct {
	Time    uint32 // passes
	Memory  uint32 // KiB
	Threads uint8
}

// DefaultKDF is the Argon2id cost for new wrappings: about half a second on
// a two-core machine (docs/BENCHMARKS.md, BenchmarkArgon2idDefault).
var DefaultKDF = KDFParams{Time: 8, Memory: 128 << 10, Threads: 2}

// Bounds a stored wrapping's parameters must respect, so that a damaged or
// hostile file cannot make Open spend unbounded time or memory.
const (
	minKDFMemory = 8
	maxKDFMemory = 1 << 20 // KiB: 1 GiB
	maxKDFTime   = 64
	maxKDFThread = 16
)

func (p KDFParams) check() error {
	if p.Time < 1 || p.Time > maxKDFTime || p.Memory < minKDFMemory || p.Memory > maxKDFMemory ||
		p.Threads < 1 || p.Threads > maxKDFThread {
		return fmt.Errorf("%w: data key parameters out of range", ErrCorrupt)
	}
	return nil
}

// wrappedKey is the meta record keyDataKey:
//
//	version  uint8 = 1
//	kdf      uint8 = 1 (Argon2id)
//	time     uint32be
//	memory   uint32be (KiB)
//	threads  uint8
//	salt     [16]byte
//	nonce    [24]byte
//	sealed   [48]byte XChaCha20-Poly1305(Argon2id(pass, salt, time, memory,
//	         threads, 32), nonce, dataKey, header) where header is every
//	         byte before nonce
const (
	wrapV1        = 1
	kdfArgon2id   = 1
	wrapSaltSize  = 16
	wrapHeaderLen = 1 + 1 + 4 + 4 + 1 + wrapSaltSize
	wrappedKeyLen = wrapHeaderLen + chacha20poly1305.NonceSizeX + DataKeySize + chacha20poly1305.Overhead
)

var keyDataKey = []byte("data_key")

// wrapDataKey wraps dk under passphrase with fresh salt and nonce.
func wrapDataKey(dk, passphrase []byte, p KDFParams, rnd io.Reader) ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	out := make([]byte, wrapHeaderLen, wrappedKeyLen)
	out[0], out[1] = wrapV1, kdfArgon2id
	binary.BigEndian.PutUint32(out[2:], p.Time)
	binary.BigEndian.PutUint32(out[6:], p.Memory)
	out[10] = p.Threads
	if _, err := io.ReadFull(rnd, out[11:wrapHeaderLen]); err != nil {
		return nil, fmt.Errorf("store: salt: %w", err)
	}
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("store: nonce: %w", err)
	}
	kek := argon2.IDKey(passphrase, out[11:wrapHeaderLen], p.Time, p.Memory, p.Threads, 32)
	aead, err := chacha20poly1305.NewX(kek)
	clear(kek)
	if err != nil {
		return nil, err
	}
	header := out[:wrapHeaderLen:wrapHeaderLen]
	out = append(out, nonce...)
	return aead.Seal(out, nonce, dk, header), nil
}

// parseWrapParams returns the parameters of a wrapped key after checking
// its layout.
func parseWrapParams(w []byte) (KDFParams, error) {
	if len(w) != wrappedKeyLen || w[0] != wrapV1 || w[1] != kdfArgon2id {
		return KDFParams{}, fmt.Errorf("%w: data key record of %d bytes, version %d", ErrCorrupt, len(w), w[0])
	}
	p := KDFParams{Time: binary.BigEndian.Uint32(w[2:]), Memory: binary.BigEndian.Uint32(w[6:]), Threads: w[10]}
	return p, p.check()
}

// unwrapDataKey opens a wrapped data key; a wrong passphrase is
// ErrWrongPassphrase.
func unwrapDataKey(w, passphrase []byte) ([]byte, error) {
	if len(w) == 0 {
		return nil, fmt.Errorf("%w: empty data key record", ErrCorrupt)
	}
	p, err := parseWrapParams(w)
	if err != nil {
		return nil, err
	}
	kek := argon2.IDKey(passphrase, w[11:wrapHeaderLen], p.Time, p.Memory, p.Threads, 32)
	aead, err := chacha20poly1305.NewX(kek)
	clear(kek)
	if err != nil {
		return nil, err
	}
	nonce := w[wrapHeaderLen : wrapHeaderLen+chacha20poly1305.NonceSizeX]
	dk, err := aead.Open(nil, nonce, w[wrapHeaderLen+chacha20poly1305.NonceSizeX:], w[:wrapHeaderLen])
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	return dk, nil
}

// sealer seals and opens records under a data key. It is safe for
// concurrent use.
type sealer struct {
	aead    cipher.AEAD
	hashKey []byte
	rand    io.Reader

	mu     sync.RWMutex
	hashes map[[32]byte][32]byte // account -> its hash
}

// newSealer derives the record and key-hash subkeys from dk.
func newSealer(dk []byte, rnd io.Reader) (*sealer, error) {
	if len(dk) != DataKeySize {
		return nil, fmt.Errorf("store: data key of %d bytes", len(dk))
	}
	rk, err := hkdf.Key(sha256.New, dk, nil, sealRecordLabel, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	hk, err := hkdf.Key(sha256.New, dk, nil, sealHashLabel, 32)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(rk)
	clear(rk)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead, hashKey: hk, rand: rnd, hashes: map[[32]byte][32]byte{}}, nil
}

// A sealer never prints its keys.
func (s *sealer) String() string             { return "store.sealer{REDACTED}" }
func (s *sealer) GoString() string           { return s.String() }
func (s *sealer) LogValue() slog.Value       { return slog.StringValue("REDACTED") }
func (s *sealer) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// adPool recycles associated-data buffers (one per seal and open).
var adPool = sync.Pool{New: func() any { b := make([]byte, 0, 128); return &b }}

// sealAD is the associated data of a record: its bucket and stored key.
// Return the buffer with putAD.
func sealAD(bucket, key []byte) *[]byte {
	p := adPool.Get().(*[]byte)
	ad := append((*p)[:0], sealedV1, byte(len(bucket)))
	ad = append(ad, bucket...)
	*p = append(ad, key...)
	return p
}

func putAD(p *[]byte) {
	if cap(*p) <= 1024 {
		adPool.Put(p)
	}
}

// seal encrypts value as the record (bucket, key).
func (s *sealer) seal(bucket, key, value []byte) ([]byte, error) {
	out := make([]byte, 1+chacha20poly1305.NonceSizeX, sealOverhead+len(value))
	out[0] = sealedV1
	if _, err := io.ReadFull(s.rand, out[1:]); err != nil {
		return nil, fmt.Errorf("store: nonce: %w", err)
	}
	ad := sealAD(bucket, key)
	defer putAD(ad)
	return s.aead.Seal(out, out[1:], value, *ad), nil
}

// open decrypts the record (bucket, key); any change to the value, or a
// value moved from another key or bucket, is ErrCorrupt.
func (s *sealer) open(bucket, key, sealed []byte) ([]byte, error) {
	if len(sealed) < sealOverhead || sealed[0] != sealedV1 {
		return nil, fmt.Errorf("%w: sealed record in %s of %d bytes", ErrCorrupt, bucket, len(sealed))
	}
	ad := sealAD(bucket, key)
	defer putAD(ad)
	v, err := s.aead.Open(nil, sealed[1:1+chacha20poly1305.NonceSizeX], sealed[1+chacha20poly1305.NonceSizeX:], *ad)
	if err != nil {
		return nil, fmt.Errorf("%w: a record in %s fails authentication", ErrCorrupt, bucket)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// maxHashCache bounds the key hashes a sealer remembers (a few per contact).
const maxHashCache = 1 << 14

// cachedHash is hash, remembered: the same accounts are hashed for every
// message.
func (s *sealer) cachedHash(domain byte, part []byte) [32]byte {
	if domain != hashAccount || len(part) != 32 {
		return s.hash(domain, part)
	}
	k := [32]byte(part)
	s.mu.RLock()
	h, ok := s.hashes[k]
	s.mu.RUnlock()
	if ok {
		return h
	}
	h = s.hash(domain, part)
	s.mu.Lock()
	if len(s.hashes) < maxHashCache {
		s.hashes[k] = h
	}
	s.mu.Unlock()
	return h
}

// hash is the keyed hash that replaces a key part naming a contact.
func (s *sealer) hash(domain byte, part []byte) [32]byte {
	m := hmac.New(sha256.New, s.hashKey)
	m.Write([]byte{domain})
	m.Write(part)
	var h [32]byte
	m.Sum(h[:0])
	return h
}

// newDataKey draws a fresh data key.
func newDataKey(rnd io.Reader) ([]byte, error) {
	dk := make([]byte, DataKeySize)
	if _, err := io.ReadFull(rnd, dk); err != nil {
		return nil, fmt.Errorf("store: data key: %w", err)
	}
	return dk, nil
}
