package p2p

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
)

// GossipMaxMessageSize bounds a pubsub RPC: an envelope and its framing fit.
const GossipMaxMessageSize = 1 << 20

// ErrGossipClosed is returned by operations on a closed Gossip.
var ErrGossipClosed = errors.New("p2p: gossip is closed")

// Validator judges a gossiped message before it is delivered or forwarded:
// false rejects it (and counts against the peer that sent it).
type Validator func(from peer.ID, data []byte) bool

// Verdict is a three-way judgement of a gossiped message: accept, reject
// (counts against the forwarding peer) or ignore (neither delivered nor
// forwarded, and no penalty: for a message that is valid but unwanted now,
// such as one over a rate).
type Verdict = pubsub.ValidationResult

// Verdicts.
const (
	Accept = pubsub.ValidationAccept
	Reject = pubsub.ValidationReject
	Ignore = pubsub.ValidationIgnore
)

// Gossip is the host's gossipsub router. libp2p allows one router per
// host, so every service on the host shares one Gossip. Messages are
// unsigned and authorless (what they carry is sealed already), and a
// message's ID is the SHA-256 of its data, so the same bytes published
// twice, by anyone, are one message. Each topic is joined once, with the
// validator given at its first join.
type Gossip struct {
	h  *Host
	ps *pubsub.PubSub

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	topics map[string]*pubsub.Topic
}

// GossipOption configures NewGossip.
type GossipOption func(*gossipConfig) error

type gossipConfig struct {
	psOpts []pubsub.Option
}

// WithPubSubOptions appends options for the gossipsub router (tests,
// tuning). They cannot turn signing or authorship back on: Sotto's own
// options are applied last.
func WithPubSubOptions(opts ...pubsub.Option) GossipOption {
	return func(c *gossipConfig) error {
		c.psOpts = append(c.psOpts, opts...)
		return nil
	}
}

// MessageID is the content-hash message ID: the SHA-256 of the data.
func MessageID(m *pb.Message) string {
	sum := sha256.Sum256(m.GetData())
	return string(sum[:])
}

// NewGossip starts gossipsub on h. It stops when Close is called or h
// closes.
func NewGossip(h *Host, opts ...GossipOption) (*Gossip, error) {
	var cfg gossipConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if h.isClosed() {
		return nil, ErrClosed
	}
	g := &Gossip{h: h, topics: make(map[string]*pubsub.Topic)}
	g.ctx, g.cancel = context.WithCancel(h.ctx)
	psOpts := append(cfg.psOpts,
		pubsub.WithMaxMessageSize(GossipMaxMessageSize),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(),
		pubsub.WithMessageIdFn(MessageID),
	)
	ps, err := pubsub.NewGossipSub(g.ctx, h.h, psOpts...)
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("p2p: gossipsub: %w", err)
	}
	g.ps = ps
	return g, nil
}

// PubSub is the underlying router.
func (g *Gossip) PubSub() *pubsub.PubSub { return g.ps }

// Close stops gossipsub. It is idempotent. Close the services that use it
// first.
func (g *Gossip) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	g.cancel()
	return nil
}

// Join returns the joined topic name, joining it and registering validate
// as its validator on first use (later calls get the topic as it is).
func (g *Gossip) Join(name string, validate Validator) (*pubsub.Topic, error) {
	return g.JoinVerdict(name, func(from peer.ID, data []byte) Verdict {
		if validate(from, data) {
			return Accept
		}
		return Reject
	})
}

// JoinVerdict is Join with a validator that may also ignore a message.
func (g *Gossip) JoinVerdict(name string, validate func(from peer.ID, data []byte) Verdict) (*pubsub.Topic, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrGossipClosed
	}
	if t := g.topics[name]; t != nil {
		return t, nil
	}
	v := func(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		return validate(from, m.GetData())
	}
	if err := g.ps.RegisterTopicValidator(name, v); err != nil {
		return nil, fmt.Errorf("p2p: gossip validator for %s: %w", name, err)
	}
	t, err := g.ps.Join(name)
	if err != nil {
		g.ps.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("p2p: join %s: %w", name, err)
	}
	g.topics[name] = t
	return t, nil
}

// Subscribe runs fn for every message delivered on t (those that passed
// its validator, including this node's own) until ctx ends, in a
// goroutine that wg tracks.
func (g *Gossip) Subscribe(ctx context.Context, wg *sync.WaitGroup, t *pubsub.Topic, fn func(data []byte)) error {
	sub, err := t.Subscribe()
	if err != nil {
		return fmt.Errorf("p2p: subscribe %s: %w", t.String(), err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer sub.Cancel()
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			fn(m.GetData())
		}
	}()
	return nil
}

// OnPeerJoin runs fn for every peer that this node learns is subscribed
// to t, from now until ctx ends, in a goroutine that wg tracks.
func (g *Gossip) OnPeerJoin(ctx context.Context, wg *sync.WaitGroup, t *pubsub.Topic, fn func(p peer.ID)) error {
	ev, err := t.EventHandler()
	if err != nil {
		return fmt.Errorf("p2p: peer events of %s: %w", t.String(), err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer ev.Cancel()
		for {
			e, err := ev.NextPeerEvent(ctx)
			if err != nil {
				return
			}
			if e.Type == pubsub.PeerJoin {
				fn(e.Peer)
			}
		}
	}()
	return nil
}
