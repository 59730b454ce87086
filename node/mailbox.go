package node

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
	"golang.org/x/time/rate"

	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Gossip mailboxes hold sealed envelopes for recipients who are offline.
// Each mailbox tag maps to one of MailboxShards shards; each shard is a
// gossipsub topic (MailboxTopic) that mailbox nodes subscribe to, and a DHT
// provider record (MailboxShardCID) through which senders find mailboxes
// for it. A sender publishes an envelope on its shard's topic and also
// deposits it straight to k mailboxes over MailboxProtocol, counting their
// acks, because gossipsub drops silently when queues fill or before a mesh
// has formed. A recipient that comes online queries its mailboxes for the
// tags of the live epochs and deletes what it has stored by revealing each
// envelope's delete token.

// Gossip and discovery constants.
const (
	// MailboxShards is the number of gossip shards. A tag's shard is
	// protocol.Tag.Shard(MailboxShards).
	MailboxShards = 64
	// mailboxTopicPrefix is the prefix of a shard's topic and provider key.
	mailboxTopicPrefix = "/sotto/mbx/1/"
	// gossipMaxMessageSize bounds a pubsub RPC; an envelope and framing fit.
	gossipMaxMessageSize = 1 << 20
)

// Mailbox service and client defaults.
const (
	// DefaultMailboxRate and DefaultMailboxBurst are the per-peer token
	// bucket of a mailbox: requests per second, and burst.
	DefaultMailboxRate  = 50
	DefaultMailboxBurst = 200
	// maxRateLimiters bounds the per-peer limiter table; past it idle
	// entries are dropped.
	maxRateLimiters = 4096
	// DefaultMailboxStreamsPerPeer caps concurrent mailbox streams from
	// one peer; excess streams are reset.
	DefaultMailboxStreamsPerPeer = 4
	// DefaultMailboxIdleTimeout bounds how long a mailbox stream may sit
	// between requests; DefaultMailboxFrameTimeout bounds one frame's
	// arrival (after its first byte) and one response write.
	DefaultMailboxIdleTimeout  = 30 * time.Second
	DefaultMailboxFrameTimeout = 10 * time.Second
	// DefaultReprovideInterval is how often a mailbox announces its shards
	// in the DHT (provider records live 48 hours);
	// DefaultProvideRetry is how soon it retries a failed announcement.
	DefaultReprovideInterval = 12 * time.Hour
	DefaultProvideRetry      = time.Minute
	// provideTimeout bounds one round of announcements.
	provideTimeout = 5 * time.Minute
	// DefaultSweepInterval is how often a mailbox deletes expired envelopes.
	DefaultSweepInterval = 10 * time.Minute
	// DefaultMailboxOpTimeout bounds one client request when the caller's
	// context has no deadline.
	DefaultMailboxOpTimeout = 30 * time.Second
	// DefaultDepositK is how many mailboxes Deposit aims for when k <= 0.
	DefaultDepositK = 3
	// maxMailboxProviders bounds the providers one lookup collects;
	// findProvidersTimeout bounds the lookup.
	maxMailboxProviders  = 20
	findProvidersTimeout = 20 * time.Second
	// mailboxConnectTimeout bounds the connection to one mailbox.
	mailboxConnectTimeout = 10 * time.Second
	// mailboxCacheTTL is how long a shard's mailbox list is reused.
	mailboxCacheTTL = 5 * time.Minute
	// MailboxProtectTag is the connection-manager tag of mailbox peers.
	MailboxProtectTag = "mailbox"
)

// Mailbox errors of the client and the gossip layer.
var (
	ErrNoMailbox    = errors.New("node: no mailbox reachable for the envelope's shard")
	ErrBadShard     = errors.New("node: shard out of range")
	ErrGossipClosed = errors.New("node: gossip is closed")
)

// MailboxTopic returns the gossipsub topic of shard.
func MailboxTopic(shard uint16) string {
	return mailboxTopicPrefix + strconv.Itoa(int(shard))
}

