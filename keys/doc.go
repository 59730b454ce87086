// Package keys defines Sotto's key types, one per role, and the signed
// records built from them: device certificates, prekeys, prekey bundles,
// safety numbers and the encrypted keystore file.
//
// The package is pure: it performs no I/O beyond the keystore file helpers,
// starts no goroutines, and takes randomness (io.Reader) and time
// (time.Time) as arguments so that every test is deterministic.
//
// Secrets never print: every private key type implements String and
// LogValue to redact itself, and compares in constant time.
package keys
