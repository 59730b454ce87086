package protocol

import (
	"bytes"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"

	"github.com/sotto-im/sotto/keys"

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
//	go test ./protocol -run TestFuzzCorpus -update-fuzz-corpus
func TestFuzzCorpus(t *testing.T) { fuzzcorpus.Check(t, fuzzSeeds(t), *updateFuzzCorpus) }

// fuzzSeeds returns the generated seeds of every fuzz target: valid
// encodings made by the code and edge cases around them.
func fuzzSeeds(tb testing.TB) map[string][]corpusSeed {
	fx := newSessFuzzFixture(tb)
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
	// A point of order 8 (RFC 7748 section 6.1's list of small-order points).
	lowOrderU := []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}

	// Envelopes.
	initial := fx.initial.Marshal()
	message := fx.toBob[1].Marshal()
	add("FuzzParseEnvelope", "initial", initial)
	add("FuzzParseEnvelope", "message", message)
	add("FuzzParseEnvelope", "reply", fx.toAlice[0].Marshal())
	add("FuzzParseEnvelope", "header-only", cut(message, EnvelopeHeaderSize))
	add("FuzzParseEnvelope", "one-byte-short", cut(message, len(message)-1))
	add("FuzzParseEnvelope", "trailing-byte", append(bytes.Clone(message), 0))
	add("FuzzParseEnvelope", "version-2", set(message, 0, 2))
	add("FuzzParseEnvelope", "expiry-year-10000", set(message, 1+TagSize, 0, 0, 0, 0x3a, 0xff, 0xf4, 0x41, 0x80))
	add("FuzzParseEnvelope", "empty-ciphertext", set(cut(message, EnvelopeHeaderSize), EnvelopeHeaderSize-4, 0, 0, 0, 0))
	add("FuzzParseEnvelope", "length-over-limit", set(message, EnvelopeHeaderSize-4, 0, 1, 0, 0))
	add("FuzzParseEnvelope", "empty", []byte{})

	// Initial messages and their header.
	ct := fx.initial.Ciphertext
	add("FuzzAcceptInitial", "genuine", bytes.Clone(ct))
	add("FuzzAcceptInitial", "genuine-resent", bytes.Clone(fx.toBob[0].Ciphertext))
	add("FuzzAcceptInitial", "header-only", cut(ct, InitialHeaderSize))
	add("FuzzAcceptInitial", "prefix-only", cut(ct, InitialPrefixSize))
	add("FuzzAcceptInitial", "prefix-and-one-byte", cut(ct, InitialPrefixSize+1))
	add("FuzzAcceptInitial", "flags-cleared", set(ct, 1, 0))
	add("FuzzAcceptInitial", "flag-one-time-kem-cleared", set(ct, 1, ct[1]&^flagOneTimeKEM))
	add("FuzzAcceptInitial", "unknown-flag", set(ct, 1, ct[1]|0x04))
	add("FuzzAcceptInitial", "ek-low-order", set(ct, 14, lowOrderU...))
	add("FuzzAcceptInitial", "sealed-identity-flipped", set(ct, InitialHeaderSize+3, ct[InitialHeaderSize+3]^1))
	add("FuzzAcceptInitial", "kind-message", bytes.Clone(fx.toBob[1].Ciphertext))
	add("FuzzAcceptInitial", "kind-only", []byte{kindInitial})
	hdr := ct[:InitialHeaderSize]
	add("FuzzParseInitialHeader", "genuine", bytes.Clone(hdr))
	add("FuzzParseInitialHeader", "genuine-with-rest", bytes.Clone(ct))
	add("FuzzParseInitialHeader", "no-flags", set(hdr, 1, 0))
	add("FuzzParseInitialHeader", "one-time-id-without-flag", set(hdr, 1, flagOneTimeKEM))
	add("FuzzParseInitialHeader", "unknown-flag", set(hdr, 1, 0x80))
	add("FuzzParseInitialHeader", "ek-low-order", set(hdr, 14, lowOrderU...))
	add("FuzzParseInitialHeader", "ek-high-bit", set(hdr, 14+31, hdr[14+31]|0x80))
	add("FuzzParseInitialHeader", "kind-2", set(hdr, 0, kindMessage))
	add("FuzzParseInitialHeader", "one-byte-short", cut(hdr, InitialHeaderSize-1))

	// Session states, and envelopes opened on them.
	for i, s := range append(slices.Clone(fx.states), fx.aliceState, fx.bobState) {
		add("FuzzUnmarshalSession", fmt.Sprint("state-", i), bytes.Clone(s))
	}
	pending := fx.states[0]
	add("FuzzUnmarshalSession", "truncated", cut(pending, len(pending)-1))
	add("FuzzUnmarshalSession", "trailing-byte", append(bytes.Clone(pending), 0))
	add("FuzzUnmarshalSession", "pending-without-initiator", set(fx.bobState, 1, stateFlagPending))
	add("FuzzUnmarshalSession", "version-2", set(fx.bobState, 0, 2))
	add("FuzzUnmarshalSession", "header-only", []byte{sessionStateVersion, stateFlagInitiator | stateFlagPending})
	for i, e := range fx.toBob {
		add("FuzzSessionOpen", fmt.Sprint("to-bob-", i), false, e.Marshal())
		add("FuzzSessionOpen", fmt.Sprint("to-alice-misdirected-", i), true, e.Marshal())
	}
	for i, e := range fx.toAlice {
		add("FuzzSessionOpen", fmt.Sprint("to-alice-", i), true, e.Marshal())
		add("FuzzSessionOpen", fmt.Sprint("to-bob-misdirected-", i), false, e.Marshal())
	}
	add("FuzzSessionOpen", "initial-to-bob", false, initial)

	// Inner messages.
	for i, m := range []Message{
		textMessage(1, "hello"),
		{Type: ContentReceipt, Body: bytes.Repeat([]byte{7}, 2*MessageIDSize)},
		{Type: ContentType(200), Body: []byte{0}, Seq: 1 << 63, Sent: sessNow},
		{Type: ContentText, Sent: sessNow},
	} {
		b, err := m.marshal()
		if err != nil {
			tb.Fatal(err)
		}
		add("FuzzParseMessage", fmt.Sprint("message-", i), b)
	}
	receipt, _ := (&Message{Type: ContentReceipt, Body: make([]byte, MessageIDSize)}).marshal()
	add("FuzzParseMessage", "receipt-odd-body", append(receipt, 1))
	add("FuzzParseMessage", "version-2", set(receipt, 0, 2))
	add("FuzzParseMessage", "one-byte-short", cut(receipt, MessageHeaderSize-1))

	// Ratchet messages and states.
	bob, msgs := fuzzSession(tb)
	for i, m := range msgs {
		add("FuzzRatchetDecrypt", fmt.Sprint("message-", i), bytes.Clone(m), []byte("ad"))
	}
	last := msgs[len(msgs)-1]
	add("FuzzRatchetDecrypt", "wrong-ad", bytes.Clone(last), []byte("other"))
	add("FuzzRatchetDecrypt", "truncated", cut(last, len(last)-1), []byte("ad"))
	add("FuzzRatchetDecrypt", "header-flipped", flip(last, 30, 1), []byte("ad"))
	add("FuzzRatchetDecrypt", "body-flipped", flip(last, len(last)-1, 0x80), []byte("ad"))
	add("FuzzRatchetDecrypt", "version-2", flip(last, 0, 3), []byte("ad"))
	add("FuzzRatchetDecrypt", "shortest", make([]byte, RatchetOverhead), []byte{})
	rng := mrand.NewChaCha8([32]byte{'s', 't'})
	alice, fresh := newTestPair(tb, rng)
	add("FuzzUnmarshalRatchet", "initiator-new", mustState(tb, alice))
	add("FuzzUnmarshalRatchet", "responder-new", mustState(tb, fresh))
	add("FuzzUnmarshalRatchet", "live", mustState(tb, bob))
	stepped := bob.Clone()
	if _, _, err := stepped.Decrypt(last, []byte("ad")); err != nil {
		tb.Fatal(err)
	}
	add("FuzzUnmarshalRatchet", "awaiting-send", mustState(tb, stepped))
	live := mustState(tb, bob)
	add("FuzzUnmarshalRatchet", "truncated", cut(live, len(live)-1))
	add("FuzzUnmarshalRatchet", "phase-5", set(live, 1, 5))
	add("FuzzUnmarshalRatchet", "version-only", []byte{RatchetStateVersion})
	var zero [keys.DHSize]byte
	for sel := range uint8(4) {
		add("FuzzRatchetHeader", fmt.Sprint("current-key-", sel), sel, bob.dhr[:], uint32(0), bob.nr, []byte("body"))
		add("FuzzRatchetHeader", fmt.Sprint("skipped-", sel), sel, bob.dhr[:], uint32(0), uint32(0), []byte("body"))
	}
	add("FuzzRatchetHeader", "step-fresh-key", uint8(1), alice.dhs.Public().Bytes(), bob.nr, uint32(0), []byte("b"))
	add("FuzzRatchetHeader", "step-too-far", uint8(1), alice.dhs.Public().Bytes(), bob.nr, uint32(MaxSkip+1), []byte("b"))
	add("FuzzRatchetHeader", "step-zero-key", uint8(1), zero[:], bob.nr, uint32(0), []byte{})
	add("FuzzRatchetHeader", "current-n-max", uint8(0), bob.dhr[:], uint32(0), uint32(0xffffffff), []byte{})

	// Padding.
	for _, n := range []int{0, 5, 158, 159, 160, 4095} {
		add("FuzzUnpad", fmt.Sprint("pad-", n), Pad(bytes.Repeat([]byte{'x'}, n)))
	}
	add("FuzzUnpad", "zeros-160", make([]byte, 160))
	add("FuzzUnpad", "marker-then-x", set(make([]byte, 160), 0, PadMarker, 'x'))
	add("FuzzUnpad", "larger-bucket", set(make([]byte, 256), 0, 'x', PadMarker))
	add("FuzzUnpad", "not-a-bucket", set(make([]byte, 161), 0, PadMarker))
	for _, n := range []int{0, 1, 159, 160, 4095, 4096} {
		add("FuzzPad", fmt.Sprint("len-", n), bytes.Repeat([]byte{'x'}, n))
	}
	add("FuzzPad", "marker-and-zero", []byte{PadMarker, 0})
	// Mailbox deposits (version 2).
	dep := SealPairDeposit(WriteKey([32]byte{7}, FromInitiator, 20419), message)
	add("FuzzParseDeposit", "pair", dep)
	add("FuzzParseDeposit", "pair-credential-only", cut(dep, 1+WriteKeySize+DepositSignatureSize))
	add("FuzzParseDeposit", "pair-key-only", cut(dep, 1+WriteKeySize))
	add("FuzzParseDeposit", "intro", append([]byte{DepositIntro, 0, 0, 0, 0, 0, 0, 0, 97}, message...))
	add("FuzzParseDeposit", "intro-nonce-only", []byte{DepositIntro, 0, 0, 0, 0, 0, 0, 0, 1})
	add("FuzzParseDeposit", "kind-3", set(dep, 0, 3))
	add("FuzzParseDeposit", "empty", []byte{})
	return seeds
}
