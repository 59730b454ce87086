package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sotto-im/sotto/keys"
)

// testSessionKeys are the values PQXDH would hand to both sides.
type testSessionKeys struct {
	sk, hka, nhkb [32]byte
	bobPriv       *keys.DHPrivate
}

func newTestSessionKeys(tb testing.TB, rand io.Reader) testSessionKeys {
	tb.Helper()
	var k testSessionKeys
	for _, b := range [][]byte{k.sk[:], k.hka[:], k.nhkb[:]} {
		if _, err := io.ReadFull(rand, b); err != nil {
			tb.Fatal(err)
		}
	}
	var err error
	if k.bobPriv, err = keys.GenerateDH(rand); err != nil {
		tb.Fatal(err)
	}
	return k
}

// newTestPair returns an initiator and a responder sharing a fresh session.
func newTestPair(tb testing.TB, rand io.Reader) (alice, bob *Ratchet) {
	tb.Helper()
	k := newTestSessionKeys(tb, rand)
	alice, err := NewRatchetAlice(rand, k.sk, k.bobPriv.Public(), k.hka, k.nhkb)
	if err != nil {
		tb.Fatal(err)
	}
	return alice, NewRatchetBob(k.sk, k.bobPriv, k.hka, k.nhkb)
}

// mustState returns r's encoding, the yardstick for "state unchanged".
func mustState(tb testing.TB, r *Ratchet) []byte {
	tb.Helper()
	b, err := r.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// send encrypts pt from r and fails the test on error.
func send(tb testing.TB, rand io.Reader, r *Ratchet, pt, ad []byte) ([]byte, [32]byte) {
	tb.Helper()
	msg, secret, err := r.Encrypt(rand, pt, ad)
	if err != nil {
		tb.Fatalf("Encrypt: %v", err)
	}
	return msg, secret
}

// recv decrypts msg at r and checks the plaintext and secret.
func recv(tb testing.TB, r *Ratchet, msg, ad, wantPT []byte, wantSecret [32]byte) {
	tb.Helper()
	pt, secret, err := r.Decrypt(msg, ad)
	if err != nil {
		tb.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(pt, wantPT) {
		tb.Fatalf("Decrypt plaintext = %q, want %q", pt, wantPT)
	}
	if secret != wantSecret {
		tb.Fatalf("Decrypt secret differs from Encrypt's")
	}
}

func TestRatchetConversation(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{1})
	alice, bob := newTestPair(t, rng)
	ad := []byte("conversation-ad")
	// Runs of messages in alternating directions: every run after the first
	// in a direction follows a DH step.
	runs := []struct {
		fromAlice bool
		count     int
	}{{true, 3}, {false, 1}, {true, 1}, {false, 4}, {false, 2}, {true, 5}, {false, 1}}
	for i, run := range runs {
		from, to := bob, alice
		if run.fromAlice {
			from, to = alice, bob
		}
		for j := range run.count {
			pt := fmt.Appendf(nil, "run %d message %d", i, j)
			msg, secret := send(t, rng, from, pt, ad)
			if len(msg) != RatchetOverhead+len(pt) {
				t.Fatalf("message size %d, want %d", len(msg), RatchetOverhead+len(pt))
			}
			recv(t, to, msg, ad, pt, secret)
		}
	}
}

func TestRatchetBobCannotSendFirst(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{2})
	alice, bob := newTestPair(t, rng)
	if bob.CanSend() {
		t.Fatal("CanSend() = true for a fresh responder")
	}
	before := mustState(t, bob)
	if _, _, err := bob.Encrypt(rng, []byte("hi"), nil); !errors.Is(err, ErrNoSendingChain) {
		t.Fatalf("Encrypt before receiving: err = %v, want ErrNoSendingChain", err)
	}
	if !bytes.Equal(before, mustState(t, bob)) {
		t.Fatal("failed Encrypt changed the state")
	}
	msg, secret := send(t, rng, alice, []byte("hello"), nil)
	recv(t, bob, msg, nil, []byte("hello"), secret)
	if !bob.CanSend() {
		t.Fatal("CanSend() = false after receiving")
	}
	// Bob's first reply carries a fresh ratchet key, not his prekey.
	prekey := bob.dhs.Public()
	reply, secret := send(t, rng, bob, []byte("hi"), nil)
	if bob.dhs.Public() == prekey {
		t.Fatal("responder sent with its prekey as ratchet key")
	}
	recv(t, alice, reply, nil, []byte("hi"), secret)
}

