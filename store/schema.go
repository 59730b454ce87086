package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Top-level buckets. Key layouts are documented next to the code that uses
// each bucket.
var (
	bucketMeta        = []byte("meta")
	bucketIdentity    = []byte("identity")
	bucketContacts    = []byte("contacts")            // account(32) -> Contact
	bucketNames       = []byte("contact_names")       // folded name -> account(32)
	bucketSessions    = []byte("sessions")            // account(32) -> opaque state
	bucketTags        = []byte("tags")                // tag(32) -> account(32) || epoch(8)
	bucketTagEpochs   = []byte("tag_epochs")          // epoch(8) || tag(32) -> present (0x01)
	bucketPrekeys     = []byte("prekeys")             // kind(1) || id(4) -> opaque private prekey
	bucketSeenInit    = []byte("seen_initial")        // id(32) -> expiry(8)
	bucketSeenInitExp = []byte("seen_initial_expiry") // expiry(8) || id(32) -> present (0x01)
	bucketMessages    = []byte("messages")            // id(16) -> Message
	bucketConv        = []byte("conv")                // account(32) || seq(8) -> id(16)
	bucketConvSeq     = []byte("conv_seq")            // account(32) -> last seq(8)
	bucketGlobal      = []byte("global")              // global seq(8) -> id(16); NextSequence is the counter
	bucketSeen        = []byte("seen")                // account(32) || id(16) -> present (0x01)
	bucketOutbox      = []byte("outbox")              // msgID(16) -> OutboxEntry
	bucketOutboxDue   = []byte("outbox_due")          // nextAttempt(8) || msgID(16) -> present (0x01)
	bucketSettings    = []byte("settings")            // name -> value
	bucketCursors     = []byte("sync_cursors")        // mailbox -> cursor
)

var keySchema = []byte("schema")

// migration upgrades the schema by one version inside the opening
// transaction. The schema version of a database is the number of
// migrations applied to it.
type migration struct {
	name  string
	apply func(*bolt.Tx) error
}

// migrations is the ordered list of schema changes. To change the schema,
// append a migration; never edit or reorder existing ones.
var migrations = []migration{
	{name: "create buckets", apply: func(tx *bolt.Tx) error {
		for _, name := range [][]byte{
			bucketIdentity, bucketContacts, bucketNames, bucketSessions,
			bucketTags, bucketTagEpochs, bucketPrekeys, bucketSeenInit, bucketSeenInitExp,
			bucketMessages, bucketConv, bucketConvSeq, bucketGlobal, bucketSeen,
			bucketOutbox, bucketOutboxDue, bucketSettings, bucketCursors,
		} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	}},
	{name: "mailbox", apply: createMailboxBuckets},
	{name: "conversation order", apply: createOrderBuckets},
	{name: "envelope tokens", apply: createTokenBucket},
	{name: "envelope token log", apply: splitTokenLog},
	{name: "mailbox registrations", apply: createMailboxRegBuckets},
	{name: "mailbox version 1 index", apply: indexMailboxV1},
	{name: "key directory", apply: createKeyDir},
	{name: migrationSums, apply: addRecordSums},
	{name: "groups", apply: createGroupBuckets},
	{name: "group opened messages", apply: createGroupOpenedBucket},
}

// SchemaVersion is the schema version this build writes.
func SchemaVersion() int { return len(migrations) }

// migrate brings the schema to len(ms), all in one transaction. A
// database already at len(ms) is only read: a write transaction commits a
// new meta page even when nothing changed, so opening an up-to-date store
// would otherwise rewrite the file.
func (db *DB) migrate(ms []migration) error {
	var current bool
	err := db.bolt().View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil // a new database: initialise it below
		}
		have, err := schemaVersion(meta)
		if err != nil {
			return err
		}
		if have > uint64(len(ms)) {
			return fmt.Errorf("%w (database schema %d, this build knows up to %d)", ErrSchemaTooNew, have, len(ms))
		}
		current = have == uint64(len(ms))
		return nil
	})
	if err != nil || current {
		return err
	}
	return db.bolt().Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		have, err := schemaVersion(meta)
		if err != nil {
			return err
		}
		if have > uint64(len(ms)) {
			return fmt.Errorf("%w (database schema %d, this build knows up to %d)", ErrSchemaTooNew, have, len(ms))
		}
		for i := have; i < uint64(len(ms)); i++ {
			if err := ms[i].apply(tx); err != nil {
				return fmt.Errorf("store: migration %d (%s): %w", i+1, ms[i].name, err)
			}
		}
		return meta.Put(keySchema, be64(uint64(len(ms))))
	})
}

// schemaVersion reads the schema version from the meta bucket; a missing
// version is 0 (no migration applied yet).
func schemaVersion(meta *bolt.Bucket) (uint64, error) {
	v := meta.Get(keySchema)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: schema version has %d bytes", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Schema returns the schema version stored in the database.
func (tx *Tx) Schema() (int, error) {
	meta, err := tx.bucket(bucketMeta)
	if err != nil {
		return 0, err
	}
	v := meta.Get(keySchema)
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: schema version missing", ErrCorrupt)
	}
	return int(binary.BigEndian.Uint64(v)), nil
}
