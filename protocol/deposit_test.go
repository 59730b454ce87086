package protocol

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

// The expected values of this file were computed apart from this package:
// HKDF-SHA256 and SHA-256 with Python's hmac and hashlib modules, Ed25519
// public keys and signatures with OpenSSL 3.0 (`openssl pkey`, `openssl
// pkeyutl -sign -rawin`) from the derived RFC 8032 seeds.

func kat32(t testing.TB, s string) [32]byte {
	t.Helper()
	return [32]byte(mustHex(t, s))
}

func TestWriteKeyKnownAnswers(t *testing.T) {
	seed := [32]byte(bytes.Repeat([]byte{0x42}, 32))
	for _, tc := range []struct {
		sender             byte
		epoch              uint64
		wantSeed, pub, tag string
	}{
		{FromInitiator, 20419,
			"c78651364d9a0032daf662023a7253f50e470c3aad2b5a459914313fadfd9129",
			"708228f254e3fbe2c0f8f4cbd236bdc7a219267018f311195984ea6385046cc9",
			"493b5a8dbedbed054fc9f0b47e70276022b090bdc493f21742202c3985a931ac"},
		{FromInitiator, 20420,
			"b2f764daa32d733f04261178a6f8945da3cb34a952331ed8232fd1893274c906",
			"62c30194ee9ac4bdb8dc03fdcdaf7c4250c7ffb097121e34d3a2b0f3db280c96",
			"ea60618b06bfb57d52c65335e1aa23dc0c741767a0c467f0023fc918d5c2102b"},
		{FromResponder, 20419,
			"1d933b7d1a17dbd72e852e09cd6864c639e135d5aa63b0ee4445209fce04ea2f",
			"4c8353a8771410bb432add36a7f265d4e2078b4d253d2c39cac6a96f21305a51",
			"a32e14e2e2251aa751d43575727bc35a430b24637fe2afd943bc76255630192d"},
	} {
		k := WriteKey(seed, tc.sender, tc.epoch)
		if got := hex.EncodeToString(k.Seed()); got != tc.wantSeed {
			t.Errorf("WriteKey(%d, %d) seed = %s, want %s", tc.sender, tc.epoch, got, tc.wantSeed)
		}
		if got := hex.EncodeToString(k.Public().(ed25519.PublicKey)); got != tc.pub {
			t.Errorf("WriteKey(%d, %d) public = %s, want %s", tc.sender, tc.epoch, got, tc.pub)
		}
		if got := PairTag2(seed, tc.sender, tc.epoch); got != kat32(t, tc.tag) {
			t.Errorf("PairTag2(%d, %d) = %x, want %s", tc.sender, tc.epoch, got, tc.tag)
		}
		if PairTag2(seed, tc.sender, tc.epoch) == PairTag(seed, tc.sender, tc.epoch) {
			t.Errorf("version 2 pairwise tag equals the version 1 tag")
		}
	}
}

func TestIntroTag2KnownAnswers(t *testing.T) {
	var q [IntroSecretSize]byte
	for i := range q {
		q[i] = byte(i)
	}
	for _, tc := range []struct {
		epoch uint64
		want  string
	}{
		{0, "423f66e8efacceed12c0f4be93df1151c0d78d605894c1ce3296c24c4a2b88ba"},
		{20419, "54f04e93fd8fdf227a3221b234a439cc200745ac0ecefb294400914bdb839e50"},
	} {
		if got := IntroTag2(q, tc.epoch); got != kat32(t, tc.want) {
			t.Errorf("IntroTag2(epoch %d) = %x, want %s", tc.epoch, got, tc.want)
		}
	}
}

func katEnvelope() []byte {
	env := make([]byte, 200)
	for i := range env {
		env[i] = byte(i)
	}
	return env
}

func TestPairDepositKnownAnswer(t *testing.T) {
	seed := [32]byte(bytes.Repeat([]byte{0x42}, 32))
	env := katEnvelope()
	dep := SealPairDeposit(WriteKey(seed, FromInitiator, 20419), env)
	want := mustHex(t, "01"+
		"708228f254e3fbe2c0f8f4cbd236bdc7a219267018f311195984ea6385046cc9"+
		"9abf1323d615eb71798a9f7c3fd2e1e5249586215c04c79a889c655b75a60b4a"+
		"60f3a76043f92c640420039fcf93a52f4445035fadea7509832825b4d3294c0d")
	want = append(want, env...)
	if !bytes.Equal(dep, want) {
		t.Fatalf("pairwise deposit =\n%x\nwant\n%x", dep, want)
	}
	d, err := ParseDeposit(dep)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(PairTag2(seed, FromInitiator, 20419), DefaultStampBits); err != nil {
		t.Fatalf("Check of a correctly signed deposit: %v", err)
	}
	if !bytes.Equal(d.Marshal(), dep) {
		t.Fatal("Marshal does not give back the parsed bytes")
	}
}

