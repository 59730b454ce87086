package kemtest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/keys/kemtest"
)

// TestKnownAnswer pins key generation from a seed and derandomised
// encapsulation, so a change in either is noticed.
func TestKnownAnswer(t *testing.T) {
	seed := bytes.Repeat([]byte{0x42}, keys.KEMSeedSize)
	k, err := keys.NewKEMPrivate(seed)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public()
	ss, ct, err := kemtest.Encapsulate(pub, bytes.Repeat([]byte{0x07}, 32))
	if err != nil {
		t.Fatal(err)
	}
	pubHash := sha256.Sum256(pub[:])
	ctHash := sha256.Sum256(ct)
	for _, c := range []struct{ name, got, want string }{
		{"public key SHA-256", hex.EncodeToString(pubHash[:]), wantPubHash},
		{"ciphertext SHA-256", hex.EncodeToString(ctHash[:]), wantCtHash},
		{"shared key", hex.EncodeToString(ss), wantShared},
	} {
		if c.got != c.want {
			t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
		}
	}
	dec, err := k.Decapsulate(ct)
	if err != nil || !bytes.Equal(dec, ss) {
		t.Fatalf("decapsulate: %v", err)
	}
	if _, _, err := kemtest.Encapsulate(pub, make([]byte, 31)); err == nil {
		t.Error("Encapsulate accepted 31 bytes of randomness")
	}
}

const (
	wantPubHash = "8cde1b49992415b527e361f52465634978fcc488d6f541c4a1fec97fd14b4661"
	wantCtHash  = "d54ac82b1bb13d88772bfce83cf88deeaef060ef8e18c962f7ca2135a9fc1875"
	wantShared  = "7086c0ef2f42dae278e18a1beb1552713341dac0da820821c5b7182e99735544"
)

// TestInvalidKey checks that a key failing the modulus check is refused
// with keys.ErrKEMInvalid, as keys.KEMPublic.Encapsulate refuses it.
func TestInvalidKey(t *testing.T) {
	var invalid keys.KEMPublic
	for i := range invalid {
		invalid[i] = 0xff // every coefficient 4095 >= q = 3329
	}
	if _, _, err := kemtest.Encapsulate(invalid, make([]byte, 32)); !errors.Is(err, keys.ErrKEMInvalid) {
		t.Errorf("Encapsulate to invalid key: %v", err)
	}
}
