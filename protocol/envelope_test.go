package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"testing"
	"time"
)

var testNow = time.Date(2025, 11, 27, 12, 0, 0, 0, time.UTC)

func testEnvelope() *Envelope {
	e := &Envelope{
		Version:    EnvelopeVersion,
		Expiry:     testNow.Add(7 * 24 * time.Hour),
		Ciphertext: []byte("ciphertext"),
	}
	for i := range e.Tag {
		e.Tag[i] = byte(i)
	}
	e.DeleteHash = HashDeleteToken(DeleteToken([32]byte{0x11}))
	return e
}

// testEnvelopeHex is testEnvelope's encoding, written out field by field.
const testEnvelopeHex = "01" +
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" + // tag
	"00000000693177c0" + // expiry 1764849600 = 2025-12-04T12:00:00Z
	"%s" + // delete hash, filled in by the test
	"0000000a" + // ciphertext length
	"63697068657274657874" // "ciphertext"

func TestEnvelopeKnownEncoding(t *testing.T) {
	e := testEnvelope()
	h := HashDeleteToken(DeleteToken([32]byte{0x11}))
	want := mustHex(t, sprintf(testEnvelopeHex, hex.EncodeToString(h[:])))
	got := e.Marshal()
	if !bytes.Equal(got, want) {
		t.Fatalf("Marshal =\n%x\nwant\n%x", got, want)
	}
	if len(got) != EnvelopeHeaderSize+10 || EnvelopeHeaderSize != 77 {
		t.Fatalf("size %d, header %d", len(got), EnvelopeHeaderSize)
	}
	p, err := ParseEnvelope(want)
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != 1 || p.Tag != e.Tag || !p.Expiry.Equal(e.Expiry) || p.DeleteHash != e.DeleteHash ||
		!bytes.Equal(p.Ciphertext, e.Ciphertext) {
		t.Fatalf("ParseEnvelope = %+v, want %+v", p, e)
	}
	if err := p.Validate(testNow); err != nil {
		t.Fatal(err)
	}
}

func sprintf(format, arg string) string {
	i := bytes.Index([]byte(format), []byte("%s"))
	return format[:i] + arg + format[i+2:]
}

func TestEnvelopeParseDoesNotAlias(t *testing.T) {
	b := testEnvelope().Marshal()
	e, err := ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if e.Ciphertext[len(e.Ciphertext)-1] != 't' {
		t.Fatal("parsed ciphertext aliases the input")
	}
}

func TestEnvelopeRoundTripSizes(t *testing.T) {
	for _, n := range []int{1, 2, 160, 4096, MaxCiphertextSize} {
		e := testEnvelope()
		e.Ciphertext = bytes.Repeat([]byte{0xcc}, n)
		b := e.Marshal()
		if len(b) != e.Size() {
			t.Fatalf("len(Marshal) = %d, Size = %d", len(b), e.Size())
		}
		p, err := ParseEnvelope(b)
		if err != nil {
			t.Fatalf("%d-byte ciphertext: %v", n, err)
		}
		if !bytes.Equal(p.Marshal(), b) {
			t.Fatalf("%d-byte ciphertext: re-marshal differs", n)
		}
	}
}

