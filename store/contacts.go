package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Contact is someone this node talks to, keyed by account public key.
type Contact struct {
	Name       string   // unique among contacts, compared case-insensitively
	Account    [32]byte // account public key (Ed25519)
	DeviceCert []byte   // marshalled device certificate (opaque here)
	PeerID     string   // the device's libp2p peer ID
	Addrs      []string // cached multiaddrs, most useful first
	Verified   bool     // the user compared safety numbers
	// KeyChange is set when the contact presented a different identity
	// that the user has not accepted yet.
	KeyChange *KeyChange
	// IsRequest marks a contact created from a first message by an
	// unknown sender, shown to the user as a message request.
	IsRequest bool
	Added     time.Time
}

// KeyChange records a changed identity key that awaits the user's decision.
type KeyChange struct {
	Account    [32]byte // the new account public key
	DeviceCert []byte   // the new device certificate (opaque)
	Detected   time.Time
}

// ValidateName reports whether name is acceptable as a contact name:
// 1 to MaxNameLen bytes of valid UTF-8, no control characters, no leading
// or trailing white space.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: name is %d bytes", ErrInvalidName, len(name))
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalidName)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("%w: name has leading or trailing spaces", ErrInvalidName)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: name contains a control character", ErrInvalidName)
		}
	}
	return nil
}

// nameKey is the index key of a name: names are unique case-insensitively.
func nameKey(name string) []byte { return []byte(strings.ToLower(name)) }

func (c *Contact) validate() error {
	if err := ValidateName(c.Name); err != nil {
		return err
	}
	if c.Account == ([32]byte{}) {
		return fmt.Errorf("store: contact %q has no account key", c.Name)
	}
	if c.KeyChange != nil && len(c.KeyChange.DeviceCert) > MaxDeviceCertSize {
		return tooLarge("new device certificate", len(c.KeyChange.DeviceCert), MaxDeviceCertSize)
	}
	switch {
	case len(c.DeviceCert) > MaxDeviceCertSize:
		return tooLarge("device certificate", len(c.DeviceCert), MaxDeviceCertSize)
	case len(c.PeerID) > MaxPeerIDLen:
		return tooLarge("peer ID", len(c.PeerID), MaxPeerIDLen)
	case len(c.Addrs) > MaxAddrs:
		return fmt.Errorf("%w: %d addresses, the limit is %d", ErrTooLarge, len(c.Addrs), MaxAddrs)
	}
	for _, a := range c.Addrs {
		if len(a) > MaxAddrLen {
			return tooLarge("address", len(a), MaxAddrLen)
		}
	}
	return nil
}

func (c *Contact) marshal() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	e := newEncoder(128 + len(c.DeviceCert))
	e.str(c.Name)
	e.fixed(c.Account[:])
	e.bytes(c.DeviceCert)
	e.str(c.PeerID)
	e.uvarint(uint64(len(c.Addrs)))
	for _, a := range c.Addrs {
		e.str(a)
	}
	e.bool(c.Verified)
	e.bool(c.IsRequest)
	e.time(c.Added)
	e.bool(c.KeyChange != nil)
	if kc := c.KeyChange; kc != nil {
		e.fixed(kc.Account[:])
		e.bytes(kc.DeviceCert)
		e.time(kc.Detected)
	}
	return e.b, nil
}

func unmarshalContact(b []byte) (Contact, error) {
	var c Contact
	d := newDecoder("contact", b)
	c.Name = d.str(MaxNameLen)
	d.fixed(c.Account[:])
	c.DeviceCert = d.bytes(MaxDeviceCertSize)
	c.PeerID = d.str(MaxPeerIDLen)
	if n := d.int(MaxAddrs); n > 0 {
		c.Addrs = make([]string, n)
		for i := range c.Addrs {
			c.Addrs[i] = d.str(MaxAddrLen)
		}
	}
	c.Verified = d.bool()
	c.IsRequest = d.bool()
	c.Added = d.time()
	if d.bool() {
		kc := &KeyChange{}
		d.fixed(kc.Account[:])
		kc.DeviceCert = d.bytes(MaxDeviceCertSize)
		kc.Detected = d.time()
		c.KeyChange = kc
	}
	if err := d.finish(); err != nil {
		return Contact{}, err
	}
	return c, nil
}