func TestRatchetSecretIsNotAKey(t *testing.T) {
	var mk [32]byte
	for i := range mk {
		mk[i] = byte(i)
	}
	key, nonce, secret := newKDF().messageKeys(&mk)
	if secret == key || secret == mk || bytes.Contains(secret[:], nonce[:]) {
		t.Fatal("message secret equals a key used for encryption")
	}
}

// deliver decrypts msg at r and checks plaintext and secret.
type sent struct {
	msg, pt []byte
	secret  [32]byte
}

func sendN(t *testing.T, rng io.Reader, r *Ratchet, prefix string, n int, ad []byte) []sent {
	t.Helper()
	out := make([]sent, n)
	for i := range out {
		pt := fmt.Appendf(nil, "%s %d", prefix, i)
		msg, secret := send(t, rng, r, pt, ad)
		out[i] = sent{msg, pt, secret}
	}
	return out
}

func TestRatchetOutOfOrder(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{3})
	alice, bob := newTestPair(t, rng)
	ad := []byte("ad")

	// Within one chain: 0..4 arrive as 4, 1, 3, 0, 2.
	a1 := sendN(t, rng, alice, "a1", 5, ad)
	for _, i := range []int{4, 1, 3, 0, 2} {
		recv(t, bob, a1[i].msg, ad, a1[i].pt, a1[i].secret)
	}
	if len(bob.skipped) != 0 {
		t.Fatalf("%d skipped keys left after all messages arrived", len(bob.skipped))
	}

	// Across DH steps: Alice's chain a2 is partly delivered, Bob replies,
	// Alice starts chain a3; the rest of a2 arrives after a3.
	a2 := sendN(t, rng, alice, "a2", 4, ad)
	recv(t, bob, a2[1].msg, ad, a2[1].pt, a2[1].secret)
	b1 := sendN(t, rng, bob, "b1", 3, ad)
	recv(t, alice, b1[2].msg, ad, b1[2].pt, b1[2].secret) // DH step at Alice, skips b1[0..1]
	a3 := sendN(t, rng, alice, "a3", 3, ad)
	recv(t, bob, a3[2].msg, ad, a3[2].pt, a3[2].secret) // DH step at Bob, skips a2[2..3], a3[0..1]
	recv(t, bob, a2[3].msg, ad, a2[3].pt, a2[3].secret)
	recv(t, bob, a3[0].msg, ad, a3[0].pt, a3[0].secret)
	recv(t, bob, a2[0].msg, ad, a2[0].pt, a2[0].secret)
	recv(t, bob, a2[2].msg, ad, a2[2].pt, a2[2].secret)
	recv(t, bob, a3[1].msg, ad, a3[1].pt, a3[1].secret)
	recv(t, alice, b1[0].msg, ad, b1[0].pt, b1[0].secret)
	recv(t, alice, b1[1].msg, ad, b1[1].pt, b1[1].secret)
	if len(bob.skipped)+len(alice.skipped) != 0 {
		t.Fatal("skipped keys left after all messages arrived")
	}
}

// expectUnchanged runs Decrypt and checks the error and that r's state is
// byte for byte what it was.
func expectUnchanged(t *testing.T, r *Ratchet, msg, ad []byte, want error) {
	t.Helper()
	before := mustState(t, r)
	pt, _, err := r.Decrypt(msg, ad)
	if !errors.Is(err, want) {
		t.Fatalf("Decrypt: err = %v, want %v", err, want)
	}
	if pt != nil {
		t.Fatal("Decrypt returned plaintext with an error")
	}
	if !bytes.Equal(before, mustState(t, r)) {
		t.Fatal("failed Decrypt changed the state")
	}
}

