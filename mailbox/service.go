package mailbox

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Mailbox service and client defaults.
const (
	// DefaultRate and DefaultBurst are the per-peer token
	// bucket of a mailbox: requests per second, and burst.
	DefaultRate  = 50
	DefaultBurst = 200
	// DefaultStreamsPerPeer caps concurrent mailbox streams from
	// one peer; excess streams are reset.
	DefaultStreamsPerPeer = 4
	// DefaultIdleTimeout bounds how long a mailbox stream may sit
	// between requests; DefaultFrameTimeout bounds one frame's
	// arrival (after its first byte) and one response write.
	DefaultIdleTimeout  = 30 * time.Second
	DefaultFrameTimeout = 10 * time.Second
	// DefaultReprovideInterval is how often a mailbox announces its shards
	// in the DHT (provider records live 48 hours);
	// DefaultProvideRetry is how soon it retries a failed announcement.
	DefaultReprovideInterval = 12 * time.Hour
	DefaultProvideRetry      = time.Minute
	// provideTimeout bounds one round of announcements.
	provideTimeout = 5 * time.Minute
	// DefaultSweepInterval is how often a mailbox deletes expired envelopes.
	DefaultSweepInterval = 10 * time.Minute
	// DefaultOpTimeout bounds one client request when the caller's
	// context has no deadline.
	DefaultOpTimeout = 30 * time.Second
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
	// ProtectTag is the connection-manager tag of mailbox peers.
	ProtectTag = "mailbox"
)

// ErrBadConfig is an option with a value out of range.
var ErrBadConfig = errors.New("mailbox: bad configuration")

// Option configures NewService.
type Option func(*config) error

type config struct {
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
	stampBits         int
	netKey            func(network.Conn) string
	regsPerNet        int
	legacyDeposits    bool
	meshRate          rate.Limit
	meshBurst         int
	now               func() time.Time
	onStored          func(env []byte, via DepositVia)
	observe           func(Seen)
	logger            *slog.Logger
	deposits, served  *atomic.Uint64 // WithCounters
}

// DepositVia says how an envelope reached a mailbox.
type DepositVia uint8

// Deposit paths.
const (
	ViaStream DepositVia = 1 // Protocol DEPOSIT
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

// WithShards sets the shards the mailbox serves (default: all).
func WithShards(shards ...uint16) Option {
	return func(c *config) error {
		for _, s := range shards {
			if s >= Shards {
				return fmt.Errorf("%w: %d", ErrBadShard, s)
			}
		}
		c.shards = append(c.shards[:0:0], shards...)
		return nil
	}
}

// WithLimits sets the storage quotas (zero fields: store defaults).
func WithLimits(l store.MailboxLimits) Option {
	return func(c *config) error {
		c.limits = l
		return nil
	}
}

// WithRateLimit sets the per-peer token bucket: r requests per
// second with bursts of burst.
func WithRateLimit(r float64, burst int) Option {
	return func(c *config) error {
		if r <= 0 || burst <= 0 {
			return fmt.Errorf("%w: mailbox rate %v burst %d", ErrBadConfig, r, burst)
		}
		c.rate, c.burst = rate.Limit(r), burst
		return nil
	}
}

// WithTimeouts sets the idle timeout between requests and the
// per-frame timeout of mailbox streams.
func WithTimeouts(idle, frame time.Duration) Option {
	return func(c *config) error {
		if idle <= 0 || frame <= 0 {
			return fmt.Errorf("%w: mailbox timeouts must be positive", ErrBadConfig)
		}
		c.idleTimeout, c.frameTimeout = idle, frame
		return nil
	}
}

// WithStreamsPerPeer caps concurrent mailbox streams per peer.
func WithStreamsPerPeer(n int) Option {
	return func(c *config) error {
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
func WithProvide(on bool, every, retry time.Duration) Option {
	return func(c *config) error {
		if on && (every < p2p.MinRepublishInterval || retry < p2p.MinRepublishInterval) {
			return fmt.Errorf("%w: provide intervals below %v", ErrBadConfig, p2p.MinRepublishInterval)
		}
		c.provide, c.reprovideInterval, c.provideRetry = on, every, retry
		return nil
	}
}

// WithSweepInterval sets how often expired envelopes are deleted.
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("%w: sweep interval %v", ErrBadConfig, d)
		}
		c.sweepInterval = d
		return nil
	}
}

