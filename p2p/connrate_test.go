package p2p

import (
	"net/netip"
	"testing"
)

// A mailbox node's hosts let one address open a round's worth of fresh
// connections at once (libp2p's default: 16, then one every 5 s), but not
// without bound; loopback is never limited.
func TestConnRateLimiterFitsMailboxUsers(t *testing.T) {
	const n = 512
	l := connRateLimiter(n)
	user := netip.MustParseAddr("192.0.0.141")
	for i := range n {
		if !l.Allow(user) {
			t.Fatalf("connection %d of a burst of %d refused", i+1, n)
		}
	}
	if l.Allow(user) {
		t.Fatalf("a connection beyond the burst of %d allowed at once", n)
	}
	if other := netip.MustParseAddr("192.0.0.142"); !l.Allow(other) {
		t.Fatal("another address was refused for the first one's burst")
	}
	for range 4 * n {
		if !l.Allow(netip.MustParseAddr("127.0.0.1")) {
			t.Fatal("loopback was rate limited")
		}
	}
}
