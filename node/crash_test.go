package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/store"
)

// crashMessages is how many messages the crash tests send.
const crashMessages = 300

// crashBody is the body of the i-th message of a crash test.
func crashBody(i int) string { return fmt.Sprintf("crash test %03d", i) }

// sendCrashMessages sends crashMessages messages from n to name as fast as
// Send returns, in a goroutine; the channel yields the first error or nil.
func sendCrashMessages(ctx context.Context, n *Node, name string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for i := range crashMessages {
			if _, err := n.Send(ctx, name, crashBody(i)); err != nil {
				errc <- fmt.Errorf("Send %d: %w", i, err)
				return
			}
		}
		errc <- nil
	}()
	return errc
}

// checkAllInOrder fails unless in holds exactly the crash test's messages,
// once each, in send order.
func checkAllInOrder(t *testing.T, in []Message) {
	t.Helper()
	if len(in) != crashMessages {
		t.Errorf("recipient holds %d incoming messages, want exactly %d", len(in), crashMessages)
	}
	for i, m := range in {
		if want := crashBody(i); string(m.Body) != want {
			t.Fatalf("incoming message %d = %q, want %q (lost, duplicated or reordered)", i, m.Body, want)
		}
	}
}

// checkAcked fails unless every message the sender holds as sent or
// delivered (the recipient acked it after its commit) is among the
// recipient's incoming messages, and every message the recipient stored
// before is still there.
func checkAcked(t *testing.T, sender []Message, before, after []Message) {
	t.Helper()
	have := map[[16]byte]string{}
	for _, m := range after {
		if m.Direction == Incoming {
			have[m.ID] = string(m.Body)
		}
	}
	acked := 0
	for _, m := range sender {
		if m.Direction != Outgoing || (m.State != StateSent && m.State != StateDelivered) {
			continue
		}
		acked++
		if body, ok := have[m.ID]; !ok || body != string(m.Body) {
			t.Errorf("message %q was acked (state %v) but the recipient does not hold it after the crash", m.Body, m.State)
		}
	}
	for _, m := range before {
		if m.Direction != Incoming {
			continue
		}
		if body, ok := have[m.ID]; !ok || body != string(m.Body) {
			t.Errorf("message %q was stored before the crash and is gone after it", m.Body)
		}
	}
	t.Logf("before the crash: %d stored by the recipient, %d acked to the sender; %d present after", len(before), acked, len(have))
}

// TestRecipientClosedMidStream: Bob's node is closed while Alice's 300
// messages stream in (in-flight commits are cancelled, nothing is flushed
// by hand); what Bob stored or acked survives, and after a restart Bob has
// every message exactly once, in order, and the session still works.
// "paced": Alice sends while Bob receives. "burst": Alice queued all 300
// while her node was down and they leave on one pipelined stream when it
// starts, so that many envelopes are in flight and in Bob's commits.
func TestRecipientClosedMidStream(t *testing.T) {
	for _, burst := range []bool{false, true} {
		name := "paced"
		if burst {
			name = "burst"
		}
		t.Run(name, func(t *testing.T) { testRecipientClosedMidStream(t, burst) })
	}
}

