package node

import "testing"

// benchPassphrase, when set, opens the benchmarks' nodes with a passphrase:
// their stores are encrypted (see the *Encrypted benchmarks).
var benchPassphrase []byte

// encrypted runs bench with every node's store encrypted.
func encrypted(b *testing.B, bench func(*testing.B)) {
	benchPassphrase = []byte("bench passphrase")
	defer func() { benchPassphrase = nil }()
	bench(b)
}

// BenchmarkDurableDirect256Encrypted is BenchmarkDurableDirect256 with
// both stores encrypted.
func BenchmarkDurableDirect256Encrypted(b *testing.B) { encrypted(b, BenchmarkDurableDirect256) }

// BenchmarkSync10kEncrypted is BenchmarkSync10k with every store
// encrypted.
func BenchmarkSync10kEncrypted(b *testing.B) { encrypted(b, BenchmarkSync10k) }
