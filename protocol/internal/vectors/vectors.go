// Package vectors builds the session layer's known-answer vectors: a
// prekey bundle, a PQXDH computation with every intermediate value, and the
// first envelopes of a session in both directions. Everything derives from
// a fixed ChaCha8 seed, so the output is the same on every run; the
// vectorgen command writes it to protocol/testdata/session, and the
// protocol tests regenerate and compare it.
//
// A vector file is a header of "key: value" lines, the first being
// "expect: ...", then an empty line, then the vector's data in base64
// (standard alphabet, padded, 64 columns).
package vectors

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/keys/kemtest"
	"github.com/sotto-im/sotto/protocol"
)

// Seed seeds the ChaCha8 generator all vectors derive from.
var Seed = [32]byte([]byte("sotto/v1 session vectors seed 01"))

// Now is the clock of every vector.
var Now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// TTL is the lifetime of every vector envelope.
const TTL = 7 * 24 * time.Hour

// Field is one header line.
type Field struct{ Key, Value string }

// File is one vector.
type File struct {
	Name   string
	Header []Field
	Data   []byte
}

// Get returns the value of the first header line with key k.
func (f *File) Get(k string) string {
	for _, h := range f.Header {
		if h.Key == k {
			return h.Value
		}
	}
	return ""
}

// Hex decodes the header value of k as hex.
func (f *File) Hex(k string) ([]byte, error) {
	v := f.Get(k)
	if v == "" {
		return nil, fmt.Errorf("vectors: %s: no %q", f.Name, k)
	}
	return hex.DecodeString(v)
}

// Encode renders f in the vector file format.
func (f *File) Encode() []byte {
	var b bytes.Buffer
	for _, h := range f.Header {
		fmt.Fprintf(&b, "%s: %s\n", h.Key, h.Value)
	}
	b.WriteByte('\n')
	s := base64.StdEncoding.EncodeToString(f.Data)
	for len(s) > 64 {
		b.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	b.WriteString(s + "\n")
	return b.Bytes()
}

// Decode parses the vector file format.
func Decode(name string, b []byte) (File, error) {
	f := File{Name: name}
	head, body, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		return f, errors.New("vectors: no empty line after the header")
	}
	for _, line := range strings.Split(string(head), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			return f, fmt.Errorf("vectors: bad header line %q", line)
		}
		f.Header = append(f.Header, Field{k, v})
	}
	if len(f.Header) == 0 || f.Header[0].Key != "expect" {
		return f, errors.New("vectors: first header line is not expect")
	}
	data, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(body), "\n", ""))
	if err != nil {
		return f, fmt.Errorf("vectors: data: %w", err)
	}
	f.Data = data
	return f, nil
}

func hexf(k string, v []byte) Field { return Field{k, hex.EncodeToString(v)} }

// party is one generated device.
type party struct {
	me     protocol.LocalIdentity
	ikPriv []byte
	seed   []byte
}

func newParty(rng io.Reader, peerID string) (*party, error) {
	acct, err := keys.GenerateAccount(rng)
	if err != nil {
		return nil, err
	}
	ik, err := keys.GenerateDH(rng)
	if err != nil {
		return nil, err
	}
	cert, err := keys.NewDeviceCertificate(acct, []byte(peerID), ik.Public(), Now.Add(-time.Hour))
	if err != nil {
		return nil, err
	}
	return &party{
		me:     protocol.LocalIdentity{Account: acct, IdentityDH: ik, Device: cert},
		ikPriv: ik.Bytes(),
		seed:   acct.Seed(),
	}, nil
}

// recordingEncapsulator draws 32 bytes of ML-KEM randomness from rng for
// each encapsulation and remembers the last.
type recordingEncapsulator struct {
	rng  io.Reader
	last []byte
}

func (e *recordingEncapsulator) encapsulate(pk keys.KEMPublic) ([]byte, []byte, error) {
	m := make([]byte, 32)
	if _, err := io.ReadFull(e.rng, m); err != nil {
		return nil, nil, err
	}
	e.last = m
	return kemtest.Encapsulate(pk, m)
}

