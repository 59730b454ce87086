package mailbox

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/time/rate"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Version 2 limits of a mailbox (protocol/SPEC.md, "Mailboxes, version 2").
const (
	// MaxRegistrationsPerNet bounds the new registrations one remote
	// network (an IPv4 address or an IPv6 /64) may make in 18 days (the
	// longest a registration lives). A user with 20 contacts makes about
	// 21 a day, so one address serves about 150 users (a carrier NAT
	// serves more; they then meet Throttled and use other mailboxes).
	MaxRegistrationsPerNet = 65536
	// MaxFiltersPerNet bounds the open filter streams of one network.
	MaxFiltersPerNet = 128
	// MeshDepositRate and MeshDepositBurst bound the deposits a mailbox
	// validates from one mesh peer (a second, and in a burst); more are
	// ignored. A million users send about 700 a second in all
	// (docs/MAILBOX-MODEL.md), so an honest neighbour stays below.
	MeshDepositRate  = 2000
	MeshDepositBurst = 10000
	// MaxFilters bounds the open filter streams of a mailbox in all.
	MaxFilters = 16384
	// FilterBacklog is how many pushes a filter may fall behind before the
	// mailbox closes it (the recipient queries on reconnect).
	FilterBacklog = 256
	// ConnsPerNet is how many connections a mailbox node's host lets in
	// from one address (p2p.WithConnsPerAddr): every user behind it holds
	// two filter connections per mailbox and opens more per sync round
	// and push batch.
	ConnsPerNet = 4 * MaxFiltersPerNet
	// DefaultStreamsPerNet caps concurrent version 2 streams from one
	// network: its filters and a few requests each.
	DefaultStreamsPerNet = 2 * MaxFiltersPerNet
	// registrationWindow is how long a registration a network made counts
	// against it: the longest a registration lives.
	registrationWindow = 18 * protocol.EpochLength
	// maxTrackedNets bounds the per-network registration table.
	maxTrackedNets = 1 << 16
	// topicPrefix2 is the prefix of a version 2 shard topic.
	topicPrefix2 = "/sotto/mailbox/2/shard/"
)

// Resource-manager stream limits of Protocol2 on a mailbox node's host
// (StreamLimit2). Every online user holds two to four filter streams per
// mailbox for as long as it stays online, so libp2p's default for a
// protocol it was not told about (about 640 inbound streams on a 4 GiB
// server) would refuse users long before MaxFilters.
const (
	// Streams2Infra is the limit, inbound and outbound each, under the
	// infrastructure preset (p2p.WithInfra): MaxFilters filters and a
	// quarter as many requests besides.
	Streams2Infra = MaxFilters + MaxFilters/4
	// Streams2 is the limit on other hosts: an eighth, as the preset
	// scales the other protocols' limits.
	Streams2 = Streams2Infra / 8
	// Streams2PerPeer is one peer's limit: a user opens a fresh identity
	// per filter, sync round group and pushed tag ("One identity, one
	// epoch"), so a peer holds a filter or a few requests at a time.
	Streams2PerPeer = 16
)

// StreamLimit2 is the host option that sets Protocol2's stream limits:
// Streams2Infra under the infrastructure preset (infra), else Streams2,
// and Streams2PerPeer.
func StreamLimit2(infra bool) p2p.Option {
	total := Streams2
	if infra {
		total = Streams2Infra
	}
	return p2p.WithProtocolLimit(string(Protocol2), total, Streams2PerPeer)
}

// Topic2 returns the gossipsub topic on which mailbox nodes replicate
// version 2 deposits of shard.
func Topic2(shard uint16) string {
	return topicPrefix2 + strconv.Itoa(int(shard))
}

// WithStampBits sets the proof-of-work difficulty the mailbox requires of
// intro deposits (default protocol.DefaultStampBits). The mailbox nodes of
// one network must agree on it: a deposit gossiped with fewer bits than a
// node requires counts against the node that forwarded it.
func WithStampBits(bits int) Option {
	return func(c *config) error {
		if bits < 0 || bits > protocol.MaxStampBits {
			return fmt.Errorf("%w: stamp bits %d outside 0..%d", ErrBadConfig, bits, protocol.MaxStampBits)
		}
		c.stampBits = bits
		return nil
	}
}