// WithClock sets the clock deposits are validated and queries
// filtered with.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrBadConfig)
		}
		c.now = now
		return nil
	}
}

// WithOnStored sets a function called after each envelope the mailbox
// newly stores (metrics, tests). It must not block.
func WithOnStored(fn func(env []byte, via DepositVia)) Option {
	return func(c *config) error {
		c.onStored = fn
		return nil
	}
}

// WithCounters has the service count into deposits each envelope it newly
// stores (deposited over Protocol or gossiped on a served shard) and into
// served each envelope it returns to a query, instead of into counters of
// its own (Counts). The owner may read them at any time, whether or not
// the service runs.
func WithCounters(deposits, served *atomic.Uint64) Option {
	return func(c *config) error {
		if deposits == nil || served == nil {
			return fmt.Errorf("%w: nil counter", ErrBadConfig)
		}
		c.deposits, c.served = deposits, served
		return nil
	}
}

// WithLogger sets the logger (default: the host's).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadConfig)
		}
		c.logger = l
		return nil
	}
}

// Service is the mailbox role: it stores envelopes deposited over
// Protocol or gossiped on its shards, serves queries and deletes,
// sweeps expired envelopes and announces its shards in the DHT.
type Service struct {
	h   *p2p.Host
	g   *p2p.Gossip
	db  *store.DB
	cfg config

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	streams map[peer.ID]int
	limits  *p2p.PeerLimiter

	v2 v2state

	provided chan struct{} // closed after the first successful announcement
	provOnce sync.Once

	closeOnce sync.Once
}

