// Package invite is the invite link: what one person gives another to
// become a contact and, when the new contact has never been on the
// network, to join it. It encodes and checks; it does no networking.
package invite

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/keys"
)

// An invite carries the account key (inside the device certificate), the
// device certificate, the addresses the device can be reached at and, in
// version 2, a few public peers the inviter knows to be good, through
// which a new user joins the network. Text form:
//
//	"sotto://" || lower-case unpadded base32( body || checksum )
//
// body, every integer big-endian:
//
//	version   uint8 = 1 (no peers) or 2 (1 to MaxPeers peers)
//	certLen   uint16, certificate   keys.DeviceCertificate encoding
//	addrCount uint8 (<= MaxAddrs), then per address:
//	addrLen   uint16 (1..MaxAddrSize), addr  binary multiaddr
//	version 2 only:
//	peerCount uint8 (1..MaxPeers), then per peer:
//	addrLen   uint16 (1..MaxAddrSize), addr  binary multiaddr ending in /p2p/PEERID
//	version 3 (an intro secret; peers and mailboxes may be none):
//	peerCount uint8 (0..MaxPeers), peers as in version 2
//	introSecret [32]byte
//	mbxCount  uint8 (0..MaxMailboxAddrs), then per mailbox address:
//	addrLen   uint16 (1..MaxAddrSize), addr  binary multiaddr ending in /p2p/PEERID
//
// checksum = first 4 bytes of SHA-256("sotto/v1/invite-checksum" || body).
// protocol/SPEC.md ("Invites") has the rejection rules.
const (
	Scheme            = "sotto://"
	Version           = 1
	VersionPeers      = 2
	VersionIntro      = 3
	MaxMailboxAddrs   = 8
	IntroSecretSize   = 32
	MaxAddrs          = 16
	MaxPeers          = 4
	MaxAddrSize       = 256
	maxCertSize       = 512
	checksumSize      = 4
	checksumTag       = "sotto/v1/invite-checksum"
	errVersionUnknown = "the invite comes from a newer version of sotto; upgrade to add this contact"
)

// Errors returned by Parse.
var (
	ErrFormat   = errors.New("invite: not a sotto invite; paste the whole line that starts with sotto:// (your contact prints it with `sotto invite`)")
	ErrChecksum = errors.New("invite: the invite is damaged (checksum mismatch); copy the whole line again")
	ErrVersion  = errors.New("invite: " + errVersionUnknown)
)

var encoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Invite names a contact's account and device, where to reach it, and
// peers to join the network through.
type Invite struct {
	Device keys.DeviceCertificate
	Addrs  []ma.Multiaddr
	Peers  []peer.AddrInfo // each with one address
	// IntroSecret (version 3) derives the device's version 2 intro tags;
	// Mailboxes are the version 2 mailboxes it receives at, the addresses
	// of one mailbox merged.
	IntroSecret *[IntroSecretSize]byte
	Mailboxes   []peer.AddrInfo
}

// Account is the inviting account's key.
func (inv *Invite) Account() keys.AccountPublic { return inv.Device.Account }

// PeerID is the network address of the inviting device.
func (inv *Invite) PeerID() (peer.ID, error) {
	id, err := peer.IDFromBytes(inv.Device.PeerID)
	if err != nil {
		return "", fmt.Errorf("invite: the device peer ID: %w", err)
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

// String encodes the invite in its text form. Addresses and peers beyond
// the limits, or too long to encode, are left out.
func (inv *Invite) String() string {
	var peers [][]byte
	for _, p := range inv.Peers {
		if len(p.Addrs) == 0 || len(peers) == MaxPeers {
			continue
		}
		full, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: p.ID, Addrs: p.Addrs[:1]})
		if err != nil || len(full) != 1 {
			continue
		}
		if b := full[0].Bytes(); len(b) <= MaxAddrSize {
			peers = append(peers, b)
		}
	}
	version := byte(Version)
	switch {
	case inv.IntroSecret != nil:
		version = VersionIntro
	case len(peers) > 0:
		version = VersionPeers
	}
	body := []byte{version}
	cert := inv.Device.Marshal()
	body = binary.BigEndian.AppendUint16(body, uint16(len(cert)))
	body = append(body, cert...)
	var addrs [][]byte
	for _, a := range inv.Addrs {
		if b := a.Bytes(); len(b) > 0 && len(b) <= MaxAddrSize && len(addrs) < MaxAddrs {
			addrs = append(addrs, b)
		}
	}
	body = appendList(body, addrs)
	if version >= VersionPeers {
		body = appendList(body, peers)
	}
	if version == VersionIntro {
		body = append(body, inv.IntroSecret[:]...)
		var mbxs [][]byte
		for _, m := range inv.Mailboxes {
			full, _ := peer.AddrInfoToP2pAddrs(&m)
			for _, a := range full {
				if b := a.Bytes(); len(b) <= MaxAddrSize && len(mbxs) < MaxMailboxAddrs {
					mbxs = append(mbxs, b)
				}
			}
		}
		body = appendList(body, mbxs)
	}
	body = append(body, checksum(body)...)
	return Scheme + strings.ToLower(encoding.EncodeToString(body))
}

