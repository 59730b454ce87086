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
func (n *Node) rememberPeers(ps []peer.AddrInfo) {
	if len(ps) == 0 {
		return
	}
	self, _ := peer.Decode(n.ident.PeerID)
	err := n.db.Update(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingPeers)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err // an unreadable list is kept, not overwritten
		}
		return tx.PutSetting(settingPeers, p2p.EncodePeers(p2p.MergePeers(ps, p2p.DecodePeers(b), self, maxKnownPeers)))
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

// joinVia remembers the peers an invite carries and, when the node runs,
// joins the network through them: a new user who adds a contact from an
// invite needs no other setup.
func (n *Node) joinVia(ps []peer.AddrInfo) {
	if len(ps) == 0 {
		return
	}
	n.rememberPeers(ps)
	h := n.Host()
	if h == nil {
		return
	}
	n.spawn(func() {
		ctx, cancel := context.WithTimeout(n.ctx, joinTimeout)
		defer cancel()
		if err := h.Join(ctx, ps); err != nil {
			n.cfg.Logger.Info("joining through the invite's peers", "err", err)
			return
		}
		n.kickPublish()
		n.kickOutbox()
		n.kickSync()
	})
}

// saveGoodPeers remembers the good public peers connected now.
func (n *Node) saveGoodPeers() {
	if h := n.Host(); h != nil {
		n.rememberPeers(h.GoodPeers(maxKnownPeers))
	}
}
