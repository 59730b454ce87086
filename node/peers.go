package node

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/store"
)

// Peers to join the network through, without a central list: the good
// public peers this node met (saved in the store), the peers of the
// invites it added, the data directory's bootstrap file and --bootstrap.
const (
	settingPeers = "peers"
	// BootstrapFile in the data directory lists more peers to join
	// through, one multiaddr ending in /p2p/PEERID per line.
	BootstrapFile = "bootstrap"
	// maxKnownPeers bounds the peers remembered.
	maxKnownPeers = 32
	// joinTimeout bounds joining through an invite's peers.
	joinTimeout = 30 * time.Second
)

// knownPeers are the peers this node remembers, most recent first.
func (n *Node) knownPeers() []peer.AddrInfo {
	var out []peer.AddrInfo
	n.db.View(func(tx *store.Tx) error {
		if b, err := tx.GetSetting(settingPeers); err == nil {
			out = p2p.DecodePeers(b)
		}
		return nil
	})
	return out
}

// rememberPeers puts ps before the peers remembered (a peer already there
// moves up, with the new addresses) and keeps maxKnownPeers.
func (n *Node) rememberPeers(ps []peer.AddrInfo) { n.mergePeers(ps, true) }

// mergePeers merges ps into the peers remembered, before them (first)
// or after them, and keeps maxKnownPeers.
func (n *Node) mergePeers(ps []peer.AddrInfo, first bool) {
	if len(ps) == 0 {
		return
	}
	self, _ := peer.Decode(n.ident.PeerID)
	err := n.db.Update(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingPeers)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err // an unreadable list is kept, not overwritten
		}
		fresh, old := ps, p2p.DecodePeers(b)
		if !first {
			fresh, old = old, ps
		}
		return tx.PutSetting(settingPeers, p2p.EncodePeers(p2p.MergePeers(fresh, old, self, maxKnownPeers)))
	})
	if err != nil {
		n.cfg.Logger.Warn("remembering peers", "err", err)
	}
}

// bootstrapPeers are the peers Start joins through: --bootstrap, the
// bootstrap file, then the peers remembered.
func (n *Node) bootstrapPeers() []peer.AddrInfo {
	all := slices.Clone(n.cfg.Bootstrap)
	file, err := p2p.ReadBootstrapFile(filepath.Join(n.cfg.DataDir, BootstrapFile))
	if err != nil {
		n.cfg.Logger.Warn("ignoring the bootstrap file", "err", err)
	}
	for _, p := range append(file, n.knownPeers()...) {
		if !slices.ContainsFunc(all, func(q peer.AddrInfo) bool { return q.ID == p.ID }) {
			all = append(all, p)
		}
	}
	return all
}

// joinVia joins the network through the peers an invite carries, when
// the node runs: a new user who adds a contact from an invite needs no
// other setup. It remembers those of them that proved good (GoodPeers:
// connected directly, DHT servers, with addresses a stranger can dial),
// not what the invite claims. Added while the node is stopped, they are
// kept behind the peers it met itself, with only the addresses a stranger
// can dial (any on a network without NAT), for its next start.
func (n *Node) joinVia(ps []peer.AddrInfo) {
	if len(ps) == 0 {
		return
	}
	h := n.Host()
	if h == nil {
		n.rememberUnverified(ps)
		return
	}
	n.spawn(func() {
		ctx, cancel := context.WithTimeout(n.ctx, joinTimeout)
		defer cancel()
		if err := h.Join(ctx, ps); err != nil {
			n.cfg.Logger.Info("joining through the invite's peers", "err", err)
			return
		}
		n.saveGoodPeers()
		n.kickPublish()
		n.kickOutbox()
		n.kickSync()
	})
}

// rememberUnverified keeps ps after the peers remembered, each with only
// the addresses a stranger can dial (on a network without NAT, any).
func (n *Node) rememberUnverified(ps []peer.AddrInfo) {
	var keep []peer.AddrInfo
	for _, p := range ps {
		addrs := p.Addrs
		if !n.cfg.NoNAT {
			addrs = p2p.PublicAddrs(addrs)
		}
		if len(addrs) > 0 {
			keep = append(keep, peer.AddrInfo{ID: p.ID, Addrs: addrs})
		}
	}
	n.mergePeers(keep, false)
}

// saveGoodPeers remembers the good public peers connected now.
func (n *Node) saveGoodPeers() {
	if h := n.Host(); h != nil {
		n.rememberPeers(h.GoodPeers(maxKnownPeers))
	}
}
