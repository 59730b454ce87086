package p2p

import (
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"
)

// MaxLimitedPeers bounds a limiter's table: past it, the keys whose
// buckets are full again are forgotten, and if none is, all of them (a
// flood of fresh keys then meets fresh buckets, at the cost of a burst
// each: a new peer ID costs a Noise handshake, a new network an address).
const MaxLimitedPeers = 4096

// Limiter is a token bucket per key. Safe for concurrent use.
type Limiter[K comparable] struct {
	r     rate.Limit
	burst int

	mu sync.Mutex
	m  map[K]*rate.Limiter
}

// PeerLimiter is a token bucket per remote peer.
type PeerLimiter = Limiter[peer.ID]

// NewPeerLimiter returns buckets of r tokens a second and burst tokens.
func NewPeerLimiter(r rate.Limit, burst int) *PeerLimiter {
	return NewLimiter[peer.ID](r, burst)
}

// NewLimiter returns buckets of r tokens a second and burst tokens, one
// per key.
func NewLimiter[K comparable](r rate.Limit, burst int) *Limiter[K] {
	return &Limiter[K]{r: r, burst: burst, m: make(map[K]*rate.Limiter)}
}

// Allow takes a token from k's bucket and reports whether there was one.
func (l *Limiter[K]) Allow(k K) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[k]
	if lim == nil {
		if len(l.m) >= MaxLimitedPeers {
			now := time.Now()
			for q, ql := range l.m {
				if ql.TokensAt(now) >= float64(l.burst) {
					delete(l.m, q)
				}
			}
			if len(l.m) >= MaxLimitedPeers {
				clear(l.m)
			}
		}
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[k] = lim
	}
	return lim.Allow()
}

// NetKey names the remote network of a connection's remote address, the
// unit that per-network limits count: the IPv4 address, or the IPv6 /64
// (one home or one mobile device usually holds a whole /64). A relayed
// circuit keys on the relay (its peer ID in the address), since a fresh
// peer ID through a relay costs nothing; an address with neither keys on
// p, the remote peer.
func NetKey(remote ma.Multiaddr, p peer.ID) string {
	if _, err := remote.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		if relay, err := remote.ValueForProtocol(ma.P_P2P); err == nil {
			return "relay/" + relay
		}
		return "peer/" + p.String()
	}
	ip, err := manet.ToIP(remote)
	if err != nil {
		return "peer/" + p.String()
	}
	if v4 := ip.To4(); v4 != nil {
		return "ip4/" + v4.String()
	}
	return "ip6/" + ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
