package p2p

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Peers to join through: a node keeps the good public peers it meets
// (GoodPeers), saves them (EncodePeers) and bootstraps from them at its
// next start, together with --bootstrap and the data directory's
// bootstrap file (ReadBootstrapFile). No address is compiled in.

// MaxBootstrapFileSize bounds the bootstrap file.
const MaxBootstrapFileSize = 64 << 10

// GoodPeers lists, up to max, peers worth joining through: connected
// directly (not through a relay), speaking Sotto's DHT as servers, and
// with an address a stranger can dial (on a network without NAT, any
// specific address). Each comes with the addresses to dial.
func (n *Host) GoodPeers(max int) []peer.AddrInfo {
	var out []peer.AddrInfo
	ps := n.h.Peerstore()
	kad := ProtocolPrefix + "/kad/1.0.0"
	for _, p := range n.h.Network().Peers() {
		if len(out) == max {
			break
		}
		if !n.HasDirect(p) {
			continue
		}
		if ok, err := ps.SupportsProtocols(p, protocol.ID(kad)); err != nil || len(ok) == 0 {
			continue
		}
		var addrs []ma.Multiaddr
		for _, a := range ps.Addrs(p) {
			if IsRelayed(a) {
				continue
			}
			if ip, err := manet.ToIP(a); err != nil || ip.IsUnspecified() {
				continue
			}
			addrs = append(addrs, a)
		}
		if n.cfg.nat {
			addrs = PublicAddrs(addrs)
		}
		if len(addrs) > 0 {
			out = append(out, peer.AddrInfo{ID: p, Addrs: addrs})
		}
	}
	return out
}

// EncodeAddrs is the stored form of an address list: per address, a
// length byte and the binary multiaddr (longer ones are left out).
func EncodeAddrs(addrs []ma.Multiaddr) []byte {
	var b []byte
	for _, a := range addrs {
		if ab := a.Bytes(); len(ab) <= 255 {
			b = append(b, byte(len(ab)))
			b = append(b, ab...)
		}
	}
	return b
}

// DecodeAddrs reads EncodeAddrs's form, skipping what does not parse.
func DecodeAddrs(b []byte) []ma.Multiaddr {
	var out []ma.Multiaddr
	for len(b) > 0 {
		l := int(b[0])
		if 1+l > len(b) {
			break
		}
		if a, err := ma.NewMultiaddrBytes(b[1 : 1+l]); err == nil {
			out = append(out, a)
		}
		b = b[1+l:]
	}
	return out
}

// EncodePeers is the stored form of a peer list: EncodeAddrs of its
// addresses, each ending in /p2p/PEERID.
func EncodePeers(peers []peer.AddrInfo) []byte {
	var all []ma.Multiaddr
	for _, p := range peers {
		if full, err := peer.AddrInfoToP2pAddrs(&p); err == nil {
			all = append(all, full...)
		}
	}
	return EncodeAddrs(all)
}

// DecodePeers reads EncodePeers's form, skipping what does not parse.
// The order is kept: a peer is where its first address was.
func DecodePeers(b []byte) []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, a := range DecodeAddrs(b) {
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			continue
		}
		if i := slices.IndexFunc(out, func(p peer.AddrInfo) bool { return p.ID == ai.ID }); i >= 0 {
			out[i].Addrs = append(out[i].Addrs, ai.Addrs...)
		} else {
			out = append(out, *ai)
		}
	}
	return out
}

// MergePeers puts fresh before old (a peer in both keeps fresh's
// addresses), leaves out self, and keeps at most max.
func MergePeers(fresh, old []peer.AddrInfo, self peer.ID, max int) []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, p := range append(slices.Clone(fresh), old...) {
		if len(out) < max && p.ID != self && !slices.ContainsFunc(out, func(q peer.AddrInfo) bool { return q.ID == p.ID }) {
			out = append(out, p)
		}
	}
	return out
}

// ReadBootstrapFile reads a bootstrap file: one multiaddr ending in
// /p2p/PEERID per line; blank lines and lines starting with # are
// ignored. A missing file is no error.
func ReadBootstrapFile(path string) ([]peer.AddrInfo, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("p2p: bootstrap file: %w", err)
	}
	if len(b) > MaxBootstrapFileSize {
		return nil, fmt.Errorf("%w: bootstrap file %s is larger than %d bytes", ErrBadConfig, path, MaxBootstrapFileSize)
	}
	var addrs []ma.Multiaddr
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		a, err := ma.NewMultiaddr(s)
		if err == nil {
			_, err = peer.AddrInfoFromP2pAddr(a)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %q is not a multiaddr ending in /p2p/PEERID: %w", ErrBadConfig, path, line, s, err)
		}
		addrs = append(addrs, a)
	}
	return peer.AddrInfosFromP2pAddrs(addrs...)
}