// MailboxShardCID returns the DHT key under which mailboxes for shard
// announce themselves: a CIDv1 (raw codec) of the SHA-256 multihash of
// MailboxTopic(shard).
func MailboxShardCID(shard uint16) cid.Cid {
	sum, err := mh.Sum([]byte(MailboxTopic(shard)), mh.SHA2_256, -1)
	if err != nil {
		panic("node: sha256 multihash: " + err.Error())
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// gossipMessageID is the content-hash message ID: SHA-256 of the data, so
// the same envelope published twice, by anyone, is one message.
func gossipMessageID(m *pb.Message) string {
	sum := sha256.Sum256(m.GetData())
	return string(sum[:])
}

// Gossip is the node's gossipsub instance and its mailbox shard topics.
// libp2p allows one pubsub router per host, so the messenger creates one
// Gossip and shares it between the mailbox service and the client. Each
// topic is joined once, with a validator that accepts only valid envelopes
// of that shard.
type Gossip struct {
	h   *Host
	ps  *pubsub.PubSub
	now func() time.Time

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	topics map[uint16]*pubsub.Topic
}

// GossipOption configures NewGossip.
type GossipOption func(*gossipConfig) error

type gossipConfig struct {
	now    func() time.Time
	psOpts []pubsub.Option
}

// WithGossipClock sets the clock the topic validators check expiry with.
func WithGossipClock(now func() time.Time) GossipOption {
	return func(c *gossipConfig) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrBadConfig)
		}
		c.now = now
		return nil
	}
}

// WithPubSubOptions appends options for the gossipsub router (tests,
// tuning). They cannot turn signing or authorship back on: the mailbox
// options are applied last.
func WithPubSubOptions(opts ...pubsub.Option) GossipOption {
	return func(c *gossipConfig) error {
		c.psOpts = append(c.psOpts, opts...)
		return nil
	}
}

// NewGossip starts gossipsub on h: unsigned, authorless messages
// (pubsub.StrictNoSign, pubsub.WithNoAuthor) with content-hash message IDs.
// It stops when Close is called or h closes.
func NewGossip(h *Host, opts ...GossipOption) (*Gossip, error) {
	cfg := gossipConfig{now: time.Now}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if h.isClosed() {
		return nil, ErrClosed
	}
	g := &Gossip{h: h, now: cfg.now, topics: make(map[uint16]*pubsub.Topic)}
	g.ctx, g.cancel = context.WithCancel(h.ctx)
	psOpts := append(cfg.psOpts,
		pubsub.WithMaxMessageSize(gossipMaxMessageSize),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(),
		pubsub.WithMessageIdFn(gossipMessageID),
	)
	ps, err := pubsub.NewGossipSub(g.ctx, h.LibP2P(), psOpts...)
	if err != nil {
		g.cancel()
		return nil, fmt.Errorf("node: gossipsub: %w", err)
	}
	g.ps = ps
	return g, nil
}

// PubSub is the underlying router, for other topics the node may use.
func (g *Gossip) PubSub() *pubsub.PubSub { return g.ps }

// Close stops gossipsub. It is idempotent. Close the mailbox service and
// client first.
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

// Topic returns the joined topic of shard, joining it and registering its
// validator on first use.
func (g *Gossip) Topic(shard uint16) (*pubsub.Topic, error) {
	if shard >= MailboxShards {
		return nil, fmt.Errorf("%w: %d", ErrBadShard, shard)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrGossipClosed
	}
	if t := g.topics[shard]; t != nil {
		return t, nil
	}
	name := MailboxTopic(shard)
	if err := g.ps.RegisterTopicValidator(name, g.validator(shard)); err != nil {
		return nil, fmt.Errorf("node: gossip validator for %s: %w", name, err)
	}
	t, err := g.ps.Join(name)
	if err != nil {
		g.ps.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("node: join %s: %w", name, err)
	}
	g.topics[shard] = t
	return t, nil
}

// validator accepts a message only if it is one valid envelope (it parses,
// has not expired, expires within the protocol's TTL) whose tag belongs to
// shard.
func (g *Gossip) validator(shard uint16) pubsub.ValidatorEx {
	return func(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		if err := checkEnvelope(m.GetData(), g.now()); err != nil {
			return pubsub.ValidationReject
		}
		if envelopeTag(m.GetData()).Shard(MailboxShards) != shard {
			return pubsub.ValidationReject
		}
		return pubsub.ValidationAccept
	}
}

// Publish publishes env on the topic of its tag's shard. It returns after
// handing the message to gossipsub, which does not confirm delivery.
func (g *Gossip) Publish(ctx context.Context, env []byte) error {
	if err := checkEnvelope(env, g.now()); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedEnvelope, err)
	}
	t, err := g.Topic(envelopeTag(env).Shard(MailboxShards))
	if err != nil {
		return err
	}
	return t.Publish(ctx, env)
}

// subscribe runs fn for every envelope gossiped on shard until ctx ends,
// in a goroutine wg tracks.
func (g *Gossip) subscribe(ctx context.Context, wg *sync.WaitGroup, shard uint16, fn func(ctx context.Context, env []byte, local bool)) error {
	t, err := g.Topic(shard)
	if err != nil {
		return err
	}
	sub, err := t.Subscribe()
	if err != nil {
		return fmt.Errorf("node: subscribe %s: %w", MailboxTopic(shard), err)
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
			fn(ctx, m.GetData(), m.Local)
		}
	}()
	return nil
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

