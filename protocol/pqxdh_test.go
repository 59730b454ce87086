package protocol

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/keys/kemtest"
)

// hkdfByHand is RFC 5869 HKDF-SHA256 for a 32-byte output written out with
// HMAC, as an independent check of DerivePQXDH.
func hkdfByHand(salt, ikm, info []byte) []byte {
	ext := hmac.New(sha256.New, salt)
	ext.Write(ikm)
	prk := ext.Sum(nil)
	exp := hmac.New(sha256.New, prk)
	exp.Write(info)
	exp.Write([]byte{1})
	return exp.Sum(nil)
}

func filled(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// encapsulateDerand is kemtest.Encapsulate under a name the package's
// other test files can call without importing kemtest themselves.
func encapsulateDerand(pk keys.KEMPublic, random []byte) (sharedKey, ciphertext []byte, err error) {
	return kemtest.Encapsulate(pk, random)
}

// TestDerivePQXDH pins the KDF on fixed inputs and checks it against a
// by-hand HKDF with F = 32 0xFF bytes and a 32-byte zero salt.
func TestDerivePQXDH(t *testing.T) {
	dh1, dh2, dh3, dh4, ss := filled(1, 32), filled(2, 32), filled(3, 32), filled(4, 32), filled(5, 32)
	for _, tc := range []struct {
		name string
		dh4  []byte
		want string
	}{
		{"with DH4", dh4, "a31f9388b266d44b5dd5b4ae8517c19f2b8e1793fe2f2b9a4417456068d1cf14"},
		{"without DH4", nil, "4fc5b9c50c36bd581090ab7a9c3615e6a757c3a2a04d8b4b661ff6a1c798779d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sk, err := DerivePQXDH(dh1, dh2, dh3, tc.dh4, ss)
			if err != nil {
				t.Fatal(err)
			}
			ikm := bytes.Join([][]byte{filled(0xff, 32), dh1, dh2, dh3, tc.dh4, ss}, nil)
			if want := hkdfByHand(make([]byte, 32), ikm, []byte("Sotto_X25519_SHA-256_ML-KEM-768")); !bytes.Equal(sk[:], want) {
				t.Fatalf("SK %x, by-hand HKDF %x", sk, want)
			}
			if got := hex.EncodeToString(sk[:]); got != tc.want {
				t.Fatalf("SK %s, want %s", got, tc.want)
			}
		})
	}
	for _, bad := range [][][]byte{
		{filled(1, 31), dh2, dh3, nil, ss},
		{dh1, dh2, dh3, filled(4, 33), ss},
		{dh1, dh2, dh3, nil, filled(5, 16)},
	} {
		if _, err := DerivePQXDH(bad[0], bad[1], bad[2], bad[3], bad[4]); !errors.Is(err, ErrKeyAgreement) {
			t.Fatalf("wrong-length input: %v", err)
		}
	}
}

// katKeys builds fixed keys for both parties from constant seeds.
type katKeys struct {
	alice, bob       LocalIdentity
	spk, opk         *keys.DHPrivate
	lastResort, otKE *keys.KEMPrivate
	bundle           *keys.Bundle
	store            *sessStore
}

