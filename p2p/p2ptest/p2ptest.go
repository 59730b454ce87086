// Package p2ptest builds p2p hosts for the tests of the packages above
// p2p: on loopback, without mDNS, closed when the test ends.
package p2ptest

import (
	"crypto/rand"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/sotto-im/sotto/p2p"
)

// LoopbackAddrs keep a test host on loopback: TCP and QUIC, kernel-chosen
// ports.
var LoopbackAddrs = []string{
	"/ip4/127.0.0.1/tcp/0",
	"/ip4/127.0.0.1/udp/0/quic-v1",
}

// NewKey is a fresh Ed25519 host key.
func NewKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewHost builds a host with a fresh key on loopback, mDNS, NAT traversal
// and metrics off, then opts, and closes it at the end of the test.
func NewHost(t testing.TB, opts ...p2p.Option) *p2p.Host {
	t.Helper()
	base := []p2p.Option{
		p2p.WithIdentity(NewKey(t)),
		p2p.WithListenAddrs(LoopbackAddrs...),
		p2p.WithMDNS(false),
		p2p.WithNAT(false),
		p2p.WithMetrics(false),
	}
	h, err := p2p.New(append(base, opts...)...)
	if err != nil {
		t.Fatalf("p2p.New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}
