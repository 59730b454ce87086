package store

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// countingReader yields 0, 1, 2, ... so that keys and nonces are fixed.
type countingReader struct{ n byte }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSealKnownAnswer pins the record construction: subkeys by HKDF-SHA256
// from the data key with their labels, XChaCha20-Poly1305 with the bucket
// and stored key as associated data, and the keyed hash of key parts. The
// expected values are computed here from the primitives, independently of
// sealer, and pinned as hex so that a change to either shows.
func TestSealKnownAnswer(t *testing.T) {
	dk := bytes.Repeat([]byte{0x42}, DataKeySize)
	s, err := newSealer(dk, &countingReader{})
	if err != nil {
		t.Fatal(err)
	}
	bucket, key, value := []byte("messages"), []byte("key-1"), []byte("hello, world")
	got, err := s.seal(bucket, key, value)
	if err != nil {
		t.Fatal(err)
	}

	rk, _ := hkdf.Key(sha256.New, dk, nil, "sotto store record key v1", 32)
	aead, _ := chacha20poly1305.NewX(rk)
	nonce := make([]byte, 24)
	for i := range nonce {
		nonce[i] = byte(i)
	}
	ad := append([]byte{1, byte(len(bucket))}, append(bucket, key...)...)
	want := append(append([]byte{1}, nonce...), aead.Seal(nil, nonce, value, ad)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("seal:\n got %x\nwant %x", got, want)
	}
	const pinned = "01000102030405060708090a0b0c0d0e0f1011121314151617" +
		"a3eb497de9720ddb7d229e0b96f44be4c58ac5c5648043240c968154"
	if !bytes.Equal(got, mustHex(t, pinned)) {
		t.Fatalf("sealed record %x, pinned %s", got, pinned)
	}
	if pv, err := s.open(bucket, key, got); err != nil || !bytes.Equal(pv, value) {
		t.Fatalf("open: %q, %v", pv, err)
	}

	hk, _ := hkdf.Key(sha256.New, dk, nil, "sotto store key hash v1", 32)
	m := hmac.New(sha256.New, hk)
	m.Write([]byte{'a'})
	m.Write(bytes.Repeat([]byte{7}, 32))
	h := s.hash(hashAccount, bytes.Repeat([]byte{7}, 32))
	if !bytes.Equal(h[:], m.Sum(nil)) {
		t.Fatalf("hash %x, want %x", h, m.Sum(nil))
	}
	if !bytes.Equal(h[:], mustHex(t, "f1dcda5be11b049fc5271195cbb07ed8549ba1b7fb9a8c4a74abe7418a215b58")) {
		t.Fatalf("hash %x differs from the pinned value", h)
	}
}

// TestWrapKnownAnswer pins the data key wrapping: Argon2id over the
// passphrase and salt with the stored parameters, then XChaCha20-Poly1305
// with the header as associated data.
func TestWrapKnownAnswer(t *testing.T) {
	dk := bytes.Repeat([]byte{0x42}, DataKeySize)
	pass := []byte("correct horse")
	w, err := wrapDataKey(dk, pass, testKDF, &countingReader{})
	if err != nil {
		t.Fatal(err)
	}
	header := mustHex(t, "0101"+"00000001"+"00000040"+"01"+"000102030405060708090a0b0c0d0e0f")
	if !bytes.Equal(w[:wrapHeaderLen], header) || len(w) != wrappedKeyLen {
		t.Fatalf("wrapped header %x", w[:wrapHeaderLen])
	}
	kek := argon2.IDKey(pass, header[11:], 1, 64, 1, 32)
	aead, _ := chacha20poly1305.NewX(kek)
	nonce := make([]byte, 24)
	for i := range nonce {
		nonce[i] = byte(16 + i)
	}
	want := append(append(bytes.Clone(header), nonce...), aead.Seal(nil, nonce, dk, header)...)
	if !bytes.Equal(w, want) {
		t.Fatalf("wrap:\n got %x\nwant %x", w, want)
	}
	if got, err := unwrapDataKey(w, pass); err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("unwrap: %x, %v", got, err)
	}
	if _, err := unwrapDataKey(w, []byte("correct horsE")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	for i := range w {
		bad := bytes.Clone(w)
		bad[i] ^= 0x01
		if _, err := unwrapDataKey(bad, pass); err == nil {
			t.Fatalf("flipped byte %d: unwrapped", i)
		}
	}
	if _, err := unwrapDataKey(w[:len(w)-1], pass); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated: %v", err)
	}
	huge := bytes.Clone(w)
	copy(huge[6:], []byte{0xff, 0xff, 0xff, 0xff}) // memory beyond the bound
	if _, err := unwrapDataKey(huge, pass); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("out-of-range parameters: %v", err)
	}
}

