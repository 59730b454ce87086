package mailbox

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// A user names its version 2 mailboxes to each contact inside the ratchet
// (content type protocol.ContentMailboxes) and in its invites, never in the
// public bundle (protocol/SPEC.md, "Choosing and announcing mailboxes").
//
//	body = count u8 (1..8) || count × (u16 length (1..256) || binary multiaddr ending in /p2p/PEERID)

const (
	// MaxAnnouncedAddrs bounds the addresses of one announcement.
	MaxAnnouncedAddrs = 8
	// maxAnnouncedAddr bounds one binary multiaddr.
	maxAnnouncedAddr = 256
)

// ErrBadAnnouncement is a mailbox announcement that breaks a rule of the
// SPEC; the receiver keeps the mailboxes it knew.
var ErrBadAnnouncement = errors.New("mailbox: malformed mailbox announcement")

// EncodeAnnouncement encodes mbxs, each address of each mailbox as one
// entry with /p2p/ID.
func EncodeAnnouncement(mbxs []peer.AddrInfo) ([]byte, error) {
	var entries [][]byte
	for _, m := range mbxs {
		full, err := peer.AddrInfoToP2pAddrs(&m)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadAnnouncement, err)
		}
		for _, a := range full {
			entries = append(entries, a.Bytes())
		}
	}
	if len(entries) == 0 || len(entries) > MaxAnnouncedAddrs {
		return nil, fmt.Errorf("%w: %d addresses (1..%d); announce fewer mailboxes or addresses", ErrBadAnnouncement, len(entries), MaxAnnouncedAddrs)
	}
	b := []byte{byte(len(entries))}
	for _, e := range entries {
		if len(e) > maxAnnouncedAddr {
			return nil, fmt.Errorf("%w: an address of %d bytes (at most %d)", ErrBadAnnouncement, len(e), maxAnnouncedAddr)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
		b = append(b, e...)
	}
	return b, nil
}

// ParseAnnouncement decodes an announcement into mailboxes, merging the
// addresses of one peer, in the order they first appear.
func ParseAnnouncement(b []byte) ([]peer.AddrInfo, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadAnnouncement, fmt.Sprintf(format, args...))
	}
	if len(b) == 0 {
		return nil, bad("empty")
	}
	n := int(b[0])
	if n == 0 || n > MaxAnnouncedAddrs {
		return nil, bad("%d addresses (1..%d)", n, MaxAnnouncedAddrs)
	}
	p := b[1:]
	var out []peer.AddrInfo
	index := map[peer.ID]int{}
	for i := range n {
		if len(p) < 2 {
			return nil, bad("entry %d cut short", i)
		}
		l := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if l == 0 || l > maxAnnouncedAddr || len(p) < l {
			return nil, bad("entry %d of %d bytes in %d", i, l, len(p))
		}
		a, err := ma.NewMultiaddrBytes(p[:l])
		if err != nil {
			return nil, bad("entry %d is not a multiaddr: %v", i, err)
		}
		p = p[l:]
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, bad("entry %d does not end in /p2p/ with a peer ID: %v", i, err)
		}
		if j, ok := index[ai.ID]; ok {
			out[j].Addrs = append(out[j].Addrs, ai.Addrs...)
			continue
		}
		index[ai.ID] = len(out)
		out = append(out, *ai)
	}
	if len(p) != 0 {
		return nil, bad("%d bytes after the last entry", len(p))
	}
	return out, nil
}