// NewService starts the mailbox role on h, storing in db. With g
// non-nil it also subscribes to the served shards' topics. The caller
// keeps ownership of h, g and db and closes them after the service.
func NewService(h *p2p.Host, g *p2p.Gossip, db *store.DB, opts ...Option) (*Service, error) {
	cfg := config{
		rate:              DefaultRate,
		burst:             DefaultBurst,
		streamsPerPeer:    DefaultStreamsPerPeer,
		idleTimeout:       DefaultIdleTimeout,
		frameTimeout:      DefaultFrameTimeout,
		reprovideInterval: DefaultReprovideInterval,
		provideRetry:      DefaultProvideRetry,
		sweepInterval:     DefaultSweepInterval,
		provide:           true,
		stampBits:         protocol.DefaultStampBits,
		netKey:            defaultNetKey,
		regsPerNet:        MaxRegistrationsPerNet,
		legacyDeposits:    true,
		meshRate:          MeshDepositRate,
		meshBurst:         MeshDepositBurst,
		now:               h.Clock(),
		logger:            h.Logger(),
		deposits:          new(atomic.Uint64),
		served:            new(atomic.Uint64),
	}
	for s := range uint16(Shards) {
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
	if h.Closed() {
		return nil, p2p.ErrClosed
	}
	s := &Service{
		h:        h,
		g:        g,
		db:       db,
		cfg:      cfg,
		streams:  make(map[peer.ID]int),
		limits:   p2p.NewPeerLimiter(cfg.rate, cfg.burst),
		provided: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(h.Context())
	if g != nil {
		for _, sh := range cfg.shards {
			t, err := joinShard(g, sh, cfg.now)
			if err == nil {
				err = g.Subscribe(s.ctx, &s.wg, t, s.gossiped)
			}
			if err != nil {
				s.Close()
				return nil, err
			}
		}
	}
	h.LibP2P().SetStreamHandler(Protocol, s.handleStream)
	if err := s.startV2(); err != nil {
		s.Close()
		return nil, err
	}
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
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.h.LibP2P().RemoveStreamHandler(Protocol)
		s.h.LibP2P().RemoveStreamHandler(Protocol2)
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Counts reports how many envelopes the service has newly stored
// (deposits accepted) and how many it has returned to queries (envelopes
// served).
func (s *Service) Counts() (deposits, served uint64) {
	return s.cfg.deposits.Load(), s.cfg.served.Load()
}

// Provided is closed once the service has announced its shards in the DHT.
func (s *Service) Provided() <-chan struct{} { return s.provided }

// Provide announces the served shards, and the node as a version 2
// mailbox (DirectoryKey), in the DHT now.
func (s *Service) Provide(ctx context.Context) error {
	var errs []error
	if err := s.provideDirectory(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, sh := range s.cfg.shards {
		if err := s.h.DHT().Provide(ctx, ShardCID(sh), true); err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", sh, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mailbox: provide mailbox shards: %w", err)
	}
	s.provOnce.Do(func() { close(s.provided) })
	return nil
}

func (s *Service) provideLoop() {
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
func (s *Service) Sweep() (int, error) {
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

func (s *Service) sweepLoop() {
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
func (s *Service) gossiped(env []byte) {
	if !s.legacyOpen() {
		return
	}
	st, r := s.store(env, s.db.Batch)
	if st != StatusOK && st != StatusDuplicate {
		s.cfg.logger.Debug("gossiped envelope not stored", "status", st, "reason", r)
	}
	if st == StatusOK && s.cfg.onStored != nil {
		s.cfg.onStored(env, ViaGossip)
	}
}

// store validates env and stores it with commit (db.Update or db.Batch),
// mapping the outcome to a wire status.
func (s *Service) store(env []byte, commit func(func(*store.Tx) error) error) (Status, Reason) {
	now := s.cfg.now()
	if err := checkEnvelope(env, now); err != nil {
		return StatusRejected, reasonOf(err)
	}
	var stored bool
	err := commit(func(tx *store.Tx) error {
		var err error
		stored, err = tx.MailboxPut(env, now, s.cfg.limits)
		return err
	})
	switch {
	case err == nil && stored:
		s.cfg.deposits.Add(1)
		return StatusOK, ReasonNone
	case err == nil:
		return StatusDuplicate, ReasonNone
	case errors.Is(err, store.ErrMailboxTagFull):
		return StatusFull, ReasonTagQuota
	case errors.Is(err, store.ErrMailboxFull):
		return StatusFull, ReasonCapacity
	case errors.Is(err, store.ErrMailboxInvalid):
		return StatusRejected, reasonOf(err)
	case errors.Is(err, store.ErrMailboxNeedsCredential):
		return StatusRejected, ReasonCredential
	}
	s.cfg.logger.Warn("mailbox store failed", "err", err)
	return StatusUnavailable, ReasonNone
}

func reasonOf(err error) Reason {
	switch {
	case errors.Is(err, protocol.ErrExpired):
		return ReasonExpired
	case errors.Is(err, protocol.ErrTTLTooLong):
		return ReasonTTLTooLong
	}
	return ReasonMalformed
}

func (s *Service) acquire(p peer.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.streams[p] >= s.cfg.streamsPerPeer {
		return false
	}
	s.streams[p]++
	s.wg.Add(1)
	return true
}

func (s *Service) release(p peer.ID) {
	s.mu.Lock()
	if s.streams[p]--; s.streams[p] <= 0 {
		delete(s.streams, p)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// handleStream serves one mailbox stream.
func (s *Service) handleStream(st network.Stream) {
	p := st.Conn().RemotePeer()
	if !s.acquire(p) {
		st.Reset()
		return
	}
	defer s.release(p)
	// Reset the stream when the service closes, so a blocked read ends.
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()
	err := s.serveFrames(st, MaxRequestSize, func(frame []byte) ([]byte, error, takeover) {
		req, perr := parseRequest(frame)
		switch {
		case perr != nil:
			return appendStatus(nil, StatusBadRequest, ReasonNone), perr, nil
		case !s.limits.Allow(p):
			return appendStatus(nil, StatusThrottled, ReasonNone), nil, nil
		}
		s.observe(st.Conn(), req.op, req.tags, req.tag, req.envelope)
		if !protocol.Version1Reads(s.cfg.now()) {
			// The upgrade window is over, and what it left is expired.
			return appendStatus(nil, StatusRejected, ReasonOldProtocol), nil, nil
		}
		return s.answer(req), nil, nil
	})
	s.endStream(st, p, err)
}

// legacyOpen reports whether the mailbox takes version 1 deposits now:
// unless turned off, until protocol.Version1Ends.
func (s *Service) legacyOpen() bool {
	return s.cfg.legacyDeposits && protocol.Version1Deposits(s.cfg.now())
}

// endStream ends a served stream: a reset after an error, a close after
// the client's end or a bad request (so that the BadRequest response
// reaches the client).
func (s *Service) endStream(st network.Stream, p peer.ID, err error) {
	if err != nil && !errors.Is(err, ErrBadMessage) {
		s.cfg.logger.Debug("mailbox stream reset", "peer", p, "err", err)
		st.Reset()
		return
	}
	st.Close()
}

// serveFrames answers request frames of at most max bytes on st with
// handle until the client closes its side (nil) or anything goes wrong.
// handle returns the response, the decoding error of a bad request (the
// stream ends after its response) and, optionally, what runs the rest of
// the stream after the response.
func (s *Service) serveFrames(st network.Stream, max int, handle func(frame []byte) ([]byte, error, takeover)) error {
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
		frame, err := p2p.ReadFrame(br, max)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		resp, bad, rest := handle(frame)
		if err := st.SetWriteDeadline(time.Now().Add(s.cfg.frameTimeout)); err != nil {
			return err
		}
		out, err := p2p.AppendFrame(nil, resp, MaxResponseSize)
		if err != nil {
			return err
		}
		if _, err := st.Write(out); err != nil {
			return err
		}
		if bad != nil {
			return bad
		}
		if rest != nil {
			return rest(st, br)
		}
	}
}

// answer runs one decoded request.
func (s *Service) answer(req *request) []byte {
	switch req.op {
	case opDeposit:
		if !s.legacyOpen() {
			return appendStatus(nil, StatusRejected, ReasonOldProtocol)
		}
		st, r := s.store(req.envelope, s.db.Update)
		if st == StatusOK && s.cfg.onStored != nil {
			s.cfg.onStored(req.envelope, ViaStream)
		}
		return appendStatus(nil, st, r)
	case opQuery:
		limit := req.limit
		if limit <= 0 || limit > MaxPage {
			limit = MaxPage
		}
		// Leave room for the fixed fields and each entry's length.
		maxBytes := MaxResponseSize - queryRespFix - maxCursor - limit*entryHeader
		var page store.MailboxPage
		err := s.db.View(func(tx *store.Tx) error {
			var err error
			page, err = tx.MailboxQuery(req.tags, req.cursor, limit, maxBytes, s.cfg.now())
			return err
		})
		if errors.Is(err, store.ErrBadCursor) {
			return appendStatus(nil, StatusBadRequest, ReasonNone)
		}
		if err != nil {
			s.cfg.logger.Warn("mailbox query failed", "err", err)
			return appendStatus(nil, StatusUnavailable, ReasonNone)
		}
		s.cfg.served.Add(uint64(len(page.Entries)))
		return appendQueryResponse(nil, page)
	case opDelete:
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
			return appendStatus(nil, StatusUnavailable, ReasonNone)
		}
		return binary.BigEndian.AppendUint16(appendStatus(nil, StatusOK, ReasonNone), uint16(min(deleted, 0xffff)))
	}
	return appendStatus(nil, StatusBadRequest, ReasonNone)
}

// Holding is what a mailbox node holds for others.
type Holding struct {
	Envelopes int64
	Bytes     int64
}

// Held reports what the mailbox store in db holds.
func Held(db *store.DB) Holding {
	var h Holding
	db.View(func(tx *store.Tx) error {
		var err error
		h.Envelopes, h.Bytes, err = tx.MailboxStats()
		return err
	})
	return h
}

// HeldEnvelope is one envelope a mailbox node holds, as the mailbox sees
// it: outer fields and ciphertext only.
type HeldEnvelope struct {
	Tag        [32]byte
	Expiry     time.Time
	Size       int
	Ciphertext []byte
	Envelope   []byte // the whole envelope, as it travels
}

// Peek lists up to limit envelopes the mailbox store in db holds, oldest
// first.
func Peek(db *store.DB, limit int) ([]HeldEnvelope, error) {
	var out []HeldEnvelope
	err := db.View(func(tx *store.Tx) error {
		es, err := tx.MailboxPeek(limit)
		if err != nil {
			return err
		}
		for _, e := range es {
			env, err := protocol.ParseEnvelope(e.Envelope)
			if err != nil {
				return err
			}
			out = append(out, HeldEnvelope{Tag: env.Tag, Expiry: env.Expiry, Size: len(e.Envelope), Ciphertext: env.Ciphertext, Envelope: e.Envelope})
		}
		return nil
	})
	return out, err
}