func testRecipientClosedMidStream(t *testing.T, burst bool) {
	check := testkit.Goroutines(t)
	tn := newTestNet(t)
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice := tn.start(aliceDir)
	bob := tn.start(bobDir)
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 120*time.Second)

	// Bob writes first: both ends have the session.
	if _, err := bob.Send(ctx, "alice", "hi"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, incoming)
	waitMessages(t, ctx, bob, "alice", 1, delivered)

	var errc <-chan error
	if burst {
		alice.Close()
		offline, err := Open(Config{DataDir: aliceDir})
		if err != nil {
			t.Fatal(err)
		}
		err = <-sendCrashMessages(ctx, offline, "bob")
		offline.Close()
		if err != nil {
			t.Fatal(err)
		}
		alice = tn.start(aliceDir)
		done := make(chan error, 1)
		done <- nil
		errc = done
	} else {
		errc = sendCrashMessages(ctx, alice, "bob")
	}
	waitMessages(t, ctx, bob, "alice", 50, incoming)
	before := allMessages(t, bob, "alice")
	if err := bob.Close(); err != nil {
		t.Logf("closing Bob mid-stream: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	aliceView := allMessages(t, alice, "bob")

	// Bob's store as the crash left it, before anything is redelivered.
	reopened, err := Open(Config{DataDir: bobDir})
	if err != nil {
		t.Fatalf("reopening Bob's data dir: %v", err)
	}
	afterCrash := received(allMessages(t, reopened, "alice"))
	reopened.Close()
	checkAcked(t, aliceView, received(before), afterCrash)
	if len(afterCrash) >= crashMessages {
		t.Logf("Bob had all %d messages before he was closed; the crash hit no stream", len(afterCrash))
	}
	for i, m := range afterCrash {
		if want := crashBody(i); string(m.Body) != want {
			t.Fatalf("after the crash, Bob's message %d = %q, want %q (a gap or reordering)", i, m.Body, want)
		}
	}

	bob = tn.start(bobDir)
	in := waitMessages(t, ctx, bob, "alice", crashMessages, incoming)
	waitMessages(t, ctx, alice, "bob", crashMessages, delivered)
	checkAllInOrder(t, received(allMessages(t, bob, "alice")))
	checkAllInOrder(t, in)

	// The session survived on both ends: both directions decrypt.
	if _, err := bob.Send(ctx, "alice", "back again"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, alice, "bob", 2, incoming)
	if last := got[len(got)-1]; string(last.Body) != "back again" {
		t.Fatalf("Alice's last message = %q, want %q", last.Body, "back again")
	}
	if _, err := alice.Send(ctx, "bob", "welcome back"); err != nil {
		t.Fatal(err)
	}
	in = waitMessages(t, ctx, bob, "alice", crashMessages+1, incoming)
	if last := in[len(in)-1]; string(last.Body) != "welcome back" {
		t.Fatalf("Bob's last message = %q, want %q", last.Body, "welcome back")
	}

	alice.Close()
	bob.Close()
	tn.boot.Close()
	check()
}

// received keeps the incoming messages.
func received(ms []Message) []Message {
	var out []Message
	for _, m := range ms {
		if m.Direction == Incoming {
			out = append(out, m)
		}
	}
	return out
}

// Environment of a TestCrashChild process.
const (
	crashEnvDir  = "SOTTO_CRASH_CHILD_DIR"
	crashEnvBoot = "SOTTO_CRASH_CHILD_BOOTSTRAP"
	// crashChildLife bounds a child's run when its parent never ends it.
	crashChildLife = 3 * time.Minute
)

// TestCrashChild is not a test of its own: TestRecipientSIGKILL runs the
// test binary again with it to get a node in a process it can kill. It
// runs the node in $SOTTO_CRASH_CHILD_DIR, prints "invite INVITE" when it
// can receive and "msg BODY" per message received, and closes the node
// when its stdin ends.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("runs only as TestRecipientSIGKILL's child process")
	}
	boot, err := peer.AddrInfoFromString(os.Getenv(crashEnvBoot))
	if err != nil {
		t.Fatalf("bootstrap address: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), crashChildLife)
	defer cancel()
	n, err := Open(Config{
		DataDir: dir, ListenAddrs: p2ptest.LoopbackAddrs, Bootstrap: []peer.AddrInfo{*boot},
		NoMDNS: true, NoNAT: true, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	events := n.Subscribe(ctx)
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	inv, err := n.invite()
	if err != nil {
		t.Fatal(err)
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "invite %s\n", inv)
	out.Flush()
	stdinDone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinDone)
	}()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Type == EventMessage && ev.Message != nil {
				fmt.Fprintf(out, "msg %s\n", ev.Message.Body)
				out.Flush()
			}
		case <-stdinDone:
			return
		case <-ctx.Done():
			return
		}
	}
}

