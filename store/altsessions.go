package store

import (
	"encoding/base64"
	"errors"
	"time"
)

// An alternate session is the session kept, besides the current one, for
// receiving from a contact after a simultaneous initiation. Its state
// (opaque bytes) is the setting "alt/" + base64url(account), and the time
// it was last stored (Unix seconds) the setting "alt-at/" + base64url(account).

func altSessionName(acct [32]byte) string {
	return "alt/" + base64.RawURLEncoding.EncodeToString(acct[:])
}

func altSessionAtName(acct [32]byte) string {
	return "alt-at/" + base64.RawURLEncoding.EncodeToString(acct[:])
}

// GetAltSession returns the alternate session state kept for acct, or nil
// if there is none.
func (tx *Tx) GetAltSession(acct [32]byte) ([]byte, error) {
	b, err := tx.GetSetting(altSessionName(acct))
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return b, err
}

// PutAltSession keeps state as acct's alternate session, stored at now.
func (tx *Tx) PutAltSession(acct [32]byte, state []byte, now time.Time) error {
	if err := tx.PutSetting(altSessionName(acct), state); err != nil {
		return err
	}
	return tx.PutUint64(altSessionAtName(acct), uint64(now.Unix()))
}

// DeleteAltSession drops acct's alternate session, if any.
func (tx *Tx) DeleteAltSession(acct [32]byte) error {
	if err := tx.DeleteSetting(altSessionName(acct)); err != nil {
		return err
	}
	return tx.DeleteSetting(altSessionAtName(acct))
}

// PruneAltSessions drops every contact's alternate session that holds a
// secret (holdsSecret reports it from the state) and was last stored more
// than keep before now. An alternate session with no time recorded (from
// before times were kept) is given now. It returns how many it dropped
// and whether it wrote anything.
func (tx *Tx) PruneAltSessions(now time.Time, keep time.Duration, holdsSecret func(state []byte) bool) (dropped int, wrote bool, err error) {
	cs, err := tx.ListContacts()
	if err != nil {
		return 0, false, err
	}
	for _, c := range cs {
		state, err := tx.GetAltSession(c.Account)
		if err != nil {
			return dropped, wrote, err
		}
		if state == nil {
			continue
		}
		at, ok, err := tx.GetUint64(altSessionAtName(c.Account))
		if err != nil {
			return dropped, wrote, err
		}
		if !ok {
			wrote = true
			if err := tx.PutUint64(altSessionAtName(c.Account), uint64(now.Unix())); err != nil {
				return dropped, wrote, err
			}
			continue
		}
		if !holdsSecret(state) || now.Before(time.Unix(int64(at), 0).Add(keep)) {
			continue
		}
		if err := tx.DeleteAltSession(c.Account); err != nil {
			return dropped, wrote, err
		}
		dropped++
		wrote = true
	}
	return dropped, wrote, nil
}