// MailboxOption configures NewMailboxService.
type MailboxOption func(*mailboxConfig) error

type mailboxConfig struct {
	shards            []uint16
	limits            store.MailboxLimits
	rate              rate.Limit
	burst             int
	streamsPerPeer    int
	idleTimeout       time.Duration
	frameTimeout      time.Duration
	reprovideInterval time.Duration
	provideRetry      time.Duration
	sweepInterval     time.Duration
	provide           bool
	now               func() time.Time
	onStored          func(env []byte, via DepositVia)
	logger            *slog.Logger
}

// DepositVia says how an envelope reached a mailbox.
type DepositVia uint8

// Deposit paths.
const (
	ViaStream DepositVia = 1 // MailboxProtocol DEPOSIT
	ViaGossip DepositVia = 2 // the shard's gossip topic
)

func (v DepositVia) String() string {
	switch v {
	case ViaStream:
		return "stream"
	case ViaGossip:
		return "gossip"
	}
	return fmt.Sprintf("DepositVia(%d)", uint8(v))
}

// WithMailboxShards sets the shards the mailbox serves (default: all).
func WithMailboxShards(shards ...uint16) MailboxOption {
	return func(c *mailboxConfig) error {
		for _, s := range shards {
			if s >= MailboxShards {
				return fmt.Errorf("%w: %d", ErrBadShard, s)
			}
		}
		c.shards = append(c.shards[:0:0], shards...)
		return nil
	}
}

// WithMailboxLimits sets the storage quotas (zero fields: store defaults).
func WithMailboxLimits(l store.MailboxLimits) MailboxOption {
	return func(c *mailboxConfig) error {
		c.limits = l
		return nil
	}
}

// WithMailboxRateLimit sets the per-peer token bucket: r requests per
// second with bursts of burst.
func WithMailboxRateLimit(r float64, burst int) MailboxOption {
	return func(c *mailboxConfig) error {
		if r <= 0 || burst <= 0 {
			return fmt.Errorf("%w: mailbox rate %v burst %d", ErrBadConfig, r, burst)
		}
		c.rate, c.burst = rate.Limit(r), burst
		return nil
	}
}

// WithMailboxTimeouts sets the idle timeout between requests and the
// per-frame timeout of mailbox streams.
func WithMailboxTimeouts(idle, frame time.Duration) MailboxOption {
	return func(c *mailboxConfig) error {
		if idle <= 0 || frame <= 0 {
			return fmt.Errorf("%w: mailbox timeouts must be positive", ErrBadConfig)
		}
		c.idleTimeout, c.frameTimeout = idle, frame
		return nil
	}
}

// WithMailboxStreamsPerPeer caps concurrent mailbox streams per peer.
func WithMailboxStreamsPerPeer(n int) MailboxOption {
	return func(c *mailboxConfig) error {
		if n <= 0 {
			return fmt.Errorf("%w: mailbox streams per peer %d", ErrBadConfig, n)
		}
		c.streamsPerPeer = n
		return nil
	}
}

// WithProvide turns the DHT announcements of the served shards on or off
// (on by default), and sets how often they are renewed and how soon a
// failed round is retried.
func WithProvide(on bool, every, retry time.Duration) MailboxOption {
	return func(c *mailboxConfig) error {
		if on && (every < MinRepublishInterval || retry < MinRepublishInterval) {
			return fmt.Errorf("%w: provide intervals below %v", ErrBadConfig, MinRepublishInterval)
		}
		c.provide, c.reprovideInterval, c.provideRetry = on, every, retry
		return nil
	}
}

// WithSweepInterval sets how often expired envelopes are deleted.
func WithSweepInterval(d time.Duration) MailboxOption {
	return func(c *mailboxConfig) error {
		if d <= 0 {
			return fmt.Errorf("%w: sweep interval %v", ErrBadConfig, d)
		}
		c.sweepInterval = d
		return nil
	}
}

// WithMailboxClock sets the clock deposits are validated and queries
// filtered with.
func WithMailboxClock(now func() time.Time) MailboxOption {
	return func(c *mailboxConfig) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrBadConfig)
		}
		c.now = now
		return nil
	}
}

// WithOnStored sets a function called after each envelope the mailbox
// newly stores (metrics, tests). It must not block.
func WithOnStored(fn func(env []byte, via DepositVia)) MailboxOption {
	return func(c *mailboxConfig) error {
		c.onStored = fn
		return nil
	}
}

// WithMailboxLogger sets the logger (default: the host's).
func WithMailboxLogger(l *slog.Logger) MailboxOption {
	return func(c *mailboxConfig) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadConfig)
		}
		c.logger = l
		return nil
	}
}

