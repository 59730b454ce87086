package store

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Rewriting the file. bbolt never wipes a freed page: after a commit that
// deletes a record, its bytes stay in the file until the page is reused.
// So that a deleted secret (a consumed one-time prekey, a deleted session,
// a deleted conversation) is gone from the data directory, and so that no
// plaintext survives encryption, the store is copied record by record into
// a fresh file, which then replaces the old one:
//
//  1. every live record is copied into sotto.db.rewrite (bbolt commits,
//     each fsynced), inside a write transaction of the old file so that no
//     write happens meanwhile;
//  2. sotto.db.rewrite is renamed over sotto.db and the directory fsynced;
//  3. transactions move to the new file; the old one is closed, and with
//     its last handle its bytes leave the directory.
//
// A kill -9 before step 2 leaves the old file intact and a stray
// sotto.db.rewrite, which the next Open deletes; after it, the new file.
// Either one opens.
//
// A deletion in a secret bucket (sealbucket.go) marks the store as due for
// a rewrite, in the same transaction (meta key rewrite_due). A due store
// is rewritten when it is closed, when it is next opened (after a crash),
// and by RewriteIfDue, which the node calls on a schedule
// (RewriteInterval). Encrypting a plain store, changing the passphrase,
// and Compact rewrite it too. What this does not reach: copies the
// filesystem or the disk keeps of the old file's blocks (use full-disk
// encryption for those), and replaced (not deleted) session states, which
// stay in freed pages, sealed under the data key, until the next rewrite.

// rewriteSuffix names the file a rewrite builds next to sotto.db.
const rewriteSuffix = ".rewrite"

// RewriteInterval is how often a running node rewrites a store that is
// due (see RewriteIfDue).
const RewriteInterval = time.Hour

// rewriteTxBytes bounds the bytes copied in one transaction of a rewrite.
const rewriteTxBytes = 16 << 20

var keyRewriteDue = []byte("rewrite_due")

// encryption holds the Open options about encryption.
type encryption struct {
	passphrase    []byte
	kdf           KDFParams
	beforeEncrypt func() error
	rand          io.Reader
}

// WithPassphrase opens an encrypted store, or encrypts a plain one (see
// Open). An empty passphrase is no passphrase.
func WithPassphrase(p []byte) Option { return func(o *options) { o.passphrase = p } }

// WithKDF sets the Argon2id cost of a new data key wrapping (default
// DefaultKDF). Tests use a low cost.
func WithKDF(p KDFParams) Option { return func(o *options) { o.kdf = p } }

// WithBeforeEncrypt sets a check that runs before a plain store is
// encrypted, before anything is written: a non-nil error (the keystore
// refuses the passphrase) makes Open fail with it.
func WithBeforeEncrypt(f func() error) Option { return func(o *options) { o.beforeEncrypt = f } }

// withRand sets the randomness of keys and nonces (tests).
func withRand(r io.Reader) Option { return func(o *options) { o.rand = r } }

// openSealed unlocks an encrypted store or encrypts a plain one when a
// passphrase is given, applies schema migrations, and finishes a due
// rewrite. Nothing is written before the passphrase is known to be right.
func (db *DB) openSealed() error {
	if db.o.rand == nil {
		db.o.rand = rand.Reader
	}
	if db.o.kdf == (KDFParams{}) {
		db.o.kdf = DefaultKDF
	}
	db.sums = hasSums(db.o.migrations)
	if err := db.o.kdf.check(); err != nil {
		return err
	}
	os.Remove(db.path() + rewriteSuffix) // a rewrite that a crash interrupted
	var wrapped []byte
	if err := db.bolt().View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			if v := meta.Get(keyDataKey); v != nil {
				wrapped = append([]byte{}, v...)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	pass := db.o.passphrase
	switch {
	case wrapped != nil && len(pass) == 0:
		return ErrPassphraseRequired
	case wrapped != nil:
		dk, err := unwrapDataKey(wrapped, pass)
		if err != nil {
			return err
		}
		if db.s, err = newSealer(dk, db.o.rand); err != nil {
			return err
		}
		db.dk = dk
		if err := db.migrate(db.o.migrations); err != nil {
			return err
		}
	case len(pass) > 0:
		if db.o.beforeEncrypt != nil {
			if err := db.o.beforeEncrypt(); err != nil {
				return err
			}
		}
		if err := db.migrate(db.o.migrations); err != nil {
			return err
		}
		if err := db.encrypt(pass); err != nil {
			return err
		}
	default:
		if err := db.migrate(db.o.migrations); err != nil {
			return err
		}
	}
	var due bool
	if err := db.bolt().View(func(tx *bolt.Tx) error {
		due = tx.Bucket(bucketMeta).Get(keyRewriteDue) != nil
		return nil
	}); err != nil {
		return err
	}
	if due {
		return db.rewrite(nil, nil)
	}
	return nil
}

// encrypt turns a plain store into an encrypted one under a new data key
// wrapped by pass, in a rewrite (so no plaintext stays in the file).
func (db *DB) encrypt(pass []byte) error {
	dk, err := newDataKey(db.o.rand)
	if err != nil {
		return err
	}
	w, err := wrapDataKey(dk, pass, db.o.kdf, db.o.rand)
	if err != nil {
		return err
	}
	s, err := newSealer(dk, db.o.rand)
	if err != nil {
		return err
	}
	dir := map[[32]byte][]byte{}
	conv := func(name, k, v []byte) ([]byte, []byte, error) {
		pol := policyFor(name)
		if string(name) == string(bucketKeyDir) {
			return nil, nil, nil // empty in a plain store; rebuilt below
		}
		if db.sums && summed(name, false) {
			pv, err := stripSum(name, k, v)
			if err != nil {
				return nil, nil, err
			}
			v = pv
		}
		sk, h, part, hashed := hashKey(s, pol.keys, k)
		if hashed {
			dir[h] = bytes.Clone(part)
		}
		switch {
		case pol.seal && !unsummed[string(name)]:
			sv, err := sealValue(s, name, pol, sk, v)
			return sk, sv, err
		case db.sums && summed(name, true):
			return sk, appendSum(name, sk, v), nil
		}
		return sk, v, nil
	}
	finish := func(tx *bolt.Tx) error {
		kd, err := tx.CreateBucketIfNotExists(bucketKeyDir)
		if err != nil {
			return err
		}
		for h, part := range dir {
			sv, err := s.seal(bucketKeyDir, h[:], part)
			if err != nil {
				return err
			}
			if err := kd.Put(h[:], sv); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keyDataKey, w)
	}
	if err := db.rewrite(conv, finish); err != nil {
		return err
	}
	db.s, db.dk = s, dk
	return nil
}

// ChangePassphrase wraps the data key under a new passphrase and rewrites
// the file so that the old wrapping is gone. The records are not
// re-encrypted. The store must be encrypted (ErrNotEncrypted).
func (db *DB) ChangePassphrase(newPass []byte) error {
	if db.s == nil {
		return ErrNotEncrypted
	}
	if len(newPass) == 0 {
		return errors.New("store: the new passphrase is empty")
	}
	w, err := wrapDataKey(db.dk, newPass, db.o.kdf, db.o.rand)
	if err != nil {
		return err
	}
	return db.rewrite(nil, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyDataKey, w) })
}