// WithLegacyDeposits turns version 1 deposits (Protocol DEPOSIT, and
// envelopes gossiped on version 1 shards) on or off. On by default until
// protocol.Version1Ends; off, or from then on, a DEPOSIT is answered
// Rejected with ReasonOldProtocol, while version 1 QUERY and DELETE keep
// serving what waits here until protocol.Version1ReadEnds
// (protocol/SPEC.md, "Migration from version 1").
func WithLegacyDeposits(on bool) Option {
	return func(c *config) error {
		c.legacyDeposits = on
		return nil
	}
}

// WithMeshDepositRate sets how many deposits a second, and in a burst,
// the mailbox validates from one mesh peer (default MeshDepositRate,
// MeshDepositBurst).
func WithMeshDepositRate(r float64, burst int) Option {
	return func(c *config) error {
		if r <= 0 || burst <= 0 {
			return fmt.Errorf("%w: mesh deposit rate %v burst %d", ErrBadConfig, r, burst)
		}
		c.meshRate, c.meshBurst = rate.Limit(r), burst
		return nil
	}
}

// WithRegistrationsPerNet sets the per-network registration limit
// (default MaxRegistrationsPerNet).
func WithRegistrationsPerNet(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("%w: registrations per network %d", ErrBadConfig, n)
		}
		c.regsPerNet = n
		return nil
	}
}

// WithNetKey sets how the version 2 limits name a connection's network
// (default: p2p.NetKey of its remote address). Tests on loopback, where
// every peer has the same address, key on the peer instead.
func WithNetKey(fn func(network.Conn) string) Option {
	return func(c *config) error {
		if fn == nil {
			return fmt.Errorf("%w: nil network key", ErrBadConfig)
		}
		c.netKey = fn
		return nil
	}
}

func defaultNetKey(c network.Conn) string { return p2p.NetKey(c.RemoteMultiaddr(), c.RemotePeer()) }

// GossipScoring returns the gossipsub options a mailbox node's router
// needs: peer scoring in which every invalid deposit a peer forwards on a
// version 2 shard costs it heavily (a peer that forwards a handful is
// graylisted: its messages are ignored and nothing is gossiped to it), and
// a small reward for being first to deliver valid ones. Pass them to
// p2p.NewGossip with p2p.WithPubSubOptions.
func GossipScoring() []pubsub.Option {
	topics := make(map[string]*pubsub.TopicScoreParams, Shards)
	for sh := range uint16(Shards) {
		topics[Topic2(sh)] = &pubsub.TopicScoreParams{
			TopicWeight:                     1,
			TimeInMeshQuantum:               time.Second,
			FirstMessageDeliveriesWeight:    1,
			FirstMessageDeliveriesDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
			FirstMessageDeliveriesCap:       10,
			InvalidMessageDeliveriesWeight:  -100,
			InvalidMessageDeliveriesDecay:   pubsub.ScoreParameterDecay(time.Hour),
			MeshMessageDeliveriesDecay:      0,
			MeshFailurePenaltyDecay:         0,
			MeshMessageDeliveriesWindow:     0,
			MeshMessageDeliveriesActivation: 0,
		}
	}
	params := &pubsub.PeerScoreParams{
		Topics:           topics,
		TopicScoreCap:    100,
		AppSpecificScore: func(peer.ID) float64 { return 0 },
		DecayInterval:    time.Second,
		DecayToZero:      0.01,
		RetainScore:      time.Hour,
	}
	thresholds := &pubsub.PeerScoreThresholds{
		GossipThreshold:             -100,
		PublishThreshold:            -200,
		GraylistThreshold:           -300,
		AcceptPXThreshold:           10,
		OpportunisticGraftThreshold: 2,
	}
	return []pubsub.Option{pubsub.WithPeerScore(params, thresholds)}
}

