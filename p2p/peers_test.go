package p2p

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

func testPeerInfo(t *testing.T, addr string) peer.AddrInfo {
	t.Helper()
	id, err := peer.IDFromPrivateKey(newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{ma.StringCast(addr)}}
}

func TestPeerListEncoding(t *testing.T) {
	a := testPeerInfo(t, "/ip4/192.0.0.130/tcp/4747")
	b := testPeerInfo(t, "/ip4/192.0.0.131/udp/4747/quic-v1")
	b.Addrs = append(b.Addrs, ma.StringCast("/ip4/192.0.0.131/tcp/4747"))
	got := DecodePeers(EncodePeers([]peer.AddrInfo{a, b}))
	if len(got) != 2 || len(got[1].Addrs) != 2 {
		t.Fatalf("round trip: %v", got)
	}
	// Damage: a cut list keeps what came before the cut.
	enc := EncodePeers([]peer.AddrInfo{a, b})
	if got := DecodePeers(enc[:len(enc)-3]); len(got) != 2 || len(got[1].Addrs) != 1 {
		t.Fatalf("a cut list decodes to %v", got)
	}
	if got := DecodeAddrs([]byte{200, 1, 2}); len(got) != 0 {
		t.Fatalf("garbage decodes to %v", got)
	}

	// Merge: fresh first with its addresses, no duplicates, never self,
	// at most max.
	self := testPeerInfo(t, "/ip4/192.0.0.132/tcp/4747")
	aNew := peer.AddrInfo{ID: a.ID, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/192.0.0.133/tcp/1")}}
	m := MergePeers([]peer.AddrInfo{aNew, self}, []peer.AddrInfo{b, a, self}, self.ID, 8)
	if len(m) != 2 || m[0].ID != a.ID || !m[0].Addrs[0].Equal(aNew.Addrs[0]) || m[1].ID != b.ID {
		t.Fatalf("MergePeers = %v", m)
	}
	if m := MergePeers([]peer.AddrInfo{a, b}, nil, self.ID, 1); len(m) != 1 {
		t.Fatalf("MergePeers kept %d over the maximum 1", len(m))
	}
}

func TestReadBootstrapFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bootstrap")
	if got, err := ReadBootstrapFile(path); err != nil || got != nil {
		t.Fatalf("missing file: %v, %v; want nothing and no error", got, err)
	}
	a := testPeerInfo(t, "/ip4/192.0.0.130/tcp/4747")
	line := a.Addrs[0].String() + "/p2p/" + a.ID.String()
	os.WriteFile(path, []byte("# public peers\n\n  "+line+"  \n"+strings.Replace(line, "tcp/4747", "udp/4747/quic-v1", 1)+"\n"), 0o600)
	got, err := ReadBootstrapFile(path)
	if err != nil || len(got) != 1 || got[0].ID != a.ID || len(got[0].Addrs) != 2 {
		t.Fatalf("ReadBootstrapFile = %v, %v; want one peer with two addresses", got, err)
	}
	os.WriteFile(path, []byte(line+"\n/ip4/192.0.0.130/tcp/4747\n"), 0o600)
	if _, err := ReadBootstrapFile(path); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("a line without /p2p: %v, want ErrBadConfig naming line 2", err)
	}
	os.WriteFile(path, make([]byte, MaxBootstrapFileSize+1), 0o600)
	if _, err := ReadBootstrapFile(path); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("an oversized file: %v, want ErrBadConfig", err)
	}
}

// TestGoodPeers: a node remembers the DHT servers it is directly
// connected to, not clients.
func TestGoodPeers(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	boot, a, b, _, _ := threeHosts(t, WithNAT(false))
	if err := a.Connect(ctx, b.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	client := newTestHost(t, WithNAT(false), withDHTOptions(dht.Mode(dht.ModeClient))) // serves no DHT
	if err := a.Connect(ctx, client.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	good := a.GoodPeers(10)
	ids := map[peer.ID]bool{}
	for _, p := range good {
		ids[p.ID] = len(p.Addrs) > 0
	}
	if !ids[boot.ID()] || !ids[b.ID()] || len(good) != 2 {
		t.Fatalf("GoodPeers = %v, want boot and b with addresses, not the peer without a DHT", good)
	}
}
