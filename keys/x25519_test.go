package keys

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/big"
	"math/rand/v2"
	"testing"
)

// testRand returns a deterministic stream named by label.
func testRand(label string) io.Reader {
	return rand.NewChaCha8(sha256.Sum256([]byte(label)))
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leU encodes n as a 32-byte little-endian u-coordinate.
func leU(n *big.Int) []byte {
	be := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		be[i], be[j] = be[j], be[i]
	}
	return be
}

var curveP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

func TestParseDHPublicLowOrder(t *testing.T) {
	// Every canonical low-order point makes X25519 output zero for any
	// scalar, and is rejected with ErrDHLowOrder.
	priv, err := GenerateDH(testRand("low-order"))
	if err != nil {
		t.Fatal(err)
	}
	ecdhPriv, _ := ecdh.X25519().NewPrivateKey(priv.Bytes())
	for _, p := range lowOrder {
		if _, err := ParseDHPublic(p[:]); !errors.Is(err, ErrDHLowOrder) {
			t.Errorf("%x: got %v, want ErrDHLowOrder", p, err)
		}
		pub, err := ecdh.X25519().NewPublicKey(p[:])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ecdhPriv.ECDH(pub); err == nil {
			t.Errorf("%x: X25519 output not zero; not a low-order point", p)
		}
	}
	// The list has all five canonical low-order u-coordinates: 0, 1, p-1
	// and the two points of order 8.
	if len(lowOrder) != 5 {
		t.Fatalf("low-order list has %d entries, want 5", len(lowOrder))
	}
}

func TestParseDHPublicNonCanonical(t *testing.T) {
	// u >= p and encodings with the top bit set: the non-canonical forms of
	// the low-order points (p, p+1, p+order-8 points) and others.
	var cases [][]byte
	for _, off := range []int64{0, 1, 2, 18} {
		cases = append(cases, leU(new(big.Int).Add(curveP, big.NewInt(off))))
	}
	for _, lo := range lowOrder[2:4] {
		u := new(big.Int).SetBytes(reverse(lo[:]))
		if v := new(big.Int).Add(u, curveP); v.BitLen() <= 255 {
			cases = append(cases, leU(v))
		}
	}
	for _, lo := range lowOrder {
		hi := lo
		hi[31] |= 0x80
		cases = append(cases, hi[:])
	}
	allOnes := bytes.Repeat([]byte{0xff}, 32)
	cases = append(cases, allOnes)
	for _, c := range cases {
		if _, err := ParseDHPublic(c); !errors.Is(err, ErrDHNonCanonical) {
			t.Errorf("%x: got %v, want ErrDHNonCanonical", c, err)
		}
	}
	// p-1 is canonical (and low-order); a valid key just under it passes.
	if _, err := ParseDHPublic(leU(new(big.Int).Sub(curveP, big.NewInt(2)))); err != nil {
		t.Errorf("p-2 rejected: %v", err)
	}
}

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

func TestParseDHPublicLength(t *testing.T) {
	for _, n := range []int{0, 31, 33, 64} {
		if _, err := ParseDHPublic(make([]byte, n)); !errors.Is(err, ErrDHLength) {
			t.Errorf("length %d: got %v, want ErrDHLength", n, err)
		}
	}
}

func TestDHAgreement(t *testing.T) {
	r := testRand("dh-agreement")
	a, _ := GenerateDH(r)
	b, _ := GenerateDH(r)
	ab, err := a.DH(b.Public())
	if err != nil {
		t.Fatal(err)
	}
	ba, err := b.DH(a.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, ba) {
		t.Fatal("X25519 shared secrets differ")
	}
	for _, lo := range lowOrder {
		if _, err := a.DH(DHPublic(lo)); !errors.Is(err, ErrDHZeroOutput) {
			t.Errorf("DH with low-order %x: got %v, want ErrDHZeroOutput", lo, err)
		}
	}
}

// TestRFC7748 pins X25519 to the RFC 7748 §6.1 vector.
func TestRFC7748(t *testing.T) {
	a, err := NewDHPrivate(mustHex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	if err != nil {
		t.Fatal(err)
	}
	bpub, err := ParseDHPublic(mustHex(t, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(a.Public().Bytes()); got != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Errorf("public = %s", got)
	}
	ss, err := a.DH(bpub)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(ss); got != "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742" {
		t.Errorf("shared = %s", got)
	}
}

// FuzzParseDHPublic checks ParseDHPublic against an independent reading
// of RFC 7748: a 32-byte input is non-canonical exactly when its
// little-endian value is at least p (the top bit set included), and
// low-order exactly when it is canonical and X25519 with a fixed clamped
// scalar (crypto/ecdh) outputs zero; everything else is accepted, and
// any other length is ErrDHLength.
func FuzzParseDHPublic(f *testing.F) {
	k, _ := GenerateDH(testRand("fuzz-dh"))
	f.Add(k.Public().Bytes())
	for _, p := range lowOrder {
		f.Add(p[:])
	}
	f.Add(leU(curveP))
	f.Add(make([]byte, 31))
	priv, err := ecdh.X25519().NewPrivateKey(k.Bytes())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := ParseDHPublic(in)
		if len(in) != DHSize {
			if !errors.Is(err, ErrDHLength) {
				t.Fatalf("%d bytes: %v, want ErrDHLength", len(in), err)
			}
			return
		}
		le := make([]byte, DHSize)
		for i := range le {
			le[i] = in[DHSize-1-i]
		}
		canonical := new(big.Int).SetBytes(le).Cmp(curveP) < 0
		pub, stdErr := ecdh.X25519().NewPublicKey(in)
		if stdErr != nil {
			t.Fatalf("crypto/ecdh refused 32 bytes: %v", stdErr)
		}
		_, dhErr := priv.ECDH(pub)
		lowOrder := canonical && dhErr != nil
		switch {
		case !canonical:
			if !errors.Is(err, ErrDHNonCanonical) {
				t.Fatalf("%x is not canonical: %v", in, err)
			}
		case lowOrder:
			if !errors.Is(err, ErrDHLowOrder) {
				t.Fatalf("%x is low-order: %v", in, err)
			}
		default:
			if err != nil || !bytes.Equal(got[:], in) {
				t.Fatalf("%x refused: %v", in, err)
			}
		}
	})
}
