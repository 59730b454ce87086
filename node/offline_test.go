package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/mailbox"
)

func asMailbox(c *Config) { c.Mailbox = true }

func stored(m Message) bool {
	return m.Direction == Outgoing && (m.State == StateStored || m.State == StateDelivered)
}

// TestOfflineDeliveryThroughMailboxes: Alice sends 50 messages while Bob is
// offline, then goes offline herself; Bob comes back and gets all 50
// exactly once, in order; Alice comes back and sees all 50 delivered. One
// of the three mailboxes is closed after the deposits.
func TestOfflineDeliveryThroughMailboxes(t *testing.T) {
	check := testkit.Goroutines(t)
	tn := newTestNet(t)
	var mbx []*Node
	for i := range 3 {
		mbx = append(mbx, tn.start(tn.initNode(fmt.Sprintf("mailbox%d", i)), asMailbox))
	}
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice := tn.start(aliceDir)
	bob := tn.start(bobDir)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)

	// Bob's bundle is in the DHT once he has published it; then he leaves.
	testkit.WaitFor(t, ctx, func() bool {
		_, err := tn.boot.GetBundle(ctx, bob.ident.Account[:])
		return err == nil
	})
	bob.Close()

	const N = 50
	for i := range N {
		if _, err := alice.Send(ctx, "bob", fmt.Sprintf("while you were away %02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	got := waitMessages(t, ctx, alice, "bob", N, stored)
	for _, m := range got {
		if m.StoredAt < 1 {
			t.Fatalf("message stored at %d mailboxes", m.StoredAt)
		}
	}
	alice.Close()
	mbx[0].Close() // a mailbox dies after the deposits

	bob = tn.start(bobDir)
	in := waitMessages(t, ctx, bob, "alice", N, incoming)
	if len(in) != N {
		t.Fatalf("bob got %d messages, want exactly %d", len(in), N)
	}
	for i, m := range in {
		if want := fmt.Sprintf("while you were away %02d", i); string(m.Body) != want || m.Via != ViaMailbox {
			t.Fatalf("message %d = %q via %v, want %q via mailbox", i, m.Body, m.Via, want)
		}
	}

	alice = tn.start(aliceDir)
	waitMessages(t, ctx, alice, "bob", N, delivered)

	// Bob deleted what he fetched, and Alice what she fetched: the live
	// mailboxes end up empty.
	testkit.WaitFor(t, ctx, func() bool {
		for _, m := range mbx[1:] {
			if m.mailboxHeld().Envelopes != 0 {
				return false
			}
		}
		return true
	})

	for _, n := range append(mbx, alice, bob) {
		n.Close()
	}
	tn.boot.Close()
	check()
}

// TestMailboxHoldsNoPlaintext scans every byte of a mailbox's data dir
// after it held a conversation's envelopes.
func TestMailboxHoldsNoPlaintext(t *testing.T) {
	tn := newTestNet(t)
	mdir := tn.initNode("mailbox")
	m := tn.start(mdir, asMailbox)
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice := tn.start(aliceDir)
	bob := tn.start(bobDir)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 60*time.Second)
	testkit.WaitFor(t, ctx, func() bool {
		_, err := tn.boot.GetBundle(ctx, bob.ident.Account[:])
		return err == nil
	})
	bob.Close()
	secret := "the eagle lands at midnight"
	for i := range 5 {
		if _, err := alice.Send(ctx, "bob", fmt.Sprintf("%s %d", secret, i)); err != nil {
			t.Fatal(err)
		}
	}
	waitMessages(t, ctx, alice, "bob", 5, stored)
	testkit.WaitFor(t, ctx, func() bool { return m.mailboxHeld().Envelopes >= 5 })
	aliceAcct, bobAcct := alice.ident.Account, bob.ident.Account
	aliceIK, bobIK := alice.me.IdentityDH.Public(), bobIK(t, bobDir)
	m.Close()

	forbidden := map[string][]byte{
		"plaintext":          []byte(secret),
		"alice account key":  aliceAcct[:],
		"bob account key":    bobAcct[:],
		"alice identity key": aliceIK[:],
		"bob identity key":   bobIK[:],
	}
	files := 0
	filepath.Walk(mdir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files++
		for what, needle := range forbidden {
			if bytes.Contains(b, needle) {
				t.Errorf("%s found in the mailbox's %s", what, filepath.Base(path))
			}
		}
		return nil
	})
	if files == 0 {
		t.Fatal("scanned no files")
	}
}

// bobIK reads the identity DH public key of the node in dir.
func bobIK(t *testing.T, dir string) [32]byte {
	n, err := Open(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	return n.me.IdentityDH.Public()
}

// TestLongQueueReachesMailboxes: more messages to an offline contact than
// one delivery batch holds all end up in mailboxes, not only the first
// batch.
func TestLongQueueReachesMailboxes(t *testing.T) {
	tn := newTestNet(t)
	tn.start(tn.initNode("mailbox"), func(c *Config) {
		c.Mailbox = true
		c.MailboxOptions = []mailbox.Option{mailbox.WithRateLimit(10_000, 10_000)}
	})
	alice := tn.start(tn.initNode("alice"))
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)
	if _, err := alice.Send(ctx, "bob", "hello"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, delivered)
	bob.Close()

	const N = MaxOutboxBatch + 40
	for i := range N {
		if _, err := alice.Send(ctx, "bob", fmt.Sprintf("queued %03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	got := waitMessages(t, ctx, alice, "bob", N, func(m Message) bool {
		return m.Direction == Outgoing && m.State == StateStored
	})
	if len(got) != N {
		t.Fatalf("%d messages stored, want %d", len(got), N)
	}
}

// countingHandler counts log records by message.
type countingHandler struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.n[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
func (h *countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

// A receipt to a stranger who wrote first and cannot be reached (no
// address anywhere), in a network with no mailbox to take it, is retried
// with backoff, directly and by deposit: not every few milliseconds. (The
// retry once came back 10 ms after each failed deposit, and a flood of
// strangers' first messages kept the node busy with their receipts.)
func TestFailedDepositBacksOff(t *testing.T) {
	tn := newTestNet(t)
	logs := &countingHandler{n: map[string]int{}}
	alice := tn.start(tn.initNode("alice"), func(c *Config) { c.Logger = slog.New(logs) })
	ctx := testkit.Context(t, 60*time.Second)
	raw, err := alice.currentBundle(alice.now())
	if err != nil {
		t.Fatal(err)
	}
	env, _ := firstMessageSeq(t, raw, alice.now(), time.Hour, "", "hello from nowhere", 1)
	if err := alice.Ingest(ctx, "", env, ViaMailbox); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { return logs.count("delivery failed") > 0 && logs.count("mailbox deposit") > 0 })
	time.Sleep(4 * time.Second)
	// With backoff from 1 s (0.5–1 s, then 1–2 s, then 2–4 s), a handful
	// of tries in those seconds; a retry every 10–100 ms made dozens.
	deposits, direct := logs.count("mailbox deposit"), logs.count("delivery failed")
	t.Logf("%d deposit records, %d failed direct attempts", deposits, direct)
	if deposits > 2*8 { // a debug and an info record per failed try
		t.Fatalf("%d deposit records in about 4 s: the failed deposit is retried without backoff", deposits)
	}
	if direct > 8 {
		t.Fatalf("%d failed direct attempts in about 4 s: retried without backoff", direct)
	}
}