// v2state is the version 2 part of a Service.
type v2state struct {
	limits *p2p.Limiter[string]
	mesh   *p2p.PeerLimiter // deposits each mesh peer forwards

	mu          sync.Mutex
	streams     map[string]int
	regs        map[string]*netRegs
	filters     map[[32]byte]map[*filter]struct{}
	filterNets  map[string]int
	openFilters int
	topics      map[uint16]*pubsub.Topic
}

// netRegs counts the registrations a network made in its current window.
type netRegs struct {
	since time.Time
	n     int
}

// filter is one open FILTER stream.
type filter struct {
	net  string
	tags [][32]byte
	ch   chan []byte
	dead chan struct{}
	once sync.Once
}

func (f *filter) kill() { f.once.Do(func() { close(f.dead) }) }

func (s *Service) startV2() error {
	v := &s.v2
	v.limits = p2p.NewLimiter[string](s.cfg.rate, s.cfg.burst)
	v.mesh = p2p.NewPeerLimiter(s.cfg.meshRate, s.cfg.meshBurst)
	v.streams = make(map[string]int)
	v.regs = make(map[string]*netRegs)
	v.filters = make(map[[32]byte]map[*filter]struct{})
	v.filterNets = make(map[string]int)
	v.topics = make(map[uint16]*pubsub.Topic)
	if s.g != nil {
		for _, sh := range s.cfg.shards {
			t, err := s.g.JoinVerdict(Topic2(sh), s.validDeposit(sh))
			if err == nil {
				err = s.g.Subscribe(s.ctx, &s.wg, t, s.gossiped2)
			}
			if err != nil {
				return err
			}
			v.topics[sh] = t
		}
	}
	s.h.LibP2P().SetStreamHandler(Protocol2, s.handleStream2)
	return nil
}

// validDeposit is the validator of shard's version 2 topic: a deposit
// whose framing, envelope (structure and expiry at now), shard and
// credential are valid is accepted, any other rejected (which costs the
// forwarding peer its score). It needs no registration: a pairwise
// credential is checked against the tag itself. Since anyone can make a
// write key and its tag, valid deposits under tags nobody registered cost
// only a signature each: past MeshDepositRate a second from one
// forwarding peer they are ignored (not forwarded, no penalty).
func (s *Service) validDeposit(shard uint16) func(peer.ID, []byte) p2p.Verdict {
	return func(from peer.ID, dep []byte) p2p.Verdict {
		if !s.v2.mesh.Allow(from) {
			return p2p.Ignore
		}
		_, e, st, _ := s.checkDeposit(dep, s.cfg.now())
		if st == StatusOK && e.Tag.Shard(Shards) == shard {
			return p2p.Accept
		}
		return p2p.Reject
	}
}

// checkDeposit parses dep and checks its envelope and credential at now.
func (s *Service) checkDeposit(dep []byte, now time.Time) (protocol.Deposit, *protocol.Envelope, Status, Reason) {
	d, err := protocol.ParseDeposit(dep)
	if err != nil {
		return d, nil, StatusRejected, ReasonMalformed
	}
	e, err := protocol.ParseEnvelope(d.Envelope)
	if err != nil {
		return d, nil, StatusRejected, ReasonMalformed
	}
	if err := e.Validate(now); err != nil {
		return d, nil, StatusRejected, reasonOf(err)
	}
	if err := d.Check(e.Tag, s.cfg.stampBits); err != nil {
		if errors.Is(err, protocol.ErrStamp) {
			return d, nil, StatusRejected, ReasonStamp
		}
		return d, nil, StatusRejected, ReasonCredential
	}
	return d, e, StatusOK, ReasonNone
}

// push stores a deposit that arrived by PUSH (commit = db.Update) or on a
// shard topic (db.Batch), under its tag's registration, and pushes the
// envelope to the tag's filters.
func (s *Service) push(dep []byte, commit func(func(*store.Tx) error) error, via DepositVia) (Status, Reason) {
	now := s.cfg.now()
	d, e, st, r := s.checkDeposit(dep, now)
	if st != StatusOK {
		return st, r
	}
	return s.storeDeposit(d, e, now, commit, via)
}