func TestEnvelopeMarshalTruncatesToSeconds(t *testing.T) {
	e := testEnvelope()
	e.Expiry = e.Expiry.Add(999 * time.Millisecond)
	p, err := ParseEnvelope(e.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !p.Expiry.Equal(testNow.Add(7 * 24 * time.Hour)) {
		t.Fatalf("expiry %v", p.Expiry)
	}
}

func TestParseEnvelopeRejects(t *testing.T) {
	good := testEnvelope().Marshal()
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	setLen := func(n uint32) []byte {
		return mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[73:], n); return b })
	}
	big := testEnvelope()
	big.Ciphertext = make([]byte, MaxCiphertextSize+1)
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrEnvelopeTruncated},
		{"version 0", mod(func(b []byte) []byte { b[0] = 0; return b }), ErrUnknownVersion},
		{"version 2", mod(func(b []byte) []byte { b[0] = 2; return b }), ErrUnknownVersion},
		{"version 0xff", mod(func(b []byte) []byte { b[0] = 0xff; return b }), ErrUnknownVersion},
		{"version byte only", []byte{1}, ErrEnvelopeTruncated},
		{"header cut in tag", good[:20], ErrEnvelopeTruncated},
		{"header cut in length", good[:75], ErrEnvelopeTruncated},
		{"header only", good[:EnvelopeHeaderSize], ErrEnvelopeTruncated},
		{"header only, length zero", setLen(0)[:EnvelopeHeaderSize], ErrEmptyCiphertext},
		{"ciphertext cut", good[:len(good)-1], ErrEnvelopeTruncated},
		{"trailing byte", append(append([]byte(nil), good...), 0), ErrEnvelopeTrailing},
		{"length zero with bytes after", setLen(0), ErrEmptyCiphertext},
		{"length one short", setLen(9), ErrEnvelopeTrailing},
		{"length one long", setLen(11), ErrEnvelopeTruncated},
		{"length over max", setLen(MaxCiphertextSize + 1), ErrEnvelopeTooLarge},
		{"length 2^32-1", setLen(math.MaxUint32), ErrEnvelopeTooLarge},
		{"encoding over max size", big.Marshal(), ErrEnvelopeTooLarge},
		{"expiry 2^63", mod(func(b []byte) []byte { b[33] = 0x80; return b }), ErrExpiryOutOfRange},
		{"expiry MaxExpiry+1", mod(func(b []byte) []byte { binary.BigEndian.PutUint64(b[33:], MaxExpiry+1); return b }), ErrExpiryOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ParseEnvelope(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseEnvelope = %v, want %v", err, tc.want)
			}
			if e != nil {
				t.Fatal("non-nil envelope with error")
			}
			if !errors.Is(err, ErrBadEnvelope) {
				t.Fatalf("%v does not wrap ErrBadEnvelope", err)
			}
		})
	}
}

func TestEnvelopeValidate(t *testing.T) {
	at := func(d time.Duration) *Envelope {
		e := testEnvelope()
		e.Expiry = testNow.Add(d)
		return e
	}
	tests := []struct {
		name string
		e    *Envelope
		want error
	}{
		{"one second left", at(time.Second), nil},
		{"full TTL", at(MaxTTL), nil},
		{"full TTL plus skew", at(MaxTTL + MaxClockSkew), nil},
		{"expires now", at(0), ErrExpired},
		{"expired", at(-time.Hour), ErrExpired},
		{"expiry at Unix 0", func() *Envelope { e := testEnvelope(); e.Expiry = time.Unix(0, 0); return e }(), ErrExpired},
		{"TTL too long", at(MaxTTL + MaxClockSkew + time.Second), ErrTTLTooLong},
		{"far future", at(100 * 365 * 24 * time.Hour), ErrTTLTooLong},
		{"unknown version", func() *Envelope { e := testEnvelope(); e.Version = 2; return e }(), ErrUnknownVersion},
		{"zero version", func() *Envelope { e := testEnvelope(); e.Version = 0; return e }(), ErrUnknownVersion},
		{"empty ciphertext", func() *Envelope { e := testEnvelope(); e.Ciphertext = nil; return e }(), ErrEmptyCiphertext},
		{"ciphertext too large", func() *Envelope {
			e := testEnvelope()
			e.Ciphertext = make([]byte, MaxCiphertextSize+1)
			return e
		}(), ErrEnvelopeTooLarge},
		{"expiry beyond year 9999", func() *Envelope { e := testEnvelope(); e.Expiry = time.Unix(MaxExpiry+1, 0); return e }(), ErrExpiryOutOfRange},
		{"negative expiry", func() *Envelope { e := testEnvelope(); e.Expiry = time.Unix(-5, 0); return e }(), ErrExpiryOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.e.Validate(testNow); !errors.Is(err, tc.want) {
				t.Fatalf("Validate = %v, want %v", err, tc.want)
			}
		})
	}
}

// Every envelope that passes ValidateStructure survives a round trip.
func TestValidateStructureMatchesParse(t *testing.T) {
	e := testEnvelope()
	if err := e.ValidateStructure(); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseEnvelope(e.Marshal()); err != nil {
		t.Fatal(err)
	}
	e.Version = 9
	if e.ValidateStructure() == nil {
		t.Fatal("version 9 validates")
	}
	if _, err := ParseEnvelope(e.Marshal()); err == nil {
		t.Fatal("version 9 parses")
	}
}

