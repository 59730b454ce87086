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
}

const (
	wantPlainKeystore      = "534f54544f2d4b530100000000866fbe007b17c91775692407697ac5597e2ee9ef3a3320b48e4147639eff73d1991eecbf97c7e85034e0553b2461b1c9919b03cc58ce2779ff9f02bba7bb16c5520044080112405a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
	wantSealedKeystoreHash = "ac75aa3a1cc9304080399cd03e8a0931960d0374183bfe71fd9ca23285f88746"
)

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
	cases := []struct {
		name string
		in   []byte
		pass []byte
		want error
	}{
		{"empty file", nil, nil, ErrKeystoreTruncated},
		{"not a keystore", []byte("-----BEGIN PRIVATE KEY-----"), nil, ErrKeystoreCorrupt},
		{"bad magic", with(plain, 0, 'X'), nil, ErrKeystoreCorrupt},
		{"version 2", with(plain, m, 2), nil, ErrKeystoreVersion},
		{"version 0", with(plain, m, 0), nil, ErrKeystoreVersion},
		{"unknown mode", with(plain, m+1, 7), nil, ErrKeystoreCorrupt},
		{"trailing byte plain", append(bytes.Clone(plain), 0), nil, ErrKeystoreCorrupt},
		{"trailing byte encrypted", append(bytes.Clone(sealed), 0), pass, ErrKeystoreCorrupt},
		{"payload length over limit", with(plain, lenOff, 0xff), nil, ErrKeystoreCorrupt},
		{"host key length 0", with(plain, bodyOff+64, 0, 0), nil, ErrKeystoreCorrupt},
		{"host key length too long", with(plain, bodyOff+64, 0x10, 0), nil, ErrKeystoreCorrupt},
		{"host key length short of body", with(plain, bodyOff+64, 0, 1), nil, ErrKeystoreCorrupt},
		{"scrypt logN too small", with(sealed, m+2, MinScryptLogN-1), pass, ErrKeystoreCorrupt},
		{"scrypt logN too large", with(sealed, m+2, 40), pass, ErrKeystoreCorrupt},
		{"scrypt r zero", with(sealed, m+3, 0, 0, 0, 0), pass, ErrKeystoreCorrupt},
		{"scrypt memory too large", with(sealed, m+2, MaxScryptLogN, 0, 0, 0, MaxScryptR), pass, ErrKeystoreCorrupt},
		{"wrong passphrase", sealed, []byte("hunter3 hunter3"), ErrWrongPassphrase},
		{"passphrase missing", sealed, nil, ErrPassphraseRequired},
		{"empty passphrase", sealed, []byte{}, ErrPassphraseRequired},
		{"ciphertext flipped", flip(sealed, len(sealed)-20), pass, ErrWrongPassphrase},
		{"tag flipped", flip(sealed, len(sealed)-1), pass, ErrWrongPassphrase},
		{"salt flipped", flip(sealed, m+11), pass, ErrWrongPassphrase},
		{"nonce flipped", flip(sealed, m+11+keystoreSaltSize), pass, ErrWrongPassphrase},
		{"scrypt p changed", with(sealed, m+7, 0, 0, 0, 2), pass, ErrWrongPassphrase},
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
			for _, e := range keystoreErrors {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("error matches no keystore sentinel: %v", err)
		}
		if data[len(keystoreMagic)+1] == modePlain {
			again, err := marshalKeystore(got, nil, nil, testScrypt)
			if err != nil || !bytes.Equal(again, data) {
				t.Fatalf("plain keystore not canonical: %v", err)
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
