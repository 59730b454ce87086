package store

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Damage. A sealed record is authenticated by its AEAD (sealbucket.go); a
// damaged one fails its transaction with ErrCorrupt. Damage to the file
// itself is caught where bbolt would otherwise panic or fault:
//
//   - a file shorter than its own meta page says (a truncated copy or an
//     interrupted transfer) is refused at Open, before any page beyond
//     its end is touched through the memory map (checkFileSize);
//   - a panic inside a transaction (bbolt asserts on a damaged page
//     header) becomes an error wrapping ErrCorrupt that names bbolt's
//     complaint (recoverDamage), so no command crashes and the API answers
//     with the error instead of cutting the connection;
//   - Check (and `sotto check`) walks every page and record and lists what
//     is wrong.

// checkFileSize refuses a database file shorter than the pages its meta
// page counts.
func checkFileSize(bdb *bolt.DB, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	var want int64
	err = bdb.View(func(tx *bolt.Tx) error {
		want = tx.Size()
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if fi.Size() < want {
		return fmt.Errorf("%w: the database file %s is truncated (%d of %d bytes); restore it from a backup",
			ErrCorrupt, path, fi.Size(), want)
	}
	return nil
}

// bbolt's file layout, as far as checkPages reads it: two meta pages at
// the start, each a 16-byte page header then the meta: magic, version,
// page size (uint32 each), flags, root bucket (16 bytes), freelist page
// (uint64), high-water page ID (uint64), transaction ID (uint64) and an
// FNV-64a checksum of the meta before it.
const (
	boltPageHeader = 16
	boltMagic      = 0xED0CDAED
	boltMetaSum    = 56 // bytes of meta the checksum covers
)

// checkPages reads the meta pages of the bbolt file at path before bbolt
// maps it, and refuses a file shorter than the pages the newest valid
// meta counts, which bbolt would read past the end of the file (a fault,
// not an error). A new or empty file passes.
func checkPages(path string) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	var best struct {
		ok             bool
		txid, pgid, fl uint64
		pageSize       uint32
	}
	hdr := make([]byte, boltPageHeader+64)
	for _, off := range []int64{0, -1} {
		if off < 0 {
			if !best.ok {
				off = 4096
			} else {
				off = int64(best.pageSize)
			}
		}
		if _, err := f.ReadAt(hdr, off); err != nil && err != io.EOF {
			continue
		}
		m := hdr[boltPageHeader:]
		h := fnv.New64a()
		h.Write(m[:boltMetaSum])
		if binary.LittleEndian.Uint32(m[0:]) != boltMagic || binary.LittleEndian.Uint64(m[56:]) != h.Sum64() {
			continue
		}
		txid := binary.LittleEndian.Uint64(m[48:])
		if !best.ok || txid > best.txid {
			best.ok, best.txid = true, txid
			best.pageSize = binary.LittleEndian.Uint32(m[8:])
			best.fl, best.pgid = binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[40:])
		}
	}
	if !best.ok {
		return nil // bbolt reports an invalid file itself
	}
	if want := int64(best.pgid) * int64(best.pageSize); best.pageSize == 0 || fi.Size() < want || best.fl >= best.pgid {
		return fmt.Errorf("%w: the database file %s is truncated or damaged (%d bytes, its pages need %d); restore it from a backup",
			ErrCorrupt, path, fi.Size(), want)
	}
	return nil
}

// recoverDamage turns a panic of bbolt inside a transaction into an error
// wrapping ErrCorrupt in *err.
func recoverDamage(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: the database file is damaged (%v); run `sotto check`, or restore it from a backup", ErrCorrupt, r)
	}
}

// safely runs f, turning a panic of bbolt on a damaged file, or a memory
// fault reading its map, into an error wrapping ErrCorrupt.
func safely(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer recoverDamage(&err)
	return f()
}

// checkRecords opens every sealed record of an encrypted store, checks
// the checksum of every summed record, and looks up every hashed key in
// the key directory, adding one problem per record that fails, named by
// bucket and stored key. It reports whether the check may go on (the
// problem list is not full).
func (tx *Tx) checkRecords(add func(error) bool) bool {
	dir := tx.tx.Bucket(bucketKeyDir)
	more := true
	_ = tx.tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		pol := policyFor(name)
		if tx.s == nil {
			pol = policy{}
		} else if string(name) == string(bucketKeyDir) {
			pol = policy{seal: true}
		}
		sum := tx.sums && summed(name, tx.s != nil)
		return b.ForEach(func(k, v []byte) error {
			var err error
			switch {
			case v == nil:
			case pol.seal:
				_, err = openValue(tx.s, name, pol, k, v)
			case sum:
				_, err = stripSum(name, k, v)
			}
			if err != nil {
				more = add(fmt.Errorf("%s record %x: %w", name, k[:min(len(k), 12)], err))
			}
			if from, to, _, ok := pol.keys.hashedPart(k); ok && more && to-from == 32 && pol.keys != keysSettingName {
				if dir == nil || dir.Get(k[from:to]) == nil {
					more = add(fmt.Errorf("%w: %s record %x: its key is not in the key directory", ErrCorrupt, name, k[:min(len(k), 12)]))
				}
			}
			if !more {
				return errCheckFull
			}
			return nil
		})
	})
	return more
}

var errCheckFull = fmt.Errorf("store: check: too many problems")

// confine records that a read met the damaged record (bucket name, key
// k) and went on without it: the damage is listed by Stats (Problems)
// and reported once through WithOnDamage, and the transaction is not
// failed. err wraps ErrCorrupt.
func (tx *Tx) confine(name, k []byte, err error) {
	err = fmt.Errorf("%s record %x: %w", name, k[:min(len(k), 12)], err)
	db := tx.db
	db.damageMu.Lock()
	if db.damage == nil {
		db.damage = map[string]string{}
	}
	key := string(name) + "/" + string(k)
	_, seen := db.damage[key]
	report := !seen && len(db.damage) < maxConfined
	if report {
		db.damage[key] = err.Error()
	}
	db.damageMu.Unlock()
	if report && db.o.onDamage != nil {
		db.o.onDamage(err)
	}
}

// maxConfined bounds the damaged records a DB remembers (and reports)
// while open.
const maxConfined = 4096

// damaged lists the damage confine recorded, in order: up to
// maxCheckErrors records, then how many more.
func (db *DB) damaged() []string {
	db.damageMu.Lock()
	defer db.damageMu.Unlock()
	out := make([]string, 0, len(db.damage))
	for _, d := range db.damage {
		out = append(out, d)
	}
	slices.Sort(out)
	if len(out) > maxCheckErrors {
		more := len(out) - maxCheckErrors
		out = append(out[:maxCheckErrors], fmt.Sprintf("and %d more damaged records (`sotto check` lists them)", more))
	}
	return out
}
