package node

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/keys"
)

// An invite is what one person gives another to become a contact: the
// account key (inside the device certificate), the device certificate, and
// the addresses the device was listening on. Text form:
//
//	"sotto://" || lower-case unpadded base32( body || checksum )
//
// body, every integer big-endian:
//
//	version   uint8 = 1
//	certLen   uint16, certificate   keys.DeviceCertificate encoding
//	addrCount uint8 (<= MaxInviteAddrs), then per address:
//	addrLen   uint16 (<= MaxInviteAddrSize), addr  binary multiaddr
//
// checksum = first 4 bytes of SHA-256("sotto/v1/invite-checksum" || body).
const (
	InviteScheme       = "sotto://"
	InviteVersion      = 1
	MaxInviteAddrs     = 16
	MaxInviteAddrSize  = 256
	maxInviteCertSize  = 512
	inviteChecksumSize = 4
	inviteChecksumTag  = "sotto/v1/invite-checksum"
)

// Errors returned by ParseInvite.
var (
	ErrInviteFormat   = errors.New("node: not a sotto invite; paste the whole line that starts with sotto:// (your contact prints it with `sotto invite`)")
	ErrInviteChecksum = errors.New("node: the invite is damaged (checksum mismatch); copy the whole line again")
	ErrInviteVersion  = errors.New("node: the invite comes from a newer version of sotto; upgrade to add this contact")
)

var inviteEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Invite names a contact's account and device and where to reach it.
type Invite struct {
	Device keys.DeviceCertificate
	Addrs  []ma.Multiaddr
}

// Account is the inviting account's key.
func (inv *Invite) Account() keys.AccountPublic { return inv.Device.Account }

// PeerID is the network address of the inviting device.
func (inv *Invite) PeerID() (peer.ID, error) {
	id, err := peer.IDFromBytes(inv.Device.PeerID)
	if err != nil {
		return "", fmt.Errorf("node: invite's device peer ID: %w", err)
	}
	return id, nil
}

// AddrInfo returns the device's peer ID with the invite's addresses.
func (inv *Invite) AddrInfo() (peer.AddrInfo, error) {
	id, err := inv.PeerID()
	if err != nil {
		return peer.AddrInfo{}, err
	}
	return peer.AddrInfo{ID: id, Addrs: inv.Addrs}, nil
}

// String encodes the invite in its text form. Addresses beyond
// MaxInviteAddrs, or too long to encode, are left out.
func (inv *Invite) String() string {
	body := []byte{InviteVersion}
	cert := inv.Device.Marshal()
	body = binary.BigEndian.AppendUint16(body, uint16(len(cert)))
	body = append(body, cert...)
	var addrs [][]byte
	for _, a := range inv.Addrs {
		if b := a.Bytes(); len(b) > 0 && len(b) <= MaxInviteAddrSize && len(addrs) < MaxInviteAddrs {
			addrs = append(addrs, b)
		}
	}
	body = append(body, byte(len(addrs)))
	for _, b := range addrs {
		body = binary.BigEndian.AppendUint16(body, uint16(len(b)))
		body = append(body, b...)
	}
	body = append(body, inviteChecksum(body)...)
	return InviteScheme + strings.ToLower(inviteEncoding.EncodeToString(body))
}

func inviteChecksum(body []byte) []byte {
	h := sha256.New()
	h.Write([]byte(inviteChecksumTag))
	h.Write(body)
	return h.Sum(nil)[:inviteChecksumSize]
}

// ParseInvite decodes and validates an invite: checksum, canonical
// encoding, a device certificate signed by the account key, and a peer ID
// that libp2p accepts. Surrounding white space is ignored and the base32
// part is case-insensitive.
func ParseInvite(s string) (*Invite, error) {
	s = strings.TrimSpace(s)
	if len(s) < len(InviteScheme) || !strings.EqualFold(s[:len(InviteScheme)], InviteScheme) {
		return nil, ErrInviteFormat
	}
	raw, err := inviteEncoding.DecodeString(strings.ToUpper(s[len(InviteScheme):]))
	if err != nil || len(raw) < 1+inviteChecksumSize {
		return nil, ErrInviteFormat
	}
	body, sum := raw[:len(raw)-inviteChecksumSize], raw[len(raw)-inviteChecksumSize:]
	if !bytes.Equal(inviteChecksum(body), sum) {
		return nil, ErrInviteChecksum
	}
	if body[0] != InviteVersion {
		return nil, ErrInviteVersion
	}
	r := body[1:]
	take := func(n int) ([]byte, bool) {
		if n > len(r) {
			return nil, false
		}
		b := r[:n]
		r = r[n:]
		return b, true
	}
	u16 := func() (int, bool) {
		b, ok := take(2)
		if !ok {
			return 0, false
		}
		return int(binary.BigEndian.Uint16(b)), true
	}
	malformed := func(what string) error { return fmt.Errorf("%w (%s)", ErrInviteFormat, what) }

	n, ok := u16()
	if !ok || n > maxInviteCertSize {
		return nil, malformed("certificate length")
	}
	certBytes, ok := take(n)
	if !ok {
		return nil, malformed("truncated certificate")
	}
	cert, err := keys.ParseDeviceCertificate(certBytes)
	if err != nil {
		return nil, fmt.Errorf("node: the invite's device certificate is invalid: %w", err)
	}
	if err := cert.Verify(); err != nil {
		return nil, fmt.Errorf("node: the invite's device certificate is not signed by its account: %w", err)
	}
	inv := &Invite{Device: cert}
	if _, err := inv.PeerID(); err != nil {
		return nil, err
	}
	count, ok := take(1)
	if !ok || int(count[0]) > MaxInviteAddrs {
		return nil, malformed("address count")
	}
	for i := 0; i < int(count[0]); i++ {
		n, ok := u16()
		if !ok || n == 0 || n > MaxInviteAddrSize {
			return nil, malformed("address length")
		}
		b, ok := take(n)
		if !ok {
			return nil, malformed("truncated address")
		}
		a, err := ma.NewMultiaddrBytes(b)
		if err != nil || !bytes.Equal(a.Bytes(), b) {
			return nil, malformed("address encoding")
		}
		inv.Addrs = append(inv.Addrs, a)
	}
	if len(r) != 0 {
		return nil, malformed("trailing bytes")
	}
	return inv, nil
}
