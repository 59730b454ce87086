package mailbox

import (
	"context"
	"fmt"
	"net"
	"slices"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"
	mh "github.com/multiformats/go-multihash"

	"github.com/sotto-im/sotto/p2p"
)

// DirectoryKey is the one DHT key under which every version 2 mailbox
// node announces itself (protocol/SPEC.md, "Choosing and announcing
// mailboxes"). A user looks it up only when it chooses mailboxes, never
// per message.
const DirectoryKey = "sotto/mailbox/v2"

// DirectoryCID is DirectoryKey as a DHT provider key: a CIDv1 (raw codec)
// of its SHA-256 multihash.
func DirectoryCID() cid.Cid {
	sum, err := mh.Sum([]byte(DirectoryKey), mh.SHA2_256, -1)
	if err != nil {
		panic("mailbox: sha256 multihash: " + err.Error())
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// FindMailboxNodes asks the DHT for up to max version 2 mailbox nodes,
// within findProvidersTimeout.
func FindMailboxNodes(ctx context.Context, h *p2p.Host, max int) []peer.AddrInfo {
	ctx, cancel := context.WithTimeout(ctx, findProvidersTimeout)
	defer cancel()
	var out []peer.AddrInfo
	for ai := range h.DHT().FindProvidersAsync(ctx, DirectoryCID(), max) {
		if ai.ID != h.ID() && len(ai.Addrs) > 0 {
			out = append(out, ai)
		}
	}
	return out
}

// ChooseMailboxes picks k of candidates (in their order, which the caller
// shuffles), skipping those in avoid, so that no two chosen share an IPv4
// /16 network (or an IPv6 /32) while candidates in other networks remain;
// only then does it take a second from a network already chosen. A
// candidate is in every network one of its addresses is in, so an address
// it lists first proves nothing; candidates with no IP address (DNS names
// only) are all in one network.
func ChooseMailboxes(candidates []peer.AddrInfo, k int, avoid map[peer.ID]bool) []peer.AddrInfo {
	var out []peer.AddrInfo
	taken := map[peer.ID]bool{}
	nets := map[string]bool{}
	for pass := 0; pass < 2 && len(out) < k; pass++ {
		for _, c := range candidates {
			if len(out) == k {
				break
			}
			if avoid[c.ID] || taken[c.ID] {
				continue
			}
			ns := wideNets(c)
			if pass == 0 && slices.ContainsFunc(ns, func(n string) bool { return nets[n] }) {
				continue
			}
			for _, n := range ns {
				nets[n] = true
			}
			taken[c.ID] = true
			out = append(out, c)
		}
	}
	return out
}

// wideNets names the networks a mailbox's IP addresses are in: their IPv4
// /16 or IPv6 /32; "no-ip" if it has none.
func wideNets(ai peer.AddrInfo) []string {
	var out []string
	for _, a := range ai.Addrs {
		ip, err := manet.ToIP(a)
		if err != nil {
			continue
		}
		var n string
		if v4 := ip.To4(); v4 != nil {
			n = "ip4/" + v4.Mask(net.CIDRMask(16, 32)).String() + "/16"
		} else {
			n = "ip6/" + ip.Mask(net.CIDRMask(32, 128)).String() + "/32"
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = append(out, "no-ip")
	}
	return out
}

// provideDirectory announces this node under DirectoryKey.
func (s *Service) provideDirectory(ctx context.Context) error {
	if err := s.h.DHT().Provide(ctx, DirectoryCID(), true); err != nil {
		return fmt.Errorf("version 2 directory: %w", err)
	}
	return nil
}
