package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// ratchetSecrets returns every secret a ratchet holds.
func ratchetSecrets(r *Ratchet) [][]byte {
	out := [][]byte{r.rk[:], r.dhs.Bytes(), r.cks[:], r.hks[:], r.nhks[:], r.ckr[:], r.hkr[:], r.nhkr[:]}
	for _, o := range r.old {
		out = append(out, o.hk[:])
	}
	for _, k := range r.skipped {
		out = append(out, k.hk[:], k.mk[:])
	}
	for _, p := range r.discarded {
		out = append(out, p.hk[:])
	}
	return out
}

// secretForms are the ways a secret could show in formatted output: hex in
// either case, raw bytes, and Go's decimal, octal and %#v renderings of
// the byte array (a prefix long enough to be unambiguous).
func secretForms(secret []byte) []string {
	forms := []string{
		hex.EncodeToString(secret),
		strings.ToUpper(hex.EncodeToString(secret)),
		string(secret),
		fmt.Sprint(secret)[1:24],
		fmt.Sprintf("%o", secret)[1:24],
		fmt.Sprintf("%#v", secret)[7:40],
		fmt.Sprintf("%#x", secret)[2:40],
	}
	// A shorter hex prefix catches a key printed in part.
	return append(forms, hex.EncodeToString(secret[:12]))
}

// TestSessionRedacted formats live sessions and ratchets, with skipped
// message keys and old chains, under every fmt verb and through slog, and
// checks that no key shows in any form.
func TestSessionRedacted(t *testing.T) {
	rng := sessRNG(11)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	m0 := textMessage(0, "first")
	sb, _ := mustAccept(t, b, mustSeal(t, rng, sa, sessNow, m0), m0, a.account())
	// Bob replies twice; Alice gets the second first (one skipped key),
	// then sends after a DH step, and Bob receives it (an old chain).
	mustSeal(t, rng, sb, sessNow, textMessage(1, "reply 0")) // never delivered
	r1 := mustSeal(t, rng, sb, sessNow, textMessage(2, "reply 1"))
	mustOpen(t, sa, sessNow, r1, textMessage(2, "reply 1"))
	m3 := textMessage(3, "after the step")
	mustOpen(t, sb, sessNow, mustSeal(t, rng, sa, sessNow, m3), m3)
	if len(sa.ratchet.skipped) == 0 || len(sb.ratchet.old) == 0 {
		t.Fatal("fixture lacks skipped keys or old chains")
	}
	pending, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}

	var secrets [][]byte
	values := map[string]any{}
	for name, s := range map[string]*Session{"alice": sa, "bob": sb, "pending": pending} {
		secrets = append(secrets, s.tagSeed[:])
		secrets = append(secrets, ratchetSecrets(s.ratchet)...)
		values[name+" *Session"] = s
		values[name+" Session"] = *s
		values[name+" *Ratchet"] = s.ratchet
		values[name+" Ratchet"] = *s.ratchet
		values[name+" in a slice"] = []*Session{s}
		values[name+" in a map"] = map[string]*Ratchet{"r": s.ratchet}
	}
	for i, sec := range secrets {
		if bytes.Equal(sec, make([]byte, len(sec))) {
			// Absent keys are zero; their forms would match any zeros.
			secrets[i] = nil
		}
	}

	// Every verb but %T and %p goes through Format. %p is for pointers:
	// given a value, fmt reports a bad verb and prints the fields without
	// asking any method (go vet flags that call), so only pointers get it.
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "% x", "%d", "%o", "%b", "%c", "%U", "%e", "%t", "%10.3v"}
	for name, v := range values {
		var out bytes.Buffer
		for _, verb := range verbs {
			fmt.Fprintf(&out, verb+"\n", v)
		}
		if strings.HasPrefix(name[strings.IndexByte(name, ' ')+1:], "*") {
			fmt.Fprintf(&out, "%p\n", v)
		}
		fmt.Fprintln(&out, v)
		fmt.Fprint(&out, v, "\n")
		fmt.Fprintln(&out, fmt.Errorf("wrapped: %v", v), errors.New(fmt.Sprint(v)))
		for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
			l := slog.New(h)
			l.Info("m", "k", v)
			l.Info("m", slog.Any("k", v), slog.Group("g", "k", v))
		}
		s := out.String()
		for _, secret := range secrets {
			if secret == nil {
				continue
			}
			for _, form := range secretForms(secret) {
				if strings.Contains(s, form) {
					t.Fatalf("%s: output reveals a secret (%q):\n%s", name, form, s)
				}
			}
		}
		if !strings.Contains(s, "REDACTED") {
			t.Errorf("%s: no REDACTED marker in\n%s", name, s)
		}
	}
	// The redacted text still says what state the session is in.
	if got := fmt.Sprint(sa); !strings.Contains(got, "initiator") || !strings.Contains(got, "skipped=1") {
		t.Errorf("Alice's session prints as %q", got)
	}
	if got := fmt.Sprint(pending); !strings.Contains(got, "pending-initial") || !strings.Contains(got, "initiator-new") {
		t.Errorf("a pending session prints as %q", got)
	}
	if got := fmt.Sprintf("%#v", sb.ratchet); !strings.HasPrefix(got, "protocol.ratchet{phase=") {
		t.Errorf("%%#v of a ratchet = %q", got)
	}
}

// TestSecretFormsDetect checks that the detector of TestSessionRedacted
// finds a key printed the way fmt prints an unredacted struct.
func TestSecretFormsDetect(t *testing.T) {
	type leaky struct{ k [32]byte }
	var l leaky
	for i := range l.k {
		l.k[i] = byte(0x41 + i)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%x", "%X", "%d", "%o", "%s"} {
		out := fmt.Sprintf(verb, l)
		found := false
		for _, form := range secretForms(l.k[:]) {
			found = found || strings.Contains(out, form)
		}
		if !found {
			t.Errorf("%s: a printed key went unnoticed in %q", verb, out)
		}
	}
}
