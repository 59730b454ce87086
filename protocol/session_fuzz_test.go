package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// sessFuzzFixture is a session pair and sample envelopes for the fuzz
// targets, built from a fixed seed.
type sessFuzzFixture struct {
	alice, bob *sessParty
	initial    *Envelope // first envelope to Bob, under his intro tag
	aliceState []byte    // Alice's session after the exchange below
	bobState   []byte    // Bob's session after the exchange below
	toBob      []*Envelope
	toAlice    []*Envelope
	states     [][]byte // session states at several stages
}

func newSessFuzzFixture(tb testing.TB) *sessFuzzFixture {
	rng := sessRNG(99)
	fx := &sessFuzzFixture{alice: newSessParty(tb, rng, "alice", 1), bob: newSessParty(tb, rng, "bob", 1)}
	sa, err := Initiate(rng, sessNow, fx.alice.me, fx.bob.bundle, derandEncapsulator(rng))
	if err != nil {
		tb.Fatal(err)
	}
	fx.states = append(fx.states, mustSessState(tb, sa))
	fx.initial = mustSeal(tb, rng, sa, sessNow, textMessage(0, "first"))
	second := mustSeal(tb, rng, sa, sessNow, textMessage(1, "second, still initial"))
	sb, _, _, err := Accept(sessNow, fx.bob.me, fx.bob.store, fx.initial)
	if err != nil {
		tb.Fatal(err)
	}
	fx.states = append(fx.states, mustSessState(tb, sb))
	// Bob holds both sessions' states from before the remaining
	// envelopes are opened, so each fuzz input starts from there.
	reply := mustSeal(tb, rng, sb, sessNow, Message{Type: ContentReceipt, Body: make([]byte, 32)})
	fx.bobState = mustSessState(tb, sb)
	fx.aliceState = mustSessState(tb, sa)
	if _, _, err := sa.Open(sessNow, reply); err != nil {
		tb.Fatal(err)
	}
	third := mustSeal(tb, rng, sa, sessNow, textMessage(2, "third"))
	fx.states = append(fx.states, mustSessState(tb, sa))
	fx.toBob = []*Envelope{second, third}
	fx.toAlice = []*Envelope{reply}
	return fx
}

// FuzzAcceptInitial feeds arbitrary payloads under Bob's intro tag to
// Accept: it must never panic, never change the prekey store, and accept
// nothing but a genuine initial message from Alice. Inputs that keep the
// prekey IDs run real ML-KEM and X25519 operations, so give the fuzzer a
// short minimisation budget:
//
//	go test ./protocol -run '^$' -fuzz FuzzAcceptInitial -fuzztime 60s -fuzzminimizetime 2s
func FuzzAcceptInitial(f *testing.F) {
	fx := newSessFuzzFixture(f)
	ct := fx.initial.Ciphertext
	f.Add(ct)
	f.Add(ct[:InitialHeaderSize])
	f.Add(ct[:InitialPrefixSize])
	f.Add(ct[:InitialPrefixSize+1])
	f.Add(fx.toBob[1].Ciphertext)
	f.Add([]byte{kindInitial})
	f.Add([]byte{0x03, 0x00})
	nKeys := len(fx.bob.store.OneTimeDH) + len(fx.bob.store.KEM) + len(fx.bob.store.SignedDH)
	f.Fuzz(func(t *testing.T, data []byte) {
		env := &Envelope{
			Version:    EnvelopeVersion,
			Tag:        fx.initial.Tag,
			Expiry:     fx.initial.Expiry,
			DeleteHash: fx.initial.DeleteHash,
			Ciphertext: data,
		}
		s, m, acc, err := Accept(sessNow, fx.bob.me, fx.bob.store, env)
		if n := len(fx.bob.store.OneTimeDH) + len(fx.bob.store.KEM) + len(fx.bob.store.SignedDH); n != nKeys {
			t.Fatal("Accept changed the prekey store")
		}
		if err != nil {
			if s != nil {
				t.Fatal("Accept returned a session with an error")
			}
			return
		}
		if m.Sender != fx.alice.account() || s.Peer() != fx.alice.account() || acc.InitialID != s.InitialID() {
			t.Fatal("Accept took a message that is not Alice's")
		}
		if !bytes.Equal(data[:InitialPrefixSize], ct[:InitialPrefixSize]) {
			t.Fatal("Accept took an initial message with a different prefix")
		}
	})
}

