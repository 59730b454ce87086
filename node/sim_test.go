package node

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/store"
)

// Size of the simulated network.
const (
	simNodes     = 100
	simMailboxes = 5
)

// simNet runs messenger nodes in one process on a mocknet. Going offline
// is modelled faithfully: the node is closed and its mocknet peer's links
// are cut; coming back opens the same data dir and starts it on a new
// mocknet peer bound to the same host key (mocknet replaces a peer added
// again under the same ID), linked to every peer that is online.
type simNet struct {
	t    testing.TB
	mn   mocknet.Mocknet
	mod  func(*Config)
	boot []peer.AddrInfo // the mailboxes: every node bootstraps from them

	mu    sync.Mutex // serialises mocknet membership changes
	nodes []*simNode
}

type simNode struct {
	idx     int
	name    string
	dir     string
	key     crypto.PrivKey
	id      peer.ID
	addr    ma.Multiaddr
	mailbox bool
	linked  bool // guarded by simNet.mu

	mu sync.Mutex
	n  *Node // nil while offline
}

func (sn *simNode) node() *Node {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.n
}

func simName(i int) string { return fmt.Sprintf("n%02d", i) }

// newSimNet initialises count data dirs (the first mailboxes of them
// mailboxes) without starting them.
func newSimNet(t testing.TB, count, mailboxes int, mod func(*Config)) *simNet {
	t.Helper()
	s := &simNet{t: t, mn: mocknet.New(), mod: mod}
	base := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, count)
	s.nodes = make([]*simNode, count)
	for i := range count {
		sn := &simNode{idx: i, name: simName(i), dir: filepath.Join(base, simName(i)), mailbox: i < mailboxes}
		s.nodes[i] = sn
		wg.Go(func() {
			if _, err := Init(sn.dir, sn.name, nil); err != nil {
				errs[i] = err
				return
			}
			ks, err := keys.ReadKeystore(filepath.Join(sn.dir, KeystoreFile), nil)
			if err != nil {
				errs[i] = err
				return
			}
			if sn.key, err = crypto.UnmarshalPrivateKey(ks.HostKey); err != nil {
				errs[i] = err
				return
			}
			if sn.id, err = peer.IDFromPrivateKey(sn.key); err != nil {
				errs[i] = err
				return
			}
			sn.addr = ma.StringCast(fmt.Sprintf("/ip4/10.0.%d.%d/tcp/4001", i/250, 1+i%250))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, sn := range s.nodes[:mailboxes] {
		s.boot = append(s.boot, peer.AddrInfo{ID: sn.id, Addrs: []ma.Multiaddr{sn.addr}})
	}
	return s
}

// join adds sn's mocknet peer and links it to every online peer.
func (s *simNet) join(sn *simNode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn.linked {
		return nil
	}
	h, err := s.mn.AddPeer(sn.key, sn.addr)
	if err != nil {
		return err
	}
	if h.ID() != sn.id {
		return fmt.Errorf("mocknet peer %s, want %s", h.ID(), sn.id)
	}
	for _, o := range s.nodes {
		if o != sn && o.linked {
			if _, err := s.mn.LinkPeers(sn.id, o.id); err != nil {
				return err
			}
		}
	}
	sn.linked = true
	return nil
}

// ephemeral opens a fresh mocknet peer linked to every online mailbox: a
// user's identity for one version 2 mailbox round, filter or push.
func (s *simNet) ephemeral() (host.Host, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, err := s.mn.GenPeer()
	if err != nil {
		return nil, err
	}
	for _, o := range s.nodes {
		if o.mailbox && o.linked {
			if _, err := s.mn.LinkPeers(h.ID(), o.id); err != nil {
				h.Close()
				return nil, err
			}
		}
	}
	return h, nil
}

// up starts sn on a fresh mocknet peer.
func (s *simNet) up(ctx context.Context, sn *simNode) error {
	if err := s.join(sn); err != nil {
		return err
	}
	var boot []peer.AddrInfo
	for _, b := range s.boot {
		if b.ID != sn.id {
			boot = append(boot, b)
		}
	}
	cfg := Config{
		DataDir:      sn.dir,
		Bootstrap:    boot,
		NoMDNS:       true,
		NoNAT:        true,
		Mailbox:      sn.mailbox,
		MailboxAfter: 100 * time.Millisecond,
		Logger:       testLogger(),
		HostOptions:  []p2p.Option{p2p.WithLibp2pHost(s.mn.Host(sn.id))},
		// Fresh identities for version 2 mailboxes are mocknet peers too.
		EphemeralHost: s.ephemeral,
	}
	if sn.mailbox {
		// Every mocknet peer has an address in one IPv6 /64, which the
		// mailbox's per-network limits would count as one network: key
		// them by peer, as separate users' addresses would be.
		cfg.MailboxOptions = []mailbox.Option{mailbox.WithNetKey(func(c network.Conn) string { return c.RemotePeer().String() })}
	}
	if cfg.Logger != nil {
		cfg.Logger = cfg.Logger.With("node", sn.name)
	}
	if s.mod != nil {
		s.mod(&cfg)
	}
	n, err := Open(cfg)
	if err == nil {
		if err = n.Start(ctx); err != nil {
			n.Close()
		}
	}
	sn.mu.Lock()
	if err == nil {
		sn.n = n
	} else {
		sn.n = nil
	}
	sn.mu.Unlock()
	if err != nil {
		s.cut(sn)
		return fmt.Errorf("start %s: %w", sn.name, err)
	}
	return nil
}

// cut removes every link of sn's mocknet peer.
func (s *simNet) cut(sn *simNode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.nodes {
		if o != sn && len(s.mn.LinksBetweenPeers(sn.id, o.id)) > 0 {
			s.mn.UnlinkPeers(sn.id, o.id)
		}
	}
	sn.linked = false
}

// down takes sn offline: its links go, then the node closes (which closes
// its mocknet host and with it every connection).
func (s *simNet) down(sn *simNode) error {
	sn.mu.Lock()
	n := sn.n
	sn.n = nil
	sn.mu.Unlock()
	if n == nil {
		return nil
	}
	s.cut(sn)
	if err := n.Close(); err != nil {
		return fmt.Errorf("close %s: %w", sn.name, err)
	}
	return nil
}

// all runs f on each node concurrently and joins the errors.
func all(nodes []*simNode, f func(*simNode) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, sn := range nodes {
		wg.Go(func() { errs[i] = f(sn) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// start brings the whole network up: the mailboxes first (bootstrapping
// from each other), then the users; then each mailbox announces its shards
// again so that the provider records sit at the peers closest to them in
// the full network (what the periodic reprovide does in a long-lived one).
func (s *simNet) start(ctx context.Context) {
	s.t.Helper()
	mbx := s.nodes[:len(s.boot)]
	// All mailbox peers exist before any of them bootstraps.
	for _, sn := range mbx {
		if err := s.join(sn); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := all(mbx, func(sn *simNode) error { return s.up(ctx, sn) }); err != nil {
		s.t.Fatal(err)
	}
	if err := all(s.nodes[len(s.boot):], func(sn *simNode) error { return s.up(ctx, sn) }); err != nil {
		s.t.Fatal(err)
	}
	if err := all(mbx, func(sn *simNode) error { return sn.node().mbx.svc.Provide(ctx) }); err != nil {
		s.t.Fatal(err)
	}
	// Every user's bundle is in the DHT.
	testkit.WaitFor(s.t, ctx, func() bool {
		for _, sn := range s.nodes {
			if _, err := s.nodes[0].node().Host().GetBundle(ctx, sn.node().ident.Account[:]); err != nil {
				return false
			}
		}
		return true
	})
}

func (s *simNet) close() {
	s.t.Helper()
	if err := all(s.nodes, s.down); err != nil {
		s.t.Error(err)
	}
	s.mn.Close()
}

// simBefriend makes a and b contacts through address-less invites: they
// find each other through the DHT.
func simBefriend(t testing.TB, a, b *simNode) {
	t.Helper()
	for _, p := range [][2]*simNode{{a, b}, {b, a}} {
		inv, err := p[1].node().invite()
		if err != nil {
			t.Fatal(err)
		}
		inv.Addrs = nil
		if _, err := p[0].node().AddContact(p[1].name, inv.String()); err != nil {
			t.Fatalf("AddContact %s -> %s: %v", p[0].name, p[1].name, err)
		}
	}
}

// randomPairs draws count distinct unordered pairs of users.
func randomPairs(rng *mrand.Rand, users []*simNode, count int) [][2]*simNode {
	seen := map[[2]int]bool{}
	var out [][2]*simNode
	for len(out) < count {
		i, j := rng.IntN(len(users)), rng.IntN(len(users))
		if i == j {
			continue
		}
		if i > j {
			i, j = j, i
		}
		if seen[[2]int{i, j}] {
			continue
		}
		seen[[2]int{i, j}] = true
		out = append(out, [2]*simNode{users[i], users[j]})
	}
	return out
}

// conversation is what one node sent to another, in order.
type conversation struct {
	from, to *simNode
	bodies   []string
	ids      [][16]byte
}

// TestSimulation100: 100 nodes on a mocknet, 5 of them mailboxes. 50
// random pairs of users exchange messages over several rounds; in each
// round 30 users (30% of the nodes) are offline, a different random set
// every round, and those who were offline come back. Whatever was sent
// while the recipient was away goes through the mailboxes; what a sender
// had not delivered when it went offline goes out when it comes back. At
// the end, with everyone online, every message has arrived exactly once
// and in order, and every sender sees each of its messages delivered.
func TestSimulation100(t *testing.T) {
	if testing.Short() || os.Getenv("SOTTO_SIM") == "" {
		t.Skip("100-node simulation, minutes long: set SOTTO_SIM=1")
	}
	runSimulation(t, simNodes, simMailboxes, 50)
}

// TestSimulation30 is the same with 30 nodes (5 mailboxes, 12 pairs), in
// every test run.
func TestSimulation30(t *testing.T) {
	if testing.Short() {
		t.Skip("a 30-node simulation; not in -short mode")
	}
	runSimulation(t, 30, simMailboxes, 12)
}

func runSimulation(t *testing.T, nodes, mailboxes, pairs int) {
	check := testkit.MocknetGoroutines(t)
	const (
		rounds   = 5
		perRound = 3 // messages each way per pair per round, when the sender is online
	)
	offline := nodes * 30 / 100
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 0x5177))
	ctx := testkit.Context(t, 5*time.Minute)

	began := time.Now()
	s := newSimNet(t, nodes, mailboxes, nil)
	closed := false
	defer func() {
		if !closed {
			s.close()
		}
	}()
	s.start(ctx)
	t.Logf("%d nodes up in %v", nodes, time.Since(began).Round(time.Millisecond))
	users := s.nodes[mailboxes:]

	var convs []*conversation
	for _, p := range randomPairs(rng, users, pairs) {
		simBefriend(t, p[0], p[1])
		convs = append(convs, &conversation{from: p[0], to: p[1]}, &conversation{from: p[1], to: p[0]})
	}

	sent := 0
	var away map[*simNode]bool
	for r := range rounds {
		// Online senders send; each conversation in order, all at once.
		var active []*conversation
		for _, c := range convs {
			if !away[c.from] {
				active = append(active, c)
			}
		}
		errs := make([]error, len(active))
		var wg sync.WaitGroup
		for i, c := range active {
			wg.Go(func() {
				n := c.from.node()
				for k := range perRound {
					body := fmt.Sprintf("%s->%s round %d msg %d", c.from.name, c.to.name, r, k)
					m, err := n.Send(ctx, c.to.name, body)
					if err != nil {
						errs[i] = fmt.Errorf("%s: %w", body, err)
						return
					}
					c.bodies = append(c.bodies, body)
					c.ids = append(c.ids, m.ID)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		sent += len(active) * perRound
		// What went to a recipient who is away reaches its mailboxes
		// before anyone comes back, so that the mailbox path is taken.
		for _, c := range active {
			if !away[c.to] {
				continue
			}
			n := c.from.node()
			for _, id := range c.ids[len(c.ids)-perRound:] {
				for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
					m := storedMessage(t, n, id)
					if m.StoredAt > 0 || m.State == store.StateDelivered {
						break
					}
					if time.Now().After(deadline) || ctx.Err() != nil {
						t.Fatalf("round %d: %s -> %s (away): message %x still %v, stored at %d mailboxes", r, c.from.name, c.to.name, id, m.State, m.StoredAt)
					}
				}
			}
		}

		// A new random 30% goes offline (right after sending, with much
		// still in flight); the rest come back.
		next := map[*simNode]bool{}
		for _, i := range rng.Perm(len(users))[:offline] {
			next[users[i]] = true
		}
		if r == rounds-1 {
			next = nil // the end: everyone online
		}
		var change []*simNode
		for _, u := range users {
			if next[u] != away[u] {
				change = append(change, u)
			}
		}
		err := all(change, func(sn *simNode) error {
			if next[sn] {
				return s.down(sn)
			}
			return s.up(ctx, sn)
		})
		if err != nil {
			t.Fatal(err)
		}
		away = next
		t.Logf("round %d: %d conversations sent %d messages each; %d nodes changed state (%v)", r, len(active), perRound, len(change), time.Since(began).Round(time.Millisecond))
	}

	// Every message arrives, exactly once, in order; every sender sees
	// each one delivered.
	msgs := func(n *Node, name string, ok func(Message) bool) []Message {
		return messagesWhere(t, n, name, ok)
	}
	arrived := func(c *conversation) bool { return len(msgs(c.to.node(), c.from.name, incoming)) >= len(c.bodies) }
	acked := func(c *conversation) bool { return len(msgs(c.from.node(), c.to.name, delivered)) >= len(c.bodies) }
	describe := func(ms []Message) string {
		var b strings.Builder
		for _, m := range ms {
			fmt.Fprintf(&b, "\n\t%q %v %v stored at %d (%x) written %s, stored here %s", m.Body, m.Via, m.State, m.StoredAt, m.ID,
				m.SentAt.Sub(began).Round(time.Millisecond), m.ReceivedAt.Sub(began).Round(time.Millisecond))
		}
		return b.String()
	}
	waitAll := func(what string, cond func(*conversation) bool) {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			var missing []*conversation
			for _, c := range convs {
				if !cond(c) {
					missing = append(missing, c)
				}
			}
			if len(missing) == 0 {
				return
			}
			select {
			case <-tick.C:
				continue
			case <-ctx.Done():
			}
			for _, c := range missing {
				t.Errorf("%s: %s -> %s\nsender:%s\nrecipient:%s", what, c.from.name, c.to.name,
					describe(msgs(c.from.node(), c.to.name, func(m Message) bool { return m.Direction == Outgoing })),
					describe(msgs(c.to.node(), c.from.name, incoming)))
			}
			t.FailNow()
		}
	}
	waitAll("not all arrived", arrived)
	arrivedAt := time.Now()
	waitAll("not all seen delivered", acked)
	viaMailbox := 0
	for _, c := range convs {
		in := msgs(c.to.node(), c.from.name, incoming)
		var got []string
		ids := map[[16]byte]bool{}
		for _, m := range in {
			got = append(got, string(m.Body))
			if ids[m.ID] {
				t.Errorf("%s got message %x from %s twice", c.to.name, m.ID, c.from.name)
			}
			ids[m.ID] = true
			if m.Via == ViaMailbox {
				viaMailbox++
			}
		}
		if !slices.Equal(got, c.bodies) {
			t.Errorf("%s got from %s (%d messages, want %d), not in send order:%s\nwant\n%q", c.to.name, c.from.name, len(got), len(c.bodies), describe(in), c.bodies)
		}
	}
	t.Logf("%d messages in %d conversations arrived (%d through mailboxes); receipts took %v more; total %v",
		sent, len(convs), viaMailbox, time.Since(arrivedAt).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	s.close()
	closed = true
	check()
}

// BenchmarkDeposit100 measures, on a 100-node mocknet with 5 mailboxes,
// how long a message to an offline recipient takes from Send until the
// sender's event feed reports it stored at mailboxes.
func BenchmarkDeposit100(b *testing.B) {
	ctx := testkit.Context(b, 10*time.Minute)
	s := newSimNet(b, simNodes, simMailboxes, func(c *Config) { c.MailboxAfter = time.Millisecond })
	defer s.close()
	s.start(ctx)
	users := s.nodes[simMailboxes:]
	sender := users[0]
	// Ten recipients, each with a session already (the first message sets
	// it up), then offline.
	recips := users[1:11]
	n := sender.node()
	events := n.Subscribe(ctx)
	for _, r := range recips {
		simBefriend(b, sender, r)
		m, err := n.Send(ctx, r.name, "hello")
		if err != nil {
			b.Fatal(err)
		}
		waitState(b, ctx, events, m.ID, StateDelivered)
	}
	if err := all(recips, s.down); err != nil {
		b.Fatal(err)
	}

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		r := recips[i%len(recips)]
		t0 := time.Now()
		m, err := n.Send(ctx, r.name, fmt.Sprintf("while you were away %d", i))
		if err != nil {
			b.Fatal(err)
		}
		waitState(b, ctx, events, m.ID, StateStored)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// waitState waits for the event that reports message id in state.
func waitState(tb testing.TB, ctx context.Context, events <-chan Event, id [16]byte, state MessageState) {
	tb.Helper()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				tb.Fatal("event feed closed")
			}
			if ev.Type == EventState && ev.Message.ID == id && ev.Message.State == state {
				return
			}
		case <-ctx.Done():
			tb.Fatalf("message %x never reached state %v", id, state)
		}
	}
}
