package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/store"
)

// testLogger logs to stderr when SOTTO_TEST_LOG is set, each line with
// the attributes given (the node's name, say).
func testLogger(attrs ...any) *slog.Logger {
	if os.Getenv("SOTTO_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With(attrs...)
}

// testNet is a bootstrap host plus messenger nodes on loopback.
type testNet struct {
	t    *testing.T
	boot *p2p.Host
}

func newTestNet(t *testing.T) *testNet {
	boot := p2ptest.NewHost(t, p2p.WithBundleVerifier(p2p.VerifyBundle))
	return &testNet{t: t, boot: boot}
}

// initNode creates a data dir with a fresh identity.
func (tn *testNet) initNode(name string) string {
	tn.t.Helper()
	dir := tn.t.TempDir() + "/" + name
	if _, err := Init(dir, name, nil); err != nil {
		tn.t.Fatalf("Init %s: %v", name, err)
	}
	return dir
}

// start opens and starts the node in dir, bootstrapping from the test
// net's bootstrap host.
func (tn *testNet) start(dir string, mod ...func(*Config)) *Node {
	tn.t.Helper()
	cfg := Config{
		DataDir:      dir,
		ListenAddrs:  p2ptest.LoopbackAddrs,
		Bootstrap:    []peer.AddrInfo{tn.boot.AddrInfo()},
		NoMDNS:       true,
		NoNAT:        true,
		Logger:       testLogger("node", filepath.Base(dir)),
		MailboxAfter: 100 * time.Millisecond,
	}
	for _, m := range mod {
		m(&cfg)
	}
	n, err := Open(cfg)
	if err != nil {
		tn.t.Fatalf("Open %s: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		n.Close()
		tn.t.Fatalf("Start %s: %v", dir, err)
	}
	tn.t.Cleanup(func() { n.Close() })
	return n
}

// befriend makes a and b contacts of each other through invites that
// carry only the account and device certificate (no addresses), so that
// they must find each other through the DHT.
func befriend(t *testing.T, a *Node, aName string, b *Node, bName string) {
	t.Helper()
	for _, p := range []struct {
		from, to *Node
		name     string
	}{{a, b, bName}, {b, a, aName}} {
		inv, err := p.to.invite()
		if err != nil {
			t.Fatal(err)
		}
		inv.Addrs = nil
		if _, err := p.from.AddContact(p.name, inv.String()); err != nil {
			t.Fatalf("AddContact %s: %v", p.name, err)
		}
	}
}

// waitMessages waits until n holds want messages from/to contact name that
// satisfy ok, and returns them.
func waitMessages(t *testing.T, ctx context.Context, n *Node, name string, want int, ok func(Message) bool) []Message {
	t.Helper()
	var got []Message
	testkit.WaitFor(t, ctx, func() bool {
		got = messagesWhere(t, n, name, ok)
		return len(got) >= want
	})
	return got
}

// storedContact is the store's record of the contact called name.
func storedContact(t testing.TB, n *Node, name string) store.Contact {
	t.Helper()
	var c store.Contact
	if err := n.db.View(func(tx *store.Tx) error {
		var err error
		c, err = contactByName(tx, name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

// storedMessage is the store's record of message id.
func storedMessage(t testing.TB, n *Node, id [16]byte) store.Message {
	t.Helper()
	var m store.Message
	if err := n.db.View(func(tx *store.Tx) error {
		var err error
		m, err = tx.GetMessage(id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

// allMessages lists every message of the conversation with name (of all
// conversations when name is empty), page after page.
func allMessages(t testing.TB, n *Node, name string) []Message {
	t.Helper()
	var out []Message
	var after uint64
	for {
		page, err := n.Messages(name, after, 1000)
		if err != nil {
			t.Fatalf("Messages: %v", err)
		}
		out = append(out, page...)
		if len(page) < 1000 {
			return out
		}
		after = page[len(page)-1].GlobalSeq
	}
}

// messagesWhere is allMessages restricted to the messages ok accepts.
func messagesWhere(t testing.TB, n *Node, name string, ok func(Message) bool) []Message {
	t.Helper()
	var out []Message
	for _, m := range allMessages(t, n, name) {
		if ok(m) {
			out = append(out, m)
		}
	}
	return out
}

func incoming(m Message) bool { return m.Direction == Incoming }
func delivered(m Message) bool {
	return m.Direction == Outgoing && m.State == StateDelivered
}

func TestMessengerDiscoveryAndExchange(t *testing.T) {
	check := testkit.Goroutines(t)
	tn := newTestNet(t)
	alice := tn.start(tn.initNode("alice"))
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")

	// Safety numbers agree on both sides.
	va, err := alice.VerifyContact("bob", false)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := bob.VerifyContact("alice", false)
	if err != nil {
		t.Fatal(err)
	}
	if va.SafetyNumber != vb.SafetyNumber || va.SafetyNumber == "" {
		t.Fatalf("safety numbers differ: %q vs %q", va.SafetyNumber, vb.SafetyNumber)
	}

	ctx := testkit.Context(t, 60*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello bob"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, bob, "alice", 1, incoming)
	if string(got[0].Body) != "hello bob" || got[0].Via != ViaDirect {
		t.Fatalf("bob got %+v", got[0])
	}
	if _, err := bob.Send(ctx, "alice", "hi alice"); err != nil {
		t.Fatal(err)
	}
	got = waitMessages(t, ctx, alice, "bob", 1, incoming)
	if string(got[0].Body) != "hi alice" {
		t.Fatalf("alice got %q", got[0].Body)
	}
	waitMessages(t, ctx, alice, "bob", 1, delivered)
	waitMessages(t, ctx, bob, "alice", 1, delivered)

	alice.Close()
	bob.Close()
	tn.boot.Close()
	check()
}

func TestMessengerThousandEachWay(t *testing.T) {
	if testing.Short() {
		t.Skip("long exchange")
	}
	tn := newTestNet(t)
	alice := tn.start(tn.initNode("alice"))
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 180*time.Second)

	const N = 1000
	errc := make(chan error, 2)
	for _, s := range []struct {
		from *Node
		to   string
	}{{alice, "bob"}, {bob, "alice"}} {
		go func() {
			for i := range N {
				if _, err := s.from.Send(ctx, s.to, fmt.Sprintf("%s %04d", s.to, i)); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct {
		n    *Node
		from string
		me   string
	}{{bob, "alice", "bob"}, {alice, "bob", "alice"}} {
		got := waitMessages(t, ctx, r.n, r.from, N, incoming)
		if len(got) != N {
			t.Fatalf("%s got %d messages, want exactly %d", r.me, len(got), N)
		}
		for i, m := range got {
			if want := fmt.Sprintf("%s %04d", r.me, i); string(m.Body) != want {
				t.Fatalf("%s message %d = %q, want %q (order or duplicates wrong)", r.me, i, m.Body, want)
			}
		}
	}
	waitMessages(t, ctx, alice, "bob", N, delivered)
	waitMessages(t, ctx, bob, "alice", N, delivered)
}
