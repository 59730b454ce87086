package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// groupNet is a few users who are each other's contacts.
type groupNet struct {
	t     *testing.T
	tn    *testNet
	names []string
	nodes map[string]*Node
	dirs  map[string]string
	mod   func(*Config)
}

// start starts name's node (again).
func (gn *groupNet) start(name string) *Node {
	if gn.mod == nil {
		return gn.tn.start(gn.dirs[name])
	}
	return gn.tn.start(gn.dirs[name], gn.mod)
}

func newGroupNet(t *testing.T, names ...string) *groupNet {
	return newGroupNetOn(t, newTestNet(t), nil, names...)
}

// newGroupNetOn is newGroupNet on tn, each node's Config changed by mod
// (if not nil).
func newGroupNetOn(t *testing.T, tn *testNet, mod func(*Config), names ...string) *groupNet {
	gn := &groupNet{t: t, tn: tn, names: names, nodes: map[string]*Node{}, dirs: map[string]string{}, mod: mod}
	for _, name := range names {
		gn.dirs[name] = tn.initNode(name)
		gn.nodes[name] = gn.start(name)
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			befriend(t, gn.nodes[a], a, gn.nodes[b], b)
		}
	}
	return gn
}

// waitGroup waits until n holds the group id with want members.
func waitGroup(t *testing.T, ctx context.Context, n *Node, id [32]byte, want int) Group {
	t.Helper()
	var g Group
	testkit.WaitFor(t, ctx, func() bool {
		var err error
		g, err = n.GroupInfo(id)
		return err == nil && len(g.Members) == want
	})
	return g
}

// groupTexts is what n shows of group id, as "sender: text" with "me"
// for n's own.
func groupTexts(t *testing.T, n *Node, id [32]byte) []string {
	t.Helper()
	ms, err := n.GroupMessages(id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		who := m.SenderName
		if m.Outgoing {
			who = "me"
		}
		out = append(out, who+": "+m.Body)
	}
	return out
}

