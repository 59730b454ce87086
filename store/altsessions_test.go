package store

import (
	"bytes"
	"testing"
	"time"
)

// TestAltSessions: an alternate session round-trips and is deleted; a
// prune drops only those that hold a secret and were stored more than the
// retention before, gives one stored before times were kept the time of
// the prune, and keeps the rest.
func TestAltSessions(t *testing.T) {
	db, _ := openTest(t)
	const keep = time.Hour
	secret, plain := []byte("secret-state"), []byte("plain-state")
	holds := func(state []byte) bool { return bytes.Equal(state, secret) }
	mustUpdate(t, db, func(tx *Tx) error {
		for i, c := range []Contact{contact("old", 1), contact("new", 2), contact("plain", 3), contact("untimed", 4), contact("none", 5)} {
			if err := tx.AddContact(c); err != nil {
				return err
			}
			state, at := secret, t0.Add(-2*keep)
			switch i {
			case 1:
				at = t0.Add(-keep / 2)
			case 2:
				state = plain
			case 4:
				continue
			}
			if err := tx.PutAltSession(c.Account, state, at); err != nil {
				return err
			}
		}
		// Kept from before times were recorded.
		return tx.DeleteSetting(altSessionAtName(acct(4)))
	})
	mustUpdate(t, db, func(tx *Tx) error {
		got, err := tx.GetAltSession(acct(2))
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("GetAltSession = %q, %v", got, err)
		}
		if got, err := tx.GetAltSession(acct(5)); got != nil || err != nil {
			t.Fatalf("GetAltSession of a contact without one = %q, %v", got, err)
		}
		dropped, wrote, err := tx.PruneAltSessions(t0, keep, holds)
		if err != nil || dropped != 1 || !wrote {
			t.Fatalf("PruneAltSessions = %d, %v, %v; want 1 dropped, a write", dropped, wrote, err)
		}
		for n, want := range map[byte]bool{1: false, 2: true, 3: true, 4: true} {
			if got, _ := tx.GetAltSession(acct(n)); (got != nil) != want {
				t.Errorf("contact %d: alternate session kept = %v, want %v", n, got != nil, want)
			}
		}
		if at, ok, err := tx.GetUint64(altSessionAtName(acct(4))); err != nil || !ok || at != uint64(t0.Unix()) {
			t.Errorf("untimed alternate session's time = %d, %v, %v; want the prune's", at, ok, err)
		}
		// Nothing more to do: nothing written.
		if dropped, wrote, err := tx.PruneAltSessions(t0, keep, holds); dropped != 0 || wrote || err != nil {
			t.Errorf("second prune = %d, %v, %v", dropped, wrote, err)
		}
		if err := tx.DeleteAltSession(acct(2)); err != nil {
			return err
		}
		if got, _ := tx.GetAltSession(acct(2)); got != nil {
			t.Error("deleted alternate session still there")
		}
		return nil
	})
}
