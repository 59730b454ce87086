package keys

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSignedPrekeyVerify(t *testing.T) {
	acct := testAccount(t, "prekey-acct")
	other := testAccount(t, "prekey-other")
	r := testRand("prekey-keys")
	dh, _ := GenerateDH(r)
	kem, _ := GenerateKEM(r)
	dh2, _ := GenerateDH(r)

	all := []error{ErrPrekeySignature, ErrDHLowOrder, ErrDHNonCanonical, ErrKEMInvalid}
	dhCases := []struct {
		name string
		p    SignedPrekey
		want error
	}{
		{"valid", NewSignedPrekey(acct, 7, dh.Public()), nil},
		{"other signer", NewSignedPrekey(other, 7, dh.Public()), ErrPrekeySignature},
		{"ID changed", func() SignedPrekey { p := NewSignedPrekey(acct, 7, dh.Public()); p.ID = 8; return p }(), ErrPrekeySignature},
		{"key swapped", func() SignedPrekey { p := NewSignedPrekey(acct, 7, dh.Public()); p.Public = dh2.Public(); return p }(), ErrPrekeySignature},
		{"zero signature", SignedPrekey{ID: 7, Public: dh.Public()}, ErrPrekeySignature},
		{"low-order key", NewSignedPrekey(acct, 7, DHPublic(lowOrder[3])), ErrDHLowOrder},
		{"non-canonical key", NewSignedPrekey(acct, 7, DHPublic(bytes.Repeat([]byte{0xff}, 32))), ErrDHNonCanonical},
	}
	for _, c := range dhCases {
		t.Run("x25519/"+c.name, func(t *testing.T) { checkErr(t, c.p.Verify(acct.Public()), c.want, all) })
	}
	var badKEM KEMPublic
	copy(badKEM[:], bytes.Repeat([]byte{0xff}, KEMPublicSize))
	kemCases := []struct {
		name string
		p    SignedKEMPrekey
		want error
	}{
		{"valid", NewSignedKEMPrekey(acct, 9, kem.Public()), nil},
		{"other signer", NewSignedKEMPrekey(other, 9, kem.Public()), ErrPrekeySignature},
		{"ID changed", func() SignedKEMPrekey { p := NewSignedKEMPrekey(acct, 9, kem.Public()); p.ID = 10; return p }(), ErrPrekeySignature},
		{"zero signature", SignedKEMPrekey{ID: 9, Public: kem.Public()}, ErrPrekeySignature},
		{"invalid key", NewSignedKEMPrekey(acct, 9, badKEM), ErrKEMInvalid},
	}
	for _, c := range kemCases {
		t.Run("mlkem/"+c.name, func(t *testing.T) { checkErr(t, c.p.Verify(acct.Public()), c.want, all) })
	}
}

// TestSigningDomains checks that every signature made with the account
// key has its own label and that the prekey kinds bind the key type, so no
// signed statement can be replayed as another kind.
func TestSigningDomains(t *testing.T) {
	labels := []string{deviceCertLabel, signedPrekeyLabel, signedKEMPrekeyLabel, bundleLabel}
	for i, a := range labels {
		if !strings.HasPrefix(a, "sotto/v1/") {
			t.Errorf("label %q lacks the sotto/v1/ prefix", a)
		}
		for j, b := range labels {
			if i != j && strings.HasPrefix(a, b) {
				t.Errorf("label %q has %q as a prefix", a, b)
			}
		}
	}
	dh := NewSignedPrekey(testAccount(t, "domains"), 1, DHPublic{9})
	in := dh.signingInput()
	if got := KeyType(in[len(signedPrekeyLabel)]); got != KeyTypeX25519 {
		t.Errorf("X25519 prekey signing input has key type %v", got)
	}
	kem := SignedKEMPrekey{ID: 1}
	in = kem.signingInput()
	if got := KeyType(in[len(signedKEMPrekeyLabel)]); got != KeyTypeMLKEM768 {
		t.Errorf("KEM prekey signing input has key type %v", got)
	}
	// A prekey signature does not verify as a device certificate or
	// bundle signature over the same account, even for crafted bytes.
	acct := testAccount(t, "domains")
	cert, _ := testDevice(t, acct, "domains-ik")
	cert.Signature = dh.Signature
	if err := cert.Verify(); !errors.Is(err, ErrDeviceSignature) {
		t.Errorf("prekey signature accepted on a certificate: %v", err)
	}
}

func TestPrekeySecretsMerge(t *testing.T) {
	r := testRand("merge")
	a, b := NewPrekeySecrets(), NewPrekeySecrets()
	k1, _ := GenerateDH(r)
	k2, _ := GenerateDH(r)
	a.OneTimeDH[1] = k1
	b.OneTimeDH[2] = k2
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if got, ok := a.OneTimePrekey(2); !ok || !got.Equal(k2) {
		t.Fatal("merged key missing")
	}
	c := NewPrekeySecrets()
	c.OneTimeDH[1] = k2
	c.SignedDH[5] = k1
	if err := a.Merge(c); err == nil {
		t.Fatal("colliding ID merged")
	}
	if _, ok := a.SignedPrekey(5); ok {
		t.Fatal("failed merge changed the target")
	}
	// Merging the same key again is harmless.
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	var empty PrekeySecrets
	if err := empty.Merge(a); err != nil || len(empty.OneTimeDH) != 2 {
		t.Fatalf("merge into zero value: %v", err)
	}
}
