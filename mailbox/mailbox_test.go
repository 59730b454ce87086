package mailbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// mbxTestTimeout bounds each mailbox test.
const mbxTestTimeout = 60 * time.Second

// testEnvelope returns a valid envelope under tag, deletable with token,
// expiring ttl after now, with size bytes of random ciphertext.
func testEnvelope(t testing.TB, tag protocol.Tag, token [32]byte, now time.Time, ttl time.Duration, size int) *protocol.Envelope {
	t.Helper()
	ct := make([]byte, size)
	rand.Read(ct)
	return &protocol.Envelope{
		Version:    protocol.EnvelopeVersion,
		Tag:        tag,
		Expiry:     now.Add(ttl),
		DeleteHash: protocol.HashDeleteToken(token),
		Ciphertext: ct,
	}
}

func randTag() protocol.Tag {
	var t protocol.Tag
	rand.Read(t[:])
	return t
}

func randToken() [32]byte {
	var t [32]byte
	rand.Read(t[:])
	return t
}

// tagInShard returns a random tag whose shard is shard.
func tagInShard(shard uint16) protocol.Tag {
	t := randTag()
	binary.BigEndian.PutUint16(t[:], shard)
	return t
}

func openMailboxDB(t testing.TB, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(dir)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// mailboxNode is a host serving the mailbox role.
type mailboxNode struct {
	h   *p2p.Host
	g   *p2p.Gossip
	db  *store.DB
	svc *Service
	dir string

	stored chan []byte // every newly stored envelope
}

func (m *mailboxNode) close() {
	m.svc.Close()
	if m.g != nil {
		m.g.Close()
	}
	m.h.Close()
	m.db.Close()
}

type mbxNodeOpts struct {
	hostOpts []p2p.Option
	svcOpts  []Option
	gossip   bool
	dir      string
}

func newMailboxNode(t testing.TB, o mbxNodeOpts) *mailboxNode {
	t.Helper()
	m := &mailboxNode{stored: make(chan []byte, 1024)}
	m.h = p2ptest.NewHost(t, o.hostOpts...)
	m.dir = o.dir
	if m.dir == "" {
		m.dir = filepath.Join(t.TempDir(), "mbx")
	}
	m.db = openMailboxDB(t, m.dir)
	if o.gossip {
		m.g = newTestGossip(t, m.h)
	}
	opts := append([]Option{
		WithProvide(false, 0, 0),
		WithOnStored(func(env []byte, _ DepositVia) {
			select {
			case m.stored <- env:
			default:
			}
		}),
	}, o.svcOpts...)
	svc, err := NewService(m.h, m.g, m.db, opts...)
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	m.svc = svc
	t.Cleanup(m.close)
	return m
}

// newTestGossip starts gossip on h with the peer scoring mailbox nodes
// run with.
func newTestGossip(t testing.TB, h *p2p.Host) *p2p.Gossip {
	t.Helper()
	g, err := p2p.NewGossip(h, p2p.WithPubSubOptions(GossipScoring()...))
	if err != nil {
		t.Fatalf("NewGossip: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// newClient builds a client host connected to the given mailboxes.
func newClient(t testing.TB, g bool, mbxs ...*mailboxNode) (*p2p.Host, *Client) {
	t.Helper()
	h := p2ptest.NewHost(t)
	var gs *p2p.Gossip
	if g {
		gs = newTestGossip(t, h)
	}
	var static []peer.AddrInfo
	for _, m := range mbxs {
		static = append(static, m.h.AddrInfo())
	}
	c, err := NewClient(h, gs, WithStaticMailboxes(static...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testkit.Context(t, 10*time.Second)
	for _, m := range mbxs {
		if err := h.Connect(ctx, m.h.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}
	return h, c
}

func mbxStatsOf(t testing.TB, db *store.DB) int64 {
	t.Helper()
	var n int64
	if err := db.View(func(tx *store.Tx) error {
		var err error
		n, _, err = tx.MailboxStats()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMailboxDepositQueryDelete(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{})
	_, c := newClient(t, false, m)
	now := time.Now()

	tag := randTag()
	tokens := [][32]byte{randToken(), randToken()}
	var envs [][]byte
	for _, tok := range tokens {
		e := testEnvelope(t, tag, tok, now, time.Hour, 300).Marshal()
		envs = append(envs, e)
		if err := c.DepositTo(ctx, m.h.ID(), e); err != nil {
			t.Fatalf("DepositTo: %v", err)
		}
	}
	// A second deposit of the same envelope is acknowledged (duplicate)
	// and stored once.
	if err := c.DepositTo(ctx, m.h.ID(), envs[0]); err != nil {
		t.Fatalf("duplicate DepositTo: %v", err)
	}
	if n := mbxStatsOf(t, m.db); n != 2 {
		t.Fatalf("mailbox holds %d envelopes, want 2", n)
	}
	if dep, served := m.svc.Counts(); dep != 2 || served != 0 {
		t.Fatalf("Counts = %d deposits, %d served; want 2, 0 (a duplicate is not a deposit)", dep, served)
	}

	res, err := c.Query(ctx, m.h.ID(), []protocol.Tag{randTag(), tag}, nil, 0)
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	if len(res.Envelopes) != 2 || res.More || !bytes.Equal(res.Envelopes[0], envs[0]) || !bytes.Equal(res.Envelopes[1], envs[1]) {
		t.Fatalf("Query returned %d envelopes, more %v", len(res.Envelopes), res.More)
	}
	// Paging: one at a time, resuming from the cursor.
	p1, err := c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 1)
	if err != nil || len(p1.Envelopes) != 1 || !p1.More {
		t.Fatalf("page 1: %d envelopes, more %v, %v", len(p1.Envelopes), p1.More, err)
	}
	p2, err := c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, p1.Cursor, 1)
	if err != nil || len(p2.Envelopes) != 1 || !bytes.Equal(p2.Envelopes[0], envs[1]) {
		t.Fatalf("page 2: %d envelopes, %v", len(p2.Envelopes), err)
	}

	// A wrong token deletes nothing.
	n, err := c.Delete(ctx, m.h.ID(), tag, [][32]byte{randToken()})
	if err != nil || n != 0 {
		t.Fatalf("Delete with a wrong token = %d, %v", n, err)
	}
	// The right token under another tag deletes nothing either.
	if n, err := c.Delete(ctx, m.h.ID(), randTag(), tokens[:1]); err != nil || n != 0 {
		t.Fatalf("Delete under another tag = %d, %v", n, err)
	}
	if n := mbxStatsOf(t, m.db); n != 2 {
		t.Fatalf("refused deletes removed envelopes: %d left", n)
	}
	n, err = c.Delete(ctx, m.h.ID(), tag, [][32]byte{tokens[0], randToken()})
	if err != nil || n != 1 {
		t.Fatalf("Delete = %d, %v; want 1", n, err)
	}
	res, err = c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], envs[1]) {
		t.Fatalf("after delete: %d envelopes, %v", len(res.Envelopes), err)
	}
	// Served: 2 + 1 + 1 by the first three queries, 1 by the last.
	if dep, served := m.svc.Counts(); dep != 2 || served != 5 {
		t.Fatalf("Counts = %d deposits, %d served; want 2, 5", dep, served)
	}
}

func TestMailboxRandomTagsFindNothing(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{})
	_, c := newClient(t, false, m)
	for range 20 {
		e := testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 100)
		if err := c.DepositTo(ctx, m.h.ID(), e.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	tags := make([]protocol.Tag, MaxQueryTags)
	for i := range tags {
		tags[i] = randTag()
	}
	res, err := c.Query(ctx, m.h.ID(), tags, nil, 0)
	if err != nil || len(res.Envelopes) != 0 || res.More {
		t.Fatalf("random tags: %d envelopes, %v", len(res.Envelopes), err)
	}
}

func TestMailboxSurvivesRestart(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	key := p2ptest.NewKey(t)
	dir := filepath.Join(t.TempDir(), "mbx")
	m := newMailboxNode(t, mbxNodeOpts{hostOpts: []p2p.Option{p2p.WithIdentity(key)}, dir: dir})
	_, c := newClient(t, false, m)
	tag := randTag()
	env := testEnvelope(t, tag, randToken(), time.Now(), time.Hour, 500).Marshal()
	if err := c.DepositTo(ctx, m.h.ID(), env); err != nil {
		t.Fatal(err)
	}
	m.close()

	m2 := newMailboxNode(t, mbxNodeOpts{hostOpts: []p2p.Option{p2p.WithIdentity(key)}, dir: dir})
	if m2.h.ID() != m.h.ID() {
		t.Fatal("restarted mailbox has another peer ID")
	}
	// The client may not have noticed yet that the old connection died;
	// drop it so the query runs on a connection to the new process.
	_ = c.h.LibP2P().Network().ClosePeer(m2.h.ID())
	c.h.ClearBackoff(m2.h.ID())
	c.h.LibP2P().Peerstore().ClearAddrs(m2.h.ID())
	if err := c.h.Connect(ctx, m2.h.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	res, err := c.Query(ctx, m2.h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], env) {
		t.Fatalf("after restart: %d envelopes, %v", len(res.Envelopes), err)
	}
}

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock(t time.Time) *fakeClock {
	c := &fakeClock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestMailboxExpiredSweptAndNotServed(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	clock := newFakeClock(time.Now())
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: []Option{WithClock(clock.Now)}})
	_, c := newClient(t, false, m)
	tag := randTag()
	short := testEnvelope(t, tag, randToken(), clock.Now(), time.Hour, 100).Marshal()
	long := testEnvelope(t, tag, randToken(), clock.Now(), 3*time.Hour, 100).Marshal()
	for _, e := range [][]byte{short, long} {
		if err := c.DepositTo(ctx, m.h.ID(), e); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Hour)
	res, err := c.Query(ctx, m.h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], long) {
		t.Fatalf("query after expiry: %d envelopes, %v", len(res.Envelopes), err)
	}
	if n, err := m.svc.Sweep(); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	if n := mbxStatsOf(t, m.db); n != 1 {
		t.Fatalf("%d envelopes after sweep, want 1", n)
	}
	// An envelope that has expired by the mailbox's clock is refused.
	err = c.DepositTo(ctx, m.h.ID(), short)
	var me *Error
	if !errors.As(err, &me) || me.Status != StatusRejected || me.Reason != ReasonExpired {
		t.Fatalf("expired deposit = %v", err)
	}
}

func TestMailboxTagQuota(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: []Option{WithLimits(store.MailboxLimits{TagEnvelopes: 3})}})
	_, c := newClient(t, false, m)
	hog := randTag()
	for i := range 3 {
		if err := c.DepositTo(ctx, m.h.ID(), testEnvelope(t, hog, randToken(), time.Now(), time.Hour, 100).Marshal()); err != nil {
			t.Fatalf("deposit %d: %v", i, err)
		}
	}
	err := c.DepositTo(ctx, m.h.ID(), testEnvelope(t, hog, randToken(), time.Now(), time.Hour, 100).Marshal())
	var me *Error
	if !errors.Is(err, ErrFull) || !errors.As(err, &me) || me.Reason != ReasonTagQuota {
		t.Fatalf("deposit over the tag quota = %v, want ErrFull (tag quota)", err)
	}
	honest := testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 100)
	if n, err := c.Deposit(ctx, honest, 1); err != nil || n != 1 {
		t.Fatalf("honest deposit under another tag = %d, %v", n, err)
	}
}