func mustDH(t *testing.T, b byte) *keys.DHPrivate {
	k, err := keys.NewDHPrivate(filled(b, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustKEM(t *testing.T, b byte) *keys.KEMPrivate {
	k, err := keys.NewKEMPrivate(filled(b, keys.KEMSeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustLocal(t *testing.T, acctSeed, ikSeed byte, peerID string) LocalIdentity {
	acct, err := keys.NewAccountPrivate(filled(acctSeed, 32))
	if err != nil {
		t.Fatal(err)
	}
	ik := mustDH(t, ikSeed)
	cert, err := keys.NewDeviceCertificate(acct, []byte(peerID), ik.Public(), time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	return LocalIdentity{Account: acct, IdentityDH: ik, Device: cert}
}

func newKATKeys(t *testing.T, oneTime bool) *katKeys {
	k := &katKeys{
		alice:      mustLocal(t, 0xa1, 0xa2, "alice-device"),
		bob:        mustLocal(t, 0xb1, 0xb2, "bob-device"),
		spk:        mustDH(t, 0xb3),
		opk:        mustDH(t, 0xb4),
		lastResort: mustKEM(t, 0xb5),
		otKE:       mustKEM(t, 0xb6),
	}
	b := &keys.Bundle{
		Account:       k.bob.Account.Public(),
		Device:        k.bob.Device,
		Seq:           1,
		Expires:       time.Unix(1700000000, 0).Add(30 * 24 * time.Hour).UTC(),
		SignedPrekey:  keys.NewSignedPrekey(k.bob.Account, 10, k.spk.Public()),
		LastResortKEM: keys.NewSignedKEMPrekey(k.bob.Account, 11, k.lastResort.Public()),
	}
	sec := keys.NewPrekeySecrets()
	sec.SignedDH[10] = k.spk
	sec.KEM[11] = k.lastResort
	if oneTime {
		b.OneTimeDH = []keys.OneTimePrekey{{ID: 12, Public: k.opk.Public()}}
		b.OneTimeKEM = []keys.SignedKEMPrekey{keys.NewSignedKEMPrekey(k.bob.Account, 13, k.otKE.Public())}
		sec.OneTimeDH[12] = k.opk
		sec.KEM[13] = k.otKE
	}
	b.Sign(k.bob.Account)
	k.bundle = b
	k.store = newSessStore(sec, 11)
	return k
}

// TestPQXDHKnownAnswer runs both sides of PQXDH on fixed keys, fixed
// ephemeral key and fixed ML-KEM randomness, and pins SK: the initiator's
// and the responder's session keys must both be the expansion of the
// pinned SK, and SK must equal the KDF over DH outputs computed here from
// the private keys.
func TestPQXDHKnownAnswer(t *testing.T) {
	now := time.Unix(1700000000, 0).Add(time.Hour)
	for _, tc := range []struct {
		name    string
		oneTime bool
		sk      string
	}{
		{"one-time prekeys", true, "d100bcfe6c485f3c78088a3fe8d31b85a4620c185c91988658ff22c4d142faaf"},
		{"last-resort only", false, "bd791cd6fe1ae74dd1571f2f0ba31fed817c1b729c07831160b928287f98de27"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKATKeys(t, tc.oneTime)
			ekSeed := filled(0xe1, 32)
			// rand: the two prekey choices (zeros pick index 0), then EK_A.
			var randBytes []byte
			if tc.oneTime {
				randBytes = append(randBytes, make([]byte, 8)...)
			}
			randBytes = append(randBytes, ekSeed...)
			kemRand := filled(0xc1, 32)
			cfg := &initiateConfig{encapsulate: func(pk keys.KEMPublic) ([]byte, []byte, error) {
				return kemtest.Encapsulate(pk, kemRand)
			}}
			in, err := pqxdhInitiate(bytes.NewReader(randBytes), now, &k.alice, k.bundle, cfg)
			if err != nil {
				t.Fatal(err)
			}

			// The same computation written out from the private keys.
			ek := mustDH(t, 0xe1)
			kemKey := k.lastResort
			if tc.oneTime {
				kemKey = k.otKE
			}
			ss, ct, err := kemtest.Encapsulate(kemKey.Public(), kemRand)
			if err != nil {
				t.Fatal(err)
			}
			dh := func(priv *keys.DHPrivate, pub keys.DHPublic) []byte {
				out, err := priv.DH(pub)
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			var dh4 []byte
			if tc.oneTime {
				dh4 = dh(ek, k.opk.Public())
			}
			sk, err := DerivePQXDH(dh(k.alice.IdentityDH, k.spk.Public()), dh(ek, k.bob.IdentityDH.Public()),
				dh(ek, k.spk.Public()), dh4, ss)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(sk[:]); got != tc.sk {
				t.Errorf("SK %s, want %s", got, tc.sk)
			}
			want, err := deriveSessionKeys(sk)
			if err != nil {
				t.Fatal(err)
			}
			if in.keys != want {
				t.Fatal("initiator's session keys are not the expansion of SK")
			}
			if !bytes.Equal(in.header.ct[:], ct) || in.header.ek != ek.Public() {
				t.Fatal("initial header does not carry EK_A and CT")
			}

			// The responder derives the same keys and AD.
			resp, err := pqxdhRespondSeal(k.store, &in.header)
			if err != nil {
				t.Fatal(err)
			}
			ag, err := resp.finish(&k.bob, &in.header, &k.alice.Device)
			if err != nil {
				t.Fatal(err)
			}
			if ag.keys != in.keys || !bytes.Equal(ag.ad, in.ad) || ag.initialID != in.initialID || resp.sealKey != in.sealKey {
				t.Fatal("responder derived different values")
			}
			if len(in.ad) != ADSize {
				t.Fatalf("AD is %d bytes", len(in.ad))
			}
			pk := kemKey.Public()
			kh := sha256.Sum256(append([]byte("sotto/v1/pqxdh/kem-public-key\x02"), pk[:]...))
			wantAD := bytes.Join([][]byte{
				{0x01}, k.alice.IdentityDH.Public().Bytes(), {0x01}, k.bob.IdentityDH.Public().Bytes(),
				k.alice.Account.Public().Bytes(), k.bob.Account.Public().Bytes(), kh[:],
			}, nil)
			if !bytes.Equal(in.ad, wantAD) {
				t.Fatalf("AD %x, want %x", in.ad, wantAD)
			}
		})
	}
}

// TestPQXDHVector runs the initiator's PQXDH on the keys recorded in
// testdata/session/pqxdh.txt and checks the session keys and AD derived
// from SK against the file.
func TestPQXDHVector(t *testing.T) {
	raw, err := os.ReadFile("testdata/session/pqxdh.txt")
	if err != nil {
		t.Fatal(err)
	}
	head, _, _ := bytes.Cut(raw, []byte("\n\n"))
	v := map[string][]byte{}
	for _, line := range strings.Split(string(head), "\n") {
		k, val, _ := strings.Cut(line, ": ")
		if b, err := hex.DecodeString(val); err == nil {
			v[k] = b
		}
	}
	priv := func(k string) *keys.DHPrivate {
		p, err := keys.NewDHPrivate(v[k])
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		return p
	}
	local := func(seedKey, ikKey, peerID string) LocalIdentity {
		acct, err := keys.NewAccountPrivate(v[seedKey])
		if err != nil {
			t.Fatal(err)
		}
		ik := priv(ikKey)
		cert, err := keys.NewDeviceCertificate(acct, []byte(peerID), ik.Public(), time.Unix(1700000000, 0))
		if err != nil {
			t.Fatal(err)
		}
		return LocalIdentity{Account: acct, IdentityDH: ik, Device: cert}
	}
	alice := local("alice_account_seed", "alice_identity_dh", "alice")
	bob := local("bob_account_seed", "bob_identity_dh", "bob")
	kem, err := keys.NewKEMPrivate(v["bob_kem_prekey_seed"])
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0).Add(time.Hour)
	bundle := &keys.Bundle{
		Account:       bob.Account.Public(),
		Device:        bob.Device,
		Expires:       now.Add(24 * time.Hour),
		SignedPrekey:  keys.NewSignedPrekey(bob.Account, 1, priv("bob_signed_prekey").Public()),
		LastResortKEM: keys.NewSignedKEMPrekey(bob.Account, 2, mustKEM(t, 0x77).Public()),
		OneTimeDH:     []keys.OneTimePrekey{{ID: 3, Public: priv("bob_one_time_prekey").Public()}},
		OneTimeKEM:    []keys.SignedKEMPrekey{keys.NewSignedKEMPrekey(bob.Account, 4, kem.Public())},
	}
	bundle.Sign(bob.Account)
	// rand: two prekey choices (index 0 of one), then EK_A.
	rnd := append(make([]byte, 8), v["alice_ephemeral"]...)
	cfg := &initiateConfig{encapsulate: func(pk keys.KEMPublic) ([]byte, []byte, error) {
		return kemtest.Encapsulate(pk, v["kem_randomness"])
	}}
	in, err := pqxdhInitiate(bytes.NewReader(rnd), now, &alice, bundle, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		got  []byte
	}{
		{"root_key", in.keys.rootKey[:]},
		{"shared_hka", in.keys.headerKeyA[:]},
		{"shared_nhkb", in.keys.nextHeaderKeyB[:]},
		{"tag_seed", in.keys.tagSeed[:]},
		{"ad", in.ad},
	} {
		if !bytes.Equal(c.got, v[c.name]) {
			t.Errorf("%s = %x, vector has %x", c.name, c.got, v[c.name])
		}
	}
	sk := [32]byte(v["sk"])
	if k, err := deriveSessionKeys(sk); err != nil || k != in.keys {
		t.Fatal("session keys are not the expansion of the vector's SK")
	}
}