func unknownContact(account [32]byte) error {
	return fmt.Errorf("%w (account %x…)", ErrUnknownContact, account[:6])
}

// AddContact stores a new contact. It fails with ErrNameTaken if another
// contact has the name (case-insensitively), and with ErrDuplicate if the
// account is already a contact.
func (tx *Tx) AddContact(c Contact) error {
	contacts, err := tx.wbucket(bucketContacts)
	if err != nil {
		return err
	}
	names, err := tx.bucket(bucketNames)
	if err != nil {
		return err
	}
	v, err := c.marshal()
	if err != nil {
		return err
	}
	if old := contacts.Get(c.Account[:]); old != nil {
		prev, err := unmarshalContact(old)
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: this account is already a contact named %q", ErrDuplicate, prev.Name)
	}
	nk := nameKey(c.Name)
	if names.Get(nk) != nil {
		return fmt.Errorf("%w: %q", ErrNameTaken, c.Name)
	}
	if err := names.Put(nk, c.Account[:]); err != nil {
		return err
	}
	return contacts.Put(c.Account[:], v)
}

// PutContact replaces an existing contact (matched by account). A changed
// name is checked for uniqueness and re-indexed.
func (tx *Tx) PutContact(c Contact) error {
	contacts, err := tx.wbucket(bucketContacts)
	if err != nil {
		return err
	}
	names, err := tx.bucket(bucketNames)
	if err != nil {
		return err
	}
	v, err := c.marshal()
	if err != nil {
		return err
	}
	old := contacts.Get(c.Account[:])
	if old == nil {
		return unknownContact(c.Account)
	}
	prev, err := unmarshalContact(old)
	if err != nil {
		return err
	}
	oldKey, newKey := nameKey(prev.Name), nameKey(c.Name)
	if !bytes.Equal(oldKey, newKey) {
		if names.Get(newKey) != nil {
			return fmt.Errorf("%w: %q", ErrNameTaken, c.Name)
		}
		if err := names.Delete(oldKey); err != nil {
			return err
		}
		if err := names.Put(newKey, c.Account[:]); err != nil {
			return err
		}
	}
	return contacts.Put(c.Account[:], v)
}

// GetContact returns the contact with the given account key, or an error
// wrapping ErrUnknownContact.
func (tx *Tx) GetContact(account [32]byte) (Contact, error) {
	contacts, err := tx.bucket(bucketContacts)
	if err != nil {
		return Contact{}, err
	}
	v := contacts.Get(account[:])
	if v == nil {
		return Contact{}, unknownContact(account)
	}
	return unmarshalContact(v)
}

// hasContact returns nil if account is a contact, else an error wrapping
// ErrUnknownContact, without decoding the contact.
func (tx *Tx) hasContact(account [32]byte) error {
	contacts, err := tx.bucket(bucketContacts)
	if err != nil {
		return err
	}
	if contacts.Get(account[:]) == nil {
		return unknownContact(account)
	}
	return nil
}

// ContactByName returns the contact with the given name (case-insensitive),
// or an error wrapping ErrUnknownContact.
func (tx *Tx) ContactByName(name string) (Contact, error) {
	names, err := tx.bucket(bucketNames)
	if err != nil {
		return Contact{}, err
	}
	acct := names.Get(nameKey(name))
	if acct == nil {
		return Contact{}, fmt.Errorf("%w: no contact named %q", ErrUnknownContact, name)
	}
	if len(acct) != 32 {
		return Contact{}, fmt.Errorf("%w: name index entry for %q", ErrCorrupt, name)
	}
	return tx.GetContact([32]byte(acct))
}

// HasContact reports whether account is a contact, without opening its
// record (which may be damaged).
func (tx *Tx) HasContact(account [32]byte) (bool, error) {
	contacts, err := tx.bucket(bucketContacts)
	if err != nil {
		return false, err
	}
	if contacts.direct {
		return contacts.b.Get(account[:]) != nil, nil
	}
	sk, err := contacts.storedKey(account[:], false)
	if err != nil {
		return false, err
	}
	return contacts.b.Get(sk) != nil, nil
}

