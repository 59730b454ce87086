package protocol

import (
	mrand "math/rand/v2"
	"testing"
)

// BenchmarkRatchetOneWay256 encrypts and decrypts 256-byte messages in one
// direction, the steady state of a chatty sender.
func BenchmarkRatchetOneWay256(b *testing.B) {
	rng := mrand.NewChaCha8([32]byte{'b', 1})
	alice, bob := newTestPair(b, rng)
	pt := make([]byte, 256)
	ad := []byte("bench-ad")
	b.ReportAllocs()
	b.SetBytes(int64(len(pt)))
	for b.Loop() {
		msg, _, err := alice.Encrypt(rng, pt, ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := bob.Decrypt(msg, ad); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRatchetPingPong256 alternates direction on every message, so
// every message costs a DH ratchet step.
func BenchmarkRatchetPingPong256(b *testing.B) {
	rng := mrand.NewChaCha8([32]byte{'b', 2})
	alice, bob := newTestPair(b, rng)
	pt := make([]byte, 256)
	ad := []byte("bench-ad")
	from, to := alice, bob
	b.ReportAllocs()
	b.SetBytes(int64(len(pt)))
	for b.Loop() {
		msg, _, err := from.Encrypt(rng, pt, ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := to.Decrypt(msg, ad); err != nil {
			b.Fatal(err)
		}
		from, to = to, from
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
