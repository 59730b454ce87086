package p2p_test

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
)

// Each ephemeral host is a new peer ID that listens nowhere and still
// reaches a listening host.
func TestEphemeralHosts(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	server := p2ptest.NewHost(t)
	seen := map[string]bool{server.ID().String(): true}
	for range 3 {
		h, err := p2p.NewEphemeral()
		if err != nil {
			t.Fatal(err)
		}
		if seen[h.ID().String()] {
			t.Fatalf("ephemeral host reuses peer ID %s", h.ID())
		}
		seen[h.ID().String()] = true
		if addrs := h.Addrs(); len(addrs) != 0 {
			t.Fatalf("ephemeral host listens on %v", addrs)
		}
		if err := h.Connect(ctx, server.AddrInfo()); err != nil {
			t.Fatalf("ephemeral host cannot dial: %v", err)
		}
		if server.LibP2P().Network().Connectedness(h.ID()) != network.Connected {
			t.Fatal("the server does not see the ephemeral host's connection")
		}
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
