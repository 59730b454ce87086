package keys

import (
	"errors"
	"fmt"
	"time"
)

// DeviceCertVersion is the only device certificate encoding this package
// writes and accepts. A later version can add linked devices and
// revocation; version 1 certificates stay readable.
const DeviceCertVersion = 1

// Limits on a device certificate.
const (
	// MinPeerIDSize and MaxPeerIDSize bound the binary libp2p peer ID
	// (a multihash; an identity-hashed Ed25519 key is 38 bytes).
	MinPeerIDSize = 1
	MaxPeerIDSize = 64
)

// deviceCertLabel separates device certificate signatures from every
// other signature made with the account key.
const deviceCertLabel = "sotto/v1/device-certificate"

// Errors about device certificates.
var (
	ErrDeviceMalformed = errors.New("keys: device certificate is malformed")
	ErrDeviceVersion   = errors.New("keys: device certificate has an unknown version")
	ErrDeviceSignature = errors.New("keys: device certificate signature does not verify")
)

// DeviceCertificate is the account key's statement that a device, named by
// its libp2p peer ID, speaks for the account with the X25519 identity key
// IdentityDH.
//
// Encoding (version 1), every integer big-endian:
//
//	version    uint8 = 1
//	account    [32]byte   Ed25519 account key
//	peerIDLen  uint8      1..64
//	peerID     [peerIDLen]byte
//	identityDH [32]byte   canonical, not low-order
//	created    uint64     Unix seconds
//	signature  [64]byte   Ed25519 over "sotto/v1/device-certificate" || all fields above
type DeviceCertificate struct {
	Account    AccountPublic
	PeerID     []byte
	IdentityDH DHPublic
	Created    time.Time // whole seconds
	Signature  [SignatureSize]byte
}

// NewDeviceCertificate signs a certificate for the device with binary peer
// ID peerID and identity key ik, created at now (truncated to seconds).
func NewDeviceCertificate(acct *AccountPrivate, peerID []byte, ik DHPublic, now time.Time) (DeviceCertificate, error) {
	c := DeviceCertificate{
		Account:    acct.Public(),
		PeerID:     append([]byte(nil), peerID...),
		IdentityDH: ik,
		Created:    time.Unix(now.Unix(), 0).UTC(),
	}
	if err := c.checkFields(); err != nil {
		return DeviceCertificate{}, err
	}
	copy(c.Signature[:], acct.Sign(c.signingInput()))
	return c, nil
}

// checkFields validates everything but the signature.
func (c *DeviceCertificate) checkFields() error {
	if n := len(c.PeerID); n < MinPeerIDSize || n > MaxPeerIDSize {
		return fmt.Errorf("%w: peer ID is %d bytes, want %d..%d", ErrDeviceMalformed, n, MinPeerIDSize, MaxPeerIDSize)
	}
	if c.Account.IsZero() {
		return fmt.Errorf("%w: account key is zero", ErrDeviceMalformed)
	}
	if !validUnix(c.Created) {
		return fmt.Errorf("%w: creation time out of range", ErrDeviceMalformed)
	}
	if _, err := ParseDHPublic(c.IdentityDH[:]); err != nil {
		return fmt.Errorf("keys: device identity key: %w", err)
	}
	return nil
}

func (c *DeviceCertificate) appendBody(w *builder) {
	w.u8(DeviceCertVersion)
	w.bytes(c.Account[:])
	w.u8(uint8(len(c.PeerID)))
	w.bytes(c.PeerID)
	w.bytes(c.IdentityDH[:])
	w.unix(c.Created)
}

func (c *DeviceCertificate) signingInput() []byte {
	w := builder{b: make([]byte, 0, len(deviceCertLabel)+c.size())}
	w.bytes([]byte(deviceCertLabel))
	c.appendBody(&w)
	return w.b
}

func (c *DeviceCertificate) size() int {
	return 1 + AccountSize + 1 + len(c.PeerID) + DHSize + 8 + SignatureSize
}

func (c *DeviceCertificate) appendTo(w *builder) {
	c.appendBody(w)
	w.bytes(c.Signature[:])
}

// Marshal returns the canonical encoding. It is meant for certificates
// that pass Verify; the encoding of an invalid one (say a peer ID longer
// than MaxPeerIDSize) is not parseable.
func (c DeviceCertificate) Marshal() []byte {
	w := builder{b: make([]byte, 0, c.size())}
	c.appendTo(&w)
	return w.b
}

// ParseDeviceCertificate decodes the canonical encoding and checks every
// field but the signature; call Verify for that. Trailing bytes are an error.
func ParseDeviceCertificate(b []byte) (DeviceCertificate, error) {
	r := newParser(b)
	c, err := parseDeviceCert(r)
	if err != nil {
		return DeviceCertificate{}, err
	}
	if !r.done() {
		return DeviceCertificate{}, fmt.Errorf("%w: trailing bytes", ErrDeviceMalformed)
	}
	return c, nil
}

// parseDeviceCert reads one certificate from r, which may hold more data.
func parseDeviceCert(r *parser) (DeviceCertificate, error) {
	var c DeviceCertificate
	v := r.u8()
	if !r.ok {
		return c, fmt.Errorf("%w: truncated", ErrDeviceMalformed)
	}
	if v != DeviceCertVersion {
		return c, fmt.Errorf("%w (%d)", ErrDeviceVersion, v)
	}
	copy(c.Account[:], r.take(AccountSize))
	n := int(r.u8())
	if r.ok && (n < MinPeerIDSize || n > MaxPeerIDSize) {
		return c, fmt.Errorf("%w: peer ID length %d", ErrDeviceMalformed, n)
	}
	c.PeerID = append([]byte(nil), r.take(n)...)
	copy(c.IdentityDH[:], r.take(DHSize))
	c.Created = r.unix()
	copy(c.Signature[:], r.take(SignatureSize))
	if !r.ok {
		return DeviceCertificate{}, fmt.Errorf("%w: truncated or out-of-range field", ErrDeviceMalformed)
	}
	if err := c.checkFields(); err != nil {
		return DeviceCertificate{}, err
	}
	return c, nil
}

// Verify checks the fields and that the account key signed them.
func (c DeviceCertificate) Verify() error {
	if err := c.checkFields(); err != nil {
		return err
	}
	if !c.Account.Verify(c.signingInput(), c.Signature[:]) {
		return ErrDeviceSignature
	}
	return nil
}

// Equal reports whether c and o are the same certificate.
func (c DeviceCertificate) Equal(o DeviceCertificate) bool {
	return string(c.Marshal()) == string(o.Marshal())
}
