package p2p

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

// ProtocolPrefix namespaces Sotto's DHT protocol (/sotto/kad/1.0.0), so a
// Sotto node never talks to the public IPFS DHT.
const ProtocolPrefix = "/sotto"

// Bounds of peer lookups.
const (
	// findPeerTimeout bounds the DHT's own FindPeer before the fallback.
	findPeerTimeout = 15 * time.Second
	// bootstrapConnectTimeout bounds the connection to one bootstrap peer.
	bootstrapConnectTimeout = 10 * time.Second
	// routingTableWait bounds the wait for a connected bootstrap peer to
	// enter the routing table (after identify says it speaks the DHT).
	routingTableWait = 10 * time.Second
	// routingTablePoll is how often that wait looks at the table.
	routingTablePoll = 20 * time.Millisecond
)

// Peer routing errors.
var (
	ErrNoBootstrap  = errors.New("p2p: could not connect to any bootstrap peer")
	ErrPeerNotFound = errors.New("p2p: peer not found")
)

// Bootstrap connects to the configured bootstrap peers, then bootstraps the
// DHT (a refresh of the routing table). A DHT on a small or private network
// needs peers before it bootstraps. With no configured peers it only
// refreshes; with peers, it fails if none of them answered.
func (n *Host) Bootstrap(ctx context.Context) error {
	return n.Join(ctx, n.cfg.bootstrap)
}

// Join connects to peers (bootstrap peers, the peers an invite carries)
// and refreshes the DHT's routing table through them. It fails if none of
// them answered or none entered the routing table.
func (n *Host) Join(ctx context.Context, peers []peer.AddrInfo) error {
	if n.isClosed() {
		return ErrClosed
	}
	// All at once: a remembered peer that is gone costs its dial
	// timeout, not everyone's.
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
		ok   int
	)
	for _, ai := range peers {
		if ai.ID == n.h.ID() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, bootstrapConnectTimeout)
			defer cancel()
			n.ClearBackoff(ai.ID)
			err := n.h.Connect(cctx, ai)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", ai.ID, err))
				return
			}
			ok++
		}()
	}
	wg.Wait()
	if len(peers) > 0 && ok == 0 && len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrNoBootstrap, errors.Join(errs...))
	}
	if ok > 0 {
		// Connected is not yet in the routing table: the DHT adds a peer
		// once identify confirms it speaks the protocol. A refresh started
		// before that finds an empty table and does nothing.
		if err := n.waitRoutingTable(ctx); err != nil {
			return err
		}
	}
	if err := n.dht.Bootstrap(ctx); err != nil {
		return fmt.Errorf("p2p: dht bootstrap: %w", err)
	}
	// Wait for one refresh so that lookups right after Bootstrap see the
	// network. The refresh may fail on a network of one; that is not fatal.
	select {
	case <-n.dht.RefreshRoutingTable():
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// waitRoutingTable waits, within routingTableWait, for the routing table
// to hold a peer.
func (n *Host) waitRoutingTable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, routingTableWait)
	defer cancel()
	t := time.NewTicker(routingTablePoll)
	defer t.Stop()
	for n.dht.RoutingTable().Size() == 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: no bootstrap peer entered the routing table: %w", ErrNoBootstrap, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// FindPeer finds p's addresses and connects to it. It asks the DHT's
// FindPeer first; on a network of a few nodes that can fail where a
// GetClosestPeers walk towards p's key still learns p's addresses, so that
// is the fallback. It returns the addresses it connected with.
func (n *Host) FindPeer(ctx context.Context, p peer.ID) (peer.AddrInfo, error) {
	if n.isClosed() {
		return peer.AddrInfo{}, ErrClosed
	}
	if n.h.Network().Connectedness(p) == network.Connected {
		return n.h.Peerstore().PeerInfo(p), nil
	}
	fctx, cancel := context.WithTimeout(ctx, findPeerTimeout)
	ai, err := n.dht.FindPeer(fctx, p)
	cancel()
	if err == nil && len(ai.Addrs) > 0 {
		if cerr := n.h.Connect(ctx, ai); cerr == nil {
			return ai, nil
		}
	}
	if ctx.Err() != nil {
		return peer.AddrInfo{}, ctx.Err()
	}
	// Fallback: walk towards p; peers that know p return it with its
	// addresses, which the DHT adds to the peerstore.
	closest, cerr := n.dht.GetClosestPeers(ctx, string(p))
	if cerr != nil && len(closest) == 0 {
		return peer.AddrInfo{}, fmt.Errorf("%w: %s: %w", ErrPeerNotFound, p, errors.Join(err, cerr))
	}
	ai = n.h.Peerstore().PeerInfo(p)
	if len(ai.Addrs) == 0 {
		return peer.AddrInfo{}, fmt.Errorf("%w: %s: no addresses", ErrPeerNotFound, p)
	}
	n.ClearBackoff(p)
	if err := n.h.Connect(ctx, ai); err != nil {
		return peer.AddrInfo{}, fmt.Errorf("%w: %s: %w", ErrPeerNotFound, p, err)
	}
	return ai, nil
}

// ClearBackoff forgets failed dials to p, so the next dial tries at once.
// After a failed dial the swarm refuses to dial p again for a while; call
// this when p is known to be back (it reached us, a mailbox saw it, the
// user asked to retry).
func (n *Host) ClearBackoff(p peer.ID) {
	if sw, ok := n.h.Network().(*swarm.Swarm); ok {
		sw.Backoff().Clear(p)
	}
}
