package keys

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// testScrypt keeps the tests fast; files written with it are still valid.
var testScrypt = scryptParams{logN: MinScryptLogN, r: ScryptR, p: ScryptP}

var keystoreErrors = []error{ErrWrongPassphrase, ErrPassphraseRequired, ErrKeystoreCorrupt, ErrKeystoreTruncated, ErrKeystoreVersion}

func testKeystore(t testing.TB, label string) *Keystore {
	t.Helper()
	r := testRand(label)
	acct, err := GenerateAccount(r)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := GenerateDH(r)
	if err != nil {
		t.Fatal(err)
	}
	// Shaped like libp2p's marshalled Ed25519 private key (68 bytes).
	host := append([]byte{0x08, 0x01, 0x12, 0x40}, bytes.Repeat([]byte{0x5a}, 64)...)
	return &Keystore{Account: acct, IdentityDH: ik, HostKey: host}
}

func TestKeystoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ks := testKeystore(t, "ks-roundtrip")
	pass := []byte("correct horse battery staple")
	for _, c := range []struct {
		name string
		pass []byte
	}{{"plain", nil}, {"encrypted", pass}} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".key")
			if err := writeKeystore(path, ks, c.pass, testRand("ks-write"), testScrypt); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
			}
			got, err := ReadKeystore(path, c.pass)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(ks) {
				t.Fatal("keystore changed in the round trip")
			}
			raw, _ := os.ReadFile(path)
			if c.pass != nil && (bytes.Contains(raw, ks.Account.Seed()) || bytes.Contains(raw, ks.HostKey) || bytes.Contains(raw, ks.IdentityDH.Bytes())) {
				t.Fatal("encrypted file contains a secret in the clear")
			}
		})
	}
	// A passphrase given for a plain keystore is ignored.
	if got, err := ReadKeystore(filepath.Join(dir, "plain.key"), pass); err != nil || !got.Equal(ks) {
		t.Fatalf("plain with passphrase: %v", err)
	}
	enc := filepath.Join(dir, "encrypted.key")
	if _, err := ReadKeystore(enc, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := ReadKeystore(enc, nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Fatalf("no passphrase: %v", err)
	}
	if _, err := ReadKeystore(filepath.Join(dir, "missing.key"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestWriteKeystoreDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ks")
	ks := testKeystore(t, "ks-defaults")
	if err := WriteKeystore(path, ks, []byte("pw"), testRand("ks-defaults-write")); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	o := len(keystoreMagic) + 2
	if raw[o] != ScryptLogN || !bytes.Equal(raw[o+1:o+9], []byte{0, 0, 0, ScryptR, 0, 0, 0, ScryptP}) {
		t.Fatalf("header does not record the default scrypt parameters: %x", raw[:o+9])
	}
	got, err := ReadKeystore(path, []byte("pw"))
	if err != nil || !got.Equal(ks) {
		t.Fatalf("read back: %v", err)
	}
}

func TestWriteKeystoreAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keystore")
	if err := os.WriteFile(path, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	ks := testKeystore(t, "ks-atomic")
	if err := writeKeystore(path, ks, nil, testRand("w"), testScrypt); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced file has mode %v", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	// A failed write leaves the old file alone and no temporary file.
	bad := &Keystore{Account: ks.Account, IdentityDH: ks.IdentityDH}
	if err := writeKeystore(path, bad, nil, testRand("w"), testScrypt); err == nil {
		t.Fatal("keystore without host key written")
	}
	if err := writeKeystore(filepath.Join(dir, "no", "such", "dir"), ks, nil, testRand("w"), testScrypt); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	if got, err := ReadKeystore(path, nil); err != nil || !got.Equal(ks) {
		t.Fatalf("old keystore damaged: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

// TestKeystoreKnownAnswer pins both encodings for fixed inputs.
func TestKeystoreKnownAnswer(t *testing.T) {
	ks := testKeystore(t, "ks-kat")
	plain, err := marshalKeystore(ks, nil, testRand("ks-kat-rand"), testScrypt)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(plain); got != wantPlainKeystore {
		t.Errorf("plain encoding =\n%s\nwant\n%s", got, wantPlainKeystore)
	}
	sealed, err := marshalKeystore(ks, []byte("passphrase"), testRand("ks-kat-rand"), testScrypt)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(sealed)
	if got := hex.EncodeToString(sum[:]); got != wantSealedKeystoreHash {
		t.Errorf("encrypted encoding SHA-256 = %s, want %s", got, wantSealedKeystoreHash)
	}
	got, err := parseKeystore(sealed, []byte("passphrase"))
	if err != nil || !got.Equal(ks) {
		t.Fatalf("parse: %v", err)
	}
	// The trailer is the SHA-256 of everything before it.
	for _, b := range [][]byte{plain, sealed} {
		n := len(b) - sha256.Size
		if sum := sha256.Sum256(b[:n]); !bytes.Equal(sum[:], b[n:]) {
			t.Errorf("checksum trailer of %x is not the SHA-256 of the rest", b[:12])
		}
	}
}

// wantPlainKeystore is the version 1 encoding pinned before version 2
// existed, with its version byte set to 2 and the SHA-256 of the result
// appended (computed with Python's hashlib).
const (
	wantPlainKeystore      = "534f54544f2d4b530200000000866fbe007b17c91775692407697ac5597e2ee9ef3a3320b48e4147639eff73d1991eecbf97c7e85034e0553b2461b1c9919b03cc58ce2779ff9f02bba7bb16c5520044080112405a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a3aca789dbf8588dbca34a5345a9d7c6c61b77d1596fcf60719319580e2bca1d3"
	wantSealedKeystoreHash = "6ebd1266e8be9bf077066be09bbf9ccefe4295923d85b44464eeea704b4e9b8b"
)

// resum replaces the checksum trailer of a version 2 keystore with the
// SHA-256 of the bytes before it, as a writer that changed a field would.
func resum(b []byte) []byte {
	n := len(b) - sha256.Size
	return appendChecksum(bytes.Clone(b[:n]))
}

// TestKeystoreVersion1 opens keystore files written by the version 1
// code (keys/testdata/keystore-v1-*: plain, scrypt with the tests' cheap
// parameters, and scrypt with the defaults, as WriteKeystore wrote them),
// and checks what version 1 can and cannot tell.
func TestKeystoreVersion1(t *testing.T) {
	want := testKeystore(t, "ks-v1")
	pass := []byte("passphrase")
	for _, name := range []string{"plain", "scrypt", "default"} {
		path := filepath.Join("testdata", "keystore-v1-"+name)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if raw[len(keystoreMagic)] != keystoreVersion1 {
			t.Fatalf("%s: not a version 1 file", name)
		}
		got, err := ReadKeystore(path, pass)
		if err != nil || !got.Equal(want) {
			t.Fatalf("%s: version 1 keystore does not open: %v", name, err)
		}
		// Written again, it is version 2 and reads back the same.
		again, err := marshalKeystore(got, pass, testRand("ks-v1-again"), testScrypt)
		if err != nil {
			t.Fatal(err)
		}
		if again[len(keystoreMagic)] != KeystoreVersion {
			t.Fatalf("%s: rewritten as version %d", name, again[len(keystoreMagic)])
		}
		if back, err := parseKeystore(again, pass); err != nil || !back.Equal(want) {
			t.Fatalf("%s: rewritten keystore: %v", name, err)
		}
		for n := range len(raw) {
			if _, err := parseKeystore(raw[:n], pass); !errors.Is(err, ErrKeystoreTruncated) {
				t.Fatalf("%s cut to %d bytes: %v", name, n, err)
			}
		}
		if _, err := parseKeystore(append(bytes.Clone(raw), 0), pass); !errors.Is(err, ErrKeystoreCorrupt) {
			t.Fatalf("%s with a trailing byte: %v", name, err)
		}
		if name == "plain" {
			continue
		}
		if _, err := parseKeystore(raw, []byte("not the passphrase")); !errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("%s, wrong passphrase: %v", name, err)
		}
		// Without a checksum, damage to the ciphertext is indistinguishable
		// from a wrong passphrase; the error's message names both.
		damaged := bytes.Clone(raw)
		damaged[len(damaged)-20] ^= 1
		_, err = parseKeystore(damaged, pass)
		checkErr(t, err, ErrWrongPassphrase, keystoreErrors)
		if !strings.Contains(err.Error(), "damaged") {
			t.Fatalf("%s: version 1 error does not mention damage: %v", name, err)
		}
	}
}

// TestKeystoreDamage: in a version 2 file, any truncation or flipped bit
// is reported as damage, never as a wrong passphrase, and costs no scrypt
// run; an intact file with the wrong passphrase is reported as such.
func TestKeystoreDamage(t *testing.T) {
	ks := testKeystore(t, "ks-damage")
	pass := []byte("hunter2 hunter2")
	plain, _ := marshalKeystore(ks, nil, testRand("r"), testScrypt)
	sealed, _ := marshalKeystore(ks, pass, testRand("r"), testScrypt)
	m := len(keystoreMagic)
	payload := keystoreSealedHdr
	sum := len(sealed) - sha256.Size
	flip := func(off int, bit byte) []byte {
		b := bytes.Clone(sealed)
		b[off] ^= bit
		return b
	}
	regions := []struct {
		name string
		off  int
		want error
	}{
		{"magic", 3, ErrKeystoreCorrupt},
		{"version", m, ErrKeystoreCorrupt},
		{"mode", m + 1, ErrKeystoreCorrupt},
		{"scrypt logN", m + 2, ErrKeystoreCorrupt},
		{"scrypt r", m + 6, ErrKeystoreCorrupt},
		{"scrypt p", m + 10, ErrKeystoreCorrupt},
		{"salt", m + 11, ErrKeystoreCorrupt},
		{"salt end", m + 11 + keystoreSaltSize - 1, ErrKeystoreCorrupt},
		{"nonce", m + 11 + keystoreSaltSize, ErrKeystoreCorrupt},
		{"nonce end", payload - 5, ErrKeystoreCorrupt},
		{"payload length, low bit", payload - 1, ErrKeystoreTruncated},
		{"ciphertext", payload, ErrKeystoreCorrupt},
		{"ciphertext end", sum - chacha20poly1305.Overhead - 1, ErrKeystoreCorrupt},
		{"tag", sum - chacha20poly1305.Overhead, ErrKeystoreCorrupt},
		{"tag end", sum - 1, ErrKeystoreCorrupt},
		{"checksum", sum, ErrKeystoreCorrupt},
		{"checksum end", len(sealed) - 1, ErrKeystoreCorrupt},
	}
	for _, c := range regions {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseKeystore(flip(c.off, 1), pass)
			checkErr(t, err, c.want, keystoreErrors)
		})
	}
	t.Run("wrong passphrase", func(t *testing.T) {
		_, err := parseKeystore(sealed, []byte("hunter3 hunter3"))
		checkErr(t, err, ErrWrongPassphrase, keystoreErrors)
	})
	// Every single-bit flip anywhere in either file, and every truncation.
	// The checksum is checked before scrypt, so a wrong passphrase costs
	// nothing here: none of these reaches the key derivation.
	for _, src := range []struct {
		name string
		b    []byte
	}{{"plain", plain}, {"encrypted", sealed}} {
		for off := range len(src.b) {
			for bit := range 8 {
				b := bytes.Clone(src.b)
				b[off] ^= 1 << bit
				_, err := parseKeystore(b, []byte("wrong"))
				if !errors.Is(err, ErrKeystoreCorrupt) && !errors.Is(err, ErrKeystoreTruncated) {
					t.Fatalf("%s, bit %d of byte %d flipped: %v", src.name, bit, off, err)
				}
			}
		}
		for n := range len(src.b) {
			if _, err := parseKeystore(src.b[:n], []byte("wrong")); !errors.Is(err, ErrKeystoreTruncated) {
				t.Fatalf("%s cut to %d bytes: %v", src.name, n, err)
			}
		}
	}
}

func TestParseKeystoreErrors(t *testing.T) {
	ks := testKeystore(t, "ks-errors")
	pass := []byte("hunter2 hunter2")
	plain, _ := marshalKeystore(ks, nil, testRand("r"), testScrypt)
	sealed, _ := marshalKeystore(ks, pass, testRand("r"), testScrypt)
	with := func(src []byte, off int, v ...byte) []byte {
		b := bytes.Clone(src)
		copy(b[off:], v)
		return b
	}
	flip := func(src []byte, off int) []byte {
		b := bytes.Clone(src)
		b[off] ^= 1
		return b
	}
	m := len(keystoreMagic)
	lenOff := m + 2
	bodyOff := keystorePlainHdr
	tag := len(sealed) - sha256.Size - 1
	// Cases with "resummed" change a field and recompute the checksum, so
	// the check after the checksum is the one that must catch them.
	cases := []struct {
		name string
		in   []byte
		pass []byte
		want error
	}{
		{"empty file", nil, nil, ErrKeystoreTruncated},
		{"not a keystore", []byte("-----BEGIN PRIVATE KEY-----"), nil, ErrKeystoreCorrupt},
		{"bad magic", with(plain, 0, 'X'), nil, ErrKeystoreCorrupt},
		{"version 3, resummed", resum(with(plain, m, 3)), nil, ErrKeystoreVersion},
		{"version 255, resummed", resum(with(sealed, m, 255)), pass, ErrKeystoreVersion},
		{"version 3, checksum not matching", with(plain, m, 3), nil, ErrKeystoreCorrupt},
		{"version 0", with(plain, m, 0), nil, ErrKeystoreCorrupt},
		{"version 0, resummed", resum(with(plain, m, 0)), nil, ErrKeystoreCorrupt},
		{"version 1 with a checksum", with(plain, m, 1), nil, ErrKeystoreCorrupt},
		{"unknown mode", with(plain, m+1, 7), nil, ErrKeystoreCorrupt},
		{"trailing byte plain", append(bytes.Clone(plain), 0), nil, ErrKeystoreCorrupt},
		{"trailing byte encrypted", append(bytes.Clone(sealed), 0), pass, ErrKeystoreCorrupt},
		{"trailing byte encrypted, resummed", appendChecksum(append(bytes.Clone(sealed), 0)), pass, ErrKeystoreCorrupt},
		{"payload length over limit", with(plain, lenOff, 0xff), nil, ErrKeystoreCorrupt},
		{"checksum missing", plain[:len(plain)-sha256.Size], nil, ErrKeystoreTruncated},
		{"host key length 0, resummed", resum(with(plain, bodyOff+64, 0, 0)), nil, ErrKeystoreCorrupt},
		{"host key length too long, resummed", resum(with(plain, bodyOff+64, 0x10, 0)), nil, ErrKeystoreCorrupt},
		{"host key length short of body, resummed", resum(with(plain, bodyOff+64, 0, 1)), nil, ErrKeystoreCorrupt},
		{"account seed flipped", flip(plain, bodyOff+3), nil, ErrKeystoreCorrupt},
		{"scrypt logN too small, resummed", resum(with(sealed, m+2, MinScryptLogN-1)), pass, ErrKeystoreCorrupt},
		{"scrypt logN too large, resummed", resum(with(sealed, m+2, 40)), pass, ErrKeystoreCorrupt},
		{"scrypt r zero, resummed", resum(with(sealed, m+3, 0, 0, 0, 0)), pass, ErrKeystoreCorrupt},
		{"scrypt memory too large, resummed", resum(with(sealed, m+2, MaxScryptLogN, 0, 0, 0, MaxScryptR)), pass, ErrKeystoreCorrupt},
		{"wrong passphrase", sealed, []byte("hunter3 hunter3"), ErrWrongPassphrase},
		{"passphrase missing", sealed, nil, ErrPassphraseRequired},
		{"empty passphrase", sealed, []byte{}, ErrPassphraseRequired},
		{"passphrase missing, file damaged", flip(sealed, tag), nil, ErrKeystoreCorrupt},
		{"ciphertext flipped", flip(sealed, tag-20), pass, ErrKeystoreCorrupt},
		{"tag flipped", flip(sealed, tag), pass, ErrKeystoreCorrupt},
		{"salt flipped", flip(sealed, m+11), pass, ErrKeystoreCorrupt},
		{"nonce flipped", flip(sealed, m+11+keystoreSaltSize), pass, ErrKeystoreCorrupt},
		{"scrypt p changed", with(sealed, m+7, 0, 0, 0, 2), pass, ErrKeystoreCorrupt},
		// A writer that recomputes the checksum defeats it; the AEAD
		// still refuses, and without a way to tell, the error is the
		// passphrase's.
		{"ciphertext flipped, resummed", resum(flip(sealed, tag-20)), pass, ErrWrongPassphrase},
		{"salt flipped, resummed", resum(flip(sealed, m+11)), pass, ErrWrongPassphrase},
		{"scrypt p changed, resummed", resum(with(sealed, m+7, 0, 0, 0, 2)), pass, ErrWrongPassphrase},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseKeystore(c.in, c.pass)
			checkErr(t, err, c.want, keystoreErrors)
			if len(c.pass) > 0 && strings.Contains(err.Error(), string(c.pass)) {
				t.Fatal("error message contains the passphrase")
			}
		})
	}
	for _, src := range []struct {
		name string
		b    []byte
	}{{"plain", plain}, {"encrypted", sealed}} {
		for n := range len(src.b) {
			if _, err := parseKeystore(src.b[:n], pass); !errors.Is(err, ErrKeystoreTruncated) {
				t.Fatalf("%s cut to %d bytes: %v", src.name, n, err)
			}
		}
	}
	if _, err := parseKeystore(make([]byte, maxKeystoreFile+1), nil); !errors.Is(err, ErrKeystoreCorrupt) {
		t.Fatalf("oversized file: %v", err)
	}
}

