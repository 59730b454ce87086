package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileName is the database file inside the data directory.
const FileName = "sotto.db"

// Permissions of the data directory and the database file.
const (
	DirMode  fs.FileMode = 0o700
	FileMode fs.FileMode = 0o600
)

// DefaultLockTimeout is how long Open waits for another process to release
// the database before it reports ErrInUse.
const DefaultLockTimeout = 100 * time.Millisecond

// Batch defaults (bbolt's own defaults; see DB.Batch).
const (
	DefaultMaxBatchSize  = 1000
	DefaultMaxBatchDelay = 10 * time.Millisecond
)

// DB is an open Sotto database. It is safe for concurrent use.
type DB struct {
	dir string
	bp  atomic.Pointer[bolt.DB] // replaced when the file is rewritten (rewrite.go)
	s   *sealer                 // nil: a plain store
	dk  []byte                  // the data key of an encrypted store
	o   options
	// sums: records carry checksums (checksum.go); false only for a
	// store kept at an older schema by tests.
	sums bool

	rewriteMu sync.Mutex  // one rewrite at a time
	due       atomic.Bool // a secret was deleted since the last rewrite

	// problems are what the quick check at Open found (quickCheck).
	problems []string
	// damage lists the damaged records that reads confined (confine)
	// since Open, by bucket and key.
	damageMu sync.Mutex
	damage   map[string]string

	closeOnce sync.Once
	closeErr  error
}

// bolt is the current bbolt handle.
func (db *DB) bolt() *bolt.DB { return db.bp.Load() }

// Option configures Open.
type Option func(*options)

type options struct {
	lockTimeout   time.Duration
	maxBatchSize  int
	maxBatchDelay time.Duration
	migrations    []migration
	onDamage      func(error)
	encryption
}

// WithOnDamage has f called, once per record, when a read confines the
// damage of a record it met (a listing that goes on without it).
func WithOnDamage(f func(error)) Option { return func(o *options) { o.onDamage = f } }

// WithLockTimeout sets how long Open waits for the database lock before it
// returns ErrInUse (default DefaultLockTimeout; must be positive).
func WithLockTimeout(d time.Duration) Option { return func(o *options) { o.lockTimeout = d } }

// WithMaxBatchSize sets the largest number of DB.Batch calls combined in one
// transaction (default DefaultMaxBatchSize).
func WithMaxBatchSize(n int) Option { return func(o *options) { o.maxBatchSize = n } }

// WithMaxBatchDelay sets how long DB.Batch waits for more calls before it
// commits (default DefaultMaxBatchDelay).
func WithMaxBatchDelay(d time.Duration) Option { return func(o *options) { o.maxBatchDelay = d } }

// testOptions apply before the caller's options in every Open (the
// store's tests run the whole suite on an encrypted store with them).
var testOptions []Option

// withMigrations replaces the schema migrations (tests only).
func withMigrations(m []migration) Option { return func(o *options) { o.migrations = m } }

// dirError is an error about the data directory that names it.
type dirError struct {
	dir string
	msg string
	err error
}

func (e *dirError) Error() string { return "store: data dir " + e.dir + " " + e.msg }
func (e *dirError) Unwrap() error { return e.err }