// MailboxService is the mailbox role: it stores envelopes deposited over
// MailboxProtocol or gossiped on its shards, serves queries and deletes,
// sweeps expired envelopes and announces its shards in the DHT.
type MailboxService struct {
	h   *Host
	g   *Gossip
	db  *store.DB
	cfg mailboxConfig

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	streams map[peer.ID]int
	limits  map[peer.ID]*rate.Limiter

	provided chan struct{} // closed after the first successful announcement
	provOnce sync.Once

	closeOnce sync.Once
}

// NewMailboxService starts the mailbox role on h, storing in db. With g
// non-nil it also subscribes to the served shards' topics. The caller
// keeps ownership of h, g and db and closes them after the service.
func NewMailboxService(h *Host, g *Gossip, db *store.DB, opts ...MailboxOption) (*MailboxService, error) {
	cfg := mailboxConfig{
		rate:              DefaultMailboxRate,
		burst:             DefaultMailboxBurst,
		streamsPerPeer:    DefaultMailboxStreamsPerPeer,
		idleTimeout:       DefaultMailboxIdleTimeout,
		frameTimeout:      DefaultMailboxFrameTimeout,
		reprovideInterval: DefaultReprovideInterval,
		provideRetry:      DefaultProvideRetry,
		sweepInterval:     DefaultSweepInterval,
		provide:           true,
		now:               h.cfg.now,
		logger:            h.cfg.logger,
	}
	for s := range uint16(MailboxShards) {
		cfg.shards = append(cfg.shards, s)
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if db == nil {
		return nil, fmt.Errorf("%w: mailbox needs a store", ErrBadConfig)
	}
	if h.isClosed() {
		return nil, ErrClosed
	}
	s := &MailboxService{
		h:        h,
		g:        g,
		db:       db,
		cfg:      cfg,
		streams:  make(map[peer.ID]int),
		limits:   make(map[peer.ID]*rate.Limiter),
		provided: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(h.ctx)
	if g != nil {
		for _, sh := range cfg.shards {
			if err := g.subscribe(s.ctx, &s.wg, sh, s.gossiped); err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	h.LibP2P().SetStreamHandler(MailboxProtocol, s.handleStream)
	s.wg.Add(1)
	go s.sweepLoop()
	if cfg.provide {
		s.wg.Add(1)
		go s.provideLoop()
	}
	return s, nil
}

// Close stops the service: it removes the stream handler, cancels the
// subscriptions and loops, resets open streams and waits for all of them.
// It does not close the store. Close is idempotent.
func (s *MailboxService) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.h.LibP2P().RemoveStreamHandler(MailboxProtocol)
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Provided is closed once the service has announced its shards in the DHT.
func (s *MailboxService) Provided() <-chan struct{} { return s.provided }

// Provide announces the served shards in the DHT now.
func (s *MailboxService) Provide(ctx context.Context) error {
	var errs []error
	for _, sh := range s.cfg.shards {
		if err := s.h.DHT().Provide(ctx, MailboxShardCID(sh), true); err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", sh, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node: provide mailbox shards: %w", err)
	}
	s.provOnce.Do(func() { close(s.provided) })
	return nil
}

func (s *MailboxService) provideLoop() {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, provideTimeout)
		err := s.Provide(ctx)
		cancel()
		next := s.cfg.reprovideInterval
		if err != nil {
			s.cfg.logger.Debug("mailbox provide failed", "err", err)
			next = s.cfg.provideRetry
		}
		t.Reset(next)
	}
}

// Sweep deletes expired envelopes and returns how many.
func (s *MailboxService) Sweep() (int, error) {
	total := 0
	for {
		var n int
		err := s.db.Update(func(tx *store.Tx) error {
			var err error
			n, err = tx.MailboxSweep(s.cfg.now())
			return err
		})
		total += n
		if err != nil || n < store.MaxMailboxSweep || s.ctx.Err() != nil {
			return total, err
		}
	}
}

func (s *MailboxService) sweepLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if n, err := s.Sweep(); err != nil {
				s.cfg.logger.Warn("mailbox sweep failed", "err", err)
			} else if n > 0 {
				s.cfg.logger.Debug("mailbox swept expired envelopes", "count", n)
			}
		}
	}
}

// gossiped stores an envelope that arrived on a served topic (the topic
// validator has checked it).
func (s *MailboxService) gossiped(_ context.Context, env []byte, _ bool) {
	st, r := s.store(env, s.db.Batch)
	if st != MailboxOK && st != MailboxDuplicate {
		s.cfg.logger.Debug("gossiped envelope not stored", "status", st, "reason", r)
	}
	if st == MailboxOK && s.cfg.onStored != nil {
		s.cfg.onStored(env, ViaGossip)
	}
}

