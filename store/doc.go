// Package store is Sotto's embedded persistence: one bbolt file (sotto.db)
// per data directory holding the node's identity record, contacts, ratchet
// sessions and their mailbox-tag index, private prekeys, the replay cache of
// accepted initial messages, messages with per-conversation order, dedup
// marks, the outbox, and small settings.
//
// Everything goes through typed transactions (DB.Update, DB.View, DB.Batch)
// so that all the changes one received message causes — new ratchet state,
// the message, its dedup mark, the receipt to send — commit atomically, and
// nothing is acknowledged before it is on disk. bbolt's default fsync on
// commit is kept: a kill -9 at any instant loses no committed transaction.
//
// The store persists session state and envelopes as opaque bytes; it does not
// interpret protocol data. Records are encoded in a compact, versioned,
// length-bounded binary form, and decoding a damaged record returns an error
// wrapping ErrCorrupt rather than panicking.
//
// Opened with a passphrase (WithPassphrase), the store is encrypted at
// rest: records are sealed under a random data key that Argon2id of the
// passphrase wraps, keys that name a contact are keyed hashes, and the
// file is rewritten into a fresh one after secrets are deleted, because
// bbolt does not wipe freed pages (seal.go, sealbucket.go, rewrite.go).
// Without one it works as before, in the clear, and records carry a
// checksum (checksum.go) so that damage is reported rather than shown.
//
// Secrets other than private prekeys and session state (the account seed,
// the device host key) live in the keystore file, not here. The data
// directory must be private to its owner: Open creates it 0700 and refuses an
// existing directory that other users can access, and the database file is
// kept at 0600.
package store
