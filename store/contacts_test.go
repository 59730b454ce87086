package store

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func contact(name string, n byte) Contact {
	return Contact{
		Name:       name,
		Account:    acct(n),
		DeviceCert: []byte("cert-" + name),
		PeerID:     "12D3Koo" + name,
		Addrs:      []string{"/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"},
		Added:      t0,
	}
}

func TestContactsRoundTripAndLookup(t *testing.T) {
	db, _ := openTest(t)
	alice := contact("Alice", 1)
	alice.Verified = true
	alice.KeyChange = &KeyChange{Account: acct(100), DeviceCert: []byte("new"), Detected: t0}
	bob := contact("bob", 2)
	bob.IsRequest = true
	bob.Addrs = nil
	carol := contact("Carol", 3)
	mustUpdate(t, db, func(tx *Tx) error {
		for _, c := range []Contact{carol, alice, bob} {
			if err := tx.AddContact(c); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetContact(alice.Account)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, alice) {
			t.Errorf("GetContact = %+v, want %+v", got, alice)
		}
		got, err = tx.ContactByName("ALICE")
		if err != nil {
			return err
		}
		if got.Account != alice.Account {
			t.Errorf("ContactByName is not case-insensitive")
		}
		list, err := tx.ListContacts()
		if err != nil {
			return err
		}
		var names []string
		for _, c := range list {
			names = append(names, c.Name)
		}
		if strings.Join(names, ",") != "Alice,bob,Carol" {
			t.Errorf("ListContacts order %v", names)
		}
		if !reflect.DeepEqual(list[1], bob) {
			t.Errorf("bob = %+v", list[1])
		}
		if _, err := tx.GetContact(acct(77)); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("GetContact unknown: %v", err)
		}
		if _, err := tx.ContactByName("dave"); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("ContactByName unknown: %v", err)
		}
		return nil
	})
}

func TestContactNameRules(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error { return tx.AddContact(contact("alice", 1)) })
	tests := []struct {
		name string
		c    Contact
		want error
	}{
		{"taken", contact("alice", 2), ErrNameTaken},
		{"taken other case", contact("ALICE", 2), ErrNameTaken},
		{"same account", contact("alice2", 1), ErrDuplicate},
		{"empty", contact("", 2), ErrInvalidName},
		{"too long", contact(strings.Repeat("a", MaxNameLen+1), 2), ErrInvalidName},
		{"control", contact("a\nb", 2), ErrInvalidName},
		{"spaces", contact(" a", 2), ErrInvalidName},
		{"bad utf8", contact("a\xff", 2), ErrInvalidName},
		{"big cert", func() Contact { c := contact("x", 2); c.DeviceCert = make([]byte, MaxDeviceCertSize+1); return c }(), ErrTooLarge},
		{"many addrs", func() Contact { c := contact("x", 2); c.Addrs = make([]string, MaxAddrs+1); return c }(), ErrTooLarge},
		{"long addr", func() Contact { c := contact("x", 2); c.Addrs = []string{strings.Repeat("a", MaxAddrLen+1)}; return c }(), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := db.Update(func(tx *Tx) error { return tx.AddContact(tt.c) })
			if !errors.Is(err, tt.want) {
				t.Errorf("AddContact: %v, want %v", err, tt.want)
			}
		})
	}
	if err := db.Update(func(tx *Tx) error { return tx.AddContact(Contact{Name: "zero"}) }); err == nil {
		t.Error("contact without account accepted")
	}
	if err := ValidateName("Bob Smith ✓"); err != nil {
		t.Errorf("ValidateName rejected a normal name: %v", err)
	}
}