func TestRatchetReplay(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{4})
	alice, bob := newTestPair(t, rng)
	a1 := sendN(t, rng, alice, "a1", 4, nil)
	recv(t, bob, a1[0].msg, nil, a1[0].pt, a1[0].secret)
	expectUnchanged(t, bob, a1[0].msg, nil, ErrDuplicate) // in order, current chain
	recv(t, bob, a1[3].msg, nil, a1[3].pt, a1[3].secret)
	expectUnchanged(t, bob, a1[3].msg, nil, ErrDuplicate) // the newest
	recv(t, bob, a1[1].msg, nil, a1[1].pt, a1[1].secret)
	expectUnchanged(t, bob, a1[1].msg, nil, ErrDuplicate) // a skipped key, used
	// After DH steps, replays on the old chain are still duplicates, and
	// its remaining skipped key still works.
	b1 := sendN(t, rng, bob, "b1", 1, nil)
	recv(t, alice, b1[0].msg, nil, b1[0].pt, b1[0].secret)
	a2 := sendN(t, rng, alice, "a2", 1, nil)
	recv(t, bob, a2[0].msg, nil, a2[0].pt, a2[0].secret)
	for _, i := range []int{0, 1, 3} {
		expectUnchanged(t, bob, a1[i].msg, nil, ErrDuplicate)
	}
	expectUnchanged(t, bob, a2[0].msg, nil, ErrDuplicate)
	expectUnchanged(t, alice, b1[0].msg, nil, ErrDuplicate) // the step message itself
	recv(t, bob, a1[2].msg, nil, a1[2].pt, a1[2].secret)
	expectUnchanged(t, bob, a1[2].msg, nil, ErrDuplicate)
	// A replayed header with a different body is still a duplicate.
	forged := bytes.Clone(a1[2].msg)
	forged[len(forged)-1] ^= 1
	expectUnchanged(t, bob, forged, nil, ErrDuplicate)
}