// Generate builds every vector.
func Generate() ([]File, error) {
	rng := rand.NewChaCha8(Seed)
	alice, err := newParty(rng, "alice-peer-id")
	if err != nil {
		return nil, err
	}
	bob, err := newParty(rng, "bob-peer-id")
	if err != nil {
		return nil, err
	}
	bundle, sec, err := keys.GeneratePrekeys(rng, bob.me.Account, bob.me.Device, Now.Add(-time.Hour), 7, 2, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	files := []File{{
		Name: "bundle.txt",
		Header: []Field{
			{"expect", "valid"},
			{"now", Now.Format(time.RFC3339)},
			hexf("account", bundle.Account[:]),
		},
		Data: bundle.Marshal(),
	}}

	pq, err := pqxdhVector(rng, alice, bob)
	if err != nil {
		return nil, err
	}
	files = append(files, pq)

	sess, err := sessionVectors(rng, alice, bob, bundle, sec)
	if err != nil {
		return nil, err
	}
	return append(files, sess...), nil
}

// pqxdhVector records one PQXDH computation with every input and
// intermediate value: fresh prekeys, a one-time prekey of each kind.
func pqxdhVector(rng io.Reader, alice, bob *party) (File, error) {
	spk, err := keys.GenerateDH(rng)
	if err != nil {
		return File{}, err
	}
	opk, err := keys.GenerateDH(rng)
	if err != nil {
		return File{}, err
	}
	kem, err := keys.GenerateKEM(rng)
	if err != nil {
		return File{}, err
	}
	ek, err := keys.GenerateDH(rng)
	if err != nil {
		return File{}, err
	}
	kemRand := make([]byte, 32)
	if _, err := io.ReadFull(rng, kemRand); err != nil {
		return File{}, err
	}
	ss, ct, err := kemtest.Encapsulate(kem.Public(), kemRand)
	if err != nil {
		return File{}, err
	}
	ikA, ikB := alice.me.IdentityDH, bob.me.IdentityDH
	dh := func(priv *keys.DHPrivate, pub keys.DHPublic) []byte {
		out, e := priv.DH(pub)
		if e != nil && err == nil {
			err = e
		}
		return out
	}
	dh1, dh2, dh3, dh4 := dh(ikA, spk.Public()), dh(ek, ikB.Public()), dh(ek, spk.Public()), dh(ek, opk.Public())
	if err != nil {
		return File{}, err
	}
	sk, err := protocol.DerivePQXDH(dh1, dh2, dh3, dh4, ss)
	if err != nil {
		return File{}, err
	}
	expand := func(label string) []byte {
		out, e := hkdf.Expand(sha256.New, sk[:], label, 32)
		if e != nil && err == nil {
			err = e
		}
		return out
	}
	kemPub := kem.Public()
	kemHash := sha256.Sum256(append([]byte("sotto/v1/pqxdh/kem-public-key\x02"), kemPub[:]...))
	ad := bytes.Join([][]byte{
		{0x01}, ikA.Public().Bytes(), {0x01}, ikB.Public().Bytes(),
		alice.me.Account.Public().Bytes(), bob.me.Account.Public().Bytes(), kemHash[:],
	}, nil)
	f := File{
		Name: "pqxdh.txt",
		Header: []Field{
			{"expect", "success"},
			{"info", protocol.PQXDHInfo},
			hexf("alice_account_seed", alice.seed),
			hexf("alice_identity_dh", alice.ikPriv),
			hexf("bob_account_seed", bob.seed),
			hexf("bob_identity_dh", bob.ikPriv),
			hexf("bob_signed_prekey", spk.Bytes()),
			hexf("bob_one_time_prekey", opk.Bytes()),
			hexf("bob_kem_prekey_seed", kem.Seed()),
			hexf("alice_ephemeral", ek.Bytes()),
			hexf("kem_randomness", kemRand),
			hexf("dh1", dh1), hexf("dh2", dh2), hexf("dh3", dh3), hexf("dh4", dh4),
			hexf("ss", ss),
			hexf("sk", sk[:]),
			hexf("root_key", expand("sotto/v1/pqxdh/root-key")),
			hexf("shared_hka", expand("sotto/v1/pqxdh/header-key-initiator")),
			hexf("shared_nhkb", expand("sotto/v1/pqxdh/next-header-key-responder")),
			hexf("tag_seed", expand("sotto/v1/pqxdh/tag-seed")),
			hexf("ad", ad),
		},
		Data: ct,
	}
	if err != nil {
		return File{}, err
	}
	return f, nil
}

// sessionVectors runs a session between alice and bob: the initial
// envelope, a second initial-prefixed one, Bob's reply, and Alice's
// follow-up after the reply, each with the receiving side's session
// state from just before it opens the envelope.
func sessionVectors(rng io.Reader, alice, bob *party, bundle *keys.Bundle, sec *keys.PrekeySecrets) ([]File, error) {
	enc := &recordingEncapsulator{rng: rng}
	sa, err := protocol.Initiate(rng, Now, alice.me, bundle, protocol.WithEncapsulator(enc.encapsulate))
	if err != nil {
		return nil, err
	}
	msg := func(i byte, seq uint64, body string) protocol.Message {
		m := protocol.Message{Sent: Now.Add(time.Duration(i) * time.Second), Seq: seq, Type: protocol.ContentText, Body: []byte(body)}
		for j := range m.ID {
			m.ID[j] = i
		}
		return m
	}
	msgFields := func(m protocol.Message, sender keys.AccountPublic) []Field {
		return []Field{
			hexf("sender", sender[:]),
			hexf("id", m.ID[:]),
			{"sent_ms", fmt.Sprint(m.Sent.UnixMilli())},
			{"seq", fmt.Sprint(m.Seq)},
			{"type", fmt.Sprint(uint8(m.Type))},
			hexf("body", m.Body),
		}
	}
	state := func(s *protocol.Session) (string, error) {
		b, err := s.MarshalBinary()
		return base64.StdEncoding.EncodeToString(b), err
	}
	seal := func(s *protocol.Session, m protocol.Message) (*protocol.Envelope, protocol.Sealed, error) {
		return s.Seal(rng, Now, m, TTL)
	}
	var files []File

	m0 := msg(1, 1, "Hello Bob, this is the first message of the session.")
	e0, s0, err := seal(sa, m0)
	if err != nil {
		return nil, err
	}
	// The responder's keys, so that the vector can be checked from the
	// file alone: the prekey IDs are in the initial header (offsets 2, 6
	// and 10 of the payload).
	id := func(off int) keys.PrekeyID {
		return keys.PrekeyID(binary.BigEndian.Uint32(e0.Ciphertext[off:]))
	}
	spkID, kemID, otpID := id(2), id(6), id(10)
	responder := []Field{
		hexf("bob_account_seed", bob.seed),
		hexf("bob_identity_dh", bob.ikPriv),
		hexf("bob_device", bob.me.Device.Marshal()),
		{"signed_prekey", fmt.Sprintf("%d:%x", spkID, sec.SignedDH[spkID].Bytes())},
		{"kem_prekey", fmt.Sprintf("%d:%x", kemID, sec.KEM[kemID].Seed())},
		{"one_time_prekey", fmt.Sprintf("%d:%x", otpID, sec.OneTimeDH[otpID].Bytes())},
	}
	files = append(files, File{
		Name: "initial.txt",
		Header: append(append([]Field{
			{"expect", "accept"},
			{"now", Now.Format(time.RFC3339)},
			hexf("kem_randomness", enc.last),
			hexf("delete_token", s0.DeleteToken[:]),
		}, responder...), msgFields(m0, alice.me.Account.Public())...),
		Data: e0.Marshal(),
	})
	bad := e0.Marshal()
	bad[protocol.EnvelopeHeaderSize+protocol.InitialHeaderSize+5] ^= 0x01
	files = append(files, File{
		Name:   "initial_bad_seal.txt",
		Header: append([]Field{{"expect", "reject: sealed identity does not open"}, {"now", Now.Format(time.RFC3339)}}, responder...),
		Data:   bad,
	})

	m1 := msg(2, 2, "Bob, are you there? (sent before any reply)")
	e1, s1, err := seal(sa, m1)
	if err != nil {
		return nil, err
	}
	store := &memoryPrekeys{sec}
	sb, _, acc, err := protocol.Accept(Now, bob.me, store, e0)
	if err != nil {
		return nil, err
	}
	bobState, err := state(sb)
	if err != nil {
		return nil, err
	}
	files = append(files, File{
		Name: "initial_again.txt",
		Header: append([]Field{
			{"expect", "open"},
			{"now", Now.Format(time.RFC3339)},
			{"state", bobState},
			hexf("initial_id", acc.InitialID[:]),
			hexf("delete_token", s1.DeleteToken[:]),
		}, msgFields(m1, alice.me.Account.Public())...),
		Data: e1.Marshal(),
	})
	if _, _, err := sb.Open(Now, e1); err != nil {
		return nil, err
	}

	r0 := msg(3, 1, "Hi Alice! First reply, on a freshly ratcheted chain.")
	aliceState, err := state(sa)
	if err != nil {
		return nil, err
	}
	f0, t0, err := seal(sb, r0)
	if err != nil {
		return nil, err
	}
	files = append(files, File{
		Name: "reply.txt",
		Header: append([]Field{
			{"expect", "open"},
			{"now", Now.Format(time.RFC3339)},
			{"state", aliceState},
			hexf("delete_token", t0.DeleteToken[:]),
		}, msgFields(r0, bob.me.Account.Public())...),
		Data: f0.Marshal(),
	})
	if _, _, err := sa.Open(Now, f0); err != nil {
		return nil, err
	}

	m2 := msg(4, 3, "Great, now we are on pairwise tags.")
	bobState, err = state(sb)
	if err != nil {
		return nil, err
	}
	e2, s2, err := seal(sa, m2)
	if err != nil {
		return nil, err
	}
	files = append(files, File{
		Name: "message.txt",
		Header: append([]Field{
			{"expect", "open"},
			{"now", Now.Format(time.RFC3339)},
			{"state", bobState},
			hexf("delete_token", s2.DeleteToken[:]),
		}, msgFields(m2, alice.me.Account.Public())...),
		Data: e2.Marshal(),
	})
	return files, nil
}

// memoryPrekeys serves prekey secrets with an empty replay cache.
type memoryPrekeys struct{ *keys.PrekeySecrets }

func (memoryPrekeys) SeenInitial([32]byte) bool { return false }
