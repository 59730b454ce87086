package keys

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/sotto-im/sotto/internal/fuzzcorpus"
)

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite the seed files in testdata/fuzz")

// corpusSeed is one seed file of a fuzz target.
type corpusSeed = fuzzcorpus.Seed

// TestFuzzCorpus checks the committed seed corpora: every fuzz target in
// the package has one; every file in them is in Go's corpus format; and
// the seed-* files are exactly what fuzzSeeds generates, so they stay real
// encodings as the formats change. Files with other names (inputs the
// fuzzer found, kept as regression tests) are left alone. Regenerate with
//
//	go test ./keys -run TestFuzzCorpus -update-fuzz-corpus
func TestFuzzCorpus(t *testing.T) { fuzzcorpus.Check(t, fuzzSeeds(t), *updateFuzzCorpus) }

// fuzzSeeds returns the generated seeds of every fuzz target: valid
// encodings made by the code and edge cases around them.
func fuzzSeeds(tb testing.TB) map[string][]corpusSeed {
	seeds := map[string][]corpusSeed{}
	add := func(target, name string, args ...any) {
		seeds[target] = append(seeds[target], corpusSeed{Name: name, Args: args})
	}
	cut := func(b []byte, n int) []byte { return bytes.Clone(b[:n]) }
	set := func(b []byte, off int, v ...byte) []byte {
		c := bytes.Clone(b)
		copy(c[off:], v)
		return c
	}

	// Bundles.
	for _, n := range []int{0, 1, 3} {
		b, _, _ := testBundle(tb, "corpus-bundle", n)
		add("FuzzParseBundle", fmt.Sprint("valid-one-time-", n), b.Marshal())
	}
	b, _, acct := testBundle(tb, "corpus-bundle", 1)
	enc := b.Marshal()
	o := offsetsOf(b)
	for _, c := range []struct {
		name string
		at   int
	}{
		{"device", o.device}, {"seq", o.seq}, {"spk", o.spk}, {"spk-key", o.spk + 5},
		{"last-resort", o.lrKEM}, {"last-resort-key", o.lrKEM + 5}, {"one-time-dh", o.otdh},
		{"one-time-kem", o.otkem}, {"signature", o.sig}, {"last-byte", len(enc) - 1},
	} {
		add("FuzzParseBundle", "cut-at-"+c.name, cut(enc, c.at))
	}
	add("FuzzParseBundle", "trailing-byte", append(bytes.Clone(enc), 0))
	add("FuzzParseBundle", "version-2", set(enc, 0, 2))
	add("FuzzParseBundle", "33-one-time", set(enc, o.nOTDH, MaxOneTimePrekeys+1))
	add("FuzzParseBundle", "spk-typed-kem", set(enc, o.spk, byte(KeyTypeMLKEM768)))
	add("FuzzParseBundle", "spk-low-order", set(enc, o.spk+5, lowOrder[3][:]...))
	add("FuzzParseBundle", "unsigned", set(enc, o.sig, make([]byte, SignatureSize)...))
	resigned := cloneBundle(tb, b)
	resigned.Seq++
	resigned.Sign(acct)
	add("FuzzParseBundle", "resigned-seq", resigned.Marshal())

	// Device certificates.
	cert, _ := testDevice(tb, testAccount(tb, "corpus-device"), "corpus-device-ik")
	c := cert.Marshal()
	add("FuzzParseDeviceCertificate", "valid", c)
	add("FuzzParseDeviceCertificate", "known-answer", mustHex(tb, wantDeviceCertHex))
	for _, n := range []int{MinPeerIDSize, MaxPeerIDSize} {
		acct := testAccount(tb, "corpus-device")
		cert, err := NewDeviceCertificate(acct, bytes.Repeat([]byte{0x12}, n), cert.IdentityDH, testNow)
		if err != nil {
			tb.Fatal(err)
		}
		add("FuzzParseDeviceCertificate", fmt.Sprint("peer-id-", n), cert.Marshal())
	}
	pidAt := 1 + AccountSize
	add("FuzzParseDeviceCertificate", "peer-id-length-0", set(c, pidAt, 0))
	add("FuzzParseDeviceCertificate", "peer-id-length-65", set(c, pidAt, MaxPeerIDSize+1))
	add("FuzzParseDeviceCertificate", "version-2", set(c, 0, 2))
	add("FuzzParseDeviceCertificate", "zero-account", set(c, 1, make([]byte, AccountSize)...))
	add("FuzzParseDeviceCertificate", "identity-key-low-order", set(c, pidAt+1+len(testPeerID), lowOrder[0][:]...))
	add("FuzzParseDeviceCertificate", "signature-flipped", set(c, len(c)-1, c[len(c)-1]^1))
	add("FuzzParseDeviceCertificate", "truncated", cut(c, len(c)-1))
	add("FuzzParseDeviceCertificate", "trailing-byte", append(bytes.Clone(c), 0))

	// Keystores, with the passphrase to try.
	ks := testKeystore(tb, "corpus-keystore")
	pass := []byte("pw")
	plain, _ := marshalKeystore(ks, nil, testRand("corpus-keystore-rand"), testScrypt)
	sealed, _ := marshalKeystore(ks, pass, testRand("corpus-keystore-rand"), testScrypt)
	add("FuzzReadKeystore", "v2-plain", plain, []byte{})
	add("FuzzReadKeystore", "v2-scrypt", sealed, pass)
	add("FuzzReadKeystore", "v2-scrypt-wrong-passphrase", sealed, []byte("wrong"))
	add("FuzzReadKeystore", "v2-scrypt-no-passphrase", sealed, []byte{})
	add("FuzzReadKeystore", "v2-scrypt-checksum-flipped", set(sealed, len(sealed)-1, sealed[len(sealed)-1]^1), pass)
	add("FuzzReadKeystore", "v2-scrypt-salt-flipped-resummed", resum(set(sealed, len(keystoreMagic)+11, ^sealed[len(keystoreMagic)+11])), pass)
	add("FuzzReadKeystore", "v2-plain-truncated", cut(plain, len(plain)-1), []byte{})
	add("FuzzReadKeystore", "v3-resummed", resum(set(plain, len(keystoreMagic), 3)), []byte{})
	for _, name := range []string{"plain", "scrypt"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "keystore-v1-"+name))
		if err != nil {
			tb.Fatal(err)
		}
		add("FuzzReadKeystore", "v1-"+name, raw, []byte("passphrase"))
	}
	add("FuzzReadKeystore", "magic-only", []byte(keystoreMagic), []byte{})
	add("FuzzReadKeystore", "empty", []byte{}, []byte{})

	// ML-KEM-768 encapsulation keys.
	k, _ := GenerateKEM(testRand("corpus-kem"))
	pub := k.Public().Bytes()
	add("FuzzParseKEMPublic", "valid", pub)
	add("FuzzParseKEMPublic", "zero-polynomials", set(pub, 0, make([]byte, KEMPublicSize-32)...))
	add("FuzzParseKEMPublic", "coefficient-q", set(pub, 0, 0x01, 0x0d, 0x00))
	add("FuzzParseKEMPublic", "all-ff", bytes.Repeat([]byte{0xff}, KEMPublicSize))
	add("FuzzParseKEMPublic", "short", cut(pub, KEMPublicSize-1))
	add("FuzzParseKEMPublic", "long", append(bytes.Clone(pub), 0))

	// X25519 public keys.
	dh, _ := GenerateDH(testRand("corpus-dh"))
	u := dh.Public().Bytes()
	add("FuzzParseDHPublic", "valid", u)
	add("FuzzParseDHPublic", "high-bit", set(u, 31, u[31]|0x80))
	for i, p := range lowOrder {
		add("FuzzParseDHPublic", fmt.Sprint("low-order-", i), p[:])
	}
	add("FuzzParseDHPublic", "p", leU(curveP))
	add("FuzzParseDHPublic", "2^255-1", set(bytes.Repeat([]byte{0xff}, DHSize), 31, 0x7f))
	add("FuzzParseDHPublic", "short", cut(u, DHSize-1))
	add("FuzzParseDHPublic", "long", append(bytes.Clone(u), 0))
	return seeds
}
