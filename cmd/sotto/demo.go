package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/node"
)

// demoStepTimeout bounds each step of the demo.
const demoStepTimeout = 60 * time.Second

// demoTick is how often the live line of a running step is redrawn (on a
// terminal only).
const demoTick = 100 * time.Millisecond

// demoSpreadWait bounds how long the demo waits for a stored message to
// reach every mailbox (gossip carries it beyond those that acknowledged
// it) before it reports how many hold it.
const demoSpreadWait = 3 * time.Second

// demo is the state of a running demonstration network.
type demo struct {
	out   *liveWriter
	root  string
	start time.Time
	nodes []*node.Node
	boot  *node.Node
	mbx   []*node.Node
	dirs  map[string]string
	// away is the sealed envelopes of what Alice sent while Bob was away.
	away [][]byte
}

// stepError names the demo step that failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return fmt.Sprintf("demo step %q failed: %v", e.step, e.err) }
func (e *stepError) Unwrap() error { return e.err }

// runDemo starts a small real network on loopback inside this process —
// a bootstrap node, two mailboxes, Alice, Bob and Carol, each with its own
// data dir — and narrates direct messaging, offline delivery through the
// mailboxes and a first-contact request.
func runDemo(ctx context.Context, keep bool, out io.Writer) (err error) {
	root, err := os.MkdirTemp("", "sotto-demo-")
	if err != nil {
		return err
	}
	d := &demo{out: newLiveWriter(out, isTerminal(out)), root: root, start: time.Now(), dirs: map[string]string{}}
	defer func() {
		if !keep || err != nil {
			d.closeAll()
			os.RemoveAll(root)
		}
	}()

	fmt.Fprintf(d.out, "Sotto demo: a real network on 127.0.0.1, every node in this process with its own data dir under %s\n\n", root)

	var alice, bob, carol *node.Node
	steps := []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"start the network", func(ctx context.Context) error {
			var err error
			if d.boot, err = d.startNode(ctx, "bootstrap", false); err != nil {
				return err
			}
			for _, name := range []string{"mailbox-1", "mailbox-2"} {
				m, err := d.startNode(ctx, name, true)
				if err != nil {
					return err
				}
				d.mbx = append(d.mbx, m)
			}
			if alice, err = d.startNode(ctx, "alice", false); err != nil {
				return err
			}
			if bob, err = d.startNode(ctx, "bob", false); err != nil {
				return err
			}
			carol, err = d.startNode(ctx, "carol", false)
			return err
		}},
		{"exchange invites", func(ctx context.Context) error {
			if err := d.befriend(alice, "alice", bob, "bob"); err != nil {
				return err
			}
			va, err := alice.VerifyContact("bob", false)
			if err != nil {
				return err
			}
			vb, err := bob.VerifyContact("alice", false)
			if err != nil {
				return err
			}
			if va.SafetyNumber != vb.SafetyNumber {
				return fmt.Errorf("safety numbers differ: %s / %s", va.SafetyNumber, vb.SafetyNumber)
			}
			d.say("safety number, the same on both sides: %s", va.SafetyNumber)
			return nil
		}},
		{"Alice and Bob message directly", func(ctx context.Context) error {
			t0 := time.Now()
			m, err := alice.Send(ctx, "bob", "Hi Bob! This goes straight to your node, end to end encrypted.")
			if err != nil {
				return err
			}
			got, err := waitIncoming(ctx, bob, "alice", 1)
			if err != nil {
				return err
			}
			d.say("Bob received %q via %s after %s", got[0].Body, got[0].Via, since(t0))
			if _, err := waitState(ctx, alice, "bob", m.ID, node.StateDelivered); err != nil {
				return err
			}
			d.say("Alice sees it delivered (an encrypted receipt came back) after %s", since(t0))
			t0 = time.Now()
			if _, err := bob.Send(ctx, "alice", "Hi Alice, got it."); err != nil {
				return err
			}
			got, err = waitIncoming(ctx, alice, "bob", 1)
			if err != nil {
				return err
			}
			d.say("Alice received %q after %s", got[0].Body, since(t0))
			return nil
		}},
		{"Bob goes offline", func(ctx context.Context) error {
			if err := bob.Close(); err != nil {
				return err
			}
			d.drop(bob)
			d.say("Bob's node stopped")
			return nil
		}},
		{"Alice sends while Bob is away", func(ctx context.Context) error {
			texts := []string{"Are you there?", "Dinner at eight tomorrow.", "Bring the blue notebook."}
			var ids [][16]byte
			for _, t := range texts {
				m, err := alice.Send(ctx, "bob", t)
				if err != nil {
					return err
				}
				ids = append(ids, m.ID)
			}
			t0 := time.Now()
			for i, id := range ids {
				m, err := waitState(ctx, alice, "bob", id, node.StateStored)
				if err != nil {
					return err
				}
				took := since(t0)
				held, err := d.holding(ctx, alice, id)
				if err != nil {
					return err
				}
				if held == 0 { // not found in the mailboxes: count the acknowledgements
					held = m.StoredAt
				}
				if env, err := alice.SealedEnvelope(id); err == nil {
					d.away = append(d.away, env)
				}
				d.say("%q: stored at %s after %s", texts[i], plural(held, "mailbox", "mailboxes"), took)
			}
			return nil
		}},
		{"look inside the mailboxes", func(ctx context.Context) error {
			for i, m := range d.mbx {
				held, err := m.MailboxPeek(10)
				if err != nil {
					return err
				}
				mine := 0
				for _, h := range held {
					if slices.ContainsFunc(d.away, func(env []byte) bool { return bytes.Equal(env, h.Envelope) }) {
						mine++
					}
				}
				// Receipts and control messages (which mailboxes Alice
				// receives at, say) that Bob was not there to take wait too.
				d.say("mailbox-%d holds %d envelopes, %d of them Alice's messages above:", i+1, len(held), mine)
				for _, h := range held {
					for _, t := range []string{"Dinner", "notebook", "Are you"} {
						if bytes.Contains(h.Ciphertext, []byte(t)) {
							return fmt.Errorf("a mailbox can read a message")
						}
					}
					what := "receipt or control message"
					if slices.ContainsFunc(d.away, func(env []byte) bool { return bytes.Equal(env, h.Envelope) }) {
						what = "Alice's message"
					}
					d.say("    tag %s…  %5d bytes  ciphertext %s…  (%s)", hex.EncodeToString(h.Tag[:6]), h.Size, hex.EncodeToString(h.Ciphertext[:12]), what)
				}
			}
			d.say("tags rotate daily and differ per pair and direction; no sender, no recipient account, no text")
			return nil
		}},
		{"Bob comes back and syncs", func(ctx context.Context) error {
			t0 := time.Now()
			var err error
			if bob, err = d.startNode(ctx, "bob", false); err != nil {
				return err
			}
			got, err := waitIncoming(ctx, bob, "alice", 4)
			if err != nil {
				return err
			}
			d.say("Bob is back after %s and has read:", since(t0))
			for _, m := range got[1:] {
				d.say("    %q (via %s)", m.Body, m.Via)
			}
			return nil
		}},
		{"Alice sees them delivered", func(ctx context.Context) error {
			t0 := time.Now()
			ms, err := waitDelivered(ctx, alice, "bob", 4)
			if err != nil {
				return err
			}
			d.say("all %d of Alice's messages to Bob delivered (%s)", len(ms), since(t0))
			return nil
		}},
		{"Carol writes to Alice first", func(ctx context.Context) error {
			inv, err := alice.Invite()
			if err != nil {
				return err
			}
			if _, err := carol.AddContact("alice", inv); err != nil {
				return err
			}
			t0 := time.Now()
			if _, err := carol.Send(ctx, "alice", "Hello Alice, Bob gave me your invite."); err != nil {
				return err
			}
			c, err := waitRequest(ctx, alice)
			if err != nil {
				return err
			}
			d.say("Alice got a message request from an unknown account after %s, shown as %q with safety number %s",
				since(t0), c.Name, alice.SafetyNumber(c.Account))
			return nil
		}},
	}
	for _, s := range steps {
		fmt.Fprintf(d.out, "[%7s] %s\n", since(d.start), s.name)
		sctx, cancel := context.WithTimeout(ctx, demoStepTimeout)
		stop := d.showStep(s.name)
		err := s.run(sctx)
		stop()
		cancel()
		if err != nil {
			return &stepError{step: s.name, err: err}
		}
	}
	fmt.Fprintf(d.out, "\n[%7s] every step succeeded\n", since(d.start))
	if keep {
		return d.keep(ctx)
	}
	return nil
}