func TestDeleteTokenKnownAnswer(t *testing.T) {
	// Computed with an independent HKDF-SHA256 and SHA-256 implementation.
	var secret [32]byte
	for i := range secret {
		secret[i] = 0x11
	}
	tok := DeleteToken(secret)
	if got := hex.EncodeToString(tok[:]); got != "aa7776b3a79df7714e5798216143f434a817b3f017b425f2dc6920bc4089dd03" {
		t.Errorf("DeleteToken = %s", got)
	}
	h := HashDeleteToken(tok)
	if got := hex.EncodeToString(h[:]); got != "e2f60eee91db644457cd046b28542bc7a64ac9a178186e0dd8685dcad9a442aa" {
		t.Errorf("HashDeleteToken = %s", got)
	}
	if tok == secret || DeleteToken([32]byte{}) == tok {
		t.Error("delete token does not depend on the secret as expected")
	}
}

func TestCheckDeleteToken(t *testing.T) {
	secret := [32]byte{1, 2, 3}
	tok := DeleteToken(secret)
	e := testEnvelope()
	e.DeleteHash = HashDeleteToken(tok)
	if !e.CheckDeleteToken(tok) {
		t.Fatal("right token rejected")
	}
	for i := range DeleteTokenSize {
		bad := tok
		bad[i] ^= 1
		if e.CheckDeleteToken(bad) {
			t.Fatalf("token with bit flipped at byte %d accepted", i)
		}
	}
	// The hash itself, or the raw secret, is not a token.
	if e.CheckDeleteToken(e.DeleteHash) || e.CheckDeleteToken(secret) {
		t.Fatal("hash or secret accepted as token")
	}
	if (&Envelope{}).CheckDeleteToken([32]byte{}) {
		t.Fatal("zero token matches zero hash")
	}
}

func FuzzParseEnvelope(f *testing.F) {
	good := testEnvelope().Marshal()
	f.Add(good)
	f.Add(good[:EnvelopeHeaderSize])
	f.Add(append(append([]byte(nil), good...), 0))
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Add(append([]byte{2}, good[1:]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEnvelope(b)
		if err != nil {
			if e != nil {
				t.Fatal("envelope and error")
			}
			if !errors.Is(err, ErrBadEnvelope) {
				t.Fatalf("error %v does not wrap ErrBadEnvelope", err)
			}
			return
		}
		if err := e.ValidateStructure(); err != nil {
			t.Fatalf("parsed envelope fails ValidateStructure: %v", err)
		}
		if out := e.Marshal(); !bytes.Equal(out, b) {
			t.Fatalf("re-marshal differs:\n%x\n%x", b, out)
		}
	})
}

func BenchmarkEnvelopeParse(b *testing.B) {
	e := testEnvelope()
	e.Ciphertext = make([]byte, 1024)
	enc := e.Marshal()
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEnvelope(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvelopeMarshal(b *testing.B) {
	e := testEnvelope()
	e.Ciphertext = make([]byte, 1024)
	b.SetBytes(int64(e.Size()))
	b.ReportAllocs()
	for b.Loop() {
		_ = e.Marshal()
	}
}

// TestDeleteTokenInKeySchedule: the ratchet's allocation-free derivation
// of the delete token equals DeleteToken (HKDF-SHA256 from the standard
// library), and the delete hash equals SHA-256 over label and token.
func TestDeleteTokenInKeySchedule(t *testing.T) {
	k := newKDF()
	for i := range 64 {
		var secret [32]byte
		for j := range secret {
			secret[j] = byte(i*31 + j*7)
		}
		if got, want := k.deleteToken(&secret), DeleteToken(secret); got != want {
			t.Fatalf("secret %x: key schedule gives %x, DeleteToken %x", secret, got, want)
		}
		tok := DeleteToken(secret)
		if got, want := HashDeleteToken(tok), sha256.Sum256(append([]byte("sotto/v1/delete"), tok[:]...)); got != want {
			t.Fatalf("HashDeleteToken(%x) = %x, want %x", tok, got, want)
		}
	}
}