func appendList(body []byte, items [][]byte) []byte {
	body = append(body, byte(len(items)))
	for _, b := range items {
		body = binary.BigEndian.AppendUint16(body, uint16(len(b)))
		body = append(body, b...)
	}
	return body
}

func checksum(body []byte) []byte {
	h := sha256.New()
	h.Write([]byte(checksumTag))
	h.Write(body)
	return h.Sum(nil)[:checksumSize]
}

// Parse decodes and validates an invite: checksum, canonical encoding, a
// device certificate signed by the account key, a peer ID that libp2p
// accepts, and peers that name themselves. Surrounding white space is
// ignored and the base32 part is case-insensitive.
func Parse(s string) (*Invite, error) {
	s = strings.TrimSpace(s)
	if len(s) < len(Scheme) || !strings.EqualFold(s[:len(Scheme)], Scheme) {
		return nil, ErrFormat
	}
	raw, err := encoding.DecodeString(strings.ToUpper(s[len(Scheme):]))
	if err != nil || len(raw) < 1+checksumSize {
		return nil, ErrFormat
	}
	body, sum := raw[:len(raw)-checksumSize], raw[len(raw)-checksumSize:]
	if !bytes.Equal(checksum(body), sum) {
		return nil, ErrChecksum
	}
	version := body[0]
	if version != Version && version != VersionPeers && version != VersionIntro {
		return nil, ErrVersion
	}
	r := reader(body[1:])
	malformed := func(what string) error { return fmt.Errorf("%w (%s)", ErrFormat, what) }

	n, ok := r.u16()
	if !ok || n > maxCertSize {
		return nil, malformed("certificate length")
	}
	certBytes, ok := r.take(n)
	if !ok {
		return nil, malformed("truncated certificate")
	}
	cert, err := keys.ParseDeviceCertificate(certBytes)
	if err != nil {
		return nil, fmt.Errorf("invite: the device certificate is invalid: %w", err)
	}
	if err := cert.Verify(); err != nil {
		return nil, fmt.Errorf("invite: the device certificate is not signed by its account: %w", err)
	}
	inv := &Invite{Device: cert}
	self, err := inv.PeerID()
	if err != nil {
		return nil, err
	}
	if inv.Addrs, err = r.addrs(0, MaxAddrs); err != nil {
		return nil, malformed(err.Error())
	}
	if version >= VersionPeers {
		list, err := r.addrs(min(1, VersionIntro-int(version)), MaxPeers)
		if err != nil {
			return nil, malformed("peers: " + err.Error())
		}
		for _, a := range list {
			ai, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil || len(ai.Addrs) != 1 {
				return nil, malformed("peer address without /p2p/PEERID")
			}
			if ai.ID == self {
				return nil, malformed("the inviter listed as its own peer")
			}
			for _, p := range inv.Peers {
				if p.ID == ai.ID {
					return nil, malformed("a peer listed twice")
				}
			}
			inv.Peers = append(inv.Peers, *ai)
		}
	}
	if version == VersionIntro {
		secret, ok := r.take(IntroSecretSize)
		if !ok {
			return nil, malformed("truncated intro secret")
		}
		inv.IntroSecret = (*[IntroSecretSize]byte)(bytes.Clone(secret))
		list, err := r.addrs(0, MaxMailboxAddrs)
		if err != nil {
			return nil, malformed("mailboxes: " + err.Error())
		}
		for _, a := range list {
			ai, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil || len(ai.Addrs) != 1 {
				return nil, malformed("mailbox address without /p2p/PEERID")
			}
			if i := slices.IndexFunc(inv.Mailboxes, func(m peer.AddrInfo) bool { return m.ID == ai.ID }); i >= 0 {
				inv.Mailboxes[i].Addrs = append(inv.Mailboxes[i].Addrs, ai.Addrs...)
				continue
			}
			inv.Mailboxes = append(inv.Mailboxes, *ai)
		}
	}
	if len(r) != 0 {
		return nil, malformed("trailing bytes")
	}
	return inv, nil
}

// reader reads the invite body.
type reader []byte

func (r *reader) take(n int) ([]byte, bool) {
	if n > len(*r) {
		return nil, false
	}
	b := (*r)[:n]
	*r = (*r)[n:]
	return b, true
}

func (r *reader) u16() (int, bool) {
	b, ok := r.take(2)
	if !ok {
		return 0, false
	}
	return int(binary.BigEndian.Uint16(b)), true
}

// addrs reads a count in [min, max] and that many canonical multiaddrs.
func (r *reader) addrs(min, max int) ([]ma.Multiaddr, error) {
	count, ok := r.take(1)
	if !ok || int(count[0]) < min || int(count[0]) > max {
		return nil, errors.New("address count")
	}
	var out []ma.Multiaddr
	for range int(count[0]) {
		n, ok := r.u16()
		if !ok || n == 0 || n > MaxAddrSize {
			return nil, errors.New("address length")
		}
		b, ok := r.take(n)
		if !ok {
			return nil, errors.New("truncated address")
		}
		a, err := ma.NewMultiaddrBytes(b)
		if err != nil || !bytes.Equal(a.Bytes(), b) {
			return nil, errors.New("address encoding")
		}
		out = append(out, a)
	}
	return out, nil
}
