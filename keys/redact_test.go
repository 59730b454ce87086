package keys

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// redactVerbs are the fmt verbs and flag forms the redaction tests apply:
// those routed to String and those that are not, including verbs that do
// not fit the type and print "%!verb(...)".
var redactVerbs = []string{
	"%v", "%+v", "%#v", "%s", "%q", "%#q", "%x", "%X", "% x", "%#x",
	"%d", "%+d", "%08d", "%o", "%#o", "%O", "%b", "%c", "%U", "%#U",
	"%e", "%E", "%f", "%g", "%t", "%z",
}

// bypassVerbs are the verbs for which fmt formats a value's fields without
// calling its Format method: %p on a non-pointer and %w on an argument
// that is not an error (go vet reports both).
var bypassVerbs = []string{"%p", "%w"}

// secretEncodings lists, for 8-byte windows of each secret, the text
// each verb would print for those bytes (raw, hex, decimal, octal, binary,
// characters, ...), without the brackets around a slice.
func secretEncodings(secrets ...[]byte) []string {
	var encs []string
	for _, secret := range secrets {
		for off := 0; off+8 <= len(secret); off += 8 {
			w := secret[off : off+8]
			encs = append(encs, string(w))
			for _, verb := range append(redactVerbs, bypassVerbs...) {
				enc := fmt.Sprintf(verb, w)
				enc = strings.TrimPrefix(enc, "[]byte{")
				enc = strings.TrimSuffix(enc, "}")
				enc = strings.Trim(enc, "[]\"")
				if len(enc) >= 8 {
					encs = append(encs, enc)
				}
			}
		}
	}
	return encs
}

// revealed returns the first encoding in encs that s contains.
func revealed(s string, encs []string) (string, bool) {
	for _, enc := range encs {
		if strings.Contains(s, enc) {
			return enc, true
		}
	}
	return "", false
}

// TestSecretsRedacted formats every secret-holding type, as a value and
// as a pointer, under every verb and every way a log line or error might,
// and checks no secret byte sequence appears.
func TestSecretsRedacted(t *testing.T) {
	ks := testKeystore(t, "redact")
	// A host key of random bytes, so that any leak of it is recognisable.
	ks.HostKey = make([]byte, 68)
	io.ReadFull(testRand("redact-host"), ks.HostKey)
	kem, _ := GenerateKEM(testRand("redact-kem"))
	otk, _ := GenerateDH(testRand("redact-otk"))
	sec := NewPrekeySecrets()
	sec.SignedDH[1] = ks.IdentityDH
	sec.OneTimeDH[3] = otk
	sec.KEM[2] = kem
	encs := secretEncodings(ks.Account.Seed(), ks.IdentityDH.Bytes(), ks.HostKey, kem.Seed(), otk.Bytes())
	keyEncs := secretEncodings(ks.Account.Seed(), ks.IdentityDH.Bytes(), kem.Seed(), otk.Bytes())

	values := map[string]any{
		"*AccountPrivate": ks.Account,
		"AccountPrivate":  *ks.Account,
		"*DHPrivate":      ks.IdentityDH,
		"DHPrivate":       *ks.IdentityDH,
		"*KEMPrivate":     kem,
		"KEMPrivate":      *kem,
		"*Keystore":       ks,
		"Keystore":        *ks,
		"*PrekeySecrets":  sec,
		"PrekeySecrets":   *sec,
	}
	for name, v := range values {
		var out bytes.Buffer
		for _, verb := range redactVerbs {
			fmt.Fprintf(&out, verb+"\n", v)
			// Nested in a slice and a struct, where fmt formats elements
			// and fields.
			fmt.Fprintf(&out, verb+"\n", []any{v})
			fmt.Fprintf(&out, verb+"\n", struct{ V any }{v})
		}
		fmt.Fprint(&out, v, "\n")
		fmt.Fprintln(&out, v)
		fmt.Fprint(&out, fmt.Errorf("wrapped: %v", v), "\n")
		slog.New(slog.NewTextHandler(&out, nil)).Info("m", "k", v)
		slog.New(slog.NewJSONHandler(&out, nil)).Info("m", "k", v)
		if enc, ok := revealed(out.String(), encs); ok {
			t.Errorf("%s: output reveals a secret (%q):\n%s", name, enc, out.String())
		}
		want := "REDACTED"
		if strings.HasSuffix(name, "PrekeySecrets") {
			want = "prekey-secrets(signed=1 one-time=1 kem=1)"
		}
		for _, verb := range redactVerbs {
			if got := fmt.Sprintf(verb, v); !strings.Contains(got, want) {
				t.Errorf("%s under %s: got %q, want the redacted form (%q)", name, verb, got, want)
			}
		}

		// Without Format, fields print: private keys as addresses, never
		// as bytes. Only a Keystore's HostKey, a []byte, shows.
		out.Reset()
		for _, verb := range bypassVerbs {
			fmt.Fprintf(&out, verb+"\n", v)
			fmt.Fprint(&out, fmt.Errorf(verb, v), "\n")
		}
		if enc, ok := revealed(out.String(), keyEncs); ok {
			t.Errorf("%s: output reveals a private key (%q):\n%s", name, enc, out.String())
		}
	}
}

