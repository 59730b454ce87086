package p2p

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

// TestInternetModeKeepsPrivateAddrsOut: with NAT traversal on (the
// default, a node on the internet), loopback and private addresses never
// reach the DHT: a bootstrap peer known only by a loopback address does
// not enter the routing table, the DHT runs in client mode until AutoNAT
// says the node is public, and the host publishes no such address of its
// own.
func TestInternetModeKeepsPrivateAddrsOut(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	boot := newTestHost(t, WithPublic(true))
	a := newTestHost(t, WithBootstrapPeers(boot.AddrInfo()))
	err := a.Bootstrap(ctx)
	if !errors.Is(err, ErrNoBootstrap) {
		t.Fatalf("Bootstrap over loopback in internet mode: %v, want ErrNoBootstrap (the routing table filter keeps loopback peers out)", err)
	}
	if a.LibP2P().Network().Connectedness(boot.ID()) != network.Connected {
		t.Fatal("the bootstrap peer is not even connected")
	}
	if n := a.DHT().RoutingTable().Size(); n != 0 {
		t.Fatalf("routing table holds %d peers reachable only over loopback", n)
	}
	if r := a.Reachability(); r.DHTMode != "client" || r.State != ReachUnknown {
		t.Fatalf("a NATed-or-unknown node reports %+v, want DHT client, reachability unknown", r)
	}
	if r := boot.Reachability(); r.DHTMode != "server" || r.State != ReachPublic {
		t.Fatalf("a public node reports %+v, want DHT server, reachability public", r)
	}
	for _, h := range []*Host{a, boot} {
		if own := h.LibP2P().Peerstore().Addrs(h.ID()); len(own) != 0 {
			t.Fatalf("host publishes non-public addresses of its own: %v", own)
		}
	}
	// The DHT's address filter drops what a peer would tell about others.
	in := []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/tcp/1"), ma.StringCast("/ip4/10.1.0.2/tcp/1"),
		ma.StringCast("/ip4/192.168.1.2/udp/1/quic-v1"), ma.StringCast("/ip6/::1/tcp/1"),
		ma.StringCast("/ip6/fe80::1/tcp/1"), ma.StringCast("/ip4/0.0.0.0/tcp/1"),
		ma.StringCast("/ip4/1.2.3.4/tcp/1"),
		ma.StringCast("/ip4/1.2.3.4/tcp/1/p2p/" + boot.ID().String() + "/p2p-circuit"),
		ma.StringCast("/ip4/10.0.0.1/tcp/1/p2p/" + boot.ID().String() + "/p2p-circuit"),
	}
	var got []string
	for _, a := range PublicAddrs(in) {
		got = append(got, a.String())
	}
	want := []string{"/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1/p2p/" + boot.ID().String() + "/p2p-circuit"}
	if !slices.Equal(got, want) {
		t.Fatalf("PublicAddrs = %v, want %v", got, want)
	}
}

// threeHosts starts a bootstrap node and two nodes that know only it, and
// bootstraps the two.
func threeHosts(t *testing.T, opts ...Option) (boot, a, b *Host, ra, rb *memReceiver) {
	t.Helper()
	ctx := testkit.Context(t, 60*time.Second)
	boot = newTestHost(t, opts...)
	ra, rb = &memReceiver{}, &memReceiver{}
	a = newTestHost(t, append(opts, WithBootstrapPeers(boot.AddrInfo()), WithReceiver(ra))...)
	b = newTestHost(t, append(opts, WithBootstrapPeers(boot.AddrInfo()), WithReceiver(rb))...)
	for _, h := range []*Host{a, b} {
		if err := h.Bootstrap(ctx); err != nil {
			t.Fatalf("Bootstrap: %v", err)
		}
	}
	return boot, a, b, ra, rb
}

