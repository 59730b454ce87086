package keys

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

const testValidity = 7 * 24 * time.Hour

// testBundle returns a bundle with n one-time prekeys of each kind,
// generated deterministically from label.
func testBundle(t testing.TB, label string, n int) (*Bundle, *PrekeySecrets, *AccountPrivate) {
	t.Helper()
	acct := testAccount(t, label+"/acct")
	cert, _ := testDevice(t, acct, label+"/ik")
	b, sec, err := GeneratePrekeys(testRand(label+"/prekeys"), acct, cert, testNow, 42, n, testValidity)
	if err != nil {
		t.Fatal(err)
	}
	return b, sec, acct
}

func cloneBundle(t testing.TB, b *Bundle) *Bundle {
	t.Helper()
	c, err := ParseBundle(b.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGeneratePrekeys(t *testing.T) {
	b, sec, acct := testBundle(t, "generate", 5)
	if err := b.Verify(testNow); err != nil {
		t.Fatal(err)
	}
	if b.Seq != 42 || !b.Expires.Equal(testNow.Add(testValidity)) || b.Account != acct.Public() {
		t.Fatalf("header fields wrong: %d %v", b.Seq, b.Expires)
	}
	if len(b.OneTimeDH) != 5 || len(b.OneTimeKEM) != 5 || len(sec.OneTimeDH) != 5 || len(sec.KEM) != 6 || len(sec.SignedDH) != 1 {
		t.Fatal("wrong number of prekeys")
	}
	// Every public key in the bundle has its private half under the same ID.
	if k, ok := sec.SignedPrekey(b.SignedPrekey.ID); !ok || k.Public() != b.SignedPrekey.Public {
		t.Fatal("signed prekey secret missing")
	}
	if k, ok := sec.KEMPrekey(b.LastResortKEM.ID); !ok || k.Public() != b.LastResortKEM.Public {
		t.Fatal("last-resort secret missing")
	}
	for _, p := range b.OneTimeDH {
		if k, ok := sec.OneTimePrekey(p.ID); !ok || k.Public() != p.Public {
			t.Fatalf("one-time secret %d missing", p.ID)
		}
	}
	for _, p := range b.OneTimeKEM {
		if k, ok := sec.KEMPrekey(p.ID); !ok || k.Public() != p.Public {
			t.Fatalf("one-time KEM secret %d missing", p.ID)
		}
	}
	// The same inputs give the same bundle; other randomness another.
	b2, _, _ := testBundle(t, "generate", 5)
	if !b.Equal(b2) {
		t.Fatal("generation is not deterministic")
	}
	b3, _, _ := testBundle(t, "generate-2", 5)
	if b.Equal(b3) {
		t.Fatal("different randomness gave the same bundle")
	}

	cert := b.Device
	other := testAccount(t, "generate-other")
	for _, c := range []struct {
		name     string
		acct     *AccountPrivate
		n        int
		validity time.Duration
		want     error
	}{
		{"too many one-time prekeys", acct, MaxOneTimePrekeys + 1, testValidity, nil},
		{"negative count", acct, -1, testValidity, nil},
		{"validity too long", acct, 1, MaxBundleValidity + time.Second, nil},
		{"zero validity", acct, 1, 0, nil},
		{"certificate of another account", other, 1, testValidity, ErrDeviceMismatch},
	} {
		_, _, err := GeneratePrekeys(testRand("x"), c.acct, cert, testNow, 1, c.n, c.validity)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
	if _, _, err := GeneratePrekeys(bytes.NewReader(make([]byte, 100)), acct, cert, testNow, 1, 1, testValidity); err == nil {
		t.Error("short randomness accepted")
	}
	// The maximum fits MaxBundleSize exactly when the peer ID is longest.
	long, err := NewDeviceCertificate(acct, make([]byte, MaxPeerIDSize), cert.IdentityDH, testNow)
	if err != nil {
		t.Fatal(err)
	}
	big, _, err := GeneratePrekeys(testRand("max"), acct, long, testNow, 1, MaxOneTimePrekeys, testValidity)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(big.Marshal()); n != MaxBundleSize {
		t.Errorf("largest bundle is %d bytes, MaxBundleSize %d", n, MaxBundleSize)
	}
	if _, err := ParseBundle(big.Marshal()); err != nil {
		t.Errorf("largest bundle does not parse: %v", err)
	}
}

// TestBundleKnownAnswer pins the encoding of a bundle generated from fixed
// randomness: the header in full, the rest by hash.
func TestBundleKnownAnswer(t *testing.T) {
	b, _, _ := testBundle(t, "known-answer", 2)
	enc := b.Marshal()
	hdr := 1 + AccountSize + b.Device.size() + 16
	sum := sha256.Sum256(enc)
	if got := hex.EncodeToString(enc[:hdr]); got != wantBundleHeader {
		t.Errorf("header =\n%s\nwant\n%s", got, wantBundleHeader)
	}
	if got := hex.EncodeToString(sum[:]); got != wantBundleHash {
		t.Errorf("SHA-256 = %s, want %s", got, wantBundleHash)
	}
	if len(enc) != wantBundleLen {
		t.Errorf("length %d, want %d", len(enc), wantBundleLen)
	}
}

const (
	wantBundleHeader = "019d806e5bf0068154979f9995cb0bf12eb22327a9d5c6ae9e3fefad1528fcd004019d806e5bf0068154979f9995cb0bf12eb22327a9d5c6ae9e3fefad1528fcd00426002408011220abababababababababababababababababababababababababababababababab2d27c44b2820d22e54e6c72241110a1433f9675121326643311bcf97636ab02b0000000069a42a401d4058e098e879a48df7e8eea9fd2e3f55fa6a27b1d4f72c69ec98dc7f660e25c25c6fe4917bf1561bedcb38cad29c4f3d459c6612979bcb17905f55526e7608000000000000002a0000000069ad64c0"
	wantBundleHash   = "efd8db056a6437a845f6b0df89fa9fc37b8dd53d4223444e5a011b9b805d886f"
	wantBundleLen    = 4225
)

// bundleErrors lists every sentinel Verify and ParseBundle may return;
// each case must match exactly one, and TestBundleErrorsCovered checks
// that some case triggers each of them.
//
// A prekey's type byte fixes its length, so a bundle cannot carry a key of
// the wrong length: a key cut short by the end of the data is a truncated
// bundle (ErrBundleMalformed), and ErrDHLength and ErrKEMLength come only
// from ParseDHPublic and ParseKEMPublic given raw bytes (see
// TestParseDHPublicLength and TestParseKEMPublic). A key of the wrong type
// is ErrKeyType.
var bundleErrors = []error{
	ErrBundleMalformed, ErrBundleVersion, ErrBundleSignature, ErrBundleUnsigned, ErrBundleExpired,
	ErrBundleValidity, ErrDeviceMismatch, ErrDuplicatePrekeyID, ErrPrekeySignature, ErrKeyType,
	ErrDHLowOrder, ErrDHNonCanonical, ErrKEMInvalid,
	ErrDeviceSignature, ErrDeviceMalformed, ErrDeviceVersion,
}

// bundleVerifyCase is a change to a valid bundle and the error Verify must
// then report at now (nil: the bundle still verifies).
type bundleVerifyCase struct {
	name   string
	mutate func(b *Bundle)
	now    time.Time
	want   error
}

func TestBundleVerify(t *testing.T) {
	base, cases := bundleVerifyCases(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := cloneBundle(t, base)
			c.mutate(b)
			checkErr(t, b.Verify(c.now), c.want, bundleErrors)
		})
	}
	if err := base.Verify(testNow); err != nil {
		t.Fatalf("cases changed the base bundle: %v", err)
	}
}

func bundleVerifyCases(t testing.TB) (*Bundle, []bundleVerifyCase) {
	base, _, acct := testBundle(t, "verify", 3)
	other := testAccount(t, "verify-other")
	otherCert, _ := testDevice(t, other, "verify-other-ik")
	var badKEM KEMPublic
	copy(badKEM[:], bytes.Repeat([]byte{0xff}, KEMPublicSize))
	resign := func(b *Bundle) { b.Sign(acct) }

	return base, []bundleVerifyCase{
		{"valid", func(b *Bundle) {}, testNow, nil},
		{"valid just before expiry", func(b *Bundle) {}, base.Expires.Add(-time.Second), nil},
		{"valid with no one-time prekeys", func(b *Bundle) { b.OneTimeDH, b.OneTimeKEM = nil, nil; resign(b) }, testNow, nil},

		{"signature all zero", func(b *Bundle) { b.Signature = [SignatureSize]byte{} }, testNow, ErrBundleUnsigned},
		{"never signed", func(b *Bundle) {
			*b = Bundle{Account: b.Account, Device: b.Device, Seq: b.Seq, Expires: b.Expires,
				SignedPrekey: b.SignedPrekey, LastResortKEM: b.LastResortKEM, OneTimeDH: b.OneTimeDH, OneTimeKEM: b.OneTimeKEM}
		}, testNow, ErrBundleUnsigned},
		{"signature all zero but one bit", func(b *Bundle) { b.Signature = [SignatureSize]byte{63: 1} }, testNow, ErrBundleSignature},
		{"signature all 0xff", func(b *Bundle) { copy(b.Signature[:], bytes.Repeat([]byte{0xff}, SignatureSize)) }, testNow, ErrBundleSignature},
		{"flipped signature", func(b *Bundle) { b.Signature[10] ^= 4 }, testNow, ErrBundleSignature},
		{"seq changed after signing", func(b *Bundle) { b.Seq++ }, testNow, ErrBundleSignature},
		{"expiry changed after signing", func(b *Bundle) { b.Expires = b.Expires.Add(time.Hour) }, testNow, ErrBundleSignature},
		{"one-time prekey dropped after signing", func(b *Bundle) { b.OneTimeDH = b.OneTimeDH[1:] }, testNow, ErrBundleSignature},
		{"one-time prekey replaced after signing", func(b *Bundle) { b.OneTimeDH[0].Public = b.SignedPrekey.Public }, testNow, ErrBundleSignature},
		{"signed by another account", func(b *Bundle) { a := b.Account; b.Sign(other); b.Account = a }, testNow, ErrBundleSignature},

		{"expired", func(b *Bundle) {}, base.Expires, ErrBundleExpired},
		{"expired long ago", func(b *Bundle) {}, base.Expires.Add(365 * 24 * time.Hour), ErrBundleExpired},
		{"expires too far ahead", func(b *Bundle) { b.Expires = testNow.Add(MaxBundleValidity + BundleClockSkew + time.Second); resign(b) }, testNow, ErrBundleValidity},
		{"expires at the limit with skew", func(b *Bundle) { b.Expires = testNow.Add(MaxBundleValidity + BundleClockSkew); resign(b) }, testNow, nil},

		{"no account", func(b *Bundle) { b.Account = AccountPublic{} }, testNow, ErrBundleMalformed},
		{"no expiry", func(b *Bundle) { b.Expires = time.Time{}; resign(b) }, testNow, ErrBundleMalformed},
		{"too many one-time prekeys", func(b *Bundle) {
			for len(b.OneTimeDH) <= MaxOneTimePrekeys {
				b.OneTimeDH = append(b.OneTimeDH, b.OneTimeDH[0])
			}
		}, testNow, ErrBundleMalformed},
		{"too many one-time KEM prekeys", func(b *Bundle) {
			for len(b.OneTimeKEM) <= MaxOneTimePrekeys {
				b.OneTimeKEM = append(b.OneTimeKEM, b.OneTimeKEM[0])
			}
		}, testNow, ErrBundleMalformed},

		{"certificate of another account", func(b *Bundle) { b.Device = otherCert; resign(b) }, testNow, ErrDeviceMismatch},
		{"certificate with bad signature", func(b *Bundle) { b.Device.Signature[0] ^= 1; resign(b) }, testNow, ErrDeviceSignature},
		{"certificate with low-order identity key", func(b *Bundle) { b.Device.IdentityDH = DHPublic(lowOrder[4]); resign(b) }, testNow, ErrDHLowOrder},

		{"signed prekey low-order", func(b *Bundle) { b.SignedPrekey.Public = DHPublic(lowOrder[0]); resign(b) }, testNow, ErrDHLowOrder},
		{"signed prekey non-canonical", func(b *Bundle) { b.SignedPrekey.Public[31] |= 0x80; resign(b) }, testNow, ErrDHNonCanonical},
		{"one-time prekey low-order", func(b *Bundle) { b.OneTimeDH[2].Public = DHPublic(lowOrder[1]); resign(b) }, testNow, ErrDHLowOrder},
		{"one-time prekey u >= p", func(b *Bundle) { b.OneTimeDH[1].Public = DHPublic(leU(curveP)); resign(b) }, testNow, ErrDHNonCanonical},
		{"last-resort KEM invalid", func(b *Bundle) { b.LastResortKEM.Public = badKEM; resign(b) }, testNow, ErrKEMInvalid},
		{"one-time KEM invalid", func(b *Bundle) { b.OneTimeKEM[1].Public = badKEM; resign(b) }, testNow, ErrKEMInvalid},

		{"signed prekey bad signature", func(b *Bundle) { b.SignedPrekey.Signature[5] ^= 1; resign(b) }, testNow, ErrPrekeySignature},
		{"signed prekey signed by another", func(b *Bundle) {
			b.SignedPrekey = NewSignedPrekey(other, b.SignedPrekey.ID, b.SignedPrekey.Public)
			resign(b)
		}, testNow, ErrPrekeySignature},
		{"last-resort bad signature", func(b *Bundle) { b.LastResortKEM.Signature[63] ^= 1; resign(b) }, testNow, ErrPrekeySignature},
		{"one-time KEM bad signature", func(b *Bundle) { b.OneTimeKEM[2].Signature[0] ^= 1; resign(b) }, testNow, ErrPrekeySignature},
		{"one-time KEM with last-resort signature", func(b *Bundle) { b.OneTimeKEM[0].Signature = b.LastResortKEM.Signature; resign(b) }, testNow, ErrPrekeySignature},
		{"one-time KEM relabelled with another ID", func(b *Bundle) { b.OneTimeKEM[0].ID = 77; resign(b) }, testNow, ErrPrekeySignature},

		{"duplicate one-time IDs", func(b *Bundle) { b.OneTimeDH[1].ID = b.OneTimeDH[0].ID; resign(b) }, testNow, ErrDuplicatePrekeyID},
		{"one-time KEM reuses signed prekey ID", func(b *Bundle) {
			b.OneTimeKEM[0] = NewSignedKEMPrekey(acct, b.SignedPrekey.ID, b.OneTimeKEM[0].Public)
			resign(b)
		}, testNow, ErrDuplicatePrekeyID},
		{"last-resort ID reused by one-time DH", func(b *Bundle) { b.OneTimeDH[2].ID = b.LastResortKEM.ID; resign(b) }, testNow, ErrDuplicatePrekeyID},
	}
}

// bundleOffsets locates fields in an encoding made by testBundle.
type bundleOffsets struct {
	device, seq, expires, spk, lrKEM, nOTDH, otdh, nOTKEM, otkem, sig int
}

func offsetsOf(b *Bundle) bundleOffsets {
	var o bundleOffsets
	o.device = 1 + AccountSize
	o.seq = o.device + b.Device.size()
	o.expires = o.seq + 8
	o.spk = o.expires + 8
	o.lrKEM = o.spk + signedPrekeySize
	o.nOTDH = o.lrKEM + kemPrekeySize
	o.otdh = o.nOTDH + 1
	o.nOTKEM = o.otdh + len(b.OneTimeDH)*oneTimePrekeySize
	o.otkem = o.nOTKEM + 1
	o.sig = o.otkem + len(b.OneTimeKEM)*kemPrekeySize
	return o
}

// bundleParseCase is an encoding and the error ParseBundle must report.
type bundleParseCase struct {
	name string
	in   []byte
	want error
}

func TestParseBundle(t *testing.T) {
	b, enc, cases := bundleParseCases(t)
	o := offsetsOf(b)
	if o.sig+SignatureSize != len(enc) {
		t.Fatalf("offsets wrong: %d vs %d", o.sig+SignatureSize, len(enc))
	}
	p, err := ParseBundle(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Marshal(), enc) || p.Verify(testNow) != nil {
		t.Fatal("round trip failed")
	}
	with := func(off int, v ...byte) []byte {
		c := bytes.Clone(enc)
		copy(c[off:], v)
		return c
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseBundle(c.in)
			checkErr(t, err, c.want, bundleErrors)
		})
	}
	// Every strict prefix fails, and never with a panic.
	for n := range len(enc) {
		if _, err := ParseBundle(enc[:n]); err == nil {
			t.Fatalf("prefix of %d bytes parsed", n)
		}
	}
	// Fields that parse does not judge still round-trip, and Verify catches them.
	dup := with(o.otdh+1+oneTimePrekeySize, enc[o.otdh+1:o.otdh+5]...)
	p, err = ParseBundle(dup)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Marshal(), dup) {
		t.Fatal("not canonical")
	}
	if err := p.Verify(testNow); !errors.Is(err, ErrDuplicatePrekeyID) {
		t.Fatalf("duplicate IDs: %v", err)
	}
}