func TestRenameAndPutContact(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		if err := tx.AddContact(contact("alice", 1)); err != nil {
			return err
		}
		return tx.AddContact(contact("bob", 2))
	})
	if err := db.Update(func(tx *Tx) error { return tx.RenameContact(acct(1), "Bob") }); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("rename to taken name: %v", err)
	}
	mustUpdate(t, db, func(tx *Tx) error { return tx.RenameContact(acct(1), "Ally") })
	// Changing only the case of one's own name is allowed.
	mustUpdate(t, db, func(tx *Tx) error { return tx.RenameContact(acct(2), "Bob") })
	mustUpdate(t, db, func(tx *Tx) error {
		c, err := tx.GetContact(acct(2))
		if err != nil {
			return err
		}
		c.Verified = true
		c.Addrs = []string{"/ip4/10.0.0.1/tcp/1"}
		return tx.PutContact(c)
	})
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.ContactByName("alice"); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("old name still resolves: %v", err)
		}
		c, err := tx.ContactByName("ally")
		if err != nil || c.Account != acct(1) {
			t.Errorf("new name: %v %x", err, c.Account[:1])
		}
		b, err := tx.ContactByName("bob")
		if err != nil || b.Name != "Bob" || !b.Verified || len(b.Addrs) != 1 {
			t.Errorf("bob after PutContact: %+v %v", b, err)
		}
		return nil
	})
	if err := db.Update(func(tx *Tx) error { return tx.PutContact(contact("nobody", 9)) }); !errors.Is(err, ErrUnknownContact) {
		t.Errorf("PutContact of unknown: %v", err)
	}
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestDeleteContact(t *testing.T) {
	db, _ := openTest(t)
	var tag, otherTag [32]byte
	tag[0], otherTag[0] = 1, 2
	mustUpdate(t, db, func(tx *Tx) error {
		if err := tx.AddContact(contact("alice", 1)); err != nil {
			return err
		}
		if err := tx.AddContact(contact("bob", 2)); err != nil {
			return err
		}
		if err := tx.PutSession(acct(1), []byte("s")); err != nil {
			return err
		}
		if err := tx.PutTag(tag, acct(1), 5); err != nil {
			return err
		}
		if err := tx.PutTag(otherTag, acct(2), 5); err != nil {
			return err
		}
		_, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Incoming, Body: []byte("hi")})
		return err
	})
	mustUpdate(t, db, func(tx *Tx) error { return tx.DeleteContact(acct(1)) })
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetContact(acct(1)); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("contact still there: %v", err)
		}
		if _, err := tx.ContactByName("alice"); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("name still there: %v", err)
		}
		if _, err := tx.GetSession(acct(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("session still there: %v", err)
		}
		if _, _, err := tx.LookupTag(tag); !errors.Is(err, ErrNotFound) {
			t.Errorf("tag still there: %v", err)
		}
		if a, _, err := tx.LookupTag(otherTag); err != nil || a != acct(2) {
			t.Errorf("other contact's tag lost: %v", err)
		}
		if msgs, _ := tx.ListMessages(new(acct(1)), 0, 0); len(msgs) != 1 {
			t.Errorf("history lost: %d messages", len(msgs))
		}
		return nil
	})
	if err := db.Update(func(tx *Tx) error { return tx.DeleteContact(acct(1)) }); !errors.Is(err, ErrUnknownContact) {
		t.Errorf("second delete: %v", err)
	}
	// The name is free again.
	mustUpdate(t, db, func(tx *Tx) error { return tx.AddContact(contact("alice", 3)) })
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestAcceptKeyChange(t *testing.T) {
	db, _ := openTest(t)
	oldA, newA := acct(1), acct(50)
	mustUpdate(t, db, func(tx *Tx) error {
		c := contact("alice", 1)
		c.Verified = true
		if err := tx.AddContact(c); err != nil {
			return err
		}
		if err := tx.PutSession(oldA, []byte("old session")); err != nil {
			return err
		}
		for i := range uint64(3) {
			if _, err := tx.AppendMessage(Message{ID: msgID(i), Contact: oldA, Direction: Incoming}); err != nil {
				return err
			}
		}
		return nil
	})
	if err := db.Update(func(tx *Tx) error { _, err := tx.AcceptKeyChange(oldA); return err }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept without pending change: %v", err)
	}
	mustUpdate(t, db, func(tx *Tx) error {
		c, err := tx.GetContact(oldA)
		if err != nil {
			return err
		}
		c.KeyChange = &KeyChange{Account: newA, DeviceCert: []byte("new cert"), Detected: t0}
		if err := tx.PutContact(c); err != nil {
			return err
		}
		got, err := tx.AcceptKeyChange(oldA)
		if err != nil {
			return err
		}
		if got.Account != newA || got.Verified || got.KeyChange != nil || !bytes.Equal(got.DeviceCert, []byte("new cert")) {
			t.Errorf("accepted contact %+v", got)
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetContact(oldA); !errors.Is(err, ErrUnknownContact) {
			t.Errorf("old account still a contact")
		}
		c, err := tx.ContactByName("alice")
		if err != nil || c.Account != newA {
			t.Errorf("name does not resolve to the new key: %v", err)
		}
		if _, err := tx.GetSession(oldA); !errors.Is(err, ErrNotFound) {
			t.Errorf("old session kept")
		}
		msgs, err := tx.ListMessages(&newA, 0, 0)
		if err != nil || len(msgs) != 3 || msgs[2].Seq != 3 || msgs[0].Contact != newA {
			t.Errorf("conversation not moved: %v %+v", err, msgs)
		}
		if seen, _ := tx.Seen(newA, msgID(1)); !seen {
			t.Errorf("dedup marks not moved")
		}
		return nil
	})
	// The next message continues the sequence.
	mustUpdate(t, db, func(tx *Tx) error {
		m, err := tx.AppendMessage(Message{ID: msgID(10), Contact: newA, Direction: Outgoing})
		if err == nil && m.Seq != 4 {
			t.Errorf("seq after move %d, want 4", m.Seq)
		}
		return err
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}
