package store

import (
	"fmt"
	"time"
)

// Limits on identity and contact fields.
const (
	MaxNameLen         = 64   // bytes of a contact or identity name
	MaxKeystoreRefLen  = 4096 // bytes of the keystore path or reference
	MaxPeerIDLen       = 128  // bytes of a textual libp2p peer ID
	MaxDeviceCertSize  = 1024 // bytes of a marshalled device certificate
	MaxAddrs           = 32   // cached multiaddrs per contact
	MaxAddrLen         = 256  // bytes of one textual multiaddr
	maxIdentityRecSize = 1 + 5 + MaxNameLen + 5 + MaxKeystoreRefLen + 32 + 5 + MaxPeerIDLen + 10
)

var keyIdentity = []byte("self")

// Identity describes this node's own account. The secrets live in the
// keystore file that Keystore refers to, never in the database.
type Identity struct {
	Name     string    // the user's own display name, may be empty
	Keystore string    // path of the keystore file (relative to the data dir or absolute)
	Account  [32]byte  // account public key (Ed25519)
	PeerID   string    // this device's libp2p peer ID
	Created  time.Time // when the identity was created
}

func (id *Identity) marshal() ([]byte, error) {
	switch {
	case len(id.Name) > MaxNameLen:
		return nil, tooLarge("identity name", len(id.Name), MaxNameLen)
	case len(id.Keystore) > MaxKeystoreRefLen:
		return nil, tooLarge("keystore reference", len(id.Keystore), MaxKeystoreRefLen)
	case len(id.PeerID) > MaxPeerIDLen:
		return nil, tooLarge("peer ID", len(id.PeerID), MaxPeerIDLen)
	}
	e := newEncoder(64 + len(id.Name) + len(id.Keystore) + len(id.PeerID))
	e.str(id.Name)
	e.str(id.Keystore)
	e.fixed(id.Account[:])
	e.str(id.PeerID)
	e.time(id.Created)
	return e.b, nil
}

func unmarshalIdentity(b []byte) (Identity, error) {
	var id Identity
	d := newDecoder("identity", b)
	id.Name = d.str(MaxNameLen)
	id.Keystore = d.str(MaxKeystoreRefLen)
	d.fixed(id.Account[:])
	id.PeerID = d.str(MaxPeerIDLen)
	id.Created = d.time()
	return id, d.finish()
}

// PutIdentity stores (or replaces) this node's identity record.
func (tx *Tx) PutIdentity(id Identity) error {
	b, err := tx.wbucket(bucketIdentity)
	if err != nil {
		return err
	}
	v, err := id.marshal()
	if err != nil {
		return err
	}
	return b.Put(keyIdentity, v)
}

// GetIdentity returns this node's identity record, or an error wrapping
// ErrNotFound if the data dir has not been initialised.
func (tx *Tx) GetIdentity() (Identity, error) {
	b, err := tx.bucket(bucketIdentity)
	if err != nil {
		return Identity{}, err
	}
	v := b.Get(keyIdentity)
	if v == nil {
		return Identity{}, fmt.Errorf("%w: no identity in this data dir; run 'sotto init' first", ErrNotFound)
	}
	return unmarshalIdentity(v)
}
