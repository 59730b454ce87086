package keys

import (
	"bytes"
	"crypto/mlkem"
	"errors"
	"testing"
)

func TestKEMRoundTrip(t *testing.T) {
	k, err := GenerateKEM(testRand("kem-roundtrip"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseKEMPublic(k.Public().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	ss, ct, err := pub.Encapsulate()
	if err != nil {
		t.Fatal(err)
	}
	if len(ct) != KEMCiphertextSize || len(ss) != KEMSharedSize {
		t.Fatalf("sizes %d, %d", len(ct), len(ss))
	}
	got, err := k.Decapsulate(ct)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ss) {
		t.Fatal("decapsulated key differs")
	}
	// Another key decapsulates to something else (implicit rejection).
	other, _ := GenerateKEM(testRand("kem-other"))
	if wrong, _ := other.Decapsulate(ct); bytes.Equal(wrong, ss) {
		t.Fatal("wrong key recovered the shared key")
	}
	// A seed rebuilds the same key.
	k2, err := NewKEMPrivate(k.Seed())
	if err != nil {
		t.Fatal(err)
	}
	if !k2.Equal(k) || k2.Public() != k.Public() || k.Equal(other) {
		t.Fatal("Equal or seed round trip wrong")
	}
}

func TestParseKEMPublicRejects(t *testing.T) {
	k, _ := GenerateKEM(testRand("kem-parse"))
	good := k.Public().Bytes()
	bad := bytes.Clone(good)
	bad[0], bad[1] = 0xff, 0x0f // first coefficient 4095 >= q = 3329
	for _, c := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrKEMLength},
		{"short", good[:KEMPublicSize-1], ErrKEMLength},
		{"long", append(bytes.Clone(good), 0), ErrKEMLength},
		{"coefficient out of range", bad, ErrKEMInvalid},
		{"all 0xff", bytes.Repeat([]byte{0xff}, KEMPublicSize), ErrKEMInvalid},
	} {
		if _, err := ParseKEMPublic(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	var invalid KEMPublic
	copy(invalid[:], bad)
	if _, _, err := invalid.Encapsulate(); !errors.Is(err, ErrKEMInvalid) {
		t.Errorf("Encapsulate to invalid key: %v", err)
	}
	if _, err := k.Decapsulate(make([]byte, KEMCiphertextSize-1)); !errors.Is(err, ErrKEMCiphertextLength) {
		t.Errorf("short ciphertext: %v", err)
	}
	if _, err := NewKEMPrivate(make([]byte, 32)); !errors.Is(err, ErrKEMSeedLength) {
		t.Errorf("short seed: %v", err)
	}
}

// TestKEMModulusCheckAgrees holds ParseKEMPublic to the standard library's
// validity rule on valid keys, keys with single coefficients pushed to
// and past q, and random byte strings.
func TestKEMModulusCheckAgrees(t *testing.T) {
	r := testRand("kem-modulus")
	k, _ := GenerateKEM(r)
	good := k.Public().Bytes()
	var inputs [][]byte
	inputs = append(inputs, good)
	for _, pos := range []int{0, 1, 2, 600, 1149, 1150, 1151} {
		for _, v := range []byte{0x0c, 0xd0, 0xd1, 0xff, 0x00} {
			b := bytes.Clone(good)
			b[pos] = v
			inputs = append(inputs, b)
		}
	}
	// Coefficient exactly q-1 and q at the first and last slots.
	for _, enc := range [][3]byte{{0x00, 0x0d, 0x00}, {0x01, 0x0d, 0x00}, {0x00, 0x0d, 0xd0}, {0x00, 0x10, 0xd0}} {
		for _, off := range []int{0, 1149} {
			b := bytes.Clone(good)
			copy(b[off:], enc[:])
			inputs = append(inputs, b)
		}
	}
	for range 200 {
		b := make([]byte, KEMPublicSize)
		r.Read(b)
		inputs = append(inputs, b)
		// Mostly-valid: random small coefficients with one random byte.
		c := bytes.Clone(good)
		var pick [3]byte
		r.Read(pick[:])
		c[(int(pick[0])<<8|int(pick[1]))%1152] = pick[2]
		inputs = append(inputs, c)
	}
	valid := 0
	for _, in := range inputs {
		_, err := ParseKEMPublic(in)
		_, stdErr := mlkem.NewEncapsulationKey768(in)
		if (err == nil) != (stdErr == nil) {
			t.Fatalf("disagreement on %x...: ours %v, crypto/mlkem %v", in[:8], err, stdErr)
		}
		if err == nil {
			valid++
		}
	}
	if valid < 10 || valid == len(inputs) {
		t.Fatalf("test inputs not varied: %d of %d valid", valid, len(inputs))
	}
}

func FuzzParseKEMPublic(f *testing.F) {
	k, _ := GenerateKEM(testRand("fuzz-kem"))
	f.Add(k.Public().Bytes())
	f.Add(bytes.Repeat([]byte{0xff}, KEMPublicSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, err := ParseKEMPublic(in)
		_, stdErr := mlkem.NewEncapsulationKey768(in)
		if (err == nil) != (stdErr == nil) {
			t.Fatalf("ours %v, crypto/mlkem %v", err, stdErr)
		}
	})
}
