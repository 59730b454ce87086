package keys

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// TestSecretsRedacted formats every secret-holding type every way a log
// line or error might, and checks no secret byte sequence appears.
func TestSecretsRedacted(t *testing.T) {
	ks := testKeystore(t, "redact")
	kem, _ := GenerateKEM(testRand("redact-kem"))
	sec := NewPrekeySecrets()
	sec.SignedDH[1] = ks.IdentityDH
	sec.KEM[2] = kem
	secrets := [][]byte{ks.Account.Seed(), ks.IdentityDH.Bytes(), ks.HostKey[4:], kem.Seed()}

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
	}
	for name, v := range values {
		var out bytes.Buffer
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		slog.New(slog.NewTextHandler(&out, nil)).Info("m", "k", v)
		slog.New(slog.NewJSONHandler(&out, nil)).Info("m", "k", v)
		s := out.String()
		for _, secret := range secrets {
			for _, enc := range []string{hex.EncodeToString(secret), strings.ToUpper(hex.EncodeToString(secret)), string(secret), fmt.Sprint(secret)[1:20], fmt.Sprintf("%#v", secret)[8:40]} {
				if strings.Contains(s, enc) {
					t.Errorf("%s: output reveals a secret:\n%s", name, s)
				}
			}
		}
		if !strings.Contains(s, "REDACTED") && name != "*PrekeySecrets" {
			t.Errorf("%s: no REDACTED marker in\n%s", name, s)
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