func TestStampKnownAnswers(t *testing.T) {
	env := katEnvelope()
	h := sha256.Sum256(env)
	for _, tc := range []struct {
		bits  int
		nonce uint64
		hash  string
	}{
		{8, 97, "004c2f8d77cea5615606fa4fd83aa1c44ff22828735fe2caf4ecef62e9ad7c97"},
		{12, 8528, "000c562ef938863f5b65fa583941bf9b997d4e585e39a953170fbbae4085896e"},
		{16, 37156, "0000c1757ad04f295f519558dada0dd36051f5d15001fa1c838a32e5fb457c23"},
	} {
		var n [StampNonceSize]byte
		binary.BigEndian.PutUint64(n[:], tc.nonce)
		if got := StampHash(h, n); got != kat32(t, tc.hash) {
			t.Errorf("StampHash(nonce %d) = %x, want %s", tc.nonce, got, tc.hash)
		}
		// MintIntroDeposit counts nonces up from zero, so it finds
		// exactly the first nonce of the difficulty.
		dep, err := MintIntroDeposit(context.Background(), env, tc.bits)
		if err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint64(dep[1:9]); dep[0] != DepositIntro || got != tc.nonce {
			t.Errorf("MintIntroDeposit(%d bits) = kind %d nonce %d, want kind 2 nonce %d", tc.bits, dep[0], got, tc.nonce)
		}
		d, err := ParseDeposit(dep)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Check(Tag{}, tc.bits); err != nil {
			t.Errorf("stamp of %d bits: %v", tc.bits, err)
		}
		if err := d.Check(Tag{}, LeadingZeroBits(kat32(t, tc.hash))+1); !errors.Is(err, ErrStamp) {
			t.Errorf("stamp checked above its difficulty: got %v, want ErrStamp", err)
		}
	}
}

func TestLeadingZeroBits(t *testing.T) {
	for _, tc := range []struct {
		first []byte
		want  int
	}{
		{[]byte{0x80}, 0}, {[]byte{0x7f}, 1}, {[]byte{0x01}, 7},
		{[]byte{0x00, 0x80}, 8}, {[]byte{0x00, 0x00, 0x10}, 19},
		{nil, 256},
	} {
		var h [32]byte
		copy(h[:], tc.first)
		if got := LeadingZeroBits(h); got != tc.want {
			t.Errorf("LeadingZeroBits(%x…) = %d, want %d", tc.first, got, tc.want)
		}
	}
}

