package keys

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/scrypt"
)

// KeystoreVersion is the keystore format this package writes. It also
// reads keystoreVersion1, the format before it.
const KeystoreVersion = 2

// keystoreVersion1 is the first format: no checksum, so damage to an
// encrypted file reads as a wrong passphrase.
const keystoreVersion1 = 1

// Passphrase key derivation: scrypt with N = 2^ScryptLogN. The parameters
// are stored in each file, so they can be raised later without breaking
// older files; files must stay within the Min/Max bounds.
const (
	ScryptLogN = 15
	ScryptR    = 8
	ScryptP    = 1

	MinScryptLogN = 10
	MaxScryptLogN = 22
	MaxScryptR    = 32
	MaxScryptP    = 16
	// MaxScryptMemory bounds 128*N*r, the memory a file may make scrypt use.
	MaxScryptMemory = 1 << 30
)

// Limits on the keystore file.
const (
	// MaxHostKeySize bounds the encoded libp2p host private key.
	MaxHostKeySize = 1024
	// MaxKeystorePayload bounds the (possibly encrypted) payload.
	MaxKeystorePayload = 16 << 10

	keystoreMagic        = "SOTTO-KS"
	keystoreSaltSize     = 16
	keystorePlainHdr     = len(keystoreMagic) + 1 + 1 + 4
	keystoreSealedHdr    = len(keystoreMagic) + 1 + 1 + 1 + 4 + 4 + keystoreSaltSize + chacha20poly1305.NonceSizeX + 4
	keystoreChecksumSize = sha256.Size
	maxKeystoreFile      = keystoreSealedHdr + MaxKeystorePayload + keystoreChecksumSize

	modePlain  = 0
	modeScrypt = 1 // scrypt, then XChaCha20-Poly1305 with the header as associated data
)

// Errors reading or writing a keystore. Each message says what to do.
// From version 2 on, damage to the file (ErrKeystoreCorrupt,
// ErrKeystoreTruncated) is told apart from a wrong passphrase; in a
// version 1 file, damage to an encrypted payload, salt, nonce or scrypt
// parameters reads as ErrWrongPassphrase, and the error's message names
// both.
var (
	ErrWrongPassphrase    = errors.New("keys: wrong passphrase for the keystore; try again with the right passphrase")
	ErrPassphraseRequired = errors.New("keys: the keystore is encrypted; supply its passphrase")
	ErrKeystoreCorrupt    = errors.New("keys: the keystore file is corrupt or not a Sotto keystore; restore it from a backup")
	ErrKeystoreTruncated  = errors.New("keys: the keystore file is truncated (an interrupted write or copy); restore it from a backup")
	ErrKeystoreVersion    = errors.New("keys: the keystore was written by a newer version of Sotto; upgrade Sotto to read it")
)

// errWrongPassphraseV1 is ErrWrongPassphrase (errors.Is) for a version 1
// file, which cannot tell a wrong passphrase from damage.
var errWrongPassphraseV1 error = wrongPassphraseV1{}

type wrongPassphraseV1 struct{}

func (wrongPassphraseV1) Error() string {
	return "keys: wrong passphrase for the keystore (or, in this older keystore format, the file is damaged); try again with the right passphrase"
}

func (wrongPassphraseV1) Is(target error) bool { return target == ErrWrongPassphrase }