func TestRatchetTooFarAhead(t *testing.T) {
	ad := []byte("ad")
	t.Run("N within chain", func(t *testing.T) {
		rng := mrand.NewChaCha8([32]byte{5})
		alice, bob := newTestPair(t, rng)
		first := sendN(t, rng, alice, "x", 1, ad)
		recv(t, bob, first[0].msg, ad, first[0].pt, first[0].secret)
		msgs := sendN(t, rng, alice, "m", MaxSkip+2, ad)
		// msgs[i] has N = i+1; Bob expects N = 1, so msgs[MaxSkip+1] skips MaxSkip+1.
		expectUnchanged(t, bob, msgs[MaxSkip+1].msg, ad, ErrTooFarAhead)
		// Exactly MaxSkip skipped keys is allowed.
		recv(t, bob, msgs[MaxSkip].msg, ad, msgs[MaxSkip].pt, msgs[MaxSkip].secret)
		if len(bob.skipped) != MaxSkip {
			t.Fatalf("%d skipped keys, want %d", len(bob.skipped), MaxSkip)
		}
		recv(t, bob, msgs[MaxSkip+1].msg, ad, msgs[MaxSkip+1].pt, msgs[MaxSkip+1].secret)
	})
	t.Run("N on a new chain", func(t *testing.T) {
		rng := mrand.NewChaCha8([32]byte{6})
		alice, bob := newTestPair(t, rng)
		msgs := sendN(t, rng, alice, "m", MaxSkip+2, ad)
		expectUnchanged(t, bob, msgs[MaxSkip+1].msg, ad, ErrTooFarAhead)
		recv(t, bob, msgs[MaxSkip].msg, ad, msgs[MaxSkip].pt, msgs[MaxSkip].secret)
	})
	t.Run("PN", func(t *testing.T) {
		rng := mrand.NewChaCha8([32]byte{7})
		alice, bob := newTestPair(t, rng)
		a := sendN(t, rng, alice, "a", MaxSkip+2, ad)
		recv(t, bob, a[0].msg, ad, a[0].pt, a[0].secret)
		b := sendN(t, rng, bob, "b", 1, ad)
		recv(t, alice, b[0].msg, ad, b[0].pt, b[0].secret)
		// Alice's next chain has PN = MaxSkip+2; Bob has seen N = 0 only.
		a2 := sendN(t, rng, alice, "a2", 1, ad)
		expectUnchanged(t, bob, a2[0].msg, ad, ErrTooFarAhead)
		// Once the old chain is close enough, the step goes through.
		recv(t, bob, a[2].msg, ad, a[2].pt, a[2].secret)
		recv(t, bob, a2[0].msg, ad, a2[0].pt, a2[0].secret)
	})
	t.Run("huge PN and N", func(t *testing.T) {
		rng := mrand.NewChaCha8([32]byte{8})
		alice, bob := newTestPair(t, rng)
		exchange(t, rng, alice, bob, 2)
		// Headers a corrupt or malicious peer could seal, built with the
		// receiver's own header keys.
		fresh, _ := keys.GenerateDH(rng)
		for _, tc := range []struct {
			name string
			hk   [32]byte
			hdr  header
		}{
			{"N max on current chain", bob.hkr, header{bob.dhr, 0, math.MaxUint32}},
			{"N just beyond on current chain", bob.hkr, header{bob.dhr, 0, bob.nr + MaxSkip + 1}},
			{"PN max on step", bob.nhkr, header{fresh.Public(), math.MaxUint32, 0}},
			{"PN just beyond on step", bob.nhkr, header{fresh.Public(), bob.nr + MaxSkip + 1, 0}},
			{"N max on step", bob.nhkr, header{fresh.Public(), bob.nr, math.MaxUint32}},
			{"N just beyond on step", bob.nhkr, header{fresh.Public(), bob.nr, MaxSkip + 1}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				expectUnchanged(t, bob, craftMessage(rng, tc.hk, tc.hdr, []byte("body")), ad, ErrTooFarAhead)
			})
		}
	})
}

// exchange sends rounds of one message each way, alice first.
func exchange(t *testing.T, rng io.Reader, alice, bob *Ratchet, rounds int) {
	t.Helper()
	for i := range rounds {
		m := sendN(t, rng, alice, fmt.Sprintf("ping %d", i), 1, nil)
		recv(t, bob, m[0].msg, nil, m[0].pt, m[0].secret)
		m = sendN(t, rng, bob, fmt.Sprintf("pong %d", i), 1, nil)
		recv(t, alice, m[0].msg, nil, m[0].pt, m[0].secret)
	}
}

// craftMessage seals an arbitrary header under hk, followed by a body of
// len(body)+16 random-looking bytes that no key opens.
func craftMessage(rng io.Reader, hk [32]byte, hdr header, body []byte) []byte {
	msg := []byte{RatchetVersion}
	nonce := make([]byte, RatchetHeaderNonceSize)
	io.ReadFull(rng, nonce)
	msg = append(msg, nonce...)
	var plain [RatchetHeaderSize]byte
	copy(plain[:], hdr.dh[:])
	binary.BigEndian.PutUint32(plain[32:], hdr.pn)
	binary.BigEndian.PutUint32(plain[36:], hdr.n)
	aead, err := chacha20poly1305.NewX(hk[:])
	if err != nil {
		panic(err)
	}
	msg = aead.Seal(msg, nonce, plain[:], msg[:1])
	tail := make([]byte, len(body)+RatchetTagSize)
	io.ReadFull(rng, tail)
	return append(msg, tail...)
}

