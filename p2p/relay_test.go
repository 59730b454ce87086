package p2p

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

// relayed sets up a relay and a that holds a reservation there, and
// returns a's relayed address.
func relayed(t *testing.T, ctx context.Context, limits RelayLimits, rcv Receiver) (relay, a *Host, addr ma.Multiaddr) {
	t.Helper()
	relay = newTestHost(t, WithPublic(true), WithRelayService(limits))
	a = newTestHost(t, WithReceiver(rcv))
	// The relay service starts once the host knows it is public
	// (WithPublic emits that at start, asynchronously).
	var err error
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	testkit.WaitFor(t, wctx, func() bool {
		_, err = client.Reserve(ctx, a.LibP2P(), relay.AddrInfo())
		return err == nil
	})
	addr = ma.StringCast(relay.Addrs()[0].String() + "/p2p/" + relay.ID().String() + "/p2p-circuit/p2p/" + a.ID().String())
	return relay, a, addr
}

// TestSendThroughRelay: a message reaches a device over a relayed
// connection, the receiver is told it came relayed, and the connection is
// a Noise session with the receiving device's own key — the relay only
// carries its bytes and holds no key to read or change them.
func TestSendThroughRelay(t *testing.T) {
	ctx := testkit.Context(t, 60*time.Second)
	got := make(chan bool, 1)
	rcv := ReceiverFunc(func(ctx context.Context, _ peer.ID, env []byte) error {
		if string(env) == "through the relay" {
			got <- CameRelayed(ctx)
		}
		return nil
	})
	_, a, addr := relayed(t, ctx, DefaultRelayLimits(), rcv)
	b := newTestHost(t)
	b.LibP2P().Peerstore().AddAddrs(a.ID(), []ma.Multiaddr{addr}, time.Hour)
	if err := b.Sender().Send(ctx, a.ID(), []byte("through the relay")); err != nil {
		t.Fatalf("send through the relay: %v", err)
	}
	if !<-got {
		t.Fatal("the receiver was not told the envelope came through a relay")
	}
	if !b.Sender().Relayed(a.ID()) {
		t.Fatal("the sender's stream is not marked relayed")
	}
	conns := b.LibP2P().Network().ConnsToPeer(a.ID())
	if len(conns) != 1 || !conns[0].Stat().Limited || !IsRelayed(conns[0].RemoteMultiaddr()) {
		t.Fatalf("connections to a: %v, want one relayed", conns)
	}
	// The circuit is upgraded like any connection: a security handshake
	// with a (Noise, the only security transport a Host offers), whose
	// authenticated key is a's own. The relay sees ciphertext only.
	if st := conns[0].ConnState(); st.Transport != "p2p-circuit" {
		t.Fatalf("connection state %+v, want the circuit transport", st)
	}
	if !conns[0].RemotePublicKey().Equals(a.LibP2P().Peerstore().PubKey(a.ID())) {
		t.Fatal("the relayed connection's authenticated key is not a's own")
	}
	if b.HasDirect(a.ID()) {
		t.Fatal("HasDirect reports a direct connection that does not exist")
	}
	// Once a direct connection exists, the stream moves to it.
	// (What DCUtR does after a hole punch; on loopback a plain dial.)
	if err := b.LibP2P().Connect(network.WithForceDirectDial(ctx, "test"), a.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	if err := b.Sender().Send(ctx, a.ID(), []byte("direct now")); err != nil {
		t.Fatal(err)
	}
	if b.Sender().Relayed(a.ID()) {
		t.Fatalf("the stream stayed on the relay after a direct connection opened (direct %v, conns %v)", b.HasDirect(a.ID()), b.Connections())
	}
}

// TestRelayLimitsHold: circuits beyond the relay's per-peer limit are
// refused, the circuits within it keep working, and refusals leave nothing
// behind.
func TestRelayLimitsHold(t *testing.T) {
	ctx := testkit.Context(t, 90*time.Second)
	limits := DefaultRelayLimits()
	limits.CircuitsPerPeer = 2
	rcv := ReceiverFunc(func(context.Context, peer.ID, []byte) error { return nil })
	_, a, addr := relayed(t, ctx, limits, rcv)
	dial := func() (*Host, error) {
		b := newTestHost(t)
		b.LibP2P().Peerstore().AddAddrs(a.ID(), []ma.Multiaddr{addr}, time.Hour)
		return b, b.Sender().Send(ctx, a.ID(), []byte("hello"))
	}
	var held []*Host
	for range limits.CircuitsPerPeer {
		b, err := dial()
		if err != nil {
			t.Fatalf("a circuit within the limit was refused: %v", err)
		}
		held = append(held, b)
	}
	refused := func() {
		b, err := dial()
		if err == nil {
			t.Fatal("a circuit beyond the per-peer limit was allowed")
		}
		if !errors.Is(err, ErrNoDirectPath) {
			t.Fatalf("refused circuit: %v, want ErrNoDirectPath", err)
		}
		b.Close()
	}
	refused()
	runtime.GC()
	before := runtime.NumGoroutine()
	for range 10 {
		refused()
	}
	runtime.GC()
	// Every refused host is closed; what is left is the relay's and the
	// held circuits', the same as before the refusals (with slack for
	// goroutines libp2p winds down asynchronously).
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	testkit.WaitFor(t, wctx, func() bool {
		return runtime.NumGoroutine() <= before+20
	})
	for _, b := range held {
		if err := b.Sender().Send(ctx, a.ID(), []byte("still here")); err != nil {
			t.Fatalf("a held circuit broke after refusals: %v", err)
		}
	}
}