// Open opens (creating if needed) the database in dir.
//
// The directory is created with mode 0700. An existing directory that group
// or other users can access is refused with ErrInsecureDir rather than
// silently changed, since --data may point at a directory the user shares
// on purpose; the error says how to fix it. The database file is created
// 0600, and an existing file with looser permissions is tightened to 0600
// (it is ours alone).
//
// If another process or handle holds the database, Open returns an error
// wrapping ErrInUse after the lock timeout instead of waiting. Open applies
// pending schema migrations, and refuses a database written by a newer
// version with ErrSchemaTooNew.
//
// With WithPassphrase, an encrypted store is unlocked (ErrWrongPassphrase
// before anything is written) and a plain one is encrypted, in a rewrite
// that a crash at any point leaves either undone or done; an encrypted
// store opened without one fails with ErrPassphraseRequired (seal.go,
// rewrite.go). A file shorter than its pages is refused with ErrCorrupt
// before bbolt maps it (damage.go). A rewrite that a crash interrupted is
// discarded, and one that was due is done.
func Open(dir string, opts ...Option) (*DB, error) {
	o := options{
		lockTimeout:   DefaultLockTimeout,
		maxBatchSize:  DefaultMaxBatchSize,
		maxBatchDelay: DefaultMaxBatchDelay,
		migrations:    migrations,
	}
	for _, opt := range testOptions {
		opt(&o)
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.lockTimeout <= 0 {
		return nil, fmt.Errorf("store: lock timeout must be positive, got %v", o.lockTimeout)
	}
	if o.maxBatchSize <= 0 || o.maxBatchDelay <= 0 {
		return nil, fmt.Errorf("store: batch size and delay must be positive")
	}
	if dir == "" {
		return nil, errors.New("store: no data dir given; pass --data")
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, FileName)
	if fi, err := os.Stat(path); err == nil {
		if !fi.Mode().IsRegular() {
			return nil, &dirError{dir: dir, msg: "contains " + FileName + " that is not a regular file; remove it or use another --data", err: ErrCorrupt}
		}
		if fi.Mode().Perm()&^FileMode != 0 {
			if err := os.Chmod(path, FileMode); err != nil {
				return nil, fmt.Errorf("store: tighten permissions of %s: %w", path, err)
			}
		}
	}
	if err := checkPages(path); err != nil {
		return nil, err
	}
	var bdb *bolt.DB
	err := safely(func() (err error) { bdb, err = o.openBolt(path); return err })
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, &dirError{dir: dir, msg: "is already in use by a running node; stop it or use another --data", err: ErrInUse}
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := checkFileSize(bdb, path); err != nil {
		bdb.Close()
		return nil, err
	}
	db := &DB{dir: dir, o: o}
	db.bp.Store(bdb)
	if err := db.openSealed(); err != nil {
		db.bolt().Close()
		return nil, err
	}
	db.problems = db.quickCheck()
	return db, nil
}

// OpenProblems lists what the quick check at Open found wrong (bbolt's
// pages, index counts), or nil. The store stays open: reads of intact
// records work, and `sotto check` (Check) names the damaged ones.
func (db *DB) OpenProblems() []string { return db.problems }

// path is the database file.
func (db *DB) path() string { return filepath.Join(db.dir, FileName) }

// openBolt opens a bbolt file with the configured lock timeout and batching.
func (o *options) openBolt(path string) (*bolt.DB, error) {
	bdb, err := bolt.Open(path, FileMode, &bolt.Options{Timeout: o.lockTimeout})
	if err != nil {
		return nil, err
	}
	bdb.MaxBatchSize = o.maxBatchSize
	bdb.MaxBatchDelay = o.maxBatchDelay
	return bdb, nil
}

// prepareDir creates dir 0700 or checks that an existing one is private.
func prepareDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, DirMode); err != nil {
			return fmt.Errorf("store: create data dir: %w", err)
		}
		// MkdirAll applies the umask; make sure the leaf is exactly 0700.
		if err := os.Chmod(dir, DirMode); err != nil {
			return fmt.Errorf("store: set data dir permissions: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("store: data dir: %w", err)
	case !fi.IsDir():
		return &dirError{dir: dir, msg: "is not a directory; use another --data", err: fs.ErrInvalid}
	case fi.Mode().Perm()&0o077 != 0:
		return &dirError{dir: dir, msg: fmt.Sprintf("is accessible by other users (mode %04o); run 'chmod 700 %s' or use another --data", fi.Mode().Perm(), dir), err: ErrInsecureDir}
	}
	return nil
}

// Dir returns the data directory.
func (db *DB) Dir() string { return db.dir }

// Close closes the database. It is idempotent: later calls return the
// first call's result. Transactions started after Close fail with ErrClosed.
// If secrets were deleted since the last rewrite, Close first rewrites the
// file (rewrite.go) so that their bytes are gone from it.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		rerr := db.RewriteIfDue()
		db.rewriteMu.Lock()
		defer db.rewriteMu.Unlock()
		db.closeErr = errors.Join(rerr, db.bolt().Close())
	})
	return db.closeErr
}

