package p2p

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"
)

// MaxLimitedPeers bounds a PeerLimiter's table: past it, the peers whose
// buckets are full again are forgotten, and if none is, all of them (a
// flood of fresh peer IDs then meets fresh buckets, at the cost of a
// burst each: a new peer ID costs a Noise handshake).
const MaxLimitedPeers = 4096

// PeerLimiter is a token bucket per remote peer. Safe for concurrent use.
type PeerLimiter struct {
	r     rate.Limit
	burst int

	mu sync.Mutex
	m  map[peer.ID]*rate.Limiter
}

// NewPeerLimiter returns buckets of r tokens a second and burst tokens.
func NewPeerLimiter(r rate.Limit, burst int) *PeerLimiter {
	return &PeerLimiter{r: r, burst: burst, m: make(map[peer.ID]*rate.Limiter)}
}

// Allow takes a token from p's bucket and reports whether there was one.
func (l *PeerLimiter) Allow(p peer.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[p]
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
		l.m[p] = lim
	}
	return lim.Allow()
}
