package store

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestOpenUpToDateWritesNothing opens a store whose schema is current,
// reads from it and closes it: the file keeps its bytes and its mtime.
func TestOpenUpToDateWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutSetting("greeting", []byte("hello")) })
	db.Close()

	path := filepath.Join(dir, FileName)
	// An mtime in the past, so that any write would be visible even on
	// file systems with a coarse clock.
	past := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(path, past, past); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	for range 2 {
		db, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		mustView(t, db, func(tx *Tx) error {
			if v, err := tx.Schema(); err != nil || v != SchemaVersion() {
				t.Errorf("schema %d, %v; want %d", v, err, SchemaVersion())
			}
			return nil
		})
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}

	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("opening an up-to-date store changed %s", FileName)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(past) {
		t.Errorf("mtime %v, want %v unchanged", fi.ModTime(), past)
	}
}

// schemaBefore is the schema version just before the named migration.
func schemaBefore(t *testing.T, name string) int {
	t.Helper()
	for i, m := range migrations {
		if m.name == name {
			return i
		}
	}
	t.Fatalf("no migration %q", name)
	return 0
}