// store validates env and stores it with commit (db.Update or db.Batch),
// mapping the outcome to a wire status.
func (s *MailboxService) store(env []byte, commit func(func(*store.Tx) error) error) (MailboxStatus, MailboxReason) {
	now := s.cfg.now()
	if err := checkEnvelope(env, now); err != nil {
		return MailboxRejected, reasonOf(err)
	}
	var stored bool
	err := commit(func(tx *store.Tx) error {
		var err error
		stored, err = tx.MailboxPut(env, now, s.cfg.limits)
		return err
	})
	switch {
	case err == nil && stored:
		return MailboxOK, ReasonNone
	case err == nil:
		return MailboxDuplicate, ReasonNone
	case errors.Is(err, store.ErrMailboxTagFull):
		return MailboxFull, ReasonTagQuota
	case errors.Is(err, store.ErrMailboxFull):
		return MailboxFull, ReasonCapacity
	case errors.Is(err, store.ErrMailboxInvalid):
		return MailboxRejected, reasonOf(err)
	}
	s.cfg.logger.Warn("mailbox store failed", "err", err)
	return MailboxUnavailable, ReasonNone
}

func reasonOf(err error) MailboxReason {
	switch {
	case errors.Is(err, protocol.ErrExpired):
		return ReasonExpired
	case errors.Is(err, protocol.ErrTTLTooLong):
		return ReasonTTLTooLong
	}
	return ReasonMalformed
}

// limiter returns p's token bucket.
func (s *MailboxService) allow(p peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limits[p]
	if l == nil {
		if len(s.limits) >= maxRateLimiters {
			now := time.Now()
			for q, ql := range s.limits {
				if ql.TokensAt(now) >= float64(s.cfg.burst) {
					delete(s.limits, q)
				}
			}
			if len(s.limits) >= maxRateLimiters {
				clear(s.limits)
			}
		}
		l = rate.NewLimiter(s.cfg.rate, s.cfg.burst)
		s.limits[p] = l
	}
	return l.Allow()
}

func (s *MailboxService) acquire(p peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.streams[p] >= s.cfg.streamsPerPeer {
		return false
	}
	s.streams[p]++
	s.wg.Add(1)
	return true
}