// FuzzReadKeystore parses arbitrary files with arbitrary passphrases:
// errors are keystore sentinels; a version 2 file reported as having the
// wrong passphrase is intact (its checksum matches); a plain version 2
// file re-encodes to the same bytes; anything read re-encrypts and reads
// back. The seed corpus (testdata/fuzz/FuzzReadKeystore) holds version 1
// and 2 files of both modes.
func FuzzReadKeystore(f *testing.F) {
	ks := testKeystore(f, "ks-fuzz")
	plain, _ := marshalKeystore(ks, nil, testRand("r"), testScrypt)
	sealed, _ := marshalKeystore(ks, []byte("pw"), testRand("r"), testScrypt)
	f.Add(plain, []byte(nil))
	f.Add(sealed, []byte("pw"))
	f.Add(sealed, []byte("wrong"))
	f.Add(sealed[:40], []byte("pw"))
	f.Add([]byte(keystoreMagic), []byte(nil))
	f.Fuzz(func(t *testing.T, data, pass []byte) {
		// Bound the scrypt work a fuzzed header may ask for.
		got, err := parseKeystoreLimit(data, pass, MinScryptLogN)
		if err != nil {
			if errors.Is(err, ErrWrongPassphrase) && data[len(keystoreMagic)] == KeystoreVersion && !checksumOK(data) {
				t.Fatal("a damaged version 2 file was reported as a wrong passphrase")
			}
			for _, e := range keystoreErrors {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("error matches no keystore sentinel: %v", err)
		}
		if data[len(keystoreMagic)] == KeystoreVersion && !checksumOK(data) {
			t.Fatal("a version 2 file without a matching checksum was read")
		}
		if data[len(keystoreMagic)+1] == modePlain {
			again, err := marshalKeystore(got, nil, nil, testScrypt)
			if err != nil {
				t.Fatalf("plain keystore does not encode: %v", err)
			}
			if data[len(keystoreMagic)] == KeystoreVersion && !bytes.Equal(again, data) {
				t.Fatal("plain keystore not canonical")
			}
			if back, err := parseKeystore(again, nil); err != nil || !back.Equal(got) {
				t.Fatalf("re-encoded plain keystore does not read back: %v", err)
			}
			return
		}
		again, err := marshalKeystore(got, pass, testRand("again"), testScrypt)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseKeystore(again, pass)
		if err != nil || !back.Equal(got) {
			t.Fatalf("re-encrypted keystore does not read back: %v", err)
		}
	})
}

// TestWrongPassphraseMessage: a version 2 file, which tells damage apart,
// reports only the wrong passphrase; a version 1 file says it may also be
// damaged. Both are ErrWrongPassphrase.
func TestWrongPassphraseMessage(t *testing.T) {
	v1, err := os.ReadFile(filepath.Join("testdata", "keystore-v1-scrypt"))
	if err != nil {
		t.Fatal(err)
	}
	ks := testKeystore(t, "ks-wrong-message")
	v2, err := marshalKeystore(ks, []byte("right"), testRand("ks-wrong-message-seal"), testScrypt)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		file    []byte
		damaged bool
	}{{"v1", v1, true}, {"v2", v2, false}} {
		_, err := parseKeystore(c.file, []byte("certainly not the passphrase"))
		if !errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("%s: %v, want ErrWrongPassphrase", c.name, err)
		}
		if got := strings.Contains(err.Error(), "damaged"); got != c.damaged {
			t.Errorf("%s: message %q mentions damage: %v, want %v", c.name, err, got, c.damaged)
		}
	}
}
