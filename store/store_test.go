package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openTest opens a fresh database in a temporary directory.
func openTest(t testing.TB, opts ...Option) (*DB, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db, dir
}

// openAtSchema opens a new database that stops at the given schema
// version, for an upgrade test (see upgrade).
func openAtSchema(t *testing.T, version int) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "data"), withMigrations(migrations[:version]))
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// upgrade closes old and opens its data dir again under the current
// schema; the database is closed when the test ends.
func upgrade(t *testing.T, old *DB) *DB {
	t.Helper()
	old.Close()
	db, err := Open(old.Dir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func acct(n byte) [32]byte {
	var a [32]byte
	a[0] = n
	a[31] = 0xA5
	return a
}

func msgID(n uint64) [16]byte {
	var id [16]byte
	for i := range 8 {
		id[8+i] = byte(n >> (56 - 8*i))
	}
	id[0] = 0x11
	return id
}

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 123456789, time.UTC)

func mustUpdate(t testing.TB, db *DB, fn func(*Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func mustView(t testing.TB, db *DB, fn func(*Tx) error) {
	t.Helper()
	if err := db.View(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenCreatesPrivateDirAndFile(t *testing.T) {
	db, dir := openTest(t)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != DirMode {
		t.Errorf("dir mode %04o, want %04o", got, DirMode)
	}
	fi, err = os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != FileMode {
		t.Errorf("file mode %04o, want %04o", got, FileMode)
	}
	if db.Dir() != dir {
		t.Errorf("Dir() = %q", db.Dir())
	}
	mustView(t, db, func(tx *Tx) error {
		v, err := tx.Schema()
		if err != nil {
			return err
		}
		if v != SchemaVersion() {
			t.Errorf("schema %d, want %d", v, SchemaVersion())
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Errorf("Check on a fresh db: %v", err)
	}
}

func TestOpenRefusesSharedDir(t *testing.T) {
	for _, mode := range []os.FileMode{0o755, 0o750, 0o707, 0o777} {
		dir := t.TempDir()
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir)
		if !errors.Is(err, ErrInsecureDir) {
			t.Fatalf("mode %04o: err = %v, want ErrInsecureDir", mode, err)
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "chmod 700") {
			t.Errorf("error does not name the dir and the fix: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, FileName)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("mode %04o: database created in a refused dir", mode)
		}
	}
}

func TestOpenRefusesNonDirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f); err == nil {
		t.Fatal("Open on a regular file succeeded")
	}
	if _, err := Open(""); err == nil {
		t.Fatal("Open with no dir succeeded")
	}
}

func TestOpenTightensFileMode(t *testing.T) {
	db, dir := openTest(t)
	db.Close()
	path := filepath.Join(dir, FileName)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	db2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != FileMode {
		t.Errorf("file mode %04o after reopen, want %04o", fi.Mode().Perm(), FileMode)
	}
}

func TestOpenOptionsValidated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	for _, opt := range []Option{WithLockTimeout(0), WithMaxBatchSize(0), WithMaxBatchDelay(-1)} {
		if db, err := Open(dir, opt); err == nil {
			db.Close()
			t.Error("invalid option accepted")
		}
	}
}

func TestErrInUseSameProcess(t *testing.T) {
	db, dir := openTest(t)
	start := time.Now()
	db2, err := Open(dir, WithLockTimeout(50*time.Millisecond))
	if err == nil {
		db2.Close()
		t.Fatal("second handle opened the same data dir")
	}
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("err = %v, want ErrInUse", err)
	}
	if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "--data") {
		t.Errorf("error should name the dir and the fix: %v", err)
	}
	// Bounded, not a hang (generous bound: the machine is shared).
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("ErrInUse took %v", d)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db3, err := Open(dir)
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	db3.Close()
}

func TestCloseIdempotent(t *testing.T) {
	db, _ := openTest(t)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	err := db.Update(func(tx *Tx) error { return nil })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Update after Close: %v, want ErrClosed", err)
	}
	err = db.View(func(tx *Tx) error { return nil })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("View after Close: %v, want ErrClosed", err)
	}
}

func TestReadOnlyTx(t *testing.T) {
	db, _ := openTest(t)
	err := db.View(func(tx *Tx) error {
		return tx.PutSession(acct(1), []byte("x"))
	})
	if !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write in View: %v, want ErrReadOnly", err)
	}
}

func TestUpdateRollsBackOnError(t *testing.T) {
	db, _ := openTest(t)
	boom := errors.New("boom")
	err := db.Update(func(tx *Tx) error {
		if err := tx.PutSession(acct(1), []byte("state")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetSession(acct(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("rolled-back write visible: %v", err)
		}
		return nil
	})
}

func TestSchemaMigrations(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	var ran []string
	mk := func(name string) migration {
		return migration{name: name, apply: func(tx *bolt.Tx) error {
			ran = append(ran, name)
			_, err := tx.CreateBucketIfNotExists([]byte("m-" + name))
			return err
		}}
	}
	v1 := append(append([]migration{}, migrations...), mk("a"))
	db, err := Open(dir, withMigrations(v1))
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	v2 := append(append([]migration{}, v1...), mk("b"), mk("c"))
	db, err = Open(dir, withMigrations(v2))
	if err != nil {
		t.Fatal(err)
	}
	mustView(t, db, func(tx *Tx) error {
		if v, _ := tx.Schema(); v != len(v2) {
			t.Errorf("schema %d, want %d", v, len(v2))
		}
		return nil
	})
	db.Close()
	if strings.Join(ran, ",") != "a,b,c" {
		t.Errorf("migrations ran %v, want a,b,c each once in order", ran)
	}
	// Reopening with the same list runs nothing.
	db, err = Open(dir, withMigrations(v2))
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(ran) != 3 {
		t.Errorf("migrations re-ran: %v", ran)
	}
	// A build that knows fewer migrations refuses the newer database.
	_, err = Open(dir)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("older build opened newer db: %v", err)
	}
	if !strings.Contains(err.Error(), "upgrade") {
		t.Errorf("error should say what to do: %v", err)
	}
}

func TestFailedMigrationLeavesSchema(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	bad := append(append([]migration{}, migrations...), migration{name: "bad", apply: func(*bolt.Tx) error {
		return errors.New("nope")
	}})
	if _, err := Open(dir, withMigrations(bad)); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("failing migration: %v", err)
	}
	db, err = Open(dir)
	if err != nil {
		t.Fatalf("db unusable after failed migration: %v", err)
	}
	defer db.Close()
	mustView(t, db, func(tx *Tx) error {
		if v, _ := tx.Schema(); v != SchemaVersion() {
			t.Errorf("schema %d after failed migration", v)
		}
		return nil
	})
}

func TestIdentity(t *testing.T) {
	db, _ := openTest(t)
	mustView(t, db, func(tx *Tx) error {
		_, err := tx.GetIdentity()
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "sotto init") {
			t.Errorf("GetIdentity on empty db: %v", err)
		}
		return nil
	})
	want := Identity{Name: "me", Keystore: "keystore.json", Account: acct(9), PeerID: "12D3KooWabc", Created: t0}
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutIdentity(want) })
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetIdentity()
		if err != nil {
			return err
		}
		if got != want {
			t.Errorf("got %+v, want %+v", got, want)
		}
		return nil
	})
	err := db.Update(func(tx *Tx) error {
		return tx.PutIdentity(Identity{Name: strings.Repeat("x", MaxNameLen+1)})
	})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized identity: %v", err)
	}
}