// keep serves each person's control socket until ctx ends, and says how
// to talk to them.
func (d *demo) keep(ctx context.Context) error {
	fmt.Fprintf(d.out, "\nThe network keeps running until you press Ctrl-C. Talk to it from another terminal:\n")
	errc := make(chan error, len(d.nodes))
	served := 0
	for _, n := range d.nodes {
		name := n.Identity().Name
		if name != "alice" && name != "bob" && name != "carol" {
			continue
		}
		path, err := api.SocketPath(d.dirs[name])
		if err != nil {
			return err
		}
		srv := api.NewServer(api.NodeBackend(n))
		served++
		go func() { errc <- srv.ServeUnix(ctx, path) }()
		fmt.Fprintf(d.out, "    SOTTO_HOME=%s sotto messages --follow\n", d.dirs[name])
	}
	fmt.Fprintf(d.out, "    SOTTO_HOME=%s sotto send bob 'hello again'\n", d.dirs["alice"])
	<-ctx.Done()
	for range served {
		<-errc
	}
	d.closeAll()
	fmt.Fprintf(d.out, "data dirs kept under %s\n", d.root)
	return nil
}

// showStep shows, on a terminal, a live line with the running step and
// the time so far until the returned func is called.
func (d *demo) showStep(name string) (stop func()) {
	if !d.out.live {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	started := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(demoTick)
		defer t.Stop()
		for {
			d.out.Progress(fmt.Sprintf("[%7s] %s… (%s)", since(d.start), name, time.Since(started).Truncate(demoTick)))
			select {
			case <-quit:
				d.out.Progress("")
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(quit); <-done }
}

// holding returns how many of the demo's mailboxes hold the envelope of
// sender's message id, waiting up to demoSpreadWait for every mailbox to
// hold it.
func (d *demo) holding(ctx context.Context, sender *node.Node, id [16]byte) (int, error) {
	env, err := sender.SealedEnvelope(id)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, demoSpreadWait)
	defer cancel()
	count := 0
	err = poll(ctx, func() (bool, error) {
		count = 0
		for _, m := range d.mbx {
			var held bool
			es, err := m.MailboxPeek(demoPeekLimit)
			for _, e := range es {
				held = held || bytes.Equal(e.Envelope, env)
			}
			if err != nil {
				return false, err
			}
			if held {
				count++
			}
		}
		return count == len(d.mbx), nil
	})
	if err != nil && ctx.Err() == nil {
		return 0, err
	}
	return count, nil
}

// demoPeekLimit bounds the envelopes the demo reads from a mailbox.
const demoPeekLimit = 100

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "          "+format+"\n", args...)
}