// bundleParseCases returns a valid bundle, its encoding, and encodings
// that ParseBundle must reject.
func bundleParseCases(t testing.TB) (*Bundle, []byte, []bundleParseCase) {
	b, _, _ := testBundle(t, "parse", 2)
	enc := b.Marshal()
	o := offsetsOf(b)
	with := func(off int, v ...byte) []byte {
		c := bytes.Clone(enc)
		copy(c[off:], v)
		return c
	}
	var far [8]byte
	binary.BigEndian.PutUint64(far[:], 1<<63)
	return b, enc, []bundleParseCase{
		{"empty", nil, ErrBundleMalformed},
		{"version 0", with(0, 0), ErrBundleVersion},
		{"version 2", with(0, 2), ErrBundleVersion},
		{"trailing byte", append(bytes.Clone(enc), 0), ErrBundleMalformed},
		{"over MaxBundleSize", make([]byte, MaxBundleSize+1), ErrBundleMalformed},
		{"expiry out of range", with(o.expires, far[:]...), ErrBundleMalformed},
		{"33 one-time prekeys", with(o.nOTDH, MaxOneTimePrekeys+1), ErrBundleMalformed},
		{"255 one-time KEM prekeys", with(o.nOTKEM, 0xff), ErrBundleMalformed},
		{"one-time count larger than data", with(o.nOTDH, 3), ErrKeyType},
		{"one-time KEM count larger than data", func() []byte {
			c := with(o.nOTKEM, 3)
			c[o.sig] = byte(KeyTypeMLKEM768)
			return c
		}(), ErrBundleMalformed},
		{"signed prekey cut short", enc[:o.spk+5+DHSize-1], ErrBundleMalformed},
		{"last-resort KEM cut short", enc[:o.lrKEM+5+KEMPublicSize-1], ErrBundleMalformed},
		{"signed prekey typed as KEM", with(o.spk, byte(KeyTypeMLKEM768)), ErrKeyType},
		{"last-resort typed as X25519", with(o.lrKEM, byte(KeyTypeX25519)), ErrKeyType},
		{"one-time prekey typed 0", with(o.otdh, 0), ErrKeyType},
		{"one-time KEM typed X25519", with(o.otkem+kemPrekeySize, byte(KeyTypeX25519)), ErrKeyType},
		{"one-time KEM typed 0xff", with(o.otkem, 0xff), ErrKeyType},
		{"signed prekey low-order", with(o.spk+5, lowOrder[2][:]...), ErrDHLowOrder},
		{"signed prekey non-canonical", with(o.spk+5+31, 0x80), ErrDHNonCanonical},
		{"one-time prekey p-1", with(o.otdh+oneTimePrekeySize+5, lowOrder[4][:]...), ErrDHLowOrder},
		{"last-resort KEM invalid", with(o.lrKEM+5, 0xff, 0xff), ErrKEMInvalid},
		{"one-time KEM invalid", with(o.otkem+5, 0xff, 0xff), ErrKEMInvalid},
		{"device version 9", with(o.device, 9), ErrDeviceVersion},
		{"device peer ID length 0", with(o.device+1+AccountSize, 0), ErrDeviceMalformed},
		{"device identity key low-order", with(o.device+1+AccountSize+1+len(testPeerID), lowOrder[0][:]...), ErrDHLowOrder},
	}
}

