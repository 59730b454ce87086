package mailbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
)

// Gossip mailboxes hold sealed envelopes for recipients who are offline.
// Each mailbox tag maps to one of Shards shards; each shard is a
// gossipsub topic (Topic) that mailbox nodes subscribe to, and a DHT
// provider record (ShardCID) through which senders find mailboxes
// for it. A sender publishes an envelope on its shard's topic and also
// deposits it straight to k mailboxes over Protocol, counting their
// acks, because gossipsub drops silently when queues fill or before a mesh
// has formed. A recipient that comes online queries its mailboxes for the
// tags of the live epochs and deletes what it has stored by revealing each
// envelope's delete token.

// Gossip and discovery constants.
const (
	// Shards is the number of gossip shards. A tag's shard is
	// protocol.Tag.Shard(Shards).
	Shards = 64
	// topicPrefix is the prefix of a shard's topic and provider key.
	topicPrefix = "/sotto/mbx/1/"
)

// Errors of the client and the gossip layer.
var (
	ErrNoMailbox = errors.New("mailbox: no mailbox reachable for the envelope's shard")
	ErrBadShard  = errors.New("mailbox: shard out of range")
)

// Topic returns the gossipsub topic of shard.
func Topic(shard uint16) string {
	return topicPrefix + strconv.Itoa(int(shard))
}

// ShardCID returns the DHT key under which mailboxes for shard announce
// themselves: a CIDv1 (raw codec) of the SHA-256 multihash of
// Topic(shard).
func ShardCID(shard uint16) cid.Cid {
	sum, err := mh.Sum([]byte(Topic(shard)), mh.SHA2_256, -1)
	if err != nil {
		panic("mailbox: sha256 multihash: " + err.Error())
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// joinShard joins shard's topic on g. Its validator, registered by the
// first join, accepts a message only if it is one valid envelope (it
// parses, has not expired, expires within the protocol's TTL at now) whose
// tag belongs to shard.
func joinShard(g *p2p.Gossip, shard uint16, now func() time.Time) (*pubsub.Topic, error) {
	if shard >= Shards {
		return nil, fmt.Errorf("%w: %d", ErrBadShard, shard)
	}
	return g.Join(Topic(shard), func(_ peer.ID, env []byte) bool {
		return checkEnvelope(env, now()) == nil && envelopeTag(env).Shard(Shards) == shard
	})
}

// publish publishes env on the topic of its tag's shard. It returns after
// handing the message to gossipsub, which does not confirm delivery.
func publish(ctx context.Context, g *p2p.Gossip, env []byte, now func() time.Time) error {
	if err := checkEnvelope(env, now()); err != nil {
		return fmt.Errorf("%w: %w", p2p.ErrMalformedEnvelope, err)
	}
	t, err := joinShard(g, envelopeTag(env).Shard(Shards), now)
	if err != nil {
		return err
	}
	return t.Publish(ctx, env)
}

// checkEnvelope parses and validates env at now.
func checkEnvelope(env []byte, now time.Time) error {
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		return err
	}
	return e.Validate(now)
}

// envelopeTag is the tag of an envelope that checkEnvelope accepted.
func envelopeTag(env []byte) protocol.Tag {
	var t protocol.Tag
	copy(t[:], env[1:1+protocol.TagSize])
	return t
}