// crashChild is a running TestCrashChild process.
type crashChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	invite chan string
	msgs   chan string
	exited chan struct{}
}

// startCrashChild runs the node in dir in a child process and waits until
// it prints its invite.
func startCrashChild(t *testing.T, ctx context.Context, dir string, boot peer.AddrInfo) (*crashChild, string) {
	t.Helper()
	addrs, err := peer.AddrInfoToP2pAddrs(&boot)
	if err != nil || len(addrs) == 0 {
		t.Fatalf("bootstrap address: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvBoot+"="+addrs[0].String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, stdin: stdin, invite: make(chan string, 1), msgs: make(chan string, 4*crashMessages), exited: make(chan struct{})}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.exited
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "invite "):
				c.invite <- strings.TrimPrefix(line, "invite ")
			case strings.HasPrefix(line, "msg "):
				select {
				case c.msgs <- strings.TrimPrefix(line, "msg "):
				default:
				}
			}
		}
		cmd.Wait()
	}()
	select {
	case inv := <-c.invite:
		return c, inv
	case <-c.exited:
		t.Fatalf("the child exited before it was ready:\n%s", stderr.String())
	case <-ctx.Done():
		t.Fatal("the child never became ready")
	}
	return nil, ""
}

// stop ends the child gracefully (its node closes) and waits for it.
func (c *crashChild) stop(t *testing.T, ctx context.Context) {
	t.Helper()
	c.stdin.Close()
	select {
	case <-c.exited:
	case <-ctx.Done():
		t.Fatal("the child did not exit after its stdin closed")
	}
}

// TestRecipientSIGKILL: Bob's node runs in a child process that is killed
// with SIGKILL while Alice's 300 messages stream in. After Bob's restart
// he has every message exactly once, in order, Alice sees all delivered,
// and the session still decrypts.
func TestRecipientSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	tn := newTestNet(t)
	aliceDir, bobDir := tn.initNode("alice"), tn.initNode("bob")
	alice := tn.start(aliceDir)
	ctx := testkit.Context(t, 150*time.Second)

	// Bob knows Alice before his node first runs.
	aliceInv, err := alice.invite()
	if err != nil {
		t.Fatal(err)
	}
	func() {
		bob, err := Open(Config{DataDir: bobDir})
		if err != nil {
			t.Fatal(err)
		}
		defer bob.Close()
		if _, err := bob.AddContact("alice", aliceInv.String()); err != nil {
			t.Fatal(err)
		}
	}()

	child, bobInv := startCrashChild(t, ctx, bobDir, tn.boot.AddrInfo())
	if _, err := alice.AddContact("bob", bobInv); err != nil {
		t.Fatal(err)
	}
	errc := sendCrashMessages(ctx, alice, "bob")
	for seen := 0; seen < 50; seen++ {
		select {
		case <-child.msgs:
		case <-child.exited:
			t.Fatal("the child exited before it was killed")
		case <-ctx.Done():
			t.Fatalf("the child printed %d messages, waited for 50", seen)
		}
	}
	if err := child.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-child.exited
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	aliceView := allMessages(t, alice, "bob")

	// Bob's store as SIGKILL left it.
	reopened, err := Open(Config{DataDir: bobDir})
	if err != nil {
		t.Fatalf("reopening Bob's data dir after SIGKILL: %v", err)
	}
	afterKill := received(allMessages(t, reopened, "alice"))
	reopened.Close()
	checkAcked(t, aliceView, nil, afterKill)
	for i, m := range afterKill {
		if want := crashBody(i); string(m.Body) != want {
			t.Fatalf("after SIGKILL, Bob's message %d = %q, want %q (a gap or reordering)", i, m.Body, want)
		}
	}

	// Bob comes back in a new process and gets the rest.
	start := time.Now()
	child, _ = startCrashChild(t, ctx, bobDir, tn.boot.AddrInfo())
	t.Logf("child restarted in %v", time.Since(start))
	waitMessages(t, ctx, alice, "bob", crashMessages, delivered)
	t.Logf("all delivered %v after the restart", time.Since(start))
	child.stop(t, ctx)

	// Then in-process: everything exactly once, in order, and the session
	// still works both ways.
	bob := tn.start(bobDir)
	checkAllInOrder(t, received(allMessages(t, bob, "alice")))
	if _, err := bob.Send(ctx, "alice", "back again"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, alice, "bob", 1, incoming)
	if string(got[0].Body) != "back again" {
		t.Fatalf("Alice got %q", got[0].Body)
	}
	if _, err := alice.Send(ctx, "bob", "welcome back"); err != nil {
		t.Fatal(err)
	}
	in := waitMessages(t, ctx, bob, "alice", crashMessages+1, incoming)
	if last := in[len(in)-1]; string(last.Body) != "welcome back" {
		t.Fatalf("Bob's last message = %q, want %q", last.Body, "welcome back")
	}
}

