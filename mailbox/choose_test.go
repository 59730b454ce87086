package mailbox

import (
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
)

func TestChooseMailboxesSpreadsNetworks(t *testing.T) {
	mk := func(id, addr string) peer.AddrInfo {
		ai := peer.AddrInfo{ID: peer.ID(id)}
		if addr != "" {
			ai.Addrs = []ma.Multiaddr{ma.StringCast(addr)}
		}
		return ai
	}
	a1 := mk("a1", "/ip4/198.51.1.1/tcp/4001")
	a2 := mk("a2", "/ip4/198.51.200.9/tcp/4001") // same /16 as a1
	b := mk("b", "/ip4/203.0.113.5/udp/4001/quic-v1")
	c := mk("c", "/ip6/2001:db8:1::1/tcp/4001")
	c2 := mk("c2", "/ip6/2001:db8:ffff::1/tcp/4001") // same /32 as c
	d := mk("d", "")
	d2 := mk("d2", "/dns4/mbx.example/tcp/4001")
	// x lists an address in a network of its own first, then one in a1's.
	x := mk("x", "/ip4/192.0.2.7/tcp/4001")
	x.Addrs = append(x.Addrs, ma.StringCast("/ip4/198.51.3.3/tcp/4001"))
	ids := func(as []peer.AddrInfo) []string {
		var out []string
		for _, a := range as {
			out = append(out, string(a.ID))
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		cands []peer.AddrInfo
		k     int
		avoid []peer.ID
		want  []string
	}{
		{"distinct networks first", []peer.AddrInfo{a1, a2, b, c}, 3, nil, []string{"a1", "b", "c"}},
		{"a second in a network only when none is left", []peer.AddrInfo{a1, a2, c, c2}, 3, nil, []string{"a1", "c", "a2"}},
		{"avoided ones never", []peer.AddrInfo{a1, a2, b, c}, 3, []peer.ID{"b"}, []string{"a1", "c", "a2"}},
		{"no IP address is one network", []peer.AddrInfo{a1, d, d2, b}, 3, nil, []string{"a1", "d", "b"}},
		{"every address of a candidate counts, not only its first", []peer.AddrInfo{a1, x, b}, 2, nil, []string{"a1", "b"}},
		{"fewer candidates than k", []peer.AddrInfo{a1}, 3, nil, []string{"a1"}},
	} {
		avoid := map[peer.ID]bool{}
		for _, p := range tc.avoid {
			avoid[p] = true
		}
		if got := ids(ChooseMailboxes(tc.cands, tc.k, avoid)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: chose %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Mailbox nodes announce themselves under the one version 2 key, and a
// user finds them there.
func TestFindMailboxNodes(t *testing.T) {
	ctx := testkit.Context(t, 2*mbxTestTimeout)
	boot := p2ptest.NewHost(t)
	join := []p2p.Option{p2p.WithBootstrapPeers(boot.AddrInfo())}
	var want []peer.ID
	for range 3 {
		m := newMailboxNode(t, mbxNodeOpts{hostOpts: join, svcOpts: []Option{WithShards(1)}})
		if err := m.h.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.svc.Provide(ctx); err != nil {
			t.Fatalf("Provide: %v", err)
		}
		want = append(want, m.h.ID())
	}
	user := p2ptest.NewHost(t, join...)
	if err := user.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	found := FindMailboxNodes(ctx, user, 20)
	var got []peer.ID
	for _, ai := range found {
		got = append(got, ai.ID)
	}
	for _, id := range want {
		if !slices.Contains(got, id) {
			t.Fatalf("FindMailboxNodes = %v, missing %s", got, id)
		}
	}
}
