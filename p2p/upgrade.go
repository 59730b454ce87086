package p2p

import (
	"context"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Trying hole punching again.
//
// libp2p's hole punching (DCUtR) runs once, when a relayed connection
// comes in, and not at all if the host holds a direct connection to the
// peer then. When a peer restarts or moves while the path between the
// two is cut, the other side keeps its direct connection to the peer
// that is gone until it times out; the peer's new node reaches it
// through a relay meanwhile, that relayed connection is not punched, and
// once the dead connection closes nothing tries again: the pair stays
// relayed for as long as the relayed connection lives, and the gossip
// router, which does not use relayed connections, has no path between
// them (internal/nattest, case 10).
//
// So a node looks, every upgradeTick, at the protected peers (its
// contacts and mailboxes) that it reaches only through relays. Once such
// a peer has been relay-only for upgradeAfter, the node closes the
// relayed connections and dials the peer again through its relays: the
// new connection comes in at the peer, whose hole punching runs on it. Of two peers, only the one with the lower
// peer ID does this, so that they do not close each other's new
// connections. Each further try waits twice as long as the one before,
// up to upgradeMaxWait, since a NAT that maps each flow to a new port
// defeats every try; a direct connection ends the tries. A peer with
// messages in flight on its stream is left until they are acknowledged.
const (
	upgradeTick    = 5 * time.Second
	upgradeAfter   = 20 * time.Second
	upgradeMaxWait = 10 * time.Minute
	// upgradeDialTimeout bounds the dial through a relay after closing.
	upgradeDialTimeout = 15 * time.Second
)

// upgradeTiming is when relay-only peers are tried again.
type upgradeTiming struct {
	tick, after, maxWait time.Duration
}

var defaultUpgradeTiming = upgradeTiming{tick: upgradeTick, after: upgradeAfter, maxWait: upgradeMaxWait}

// upgrader keeps, per protected peer reached only through relays, when it
// is next tried.
type upgrader struct {
	mu    sync.Mutex
	peers map[peer.ID]*upgradeState
	tries uint64 // relayed connections reopened, over all peers
}

type upgradeState struct {
	next    time.Time // when to try next
	tries   int       // tries since the peer became relay-only
	dialing bool      // a reopening's dial is under way
}

// upgradeLoop runs upgradeRelayed every tick until the host closes.
func (n *Host) upgradeLoop() {
	t := time.NewTicker(n.cfg.upgrade.tick)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.upgradeRelayed()
		}
	}
}

// upgradeRelayed makes one round: it forgets peers that are direct or
// gone, and reopens the relayed connections of those whose time came.
func (n *Host) upgradeRelayed() {
	now := n.cfg.now()
	u := &n.upgrades
	u.mu.Lock()
	defer u.mu.Unlock()
	seen := make(map[peer.ID]bool)
	for _, p := range n.h.Network().Peers() {
		if p < n.ID() || !n.IsProtected(p, "") || !n.relayOnly(p) {
			continue
		}
		seen[p] = true
		st := u.peers[p]
		if st == nil {
			st = &upgradeState{next: now.Add(n.cfg.upgrade.after)}
			u.peers[p] = st
		}
		if now.Before(st.next) || n.sender.busy(p) {
			continue
		}
		st.tries++
		st.next = now.Add(min(n.cfg.upgrade.after<<st.tries, n.cfg.upgrade.maxWait))
		u.tries++
		n.cfg.logger.Info("reopening a relayed connection so that hole punching runs again",
			"peer", p, "try", st.tries, "next_try", st.next.Format(time.TimeOnly))
		st.dialing = true
		n.reopenRelayed(p, st)
	}
	// A peer reached directly, or gone, starts again from the first wait
	// when it is next relay-only; not while its reopening is dialling.
	for p, st := range u.peers {
		if !seen[p] && !st.dialing {
			delete(u.peers, p)
		}
	}
}

// relayOnly reports whether every open connection to p is relayed (and at
// least one is open).
func (n *Host) relayOnly(p peer.ID) bool {
	conns := n.h.Network().ConnsToPeer(p)
	for _, c := range conns {
		if !c.Stat().Limited && !IsRelayed(c.RemoteMultiaddr()) {
			return false
		}
	}
	return len(conns) > 0
}

// reopenRelayed closes the relayed connections to p and dials p again
// through a relay, in the background; then it clears st.dialing.
func (n *Host) reopenRelayed(p peer.ID, st *upgradeState) {
	for _, c := range n.h.Network().ConnsToPeer(p) {
		if c.Stat().Limited || IsRelayed(c.RemoteMultiaddr()) {
			c.Close()
		}
	}
	n.goFunc(func() {
		defer func() {
			n.upgrades.mu.Lock()
			st.dialing = false
			n.upgrades.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(n.ctx, upgradeDialTimeout)
		defer cancel()
		ctx = network.WithAllowLimitedConn(ctx, "sotto hole punch")
		if err := n.h.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
			n.cfg.logger.Debug("dial through a relay for hole punching failed", "peer", p, "err", err)
		}
	})
}

// RelayReopens is how many relayed connections this host closed and
// dialled again so that hole punching would run on them.
func (n *Host) RelayReopens() uint64 {
	n.upgrades.mu.Lock()
	defer n.upgrades.mu.Unlock()
	return n.upgrades.tries
}
