package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
)

func TestOptionsValidation(t *testing.T) {
	ed := newKey(t)
	secp, _, err := crypto.GenerateSecp256k1Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts []Option
		want error
	}{
		{"no identity", nil, ErrNoIdentity},
		{"non-ed25519 identity", []Option{WithIdentity(secp)}, ErrBadIdentity},
		{"bad listen addr", []Option{WithIdentity(ed), WithListenAddrs("not-a-multiaddr")}, ErrBadListenAddr},
		{"no listen addrs", []Option{WithIdentity(ed), WithListenAddrs()}, ErrBadListenAddr},
		{"low above high", []Option{WithIdentity(ed), WithConnLimits(10, 5)}, ErrBadConfig},
		{"no connections per address", []Option{WithIdentity(ed), WithConnsPerAddr(0)}, ErrBadConfig},
		{"republish too often", []Option{WithIdentity(ed), WithRepublishInterval(time.Millisecond)}, ErrBadConfig},
		{"zero idle timeout", []Option{WithIdentity(ed), WithDirectTimeouts(0, time.Second)}, ErrBadConfig},
		{"zero inbound cap", []Option{WithIdentity(ed), WithMaxInboundStreamsPerPeer(0)}, ErrBadConfig},
		{"zero in-flight cap", []Option{WithIdentity(ed), WithMaxInFlight(0)}, ErrBadConfig},
		{"nil logger", []Option{WithIdentity(ed), WithLogger(nil)}, ErrBadConfig},
		{"nil clock", []Option{WithIdentity(ed), WithClock(nil)}, ErrBadConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(tt.opts...)
			if err == nil {
				h.Close()
				t.Fatal("New succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("New: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDefaultsAreSane(t *testing.T) {
	c := defaultConfig()
	c.identity = newKey(t)
	if err := c.validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if !c.mdns || !c.nat {
		t.Error("mDNS and NAT traversal must be on by default")
	}
	if len(c.bootstrap) != 0 {
		t.Error("there must be no default bootstrap peers")
	}
	// TCP and QUIC on every IPv4 and IPv6 interface, on DefaultPort.
	var want []string
	port := strconv.Itoa(DefaultPort)
	for _, ip := range []string{"/ip4/0.0.0.0", "/ip6/::"} {
		want = append(want, ip+"/tcp/"+port, ip+"/udp/"+port+"/quic-v1")
	}
	var got []string
	for _, a := range c.listenAddrs {
		got = append(got, a.String())
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("default listen addrs: %v, want %v", got, want)
	}
}

func TestIdentityIsPeerID(t *testing.T) {
	k := newKey(t)
	h := newTestHost(t, WithIdentity(k))
	if !h.ID().MatchesPrivateKey(k) {
		t.Fatal("host peer ID does not match the identity key")
	}
	if len(h.Addrs()) == 0 {
		t.Fatal("host listens nowhere")
	}
}

func TestProtect(t *testing.T) {
	a := newTestHost(t)
	b := newTestHost(t)
	ctx := testkit.Context(t, 20*time.Second)
	if err := a.Connect(ctx, b.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	p := b.ID()
	a.Protect(p, "contact")
	a.Protect(p, "mailbox")
	if !a.IsProtected(p, "contact") || !a.IsProtected(p, "mailbox") {
		t.Fatal("protection tags not recorded")
	}
	if !a.Unprotect(p, "contact") {
		t.Fatal("Unprotect(contact) reports unprotected while mailbox still protects")
	}
	if a.Unprotect(p, "mailbox") {
		t.Fatal("Unprotect(mailbox) reports still protected")
	}
	if a.IsProtected(p, "") {
		t.Fatal("peer still protected")
	}
	// A protected connection survives trimming down to the low water mark.
	a.Protect(p, "contact")
	a.LibP2P().ConnManager().TrimOpenConns(ctx)
	if a.LibP2P().Network().Connectedness(p) != network.Connected {
		t.Fatal("protected connection was trimmed")
	}
}

func TestCloseIdempotentNoLeak(t *testing.T) {
	// Both modes: a network without NAT (DHT server, bootstrap, bundle
	// records), and internet mode with every NAT traversal service on
	// (AutoNAT v1 and v2, AutoRelay, hole punching, a relay service).
	t.Run("lan", func(t *testing.T) { closeNoLeak(t, false) })
	t.Run("internet", func(t *testing.T) { closeNoLeak(t, true) })
}

func closeNoLeak(t *testing.T, internet bool) {
	// Warm up: libp2p starts a few process-wide goroutines on first use.
	warm := newTestHost(t, WithNAT(internet))
	warm.Close()

	check := testkit.Goroutines(t)
	ctx := testkit.Context(t, 60*time.Second)
	rcv := &memReceiver{}
	base := []Option{WithListenAddrs(testListenAddrs...), WithMDNS(false), WithBundleVerifier(fakeVerifier{}), WithNAT(internet)}
	bootOpts := append(base, WithIdentity(newKey(t)))
	if internet {
		bootOpts = append(bootOpts, WithPublic(true), WithRelayService(DefaultRelayLimits()))
	}
	boot, err := New(bootOpts...)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(append(base, WithIdentity(newKey(t)), WithBootstrapPeers(boot.AddrInfo()), WithReceiver(rcv),
		WithRepublishInterval(MinRepublishInterval))...)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(append(base, WithIdentity(newKey(t)), WithBootstrapPeers(boot.AddrInfo()), WithReceiver(rcv))...)
	if err != nil {
		t.Fatal(err)
	}
	if internet {
		// Loopback peers stay out of an internet node's DHT: connect
		// directly instead.
		if err := a.Connect(ctx, b.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	} else {
		for _, h := range []*Host{a, b} {
			if err := h.Bootstrap(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.PutBundle(ctx, []byte("acct"), fakeBundle(1, "valid")); err != nil {
			t.Fatal(err)
		}
		a.RepublishNow()
	}
	for i := range 20 {
		if err := b.Sender().Send(ctx, a.ID(), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if err := a.Sender().Send(ctx, b.ID(), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []*Host{a, b, boot} {
		if err := h.Close(); err != nil {
			t.Logf("close: %v", err)
		}
		h.Close() // idempotent
	}
	if err := a.Sender().Send(ctx, b.ID(), []byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	if err := a.Bootstrap(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Bootstrap after Close: %v, want ErrClosed", err)
	}
	check()
}

// TestDefaultPortFallback: a node listens on DefaultPort unless it is
// taken, then on a port the kernel picks.
func TestDefaultPortFallback(t *testing.T) {
	l, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(DefaultPort))
	if err != nil {
		t.Skipf("port %d is taken by another program here; the fallback is still exercised: %v", DefaultPort, err)
	}
	defer l.Close()
	addrs := defaultListenAddrs()
	for _, a := range addrs {
		if tcp, err := a.ValueForProtocol(ma.P_TCP); err == nil && tcp != "0" {
			t.Fatalf("TCP port %d is taken, yet the default listen address is %s", DefaultPort, a)
		}
	}
	l.Close()
	for _, a := range defaultListenAddrs() {
		if tcp, err := a.ValueForProtocol(ma.P_TCP); err == nil && tcp != strconv.Itoa(DefaultPort) {
			t.Fatalf("TCP port %d is free, yet the default listen address is %s", DefaultPort, a)
		}
	}
}

func TestCloseDuringReceive(t *testing.T) {
	// A Receive is blocked (a slow disk, say) when the receiving host
	// closes: the Receive sees its context end, the sender gets an error
	// (never an ack), and nothing is left running.
	warm := newTestHost(t)
	warm.Close()
	check := testkit.Goroutines(t)

	entered := make(chan struct{})
	rcv := ReceiverFunc(func(ctx context.Context, _ peer.ID, _ []byte) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	})
	ctx := testkit.Context(t, 30*time.Second)
	dst, err := New(WithIdentity(newKey(t)), WithListenAddrs(testListenAddrs...), WithMDNS(false), WithReceiver(rcv))
	if err != nil {
		t.Fatal(err)
	}
	snd, err := New(WithIdentity(newKey(t)), WithListenAddrs(testListenAddrs...), WithMDNS(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Connect(ctx, dst.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- snd.Sender().Send(ctx, dst.ID(), []byte("x")) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("Receive never called")
	}
	if err := dst.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	if err := <-res; err == nil {
		t.Fatal("Send succeeded although the receiver never stored the envelope")
	}
	snd.Close()
	check()
}

func TestMDNSStartsAndStops(t *testing.T) {
	// mDNS finds nothing on loopback, but a node with it on (the default
	// for a running node) must start and close cleanly.
	warm := newTestHost(t)
	warm.Close()
	check := testkit.Goroutines(t)
	h, err := New(WithIdentity(newKey(t)), WithListenAddrs("/ip4/0.0.0.0/tcp/0"), WithMDNS(true))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	check()
}