// Keystore is the set of long-term secrets of one device.
//
// File format (version 2, written), integers big-endian:
//
//	magic     "SOTTO-KS"
//	version   uint8 = 2
//	mode      uint8: 0 plain, 1 scrypt + XChaCha20-Poly1305
//	mode 1:   logN uint8 | r uint32 | p uint32 | salt [16]byte | nonce [24]byte
//	length    uint32, of the payload that follows (at most 16 KiB)
//	payload   mode 0: body; mode 1: XChaCha20-Poly1305(key, nonce, body, header)
//	          where key = scrypt(passphrase, salt, 2^logN, r, p, 32) and
//	          header is every byte before the payload
//	checksum  [32]byte SHA-256 of every byte before it (unkeyed)
//
//	body      account seed [32]byte | identity DH [32]byte |
//	          host key length uint16 (1..1024) | host key
//
// A reader checks the checksum before it looks at the payload: a file
// whose checksum does not match is damaged (ErrKeystoreTruncated when it
// is shorter than its header says, else ErrKeystoreCorrupt), so an
// authentication failure of an intact file means a wrong passphrase. The
// checksum detects accidents, not tampering: anyone who can write the file
// can recompute it, and the AEAD is what protects an encrypted payload.
// Every version from 2 on ends with the same checksum, so a file whose
// version byte is unknown is reported as written by a newer version
// (ErrKeystoreVersion) only if its checksum matches, and as damaged
// otherwise.
//
// Version 1 (read, never written) is version 2 with version byte 1 and no
// checksum.
type Keystore struct {
	Account    *AccountPrivate
	IdentityDH *DHPrivate
	// HostKey is the libp2p host private key in libp2p's marshalled form;
	// this package treats it as opaque bytes.
	HostKey []byte
}

type scryptParams struct {
	logN uint8
	r, p uint32
}

var defaultScrypt = scryptParams{logN: ScryptLogN, r: ScryptR, p: ScryptP}

func (s scryptParams) check(maxLogN uint8) error {
	if s.logN < MinScryptLogN || s.logN > maxLogN || s.r < 1 || s.r > MaxScryptR || s.p < 1 || s.p > MaxScryptP {
		return fmt.Errorf("%w: scrypt parameters out of range", ErrKeystoreCorrupt)
	}
	if uint64(128)*uint64(s.r)<<s.logN > MaxScryptMemory {
		return fmt.Errorf("%w: scrypt parameters need too much memory", ErrKeystoreCorrupt)
	}
	return nil
}

func (s scryptParams) key(pass, salt []byte) ([]byte, error) {
	k, err := scrypt.Key(pass, salt, 1<<s.logN, int(s.r), int(s.p), chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("keys: deriving keystore key: %w", err)
	}
	return k, nil
}

// String redacts the secrets.
func (ks Keystore) String() string { return "keystore:REDACTED" }

// GoString redacts the secrets in %#v.
func (ks Keystore) GoString() string { return "keys.Keystore{REDACTED}" }

// Format writes String (GoString under %#v) for every verb, so that no
// verb (%d, %x, %c, ...) prints the account seed or the host key. fmt
// skips Format for %p on a Keystore value and for %w on an argument that
// is not an error (both reported by go vet): those print the fields, and
// HostKey's bytes with them.
func (ks Keystore) Format(f fmt.State, verb rune) {
	formatRedacted(f, verb, ks.String(), ks.GoString())
}

// LogValue redacts the secrets in slog output.
func (ks Keystore) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// formatRedacted writes s, or gs under %#v, whatever the verb, width or
// flags.
func formatRedacted(f fmt.State, verb rune, s, gs string) {
	if verb == 'v' && f.Flag('#') {
		s = gs
	}
	io.WriteString(f, s)
}

// Equal compares two keystores in constant time per field.
func (ks *Keystore) Equal(o *Keystore) bool {
	if ks == nil || o == nil {
		return ks == o
	}
	return ks.Account.Equal(o.Account) && ks.IdentityDH.Equal(o.IdentityDH) &&
		subtle.ConstantTimeCompare(ks.HostKey, o.HostKey) == 1
}

func (ks *Keystore) body() ([]byte, error) {
	if ks == nil || ks.Account == nil || ks.IdentityDH == nil {
		return nil, errors.New("keys: keystore needs an account key and an identity key")
	}
	if n := len(ks.HostKey); n < 1 || n > MaxHostKeySize {
		return nil, fmt.Errorf("keys: keystore host key is %d bytes, want 1..%d", n, MaxHostKeySize)
	}
	w := builder{b: make([]byte, 0, 32+DHSize+2+len(ks.HostKey))}
	w.bytes(ks.Account.Seed())
	w.bytes(ks.IdentityDH.Bytes())
	w.u8(uint8(len(ks.HostKey) >> 8))
	w.u8(uint8(len(ks.HostKey)))
	w.bytes(ks.HostKey)
	return w.b, nil
}