// seededRand yields prefix, then system randomness: Init draws the account
// seed first and the device (host) key seed second, so a prefix fixes both.
func seededRand(prefix ...[]byte) io.Reader {
	return io.MultiReader(bytes.NewReader(bytes.Join(prefix, nil)), rand.Reader)
}

func randomSeed(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeyChangeBlocksSending: Bob reinstalls with a new account key on the
// same device key. Alice, who has no session yet, fetches the device's
// bundle, finds it signed by another account, and flags the contact:
// nothing is sealed or sent until she accepts the new key after comparing
// safety numbers.
func TestKeyChangeBlocksSending(t *testing.T) {
	check := testkit.Goroutines(t)
	tn := newTestNet(t)
	hostSeed := randomSeed(t)
	oldDir := t.TempDir() + "/bob-old"
	newDir := t.TempDir() + "/bob-new"
	oldIdent, err := Init(oldDir, "bob", nil, InitWithRand(seededRand(randomSeed(t), hostSeed)))
	if err != nil {
		t.Fatal(err)
	}
	newIdent, err := Init(newDir, "bob", nil, InitWithRand(seededRand(randomSeed(t), hostSeed)))
	if err != nil {
		t.Fatal(err)
	}
	if oldIdent.PeerID != newIdent.PeerID || oldIdent.Account == newIdent.Account {
		t.Fatalf("reinstall should keep the device (%s vs %s) and change the account", oldIdent.PeerID, newIdent.PeerID)
	}
	oldAcct, newAcct := [32]byte(oldIdent.Account), [32]byte(newIdent.Account)

	alice := tn.start(tn.initNode("alice"))
	// The old identity never reached the DHT: Alice knows it from its
	// invite (with addresses) only.
	oldBob := tn.start(oldDir, func(c *Config) { c.Bootstrap = nil })
	inv, err := oldBob.invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.AddContact("bob", inv.String()); err != nil {
		t.Fatal(err)
	}
	oldNumber, err := alice.VerifyContact("bob", false)
	if err != nil {
		t.Fatal(err)
	}
	oldBob.Close()

	newBob := tn.start(newDir)
	ctx := testkit.Context(t, 60*time.Second)
	events := alice.Subscribe(ctx)

	// The device is reachable (the DHT still holds the old account's
	// bundle, valid for weeks: what the device itself serves is what
	// reveals the change).
	if err := alice.Host().LibP2P().Connect(ctx, newBob.Host().AddrInfo()); err != nil {
		t.Fatal(err)
	}

	// Alice writes before she knows: the message is queued, and the bundle
	// the device serves now is signed by the new account.
	first, err := alice.Send(ctx, "bob", "are you there?")
	if err != nil {
		t.Fatalf("Send before the change is known: %v", err)
	}
	var flagged store.Contact
	testkit.WaitFor(t, ctx, func() bool {
		flagged = storedContact(t, alice, "bob")
		return flagged.KeyChange != nil
	})
	if flagged.Account != oldAcct || flagged.KeyChange.Account != newAcct {
		t.Fatalf("flagged contact: account %x, pending %x; want %x, %x",
			flagged.Account[:4], flagged.KeyChange.Account[:4], oldAcct[:4], newAcct[:4])
	}
	sawEvent := false
	for !sawEvent {
		select {
		case ev := <-events:
			sawEvent = ev.Type == EventKeyChange && ev.Contact != nil && ev.Contact.Name == "bob"
		case <-ctx.Done():
			t.Fatal("no EventKeyChange")
		}
	}

	if _, err := alice.Send(ctx, "bob", "hello?"); !errors.Is(err, ErrKeyChangePending) {
		t.Fatalf("Send to a flagged contact: %v, want ErrKeyChangePending", err)
	}

	// A whole delivery attempt after the flag: nothing is sealed, no
	// session starts, nothing reaches the new key.
	alice.deliver(oldAcct, nil)
	err = alice.db.View(func(tx *store.Tx) error {
		e, err := tx.GetOutbox(first.ID)
		if err != nil {
			return fmt.Errorf("the queued message left the outbox: %w", err)
		}
		if e.Envelope != nil {
			return errors.New("the queued message was sealed while the key change is pending")
		}
		for _, a := range [][32]byte{oldAcct, newAcct} {
			if s, err := alice.loadSession(tx, a); err != nil || s != nil {
				return fmt.Errorf("a session exists (%v) while the key change is pending", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ms := allMessages(t, newBob, ""); len(ms) != 0 {
		t.Fatalf("the new key received %d messages while the change was pending", len(ms))
	}
	if cs, err := newBob.Contacts(); err != nil || len(cs) != 0 {
		t.Fatalf("the new key has contacts %v (%v): a message request got through", cs, err)
	}
	if m := allMessages(t, alice, "bob"); len(m) != 1 || m[0].State != StateQueued {
		t.Fatalf("Alice's conversation: %+v, want the one queued message", m)
	}

	// The safety number shown is the new key's.
	v, err := alice.VerifyContact("bob", false)
	if err != nil {
		t.Fatal(err)
	}
	want := keys.SafetyNumber(alice.account(), keys.AccountPublic(newAcct))
	if !v.KeyChanged || v.SafetyNumber != want || v.SafetyNumber == oldNumber.SafetyNumber {
		t.Fatalf("VerifyContact = changed %v, %q; want changed, %q (old %q)", v.KeyChanged, v.SafetyNumber, want, oldNumber.SafetyNumber)
	}
	if bobs := newBob.SafetyNumber(alice.ident.Account); bobs != v.SafetyNumber {
		t.Fatalf("the new Bob computes %q, Alice %q", bobs, v.SafetyNumber)
	}
	if c, _ := alice.Contact("bob"); !c.KeyChanged {
		t.Fatal("looking at the safety number accepted the change")
	}

	// Accepting makes the new key the contact's; sending works again.
	v, err = alice.VerifyContact("bob", true)
	if err != nil {
		t.Fatal(err)
	}
	if v.Contact.Account != newAcct || v.Contact.KeyChanged || !v.Contact.Verified {
		t.Fatalf("after accepting: %+v", v.Contact)
	}
	aliceInv, err := alice.invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newBob.AddContact("alice", aliceInv.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Send(ctx, "bob", "hello new key"); err != nil {
		t.Fatalf("Send after accepting: %v", err)
	}
	got := waitMessages(t, ctx, newBob, "alice", 1, incoming)
	waitMessages(t, ctx, alice, "bob", 1, delivered)
	t.Logf("Bob (new key) received %d message(s): %q", len(got), bodies(got))
	for _, m := range allMessages(t, alice, "bob") {
		t.Logf("Alice's %q: state %v", m.Body, m.State)
	}

	alice.Close()
	newBob.Close()
	tn.boot.Close()
	check()
}

func bodies(ms []Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, string(m.Body))
	}
	return out
}