func (s *MailboxService) release(p peer.ID) {
	s.mu.Lock()
	if s.streams[p]--; s.streams[p] <= 0 {
		delete(s.streams, p)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// handleStream serves one mailbox stream.
func (s *MailboxService) handleStream(st network.Stream) {
	p := st.Conn().RemotePeer()
	if !s.acquire(p) {
		st.Reset()
		return
	}
	defer s.release(p)
	// Reset the stream when the service closes, so a blocked read ends.
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()
	err := s.serve(st, p)
	if err != nil && !errors.Is(err, ErrBadMailboxMessage) {
		s.cfg.logger.Debug("mailbox stream reset", "peer", p, "err", err)
		st.Reset()
		return
	}
	// After a bad request the stream ends without a reset, so that the
	// BadRequest response reaches the client.
	st.Close()
}

// serve answers requests on st until the client closes its side (nil) or
// anything goes wrong.
func (s *MailboxService) serve(st network.Stream, p peer.ID) error {
	br := bufio.NewReader(st)
	for {
		if err := st.SetReadDeadline(time.Now().Add(s.cfg.idleTimeout)); err != nil {
			return err
		}
		if _, err := br.Peek(1); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if err := st.SetReadDeadline(time.Now().Add(s.cfg.frameTimeout)); err != nil {
			return err
		}
		frame, err := readFrame(br, MaxMailboxRequestSize)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		req, perr := parseMailboxRequest(frame)
		var resp []byte
		switch {
		case perr != nil:
			resp = appendStatus(nil, MailboxBadRequest, ReasonNone)
		case !s.allow(p):
			resp = appendStatus(nil, MailboxThrottled, ReasonNone)
		default:
			resp = s.answer(req)
		}
		if err := st.SetWriteDeadline(time.Now().Add(s.cfg.frameTimeout)); err != nil {
			return err
		}
		if err := writeMailboxFrame(st, resp, MaxMailboxResponseSize); err != nil {
			return err
		}
		if perr != nil {
			return perr
		}
	}
}

// answer runs one decoded request.
func (s *MailboxService) answer(req *mailboxRequest) []byte {
	switch req.op {
	case mailboxOpDeposit:
		st, r := s.store(req.envelope, s.db.Update)
		if st == MailboxOK && s.cfg.onStored != nil {
			s.cfg.onStored(req.envelope, ViaStream)
		}
		return appendStatus(nil, st, r)
	case mailboxOpQuery:
		limit := req.limit
		if limit <= 0 || limit > MaxMailboxPage {
			limit = MaxMailboxPage
		}
		// Leave room for the fixed fields and each entry's length.
		maxBytes := MaxMailboxResponseSize - mailboxQueryRespFix - maxMailboxCursor - limit*mailboxEntryHeader
		var page store.MailboxPage
		err := s.db.View(func(tx *store.Tx) error {
			var err error
			page, err = tx.MailboxQuery(req.tags, req.cursor, limit, maxBytes, s.cfg.now())
			return err
		})
		if errors.Is(err, store.ErrBadCursor) {
			return appendStatus(nil, MailboxBadRequest, ReasonNone)
		}
		if err != nil {
			s.cfg.logger.Warn("mailbox query failed", "err", err)
			return appendStatus(nil, MailboxUnavailable, ReasonNone)
		}
		return appendQueryResponse(nil, page)
	case mailboxOpDelete:
		deleted := 0
		err := s.db.Update(func(tx *store.Tx) error {
			deleted = 0
			for _, tok := range req.tokens {
				n, err := tx.MailboxDelete(req.tag, tok)
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				deleted += n
			}
			return nil
		})
		if err != nil {
			s.cfg.logger.Warn("mailbox delete failed", "err", err)
			return appendStatus(nil, MailboxUnavailable, ReasonNone)
		}
		return binary.BigEndian.AppendUint16(appendStatus(nil, MailboxOK, ReasonNone), uint16(min(deleted, 0xffff)))
	}
	return appendStatus(nil, MailboxBadRequest, ReasonNone)
}

// MailboxClientOption configures NewMailboxClient.
type MailboxClientOption func(*mailboxClientConfig) error

type mailboxClientConfig struct {
	static    []peer.AddrInfo
	opTimeout time.Duration
	logger    *slog.Logger
}

// WithStaticMailboxes adds mailboxes to use for every shard, before any
// the DHT names.
func WithStaticMailboxes(peers ...peer.AddrInfo) MailboxClientOption {
	return func(c *mailboxClientConfig) error {
		c.static = append(c.static, peers...)
		return nil
	}
}

// WithMailboxOpTimeout bounds a request whose context has no deadline.
func WithMailboxOpTimeout(d time.Duration) MailboxClientOption {
	return func(c *mailboxClientConfig) error {
		if d <= 0 {
			return fmt.Errorf("%w: mailbox op timeout %v", ErrBadConfig, d)
		}
		c.opTimeout = d
		return nil
	}
}

// MailboxClient deposits envelopes at mailboxes, queries and deletes, and
// subscribes to shards for live delivery.
type MailboxClient struct {
	h   *Host
	g   *Gossip
	cfg mailboxClientConfig

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	cache  map[uint16]mailboxCacheEntry
	closed bool // no new subscription after Close

	closeOnce sync.Once
}

type mailboxCacheEntry struct {
	peers []peer.ID
	at    time.Time
}

// NewMailboxClient returns a client on h; g may be nil (no gossip: Deposit
// only deposits directly, SubscribeShards fails).
func NewMailboxClient(h *Host, g *Gossip, opts ...MailboxClientOption) (*MailboxClient, error) {
	cfg := mailboxClientConfig{opTimeout: DefaultMailboxOpTimeout, logger: h.cfg.logger}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	c := &MailboxClient{h: h, g: g, cfg: cfg, cache: make(map[uint16]mailboxCacheEntry)}
	c.ctx, c.cancel = context.WithCancel(h.ctx)
	return c, nil
}

// Close ends the client's subscriptions and waits for them. Idempotent.
func (c *MailboxClient) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.cancel()
		c.wg.Wait()
	})
	return nil
}

// SubscribeShards calls fn for every valid envelope gossiped on the given
// shards (an online recipient gets deposits at once), including envelopes
// this node publishes, until the returned cancel is called or the client
// closes. fn runs on one goroutine per shard and should not block long.
func (c *MailboxClient) SubscribeShards(shards []uint16, fn func(env []byte)) (cancel func(), err error) {
	if c.g == nil {
		return nil, fmt.Errorf("%w: no gossip", ErrBadConfig)
	}
	ctx, stop := context.WithCancel(c.ctx)
	var wg sync.WaitGroup
	cancel = func() {
		stop()
		wg.Wait()
	}
	for _, sh := range shards {
		if err := c.g.subscribe(ctx, &wg, sh, func(_ context.Context, env []byte, _ bool) { fn(env) }); err != nil {
			cancel()
			return nil, err
		}
	}
	// Every wg.Add happened above: from here on only Wait.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return nil, ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() { // owns wg on behalf of the client's Close
		defer c.wg.Done()
		<-ctx.Done()
		wg.Wait()
	}()
	return cancel, nil
}