func parseKeystoreBody(b []byte) (*Keystore, error) {
	r := newParser(b)
	seed := r.take(32)
	dh := r.take(DHSize)
	n := int(r.u8())<<8 | int(r.u8())
	if r.ok && (n < 1 || n > MaxHostKeySize) {
		return nil, fmt.Errorf("%w: host key length %d", ErrKeystoreCorrupt, n)
	}
	host := r.take(n)
	if !r.done() {
		return nil, fmt.Errorf("%w: bad payload length", ErrKeystoreCorrupt)
	}
	acct, err := NewAccountPrivate(seed)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeystoreCorrupt, err)
	}
	ik, err := NewDHPrivate(dh)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeystoreCorrupt, err)
	}
	return &Keystore{Account: acct, IdentityDH: ik, HostKey: append([]byte(nil), host...)}, nil
}

// marshalKeystore encodes ks, encrypting it when passphrase is not empty.
func marshalKeystore(ks *Keystore, passphrase []byte, rand io.Reader, params scryptParams) ([]byte, error) {
	body, err := ks.body()
	if err != nil {
		return nil, err
	}
	defer clear(body)
	w := builder{b: make([]byte, 0, keystoreSealedHdr+len(body)+chacha20poly1305.Overhead+keystoreChecksumSize)}
	w.bytes([]byte(keystoreMagic))
	w.u8(KeystoreVersion)
	if len(passphrase) == 0 {
		w.u8(modePlain)
		w.u32(uint32(len(body)))
		w.bytes(body)
		return appendChecksum(w.b), nil
	}
	if err := params.check(MaxScryptLogN); err != nil {
		return nil, err
	}
	var salt [keystoreSaltSize]byte
	var nonce [chacha20poly1305.NonceSizeX]byte
	if _, err := io.ReadFull(rand, salt[:]); err != nil {
		return nil, fmt.Errorf("keys: reading randomness for keystore: %w", err)
	}
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return nil, fmt.Errorf("keys: reading randomness for keystore: %w", err)
	}
	w.u8(modeScrypt)
	w.u8(params.logN)
	w.u32(params.r)
	w.u32(params.p)
	w.bytes(salt[:])
	w.bytes(nonce[:])
	w.u32(uint32(len(body) + chacha20poly1305.Overhead))
	key, err := params.key(passphrase, salt[:])
	if err != nil {
		return nil, err
	}
	defer clear(key)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("keys: keystore cipher: %w", err)
	}
	header := w.b
	return appendChecksum(aead.Seal(header, nonce[:], body, header)), nil
}

// appendChecksum appends the SHA-256 of b to b.
func appendChecksum(b []byte) []byte {
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// checksumOK reports whether b ends with the SHA-256 of the bytes before
// its last keystoreChecksumSize bytes.
func checksumOK(b []byte) bool {
	if len(b) < keystoreChecksumSize {
		return false
	}
	n := len(b) - keystoreChecksumSize
	sum := sha256.Sum256(b[:n])
	return subtle.ConstantTimeCompare(sum[:], b[n:]) == 1
}

// parseKeystore decodes a keystore file's contents.
func parseKeystore(b []byte, passphrase []byte) (*Keystore, error) {
	return parseKeystoreLimit(b, passphrase, MaxScryptLogN)
}

// parseKeystoreLimit is parseKeystore with a lower bound on the work a
// file may ask for, so fuzzing stays fast.
func parseKeystoreLimit(b []byte, passphrase []byte, maxLogN uint8) (*Keystore, error) {
	if len(b) > maxKeystoreFile {
		return nil, fmt.Errorf("%w: file is %d bytes, limit %d", ErrKeystoreCorrupt, len(b), maxKeystoreFile)
	}
	r := newParser(b)
	magic := r.take(len(keystoreMagic))
	if !r.ok {
		if string(b) == keystoreMagic[:len(b)] {
			return nil, ErrKeystoreTruncated
		}
		return nil, fmt.Errorf("%w: bad magic", ErrKeystoreCorrupt)
	}
	if string(magic) != keystoreMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrKeystoreCorrupt)
	}
	version := r.u8()
	if !r.ok {
		return nil, ErrKeystoreTruncated
	}
	switch {
	case version == keystoreVersion1:
		return parseKeystoreBodyV(b, r, passphrase, maxLogN, false)
	case version == KeystoreVersion:
		return parseKeystoreBodyV(b, r, passphrase, maxLogN, true)
	case version > KeystoreVersion && checksumOK(b):
		return nil, fmt.Errorf("%w (format %d)", ErrKeystoreVersion, version)
	default:
		// Version 0 never existed, and a newer version would end with a
		// matching checksum: the version byte or the file is damaged.
		return nil, fmt.Errorf("%w: unknown format %d and no valid checksum", ErrKeystoreCorrupt, version)
	}
}