func since(t time.Time) string {
	return time.Since(t).Round(time.Millisecond).String()
}

// startNode initialises (first time) and starts the node called name.
func (d *demo) startNode(ctx context.Context, name string, mailbox bool) (*node.Node, error) {
	dir, ok := d.dirs[name]
	if !ok {
		dir = filepath.Join(d.root, name)
		if _, err := node.Init(dir, name, nil); err != nil {
			return nil, err
		}
		d.dirs[name] = dir
	}
	cfg := node.Config{
		DataDir:      dir,
		ListenAddrs:  []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		NoMDNS:       true,
		NoNAT:        true,
		Mailbox:      mailbox,
		MailboxAfter: 500 * time.Millisecond,
	}
	if os.Getenv("SOTTO_DEMO_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	if d.boot != nil {
		h := d.boot.Host()
		cfg.Bootstrap = []peer.AddrInfo{h.AddrInfo()}
	}
	n, err := node.Open(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	d.nodes = append(d.nodes, n)
	role := ""
	if mailbox {
		role = " (mailbox)"
	}
	d.say("%-9s %s%s", name, n.Identity().PeerID, role)
	return n, nil
}

func (d *demo) drop(n *node.Node) {
	for i, m := range d.nodes {
		if m == n {
			d.nodes = append(d.nodes[:i], d.nodes[i+1:]...)
			return
		}
	}
}

func (d *demo) closeAll() {
	for i := len(d.nodes) - 1; i >= 0; i-- {
		d.nodes[i].Close()
	}
	d.nodes = nil
}

// befriend has a and b add each other from their invites.
func (d *demo) befriend(a *node.Node, aName string, b *node.Node, bName string) error {
	ia, err := a.Invite()
	if err != nil {
		return err
	}
	ib, err := b.Invite()
	if err != nil {
		return err
	}
	d.say("Alice's invite: %s…", truncate(ia, 48))
	if _, err := a.AddContact(bName, ib); err != nil {
		return err
	}
	if _, err := b.AddContact(aName, ia); err != nil {
		return err
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// poll calls cond every 20 ms until it returns true or an error, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.New("timed out")
		case <-t.C:
		}
	}
}

