package store

import (
	"errors"
	"testing"
	"time"
)

// TestPruneRetiredPrekeys: retired prekeys go at their deadline, not
// before, never one that is kept; prekeys with no record are retired until
// the orphan deadline; a pass with nothing to do writes nothing.
func TestPruneRetiredPrekeys(t *testing.T) {
	db, _ := openTest(t)
	t0 := time.Unix(1_800_000_000, 0)
	put := func(tx *Tx, refs ...PrekeyRef) {
		for _, r := range refs {
			if err := tx.PutPrekey(r.Kind, r.ID, []byte{1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := []PrekeyRef{{PrekeySignedDH, 1}, {PrekeyLastResort, 2}, {PrekeyOneTimeDH, 3}, {PrekeyOneTimeKEM, 4}}
	cur := []PrekeyRef{{PrekeySignedDH, 11}, {PrekeyLastResort, 12}}
	orphan := PrekeyRef{PrekeyOneTimeDH, 99}
	gone := PrekeyRef{PrekeyOneTimeKEM, 5} // used before retirement: not recorded
	prune := func(now time.Time) (int, bool) {
		var n int
		var wrote bool
		if err := db.Update(func(tx *Tx) error {
			var err error
			n, wrote, err = tx.PruneRetiredPrekeys(now, cur, t0.Add(100*time.Hour))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n, wrote
	}
	held := func(r PrekeyRef) bool {
		var ok bool
		if err := db.View(func(tx *Tx) error {
			_, err := tx.GetPrekey(r.Kind, r.ID)
			ok = err == nil
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if err := db.Update(func(tx *Tx) error {
		put(tx, append(append(old, cur...), orphan)...)
		return tx.RetirePrekeys(t0.Add(10*time.Hour), append(old, gone))
	}); err != nil {
		t.Fatal(err)
	}
	if n, wrote := prune(t0); n != 0 || !wrote {
		t.Fatalf("first prune: %d deleted, wrote %v; want the orphan recorded, nothing deleted", n, wrote)
	}
	if n, wrote := prune(t0.Add(10*time.Hour - time.Second)); n != 0 || wrote {
		t.Fatalf("before the deadline: %d deleted, wrote %v", n, wrote)
	}
	if n, _ := prune(t0.Add(10 * time.Hour)); n != len(old) {
		t.Fatalf("at the deadline: %d deleted, want %d", n, len(old))
	}
	for _, r := range old {
		if held(r) {
			t.Fatalf("%v still held after its deadline", r)
		}
	}
	for _, r := range append(cur, orphan) {
		if !held(r) {
			t.Fatalf("%v deleted", r)
		}
	}
	if n, _ := prune(t0.Add(100 * time.Hour)); n != 1 || held(orphan) {
		t.Fatalf("at the orphan deadline: %d deleted, orphan held %v", n, held(orphan))
	}
	if n, wrote := prune(t0.Add(1000 * time.Hour)); n != 0 || wrote {
		t.Fatalf("with nothing left: %d deleted, wrote %v", n, wrote)
	}
	for _, r := range cur {
		if !held(r) {
			t.Fatalf("kept %v deleted", r)
		}
	}
}