func TestRatchetInconsistentHeaders(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{9})
	alice, bob := newTestPair(t, rng)
	exchange(t, rng, alice, bob, 3)
	a := sendN(t, rng, alice, "a", 3, nil)
	recv(t, bob, a[2].msg, nil, a[2].pt, a[2].secret)
	sendN(t, rng, bob, "b", 1, nil) // completes Bob's step: he accepts a next one
	fresh, _ := keys.GenerateDH(rng)
	lowOrder := keys.DHPublic{1}
	nonCanonical := keys.DHPublic{}
	for i := range nonCanonical {
		nonCanonical[i] = 0xff
	}
	oldHK := bob.old[len(bob.old)-1]
	for _, tc := range []struct {
		name string
		hk   [32]byte
		hdr  header
		want error
	}{
		{"current chain, other ratchet key", bob.hkr, header{fresh.Public(), 0, bob.nr}, ErrMalformed},
		{"step, PN below received", bob.nhkr, header{fresh.Public(), bob.nr - 1, 0}, ErrMalformed},
		{"step, low-order key", bob.nhkr, header{lowOrder, bob.nr, 0}, ErrMalformed},
		{"step, non-canonical key", bob.nhkr, header{nonCanonical, bob.nr, 0}, ErrMalformed},
		{"step, current ratchet key again", bob.nhkr, header{bob.dhr, bob.nr, 0}, ErrMalformed},
		{"old chain, N beyond its end", oldHK.hk, header{fresh.Public(), 0, oldHK.end}, ErrMalformed},
		{"old chain, N already received", oldHK.hk, header{fresh.Public(), 0, 0}, ErrDuplicate},
		{"step, valid header, forged body", bob.nhkr, header{fresh.Public(), bob.nr, 0}, ErrAuth},
		{"current chain, forged body", bob.hkr, header{bob.dhr, 0, bob.nr}, ErrAuth},
		{"current chain, skipped key, forged body", bob.hkr, header{bob.dhr, 0, 0}, ErrAuth},
		{"unknown header key", [32]byte{1}, header{fresh.Public(), 0, 0}, ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectUnchanged(t, bob, craftMessage(rng, tc.hk, tc.hdr, []byte("body")), nil, tc.want)
		})
	}
}

func TestRatchetRejectsTampering(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{10})
	alice, bob := newTestPair(t, rng)
	ad := []byte("the ad")
	exchange(t, rng, alice, bob, 1)
	// One message on the current chain, one that is a DH step, one skipped.
	b := sendN(t, rng, bob, "b", 1, ad)
	recv(t, alice, b[0].msg, ad, b[0].pt, b[0].secret)
	a := sendN(t, rng, alice, "a", 3, ad)
	recv(t, bob, a[0].msg, ad, a[0].pt, a[0].secret) // step
	recv(t, bob, a[2].msg, ad, a[2].pt, a[2].secret) // skips a[1]
	b2 := sendN(t, rng, bob, "b2", 1, ad)            // a step at Alice

	victims := []struct {
		name string
		r    *Ratchet
		msg  []byte
	}{{"skipped", bob, a[1].msg}, {"step", alice, b2[0].msg}}
	for _, v := range victims {
		m := v.msg
		cases := []struct {
			name string
			msg  []byte
			ad   []byte
			want error
		}{
			{"empty", nil, ad, ErrMalformed},
			{"version only", m[:1], ad, ErrMalformed},
			{"truncated header", m[:1+RatchetEncHeaderSize-1], ad, ErrMalformed},
			{"no body tag", m[:1+RatchetEncHeaderSize], ad, ErrMalformed},
			{"one byte short of minimum", m[:RatchetOverhead-1], ad, ErrMalformed},
			{"truncated body", m[:len(m)-1], ad, ErrAuth},
			{"extended body", append(bytes.Clone(m), 0), ad, ErrAuth},
			{"oversized", make([]byte, MaxRatchetMessage+1), ad, ErrMalformed},
			{"version 0", flip(m, 0, 0x01), ad, ErrMalformed},
			{"version 2", flip(m, 0, 0x03), ad, ErrMalformed},
			{"header nonce", flip(m, 1, 0x01), ad, ErrAuth},
			{"header ciphertext", flip(m, 1+RatchetHeaderNonceSize+5, 0x80), ad, ErrAuth},
			{"header tag", flip(m, RatchetEncHeaderSize, 0x01), ad, ErrAuth},
			{"body first byte", flip(m, 1+RatchetEncHeaderSize, 0x01), ad, ErrAuth},
			{"body tag", flip(m, len(m)-1, 0x40), ad, ErrAuth},
			{"different AD", m, []byte("the AD"), ErrAuth},
			{"empty AD", m, nil, ErrAuth},
			{"AD with header moved into it", m[RatchetEncHeaderSize:], append(bytes.Clone(ad), m[:RatchetEncHeaderSize]...), ErrMalformed},
		}
		for _, tc := range cases {
			t.Run(v.name+"/"+tc.name, func(t *testing.T) {
				expectUnchanged(t, v.r, tc.msg, tc.ad, tc.want)
			})
		}
		// The untouched message still decrypts afterwards.
		if _, _, err := v.r.Decrypt(v.msg, ad); err != nil {
			t.Fatalf("%s: genuine message after tampered copies: %v", v.name, err)
		}
	}
}

