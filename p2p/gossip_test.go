package p2p

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
)

func newTestGossip(t *testing.T, h *Host) *Gossip {
	t.Helper()
	g, err := NewGossip(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// waitMeshPeer waits until t knows p as a subscriber.
func waitMeshPeer(t *testing.T, ctx context.Context, top *pubsub.Topic, p peer.ID) {
	t.Helper()
	testkit.WaitFor(t, ctx, func() bool { return slices.Contains(top.ListPeers(), p) })
}

// TestGossipValidatesAndDeduplicates: a topic's validator keeps invalid
// messages from subscribers, from this node's own publishing and from a
// peer's bare router alike; the same bytes published twice are one
// message; a second Join keeps the first validator.
func TestGossipValidatesAndDeduplicates(t *testing.T) {
	ctx := testkit.Context(t, 30*time.Second)
	const name = "/sotto/test/1"
	valid := func(_ peer.ID, data []byte) bool { return bytes.HasPrefix(data, []byte("ok")) }

	ha, hb := newTestHost(t, WithNAT(false)), newTestHost(t, WithNAT(false))
	ga, gb := newTestGossip(t, ha), newTestGossip(t, hb)
	ta, err := ga.Join(name, valid)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ga.Join(name, func(peer.ID, []byte) bool { return true }); err != nil || again != ta {
		t.Fatalf("second Join = %v, %v; want the joined topic", again, err)
	}
	tb, err := gb.Join(name, valid)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got [][]byte
	var wg sync.WaitGroup
	sctx, stop := context.WithCancel(ctx)
	defer func() { stop(); wg.Wait() }()
	if err := gb.Subscribe(sctx, &wg, tb, func(d []byte) {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	// a subscribes too, so that its router keeps a mesh with b.
	if err := ga.Subscribe(sctx, &wg, ta, func([]byte) {}); err != nil {
		t.Fatal(err)
	}

	// A peer whose router validates nothing.
	hc := newTestHost(t, WithNAT(false))
	bare, err := pubsub.NewGossipSub(hc.Context(), hc.LibP2P(), pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(), pubsub.WithMessageIdFn(MessageID))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := bare.Join(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*Host{ha, hc} {
		if err := h.Connect(ctx, hb.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}
	waitMeshPeer(t, ctx, ta, hb.ID())
	tcEv, err := tc.EventHandler()
	if err != nil {
		t.Fatal(err)
	}
	for e, err := tcEv.NextPeerEvent(ctx); e.Peer != hb.ID(); e, err = tcEv.NextPeerEvent(ctx) {
		if err != nil {
			t.Fatal(err)
		}
	}
	tcEv.Cancel()

	if err := ta.Publish(ctx, []byte("bad: refused at home")); err == nil {
		t.Fatal("publishing an invalid message succeeded")
	}
	if err := tc.Publish(ctx, []byte("bad: from a bare router")); err != nil {
		t.Fatal(err)
	}
	// Gossip is best effort before the mesh settles: publish fresh valid
	// messages until one arrives, each twice.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := byte(0); ; i++ {
		msg := []byte{'o', 'k', i}
		for range 2 {
			if err := ta.Publish(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no valid message arrived")
		}
	}
	// Let stragglers (a duplicate, the bare router's message) arrive.
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]bool{}
	for _, d := range got {
		if !valid("", d) {
			t.Fatalf("an invalid message was delivered: %q", d)
		}
		if seen[string(d)] {
			t.Fatalf("%q delivered twice", d)
		}
		seen[string(d)] = true
	}
}

func TestGossipClosed(t *testing.T) {
	h := newTestHost(t, WithNAT(false))
	g := newTestGossip(t, h)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := g.Join("/sotto/test/1", func(peer.ID, []byte) bool { return true }); !errors.Is(err, ErrGossipClosed) {
		t.Fatalf("Join after Close = %v, want ErrGossipClosed", err)
	}
	h.Close()
	if _, err := NewGossip(h); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewGossip on a closed host = %v, want ErrClosed", err)
	}
}
