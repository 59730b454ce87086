package protocol

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The envelope vectors in testdata/envelope are files in the manner of the
// age test vectors, in the same layout as the session vectors: a header of
// "key: value" lines, a blank line, then the envelope in base64 (standard
// alphabet, padded, 64 columns). Header keys:
//
//	expect:  success, or the name of the rule the envelope breaks
//	now:     the validator's clock, RFC 3339
//	comment: free text
//
// A conforming decoder parses the envelope, then validates it at "now", and
// must fail exactly when expect is not success. `go test -run
// TestEnvelopeVectors -update-vectors` rewrites the files from
// envelopeVectors below.

var updateVectors = flag.Bool("update-vectors", false, "rewrite the known-answer vector files in testdata")

// expectations names each MUST-reject rule of the envelope for the vectors.
var expectations = map[string]error{
	"success":             nil,
	"unknown version":     ErrUnknownVersion,
	"truncated":           ErrEnvelopeTruncated,
	"trailing bytes":      ErrEnvelopeTrailing,
	"too large":           ErrEnvelopeTooLarge,
	"empty ciphertext":    ErrEmptyCiphertext,
	"expiry out of range": ErrExpiryOutOfRange,
	"expired":             ErrExpired,
	"ttl too long":        ErrTTLTooLong,
}

type envelopeVector struct {
	name, expect, comment string
	now                   time.Time
	data                  []byte
}

func envelopeVectors() []envelopeVector {
	now := testNow
	base := func(ct []byte, expiry time.Time) *Envelope {
		e := &Envelope{Version: EnvelopeVersion, Expiry: expiry, Ciphertext: ct}
		e.Tag = IntroTag([32]byte{0x01}, Epoch(now))
		e.DeleteHash = HashDeleteToken(DeleteToken([32]byte{0x02}))
		return e
	}
	good := base([]byte("sealed"), now.Add(24*time.Hour)).Marshal()
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	setLen := func(n uint32) []byte {
		return edit(func(b []byte) []byte { binary.BigEndian.PutUint32(b[73:], n); return b })
	}
	return []envelopeVector{
		{"ok_one_day", "success", "a one-day envelope with an intro tag", now, good},
		{"ok_max_ttl", "success", "expiry exactly MaxTTL after now", now, base([]byte{0}, now.Add(MaxTTL)).Marshal()},
		{"ok_max_ttl_skew", "success", "expiry MaxTTL plus MaxClockSkew after now", now, base([]byte{0}, now.Add(MaxTTL+MaxClockSkew)).Marshal()},
		{"ok_max_size", "success", "ciphertext of MaxCiphertextSize bytes", now,
			base(bytes.Repeat([]byte{0xee}, MaxCiphertextSize), now.Add(time.Hour)).Marshal()},
		{"version_0", "unknown version", "", now, edit(func(b []byte) []byte { b[0] = 0; return b })},
		{"version_2", "unknown version", "", now, edit(func(b []byte) []byte { b[0] = 2; return b })},
		{"empty", "truncated", "", now, []byte{}},
		{"header_truncated", "truncated", "cut inside the delete hash", now, good[:60]},
		{"ciphertext_truncated", "truncated", "one ciphertext byte missing", now, good[:len(good)-1]},
		{"trailing_byte", "trailing bytes", "", now, append(append([]byte(nil), good...), 0)},
		{"length_short", "trailing bytes", "length field one less than the ciphertext", now, setLen(5)},
		{"length_zero", "empty ciphertext", "", now, setLen(0)[:EnvelopeHeaderSize]},
		{"length_over_max", "too large", "length field MaxCiphertextSize+1", now, setLen(MaxCiphertextSize + 1)},
		{"size_over_max", "too large", "encoding of MaxEnvelopeSize+1 bytes", now,
			base(make([]byte, MaxCiphertextSize+1), now.Add(time.Hour)).Marshal()},
		{"expiry_high_bit", "expiry out of range", "expiry 2^63", now,
			edit(func(b []byte) []byte { binary.BigEndian.PutUint64(b[33:], 1<<63); return b })},
		{"expiry_after_9999", "expiry out of range", "expiry one second after the end of year 9999", now,
			edit(func(b []byte) []byte { binary.BigEndian.PutUint64(b[33:], MaxExpiry+1); return b })},
		{"expired_now", "expired", "expiry equals now", now, base([]byte{0}, now).Marshal()},
		{"expired_zero", "expired", "expiry 0", now, base([]byte{0}, time.Unix(0, 0)).Marshal()},
		{"ttl_too_long", "ttl too long", "one second beyond MaxTTL plus MaxClockSkew", now,
			base([]byte{0}, now.Add(MaxTTL+MaxClockSkew+time.Second)).Marshal()},
	}
}

func writeVector(path string, v envelopeVector) error {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "expect: %s\n", v.expect)
	fmt.Fprintf(&buf, "now: %s\n", v.now.UTC().Format(time.RFC3339))
	if v.comment != "" {
		fmt.Fprintf(&buf, "comment: %s\n", v.comment)
	}
	buf.WriteString("\n")
	enc := base64.StdEncoding.EncodeToString(v.data)
	for len(enc) > 64 {
		buf.WriteString(enc[:64] + "\n")
		enc = enc[64:]
	}
	if enc != "" {
		buf.WriteString(enc + "\n")
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func readVector(path string) (envelopeVector, error) {
	v := envelopeVector{name: filepath.Base(path)}
	f, err := os.Open(path)
	if err != nil {
		return v, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		k, val, ok := strings.Cut(line, ": ")
		if !ok {
			return v, fmt.Errorf("bad header line %q", line)
		}
		switch k {
		case "expect":
			v.expect = val
		case "now":
			t, err := time.Parse(time.RFC3339, val)
			if err != nil {
				return v, err
			}
			v.now = t
		case "comment":
			v.comment = val
		default:
			return v, fmt.Errorf("unknown header %q", k)
		}
	}
	var body strings.Builder
	for sc.Scan() {
		body.WriteString(strings.TrimSpace(sc.Text()))
	}
	if err := sc.Err(); err != nil {
		return v, err
	}
	v.data, err = base64.StdEncoding.DecodeString(body.String())
	return v, err
}

func TestEnvelopeVectors(t *testing.T) {
	dir := filepath.Join("testdata", "envelope")
	if *updateVectors {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, v := range envelopeVectors() {
			if err := writeVector(filepath.Join(dir, v.name), v); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(envelopeVectors()) {
		t.Fatalf("%d vector files, %d vectors: run with -update-vectors", len(files), len(envelopeVectors()))
	}
	want := map[string]envelopeVector{}
	for _, v := range envelopeVectors() {
		want[v.name] = v
	}
	for _, path := range files {
		v, err := readVector(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		t.Run(v.name, func(t *testing.T) {
			g, ok := want[v.name]
			if !ok || !bytes.Equal(g.data, v.data) || g.expect != v.expect || !g.now.Equal(v.now) {
				t.Fatal("file differs from the generator: run with -update-vectors")
			}
			wantErr, ok := expectations[v.expect]
			if !ok {
				t.Fatalf("unknown expectation %q", v.expect)
			}
			e, err := ParseEnvelope(v.data)
			if err == nil {
				if !bytes.Equal(e.Marshal(), v.data) {
					t.Fatal("accepted envelope re-marshals differently")
				}
				err = e.Validate(v.now)
			}
			if wantErr == nil && err != nil || wantErr != nil && !errors.Is(err, wantErr) {
				t.Fatalf("got %v, want %q", err, v.expect)
			}
		})
	}
}