func flip(b []byte, i int, mask byte) []byte {
	c := bytes.Clone(b)
	c[i] ^= mask
	return c
}

func TestRatchetForeignSession(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{11})
	alice, bob := newTestPair(t, rng)
	mallory, _ := newTestPair(t, rng)
	exchange(t, rng, alice, bob, 2)
	for range 5 {
		m := sendN(t, rng, mallory, "forged", 1, nil)
		expectUnchanged(t, bob, m[0].msg, nil, ErrAuth)
		expectUnchanged(t, alice, m[0].msg, nil, ErrAuth)
	}
	// Random bytes of every plausible size.
	for n := RatchetOverhead; n < RatchetOverhead+300; n += 7 {
		junk := make([]byte, n)
		rng.Read(junk)
		junk[0] = RatchetVersion
		expectUnchanged(t, bob, junk, nil, ErrAuth)
	}
}

func TestRatchetEvictionOrder(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{12})
	alice, bob := newTestPair(t, rng)
	const total = 3 * (MaxSkip + 1)
	msgs := sendN(t, rng, alice, "m", total, nil)
	// Delivering every (MaxSkip+1)th message skips MaxSkip keys each time:
	// 3*MaxSkip = 3000 keys, of which the oldest 1000 go.
	for i := MaxSkip; i < total; i += MaxSkip + 1 {
		recv(t, bob, msgs[i].msg, nil, msgs[i].pt, msgs[i].secret)
	}
	if len(bob.skipped) != MaxSkippedKeys {
		t.Fatalf("%d skipped keys stored, want %d", len(bob.skipped), MaxSkippedKeys)
	}
	evicted := 3*MaxSkip - MaxSkippedKeys // messages 0 .. evicted-1 lost their keys
	if len(bob.discarded) != min(evicted, MaxDiscardedRecord) {
		t.Fatalf("%d discarded positions recorded, want %d", len(bob.discarded), evicted)
	}
	for _, i := range []int{0, 1, evicted / 2, evicted - 1} {
		expectUnchanged(t, bob, msgs[i].msg, nil, ErrKeyDiscarded)
	}
	// The oldest surviving key (message evicted was delivered), then the newest.
	recv(t, bob, msgs[evicted+1].msg, nil, msgs[evicted+1].pt, msgs[evicted+1].secret)
	recv(t, bob, msgs[total-2].msg, nil, msgs[total-2].pt, msgs[total-2].secret)
	// A delivered message is a duplicate, not discarded.
	expectUnchanged(t, bob, msgs[MaxSkip].msg, nil, ErrDuplicate)
	// Order: the surviving keys are oldest first (insertion order).
	for i := 1; i < len(bob.skipped); i++ {
		if bob.skipped[i].n <= bob.skipped[i-1].n {
			t.Fatalf("skipped keys out of order at %d", i)
		}
	}
}