// providerGrace is how long a mailbox search goes on after its first
// answer.
const providerGrace = time.Second

// Mailboxes returns the mailboxes for shard this node is connected to: the
// static ones first, then providers the DHT names for the shard. Each is
// protected in the connection manager. The list is cached for
// mailboxCacheTTL while every mailbox on it stays connected.
func (c *MailboxClient) Mailboxes(ctx context.Context, shard uint16) []peer.ID {
	c.mu.Lock()
	e, ok := c.cache[shard]
	c.mu.Unlock()
	if ok && time.Since(e.at) < mailboxCacheTTL {
		// Reuse the cached list while all of it is still connected.
		live := true
		for _, p := range e.peers {
			live = live && c.h.LibP2P().Network().Connectedness(p) == network.Connected
		}
		if live {
			return append([]peer.ID(nil), e.peers...)
		}
	}

	self := c.h.ID()
	seen := map[peer.ID]bool{self: true}
	var out []peer.ID
	add := func(ai peer.AddrInfo) {
		if seen[ai.ID] {
			return
		}
		seen[ai.ID] = true
		if err := c.connect(ctx, ai); err != nil {
			c.cfg.logger.Debug("mailbox unreachable", "peer", ai.ID, "err", err)
			return
		}
		c.h.Protect(ai.ID, MailboxProtectTag)
		out = append(out, ai.ID)
	}
	for _, ai := range c.cfg.static {
		add(ai)
	}
	// Mailboxes found before that are still connected stay on the list.
	if ok {
		for _, p := range e.peers {
			if c.h.LibP2P().Network().Connectedness(p) == network.Connected {
				add(peer.AddrInfo{ID: p})
			}
		}
	}
	// The provider search can outlast its answers by seconds (it walks
	// peers that are gone): once some mailboxes are found, wait only a
	// short grace for more.
	fctx, cancel := context.WithTimeout(ctx, findProvidersTimeout)
	found := c.h.DHT().FindProvidersAsync(fctx, MailboxShardCID(shard), maxMailboxProviders)
	var grace <-chan time.Time
search:
	for {
		select {
		case ai, ok := <-found:
			if !ok {
				break search
			}
			add(ai)
			if len(out) > 0 && grace == nil {
				t := time.NewTimer(providerGrace)
				defer t.Stop()
				grace = t.C
			}
		case <-grace:
			break search
		}
	}
	cancel()
	for range found { // the search ends on cancel; drain it
	}
	if len(out) > 0 {
		c.mu.Lock()
		c.cache[shard] = mailboxCacheEntry{peers: out, at: time.Now()}
		c.mu.Unlock()
	}
	return append([]peer.ID(nil), out...)
}

func (c *MailboxClient) connect(ctx context.Context, ai peer.AddrInfo) error {
	if c.h.LibP2P().Network().Connectedness(ai.ID) == network.Connected {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, mailboxConnectTimeout)
	defer cancel()
	return c.h.Connect(ctx, ai)
}

// Deposit publishes env on its shard's topic and deposits it directly at up
// to k mailboxes for the shard (DefaultDepositK if k <= 0), trying further
// mailboxes when one fails. It returns how many mailboxes acknowledged
// storing it (stored or duplicate); the error is nil if at least one did.
// A mailbox's rejection of the envelope as invalid ends the attempt.
func (c *MailboxClient) Deposit(ctx context.Context, env *protocol.Envelope, k int) (int, error) {
	if k <= 0 {
		k = DefaultDepositK
	}
	raw := env.Marshal()
	if c.g != nil {
		if err := c.g.Publish(ctx, raw); err != nil {
			if errors.Is(err, ErrMalformedEnvelope) {
				return 0, err
			}
			c.cfg.logger.Debug("gossip publish failed", "err", err)
		}
	}
	cands := c.Mailboxes(ctx, env.Tag.Shard(MailboxShards))
	if len(cands) == 0 {
		return 0, ErrNoMailbox
	}
	type result struct {
		p   peer.ID
		err error
	}
	res := make(chan result, len(cands))
	next, running, stored := 0, 0, 0
	var errs []error
	for stored < k && (next < len(cands) || running > 0) {
		for running < k-stored && next < len(cands) {
			p := cands[next]
			next++
			running++
			go func() { res <- result{p, c.DepositTo(ctx, p, raw)} }()
		}
		r := <-res
		running--
		switch {
		case r.err == nil:
			stored++
		case errors.Is(r.err, ErrMailboxRejected):
			errs = append(errs, r.err)
			next = len(cands) // the envelope itself is refused
		default:
			errs = append(errs, fmt.Errorf("%s: %w", r.p, r.err))
		}
	}
	for ; running > 0; running-- { // results of deposits beyond k
		if r := <-res; r.err == nil {
			stored++
		}
	}
	if stored == 0 {
		return 0, fmt.Errorf("%w: %w", ErrNoMailbox, errors.Join(errs...))
	}
	return stored, nil
}