// Encrypted reports whether the store is encrypted.
func (db *DB) Encrypted() bool { return db.s != nil }

// RewriteIfDue rewrites the file if a secret was deleted since the last
// rewrite.
func (db *DB) RewriteIfDue() error {
	if !db.due.Load() {
		return nil
	}
	return db.rewrite(nil, nil)
}

// Compact rewrites the file now, reclaiming the space of deleted records.
func (db *DB) Compact() error { return db.rewrite(nil, nil) }

// markRewriteDue records in the transaction that the store is due for a
// rewrite.
func (tx *Tx) markRewriteDue() error {
	meta := tx.tx.Bucket(bucketMeta)
	if meta == nil || meta.Get(keyRewriteDue) != nil {
		return nil
	}
	return meta.Put(keyRewriteDue, present)
}

// errKeep rolls back the transaction that holds the old file during a
// rewrite (it changed nothing).
var errKeep = errors.New("store: rewrite done")

// rewrite copies the store into a fresh file, converting each record with
// conv (nil: as it is) and then running finish in the new file, and
// replaces the file with it.
func (db *DB) rewrite(conv func(name, k, v []byte) ([]byte, []byte, error), finish func(*bolt.Tx) error) error {
	db.rewriteMu.Lock()
	defer db.rewriteMu.Unlock()
	old := db.bolt()
	tmp := db.path() + rewriteSuffix
	os.Remove(tmp)
	err := old.Update(func(src *bolt.Tx) error {
		dst, err := db.o.openBolt(tmp)
		if err != nil {
			return fmt.Errorf("store: rewrite: %w", err)
		}
		if err := copyStore(src, dst, conv, finish); err != nil {
			dst.Close()
			os.Remove(tmp)
			return fmt.Errorf("store: rewrite: %w", err)
		}
		if err := os.Rename(tmp, db.path()); err != nil {
			dst.Close()
			os.Remove(tmp)
			return fmt.Errorf("store: rewrite: %w", err)
		}
		syncDir(db.dir)
		db.bp.Store(dst)
		return errKeep
	})
	if !errors.Is(err, errKeep) {
		return err
	}
	db.due.Store(false)
	return old.Close()
}

// copyStore copies every top-level bucket of src into dst (a new file),
// converting records with conv, leaving out the rewrite mark, then runs
// finish; each commit is fsynced.
func copyStore(src *bolt.Tx, dst *bolt.DB, conv func(name, k, v []byte) ([]byte, []byte, error), finish func(*bolt.Tx) error) error {
	tx, err := dst.Begin(true)
	if err != nil {
		return err
	}
	defer func() { tx.Rollback() }()
	size := 0
	err = src.ForEach(func(name []byte, sb *bolt.Bucket) error {
		db, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		if err := db.SetSequence(sb.Sequence()); err != nil {
			return err
		}
		if conv == nil {
			db.FillPercent = 0.9 // keys arrive in order
		}
		return sb.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("%w: nested bucket %q in %q", ErrCorrupt, k, name)
			}
			if string(name) == string(bucketMeta) && string(k) == string(keyRewriteDue) {
				return nil
			}
			if conv != nil {
				if k, v, err = conv(name, k, v); err != nil {
					return err
				}
				if k == nil {
					return nil
				}
			}
			if size += len(k) + len(v); size > rewriteTxBytes {
				if err := tx.Commit(); err != nil {
					return err
				}
				if tx, err = dst.Begin(true); err != nil {
					return err
				}
				size = 0
			}
			b := tx.Bucket(name)
			if conv == nil {
				b.FillPercent = 0.9
			}
			return b.Put(k, v)
		})
	})
	if err != nil {
		return err
	}
	if finish != nil {
		if err := finish(tx); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// syncDir fsyncs a directory so that a rename in it is durable.
func syncDir(dir string) {
	if d, err := os.Open(filepath.Clean(dir)); err == nil {
		d.Sync()
		d.Close()
	}
}
