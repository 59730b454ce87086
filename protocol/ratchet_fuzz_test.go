package protocol

import (
	"bytes"
	"errors"
	mrand "math/rand/v2"
	"testing"

	"github.com/sotto-im/sotto/keys"
)

// fuzzSession is a fixed session in a state that exercises every decrypt
// path: a current chain with skipped keys, old chains, and a next header key.
func fuzzSession(tb testing.TB) (bob *Ratchet, msgs [][]byte) {
	rng := mrand.NewChaCha8([32]byte{'f', 'u', 'z', 'z'})
	alice, bob := newTestPair(tb, rng)
	for i := range 3 {
		for j := range 3 {
			m, _, err := alice.Encrypt(rng, []byte{byte(i), byte(j)}, []byte("ad"))
			if err != nil {
				tb.Fatal(err)
			}
			msgs = append(msgs, m)
		}
		if _, _, err := bob.Decrypt(msgs[len(msgs)-1], []byte("ad")); err != nil {
			tb.Fatal(err)
		}
		m, _, err := bob.Encrypt(rng, []byte("reply"), nil)
		if err != nil {
			tb.Fatal(err)
		}
		if _, _, err := alice.Decrypt(m, nil); err != nil {
			tb.Fatal(err)
		}
	}
	// One more chain from Alice that Bob has not seen: a DH step.
	m, _, err := alice.Encrypt(rng, []byte("step"), []byte("ad"))
	if err != nil {
		tb.Fatal(err)
	}
	return bob, append(msgs, m)
}

// FuzzRatchetDecrypt feeds arbitrary bytes to Decrypt on a live session:
// it must not panic, a failure must leave the state unchanged, and a
// success must be one of the genuine messages.
func FuzzRatchetDecrypt(f *testing.F) {
	bob, msgs := fuzzSession(f)
	for _, m := range msgs {
		f.Add(m, []byte("ad"))
		f.Add(m[:len(m)-1], []byte("ad"))
		f.Add(flip(m, len(m)/2, 4), []byte("ad"))
	}
	f.Add([]byte{}, []byte{})
	f.Add([]byte{RatchetVersion}, []byte("ad"))
	before := mustState(f, bob)
	f.Fuzz(func(t *testing.T, msg, ad []byte) {
		r := bob.Clone()
		pt, _, err := r.Decrypt(msg, ad)
		if err != nil {
			if pt != nil {
				t.Fatal("plaintext returned with an error")
			}
			if !bytes.Equal(before, mustState(t, r)) {
				t.Fatalf("failed Decrypt (%v) changed the state", err)
			}
			return
		}
		genuine := false
		for _, m := range msgs {
			genuine = genuine || bytes.Equal(m, msg)
		}
		if !genuine {
			t.Fatalf("Decrypt accepted a message that was never sent: %x", msg)
		}
		// And it is a duplicate now.
		if _, _, err := r.Decrypt(msg, ad); err == nil {
			t.Fatal("the same message decrypted twice")
		}
	})
}

// FuzzUnmarshalRatchet feeds arbitrary bytes to UnmarshalRatchet: no panic,
// and every accepted state re-encodes to the same bytes and can be used.
func FuzzUnmarshalRatchet(f *testing.F) {
	rng := mrand.NewChaCha8([32]byte{'s', 't'})
	alice, bob := newTestPair(f, rng)
	f.Add(mustState(f, bob))
	f.Add(mustState(f, alice))
	live, msgs := fuzzSession(f)
	f.Add(mustState(f, live))
	if _, _, err := live.Decrypt(msgs[len(msgs)-1], []byte("ad")); err != nil {
		f.Fatal(err)
	}
	f.Add(mustState(f, live))
	f.Add([]byte{RatchetStateVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalRatchet(b)
		if err != nil {
			return
		}
		out, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted state does not marshal: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("state does not round-trip")
		}
		// An accepted state is usable: Decrypt runs without panicking and
		// Encrypt works whenever CanSend says it should.
		r.Clone().Decrypt(msgs[0], []byte("ad"))
		if _, _, err := r.Clone().Encrypt(rng, []byte("x"), nil); err != nil && r.CanSend() {
			t.Fatalf("Encrypt on an accepted state: %v", err)
		}
	})
}

// FuzzRatchetHeader reaches the checks behind the header encryption,
// which random bytes never pass: it seals a fuzzed header (ratchet key,
// PN, N) under one of the live session's header keys (sel: 0 the
// receiving chain's, 1 the next one, a DH step, 2 an old chain's, 3 a key
// the session does not hold) and follows it with a forged body. Decrypt
// must never panic or succeed, must leave the state unchanged, and must
// fail with one of the ratchet's errors.
func FuzzRatchetHeader(f *testing.F) {
	bob, _ := fuzzSession(f)
	fresh, err := keys.GenerateDH(mrand.NewChaCha8([32]byte{'h'}))
	if err != nil {
		f.Fatal(err)
	}
	for sel := range uint8(4) {
		f.Add(sel, bob.dhr[:], uint32(0), bob.nr, []byte("body"))
		f.Add(sel, fresh.Public().Bytes(), bob.nr, uint32(0), []byte("body"))
		f.Add(sel, bob.dhr[:], uint32(0), uint32(0), []byte{})
	}
	f.Add(uint8(1), fresh.Public().Bytes(), bob.nr, uint32(MaxSkip+1), []byte("x"))
	f.Add(uint8(1), make([]byte, keys.DHSize), bob.nr, uint32(0), []byte("x"))
	before := mustState(f, bob)
	sentinels := []error{ErrMalformed, ErrAuth, ErrDuplicate, ErrTooFarAhead, ErrKeyDiscarded}
	f.Fuzz(func(t *testing.T, sel uint8, dh []byte, pn, n uint32, body []byte) {
		if len(body) > 4096 {
			body = body[:4096]
		}
		var hk [32]byte
		switch sel % 4 {
		case 0:
			hk = bob.hkr
		case 1:
			hk = bob.nhkr
		case 2:
			hk = bob.old[int(sel/4)%len(bob.old)].hk
		default:
			hk = [32]byte{sel}
		}
		var hdr header
		copy(hdr.dh[:], dh)
		hdr.pn, hdr.n = pn, n
		msg := craftMessage(mrand.NewChaCha8([32]byte{sel}), hk, hdr, body)
		r := bob.Clone()
		pt, _, err := r.Decrypt(msg, []byte("ad"))
		if err == nil || pt != nil {
			t.Fatalf("Decrypt accepted a forged body (err %v)", err)
		}
		known := false
		for _, e := range sentinels {
			known = known || errors.Is(err, e)
		}
		if !known {
			t.Fatalf("error is none of the ratchet's: %v", err)
		}
		if !bytes.Equal(before, mustState(t, r)) {
			t.Fatalf("failed Decrypt (%v) changed the state", err)
		}
	})
}
