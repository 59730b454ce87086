package p2p

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

// stepClock is a clock the test moves by hand.
type stepClock struct{ ns atomic.Int64 }

func (c *stepClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *stepClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// inboundRelayed counts the relayed connections that come in at a host,
// per remote peer: what libp2p's hole punching runs on.
type inboundRelayed struct {
	mu sync.Mutex
	n  map[peer.ID]int
}

func (r *inboundRelayed) Connected(_ network.Network, c network.Conn) {
	if c.Stat().Direction == network.DirInbound && IsRelayed(c.RemoteMultiaddr()) {
		r.mu.Lock()
		r.n[c.RemotePeer()]++
		r.mu.Unlock()
	}
}
func (r *inboundRelayed) Disconnected(network.Network, network.Conn) {}
func (r *inboundRelayed) Listen(network.Network, ma.Multiaddr)       {}
func (r *inboundRelayed) ListenClose(network.Network, ma.Multiaddr)  {}

// natGate plays a NAT on loopback: while it is on, a host dials no peer
// but the relay directly, so that peers meet only through the relay and
// every hole punch (a direct dial from each side) fails.
type natGate struct {
	on    atomic.Bool
	relay peer.ID
}

func (g *natGate) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	return !g.on.Load() || p == g.relay || IsRelayed(a)
}
func (g *natGate) InterceptPeerDial(peer.ID) bool              { return true }
func (g *natGate) InterceptAccept(network.ConnMultiaddrs) bool { return true }
func (g *natGate) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}
func (g *natGate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

func (r *inboundRelayed) from(p peer.ID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[p]
}

// TestRelayOnlyContactReopened: a contact reached only through a relay
// gets a fresh relayed connection, coming in at the contact (where
// libp2p's hole punching runs on it), once the contact has been
// relay-only for a while; then again, each time after twice the wait
// before. Of the two, only the peer with the lower ID acts; a peer that
// is not protected is left alone. While the test plays a NAT that
// defeats hole punching, the connection stays relayed; a direct
// connection ends the tries. (internal/nattest's case 10 shows the punch
// itself, through real NAT.)
func TestRelayOnlyContactReopened(t *testing.T) {
	ctx := testkit.Context(t, 90*time.Second)
	const after = 10 * time.Second
	relay := newTestHost(t, WithPublic(true), WithRelayService(DefaultRelayLimits()))
	var clock stepClock
	clock.advance(time.Hour)
	gate := &natGate{relay: relay.ID()}
	gate.on.Store(true)
	opts := []Option{
		WithClock(clock.now),
		withUpgradeTiming(20*time.Millisecond, after, 4*after),
		withGater(gate),
	}
	x, y := newTestHost(t, opts...), newTestHost(t, opts...)
	lo, hi := x, y
	if hi.ID() < lo.ID() {
		lo, hi = hi, lo
	}
	otherGate := &natGate{relay: relay.ID()}
	otherGate.on.Store(true)
	other := newTestHost(t, withGater(otherGate))

	// Each holds a reservation at the relay, and knows the others only
	// by their relayed addresses.
	circuit := ma.StringCast(relay.Addrs()[0].String() + "/p2p/" + relay.ID().String() + "/p2p-circuit")
	for _, h := range []*Host{lo, hi, other} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		testkit.WaitFor(t, wctx, func() bool {
			_, err := client.Reserve(ctx, h.LibP2P(), relay.AddrInfo())
			return err == nil
		})
		cancel()
		for _, o := range []*Host{lo, hi, other} {
			if o != h {
				o.LibP2P().Peerstore().AddAddrs(h.ID(), []ma.Multiaddr{circuit}, time.Hour)
			}
		}
	}
	seen := &inboundRelayed{n: make(map[peer.ID]int)}
	hi.LibP2P().Network().Notify(seen)
	seenOther := &inboundRelayed{n: make(map[peer.ID]int)}
	other.LibP2P().Network().Notify(seenOther)

	// hi dials lo through the relay (as a contact does to a node that has
	// just started), and other does too; lo and hi are each other's
	// contacts, other is nobody's.
	lo.Protect(hi.ID(), "contact")
	hi.Protect(lo.ID(), "contact")
	for _, h := range []*Host{hi, other} {
		if err := h.LibP2P().Connect(network.WithAllowLimitedConn(ctx, "test"), peer.AddrInfo{ID: lo.ID()}); err != nil {
			t.Fatalf("dial through the relay: %v", err)
		}
		if !lo.relayOnly(h.ID()) {
			t.Fatalf("the connection to %s is not relayed: %+v", h.ID(), lo.Connections())
		}
	}
	otherConn := lo.LibP2P().Network().ConnsToPeer(other.ID())[0]

	// idle waits a few ticks and checks that nobody reopened anything.
	idle := func(what string, want uint64) {
		t.Helper()
		time.Sleep(200 * time.Millisecond)
		if got := lo.RelayReopens(); got != want {
			t.Fatalf("%s: lo reopened %d relayed connections, want %d", what, got, want)
		}
	}
	// reopened waits for lo's nth reopening, and for hi to see lo's
	// connection come in.
	reopened := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for lo.RelayReopens() != uint64(n) || seen.from(lo.ID()) != n || !lo.relayOnly(hi.ID()) {
			if time.Now().After(deadline) {
				t.Fatalf("try %d: lo reopened %d relayed connections, hi saw %d come in from lo, lo's connections: %+v",
					n, lo.RelayReopens(), seen.from(lo.ID()), lo.Connections())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	idle("before the wait", 0)
	clock.advance(after)
	reopened(1)

	// The next try waits 2×after, the one after 4×after (the cap).
	clock.advance(after + after/2)
	idle("1.5×after after the first try", 1)
	clock.advance(after)
	reopened(2)
	clock.advance(3 * after)
	idle("3×after after the second try", 2)
	clock.advance(after)
	reopened(3)
	clock.advance(4 * after)
	reopened(4)

	if n := hi.RelayReopens(); n != 0 {
		t.Errorf("hi, the higher peer ID, reopened %d connections; only the lower one acts", n)
	}
	if c := lo.LibP2P().Network().ConnsToPeer(other.ID()); len(c) != 1 || c[0].ID() != otherConn.ID() {
		t.Errorf("the relayed connection of a peer that is not protected was replaced: %v", c)
	}
	if n := seenOther.from(lo.ID()); n != 0 {
		t.Errorf("lo dialled a peer that is not protected %d times", n)
	}

	// A direct connection ends the tries. (Hole punching itself needs
	// public addresses, which loopback has not; internal/nattest shows it
	// through real NAT.)
	gate.on.Store(false)
	direct := peer.AddrInfo{ID: hi.ID(), Addrs: hi.LibP2P().Network().ListenAddresses()}
	if err := lo.LibP2P().Connect(network.WithForceDirectDial(ctx, "test"), direct); err != nil {
		t.Fatalf("direct dial: %v", err)
	}
	clock.advance(10 * after)
	idle("with a direct connection", 4)
}
