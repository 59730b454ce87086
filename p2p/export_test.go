package p2p

import (
	"os"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
)

var osDeadline = os.ErrDeadlineExceeded

func swarmBackoff(n *Host) *swarm.DialBackoff {
	return n.h.Network().(*swarm.Swarm).Backoff()
}

// current is the sender's stream to p, if any.
func (snd *Sender) current(p peer.ID) *outStream {
	slot := snd.slotOf(p)
	if slot == nil {
		return nil
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	return slot.os
}

func (o *outStream) queued() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queue)
}

func (o *outStream) highWater() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.hiQ
}

func (n *Host) inboundCount(p peer.ID) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inbound[p]
}

func withDHTOptions(opts ...dht.Option) Option {
	return func(c *config) error {
		c.dhtOpts = append(c.dhtOpts, opts...)
		return nil
	}
}

// withUpgradeTiming sets when relay-only peers are tried again.
func withUpgradeTiming(tick, after, maxWait time.Duration) Option {
	return func(c *config) error {
		c.upgrade = upgradeTiming{tick: tick, after: after, maxWait: maxWait}
		return nil
	}
}

// withGater has libp2p ask g before each connection.
func withGater(g connmgr.ConnectionGater) Option {
	return func(c *config) error {
		c.gater = g
		return nil
	}
}
