package protocol

import (
	"bytes"
	"crypto/rand"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// BenchmarkSessionSetup measures one complete session setup with system
// randomness: parsing and verifying the responder's bundle (the bundle
// signature and what an initiator checks before use), the initiator's
// PQXDH and first Seal, and the responder's Accept (PQXDH and first
// message decrypted). The bundle is full, as a device publishes it:
// keys.MaxOneTimePrekeys one-time prekeys of each kind. It reports msgs/s,
// where one message is a session set up and its first message decrypted:
// the rate of first-contact messages one core can take.
func BenchmarkSessionSetup(b *testing.B) { benchSessionSetup(b, keys.MaxOneTimePrekeys) }

// BenchmarkSessionSetupMinimalBundle is BenchmarkSessionSetup with one
// one-time prekey of each kind in the bundle: the cost of the key
// agreement itself, without verifying prekeys the session does not use.
func BenchmarkSessionSetupMinimalBundle(b *testing.B) { benchSessionSetup(b, 1) }

func benchSessionSetup(b *testing.B, oneTime int) {
	rng := sessRNG(1000)
	alice := newSessParty(b, rng, "alice", 0)
	bob := newSessParty(b, rng, "bob", oneTime)
	wire := bob.bundle.Marshal()
	m := Message{Type: ContentText, Body: []byte("hello"), Sent: sessNow}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		bundle, err := keys.ParseBundle(wire)
		if err != nil {
			b.Fatal(err)
		}
		sa, err := Initiate(rand.Reader, sessNow, alice.me, bundle)
		if err != nil {
			b.Fatal(err)
		}
		env, _, err := sa.Seal(rand.Reader, sessNow, m, sessTTL)
		if err != nil {
			b.Fatal(err)
		}
		// Bob's store is not updated, so every iteration finds its
		// prekeys; Accept itself only reads it.
		if _, _, _, err := Accept(sessNow, bob.me, bob.store, env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkEnvelopeSeal1K measures sealing and opening one 1 KiB message
// on an established session.
func BenchmarkEnvelopeSeal1K(b *testing.B) {
	rng := sessRNG(1001)
	alice := newSessParty(b, rng, "alice", 1)
	bob := newSessParty(b, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, alice.me, bob.bundle)
	if err != nil {
		b.Fatal(err)
	}
	m := Message{Type: ContentText, Body: []byte("hi"), Sent: sessNow}
	sb, _ := mustAccept(b, bob, mustSeal(b, rng, sa, sessNow, m), m, alice.account())
	mustOpen(b, sa, sessNow, mustSeal(b, rng, sb, sessNow, m), m)
	msg := Message{Type: ContentText, Body: bytes.Repeat([]byte("x"), 1024), Sent: sessNow}
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		env, _, err := sa.Seal(rand.Reader, sessNow, msg, sessTTL)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := sb.Open(sessNow, env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