// FuzzUnmarshalSession: arbitrary state encodings never panic, and what
// decodes re-encodes to the same bytes.
func FuzzUnmarshalSession(f *testing.F) {
	fx := newSessFuzzFixture(f)
	for _, s := range append(fx.states, fx.aliceState, fx.bobState) {
		f.Add(s)
	}
	f.Add([]byte{sessionStateVersion, stateFlagInitiator | stateFlagPending})
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := UnmarshalSession(data)
		if err != nil {
			if !errors.Is(err, ErrBadSession) {
				t.Fatalf("error does not wrap ErrBadSession: %v", err)
			}
			return
		}
		enc, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded session does not encode: %v", err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatal("session state has two encodings")
		}
	})
}

// FuzzSessionOpen opens arbitrary envelope bytes on Alice's or Bob's
// session: no panic; a failed Open leaves the state unchanged; a successful
// one yields a message from the peer.
func FuzzSessionOpen(f *testing.F) {
	fx := newSessFuzzFixture(f)
	for _, e := range fx.toBob {
		f.Add(false, e.Marshal())
	}
	for _, e := range fx.toAlice {
		f.Add(true, e.Marshal())
	}
	f.Add(true, fx.toBob[0].Marshal())
	f.Fuzz(func(t *testing.T, toAlice bool, data []byte) {
		env, err := ParseEnvelope(data)
		if err != nil {
			return
		}
		state := fx.bobState
		if toAlice {
			state = fx.aliceState
		}
		s, err := UnmarshalSession(state)
		if err != nil {
			t.Fatal(err)
		}
		m, opened, err := s.Open(sessNow.Add(time.Minute), env)
		after := mustSessState(t, s)
		if err != nil {
			if !bytes.Equal(after, state) {
				t.Fatalf("failed Open changed the session: %v", err)
			}
			return
		}
		if m.Sender != s.Peer() || !env.CheckDeleteToken(opened.DeleteToken) {
			t.Fatal("Open returned a message that is not from the peer")
		}
	})
}

// FuzzParseInitialHeader: the initial header parser never panics, accepts
// only known flags, a zero one-time prekey ID without flag 0x01 and a
// valid EK_A, and what it accepts re-encodes to the same bytes, so an
// initial message has one header encoding (and one initial ID).
func FuzzParseInitialHeader(f *testing.F) {
	fx := newSessFuzzFixture(f)
	hdr := fx.initial.Ciphertext[:InitialHeaderSize]
	f.Add(bytes.Clone(hdr))
	for _, flags := range []byte{0x00, 0x01, 0x02, 0x04, 0x80} {
		h := bytes.Clone(hdr)
		h[1] = flags
		f.Add(h)
	}
	f.Add(hdr[:InitialHeaderSize-1])
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseInitialHeader(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedInitial) {
				t.Fatalf("error does not wrap ErrMalformedInitial: %v", err)
			}
			return
		}
		if h.flags&^knownFlags != 0 || (h.flags&flagOneTimeDH == 0 && h.otpID != 0) {
			t.Fatalf("accepted flags %#x with one-time ID %d", h.flags, h.otpID)
		}
		if _, err := keys.ParseDHPublic(h.ek[:]); err != nil {
			t.Fatalf("accepted an invalid EK_A: %v", err)
		}
		if out := h.appendTo(nil); !bytes.Equal(out, data[:InitialHeaderSize]) {
			t.Fatal("initial header has two encodings")
		}
		env := &Envelope{Ciphertext: data}
		if id, ok := EnvelopeInitialID(env); !ok || id != initialIDOf(h.ek, h.ct[:]) {
			t.Fatal("EnvelopeInitialID disagrees with the parsed header")
		}
	})
}

// FuzzParseMessage: the inner message parser never panics, and what it
// accepts re-encodes to the same bytes.
func FuzzParseMessage(f *testing.F) {
	for _, m := range []Message{
		textMessage(1, "hello"),
		{Type: ContentReceipt, Body: make([]byte, 2*MessageIDSize), Seq: 0},
		{Type: ContentType(200), Body: []byte{0}, Seq: 1 << 63, Sent: time.UnixMilli(-1)},
	} {
		b, err := m.marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(make([]byte, MessageHeaderSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseMessage(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedMessage) && !errors.Is(err, ErrBodyTooLarge) {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		out, err := m.marshal()
		if err != nil {
			t.Fatalf("accepted message does not encode: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("inner message has two encodings:\n%x\n%x", data, out)
		}
	})
}