func TestRatchetOldChains(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{13})
	alice, bob := newTestPair(t, rng)
	// Bob receives message 1 of each of Alice's chains; message 0 of each
	// stays behind as a skipped key.
	var late []sent
	for range MaxOldChains + 3 {
		a := sendN(t, rng, alice, "a", 2, nil)
		recv(t, bob, a[1].msg, nil, a[1].pt, a[1].secret)
		late = append(late, a[0])
		b := sendN(t, rng, bob, "b", 1, nil)
		recv(t, alice, b[0].msg, nil, b[0].pt, b[0].secret)
	}
	if len(bob.old) != MaxOldChains {
		t.Fatalf("%d old chains kept, want %d", len(bob.old), MaxOldChains)
	}
	// Chains older than MaxOldChains are gone: their header keys no longer open.
	dropped := len(late) - 1 - MaxOldChains
	for i := range dropped {
		expectUnchanged(t, bob, late[i].msg, nil, ErrAuth)
	}
	for i := dropped; i < len(late); i++ {
		recv(t, bob, late[i].msg, nil, late[i].pt, late[i].secret)
	}
}

func TestRatchetEncryptFailureLeavesState(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{14})
	alice, bob := newTestPair(t, rng)
	exchange(t, rng, alice, bob, 1)
	m := sendN(t, rng, alice, "a", 1, nil)
	recv(t, bob, m[0].msg, nil, m[0].pt, m[0].secret)
	for _, r := range []*Ratchet{alice, bob} { // bob must take a DH step on send
		before := mustState(t, r)
		if _, _, err := r.Encrypt(bytes.NewReader(make([]byte, 5)), []byte("x"), nil); err == nil {
			t.Fatal("Encrypt with a short rand succeeded")
		}
		if _, _, err := r.Encrypt(rng, make([]byte, MaxRatchetPlaintext+1), nil); !errors.Is(err, ErrPlaintextTooLarge) {
			t.Fatalf("oversized plaintext: %v", err)
		}
		if !bytes.Equal(before, mustState(t, r)) {
			t.Fatal("failed Encrypt changed the state")
		}
	}
	big := make([]byte, MaxRatchetPlaintext)
	msg, secret := send(t, rng, bob, big, nil)
	recv(t, alice, msg, nil, big, secret)
	if len(msg) != MaxRatchetMessage {
		t.Fatalf("largest message is %d bytes, want %d", len(msg), MaxRatchetMessage)
	}
}

func TestRatchetCloneIndependent(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{15})
	alice, bob := newTestPair(t, rng)
	a := sendN(t, rng, alice, "a", 3, nil)
	recv(t, bob, a[2].msg, nil, a[2].pt, a[2].secret)
	c := bob.Clone()
	before := mustState(t, c)
	recv(t, bob, a[0].msg, nil, a[0].pt, a[0].secret)
	exchange(t, rng, alice, bob, 2)
	if !bytes.Equal(before, mustState(t, c)) {
		t.Fatal("clone changed when the original moved on")
	}
	// The clone is a full session of its own.
	recv(t, c, a[0].msg, nil, a[0].pt, a[0].secret)
	recv(t, c, a[1].msg, nil, a[1].pt, a[1].secret)
}