// storeDeposit stores a checked deposit under its registration and pushes
// the envelope to the tag's filters.
func (s *Service) storeDeposit(d protocol.Deposit, e *protocol.Envelope, now time.Time, commit func(func(*store.Tx) error) error, via DepositVia) (Status, Reason) {
	var stored bool
	var refused error
	err := commit(func(tx *store.Tx) error {
		var err error
		stored, err = tx.MailboxPutRegistered(d.Envelope, d.Kind, now, s.cfg.limits)
		refused = nil
		if isRefusal(err) {
			// Nothing was written. Returning nil keeps a refusal from
			// failing, and re-running, the other deposits of a batch.
			refused, err = err, nil
		}
		return err
	})
	if err == nil {
		err = refused
	}
	switch {
	case err == nil && !stored:
		return StatusDuplicate, ReasonNone
	case err == nil:
	case errors.Is(err, store.ErrMailboxUnregistered):
		return StatusRejected, ReasonUnregistered
	case errors.Is(err, store.ErrMailboxTagFull):
		return StatusFull, ReasonTagQuota
	case errors.Is(err, store.ErrMailboxFull):
		return StatusFull, ReasonCapacity
	case errors.Is(err, store.ErrMailboxInvalid):
		return StatusRejected, reasonOf(err)
	default:
		s.cfg.logger.Warn("mailbox store failed", "err", err)
		return StatusUnavailable, ReasonNone
	}
	s.cfg.deposits.Add(1)
	env := d.Envelope
	if via == ViaGossip {
		env = append([]byte(nil), env...)
	}
	s.notify(e.Tag, env)
	if s.cfg.onStored != nil {
		s.cfg.onStored(env, via)
	}
	return StatusOK, ReasonNone
}