// parseKeystoreBodyV parses what follows the version byte in b (r is
// positioned there); checksummed says whether the file ends with a
// checksum (version 2).
func parseKeystoreBodyV(b []byte, r *parser, passphrase []byte, maxLogN uint8, checksummed bool) (*Keystore, error) {
	mode := r.u8()
	var params scryptParams
	var salt, nonce []byte
	if mode == modeScrypt {
		params.logN = r.u8()
		params.r = r.u32()
		params.p = r.u32()
		salt = r.take(keystoreSaltSize)
		nonce = r.take(chacha20poly1305.NonceSizeX)
	} else if r.ok && mode != modePlain {
		return nil, fmt.Errorf("%w: unknown mode %d", ErrKeystoreCorrupt, mode)
	}
	n := r.u32()
	if !r.ok {
		return nil, ErrKeystoreTruncated
	}
	if n > MaxKeystorePayload {
		return nil, fmt.Errorf("%w: payload length %d", ErrKeystoreCorrupt, n)
	}
	header := b[:len(b)-len(r.b)]
	want := int(n)
	if checksummed {
		want += keystoreChecksumSize
	}
	if len(r.b) < want {
		return nil, ErrKeystoreTruncated
	}
	if len(r.b) > want {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrKeystoreCorrupt, len(r.b)-want)
	}
	if checksummed && !checksumOK(b) {
		return nil, fmt.Errorf("%w: checksum does not match", ErrKeystoreCorrupt)
	}
	payload := r.b[:n]
	if mode == modePlain {
		return parseKeystoreBody(payload)
	}
	if err := params.check(maxLogN); err != nil {
		return nil, err
	}
	if len(payload) < chacha20poly1305.Overhead {
		return nil, fmt.Errorf("%w: payload shorter than its tag", ErrKeystoreCorrupt)
	}
	if len(passphrase) == 0 {
		return nil, ErrPassphraseRequired
	}
	key, err := params.key(passphrase, salt)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("keys: keystore cipher: %w", err)
	}
	body, err := aead.Open(nil, nonce, payload, header)
	if err != nil {
		if !checksummed {
			return nil, errWrongPassphraseV1
		}
		return nil, ErrWrongPassphrase
	}
	defer clear(body)
	return parseKeystoreBody(body)
}

// WriteKeystore writes ks to path atomically with mode 0600: a temporary
// file in the same directory is written, synced and renamed over path,
// then the directory is synced. With a non-empty passphrase the secrets
// are encrypted (scrypt, then XChaCha20-Poly1305); rand supplies the salt
// and nonce.
func WriteKeystore(path string, ks *Keystore, passphrase []byte, rand io.Reader) error {
	return writeKeystore(path, ks, passphrase, rand, defaultScrypt)
}

func writeKeystore(path string, ks *Keystore, passphrase []byte, rand io.Reader, params scryptParams) error {
	data, err := marshalKeystore(ks, passphrase, rand, params)
	if err != nil {
		return err
	}
	defer clear(data)
	return writeFileAtomic(path, data)
}

func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("keys: writing keystore: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keys: syncing keystore directory: %w", err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("keys: syncing keystore directory: %w", err)
	}
	return nil
}

// ReadKeystore reads and, if it is encrypted, decrypts the keystore at
// path. A passphrase given for an unencrypted keystore is ignored.
func ReadKeystore(path string, passphrase []byte) (*Keystore, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: reading keystore: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(maxKeystoreFile)+1))
	if err != nil {
		return nil, fmt.Errorf("keys: reading keystore: %w", err)
	}
	defer clear(data)
	return parseKeystore(data, passphrase)
}