func TestRatchetStateRoundTrip(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{16})
	alice, bob := newTestPair(t, rng)
	check := func(name string, r *Ratchet) {
		t.Helper()
		b := mustState(t, r)
		if len(b) > MaxRatchetStateSize {
			t.Fatalf("%s: state is %d bytes, above MaxRatchetStateSize", name, len(b))
		}
		r2, err := UnmarshalRatchet(b)
		if err != nil {
			t.Fatalf("%s: UnmarshalRatchet: %v", name, err)
		}
		if !bytes.Equal(b, mustState(t, r2)) {
			t.Fatalf("%s: state does not round-trip", name)
		}
	}
	check("responder, new", bob)
	check("initiator, new", alice)
	a := sendN(t, rng, alice, "a", 4, nil)
	recv(t, bob, a[3].msg, nil, a[3].pt, a[3].secret)
	check("responder, awaiting send", bob)
	check("initiator, sent", alice)
	exchange(t, rng, alice, bob, MaxOldChains+2)
	a = sendN(t, rng, alice, "a", 40, nil)
	recv(t, bob, a[39].msg, nil, a[39].pt, a[39].secret)
	check("running with old chains and skipped keys", bob)

	// A restored session carries on where the original left off, with the
	// skipped keys and replay records intact.
	restored, err := UnmarshalRatchet(mustState(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	recv(t, restored, a[5].msg, nil, a[5].pt, a[5].secret)
	expectUnchanged(t, restored, a[39].msg, nil, ErrDuplicate)
	msg, secret := send(t, rng, restored, []byte("after restore"), nil)
	recv(t, alice, msg, nil, []byte("after restore"), secret)

	// Eviction leaves a discarded record that must survive too.
	bob = restored
	msgs := sendN(t, rng, alice, "m", 3*(MaxSkip+1), nil)
	for i := MaxSkip; i < len(msgs); i += MaxSkip + 1 {
		recv(t, bob, msgs[i].msg, nil, msgs[i].pt, msgs[i].secret)
	}
	check("full skipped-key store", bob)
}

func TestUnmarshalRatchetRejects(t *testing.T) {
	rng := mrand.NewChaCha8([32]byte{17})
	alice, bob := newTestPair(t, rng)
	a := sendN(t, rng, alice, "a", 3, nil)
	recv(t, bob, a[2].msg, nil, a[2].pt, a[2].secret)
	good := mustState(t, bob)
	// Offsets from the layout in ratchet_state.go.
	const (
		offPhase = 1
		offDHr   = 66
		offCKs   = 98
		offNHKs  = 162
		offNs    = 194
		offNr    = 298
		offOld   = 302
		offSkip  = 303
		offSkip0 = 305 // first skipped key: header key, N, message key
	)
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"truncated fixed part", good[:200]},
		{"truncated list", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"version 0", mutate(func(b []byte) []byte { b[0] = 0; return b })},
		{"version 2", mutate(func(b []byte) []byte { b[0] = 2; return b })},
		{"unknown phase", mutate(func(b []byte) []byte { b[offPhase] = 4; return b })},
		{"phase running without sending chain", mutate(func(b []byte) []byte { b[offPhase] = phaseRunning; return b })},
		{"phase responder-new with a peer key", mutate(func(b []byte) []byte { b[offPhase] = phaseResponderNew; return b })},
		{"sending chain key while awaiting send", mutate(func(b []byte) []byte { b[offCKs] = 1; return b })},
		{"next sending header key while awaiting send", mutate(func(b []byte) []byte { b[offNHKs] = 1; return b })},
		{"Ns while awaiting send", mutate(func(b []byte) []byte { b[offNs+3] = 1; return b })},
		{"low-order peer key", mutate(func(b []byte) []byte { clear(b[offDHr : offDHr+32]); b[offDHr] = 1; return b })},
		{"old chains before a second step", mutate(func(b []byte) []byte { b[offOld] = 1; return b })},
		{"skipped count above the limit", mutate(func(b []byte) []byte { b[offSkip] = 0xff; return b })},
		{"skipped count one more", mutate(func(b []byte) []byte { b[offSkip+1]++; return b })},
		{"skipped key at received position", mutate(func(b []byte) []byte { b[offSkip0+32+3] = byte(bob.nr); return b })},
		{"skipped key on unknown chain", mutate(func(b []byte) []byte { b[offSkip0] ^= 1; return b })},
		{"Nr lowered below a skipped key", mutate(func(b []byte) []byte { b[offNr+3] = 1; return b })},
		{"duplicate skipped key", mutate(func(b []byte) []byte {
			// Make the second skipped key a copy of the first.
			copy(b[offSkip0+skippedKeySize:], b[offSkip0:offSkip0+skippedKeySize])
			return b
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := UnmarshalRatchet(tc.b); !errors.Is(err, ErrRatchetState) {
				t.Fatalf("err = %v, want ErrRatchetState", err)
			}
		})
	}
	if _, err := UnmarshalRatchet(good); err != nil {
		t.Fatalf("unmodified state: %v", err)
	}
}