// A mailbox must refuse every deposit whose credential was not made by a
// holder of the session's tag seed for this envelope, epoch and role.
func TestPairDepositForgeries(t *testing.T) {
	seed := [32]byte(bytes.Repeat([]byte{0x42}, 32))
	other := [32]byte(bytes.Repeat([]byte{0x43}, 32))
	env := katEnvelope()
	tag := PairTag2(seed, FromInitiator, 20419)
	good := SealPairDeposit(WriteKey(seed, FromInitiator, 20419), env)

	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		return b
	}
	for _, tc := range []struct {
		name string
		dep  []byte
		want error
	}{
		{"another session's key", SealPairDeposit(WriteKey(other, FromInitiator, 20419), env), ErrWriteKeyTag},
		{"the other role's key", SealPairDeposit(WriteKey(seed, FromResponder, 20419), env), ErrWriteKeyTag},
		{"another epoch's key", SealPairDeposit(WriteKey(seed, FromInitiator, 20420), env), ErrWriteKeyTag},
		{"a bit of the key flipped", flip(1), ErrWriteKeyTag},
		{"a bit of the signature flipped", flip(1 + WriteKeySize + 5), ErrWriteSignature},
		{"a bit of the envelope flipped", flip(len(good) - 1), ErrWriteSignature},
		{"the signature of another envelope", append(bytes.Clone(good[:1+WriteKeySize+DepositSignatureSize]), []byte("another envelope")...), ErrWriteSignature},
	} {
		d, err := ParseDeposit(tc.dep)
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.name, err)
		}
		if err := d.Check(tag, 0); !errors.Is(err, tc.want) || !errors.Is(err, ErrCredential) {
			t.Errorf("%s: Check = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestStampBoundToEnvelope(t *testing.T) {
	env := katEnvelope()
	dep, err := MintIntroDeposit(context.Background(), env, 16)
	if err != nil {
		t.Fatal(err)
	}
	// The same nonce in front of another envelope (another tag, another
	// expiry, another ciphertext) is a stamp of about zero bits.
	moved := bytes.Clone(dep)
	moved[len(moved)-1] ^= 0x01
	d, err := ParseDeposit(moved)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(Tag{}, 16); !errors.Is(err, ErrStamp) {
		t.Fatalf("a stamp moved to another envelope: Check = %v, want ErrStamp", err)
	}
}

func TestParseDepositRejects(t *testing.T) {
	env := katEnvelope()
	pair := SealPairDeposit(WriteKey([32]byte{}, FromInitiator, 1), env)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrDepositShort},
		{"unknown kind", append([]byte{0x03}, env...), ErrDepositKind},
		{"kind zero", append([]byte{0x00}, env...), ErrDepositKind},
		{"pairwise credential cut", pair[:1+WriteKeySize+10], ErrDepositShort},
		{"pairwise without envelope", pair[:1+WriteKeySize+DepositSignatureSize], ErrBadDeposit},
		{"intro nonce cut", []byte{DepositIntro, 1, 2, 3}, ErrDepositShort},
		{"intro without envelope", make([]byte, 1+StampNonceSize), ErrBadDeposit},
		{"too large", append([]byte{DepositIntro}, make([]byte, MaxDepositSize)...), ErrBadDeposit},
	} {
		if tc.name == "intro without envelope" {
			tc.b[0] = DepositIntro
		}
		_, err := ParseDeposit(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: ParseDeposit = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestMintIntroDepositBounds(t *testing.T) {
	if _, err := MintIntroDeposit(context.Background(), katEnvelope(), MaxStampBits+1); err == nil {
		t.Error("a difficulty above MaxStampBits was accepted")
	}
	if _, err := MintIntroDeposit(context.Background(), katEnvelope(), -1); err == nil {
		t.Error("a negative difficulty was accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := MintIntroDeposit(ctx, katEnvelope(), MaxStampBits); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a search past its deadline: %v, want context.DeadlineExceeded", err)
	}
}

func FuzzParseDeposit(f *testing.F) {
	f.Add(SealPairDeposit(WriteKey([32]byte{}, FromInitiator, 1), katEnvelope()))
	f.Add(append([]byte{DepositIntro, 0, 0, 0, 0, 0, 0, 0, 1}, katEnvelope()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDeposit(b)
		if err != nil {
			return
		}
		if !bytes.Equal(d.Marshal(), b) {
			t.Fatalf("parse and marshal change the deposit")
		}
		_ = d.Check(Tag{}, DefaultStampBits)
	})
}

// BenchmarkMintStamp is what an honest first-contact sender pays per
// deposit at the default difficulty. The nonce search is a geometric
// trial, so single runs vary; report the mean over many envelopes.
func BenchmarkMintStamp(b *testing.B) {
	env := katEnvelope()
	var hashes float64
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(env, uint64(i))
		dep, err := MintIntroDeposit(context.Background(), env, DefaultStampBits)
		if err != nil {
			b.Fatal(err)
		}
		hashes += float64(binary.BigEndian.Uint64(dep[1:9]) + 1)
	}
	b.ReportMetric(hashes/float64(b.N), "hashes/op")
}

// BenchmarkCheckPairDeposit is a mailbox's cost to verify one pairwise
// credential of a 1 KiB envelope.
func BenchmarkCheckPairDeposit(b *testing.B) {
	seed := [32]byte{1}
	env := make([]byte, 1024)
	dep := SealPairDeposit(WriteKey(seed, FromInitiator, 1), env)
	tag := PairTag2(seed, FromInitiator, 1)
	for b.Loop() {
		d, err := ParseDeposit(dep)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Check(tag, 0); err != nil {
			b.Fatal(err)
		}
	}
}