func TestMailboxTotalCapEvictsOldest(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: []Option{WithLimits(store.MailboxLimits{TotalEnvelopes: 3})}})
	_, c := newClient(t, false, m)
	var tags []protocol.Tag
	var envs [][]byte
	for range 5 {
		tag := randTag()
		e := testEnvelope(t, tag, randToken(), time.Now(), time.Hour, 100).Marshal()
		if err := c.DepositTo(ctx, m.h.ID(), e); err != nil {
			t.Fatal(err)
		}
		tags, envs = append(tags, tag), append(envs, e)
	}
	res, err := c.Query(ctx, m.h.ID(), tags, nil, 0)
	if err != nil || len(res.Envelopes) != 3 {
		t.Fatalf("query: %d envelopes, %v; want the newest 3", len(res.Envelopes), err)
	}
	for i, e := range res.Envelopes {
		if !bytes.Equal(e, envs[2+i]) {
			t.Fatalf("envelope %d is not among the newest", i)
		}
	}
}

// rawStream opens a mailbox stream from h to m for hand-made frames.
func rawStream(t *testing.T, ctx context.Context, h *p2p.Host, m *mailboxNode) (io.ReadWriter, func(), func() error) {
	t.Helper()
	s, err := h.LibP2P().NewStream(ctx, m.h.ID(), Protocol)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(20 * time.Second))
	return s, func() { s.Reset() }, s.CloseWrite
}