func TestThreeHostsFindEachOther(t *testing.T) {
	// Loopback is a network without NAT: every host dials every other.
	_, a, b, ra, _ := threeHosts(t, WithNAT(false))
	ctx := testkit.Context(t, 60*time.Second)

	if len(a.LibP2P().Peerstore().Addrs(b.ID())) > 0 &&
		a.LibP2P().Network().Connectedness(b.ID()) == network.Connected {
		t.Log("a already connected to b through the DHT refresh")
	}
	closest, err := b.DHT().GetClosestPeers(ctx, string(a.ID()))
	if err != nil {
		t.Fatalf("GetClosestPeers: %v", err)
	}
	if !slices.Contains(closest, a.ID()) {
		t.Fatalf("GetClosestPeers(a) = %v, does not contain a", closest)
	}

	// Start b from a clean slate: no connection, no addresses for a.
	b.LibP2P().Network().ClosePeer(a.ID())
	b.LibP2P().Peerstore().ClearAddrs(a.ID())
	ai, err := b.FindPeer(ctx, a.ID())
	if err != nil {
		t.Fatalf("FindPeer: %v", err)
	}
	if ai.ID != a.ID() || len(ai.Addrs) == 0 {
		t.Fatalf("FindPeer returned %v", ai)
	}
	if b.LibP2P().Network().Connectedness(a.ID()) != network.Connected {
		t.Fatal("FindPeer did not leave b connected to a")
	}

	msgs := [][]byte{[]byte("first"), []byte("second"), bytes.Repeat([]byte{7}, MaxFrameSize)}
	for _, m := range msgs {
		if err := b.Sender().Send(ctx, a.ID(), m); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if len(ra.got) != len(msgs) {
		t.Fatalf("a received %d envelopes, want %d", len(ra.got), len(msgs))
	}
	for i, m := range msgs {
		if !bytes.Equal(ra.got[i], m) || ra.from[i] != b.ID() {
			t.Fatalf("envelope %d: got %d bytes from %s", i, len(ra.got[i]), ra.from[i])
		}
	}
}

func TestSendFindsUnknownPeer(t *testing.T) {
	// b has never seen a's addresses: Send looks a up through the DHT.
	_, a, b, ra, _ := threeHosts(t, WithNAT(false))
	ctx := testkit.Context(t, 60*time.Second)
	b.LibP2P().Network().ClosePeer(a.ID())
	b.LibP2P().Peerstore().ClearAddrs(a.ID())
	if err := b.Sender().Send(ctx, a.ID(), []byte("hello")); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if ra.count() != 1 {
		t.Fatalf("a received %d envelopes", ra.count())
	}
}

func TestFindPeerUnknown(t *testing.T) {
	_, a, _, _, _ := threeHosts(t, WithNAT(false))
	ctx := testkit.Context(t, 30*time.Second)
	ghost, err := peer.IDFromPrivateKey(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.FindPeer(ctx, ghost); !errors.Is(err, ErrPeerNotFound) {
		t.Fatalf("FindPeer(unknown) = %v, want ErrPeerNotFound", err)
	}
}

func TestBootstrapUnreachable(t *testing.T) {
	// TCP only: a dial to a closed TCP port fails at once, while QUIC
	// waits for its handshake timeout.
	gone := newTestHost(t, WithListenAddrs(testListenAddrs[0]))
	info := gone.AddrInfo()
	gone.Close()
	h := newTestHost(t, WithBootstrapPeers(info), WithNAT(false))
	ctx := testkit.Context(t, 30*time.Second)
	if err := h.Bootstrap(ctx); !errors.Is(err, ErrNoBootstrap) {
		t.Fatalf("Bootstrap = %v, want ErrNoBootstrap", err)
	}
}

func TestClearBackoff(t *testing.T) {
	a := newTestHost(t, WithNAT(false))
	gone := newTestHost(t, WithNAT(false), WithListenAddrs(testListenAddrs[0]))
	info := gone.AddrInfo()
	gone.Close()
	ctx := testkit.Context(t, 30*time.Second)
	if err := a.Connect(ctx, info); err == nil {
		t.Fatal("connect to a closed host succeeded")
	}
	backedOff := func() bool {
		for _, addr := range info.Addrs {
			if swarmBackoff(a).Backoff(info.ID, addr) {
				return true
			}
		}
		return false
	}
	if !backedOff() {
		t.Fatal("no dial backoff recorded after a failed dial")
	}
	a.ClearBackoff(info.ID)
	if backedOff() {
		t.Fatal("backoff still recorded after ClearBackoff")
	}
}