func waitIncoming(ctx context.Context, n *node.Node, contact string, want int) ([]node.Message, error) {
	var got []node.Message
	err := poll(ctx, func() (bool, error) {
		ms, err := n.Messages(contact, 0, 1000)
		if err != nil {
			return false, err
		}
		got = got[:0]
		for _, m := range ms {
			if m.Direction == node.Incoming {
				got = append(got, m)
			}
		}
		return len(got) >= want, nil
	})
	return got, err
}

func waitDelivered(ctx context.Context, n *node.Node, contact string, want int) ([]node.Message, error) {
	var got []node.Message
	err := poll(ctx, func() (bool, error) {
		ms, err := n.Messages(contact, 0, 1000)
		if err != nil {
			return false, err
		}
		got = got[:0]
		for _, m := range ms {
			if m.Direction == node.Outgoing && m.State == node.StateDelivered {
				got = append(got, m)
			}
		}
		return len(got) >= want, nil
	})
	return got, err
}

// waitState waits until message id reaches state (or a later one).
func waitState(ctx context.Context, n *node.Node, contact string, id [16]byte, state node.MessageState) (node.Message, error) {
	var found node.Message
	err := poll(ctx, func() (bool, error) {
		ms, err := n.Messages(contact, 0, 1000)
		if err != nil {
			return false, err
		}
		for _, m := range ms {
			if m.ID == id {
				found = m
				if m.State == node.StateFailed {
					return false, fmt.Errorf("message failed")
				}
				return m.State == state || m.State == node.StateDelivered, nil
			}
		}
		return false, nil
	})
	return found, err
}

func waitRequest(ctx context.Context, n *node.Node) (node.Contact, error) {
	var found node.Contact
	err := poll(ctx, func() (bool, error) {
		cs, err := n.Contacts()
		if err != nil {
			return false, err
		}
		for _, c := range cs {
			if c.Request {
				found = c
				return strings.HasPrefix(c.Name, "request-"), nil
			}
		}
		return false, nil
	})
	return found, err
}
