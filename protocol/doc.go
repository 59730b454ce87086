// Package protocol defines Sotto's wire formats and the cryptography behind
// them: the PQXDH key agreement, the Double Ratchet with header encryption,
// sealed-sender inner messages, padding to size buckets, the outer envelope
// that mailboxes and relays see, and the rotating mailbox tags.
//
// The package is pure: it performs no I/O, starts no goroutines, and takes
// randomness (io.Reader) and time (time.Time) as arguments, so every test is
// deterministic. protocol/SPEC.md is the normative description of every byte
// layout, key derivation label and rejection rule implemented here.
package protocol