func TestMailboxHostileStreams(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: []Option{WithTimeouts(2*time.Second, time.Second)}})
	h, c := newClient(t, false, m)
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	frame := func(p []byte) []byte { return append(hdr(uint32(len(p))), p...) }
	valid := testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 64).Marshal()

	tests := []struct {
		name   string
		send   []byte
		status Status // expected response, or 0xff for a reset without one
		reason Reason
	}{
		{"oversized length", hdr(MaxRequestSize + 1), 0xff, 0},
		{"huge length", hdr(0xffffffff), 0xff, 0},
		{"zero length", hdr(0), 0xff, 0},
		{"unknown op", frame([]byte{0x7f, 1, 2, 3}), StatusBadRequest, 0},
		{"empty deposit", frame([]byte{opDeposit}), StatusBadRequest, 0},
		{"garbage envelope", frame(append([]byte{opDeposit}, "not an envelope"...)), StatusRejected, ReasonMalformed},
		{"truncated envelope", frame(append([]byte{opDeposit}, valid[:len(valid)-3]...)), StatusRejected, ReasonMalformed},
		{"too long ttl", frame(append([]byte{opDeposit}, testEnvelope(t, randTag(), randToken(), time.Now(), protocol.MaxTTL+2*time.Hour, 64).Marshal()...)), StatusRejected, ReasonTTLTooLong},
		{"query without tags", frame(appendQuery(nil, opQuery, nil, nil, 10)), StatusBadRequest, 0},
		{"query bad cursor", frame(appendQuery(nil, opQuery, [][32]byte{{1}}, []byte{9, 9, 9, 9, 9, 9, 9, 9, 9}, 10)), StatusBadRequest, 0},
		{"delete truncated", frame([]byte{opDelete, 1, 2}), StatusBadRequest, 0},
		{"stalled frame", hdr(100), 0xff, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, reset, _ := rawStream(t, ctx, h, m)
			defer reset()
			if _, err := s.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			resp, err := p2p.ReadFrame(bufio.NewReader(s), MaxResponseSize)
			if tt.status == 0xff {
				if err == nil {
					t.Fatalf("got a response %x, want the stream reset", resp)
				}
				return
			}
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if len(resp) != 2 || Status(resp[0]) != tt.status || Reason(resp[1]) != tt.reason {
				t.Fatalf("response %x, want status %v reason %v", resp, tt.status, tt.reason)
			}
		})
	}
	// Several requests on one stream are answered in turn.
	s, reset, closeWrite := rawStream(t, ctx, h, m)
	defer reset()
	q := appendQuery(nil, opQuery, [][32]byte{randTag()}, nil, 5)
	if _, err := s.Write(append(frame(appendDepositRequest(nil, valid)), frame(q)...)); err != nil {
		t.Fatal(err)
	}
	closeWrite()
	br := bufio.NewReader(s)
	for i, want := range []int{2, 2 + 2 + store.MailboxCursorSize + 2} {
		resp, err := p2p.ReadFrame(br, MaxResponseSize)
		if err != nil || len(resp) != want || resp[0] != byte(StatusOK) {
			t.Fatalf("response %d: %x, %v", i, resp, err)
		}
	}
	if _, err := p2p.ReadFrame(br, MaxResponseSize); err != io.EOF {
		t.Fatalf("after the last response: %v, want EOF", err)
	}
	// The service is still up and honest deposits succeed.
	honest := testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 100)
	if n, err := c.Deposit(ctx, honest, 1); err != nil || n != 1 {
		t.Fatalf("honest deposit after hostile input = %d, %v", n, err)
	}
	if n := mbxStatsOf(t, m.db); n != 2 {
		t.Fatalf("mailbox holds %d envelopes, want 2", n)
	}
}