// TestSealAdversarial: a sealed record opens only under its own data key,
// bucket and key, and any change to it is reported as ErrCorrupt.
func TestSealAdversarial(t *testing.T) {
	s1, _ := newSealer(bytes.Repeat([]byte{1}, 32), &countingReader{})
	s2, _ := newSealer(bytes.Repeat([]byte{2}, 32), &countingReader{})
	v, err := s1.seal([]byte("prekeys"), []byte("k1"), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func() ([]byte, error){
		"wrong key":    func() ([]byte, error) { return s2.open([]byte("prekeys"), []byte("k1"), v) },
		"moved key":    func() ([]byte, error) { return s1.open([]byte("prekeys"), []byte("k2"), v) },
		"moved bucket": func() ([]byte, error) { return s1.open([]byte("sessions"), []byte("k1"), v) },
		"truncated":    func() ([]byte, error) { return s1.open([]byte("prekeys"), []byte("k1"), v[:len(v)-1]) },
		"too short":    func() ([]byte, error) { return s1.open([]byte("prekeys"), []byte("k1"), v[:10]) },
		"empty":        func() ([]byte, error) { return s1.open([]byte("prekeys"), []byte("k1"), nil) },
		"version": func() ([]byte, error) {
			b := bytes.Clone(v)
			b[0] = 2
			return s1.open([]byte("prekeys"), []byte("k1"), b)
		},
		"bucket/key cut": func() ([]byte, error) { return s1.open([]byte("prekeysk"), []byte("1"), v) },
	}
	for i := range v {
		cases[fmt.Sprintf("flipped byte %d", i)] = func() ([]byte, error) {
			b := bytes.Clone(v)
			b[i] ^= 0x80
			return s1.open([]byte("prekeys"), []byte("k1"), b)
		}
	}
	for name, f := range cases {
		if got, err := f(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %q, %v; want ErrCorrupt", name, got, err)
		}
	}
	if got, err := s1.open([]byte("prekeys"), []byte("k1"), v); err != nil || string(got) != "secret" {
		t.Fatalf("open: %q, %v", got, err)
	}
}

// openSealed opens dir with a passphrase at the test cost.
func openSealed(t testing.TB, dir, pass string, opts ...Option) (*DB, error) {
	t.Helper()
	return Open(dir, append([]Option{WithPassphrase([]byte(pass)), WithKDF(testKDF)}, opts...)...)
}

func mustOpenSealed(t testing.TB, dir, pass string) *DB {
	t.Helper()
	db, err := openSealed(t, dir, pass)
	if err != nil {
		t.Fatalf("Open with passphrase: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEncryptedStorePassphrase: an encrypted store needs its passphrase;
// a wrong or missing one is refused before anything is written.
func TestEncryptedStorePassphrase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db := mustOpenSealed(t, dir, "right")
	if !db.Encrypted() {
		t.Fatal("not encrypted")
	}
	addContacts(t, db, 2)
	db.Close()
	before := readFile(t, filepath.Join(dir, FileName))
	if _, err := openSealed(t, dir, "wrong"); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := Open(dir, WithPassphrase(nil)); !errors.Is(err, ErrPassphraseRequired) {
		t.Fatalf("no passphrase: %v", err)
	}
	if after := readFile(t, filepath.Join(dir, FileName)); !bytes.Equal(before, after) {
		t.Fatal("a refused open changed the file")
	}
	db = mustOpenSealed(t, dir, "right")
	mustView(t, db, func(tx *Tx) error {
		cs, err := tx.ListContacts()
		if err != nil || len(cs) != 2 || cs[0].Name != "c001" {
			t.Errorf("contacts %v, %v", cs, err)
		}
		return nil
	})
}

// TestEncryptedRecordDamage: in an encrypted store, a record moved to
// another key, a flipped byte and a truncated value are each reported as
// ErrCorrupt by the transaction that meets them, never returned as data.
func TestEncryptedRecordDamage(t *testing.T) {
	db := mustOpenSealed(t, filepath.Join(t.TempDir(), "data"), "pw")
	addContacts(t, db, 2)
	mustUpdate(t, db, func(tx *Tx) error {
		if err := tx.PutPrekey(PrekeyOneTimeDH, 1, []byte("prekey one")); err != nil {
			return err
		}
		return tx.PutPrekey(PrekeyOneTimeDH, 2, []byte("prekey two"))
	})
	raw := func(bucket, key []byte, f func(v []byte) []byte) {
		t.Helper()
		mustUpdate(t, db, func(tx *Tx) error {
			b := tx.tx.Bucket(bucket)
			return b.Put(key, f(bytes.Clone(b.Get(key))))
		})
	}
	k1, k2 := prekeyKey(PrekeyOneTimeDH, 1), prekeyKey(PrekeyOneTimeDH, 2)
	var sealed1 []byte
	mustView(t, db, func(tx *Tx) error { sealed1 = bytes.Clone(tx.tx.Bucket(bucketPrekeys).Get(k1)); return nil })
	if bytes.Contains(sealed1, []byte("prekey one")) {
		t.Fatal("prekey stored in the clear")
	}
	get := func(id uint32) error {
		return db.View(func(tx *Tx) error { _, err := tx.GetPrekey(PrekeyOneTimeDH, id); return err })
	}

	raw(bucketPrekeys, k2, func([]byte) []byte { return sealed1 }) // moved record
	if err := get(2); !errors.Is(err, ErrCorrupt) {
		t.Errorf("moved record: %v", err)
	}
	raw(bucketPrekeys, k1, func(v []byte) []byte { v[len(v)/2] ^= 1; return v })
	if err := get(1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("flipped byte: %v", err)
	}
	raw(bucketPrekeys, k1, func(v []byte) []byte { return v[:len(v)-3] })
	if err := get(1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated: %v", err)
	}
	// A damaged contact fails a listing of every contact, not just its
	// own entry (ListContacts leaves it out: TestDamagedContactConfined).
	var ck []byte
	mustView(t, db, func(tx *Tx) error {
		return tx.tx.Bucket(bucketContacts).ForEach(func(k, _ []byte) error { ck = bytes.Clone(k); return nil })
	})
	raw(bucketContacts, ck, func(v []byte) []byte { v[len(v)-1] ^= 1; return v })
	err := db.View(func(tx *Tx) error { _, err := tx.ListEveryContact(); return err })
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged contact: ListEveryContact %v", err)
	}
	// A failed write transaction rolls back.
	err = db.Update(func(tx *Tx) error {
		if err := tx.PutSetting("x", []byte("y")); err != nil {
			return err
		}
		_, err := tx.ListEveryContact()
		return err
	})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("update over damage: %v", err)
	}
	if err := db.View(func(tx *Tx) error { _, err := tx.GetSetting("x"); return err }); !errors.Is(err, ErrNotFound) {
		t.Errorf("setting after a rolled-back update: %v", err)
	}
}

// TestChangePassphrase: the data key is rewrapped; the old passphrase no
// longer opens the store and its wrapping is gone from the file.
func TestChangePassphrase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db := mustOpenSealed(t, dir, "old")
	addContacts(t, db, 3)
	var oldWrap []byte
	mustView(t, db, func(tx *Tx) error { oldWrap = bytes.Clone(tx.tx.Bucket(bucketMeta).Get(keyDataKey)); return nil })
	if err := db.ChangePassphrase([]byte("new")); err != nil {
		t.Fatal(err)
	}
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetContact(acct(2)); err != nil {
			t.Errorf("contact after change: %v", err)
		}
		return nil
	})
	db.Close()
	if bytes.Contains(readFile(t, filepath.Join(dir, FileName)), oldWrap) {
		t.Error("the old wrapping is still in the file")
	}
	if _, err := openSealed(t, dir, "old"); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("old passphrase: %v", err)
	}
	db = mustOpenSealed(t, dir, "new")
	mustView(t, db, func(tx *Tx) error {
		if cs, err := tx.ListContacts(); err != nil || len(cs) != 3 {
			t.Errorf("contacts %d, %v", len(cs), err)
		}
		return nil
	})
	if err := (&DB{}).ChangePassphrase([]byte("x")); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("plain store: %v", err)
	}
}

// TestEncryptedTokenPrefix: a token record's plain prefix (part of the
// public delete hash) is authenticated with the sealed rest: a record
// relabelled with another envelope's hash fails to open.
func TestEncryptedTokenPrefix(t *testing.T) {
	db := mustOpenSealed(t, filepath.Join(t.TempDir(), "data"), "pw")
	var h1, h2 [32]byte
	h1[0], h2[0] = 1, 2
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutEnvelopeToken(t0, h1, []byte("token one")) })
	mustView(t, db, func(tx *Tx) error {
		rec, err := tx.EnvelopeToken(t0, h1)
		if err != nil || string(rec) != "token one" {
			t.Errorf("EnvelopeToken: %q, %v", rec, err)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		b := tx.tx.Bucket(bucketTokenLog)
		k, v := b.Cursor().First()
		if bytes.Contains(v, []byte("token one")) {
			t.Error("token record in the clear")
		}
		v = bytes.Clone(v)
		copy(v, h2[:tokenHashSize])
		return b.Put(bytes.Clone(k), v)
	})
	err := db.View(func(tx *Tx) error { _, err := tx.EnvelopeToken(t0, h2); return err })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("relabelled token record: %v, want ErrCorrupt", err)
	}
}
