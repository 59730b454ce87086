package node

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

// randomPeer is a peer ID nobody runs, at addrs.
func randomPeer(t *testing.T, addrs ...string) peer.AddrInfo {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	info := peer.AddrInfo{ID: id}
	for _, a := range addrs {
		info.Addrs = append(info.Addrs, ma.StringCast(a))
	}
	return info
}

// inviteWithPeers is bob's invite naming ps as peers to join through.
func inviteWithPeers(t *testing.T, bob *Node, ps ...peer.AddrInfo) string {
	t.Helper()
	inv, err := bob.invite()
	if err != nil {
		t.Fatal(err)
	}
	inv.Addrs, inv.Peers = nil, ps
	return inv.String()
}

// TestInvitePeersRememberedWhenGood: a running node joins through the
// peers of an invite it adds and remembers, for its next start, those
// that proved good (a DHT server it connected to), not a peer the invite
// names that nobody runs. Added to a stopped node behind a NAT, an
// invite's peers are kept after the peers the node met itself and with
// their public addresses only: a loopback or private address never
// becomes a bootstrap address, and a peer with no other is dropped.
func TestInvitePeersRememberedWhenGood(t *testing.T) {
	tn := newTestNet(t)
	alice, bob := tn.start(tn.initNode("alice")), tn.start(tn.initNode("bob"))
	ctx := testkit.Context(t, 60*time.Second)
	ghost := randomPeer(t, "/ip4/127.0.0.1/tcp/9")
	good := peer.AddrInfo{ID: tn.boot.ID(), Addrs: tn.boot.AddrInfo().Addrs[:1]}
	if _, err := alice.AddContact("bob", inviteWithPeers(t, bob, ghost, good)); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool {
		for _, p := range alice.knownPeers() {
			if p.ID == good.ID {
				return true
			}
		}
		return false
	})
	for _, p := range alice.knownPeers() {
		if p.ID == ghost.ID {
			t.Fatalf("alice remembers %s, which the invite named and nobody runs", p.ID)
		}
	}

	// A stopped node behind a NAT (the default).
	dir := tn.initNode("carol")
	carol, err := Open(Config{DataDir: dir, Logger: testLogger("node", "carol")})
	if err != nil {
		t.Fatal(err)
	}
	defer carol.Close()
	met := randomPeer(t, "/ip4/198.51.100.20/tcp/4747")
	carol.rememberPeers([]peer.AddrInfo{met})
	// An invite carries one address per peer.
	loopback, private := randomPeer(t, "/ip4/127.0.0.1/tcp/4747"), randomPeer(t, "/ip4/10.1.2.3/tcp/4747")
	v6 := randomPeer(t, "/ip6/::1/tcp/4747")
	public := randomPeer(t, "/ip4/93.184.216.34/tcp/4747")
	if _, err := carol.AddContact("bob", inviteWithPeers(t, bob, loopback, private, v6, public)); err != nil {
		t.Fatal(err)
	}
	got := carol.knownPeers()
	if len(got) != 2 || got[0].ID != met.ID || got[1].ID != public.ID {
		t.Fatalf("carol remembers %v, want the peer she met, then the invite's peer with a public address", got)
	}
	if len(got[1].Addrs) != 1 || got[1].Addrs[0].String() != "/ip4/93.184.216.34/tcp/4747" {
		t.Fatalf("the invite's peer is kept at %v, want its public address", got[1].Addrs)
	}
}