// TestSecretEncodingsDetectLeak checks that the encodings the redaction
// test looks for do catch a key printed under each verb.
func TestSecretEncodingsDetectLeak(t *testing.T) {
	secret := make([]byte, 32)
	io.ReadFull(testRand("leak"), secret)
	encs := secretEncodings(secret)
	type leaky struct{ k []byte }
	for _, verb := range append(redactVerbs, bypassVerbs...) {
		s := fmt.Sprintf(verb, leaky{secret})
		if _, found := revealed(s, encs); !found {
			t.Errorf("a key printed under %s is not recognised: %s", verb, s)
		}
	}
}

func TestEqual(t *testing.T) {
	r := testRand("equal")
	a1, _ := GenerateAccount(r)
	a2, _ := GenerateAccount(r)
	a1b, _ := NewAccountPrivate(a1.Seed())
	d1, _ := GenerateDH(r)
	d2, _ := GenerateDH(r)
	d1b, _ := NewDHPrivate(d1.Bytes())
	k1, _ := GenerateKEM(r)
	k2, _ := GenerateKEM(r)
	k1b, _ := NewKEMPrivate(k1.Seed())
	ks1 := &Keystore{Account: a1, IdentityDH: d1, HostKey: []byte{1, 2, 3}}
	ks1b := &Keystore{Account: a1b, IdentityDH: d1b, HostKey: []byte{1, 2, 3}}
	ks2 := &Keystore{Account: a1, IdentityDH: d1, HostKey: []byte{1, 2, 4}}
	ks3 := &Keystore{Account: a1, IdentityDH: d1, HostKey: []byte{1, 2}}
	var nilA *AccountPrivate
	var nilD *DHPrivate
	var nilK *KEMPrivate
	for _, c := range []struct {
		name string
		got  bool
		want bool
	}{
		{"account private same", a1.Equal(a1b), true},
		{"account private differ", a1.Equal(a2), false},
		{"account private nil", a1.Equal(nilA), false},
		{"account private both nil", nilA.Equal(nil), true},
		{"account public same", a1.Public().Equal(a1b.Public()), true},
		{"account public differ", a1.Public().Equal(a2.Public()), false},
		{"DH private same", d1.Equal(d1b), true},
		{"DH private differ", d1.Equal(d2), false},
		{"DH private nil", nilD.Equal(d1), false},
		{"DH public same", d1.Public().Equal(d1b.Public()), true},
		{"DH public differ", d1.Public().Equal(d2.Public()), false},
		{"KEM private same", k1.Equal(k1b), true},
		{"KEM private differ", k1.Equal(k2), false},
		{"KEM private nil", k1.Equal(nilK), false},
		{"KEM public same", k1.Public().Equal(k1b.Public()), true},
		{"KEM public differ", k1.Public().Equal(k2.Public()), false},
		{"keystore same", ks1.Equal(ks1b), true},
		{"keystore host key differs", ks1.Equal(ks2), false},
		{"keystore host key shorter", ks1.Equal(ks3), false},
		{"keystore nil", ks1.Equal(nil), false},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v", c.name, c.got)
		}
	}
}