// TestBundleErrorsCovered: every error in bundleErrors is what some case
// of TestBundleVerify or TestParseBundle must produce, and every case
// expects an error from the list, so the list names no unreachable error.
func TestBundleErrorsCovered(t *testing.T) {
	var wants []error
	_, verify := bundleVerifyCases(t)
	for _, c := range verify {
		wants = append(wants, c.want)
	}
	_, _, parse := bundleParseCases(t)
	for _, c := range parse {
		wants = append(wants, c.want)
	}
	covered := map[error]bool{}
	for _, w := range wants {
		if w == nil {
			continue
		}
		listed := false
		for _, e := range bundleErrors {
			listed = listed || w == e
		}
		if !listed {
			t.Errorf("a case expects %v, which bundleErrors does not list", w)
		}
		covered[w] = true
	}
	for _, e := range bundleErrors {
		if !covered[e] {
			t.Errorf("no case triggers %v", e)
		}
	}
}

// FuzzParseBundle checks that ParseBundle never panics and accepts only
// canonical encodings, and that a bundle that verifies stops verifying
// (or parsing) when one bit of its signed body is flipped. Seeds are several kilobytes and each run parses
// ML-KEM keys, so minimising every new interesting input stalls the
// fuzzer; run it with a bounded minimisation budget:
//
//	go test ./keys -run XXX -fuzz FuzzParseBundle -fuzzminimizetime 100x
func FuzzParseBundle(f *testing.F) {
	for _, n := range []int{0, 1, 2} {
		b, _, _ := testBundle(f, "fuzz-bundle", n)
		f.Add(b.Marshal())
	}
	b, _, _ := testBundle(f, "fuzz-bundle", 1)
	enc := b.Marshal()
	f.Add(enc[:200])
	f.Add(enc[:len(enc)-1])
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(data)
		if err != nil {
			return
		}
		if !bytes.Equal(b.Marshal(), data) {
			t.Fatalf("not canonical: %d bytes in, %d out", len(data), len(b.Marshal()))
		}
		if b.Verify(testNow) != nil {
			return
		}
		// The signature covers every byte before it: with one bit of
		// them flipped, the bundle must no longer parse or no longer
		// verify. One bit is drawn from the whole signed body, one from
		// Seq, which no other signature covers.
		h := uint64(0)
		for _, c := range data {
			h = h*1099511628211 + uint64(c)
		}
		seqBit := (1+AccountSize+b.Device.size())*8 + int((h>>32)%64)
		for _, bit := range []int{int(h % uint64((len(data)-SignatureSize)*8)), seqBit} {
			flipped := bytes.Clone(data)
			flipped[bit/8] ^= 1 << (bit % 8)
			if fb, err := ParseBundle(flipped); err == nil && fb.Verify(testNow) == nil {
				t.Fatalf("still verifies with bit %d of the signed body flipped", bit)
			}
		}
	})
}