// DepositTo deposits env at mailbox mbx and waits for its ack: nil if it
// stored the envelope (or already had it), else a *MailboxError or a
// transport error.
func (c *MailboxClient) DepositTo(ctx context.Context, mbx peer.ID, env []byte) error {
	if len(env) == 0 || len(env) > protocol.MaxEnvelopeSize {
		return fmt.Errorf("%w: envelope of %d bytes", ErrFrameSize, len(env))
	}
	_, body, err := c.roundTrip(ctx, mbx, appendDepositRequest(nil, env))
	if err == nil && len(body) != 0 {
		err = fmt.Errorf("%w: deposit response of %d bytes", ErrBadMailboxMessage, len(body)+mailboxRespHeader)
	}
	return err
}

// QueryResult is one page of envelopes from a mailbox.
type QueryResult struct {
	Envelopes [][]byte
	Cursor    []byte // resume after this page
	More      bool   // the mailbox may have more
}

// Query asks mailbox mbx for the envelopes under tags after cursor (nil:
// from the start), at most limit (the mailbox's maximum if limit <= 0).
func (c *MailboxClient) Query(ctx context.Context, mbx peer.ID, tags []protocol.Tag, cursor []byte, limit int) (QueryResult, error) {
	if len(tags) == 0 || len(tags) > MaxMailboxQueryTags {
		return QueryResult{}, fmt.Errorf("node: query of %d tags (1..%d)", len(tags), MaxMailboxQueryTags)
	}
	if len(cursor) != 0 && len(cursor) != store.MailboxCursorSize {
		return QueryResult{}, fmt.Errorf("%w: bad cursor", ErrBadConfig)
	}
	if limit <= 0 || limit > MaxMailboxPage {
		limit = MaxMailboxPage
	}
	ts := make([][32]byte, len(tags))
	for i, t := range tags {
		ts[i] = t
	}
	_, body, err := c.roundTrip(ctx, mbx, appendQueryRequest(nil, ts, cursor, limit))
	if err != nil {
		return QueryResult{}, err
	}
	q, err := parseQueryBody(body, limit)
	if err != nil {
		return QueryResult{}, err
	}
	return QueryResult{Envelopes: q.envelopes, Cursor: q.cursor, More: q.more}, nil
}

// Delete reveals delete tokens for envelopes under tag at mailbox mbx and
// returns how many envelopes it deleted. Tokens that match nothing (wrong,
// or already used) delete nothing.
func (c *MailboxClient) Delete(ctx context.Context, mbx peer.ID, tag protocol.Tag, tokens [][32]byte) (int, error) {
	if len(tokens) == 0 || len(tokens) > MaxMailboxDeleteTokens {
		return 0, fmt.Errorf("node: delete of %d tokens (1..%d)", len(tokens), MaxMailboxDeleteTokens)
	}
	_, body, err := c.roundTrip(ctx, mbx, appendDeleteRequest(nil, tag, tokens))
	if err != nil {
		return 0, err
	}
	if len(body) != 2 {
		return 0, fmt.Errorf("%w: delete response of %d bytes", ErrBadMailboxMessage, len(body))
	}
	return int(binary.BigEndian.Uint16(body)), nil
}

// roundTrip sends one request on a fresh stream to mbx and reads the
// response.
func (c *MailboxClient) roundTrip(ctx context.Context, mbx peer.ID, req []byte) (MailboxStatus, []byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.opTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := c.ctx.Err(); err != nil {
		return 0, nil, ErrClosed
	}
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	st, err := c.h.LibP2P().NewStream(ctx, mbx, MailboxProtocol)
	if err != nil {
		return 0, nil, fmt.Errorf("node: open mailbox stream to %s: %w", mbx, err)
	}
	// The context's deadline bounds every read and write; cancelling it
	// resets the stream.
	dl, _ := ctx.Deadline()
	st.SetDeadline(dl)
	unreset := context.AfterFunc(ctx, func() { st.Reset() })
	defer unreset()
	if err := writeMailboxFrame(st, req, MaxMailboxRequestSize); err != nil {
		st.Reset()
		return 0, nil, err
	}
	if err := st.CloseWrite(); err != nil {
		st.Reset()
		return 0, nil, err
	}
	resp, err := readFrame(st, MaxMailboxResponseSize)
	if err != nil {
		st.Reset()
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, err
	}
	status, body, err := parseResponse(resp)
	if err != nil {
		st.Reset()
		return 0, nil, err
	}
	st.Close()
	return status, body, nil
}