// getContactConfined is GetContact for a listing: a contact whose record
// fails its check is left out (nil), its damage confined.
func (tx *Tx) getContactConfined(account [32]byte) (*Contact, error) {
	contacts, err := tx.bucket(bucketContacts)
	if err != nil {
		return nil, err
	}
	v, err := contacts.getConfined(account[:])
	if err == nil && v == nil {
		return nil, unknownContact(account)
	}
	var c Contact
	if err == nil {
		c, err = unmarshalContact(v)
	}
	if errors.Is(err, ErrCorrupt) {
		tx.confine(bucketContacts, account[:], err)
		return nil, nil
	}
	return &c, err
}

// ListContacts returns all contacts sorted by name (case-insensitively).
// A contact whose record is damaged is left out, and listed by Stats.
func (tx *Tx) ListContacts() ([]Contact, error) { return tx.listContacts(true) }

// ListEveryContact is ListContacts for a check that must see every
// contact (is this device already a contact's?): a damaged record fails
// it, with ErrCorrupt, rather than being left out.
func (tx *Tx) ListEveryContact() ([]Contact, error) { return tx.listContacts(false) }

func (tx *Tx) listContacts(confine bool) ([]Contact, error) {
	names, err := tx.bucket(bucketNames)
	if err != nil {
		return nil, err
	}
	var out []Contact
	err = names.ForEach(func(k, acct []byte) error {
		if len(acct) != 32 {
			return fmt.Errorf("%w: name index entry for %q", ErrCorrupt, k)
		}
		if !confine {
			c, err := tx.GetContact([32]byte(acct))
			out = append(out, c)
			return err
		}
		c, err := tx.getContactConfined([32]byte(acct))
		if err != nil {
			return err
		}
		if c != nil {
			out = append(out, *c)
		}
		return nil
	})
	// An encrypted store keeps the name index in keyed-hash order.
	slices.SortFunc(out, func(a, b Contact) int { return bytes.Compare(nameKey(a.Name), nameKey(b.Name)) })
	return out, err
}

// RenameContact changes a contact's name.
func (tx *Tx) RenameContact(account [32]byte, name string) error {
	c, err := tx.GetContact(account)
	if err != nil {
		return err
	}
	c.Name = name
	return tx.PutContact(c)
}

// DeleteContact removes a contact together with its session and mailbox
// tags. The conversation history stays (ListMessages still returns it).
func (tx *Tx) DeleteContact(account [32]byte) error {
	c, err := tx.GetContact(account)
	if err != nil {
		return err
	}
	contacts, err := tx.wbucket(bucketContacts)
	if err != nil {
		return err
	}
	names, err := tx.bucket(bucketNames)
	if err != nil {
		return err
	}
	if err := names.Delete(nameKey(c.Name)); err != nil {
		return err
	}
	if err := contacts.Delete(account[:]); err != nil {
		return err
	}
	if err := tx.DeleteSession(account); err != nil {
		return err
	}
	_, err = tx.deleteTagsFor(account)
	return err
}

// AcceptKeyChange makes a contact's pending new identity its identity: the
// contact, its conversation and its dedup marks move to the new account
// key, held messages are shown and the conversation's sequence numbers
// start again (the new identity counts from 1), the old session and tags
// are dropped, and Verified is reset. It
// returns the updated contact.
func (tx *Tx) AcceptKeyChange(account [32]byte) (Contact, error) {
	c, err := tx.GetContact(account)
	if err != nil {
		return Contact{}, err
	}
	if c.KeyChange == nil {
		return Contact{}, fmt.Errorf("%w: contact %q has no pending key change", ErrNotFound, c.Name)
	}
	newAcct := c.KeyChange.Account
	contacts, err := tx.wbucket(bucketContacts)
	if err != nil {
		return Contact{}, err
	}
	if contacts.Get(newAcct[:]) != nil {
		return Contact{}, fmt.Errorf("%w: the new key already belongs to another contact", ErrDuplicate)
	}
	if err := tx.forgetOrder(account); err != nil {
		return Contact{}, err
	}
	if err := tx.moveConversation(account, newAcct); err != nil {
		return Contact{}, err
	}
	if err := tx.DeleteContact(account); err != nil {
		return Contact{}, err
	}
	c.Account = newAcct
	c.DeviceCert = c.KeyChange.DeviceCert
	c.KeyChange = nil
	c.Verified = false
	c.PeerID = ""
	c.Addrs = nil
	if err := tx.AddContact(c); err != nil {
		return Contact{}, err
	}
	return c, nil
}