func TestMailboxRateLimit(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	const burst = 5
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: []Option{WithRateLimit(0.5, burst)}})
	_, c := newClient(t, false, m)
	ok, throttled := 0, 0
	for range 30 {
		err := c.DepositTo(ctx, m.h.ID(), testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 50).Marshal())
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrThrottled):
			throttled++
		default:
			t.Fatalf("deposit: %v", err)
		}
	}
	// 0.5/s adds at most a few tokens while the loop runs.
	if ok < burst || ok > burst+3 || throttled != 30-ok {
		t.Fatalf("%d stored, %d throttled; want about %d stored", ok, throttled, burst)
	}
	if n := mbxStatsOf(t, m.db); n != int64(ok) {
		t.Fatalf("mailbox holds %d, want %d", n, ok)
	}
	// Another peer has its own bucket.
	_, c2 := newClient(t, false, m)
	if err := c2.DepositTo(ctx, m.h.ID(), testEnvelope(t, randTag(), randToken(), time.Now(), time.Hour, 50).Marshal()); err != nil {
		t.Fatalf("another peer throttled: %v", err)
	}
}

// waitTopicPeer waits until g's topic for shard knows p as a subscriber.
func waitTopicPeer(t *testing.T, ctx context.Context, g *p2p.Gossip, shard uint16, p peer.ID) {
	t.Helper()
	top, err := joinShard(g, shard, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := top.EventHandler()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Cancel()
	if slices.Contains(top.ListPeers(), p) {
		return
	}
	for {
		e, err := ev.NextPeerEvent(ctx)
		if err != nil {
			t.Fatalf("waiting for %s on shard %d: %v", p, shard, err)
		}
		if e.Type == pubsub.PeerJoin && e.Peer == p {
			return
		}
	}
}

func waitStored(t *testing.T, ctx context.Context, m *mailboxNode, want []byte) {
	t.Helper()
	for {
		select {
		case got := <-m.stored:
			if bytes.Equal(got, want) {
				return
			}
		case <-ctx.Done():
			t.Fatalf("envelope did not reach the mailbox: %v", ctx.Err())
		}
	}
}

func TestMailboxGossipDeposit(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	shard := uint16(7)
	m := newMailboxNode(t, mbxNodeOpts{gossip: true, svcOpts: []Option{WithShards(shard)}})
	_, c := newClient(t, true, m)
	waitTopicPeer(t, ctx, c.g, shard, m.h.ID())

	// A hostile peer with a bare gossipsub router (no validators) floods
	// the topic with garbage, oversized and wrong-shard envelopes.
	bad := p2ptest.NewHost(t)
	bps, err := pubsub.NewGossipSub(bad.Context(), bad.LibP2P(), pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(), pubsub.WithMessageIdFn(p2p.MessageID))
	if err != nil {
		t.Fatal(err)
	}
	bt, err := bps.Join(Topic(shard))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Connect(ctx, m.h.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	bev, err := bt.EventHandler()
	if err != nil {
		t.Fatal(err)
	}
	for e, err := bev.NextPeerEvent(ctx); e.Peer != m.h.ID(); e, err = bev.NextPeerEvent(ctx) {
		if err != nil {
			t.Fatal(err)
		}
	}
	bev.Cancel()
	garbage := [][]byte{
		[]byte("garbage"),
		make([]byte, protocol.MaxEnvelopeSize+100),
		testEnvelope(t, tagInShard(shard+1), randToken(), time.Now(), time.Hour, 50).Marshal(),
		testEnvelope(t, tagInShard(shard), randToken(), time.Now(), -time.Minute, 50).Marshal(),
	}
	for _, g := range garbage {
		if err := bt.Publish(ctx, g); err != nil {
			t.Fatalf("hostile publish: %v", err)
		}
	}

	env := testEnvelope(t, tagInShard(shard), randToken(), time.Now(), time.Hour, 200).Marshal()
	if err := publish(ctx, c.g, env, time.Now); err != nil {
		t.Fatal(err)
	}
	waitStored(t, ctx, m, env)
	if n := mbxStatsOf(t, m.db); n != 1 {
		t.Fatalf("mailbox holds %d envelopes, want only the honest one", n)
	}
	// The local validator refuses to publish an invalid envelope.
	if err := publish(ctx, c.g, garbage[0], time.Now); !errors.Is(err, p2p.ErrMalformedEnvelope) {
		t.Fatalf("publishing garbage = %v", err)
	}
}

func TestMailboxLiveDelivery(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	shard := uint16(3)
	// A recipient subscribed to its shard gets a deposit at once.
	rh := p2ptest.NewHost(t)
	rg := newTestGossip(t, rh)
	rc, err := NewClient(rh, rg)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := make(chan []byte, 4)
	cancel, err := rc.SubscribeShards([]uint16{shard}, func(env []byte) { got <- env }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	sh := p2ptest.NewHost(t)
	sg := newTestGossip(t, sh)
	if err := sh.Connect(ctx, rh.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	waitTopicPeer(t, ctx, sg, shard, rh.ID())
	// Gossip is best effort: the first publish can go to nobody while the
	// sender's own stream to the new peer is still opening (the peer's
	// subscription is known from its stream first). Publish a fresh
	// envelope until one arrives; deposits over /sotto/mailbox/1.0.0 are
	// what makes delivery certain.
	sent := map[string]bool{}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		env := testEnvelope(t, tagInShard(shard), randToken(), time.Now(), time.Hour, 80).Marshal()
		if err := publish(ctx, sg, env, time.Now); err != nil {
			t.Fatal(err)
		}
		sent[string(env)] = true
		select {
		case e := <-got:
			if !sent[string(e)] {
				t.Fatal("live delivery returned other bytes")
			}
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("no live delivery of %d envelopes", len(sent))
		}
	}
}

// TestMailboxJoinKick: a subscriber hears when a mailbox joins one of its
// shards (what it published before then did not reach the subscriber, so
// the node syncs), and not when another subscriber does.
func TestMailboxJoinKick(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	shard := uint16(5)
	rh := p2ptest.NewHost(t)
	rc, err := NewClient(rh, newTestGossip(t, rh))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	joined := make(chan peer.ID, 8)
	cancel, err := rc.SubscribeShards([]uint16{shard}, func([]byte) {}, func(p peer.ID) { joined <- p })
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()

	// Another user on the shard, identified before it subscribes: no kick.
	oh := p2ptest.NewHost(t)
	og := newTestGossip(t, oh)
	if err := oh.Connect(ctx, rh.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	waitProtocols(t, ctx, rh, oh.ID())
	ot, err := joinShard(og, shard, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	sctx, stop := context.WithCancel(ctx)
	defer func() { stop(); wg.Wait() }()
	if err := og.Subscribe(sctx, &wg, ot, func([]byte) {}); err != nil {
		t.Fatal(err)
	}
	rg := rc.g
	waitTopicPeer(t, ctx, rg, shard, oh.ID())

	m := newMailboxNode(t, mbxNodeOpts{gossip: true})
	if err := m.h.Connect(ctx, rh.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-joined:
		if p != m.h.ID() {
			t.Fatalf("kicked for %s, want only the mailbox %s", p, m.h.ID())
		}
	case <-ctx.Done():
		t.Fatal("no kick when a mailbox joined the shard")
	}
	select {
	case p := <-joined:
		t.Fatalf("a second kick, for %s", p)
	default:
	}
}

// waitProtocols waits until h knows p's protocols (identify ran).
func waitProtocols(t *testing.T, ctx context.Context, h *p2p.Host, p peer.ID) {
	t.Helper()
	for {
		if ps, _ := h.LibP2P().Peerstore().GetProtocols(p); len(ps) > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("identify of %s did not finish", p)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestMailboxDiscoveryAndRedundancy: three mailboxes announce a shard in
// the DHT; a client finds them, deposits at all three, and after one
// closes another still serves the envelope.
func TestMailboxDiscoveryAndRedundancy(t *testing.T) {
	ctx := testkit.Context(t, 2*mbxTestTimeout)
	shard := uint16(11)
	boot := p2ptest.NewHost(t)
	join := []p2p.Option{p2p.WithBootstrapPeers(boot.AddrInfo())}
	var mbxs []*mailboxNode
	for range 3 {
		m := newMailboxNode(t, mbxNodeOpts{hostOpts: join, svcOpts: []Option{WithShards(shard)}})
		if err := m.h.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		mbxs = append(mbxs, m)
	}
	for _, m := range mbxs {
		if err := m.svc.Provide(ctx); err != nil {
			t.Fatalf("Provide: %v", err)
		}
	}
	ch := p2ptest.NewHost(t, join...)
	if err := ch.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	found := c.Mailboxes(ctx, shard)
	for _, m := range mbxs {
		if !slices.Contains(found, m.h.ID()) {
			t.Fatalf("Mailboxes(%d) = %v, missing %s", shard, found, m.h.ID())
		}
		if !ch.IsProtected(m.h.ID(), ProtectTag) {
			t.Errorf("mailbox %s not protected", m.h.ID())
		}
	}
	tag := tagInShard(shard)
	env := testEnvelope(t, tag, randToken(), time.Now(), time.Hour, 400)
	n, err := c.Deposit(ctx, env, 3)
	if err != nil || n != 3 {
		t.Fatalf("Deposit = %d, %v; want 3", n, err)
	}
	mbxs[0].close()
	res, err := c.Query(ctx, mbxs[1].h.ID(), []protocol.Tag{tag}, nil, 0)
	if err != nil || len(res.Envelopes) != 1 || !bytes.Equal(res.Envelopes[0], env.Marshal()) {
		t.Fatalf("query to a surviving mailbox: %d envelopes, %v", len(res.Envelopes), err)
	}
	// Deposit tolerates the closed mailbox and still reaches two.
	n, err = c.Deposit(ctx, testEnvelope(t, tag, randToken(), time.Now(), time.Hour, 400), 3)
	if err != nil || n != 2 {
		t.Fatalf("Deposit with one mailbox down = %d, %v; want 2", n, err)
	}
}

// sealedParty is one messenger identity for the at-rest test.
type sealedParty struct {
	me      protocol.LocalIdentity
	bundle  *keys.Bundle
	secrets *keys.PrekeySecrets
}

type seenNone struct{ *keys.PrekeySecrets }

func (seenNone) SeenInitial([32]byte) bool { return false }

func newSealedParty(t *testing.T, now time.Time, peerID peer.ID) *sealedParty {
	t.Helper()
	acct, err := keys.GenerateAccount(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := keys.GenerateDH(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := keys.NewDeviceCertificate(acct, []byte(peerID), ik.Public(), now.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	b, sec, err := keys.GeneratePrekeys(rand.Reader, acct, cert, now.Add(-time.Minute), 1, 2, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &sealedParty{me: protocol.LocalIdentity{Account: acct, IdentityDH: ik, Device: cert}, bundle: b, secrets: sec}
}

// TestMailboxStoresNoPlaintext seals real messages, deposits them and
// scans every byte of the mailbox's data dir for the plaintext and the
// parties' keys.
func TestMailboxStoresNoPlaintext(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{})
	ah, c := newClient(t, false, m)
	now := time.Now()
	alice := newSealedParty(t, now, ah.ID())
	bob := newSealedParty(t, now, m.h.ID())
	sess, err := protocol.Initiate(rand.Reader, now, alice.me, bob.bundle)
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("meet me at the old lighthouse at nine, bring the blue notebook")
	var tags []protocol.Tag
	var first *protocol.Envelope
	for i := range 3 {
		msg := protocol.Message{Sent: now, Type: protocol.ContentText, Body: plain}
		msg.ID[0] = byte(i + 1)
		env, _, err := sess.Seal(rand.Reader, now, msg, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = env
		}
		tags = append(tags, env.Tag)
		if err := c.DepositTo(ctx, m.h.ID(), env.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	// The stored envelope is the real one: Bob opens what the mailbox
	// serves.
	res, err := c.Query(ctx, m.h.ID(), tags[:1], nil, 1)
	if err != nil || len(res.Envelopes) == 0 {
		t.Fatalf("query: %d, %v", len(res.Envelopes), err)
	}
	served, err := protocol.ParseEnvelope(res.Envelopes[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, got, _, err := protocol.Accept(now, bob.me, seenNone{bob.secrets}, served); err != nil || !bytes.Equal(got.Body, plain) {
		t.Fatalf("Accept of the served envelope: %v", err)
	}

	m.close()
	aliceAcct, bobAcct := alice.me.Account.Public(), bob.me.Account.Public()
	aliceIK, bobIK := alice.me.IdentityDH.Public(), bob.me.IdentityDH.Public()
	secrets := map[string][]byte{
		"plaintext":             plain,
		"plaintext prefix":      plain[:16],
		"alice account key":     aliceAcct[:],
		"bob account key":       bobAcct[:],
		"alice identity key":    aliceIK[:],
		"bob identity key":      bobIK[:],
		"alice account seed":    alice.me.Account.Seed(),
		"alice identity secret": alice.me.IdentityDH.Bytes(),
	}
	scanned := 0
	err = filepath.Walk(m.dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned += len(data)
		if !bytes.Contains(data, first.Ciphertext[:32]) {
			t.Errorf("%s does not hold the envelope; the scan would prove nothing", path)
		}
		for name, s := range secrets {
			if bytes.Contains(data, s) {
				t.Errorf("%s contains the %s", path, name)
			}
		}
		return nil
	})
	if err != nil || scanned == 0 {
		t.Fatalf("scan: %d bytes, %v", scanned, err)
	}
}

func TestMailboxCloseLeaksNothing(t *testing.T) {
	check := testkit.Goroutines(t)
	func() {
		ctx := testkit.Context(t, mbxTestTimeout)
		mk := func() *p2p.Host {
			h, err := p2p.New(p2p.WithIdentity(p2ptest.NewKey(t)), p2p.WithListenAddrs(p2ptest.LoopbackAddrs...), p2p.WithMDNS(false), p2p.WithNAT(false), p2p.WithMetrics(false))
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		mh, ch := mk(), mk()
		db, err := store.Open(filepath.Join(t.TempDir(), "mbx"))
		if err != nil {
			t.Fatal(err)
		}
		mg, err := p2p.NewGossip(mh)
		if err != nil {
			t.Fatal(err)
		}
		cg, err := p2p.NewGossip(ch)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := NewService(mh, mg, db, WithProvide(true, time.Hour, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(ch, cg, WithStaticMailboxes(mh.AddrInfo()))
		if err != nil {
			t.Fatal(err)
		}
		stop, err := c.SubscribeShards([]uint16{1, 2}, func([]byte) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		env := testEnvelope(t, tagInShard(1), randToken(), time.Now(), time.Hour, 64)
		if n, err := c.Deposit(ctx, env, 1); err != nil || n != 1 {
			t.Fatalf("Deposit = %d, %v", n, err)
		}
		// A stream left open mid-request must not hold Close up.
		s, err := ch.LibP2P().NewStream(ctx, mh.ID(), Protocol)
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{0, 0, 1})
		_ = stop
		for _, cl := range []func() error{c.Close, c.Close, svc.Close, svc.Close, cg.Close, mg.Close, ch.Close, mh.Close, db.Close} {
			if err := cl(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		stop() // after Close: a no-op
		if _, err := c.Query(ctx, mh.ID(), []protocol.Tag{randTag()}, nil, 0); err == nil {
			t.Error("Query after Close succeeded")
		}
	}()
	check()
}
