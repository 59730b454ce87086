package mailbox

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	static    []peer.AddrInfo
	opTimeout time.Duration
	now       func() time.Time
	logger    *slog.Logger
}

// WithStaticMailboxes adds mailboxes to use for every shard, before any
// the DHT names.
func WithStaticMailboxes(peers ...peer.AddrInfo) ClientOption {
	return func(c *clientConfig) error {
		c.static = append(c.static, peers...)
		return nil
	}
}

// WithOpTimeout bounds a request whose context has no deadline.
func WithOpTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return fmt.Errorf("%w: mailbox op timeout %v", ErrBadConfig, d)
		}
		c.opTimeout = d
		return nil
	}
}

// WithClientClock sets the clock envelopes are checked with before they
// are published (default: the host's).
func WithClientClock(now func() time.Time) ClientOption {
	return func(c *clientConfig) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrBadConfig)
		}
		c.now = now
		return nil
	}
}

// Client deposits envelopes at mailboxes, queries and deletes, and
// subscribes to shards for live delivery.
type Client struct {
	h   *p2p.Host
	g   *p2p.Gossip
	cfg clientConfig

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

// NewClient returns a client on h; g may be nil (no gossip: Deposit
// only deposits directly, SubscribeShards fails).
func NewClient(h *p2p.Host, g *p2p.Gossip, opts ...ClientOption) (*Client, error) {
	cfg := clientConfig{opTimeout: DefaultOpTimeout, now: h.Clock(), logger: h.Logger()}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	c := &Client{h: h, g: g, cfg: cfg, cache: make(map[uint16]mailboxCacheEntry)}
	c.ctx, c.cancel = context.WithCancel(h.Context())
	return c, nil
}

// Close ends the client's subscriptions and waits for them. Idempotent.
func (c *Client) Close() error {
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
//
// onJoin, when not nil, runs for every mailbox (a peer serving Protocol)
// that joins one of the shards while subscribed: a deposit it published
// before the two knew of each other's subscription did not reach this
// node, and a query to it now finds it.
func (c *Client) SubscribeShards(shards []uint16, fn func(env []byte), onJoin func(mbx peer.ID)) (cancel func(), err error) {
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
		t, err := joinShard(c.g, sh, c.cfg.now)
		if err == nil {
			err = c.g.Subscribe(ctx, &wg, t, fn)
		}
		if err == nil && onJoin != nil {
			err = c.g.OnPeerJoin(ctx, &wg, t, func(p peer.ID) {
				// Before identify has run the protocols are not known
				// yet: the peer may be a mailbox.
				ps := c.h.LibP2P().Peerstore()
				known, _ := ps.GetProtocols(p)
				if ok, _ := ps.SupportsProtocols(p, Protocol); len(ok) > 0 || len(known) == 0 {
					onJoin(p)
				}
			})
		}
		if err != nil {
			cancel()
			return nil, err
		}
	}
	// Every wg.Add happened above: from here on only Wait.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return nil, p2p.ErrClosed
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
func (c *Client) Mailboxes(ctx context.Context, shard uint16) []peer.ID {
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
		c.h.Protect(ai.ID, ProtectTag)
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
	found := c.h.DHT().FindProvidersAsync(fctx, ShardCID(shard), maxMailboxProviders)
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

func (c *Client) connect(ctx context.Context, ai peer.AddrInfo) error {
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
func (c *Client) Deposit(ctx context.Context, env *protocol.Envelope, k int) (int, error) {
	if k <= 0 {
		k = DefaultDepositK
	}
	raw := env.Marshal()
	if c.g != nil {
		if err := publish(ctx, c.g, raw, c.cfg.now); err != nil {
			if errors.Is(err, p2p.ErrMalformedEnvelope) {
				return 0, err
			}
			c.cfg.logger.Debug("gossip publish failed", "err", err)
		}
	}
	cands := c.Mailboxes(ctx, env.Tag.Shard(Shards))
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
		case errors.Is(r.err, ErrRejected):
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
// stored the envelope (or already had it), else a *Error or a
// transport error.
func (c *Client) DepositTo(ctx context.Context, mbx peer.ID, env []byte) error {
	if len(env) == 0 || len(env) > protocol.MaxEnvelopeSize {
		return fmt.Errorf("%w: envelope of %d bytes", p2p.ErrFrameSize, len(env))
	}
	_, body, err := c.roundTrip(ctx, mbx, appendDepositRequest(nil, env))
	if err == nil && len(body) != 0 {
		err = fmt.Errorf("%w: deposit response of %d bytes", ErrBadMessage, len(body)+respHeader)
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
func (c *Client) Query(ctx context.Context, mbx peer.ID, tags []protocol.Tag, cursor []byte, limit int) (QueryResult, error) {
	ts := make([][32]byte, len(tags))
	for i, t := range tags {
		ts[i] = t
	}
	return query(ts, cursor, limit, opQuery, func(req []byte) ([]byte, error) {
		_, body, err := c.roundTrip(ctx, mbx, req)
		return body, err
	})
}

// query runs a QUERY of either version (op) through send, which returns
// the body of an OK response.
func query(tags [][32]byte, cursor []byte, limit int, op byte, send func(req []byte) ([]byte, error)) (QueryResult, error) {
	if len(tags) == 0 || len(tags) > MaxQueryTags {
		return QueryResult{}, fmt.Errorf("mailbox: query of %d tags (1..%d)", len(tags), MaxQueryTags)
	}
	if len(cursor) != 0 && len(cursor) != store.MailboxCursorSize {
		return QueryResult{}, fmt.Errorf("%w: bad cursor", ErrBadConfig)
	}
	if limit <= 0 || limit > MaxPage {
		limit = MaxPage
	}
	body, err := send(appendQuery(nil, op, tags, cursor, limit))
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
func (c *Client) Delete(ctx context.Context, mbx peer.ID, tag protocol.Tag, tokens [][32]byte) (int, error) {
	return deleteTokens(tag, tokens, opDelete, func(req []byte) ([]byte, error) {
		_, body, err := c.roundTrip(ctx, mbx, req)
		return body, err
	})
}

// deleteTokens runs a DELETE of either version (op) through send, which
// returns the body of an OK response.
func deleteTokens(tag [32]byte, tokens [][32]byte, op byte, send func(req []byte) ([]byte, error)) (int, error) {
	if len(tokens) == 0 || len(tokens) > MaxDeleteTokens {
		return 0, fmt.Errorf("mailbox: delete of %d tokens (1..%d)", len(tokens), MaxDeleteTokens)
	}
	body, err := send(appendDelete(nil, op, tag, tokens))
	if err != nil {
		return 0, err
	}
	if len(body) != 2 {
		return 0, fmt.Errorf("%w: delete response of %d bytes", ErrBadMessage, len(body)+respHeader)
	}
	return int(binary.BigEndian.Uint16(body)), nil
}

// roundTrip sends one request on a fresh stream to mbx and reads the
// response.
func (c *Client) roundTrip(ctx context.Context, mbx peer.ID, req []byte) (Status, []byte, error) {
	return exchange(ctx, c.ctx, c.h.LibP2P(), mbx, Protocol, req, MaxRequestSize, c.cfg.opTimeout)
}

// exchange sends one request on a fresh stream of proto from h to mbx and
// reads the response. A ctx without a deadline gets opTimeout; closing
// ends the exchange when the owner closes.
func exchange(ctx, closing context.Context, h host.Host, mbx peer.ID, proto libp2pproto.ID, req []byte, maxReq int, opTimeout time.Duration) (Status, []byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := closing.Err(); err != nil {
		return 0, nil, p2p.ErrClosed
	}
	stop := context.AfterFunc(closing, cancel)
	defer stop()
	st, err := h.NewStream(ctx, mbx, proto)
	if err != nil {
		return 0, nil, fmt.Errorf("mailbox: open mailbox stream to %s: %w", mbx, err)
	}
	// The context's deadline bounds every read and write; cancelling it
	// resets the stream.
	dl, _ := ctx.Deadline()
	st.SetDeadline(dl)
	unreset := context.AfterFunc(ctx, func() { st.Reset() })
	defer unreset()
	frame, err := p2p.AppendFrame(nil, req, maxReq)
	if err != nil {
		st.Reset()
		return 0, nil, err
	}
	if _, err := st.Write(frame); err != nil {
		st.Reset()
		return 0, nil, err
	}
	if err := st.CloseWrite(); err != nil {
		st.Reset()
		return 0, nil, err
	}
	resp, err := p2p.ReadFrame(st, MaxResponseSize)
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

// FetchAll pages through mailbox mbx's envelopes under tags, page pages at
// a time, adding new ones to envs (by content hash) until envs holds max,
// and returns the hashes in the mailbox's order.
func (c *Client) FetchAll(ctx context.Context, mbx peer.ID, tags []protocol.Tag, page int, envs map[[32]byte][]byte, max int) ([][32]byte, error) {
	var list [][32]byte
	for len(tags) > 0 {
		chunk := tags[:min(len(tags), MaxQueryTags)]
		tags = tags[len(chunk):]
		var cursor []byte
		for len(envs) < max {
			res, err := c.Query(ctx, mbx, chunk, cursor, page)
			if err != nil {
				return list, err
			}
			for _, env := range res.Envelopes {
				h := sha256.Sum256(env)
				if _, ok := envs[h]; !ok {
					envs[h] = env
				}
				list = append(list, h)
			}
			if !res.More || len(res.Envelopes) == 0 {
				break
			}
			cursor = res.Cursor
		}
	}
	return list, nil
}

// SyncAll runs one version 1 sync round over tags: it finds the mailboxes
// of the tags' shards, fetches from each the envelopes under tags (at most
// max in all, page at a time, each mailbox bounded by timeout), merges
// their orders into one consistent with every mailbox's (MergeOrders),
// hands them to process in that order, and reveals at each mailbox the
// delete tokens process returned for the envelopes it held. process
// returns one token per envelope, nil for an envelope it did not take. It
// returns how many mailboxes it asked, how many envelopes process took,
// and whether it stopped at max (more may wait).
func (c *Client) SyncAll(ctx context.Context, tags []protocol.Tag, page, max int, timeout time.Duration, process func(mailboxes int, envs [][]byte) ([]*[32]byte, error)) (asked, took int, more bool, err error) {
	tags = slices.Clone(tags)
	slices.SortFunc(tags, func(a, b protocol.Tag) int { return slices.Compare(a[:], b[:]) })
	shards := map[uint16]bool{}
	seen := map[peer.ID]bool{}
	var mbxs []peer.ID
	for _, t := range tags {
		s := t.Shard(Shards)
		if shards[s] {
			continue
		}
		shards[s] = true
		for _, p := range c.Mailboxes(ctx, s) {
			if !seen[p] {
				seen[p] = true
				mbxs = append(mbxs, p)
			}
		}
	}
	if len(mbxs) == 0 {
		return 0, 0, false, nil
	}
	var errs []error
	envs := map[[32]byte][]byte{}
	lists := make([][][32]byte, 0, len(mbxs))
	held := make([]peer.ID, 0, len(mbxs))
	for _, p := range mbxs {
		fctx, cancel := context.WithTimeout(ctx, timeout)
		list, err := c.FetchAll(fctx, p, tags, page, envs, max)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
		if len(list) > 0 {
			lists = append(lists, list)
			held = append(held, p)
		}
	}
	order := MergeOrders(lists)
	batch := make([][]byte, len(order))
	for i, h := range order {
		batch[i] = envs[h]
	}
	toks, err := process(len(mbxs), batch)
	if err != nil {
		return len(mbxs), 0, false, errors.Join(append(errs, err)...)
	}
	tokOf := make(map[[32]byte]*[32]byte, len(order))
	for i, h := range order {
		if i < len(toks) && toks[i] != nil {
			took++
			tokOf[h] = toks[i]
		}
	}
	// Delete at each mailbox what it held and the owner took.
	for i, p := range held {
		dels := map[protocol.Tag][][32]byte{}
		for _, h := range lists[i] {
			if tok := tokOf[h]; tok != nil {
				tag := envelopeTag(envs[h])
				dels[tag] = append(dels[tag], *tok)
			}
		}
		for tag, toks := range dels {
			for len(toks) > 0 {
				k := min(len(toks), MaxDeleteTokens)
				if _, err := c.Delete(ctx, p, tag, toks[:k]); err != nil {
					c.cfg.logger.Debug("mailbox delete", "mailbox", p, "err", err)
				}
				toks = toks[k:]
			}
		}
	}
	return len(mbxs), took, len(envs) >= max, errors.Join(errs...)
}