// Tx is a store transaction. Its methods are typed accessors; a Tx is valid
// only inside the function passed to Update, View or Batch, and byte slices
// it returns are copies that stay valid afterwards.
type Tx struct {
	tx *bolt.Tx
	s  *sealer // nil: a plain store
	// sums: records carry checksums.
	sums bool

	db         *DB
	err        error               // first damaged record met (fail)
	keys       map[[32]byte][]byte // hashed key part -> original
	recorded   map[[32]byte]bool   // hashed key parts known to be in the key directory
	secretGone bool                // a record of a secret bucket was deleted
}

// run calls fn and reports a damaged record before fn's own result.
func (tx *Tx) run(fn func(*Tx) error) error {
	err := fn(tx)
	if tx.err != nil {
		return tx.err
	}
	if err == nil && tx.secretGone {
		err = tx.markRewriteDue()
	}
	return err
}

// errRetired makes a transaction that began on a handle the store has
// since replaced (rewrite.go) start again on the new one.
var errRetired = errors.New("store: database file was replaced")

// txOn runs fn on the current handle with begin (Update, View or Batch),
// starting again if the file was replaced meanwhile.
func (db *DB) txOn(begin func(*bolt.DB, func(*bolt.Tx) error) error, fn func(*Tx) error) error {
	for {
		b := db.bolt()
		var gone bool
		err := safely(func() error {
			return begin(b, func(btx *bolt.Tx) (err error) {
				defer recoverDamage(&err)
				if db.bolt() != b {
					return errRetired
				}
				tx := &Tx{tx: btx, db: db, s: db.s, sums: db.sums}
				err = tx.run(fn)
				gone = tx.secretGone
				return err
			})
		})
		if errors.Is(err, errRetired) || (errors.Is(err, bolt.ErrDatabaseNotOpen) && db.bolt() != b) {
			continue
		}
		if err == nil && gone {
			db.due.Store(true)
		}
		return mapClosed(err)
	}
}

// Update runs fn in a read-write transaction, committed (and fsynced) if fn
// returns nil and rolled back otherwise.
func (db *DB) Update(fn func(*Tx) error) error {
	return db.txOn((*bolt.DB).Update, fn)
}

// OnCommit runs fn after the transaction committed (not if it rolls
// back): for what must follow only a durable change, such as an event.
func (tx *Tx) OnCommit(fn func()) { tx.tx.OnCommit(fn) }

// View runs fn in a read-only transaction. Write methods fail with
// ErrReadOnly.
func (db *DB) View(fn func(*Tx) error) error {
	return db.txOn((*bolt.DB).View, fn)
}

// Batch runs fn in a read-write transaction shared with other concurrent
// Batch calls, which raises throughput when many goroutines write at once.
// Batch returns only after the shared transaction has committed, so it is as
// durable as Update. If any call in the batch fails, the batch is rolled back
// and the calls are retried one by one, so fn may run more than once and
// must not have side effects outside the transaction. Batch is useless
// without concurrency: a lone caller waits MaxBatchDelay.
func (db *DB) Batch(fn func(*Tx) error) error {
	return db.txOn((*bolt.DB).Batch, fn)
}

func mapClosed(err error) error {
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w (%v)", ErrClosed, err)
	}
	return err
}

// writable returns ErrReadOnly in a read-only transaction.
func (tx *Tx) writable() error {
	if !tx.tx.Writable() {
		return ErrReadOnly
	}
	return nil
}

// bucket returns a top-level bucket, which the migrations created, seen
// through the store's encryption (sealbucket.go).
func (tx *Tx) bucket(name []byte) (*recordBucket, error) {
	b := tx.tx.Bucket(name)
	if b == nil {
		return nil, fmt.Errorf("%w: bucket %q is missing", ErrCorrupt, name)
	}
	return tx.wrap(name, b), nil
}

// wbucket is bucket for write methods.
func (tx *Tx) wbucket(name []byte) (*recordBucket, error) {
	if err := tx.writable(); err != nil {
		return nil, err
	}
	return tx.bucket(name)
}