// isRefusal reports whether err is MailboxPutRegistered refusing a
// deposit, as opposed to a storage failure.
func isRefusal(err error) bool {
	for _, r := range []error{store.ErrMailboxUnregistered, store.ErrMailboxTagFull, store.ErrMailboxFull, store.ErrMailboxInvalid} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

// gossiped2 stores a deposit replicated by another mailbox node when this
// node holds its tag's registration; otherwise gossipsub only relays it.
// The topic validator has checked the deposit's credential already, and
// most deposits on the mesh are for tags registered elsewhere: a read
// transaction sorts those out before any write batch is joined.
func (s *Service) gossiped2(dep []byte) {
	now := s.cfg.now()
	d, err := protocol.ParseDeposit(dep)
	if err != nil {
		return
	}
	e, err := protocol.ParseEnvelope(d.Envelope)
	if err != nil || e.Validate(now) != nil {
		return
	}
	var held bool
	if err := s.db.View(func(tx *store.Tx) error {
		reg, ok, err := tx.MailboxRegistrationOf(e.Tag, now)
		held = ok && reg.Kind&d.Kind != 0
		return err
	}); err != nil {
		s.cfg.logger.Warn("mailbox registration lookup failed", "err", err)
		return
	}
	if !held {
		return
	}
	if st, r := s.storeDeposit(d, e, now, s.db.Batch, ViaGossip); st != StatusOK && st != StatusDuplicate {
		s.cfg.logger.Debug("gossiped deposit not stored", "status", st, "reason", r)
	}
}

// publish2 replicates a deposit this node stored to the other mailbox
// nodes on its shard.
func (s *Service) publish2(dep []byte, tag protocol.Tag) {
	s.v2.mu.Lock()
	t := s.v2.topics[tag.Shard(Shards)]
	s.v2.mu.Unlock()
	if t == nil {
		return
	}
	if err := t.Publish(s.ctx, dep); err != nil {
		s.cfg.logger.Debug("mailbox replication failed", "err", err)
	}
}

// notify hands env to every filter open on tag. A filter that is
// FilterBacklog behind is closed.
func (s *Service) notify(tag [32]byte, env []byte) {
	s.v2.mu.Lock()
	defer s.v2.mu.Unlock()
	for f := range s.v2.filters[tag] {
		select {
		case f.ch <- env:
		default:
			f.kill()
		}
	}
}

// register records regs for the network key, within its limit.
func (s *Service) register(key string, regs []Registration) []byte {
	now := s.cfg.now()
	cur := protocol.Epoch(now)
	for _, r := range regs {
		if r.Epoch > cur+2 || r.Epoch+15 < cur {
			return appendStatus(nil, StatusRejected, ReasonEpoch)
		}
	}
	tags := make([][32]byte, len(regs))
	for i, r := range regs {
		tags[i] = r.Tag
	}
	var accepted, fresh, reserved int
	throttled := false
	err := s.db.Update(func(tx *store.Tx) error {
		// Only tags new to the mailbox count against the network:
		// renewing a registration (as every user does daily) is free.
		have, err := tx.MailboxRegisteredTags(tags, now)
		if err != nil {
			return err
		}
		fresh = len(uniqueTags(tags)) - len(have)
		if throttled = !s.reserveRegistrations(key, fresh, now); throttled {
			return nil
		}
		reserved = fresh
		accepted, err = tx.MailboxRegister(regs, now)
		return err
	})
	if err != nil && reserved > 0 {
		s.releaseRegistrations(key, reserved)
	}
	switch {
	case err != nil:
		s.cfg.logger.Warn("mailbox register failed", "err", err)
		return appendStatus(nil, StatusUnavailable, ReasonNone)
	case throttled:
		return appendStatus(nil, StatusThrottled, ReasonNone)
	}
	b := appendStatus(nil, StatusOK, ReasonNone)
	b = binary.BigEndian.AppendUint16(b, uint16(accepted))
	return append(b, byte(s.cfg.stampBits))
}

// reserveRegistrations counts n new registrations against the network
// key, and reports false (counting nothing) when they would pass
// MaxRegistrationsPerNet within registrationWindow.
func (s *Service) reserveRegistrations(key string, n int, now time.Time) bool {
	if n <= 0 {
		return true // renewals are free and leave no trace in the table
	}
	v := &s.v2
	v.mu.Lock()
	defer v.mu.Unlock()
	nr := v.regs[key]
	if nr == nil || now.Sub(nr.since) > registrationWindow {
		if nr == nil && len(v.regs) >= maxTrackedNets {
			for k, x := range v.regs {
				if now.Sub(x.since) > registrationWindow {
					delete(v.regs, k)
				}
			}
			// Still full (many networks registering at once): forget
			// some rather than lock every new network out. Their
			// counts start again, which is what a flood of networks
			// buys; the table stays bounded.
			for k := range v.regs {
				if len(v.regs) < maxTrackedNets {
					break
				}
				delete(v.regs, k)
			}
		}
		nr = &netRegs{since: now}
		v.regs[key] = nr
	}
	if nr.n+n > s.cfg.regsPerNet {
		return false
	}
	nr.n += n
	return true
}

// releaseRegistrations gives back n registrations reserved for a
// transaction that failed.
func (s *Service) releaseRegistrations(key string, n int) {
	s.v2.mu.Lock()
	defer s.v2.mu.Unlock()
	if nr := s.v2.regs[key]; nr != nil {
		nr.n = max(nr.n-n, 0)
	}
}

func uniqueTags(tags [][32]byte) map[[32]byte]struct{} {
	m := make(map[[32]byte]struct{}, len(tags))
	for _, t := range tags {
		m[t] = struct{}{}
	}
	return m
}

func (s *Service) acquire2(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.v2.streams[key] >= DefaultStreamsPerNet {
		return false
	}
	s.v2.streams[key]++
	s.wg.Add(1)
	return true
}

func (s *Service) release2(key string) {
	s.mu.Lock()
	if s.v2.streams[key]--; s.v2.streams[key] <= 0 {
		delete(s.v2.streams, key)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// handleStream2 serves one version 2 stream. Its limits key on the remote
// network, not the peer ID: clients use a fresh identity per round.
func (s *Service) handleStream2(st network.Stream) {
	c := st.Conn()
	key := s.cfg.netKey(c)
	if !s.acquire2(key) {
		st.Reset()
		return
	}
	defer s.release2(key)
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()
	err := s.serveFrames(st, MaxRequestSize2, func(frame []byte) ([]byte, error, takeover) {
		req, perr := parseRequest2(frame)
		switch {
		case perr != nil:
			return appendStatus(nil, StatusBadRequest, ReasonNone), perr, nil
		case !s.v2.limits.Allow(key):
			return appendStatus(nil, StatusThrottled, ReasonNone), nil, nil
		}
		tags := req.tags
		for _, r := range req.regs {
			tags = append(tags, r.Tag)
		}
		var env []byte
		if d, err := protocol.ParseDeposit(req.deposit); err == nil {
			env = d.Envelope
		}
		s.observe(c, req.op, tags, req.tag, env)
		return s.answer2(req, key)
	})
	s.endStream(st, c.RemotePeer(), err)
}

// takeover runs the rest of a stream after a response (a filter).
type takeover func(st network.Stream, br *bufio.Reader) error

// answer2 runs one decoded version 2 request.
func (s *Service) answer2(req *request2, key string) ([]byte, error, takeover) {
	switch req.op {
	case opRegister:
		return s.register(key, req.regs), nil, nil
	case opPush:
		st, r := s.push(req.deposit, s.db.Update, ViaStream)
		if st == StatusOK {
			dep := append([]byte(nil), req.deposit...)
			d, _ := protocol.ParseDeposit(dep)
			s.publish2(dep, envelopeTag(d.Envelope))
		}
		return appendStatus(nil, st, r), nil, nil
	case opQuery2:
		var tags [][32]byte
		err := s.db.View(func(tx *store.Tx) error {
			var err error
			tags, err = tx.MailboxRegisteredTags(req.tags, s.cfg.now())
			return err
		})
		if err != nil {
			s.cfg.logger.Warn("mailbox query failed", "err", err)
			return appendStatus(nil, StatusUnavailable, ReasonNone), nil, nil
		}
		if len(tags) == 0 {
			return appendQueryResponse(nil, store.MailboxPage{Cursor: req.cursor}), nil, nil
		}
		return s.answer(&request{op: opQuery, limit: req.limit, cursor: req.cursor, tags: tags}), nil, nil
	case opDelete2:
		return s.answer(&request{op: opDelete, tag: req.tag, tokens: req.tokens}), nil, nil
	case opFilter:
		f, ok := s.openFilter(key, req.tags)
		if !ok {
			return appendStatus(nil, StatusThrottled, ReasonNone), nil, nil
		}
		return appendStatus(nil, StatusOK, ReasonNone), nil, func(st network.Stream, br *bufio.Reader) error {
			return s.runFilter(st, br, f)
		}
	}
	return appendStatus(nil, StatusBadRequest, ReasonNone), nil, nil
}

// openFilter registers a filter on tags for the network key.
func (s *Service) openFilter(key string, tags [][32]byte) (*filter, bool) {
	v := &s.v2
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.filterNets[key] >= MaxFiltersPerNet || v.openFilters >= MaxFilters {
		return nil, false
	}
	v.openFilters++
	v.filterNets[key]++
	f := &filter{net: key, ch: make(chan []byte, FilterBacklog), dead: make(chan struct{})}
	s.setFilterTagsLocked(f, tags)
	return f, true
}

func (s *Service) setFilterTagsLocked(f *filter, tags [][32]byte) {
	v := &s.v2
	for _, t := range f.tags {
		if m := v.filters[t]; m != nil {
			delete(m, f)
			if len(m) == 0 {
				delete(v.filters, t)
			}
		}
	}
	f.tags = tags
	for _, t := range tags {
		m := v.filters[t]
		if m == nil {
			m = make(map[*filter]struct{})
			v.filters[t] = m
		}
		m[f] = struct{}{}
	}
}

func (s *Service) closeFilter(f *filter) {
	f.kill()
	v := &s.v2
	v.mu.Lock()
	defer v.mu.Unlock()
	s.setFilterTagsLocked(f, nil)
	if v.filterNets[f.net]--; v.filterNets[f.net] <= 0 {
		delete(v.filterNets, f.net)
	}
	v.openFilters--
}

// errFilterBehind ends a filter whose reader fell FilterBacklog behind.
var errFilterBehind = errors.New("mailbox: filter fell too far behind")

// runFilter writes f's pushes to st until the client closes its side, the
// filter falls behind or the service closes. A FILTER frame on the stream
// replaces the tag set; any other request ends the stream.
func (s *Service) runFilter(st network.Stream, br *bufio.Reader, f *filter) error {
	defer s.closeFilter(f)
	if err := st.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	// A filter killed for falling behind may be blocked in a write to a
	// reader that stopped reading: reset the stream at once.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-f.dead
		st.Reset()
	}()
	frames := make(chan []byte)
	readErr := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			frame, err := p2p.ReadFrame(br, MaxRequestSize2)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case frames <- frame:
			case <-f.dead:
				return
			}
		}
	}()
	write := func(b []byte) error {
		if err := st.SetWriteDeadline(time.Now().Add(s.cfg.frameTimeout)); err != nil {
			return err
		}
		out, err := p2p.AppendFrame(nil, b, MaxResponseSize)
		if err != nil {
			return err
		}
		_, err = st.Write(out)
		return err
	}
	for {
		select {
		case env := <-f.ch:
			if err := write(append([]byte{opPushed}, env...)); err != nil {
				return err
			}
		case frame := <-frames:
			req, err := parseRequest2(frame)
			if err != nil || req.op != opFilter {
				if err == nil {
					err = fmt.Errorf("%w: operation %d on a filter stream", ErrBadMessage, req.op)
				}
				write(appendStatus(nil, StatusBadRequest, ReasonNone))
				return err
			}
			if !s.v2.limits.Allow(f.net) {
				if err := write(appendStatus(nil, StatusThrottled, ReasonNone)); err != nil {
					return err
				}
				continue
			}
			s.observe(st.Conn(), opFilter, req.tags, [32]byte{}, nil)
			s.v2.mu.Lock()
			s.setFilterTagsLocked(f, req.tags)
			s.v2.mu.Unlock()
			if err := write(appendStatus(nil, StatusOK, ReasonNone)); err != nil {
				return err
			}
		case err := <-readErr:
			if err == io.EOF {
				return nil
			}
			return err
		case <-f.dead:
			return errFilterBehind
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
}

// Seen is what a mailbox sees of one request: who sent it, from where,
// which operation and which tags it names (a deposit's or push's by its
// envelope). WithObserver hands each to a function; tests play the
// curious mailbox with it.
type Seen struct {
	Peer    peer.ID
	Addr    string
	Version int    // 1 or 2
	Op      string // deposit, query, delete (1); register, push, query, delete, filter (2)
	Tags    [][32]byte
}

// WithObserver has fn see every request the mailbox accepts for an
// answer, before it is answered.
func WithObserver(fn func(Seen)) Option {
	return func(c *config) error {
		c.observe = fn
		return nil
	}
}

var opNames = map[byte]string{
	opDeposit: "deposit", opQuery: "query", opDelete: "delete",
	opRegister: "register", opPush: "push", opQuery2: "query", opDelete2: "delete", opFilter: "filter",
}

func (s *Service) observe(c network.Conn, op byte, tags [][32]byte, tag [32]byte, env []byte) {
	if s.cfg.observe == nil {
		return
	}
	seen := Seen{Peer: c.RemotePeer(), Addr: c.RemoteMultiaddr().String(), Version: 1, Op: opNames[op], Tags: slices.Clone(tags)}
	if op >= opRegister {
		seen.Version = 2
	}
	if op == opDelete || op == opDelete2 {
		seen.Tags = append(seen.Tags, tag)
	}
	if len(env) > 1+protocol.TagSize {
		seen.Tags = append(seen.Tags, envelopeTag(env))
	}
	s.cfg.observe(seen)
}
