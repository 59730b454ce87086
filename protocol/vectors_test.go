package protocol_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/keys/kemtest"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/internal/vectors"
)

var update = flag.Bool("update", false, "rewrite the session vectors in testdata/session")

const vectorDir = "testdata/session"

// TestSessionVectors regenerates the session vectors and compares them
// with the files (or rewrites the files with -update), then checks each
// file on its own terms: only from what it records, through the public API.
func TestSessionVectors(t *testing.T) {
	files, err := vectors.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll(vectorDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		path := filepath.Join(vectorDir, f.Name)
		if *update {
			if err := os.WriteFile(path, f.Encode(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		disk, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./protocol -run TestSessionVectors -update)", err)
		}
		if !bytes.Equal(disk, f.Encode()) {
			t.Errorf("%s: regenerated vector differs from the file", f.Name)
		}
	}
	entries, err := os.ReadDir(vectorDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(files) {
		t.Errorf("%d files in %s, generator writes %d", len(entries), vectorDir, len(files))
	}
	for _, e := range entries {
		t.Run(e.Name(), func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(vectorDir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			f, err := vectors.Decode(e.Name(), b)
			if err != nil {
				t.Fatal(err)
			}
			checkVector(t, &f)
		})
	}
}

func mustHexField(t *testing.T, f *vectors.File, k string) []byte {
	t.Helper()
	b, err := f.Hex(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vectorNow(t *testing.T, f *vectors.File) time.Time {
	t.Helper()
	now, err := time.Parse(time.RFC3339, f.Get("now"))
	if err != nil {
		t.Fatal(err)
	}
	return now
}

func checkVector(t *testing.T, f *vectors.File) {
	switch f.Name {
	case "bundle.txt":
		b, err := keys.ParseBundle(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Verify(vectorNow(t, f)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Marshal(), f.Data) || !bytes.Equal(b.Account[:], mustHexField(t, f, "account")) {
			t.Fatal("bundle does not round-trip or names another account")
		}
	case "pqxdh.txt":
		checkPQXDHVector(t, f)
	case "initial.txt", "initial_bad_seal.txt":
		me, store := vectorResponder(t, f)
		env, err := protocol.ParseEnvelope(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		s, m, acc, err := protocol.Accept(vectorNow(t, f), me, store, env)
		if f.Get("expect") != "accept" {
			if !errors.Is(err, protocol.ErrSealedIdentity) {
				t.Fatalf("Accept: %v, want ErrSealedIdentity", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		checkVectorMessage(t, f, m, acc.DeleteToken)
		if s.Peer() != m.Sender || acc.ConsumedOneTimeDH == nil || acc.ConsumedKEM == nil {
			t.Fatalf("accepted session: peer %v, %+v", s.Peer(), acc)
		}
	case "initial_again.txt", "reply.txt", "message.txt":
		state, err := base64.StdEncoding.DecodeString(f.Get("state"))
		if err != nil {
			t.Fatal(err)
		}
		s, err := protocol.UnmarshalSession(state)
		if err != nil {
			t.Fatal(err)
		}
		env, err := protocol.ParseEnvelope(f.Data)
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := protocol.EnvelopeInitialID(env); ok != (f.Name == "initial_again.txt") ||
			ok && !bytes.Equal(id[:], mustHexField(t, f, "initial_id")) {
			t.Fatal("EnvelopeInitialID disagrees with the vector")
		}
		m, opened, err := s.Open(vectorNow(t, f), env)
		if err != nil {
			t.Fatal(err)
		}
		checkVectorMessage(t, f, m, opened.DeleteToken)
	default:
		t.Fatalf("unknown vector %s", f.Name)
	}
}

func checkVectorMessage(t *testing.T, f *vectors.File, m protocol.Message, tok [32]byte) {
	t.Helper()
	ms, err := strconv.ParseInt(f.Get("sent_ms"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Sender[:], mustHexField(t, f, "sender")) || !bytes.Equal(m.ID[:], mustHexField(t, f, "id")) ||
		m.Sent.UnixMilli() != ms || fmt.Sprint(m.Seq) != f.Get("seq") || fmt.Sprint(uint8(m.Type)) != f.Get("type") ||
		!bytes.Equal(m.Body, mustHexField(t, f, "body")) || !bytes.Equal(tok[:], mustHexField(t, f, "delete_token")) {
		t.Fatalf("message %+v (delete token %x) differs from the vector", m, tok)
	}
}

// vectorResponder rebuilds Bob's identity and the prekeys an initial
// message vector names.
func vectorResponder(t *testing.T, f *vectors.File) (protocol.LocalIdentity, *vectorPrekeys) {
	t.Helper()
	acct, err := keys.NewAccountPrivate(mustHexField(t, f, "bob_account_seed"))
	if err != nil {
		t.Fatal(err)
	}
	ik, err := keys.NewDHPrivate(mustHexField(t, f, "bob_identity_dh"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := keys.ParseDeviceCertificate(mustHexField(t, f, "bob_device"))
	if err != nil {
		t.Fatal(err)
	}
	idKey := func(k string) (keys.PrekeyID, []byte) {
		id, h, ok := strings.Cut(f.Get(k), ":")
		n, err := strconv.ParseUint(id, 10, 32)
		if !ok || err != nil {
			t.Fatalf("bad %s", k)
		}
		v, err := vectorsHex(h)
		if err != nil {
			t.Fatal(err)
		}
		return keys.PrekeyID(n), v
	}
	sec := keys.NewPrekeySecrets()
	id, v := idKey("signed_prekey")
	if sec.SignedDH[id], err = keys.NewDHPrivate(v); err != nil {
		t.Fatal(err)
	}
	id, v = idKey("one_time_prekey")
	if sec.OneTimeDH[id], err = keys.NewDHPrivate(v); err != nil {
		t.Fatal(err)
	}
	id, v = idKey("kem_prekey")
	if sec.KEM[id], err = keys.NewKEMPrivate(v); err != nil {
		t.Fatal(err)
	}
	return protocol.LocalIdentity{Account: acct, IdentityDH: ik, Device: cert}, &vectorPrekeys{sec}
}

type vectorPrekeys struct{ *keys.PrekeySecrets }

func (vectorPrekeys) SeenInitial([32]byte) bool { return false }

func vectorsHex(s string) ([]byte, error) {
	f := vectors.File{Header: []vectors.Field{{Key: "v", Value: s}}}
	return f.Hex("v")
}

// checkPQXDHVector recomputes every DH output, the ML-KEM encapsulation
// and SK from the recorded private keys.
func checkPQXDHVector(t *testing.T, f *vectors.File) {
	dhKey := func(k string) *keys.DHPrivate {
		p, err := keys.NewDHPrivate(mustHexField(t, f, k))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	ikA, ikB := dhKey("alice_identity_dh"), dhKey("bob_identity_dh")
	spk, opk, ek := dhKey("bob_signed_prekey"), dhKey("bob_one_time_prekey"), dhKey("alice_ephemeral")
	kem, err := keys.NewKEMPrivate(mustHexField(t, f, "bob_kem_prekey_seed"))
	if err != nil {
		t.Fatal(err)
	}
	ss, ct, err := kemtest.Encapsulate(kem.Public(), mustHexField(t, f, "kem_randomness"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ct, f.Data) || !bytes.Equal(ss, mustHexField(t, f, "ss")) {
		t.Fatal("ML-KEM encapsulation differs from the vector")
	}
	if dec, err := kem.Decapsulate(ct); err != nil || !bytes.Equal(dec, ss) {
		t.Fatal("ML-KEM decapsulation differs from the vector")
	}
	var dh [4][]byte
	for i, p := range [4][2]any{{ikA, spk}, {ek, ikB}, {ek, spk}, {ek, opk}} {
		out, err := p[0].(*keys.DHPrivate).DH(p[1].(*keys.DHPrivate).Public())
		if err != nil {
			t.Fatal(err)
		}
		// The responder's side gives the same output.
		back, err := p[1].(*keys.DHPrivate).DH(p[0].(*keys.DHPrivate).Public())
		if err != nil || !bytes.Equal(out, back) {
			t.Fatal("DH is not symmetric")
		}
		if !bytes.Equal(out, mustHexField(t, f, fmt.Sprintf("dh%d", i+1))) {
			t.Fatalf("DH%d differs from the vector", i+1)
		}
		dh[i] = out
	}
	sk, err := protocol.DerivePQXDH(dh[0], dh[1], dh[2], dh[3], ss)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sk[:], mustHexField(t, f, "sk")) || f.Get("info") != protocol.PQXDHInfo {
		t.Fatal("SK differs from the vector")
	}
}
