package p2p

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/time/rate"
)

func TestNetKey(t *testing.T) {
	p := peer.ID("peer-a")
	for _, tc := range []struct {
		addr, want string
	}{
		{"/ip4/203.0.113.7/tcp/4001", "ip4/203.0.113.7"},
		{"/ip4/203.0.113.7/udp/4001/quic-v1", "ip4/203.0.113.7"},
		{"/ip6/2001:db8:1:2:aaaa::1/tcp/4001", "ip6/2001:db8:1:2::/64"},
		{"/ip6/2001:db8:1:2:bbbb::9/udp/9/quic-v1", "ip6/2001:db8:1:2::/64"},
		{"/ip6/2001:db8:1:3::1/tcp/4001", "ip6/2001:db8:1:3::/64"},
		{"/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit", "relay/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"},
		{"/p2p-circuit", "peer/" + p.String()},
		{"/dns4/example.com/tcp/4001", "peer/" + p.String()},
	} {
		if got := NetKey(ma.StringCast(tc.addr), p); got != tc.want {
			t.Errorf("NetKey(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

func TestLimiterKeysApart(t *testing.T) {
	l := NewLimiter[string](rate.Limit(0.001), 2)
	for range 2 {
		if !l.Allow("ip4/203.0.113.7") {
			t.Fatal("a fresh bucket refused")
		}
	}
	if l.Allow("ip4/203.0.113.7") {
		t.Fatal("a bucket allowed more than its burst")
	}
	if !l.Allow("ip4/203.0.113.8") {
		t.Fatal("another network shares the bucket")
	}
}