// waitGroupTexts waits until n shows want messages of group id, and
// says what each shows if it never does.
func waitGroupTexts(t *testing.T, ctx context.Context, n *Node, id [32]byte, want int) {
	t.Helper()
	for len(groupTexts(t, n, id)) < want {
		select {
		case <-ctx.Done():
			n.grp.mu.Lock()
			waiting := len(n.grp.live[group.ID(id)].waiting)
			live := len(n.grp.live[group.ID(id)].recv.KeyIDs())
			n.grp.mu.Unlock()
			var stored int
			var ctl []string
			n.db.View(func(tx *store.Tx) error {
				ks, _ := tx.GroupKeys(id)
				stored = len(ks)
				ms, _ := tx.ListMessages(nil, 0, 1000)
				for _, m := range ms {
					if group.IsContent(m.Type) {
						ctl = append(ctl, fmt.Sprintf("%x dir%d type%d state%d", m.Contact[:2], m.Direction, m.Type, m.State))
					}
				}
				return nil
			})
			t.Logf("keys live %d stored %d; content %q", live, stored, ctl)
			t.Fatalf("%s shows %q, want %d messages (drops %+v, %d waiting for keys)", n.ident.Name, groupTexts(t, n, id), want, n.GroupStats(), waiting)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitTopicPeers waits until n's topic of group id has want peers.
func waitTopicPeers(t *testing.T, ctx context.Context, n *Node, id [32]byte, want int) {
	t.Helper()
	testkit.WaitFor(t, ctx, func() bool { return topicPeers(n, id) >= want })
}

// topicPeers is how many peers n knows on group id's topic of today (-1
// without one).
func topicPeers(n *Node, id [32]byte) int {
	n.grp.mu.Lock()
	lg := n.grp.live[group.ID(id)]
	var name string
	if lg != nil {
		if s, ok := lg.secret(); ok {
			name = s.Topic(epochNow(n))
		}
	}
	n.grp.mu.Unlock()
	if name == "" {
		return -1
	}
	return len(n.mbx.gossip.PubSub().ListPeers(name))
}

func epochNow(n *Node) uint64 { return protocol.Epoch(n.now()) }

// TestGroupThreeMembers: Alice makes a group with Bob and Carol, her
// contacts. Each of them gets the welcome, the others' sender keys, and
// every message of the others exactly once, in each sender's order; the
// group's content never shows in their one-to-one conversations.
func TestGroupThreeMembers(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "friends", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Admin || len(g.Members) != 3 || g.Name != "friends" {
		t.Fatalf("created %+v", g)
	}
	for _, n := range []*Node{bob, carol} {
		got := waitGroup(t, ctx, n, g.ID, 3)
		if got.Admin || got.Name != "friends" {
			t.Fatalf("member sees %+v", got)
		}
	}
	for _, n := range []*Node{alice, bob, carol} {
		waitTopicPeers(t, ctx, n, g.ID, 2)
	}
	for i := range 3 {
		for _, who := range []string{"alice", "bob", "carol"} {
			if _, err := gn.nodes[who].SendGroup(ctx, g.ID, fmt.Sprintf("%s %d", who, i)); err != nil {
				t.Fatalf("%s: %v", who, err)
			}
		}
	}
	for _, who := range []string{"alice", "bob", "carol"} {
		n := gn.nodes[who]
		waitGroupTexts(t, ctx, n, g.ID, 9)
		texts := groupTexts(t, n, g.ID)
		if len(texts) != 9 {
			t.Fatalf("%s shows %d messages: %q", who, len(texts), texts)
		}
		// Each sender's messages in its order.
		for _, from := range []string{"alice", "bob", "carol"} {
			label := from
			if from == who {
				label = "me"
			}
			next := 0
			for _, tx := range texts {
				if tx == fmt.Sprintf("%s: %s %d", label, from, next) {
					next++
				}
			}
			if next != 3 {
				t.Errorf("%s shows %s's messages out of order: %q", who, from, texts)
			}
		}
		for _, other := range []string{"alice", "bob", "carol"} {
			if other == who {
				continue
			}
			ms, err := n.Messages(other, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				if group.IsContent(m.Type) {
					t.Errorf("%s's conversation with %s shows group content", who, other)
				}
			}
		}
	}
	// Every text ends delivered 2/2, from one receipts message per
	// member per batch.
	for _, who := range []string{"alice", "bob", "carol"} {
		n := gn.nodes[who]
		testkit.WaitFor(t, ctx, func() bool {
			ms, _ := n.GroupMessages(g.ID, 0, 100)
			for _, m := range ms {
				if m.Outgoing && (m.Delivered != 2 || m.Recipients != 2) {
					return false
				}
			}
			return true
		})
	}
	if d := bob.GroupStats(); d.Malformed+d.NotMember+d.Refused+d.Forged+d.Unknown != 0 {
		t.Errorf("bob dropped group content: %+v", d)
	}
}

// TestGroupMemberAway: five members. Bob's node is down while the others
// write 20 messages to the group. When it is back, their nodes publish
// again what no receipt of Bob's named, and Bob shows all 20 exactly
// once, each sender's in its order; every message ends delivered 4/4.
func TestGroupMemberAway(t *testing.T) {
	names := []string{"alice", "bob", "carol", "dave", "erin"}
	gn := newGroupNet(t, names...)
	alice, bob := gn.nodes["alice"], gn.nodes["bob"]
	ctx := testkit.Context(t, 180*time.Second)
	g, err := alice.CreateGroup(ctx, "g", names[1:])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		waitGroup(t, ctx, gn.nodes[name], g.ID, 5)
		waitTopicPeers(t, ctx, gn.nodes[name], g.ID, 4)
	}
	bob.Close()
	writers := []string{"alice", "carol", "dave", "erin"}
	for i := range 20 {
		w := writers[i%len(writers)]
		if _, err := gn.nodes[w].SendGroup(ctx, g.ID, fmt.Sprintf("%s %d", w, i/len(writers))); err != nil {
			t.Fatal(err)
		}
	}
	waitGroupTexts(t, ctx, gn.nodes["carol"], g.ID, 20)
	bob = gn.tn.start(gn.dirs["bob"])
	waitGroupTexts(t, ctx, bob, g.ID, 20)
	texts := groupTexts(t, bob, g.ID)
	if len(texts) != 20 {
		t.Fatalf("bob shows %d messages: %q", len(texts), texts)
	}
	for _, w := range writers {
		next := 0
		for _, tx := range texts {
			if tx == fmt.Sprintf("%s: %s %d", w, w, next) {
				next++
			}
		}
		if next != 5 {
			t.Errorf("bob shows %s's messages out of order or not once: %q", w, texts)
		}
	}
	for _, w := range writers {
		n := gn.nodes[w]
		for {
			ms, _ := n.GroupMessages(g.ID, 0, 100)
			var short []string
			for _, m := range ms {
				if m.Outgoing && m.Delivered != 4 {
					short = append(short, fmt.Sprintf("%q %d/4", m.Body, m.Delivered))
				}
			}
			if len(short) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				n.grp.mu.Lock()
				lg := n.grp.live[group.ID(g.ID)]
				keys, waiting := len(lg.recv.KeyIDs()), len(lg.waiting)
				n.grp.mu.Unlock()
				var rs []store.GroupResend
				n.db.View(func(tx *store.Tx) (err error) { rs, err = tx.GroupResends(); return err })
				t.Fatalf("%s's messages not delivered to all four: %v (it holds %d sender keys, %d envelopes wait for theirs, drops %+v, %d resend schedules)", w, short, keys, waiting, n.GroupStats(), len(rs))
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// TestGroupThroughMailboxes: Alice, Bob and Carol receive at one
// mailbox. Bob and Carol are away while Alice writes five messages; she
// deposits each once at that mailbox, not once per member (each copy
// under the group's tag, with the group's write key), and goes away
// before they come back. Each then has all five, once and in order, from
// the mailbox alone; Alice, back, sees them delivered 2/2.
func TestGroupThroughMailboxes(t *testing.T) {
	tn := newTestNet(t)
	mbx, addrs := tn.startMailboxes(1)
	gn := newGroupNetOn(t, tn, func(c *Config) { c.MailboxNodes = addrs }, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{alice, bob, carol} {
		waitGroup(t, ctx, n, g.ID, 3)
		waitTopicPeers(t, ctx, n, g.ID, 2)
	}
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") && contactAnnounced(t, alice, "carol") })
	// Bob's and Carol's mailbox holds their group tags once a round ran.
	for _, n := range []*Node{bob, carol} {
		if _, err := n.mbx.user.Round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	bob.Close()
	carol.Close()
	const N = 5
	for i := range N {
		if _, err := alice.SendGroup(ctx, g.ID, fmt.Sprintf("away %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var tags map[protocol.Tag]bool
	alice.db.View(func(tx *store.Tx) error {
		rec, err := tx.GetGroup(g.ID)
		tags = map[protocol.Tag]bool{}
		for _, e := range protocol.LiveEpochs(time.Now()) {
			tags[group.Secret(rec.Secrets[0].Secret).Tag(e)] = true
		}
		return err
	})
	held := func() int {
		hs, err := mbx[0].MailboxPeek(1000)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, h := range hs {
			if tags[h.Tag] {
				k++
			}
		}
		return k
	}
	testkit.WaitFor(t, ctx, func() bool {
		var rs []store.GroupResend
		alice.db.View(func(tx *store.Tx) (err error) { rs, err = tx.GroupResends(); return err })
		return len(rs) == N && !slices.ContainsFunc(rs, func(r store.GroupResend) bool { return !r.Deposited })
	})
	if k := held(); k != N {
		t.Fatalf("the mailbox holds %d envelopes under the group's tags for %d messages to two members who read there, want one each", k, N)
	}
	alice.Close()
	bob, carol = gn.start("bob"), gn.start("carol")
	for _, n := range []*Node{bob, carol} {
		waitGroupTexts(t, ctx, n, g.ID, N)
		texts := groupTexts(t, n, g.ID)
		for i, tx := range texts {
			if want := fmt.Sprintf("alice: away %d", i); tx != want || len(texts) != N {
				t.Fatalf("%q from the mailbox, want %d messages in order", texts, N)
			}
		}
	}
	alice = gn.start("alice")
	for {
		ms, _ := alice.GroupMessages(g.ID, 0, 100)
		var short []string
		for _, m := range ms {
			if m.Outgoing && m.Delivered != 2 {
				short = append(short, fmt.Sprintf("%q %d/2", m.Body, m.Delivered))
			}
		}
		if len(ms) == N && len(short) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			var rs []string
			alice.db.View(func(tx *store.Tx) error {
				all, err := tx.GroupResends()
				for _, r := range all {
					rs = append(rs, fmt.Sprintf("next in %v, wait %v, deposited %v", time.Until(r.Next).Round(time.Millisecond), r.Wait, r.Deposited))
				}
				return err
			})
			t.Fatalf("alice, back, shows %d messages, not delivered to both: %q; her resend schedules %q; topic peers: alice %d, bob %d, carol %d; drops: alice %+v, bob %+v, carol %+v",
				len(ms), short, rs, topicPeers(alice, g.ID), topicPeers(bob, g.ID), topicPeers(carol, g.ID), alice.GroupStats(), bob.GroupStats(), carol.GroupStats())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestGroupReceiptsThroughMailboxes: Bob and Carol read Alice's group
// messages at their mailbox while she is away, and are away themselves
// when she comes back. She sees the messages delivered 2/2, though she
// and they were never online together: a member acknowledges a copy read
// at a mailbox on its pairwise session with the sender too (SPEC.md,
// "Receipts and delivered N/M"), whose outbox deposits it at her
// mailbox, and not only on the topic, which reaches only members
// connected to each other directly.
func TestGroupReceiptsThroughMailboxes(t *testing.T) {
	tn := newTestNet(t)
	_, addrs := tn.startMailboxes(1)
	gn := newGroupNetOn(t, tn, func(c *Config) { c.MailboxNodes = addrs }, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{alice, bob, carol} {
		waitGroup(t, ctx, n, g.ID, 3)
		waitTopicPeers(t, ctx, n, g.ID, 2)
	}
	testkit.WaitFor(t, ctx, func() bool {
		return contactAnnounced(t, alice, "bob") && contactAnnounced(t, alice, "carol") &&
			contactAnnounced(t, bob, "alice") && contactAnnounced(t, carol, "alice")
	})
	// Each one's mailbox holds its group tags once a round ran.
	for _, n := range []*Node{alice, bob, carol} {
		if _, err := n.mbx.user.Round(ctx); err != nil {
			t.Fatal(err)
		}
	}
	aliceAcct := storedContact(t, bob, "alice").Account
	bob.Close()
	carol.Close()
	const N = 3
	for i := range N {
		if _, err := alice.SendGroup(ctx, g.ID, fmt.Sprintf("away %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, ctx, func() bool {
		var rs []store.GroupResend
		alice.db.View(func(tx *store.Tx) (err error) { rs, err = tx.GroupResends(); return err })
		return len(rs) == N && !slices.ContainsFunc(rs, func(r store.GroupResend) bool { return !r.Deposited })
	})
	alice.Close()

	bob, carol = gn.start("bob"), gn.start("carol")
	for _, n := range []*Node{bob, carol} {
		waitGroupTexts(t, ctx, n, g.ID, N)
		// Its receipts went on the pairwise session, and its outbox
		// left them at Alice's mailbox.
		testkit.WaitFor(t, ctx, func() bool {
			if n.grp.pairReceipts.Load() == 0 {
				return false
			}
			var es []store.OutboxEntry
			n.db.View(func(tx *store.Tx) (err error) { es, err = tx.OutboxFor(aliceAcct, 100); return err })
			return !slices.ContainsFunc(es, func(e store.OutboxEntry) bool { return e.Mailboxes == 0 })
		})
	}
	bob.Close()
	carol.Close()

	alice = gn.start("alice")
	for {
		ms, err := alice.GroupMessages(g.ID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var short []string
		for _, m := range ms {
			if m.Delivered != 2 {
				short = append(short, fmt.Sprintf("%q %d/2", m.Body, m.Delivered))
			}
		}
		if len(ms) == N && len(short) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("alice, back while bob and carol are away, shows %d messages, not delivered to both: %q", len(ms), short)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestGroupPairReceiptsRejects: group receipts on a pairwise session
// whose body does not decode, or that name a group the receiver does not
// hold, are dropped and counted; a receipt for a message the receiver
// did not send to that peer changes nothing (SPEC.md, "Group content on
// a pairwise session").
func TestGroupPairReceiptsRejects(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol")
	alice, bob := gn.nodes["alice"], gn.nodes["bob"]
	ctx := testkit.Context(t, 60*time.Second)
	g, err := alice.CreateGroup(ctx, "pair", []string{"carol"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := alice.SendGroup(ctx, g.ID, "to carol only")
	if err != nil {
		t.Fatal(err)
	}
	aliceAcct := storedContact(t, bob, "alice").Account
	send := func(body []byte) {
		t.Helper()
		if err := bob.db.Update(func(tx *store.Tx) error {
			return bob.queueGroupContent(tx, aliceAcct, group.ContentPairReceipts, body, time.Now())
		}); err != nil {
			t.Fatal(err)
		}
		bob.kickOutbox()
	}
	before := alice.GroupStats()
	send([]byte{1, 2, 3})
	testkit.WaitFor(t, ctx, func() bool { return alice.GroupStats().Malformed == before.Malformed+1 })
	var other group.ID
	other[0] = 0xee
	send(group.PairReceipts{Group: other, IDs: [][16]byte{m.ID}}.Marshal())
	testkit.WaitFor(t, ctx, func() bool { return alice.GroupStats().Unknown == before.Unknown+1 })
	// Bob is no member: his receipt of a message sent to Carol is ignored.
	send(group.PairReceipts{Group: group.ID(g.ID), IDs: [][16]byte{m.ID}}.Marshal())
	testkit.WaitFor(t, ctx, func() bool {
		var es []store.OutboxEntry
		bob.db.View(func(tx *store.Tx) (err error) { es, err = tx.OutboxFor(aliceAcct, 100); return err })
		return len(es) == 0 // all three delivered
	})
	var sm store.GroupMessage
	alice.db.View(func(tx *store.Tx) (err error) { sm, err = tx.GetGroupMessage(g.ID, m.ID); return err })
	if slices.Contains(sm.Receipts, storedContact(t, alice, "bob").Account) {
		t.Fatalf("a receipt from bob, who is not a member, was recorded: %x", sm.Receipts)
	}
}

// TestGroupDepositAfterClockStepBack: Alice sends to the group on a
// clock 10 minutes ahead while Bob and Carol are away, then restarts on
// the right time. Her message is deposited at their mailbox at its next
// republication, seconds later, not once her clock has caught up with
// the time she sent it at (SPEC.md, "Mailboxes"). Found by TestChaos: a
// user restarted off its skewed clock left a message 1/2 for minutes.
func TestGroupDepositAfterClockStepBack(t *testing.T) {
	tn := newTestNet(t)
	_, addrs := tn.startMailboxes(1)
	var offset atomic.Int64
	gn := newGroupNetOn(t, tn, func(c *Config) {
		c.MailboxNodes = addrs
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	}, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 90*time.Second)
	g, err := alice.CreateGroup(ctx, "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{alice, bob, carol} {
		waitGroup(t, ctx, n, g.ID, 3)
	}
	testkit.WaitFor(t, ctx, func() bool { return contactAnnounced(t, alice, "bob") && contactAnnounced(t, alice, "carol") })
	bob.Close()
	carol.Close()
	alice.Close()
	offset.Store(int64(10 * time.Minute))
	alice = gn.start("alice")
	m, err := alice.SendGroup(ctx, g.ID, "written ahead")
	if err != nil {
		t.Fatal(err)
	}
	alice.Close()
	offset.Store(0)
	alice = gn.start("alice")
	for {
		var r store.GroupResend
		alice.db.View(func(tx *store.Tx) error {
			rs, err := tx.GroupResends()
			for _, x := range rs {
				if x.ID == m.ID {
					r = x
				}
			}
			return err
		})
		if r.Deposited {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a message sent 10 minutes ahead is not deposited after a restart onto the right time (resend %+v)", r)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestGroupRemoval: Alice removes Carol. Bob and Alice take new sender
// keys and a new secret that Carol never gets; Bob's next message reaches
// Alice and not Carol, and Carol can no longer post.
func TestGroupRemoval(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "team", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 3)
	waitGroup(t, ctx, carol, g.ID, 3)
	for _, n := range []*Node{alice, bob, carol} {
		waitTopicPeers(t, ctx, n, g.ID, 2)
	}
	if _, err := bob.SendGroup(ctx, g.ID, "before"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { return len(groupTexts(t, carol, g.ID)) == 1 })

	if _, err := bob.RemoveFromGroup(ctx, g.ID, "carol"); !errors.Is(err, ErrNotGroupAdmin) {
		t.Fatalf("bob, not an admin, removes carol: %v", err)
	}
	if _, err := alice.RemoveFromGroup(ctx, g.ID, "carol"); err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 2)
	testkit.WaitFor(t, ctx, func() bool { cg, err := carol.GroupInfo(g.ID); return err == nil && cg.Left })
	// Bob's key after the removal is new, and Carol holds none of it.
	bobKey := func() [16]byte {
		bob.grp.mu.Lock()
		defer bob.grp.mu.Unlock()
		return bob.grp.live[group.ID(g.ID)].mine.ID
	}
	testkit.WaitFor(t, ctx, func() bool {
		alice.grp.mu.Lock()
		defer alice.grp.mu.Unlock()
		_, ok := alice.grp.live[group.ID(g.ID)].recv.KeyOwner(bobKey())
		return ok
	})
	waitTopicPeers(t, ctx, alice, g.ID, 1)
	waitTopicPeers(t, ctx, bob, g.ID, 1)
	after, err := bob.SendGroup(ctx, g.ID, "after")
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { return len(groupTexts(t, alice, g.ID)) == 2 })
	// Handed the envelope, Carol's node opens it under no secret and no
	// key it holds, for any epoch near, and shows nothing.
	var raw []byte
	bob.db.View(func(tx *store.Tx) error {
		m, err := tx.GetGroupMessage(g.ID, after.ID)
		raw = m.Envelope
		return err
	})
	env, err := protocol.ParseEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	e := protocol.Epoch(time.Now())
	carol.grp.mu.Lock()
	lg := carol.grp.live[group.ID(g.ID)]
	for _, s := range lg.rec.Secrets {
		for _, ep := range []uint64{e - 1, e, e + 1} {
			if _, err := lg.recv.Open(group.Secret(s.Secret), ep, env); err == nil {
				t.Error("carol opens a message sent after her removal")
			}
		}
	}
	carol.grp.mu.Unlock()
	carol.groupReceived(group.ID(g.ID), e, raw)
	carol.grp.mu.Lock()
	_, held := carol.grp.live[group.ID(g.ID)].recv.KeyOwner(bobKey())
	carol.grp.mu.Unlock()
	if held {
		t.Fatal("carol holds bob's sender key made after her removal")
	}
	if texts := groupTexts(t, carol, g.ID); len(texts) != 1 {
		t.Fatalf("carol shows %q after her removal", texts)
	}
	if _, err := carol.SendGroup(ctx, g.ID, "still here?"); !errors.Is(err, ErrNotGroupMember) {
		t.Fatalf("carol posts after her removal: %v", err)
	}
	var rec store.Group
	carol.db.View(func(tx *store.Tx) error { rec, _ = tx.GetGroup(g.ID); return nil })
	alice.grp.mu.Lock()
	cur, _ := alice.grp.live[group.ID(g.ID)].secret()
	alice.grp.mu.Unlock()
	for _, s := range rec.Secrets {
		if s.Secret == [32]byte(cur) {
			t.Fatal("carol holds the group's secret made at her removal")
		}
	}

	// Added again, Carol reads what is sent from then on.
	if _, err := alice.AddToGroup(ctx, g.ID, []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { cg, err := carol.GroupInfo(g.ID); return err == nil && !cg.Left && len(cg.Members) == 3 })
	waitGroup(t, ctx, bob, g.ID, 3)
	waitTopicPeers(t, ctx, carol, g.ID, 2)
	if _, err := bob.SendGroup(ctx, g.ID, "welcome back"); err != nil {
		t.Fatal(err)
	}
	waitGroupTexts(t, ctx, carol, g.ID, 2)
	if texts := groupTexts(t, carol, g.ID); texts[1] != "bob: welcome back" {
		t.Fatalf("carol shows %q after she was added again", texts)
	}
	if _, err := carol.SendGroup(ctx, g.ID, "thanks"); err != nil {
		t.Fatal(err)
	}
	waitGroupTexts(t, ctx, alice, g.ID, 4)
}

// waitSameState waits until every node of nodes has the same state of
// group id; if they never do, it says what each holds and what its
// outbox still has to send.
func waitSameState(t *testing.T, ctx context.Context, id [32]byte, nodes map[string]*Node) {
	t.Helper()
	for {
		hashes := map[[32]byte]bool{}
		for _, n := range nodes {
			hashes[stateHash(n, id)] = true
		}
		if len(hashes) == 1 {
			return
		}
		select {
		case <-ctx.Done():
			for who, n := range nodes {
				h := stateHash(n, id)
				gi, err := n.GroupInfo(id)
				var es []store.OutboxEntry
				n.db.View(func(tx *store.Tx) (err error) {
					es, err = tx.DueOutbox(time.Now().Add(24*time.Hour), 1000)
					return err
				})
				var out []string
				for _, e := range es {
					out = append(out, fmt.Sprintf("%x kind %d attempts %d mailboxes %d sealed %v next in %v", e.Contact[:4], e.Kind, e.Attempts, e.Mailboxes, len(e.Envelope) > 0, time.Until(e.NextAttempt).Round(time.Millisecond)))
				}
				n.grp.mu.Lock()
				orphans := n.grp.live[group.ID(id)].tree.Orphans()
				n.grp.mu.Unlock()
				var held bool
				var ctl []string
				n.db.View(func(tx *store.Tx) error {
					_, held, _ = tx.NextRelease()
					ms, _ := tx.ListMessages(nil, 0, 1000)
					for _, m := range ms {
						if group.IsContent(m.Type) {
							ctl = append(ctl, fmt.Sprintf("%x %x dir%d type%d state%d seq%d", m.ID[:2], m.Contact[:2], m.Direction, m.Type, m.State, m.PeerSeq))
						}
					}
					return nil
				})
				t.Errorf("%s: state %x, %d members, admin %v, name %q (%v); outbox %q; refused %+v; chain %v, %d orphans; held %v; group content %q",
					who, h[:4], len(gi.Members), gi.Admin, gi.Name, err, out, n.GroupStats(), chainOf(n, id), orphans, held, ctl)
			}
			t.Fatal("the members never reached the same state")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stateHash is n's state hash of group id.
func stateHash(n *Node, id [32]byte) [32]byte {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[group.ID(id)]
	if lg == nil {
		return [32]byte{}
	}
	return lg.tree.State().Hash()
}

// TestGroupConcurrentChanges: two admins change the group at once (both
// rename it, one adds Dave) while Carol's node is down. When it is back,
// every member's state hash is the same.
func TestGroupConcurrentChanges(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol", "dave")
	alice, bob, carol, dave := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"], gn.nodes["dave"]
	ctx := testkit.Context(t, 180*time.Second)
	g, err := alice.CreateGroup(ctx, "start", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 3)
	waitGroup(t, ctx, carol, g.ID, 3)
	if _, err := alice.PromoteInGroup(ctx, g.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, ctx, func() bool { bg, err := bob.GroupInfo(g.ID); return err == nil && bg.Admin })
	waitSameState(t, ctx, g.ID, map[string]*Node{"alice": alice, "carol": carol})
	carol.Close()
	errs := make(chan error, 3)
	go func() { _, err := alice.RenameGroup(ctx, g.ID, "by alice"); errs <- err }()
	go func() { _, err := bob.RenameGroup(ctx, g.ID, "by bob"); errs <- err }()
	go func() { _, err := alice.AddToGroup(ctx, g.ID, []string{"dave"}); errs <- err }()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	carol = gn.tn.start(gn.dirs["carol"])
	waitGroup(t, ctx, dave, g.ID, 4)
	nodes := map[string]*Node{"alice": alice, "bob": bob, "carol": carol, "dave": dave}
	waitSameState(t, ctx, g.ID, nodes)
	names := map[string]string{}
	for who, n := range nodes {
		gi, err := n.GroupInfo(g.ID)
		if err != nil || len(gi.Members) != 4 {
			t.Fatalf("%s: %+v %v", who, gi, err)
		}
		names[who] = gi.Name
	}
	if names["carol"] != names["alice"] || (names["alice"] != "by alice" && names["alice"] != "by bob") {
		t.Fatalf("names after the concurrent renames: %v", names)
	}
}

// TestGroupLeaveRacesRemoval: Bob leaves while Alice removes Carol, both
// on the same state. The removal, by the senior admin, takes the
// canonical chain; Bob's node makes its leave again on top of it, and
// both end with Bob gone (Alice then rekeys, which Bob, gone, is not
// sent).
func TestGroupLeaveRacesRemoval(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	// Concurrent traffic both ways can hold a pairwise message behind
	// one that is sent again (ReorderWait, then the receipt's wait): the
	// bound covers both.
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "g", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 3)
	waitGroup(t, ctx, carol, g.ID, 3)
	errs := make(chan error, 2)
	go func() { _, err := bob.LeaveGroup(ctx, g.ID); errs <- err }()
	go func() { _, err := alice.RemoveFromGroup(ctx, g.ID, "carol"); errs <- err }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for {
		ag, err := alice.GroupInfo(g.ID)
		bg, berr := bob.GroupInfo(g.ID)
		if err == nil && berr == nil && len(ag.Members) == 1 && bg.Left {
			return
		}
		if ctx.Err() != nil {
			var pending []string
			bob.db.View(func(tx *store.Tx) error {
				es, _ := tx.DueOutbox(time.Now().Add(time.Hour), 100)
				for _, e := range es {
					m, _ := tx.GetMessage(e.MsgID)
					pending = append(pending, fmt.Sprintf("type %d state %d attempts %d sealed %v", m.Type, m.State, e.Attempts, len(e.Envelope) > 0))
				}
				return nil
			})
			t.Fatalf("alice sees %d members (drops %+v), bob left %v; alice's chain %v, bob's %v; bob's outbox %q", len(ag.Members), alice.GroupStats(), bg.Left,
				chainOf(alice, g.ID), chainOf(bob, g.ID), pending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// chainOf names the operations on n's canonical chain of group id.
func chainOf(n *Node, id [32]byte) []string {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	var out []string
	for _, o := range n.grp.live[group.ID(id)].tree.Canonical() {
		out = append(out, fmt.Sprintf("%s by %x", o.Type, o.Author[:2]))
	}
	return out
}

// TestGroupOnSettledSessions: Alice and Bob have talked before, so the
// group's first messages arrive on sessions that exist, each starting a
// new ratchet step at the other side. What a member seals in answer to
// group content (its sender key) and the receipt the same commit seals
// must take distinct places in the chain: sealed on two copies of the
// session, one of them was rejected as malformed or dropped as a
// duplicate, and the member's sender key never reached the creator.
func TestGroupOnSettledSessions(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob", "carol")
	alice, bob, carol := gn.nodes["alice"], gn.nodes["bob"], gn.nodes["carol"]
	ctx := testkit.Context(t, 90*time.Second)
	pairs := [][2]string{{"alice", "bob"}, {"alice", "carol"}, {"bob", "carol"}}
	for _, p := range pairs {
		for _, dir := range [][2]string{p, {p[1], p[0]}} {
			if _, err := gn.nodes[dir[0]].Send(ctx, dir[1], "hello "+dir[1]); err != nil {
				t.Fatal(err)
			}
			waitMessages(t, ctx, gn.nodes[dir[1]], dir[0], 1, func(m Message) bool { return string(m.Body) == "hello "+dir[1] })
		}
	}
	for _, p := range pairs {
		waitMessages(t, ctx, gn.nodes[p[0]], p[1], 2, func(m Message) bool { return m.State == StateDelivered || m.Direction == Incoming })
	}
	g, err := alice.CreateGroup(ctx, "settled", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{alice, bob, carol} {
		waitGroup(t, ctx, n, g.ID, 3)
		waitTopicPeers(t, ctx, n, g.ID, 2)
	}
	for _, who := range []string{"bob", "carol"} {
		if _, err := gn.nodes[who].SendGroup(ctx, g.ID, who+" writes"); err != nil {
			t.Fatal(err)
		}
	}
	for _, who := range []string{"alice", "bob", "carol"} {
		waitGroupTexts(t, ctx, gn.nodes[who], g.ID, 2)
	}
	for _, who := range []string{"alice", "bob", "carol"} {
		if d := gn.nodes[who].GroupStats(); d.Malformed+d.Forged != 0 {
			t.Errorf("%s dropped group content: %+v", who, d)
		}
		if st, err := gn.nodes[who].Status(); err != nil || st.EnvelopesRejected != 0 {
			t.Errorf("%s refused %d envelopes as malformed (%v)", who, st.EnvelopesRejected, err)
		}
	}
}

// TestGroupReloadsInstallInOrder: the running state of a group is loaded
// again after every commit that changes it, from several goroutines (a
// change made here, content a session delivered). A reload that read the
// store before a change committed must never replace one that read it
// after: the node then ran on the state before the change until the
// next one (an admin's promote missing from its own chain, for good).
func TestGroupReloadsInstallInOrder(t *testing.T) {
	gn := newGroupNet(t, "alice")
	alice := gn.nodes["alice"]
	ctx := testkit.Context(t, 60*time.Second)
	g, err := alice.CreateGroup(ctx, "0", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 50; i++ {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
					alice.reloadGroups([][32]byte{g.ID})
				}
			}
		}()
		name := fmt.Sprint(i)
		_, err := alice.RenameGroup(ctx, g.ID, name)
		close(stop)
		<-done
		if err != nil {
			t.Fatal(err)
		}
		if gi, err := alice.GroupInfo(g.ID); err != nil || gi.Name != name {
			t.Fatalf("rename %d: the running group is named %q (%v) after the rename and every reload returned", i, gi.Name, err)
		}
	}
}

// TestGroupReceiptAfterRestart: Bob opens Alice's group message and
// stops before his receipts go out. Alice publishes the message again;
// Bob, restarted, drops each copy as a replay (its key is gone) but names
// the message in his receipts from what his store kept of opening it, so
// Alice's message ends delivered 1/1, and Bob shows it once.
func TestGroupReceiptAfterRestart(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob")
	alice, bob := gn.nodes["alice"], gn.nodes["bob"]
	ctx := testkit.Context(t, 120*time.Second)
	g, err := alice.CreateGroup(ctx, "g", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 2)
	waitTopicPeers(t, ctx, alice, g.ID, 1)
	delivered := func(id [16]byte) int {
		ms, err := alice.GroupMessages(g.ID, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.ID == id {
				return m.Delivered
			}
		}
		t.Fatalf("alice does not show her message %x", id)
		return 0
	}
	// Bob's receipts wait GroupReceiptBatch (2 s) before they go out; he
	// stops as soon as he shows the message. On a machine slow enough
	// that they went out anyway, the next message tries again.
	var sent GroupMessage
	for try := 1; ; try++ {
		if sent, err = alice.SendGroup(ctx, g.ID, fmt.Sprintf("hello %d", try)); err != nil {
			t.Fatal(err)
		}
		waitGroupTexts(t, ctx, bob, g.ID, try)
		bob.Close()
		if delivered(sent.ID) == 0 {
			break
		}
		if try == 3 {
			t.Fatal("bob's receipts went out before he stopped, three times")
		}
		bob = gn.tn.start(gn.dirs["bob"])
		waitGroupTexts(t, ctx, bob, g.ID, try)
	}
	bob = gn.tn.start(gn.dirs["bob"])
	for delivered(sent.ID) != 1 {
		select {
		case <-ctx.Done():
			t.Fatalf("alice's message never delivered after bob restarted (bob's drops %+v)", bob.GroupStats())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if s := bob.GroupStats(); s.Replay == 0 {
		t.Errorf("bob dropped no copy as a replay (%+v): the receipt did not come from a copy", s)
	}
	texts := groupTexts(t, bob, g.ID)
	if n := slices.Index(texts, "alice: "+sent.Body); n < 0 || slices.Index(texts[n+1:], "alice: "+sent.Body) >= 0 {
		t.Fatalf("bob shows %q, want %q once", texts, sent.Body)
	}
}

// TestGroupResendsBeginAgainAtRestart: a schedule of publishing again
// whose wait grew to minutes while its sender was away begins again at
// the first wait when the sender restarts.
func TestGroupResendsBeginAgainAtRestart(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob")
	alice, bob := gn.nodes["alice"], gn.nodes["bob"]
	ctx := testkit.Context(t, 60*time.Second)
	g, err := alice.CreateGroup(ctx, "g", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 2)
	bob.Close()
	if _, err := alice.SendGroup(ctx, g.ID, "while bob is away"); err != nil {
		t.Fatal(err)
	}
	schedules := func(n *Node) []store.GroupResend {
		var rs []store.GroupResend
		if err := n.db.View(func(tx *store.Tx) (err error) { rs, err = tx.GroupResends(); return err }); err != nil {
			t.Fatal(err)
		}
		return rs
	}
	if err := alice.db.Update(func(tx *store.Tx) error {
		rs, err := tx.GroupResends()
		if err != nil || len(rs) != 1 {
			return fmt.Errorf("schedules %+v, %v; want one", rs, err)
		}
		rs[0].Wait, rs[0].Next = 6*time.Minute, time.Now().Add(5*time.Minute)
		return tx.PutGroupResend(rs[0])
	}); err != nil {
		t.Fatal(err)
	}
	alice.Close()
	started := time.Now()
	alice = gn.start("alice")
	rs := schedules(alice)
	if len(rs) != 1 {
		t.Fatalf("after the restart: schedules %+v, want one", rs)
	}
	if r := rs[0]; r.Wait > 3*firstGroupResend || r.Next.After(time.Now().Add(firstGroupResend)) || r.Next.Before(started) {
		t.Fatalf("after the restart the schedule waits %v, next at %v (restart at %v); want it begun again at %v", r.Wait, r.Next, started, firstGroupResend)
	}
}

// TestGroupResendReachesMembers: publishing again dials the members
// whose receipts a message lacks when this device has no connection to
// them (a copy goes only to topic peers, and a member who read it does
// not pass it on), so that the member's subscription arrives and the
// copy reaches it.
func TestGroupResendReachesMembers(t *testing.T) {
	gn := newGroupNet(t, "alice", "bob")
	alice, bob := gn.nodes["alice"], gn.nodes["bob"]
	ctx := testkit.Context(t, 60*time.Second)
	g, err := alice.CreateGroup(ctx, "g", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	waitGroup(t, ctx, bob, g.ID, 2)
	sent, err := alice.SendGroup(ctx, g.ID, "hello")
	if err != nil {
		t.Fatal(err)
	}
	waitGroupTexts(t, ctx, bob, g.ID, 1)
	// Alice has not heard bob's receipt (taken back out of her store),
	// and the two are cut apart.
	if err := alice.db.Update(func(tx *store.Tx) error {
		m, err := tx.GetGroupMessage(g.ID, sent.ID)
		if err != nil {
			return err
		}
		m.Receipts = nil
		if err := tx.UpdateGroupMessage(m); err != nil {
			return err
		}
		return tx.PutGroupResend(store.GroupResend{Group: g.ID, ID: sent.ID, Epoch: epochNow(alice),
			Topic: groupTopicName(t, alice, g.ID), Next: time.Now(), Wait: firstGroupResend, Deposited: true})
	}); err != nil {
		t.Fatal(err)
	}
	bobID := bob.Host().ID()
	net := alice.Host().LibP2P().Network()
	connected := func() bool { return net.Connectedness(bobID) == network.Connected }
	for connected() {
		net.ClosePeer(bobID)
		bob.Host().LibP2P().Network().ClosePeer(alice.Host().ID())
		time.Sleep(20 * time.Millisecond)
	}
	// Left to the rest of the node, the message was delivered again only
	// after about 45 s here; with the resend's dial, within 2 s. The bound
	// of 20 s tells the two apart.
	alice.resendGroups()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	testkit.WaitFor(t, ctx, connected)
	// The copies that follow reach bob, who names the message again.
	for {
		ms, _ := alice.GroupMessages(g.ID, 0, 10)
		if len(ms) == 1 && ms[0].Delivered == 1 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("alice's message %+v never delivered again after she reached bob (bob's drops %+v)", ms, bob.GroupStats())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// groupTopicName is the name of group id's topic of today at n.
func groupTopicName(t *testing.T, n *Node, id [32]byte) string {
	t.Helper()
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	s, ok := n.grp.live[group.ID(id)].secret()
	if !ok {
		t.Fatal("no group secret")
	}
	return s.Topic(epochNow(n))
}