func BenchmarkBundleVerify(b *testing.B) {
	for _, n := range []int{0, 10, MaxOneTimePrekeys} {
		bundle, _, _ := testBundle(b, "bench", n)
		enc := bundle.Marshal()
		b.Run("onetime="+itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				p, err := ParseBundle(enc)
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Verify(testNow); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var s []byte
	for ; n > 0; n /= 10 {
		s = append([]byte{byte('0' + n%10)}, s...)
	}
	return string(s)
}

// TestVerifyForUse: VerifyForUse leaves the one-time KEM prekeys to
// VerifyOneTimeKEM, which catches a forged one; Verify checks them all.
func TestVerifyForUse(t *testing.T) {
	b, _, acct := testBundle(t, "for-use", 4)
	if err := b.VerifyForUse(testNow); err != nil {
		t.Fatalf("VerifyForUse: %v", err)
	}
	for i := range b.OneTimeKEM {
		if err := b.VerifyOneTimeKEM(i); err != nil {
			t.Fatalf("VerifyOneTimeKEM(%d): %v", i, err)
		}
	}
	forged := cloneBundle(t, b)
	forged.OneTimeKEM[2].Signature[0] ^= 1
	forged.Sign(acct)
	if err := forged.VerifyForUse(testNow); err != nil {
		t.Fatalf("VerifyForUse of a bundle with one forged one-time KEM signature: %v", err)
	}
	if err := forged.VerifyOneTimeKEM(2); !errors.Is(err, ErrPrekeySignature) {
		t.Fatalf("VerifyOneTimeKEM(forged) = %v, want ErrPrekeySignature", err)
	}
	if err := forged.VerifyOneTimeKEM(1); err != nil {
		t.Fatalf("VerifyOneTimeKEM(intact) = %v", err)
	}
	if err := forged.Verify(testNow); !errors.Is(err, ErrPrekeySignature) {
		t.Fatalf("Verify = %v, want ErrPrekeySignature", err)
	}
	for _, i := range []int{-1, 4} {
		if err := b.VerifyOneTimeKEM(i); !errors.Is(err, ErrBundleMalformed) {
			t.Fatalf("VerifyOneTimeKEM(%d) = %v, want ErrBundleMalformed", i, err)
		}
	}
	// The bundle signature still covers every one-time KEM key.
	swapped := cloneBundle(t, b)
	swapped.OneTimeKEM[0], swapped.OneTimeKEM[1] = swapped.OneTimeKEM[1], swapped.OneTimeKEM[0]
	if err := swapped.VerifyForUse(testNow); !errors.Is(err, ErrBundleSignature) {
		t.Fatalf("VerifyForUse of a reordered bundle = %v, want ErrBundleSignature", err)
	}
}
