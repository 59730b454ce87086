package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// Groups (protocol/SPEC.md, "Groups"). Membership operations, sender keys
// and welcomes travel over the pairwise sessions as messages (queueMessage)
// that the conversation does not show; group messages are sealed once with
// this device's sender key and published on the group's gossip topic.
// The store is the truth: content that arrives over a session changes the
// store inside the transaction that receives it, and the group's running
// state is loaded again from the store after the commit.

// Group errors.
var (
	ErrUnknownGroup   = errors.New("node: no such group; list your groups with 'sotto group list'")
	ErrNotGroupMember = errors.New("node: you are not a member of this group")
	ErrNotGroupAdmin  = errors.New("node: only an admin of the group may do this")
	ErrGroupTooLarge  = fmt.Errorf("node: a group holds at most %d members", group.MaxGroupMembers)
)

// Group is a group as the node shows it.
type Group struct {
	ID      [32]byte
	Name    string
	Members []GroupMember
	Admin   bool // this account is an admin
	Left    bool // this account is no longer a member
}

// GroupMember is one member of a group.
type GroupMember struct {
	Account [32]byte
	Name    string // the contact's name, "" for this account or a member who is not a contact
	Admin   bool
	Me      bool
}

// GroupMessage is a message of a group.
type GroupMessage struct {
	ID         [16]byte
	Group      [32]byte
	Sender     [32]byte
	SenderName string // the contact's name; "" for this account or a stranger
	Outgoing   bool
	Body       string
	SentAt     time.Time
	ReceivedAt time.Time
	Lamport    uint64
	Seq        uint64
	// Delivered and Recipients: an outgoing message's receipts (delivered
	// N/M).
	Delivered, Recipients int
}

// GroupDrops counts group content dropped, by reason.
type GroupDrops struct {
	Malformed, NotMember, Refused, Replay, Forged, Unknown uint64
}

// groups is the running state of the node's groups.
type groups struct {
	mu   sync.Mutex
	live map[group.ID]*liveGroup
	// receipts waiting for the next batch, per group; flushing: a flush
	// is scheduled.
	receipts map[group.ID]*pendingReceipts
	flushing bool
	// pairReceipts counts the group receipts messages queued on pairwise
	// sessions; pairReceipted holds the messages acknowledged so, and
	// when.
	pairReceipts  atomic.Uint64
	pairReceipted map[[16]byte]time.Time

	drops struct{ malformed, notMember, refused, replay, forged, unknown atomic.Uint64 }
	// depositing: a depositGroups runs.
	depositing atomic.Bool
}

// liveGroup is one group loaded from the store.
type liveGroup struct {
	rec  store.Group
	tree *group.Tree
	recv *group.Receiver
	mine *group.SenderKey // nil when the device has none
	subs map[string]context.CancelFunc
	// waiting holds envelopes under sender keys not received yet: a
	// member's key travels over its pairwise session and may come after
	// its first messages. They are tried again when keys arrive.
	waiting []waitingEnvelope
}

type waitingEnvelope struct {
	epoch uint64
	data  []byte
	at    time.Time
}

// Bounds on envelopes waiting for their sender key.
const (
	maxWaitingEnvelopes = 256
	maxEnvelopeWait     = 10 * time.Minute
)

// waitLocked keeps an envelope whose sender key has not come yet.
// n.grp.mu is held.
func (n *Node) waitLocked(lg *liveGroup, epoch uint64, data []byte) {
	now := n.now()
	lg.waiting = slices.DeleteFunc(lg.waiting, func(w waitingEnvelope) bool {
		return now.Sub(w.at) > maxEnvelopeWait || bytes.Equal(w.data, data)
	})
	if len(lg.waiting) >= maxWaitingEnvelopes {
		lg.waiting = lg.waiting[1:]
	}
	lg.waiting = append(lg.waiting, waitingEnvelope{epoch: epoch, data: bytes.Clone(data), at: now})
}

// secret is the group's current secret: the one whose commitment the
// state names.
func (lg *liveGroup) secret() (group.Secret, bool) {
	return secretFor(lg.rec, lg.tree.State().Commit)
}

func secretFor(rec store.Group, commit [32]byte) (group.Secret, bool) {
	for _, s := range rec.Secrets {
		if group.Secret(s.Secret).Commit() == commit {
			return group.Secret(s.Secret), true
		}
	}
	return group.Secret{}, false
}

// loadGroup reads group id from the store: its record, its tree (the
// operations replayed) and the member keys.
func loadGroup(tx *store.Tx, id [32]byte) (*liveGroup, error) {
	rec, err := tx.GetGroup(id)
	if err != nil {
		return nil, err
	}
	ops, err := tx.GroupOps(id)
	if err != nil {
		return nil, err
	}
	if len(ops) == 0 {
		return nil, fmt.Errorf("%w: group %x has no operations", store.ErrCorrupt, id[:6])
	}
	lg := &liveGroup{rec: rec, recv: group.NewReceiver(group.ID(id)), subs: map[string]context.CancelFunc{}}
	for i, b := range ops {
		op, err := group.ParseOp(b)
		if err != nil {
			return nil, fmt.Errorf("%w: group operation: %v", store.ErrCorrupt, err)
		}
		if i == 0 {
			if lg.tree, err = group.NewTree(op); err != nil {
				return nil, fmt.Errorf("%w: group create: %v", store.ErrCorrupt, err)
			}
			continue
		}
		if err := lg.tree.Add(op); err != nil && !errors.Is(err, group.ErrOrphan) {
			return nil, fmt.Errorf("%w: group operation: %v", store.ErrCorrupt, err)
		}
	}
	ks, err := tx.GroupKeys(id)
	if err != nil {
		return nil, err
	}
	for _, b := range ks {
		if err := lg.recv.LoadKey(b); err != nil {
			return nil, fmt.Errorf("%w: %v", store.ErrCorrupt, err)
		}
	}
	if rec.SenderKey != nil {
		if lg.mine, err = group.UnmarshalSenderKey(rec.SenderKey); err != nil {
			return nil, fmt.Errorf("%w: %v", store.ErrCorrupt, err)
		}
	}
	return lg, nil
}

// startGroups loads every group and follows its topics.
func (n *Node) startGroups() error {
	var ids [][32]byte
	if err := n.db.View(func(tx *store.Tx) error {
		gs, err := tx.ListGroups()
		for _, g := range gs {
			ids = append(ids, g.ID)
		}
		return err
	}); err != nil {
		return err
	}
	n.reloadGroups(ids)
	if err := n.restartResends(); err != nil {
		return err
	}
	n.wg.Go(n.groupLoop)
	return nil
}

// restartResends begins every schedule of publishing again anew, at the
// first wait: while this device was away its wait kept growing, and
// what members did meanwhile is unknown, so the first copies after a
// restart come within seconds, not minutes (SPEC.md, "Publishing
// again").
func (n *Node) restartResends() error {
	now := n.now()
	return n.db.Update(func(tx *store.Tx) error {
		rs, err := tx.GroupResends()
		if err != nil {
			return err
		}
		for _, r := range rs {
			r.Wait, r.Next = firstGroupResend, now.Add(firstGroupResend)
			if err := tx.PutGroupResend(r); err != nil {
				return err
			}
		}
		return nil
	})
}

// groupLoop publishes again what members have not acknowledged, and
// moves the groups' topics to a new epoch when the day changes.
func (n *Node) groupLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if i%60 == 0 {
				n.grp.mu.Lock()
				for _, lg := range n.grp.live {
					n.followLocked(lg)
				}
				n.grp.mu.Unlock()
			}
			n.resendGroups()
		}
	}
}

// reloadGroups loads the groups ids again from the store and follows
// their current topics.
func (n *Node) reloadGroups(ids [][32]byte) {
	for _, id := range ids {
		// Read under the lock: two reloads racing install what they read
		// in the order they read it, so an older read (begun before a
		// commit that changed the group) never replaces a newer one.
		var lg *liveGroup
		n.grp.mu.Lock()
		err := n.db.View(func(tx *store.Tx) error {
			var err error
			lg, err = loadGroup(tx, id)
			return err
		})
		if err != nil {
			n.grp.mu.Unlock()
			n.cfg.Logger.Error("loading a group", "group", fmt.Sprintf("%x", id[:6]), "err", err)
			continue
		}
		if n.grp.live == nil {
			n.grp.live = map[group.ID]*liveGroup{}
		}
		var retry []waitingEnvelope
		if old := n.grp.live[group.ID(id)]; old != nil {
			// Subscriptions carry over: leaving a topic and joining it
			// again would lose what arrives meanwhile.
			lg.subs = old.subs
			retry = old.waiting
		}
		n.grp.live[group.ID(id)] = lg
		n.followLocked(lg)
		n.grp.mu.Unlock()
		if n.mbx.user != nil {
			n.mbx.user.RegisterSoon() // the group's tags, maybe new
		}
		// Keys may have come for envelopes that waited.
		for _, w := range retry {
			n.groupReceived(group.ID(id), w.epoch, w.data)
		}
	}
}

// followLocked subscribes to the topics of the group's current secret
// for yesterday, today and tomorrow, and leaves the others. n.grp.mu is
// held.
func (n *Node) followLocked(lg *liveGroup) {
	g := n.mbx.gossip
	if g == nil {
		return
	}
	want := map[string]uint64{}
	if s, ok := lg.secret(); ok && !lg.rec.Left {
		e := protocol.Epoch(n.now())
		for _, ep := range []uint64{e - 1, e, e + 1} {
			want[s.Topic(ep)] = ep
		}
	}
	for name, cancel := range lg.subs {
		if _, ok := want[name]; !ok {
			cancel()
			delete(lg.subs, name)
		}
	}
	for name, ep := range want {
		if _, ok := lg.subs[name]; ok {
			continue
		}
		id := lg.tree.Group()
		t, err := g.JoinVerdict(name, func(_ peer.ID, data []byte) p2p.Verdict { return n.validateGroup(id, ep, data) })
		if err != nil {
			n.cfg.Logger.Warn("joining a group topic", "err", err)
			continue
		}
		ctx, cancel := context.WithCancel(n.ctx)
		if err := g.Subscribe(ctx, &n.wg, t, func(data []byte) { n.groupReceived(id, ep, data) }); err != nil {
			cancel()
			n.cfg.Logger.Warn("subscribing to a group topic", "err", err)
			continue
		}
		// A member who comes back gets at once what it has not
		// acknowledged, not at the next wait.
		topic := name
		if err := g.OnPeerJoin(ctx, &n.wg, t, func(peer.ID) { n.resendNow(id, topic) }); err != nil {
			n.cfg.Logger.Warn("following a group topic's members", "err", err)
		}
		lg.subs[name] = cancel
	}
}

// validateGroup is the gossip validator of a group's topic: every check
// short of decrypting the body (protocol/group.Receiver.Check).
func (n *Node) validateGroup(id group.ID, epoch uint64, data []byte) p2p.Verdict {
	env, err := protocol.ParseEnvelope(data)
	if err != nil {
		n.grp.drops.malformed.Add(1)
		return p2p.Reject
	}
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[id]
	if lg == nil {
		return p2p.Ignore
	}
	s, ok := lg.secret()
	if !ok {
		return p2p.Ignore
	}
	if _, err := lg.recv.Check(s, epoch, env); err != nil {
		if errors.Is(err, group.ErrGroupReplay) {
			// Published again: the sender may have missed the receipt.
			n.receiptReplayLocked(id, lg, s, epoch, env, false)
		}
		if errors.Is(err, group.ErrUnknownSenderKey) {
			// Its header opened: the sender holds the group's secret, and
			// its key may be on the way.
			n.waitLocked(lg, epoch, data)
			return p2p.Ignore
		}
		return n.countGroupDrop(err)
	}
	return p2p.Accept
}

// countGroupDrop counts a group message refused for err and says what
// the topic does with it: a replay is ignored (an honest relay may pass
// one on after its seen-cache forgets), everything else rejected.
func (n *Node) countGroupDrop(err error) p2p.Verdict {
	switch {
	case errors.Is(err, group.ErrGroupReplay):
		n.grp.drops.replay.Add(1)
		return p2p.Ignore
	case errors.Is(err, group.ErrUnknownSenderKey):
		n.grp.drops.notMember.Add(1)
	case errors.Is(err, group.ErrMalformedGroupMessage), errors.Is(err, group.ErrNotForGroup), errors.Is(err, group.ErrTooManyMessages):
		n.grp.drops.malformed.Add(1)
	default:
		n.grp.drops.forged.Add(1)
	}
	return p2p.Reject
}

// groupReceived opens a group message that passed the validator and
// stores it.
func (n *Node) groupReceived(id group.ID, epoch uint64, data []byte) {
	n.takeGroupEnvelope(id, nil, epoch, data)
}

// takeGroupEnvelope opens a group envelope of epoch under secret s and
// stores its message: s is nil for a copy from the topic (the group's
// current secret), the secret whose tag it is for a copy read at a
// mailbox. It fails only when the store did (errStoreFailed): a copy
// read again is taken then. What does not open, or opened before, is
// counted and dropped; what waits for its sender key is held.
func (n *Node) takeGroupEnvelope(id group.ID, secret *group.Secret, epoch uint64, data []byte) error {
	fromMailbox := secret != nil
	env, err := protocol.ParseEnvelope(data)
	if err != nil {
		n.grp.drops.malformed.Add(1)
		return nil
	}
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[id]
	if lg == nil {
		return nil
	}
	if err := n.db.View(func(tx *store.Tx) error { return refreshLocked(tx, lg) }); err != nil {
		n.cfg.Logger.Error("reading a group", "err", err)
		return fmt.Errorf("%w: %w", errStoreFailed, err)
	}
	s, ok := lg.secret()
	if secret != nil {
		s, ok = *secret, true
	}
	if !ok {
		return nil
	}
	ch, err := lg.recv.Check(s, epoch, env)
	if errors.Is(err, group.ErrUnknownSenderKey) {
		n.waitLocked(lg, epoch, data)
		return nil
	}
	if errors.Is(err, group.ErrGroupReplay) {
		// A copy read again (from a mailbox, or published again).
		n.receiptReplayLocked(id, lg, s, epoch, env, fromMailbox)
	}
	if err != nil {
		n.countGroupDrop(err)
		return nil
	}
	if ch.Owner == n.account() {
		return nil // this device's own message, stored when it was sent
	}
	inner, err := lg.recv.Open(s, epoch, env)
	if err != nil {
		n.countGroupDrop(err)
		return nil
	}
	state, _ := lg.recv.MarshalKey(ch.KeyID)
	now := n.now()
	if inner.Type == group.ContentReceipts {
		if n.debugOn() {
			n.cfg.Logger.Debug("group receipts received", "group", fmt.Sprintf("%x", id[:6]), "messages", len(inner.Body)/16, "mailbox", fromMailbox)
		}
		n.takeGroupReceipts(id, inner, ch.KeyID, state)
		return nil
	}
	if inner.Type != group.ContentText {
		n.grp.drops.malformed.Add(1)
		return nil
	}
	m := store.GroupMessage{
		ID: inner.ID, Group: [32]byte(id), Sender: [32]byte(inner.Sender), Lamport: inner.Lamport, Seq: inner.Seq,
		Type: inner.Type, Body: inner.Body, SentAt: inner.Sent, ReceivedAt: now,
	}
	var rec store.Group
	err = n.db.Update(func(tx *store.Tx) error {
		var err error
		if rec, err = tx.GetGroup([32]byte(id)); err != nil {
			return err
		}
		rec.Lamport = max(rec.Lamport, inner.Lamport)
		if err := tx.PutGroupKey([32]byte(id), ch.KeyID, state); err != nil {
			return err
		}
		if err := tx.PutGroupMessage(m); err != nil {
			return err
		}
		if err := tx.PutGroupOpened([32]byte(id), ch.KeyID, ch.Iteration, m.ID, now); err != nil {
			return err
		}
		return tx.PutGroup(rec)
	})
	switch {
	case errors.Is(err, store.ErrDuplicate):
		n.grp.drops.replay.Add(1)
		return nil
	case err != nil:
		// The key state moved on in memory only: read it again from the
		// store, so that a copy that comes again is opened then.
		n.cfg.Logger.Error("storing a group message", "err", err)
		go n.reloadGroups([][32]byte{[32]byte(id)})
		return fmt.Errorf("%w: %w", errStoreFailed, err)
	}
	lg.rec = rec
	if n.debugOn() {
		n.cfg.Logger.Debug("group message received", "group", fmt.Sprintf("%x", id[:6]), "id", fmt.Sprintf("%x", inner.ID), "mailbox", fromMailbox)
	}
	n.receiptLocked(id, inner.ID, [32]byte(inner.Sender), fromMailbox)
	gm := n.groupMessageOf(m)
	n.events.publish(Event{Type: EventGroupMessage, GroupMessage: &gm})
	return nil
}

func (n *Node) groupMessageOf(m store.GroupMessage) GroupMessage {
	out := GroupMessage{
		ID: m.ID, Group: m.Group, Sender: m.Sender, Outgoing: m.Outgoing, Body: string(m.Body),
		SentAt: m.SentAt, ReceivedAt: m.ReceivedAt, Lamport: m.Lamport, Seq: m.Seq,
		Delivered: len(m.Receipts), Recipients: len(m.Recipients),
	}
	_ = n.db.View(func(tx *store.Tx) error {
		if c, err := tx.GetContact(m.Sender); err == nil {
			out.SenderName = c.Name
		}
		return nil
	})
	return out
}

// SendGroup publishes text to the group: sealed once with this device's
// sender key (a new one first when the old one is due), stored, and
// published on the group's topic.
func (n *Node) SendGroup(ctx context.Context, id [32]byte, text string) (GroupMessage, error) {
	switch {
	case text == "":
		return GroupMessage{}, ErrEmptyMessage
	case len(text) > group.MaxBody:
		return GroupMessage{}, fmt.Errorf("node: the message is longer than %d bytes; split it", group.MaxBody)
	case !utf8.ValidString(text):
		return GroupMessage{}, fmt.Errorf("node: the message is not valid UTF-8 text")
	}
	if n.me == nil {
		return GroupMessage{}, ErrLocked
	}
	now := n.now()
	msgID, err := newMessageID(n.cfg.Rand, now)
	if err != nil {
		return GroupMessage{}, err
	}
	gm, topic, env, err := n.sealGroup(id, msgID, group.ContentText, []byte(text), now)
	if err != nil {
		return GroupMessage{}, err
	}
	// Outside the groups' lock: publishing runs the topic's validator.
	n.publishGroup(id, topic, env)
	n.kickOutbox() // a new sender key goes to the members
	n.events.publish(Event{Type: EventGroupMessage, GroupMessage: &gm})
	return gm, nil
}

// sealGroup seals and stores a group message; it returns the message, the
// topic to publish on and the envelope.
// A text is stored and published again until every member's receipt
// names it; receipts are neither stored nor numbered.
func (n *Node) sealGroup(id [32]byte, msgID [16]byte, typ byte, body []byte, now time.Time) (GroupMessage, groupTopic, []byte, error) {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	lg := n.grp.live[group.ID(id)]
	if lg == nil {
		return GroupMessage{}, groupTopic{}, nil, ErrUnknownGroup
	}
	var (
		stored store.GroupMessage
		fresh  *group.Distribution
		s      group.Secret
		rec    store.Group
		mine   *group.SenderKey
	)
	err := n.db.Update(func(tx *store.Tx) error {
		// Content a session delivered may have changed the group since it
		// was loaded: its record is read again in this transaction.
		if err := refreshLocked(tx, lg); err != nil {
			return err
		}
		st := lg.tree.State()
		if lg.rec.Left || !st.IsMember(n.account()) {
			return ErrNotGroupMember
		}
		var ok bool
		if s, ok = lg.secret(); !ok {
			return fmt.Errorf("node: this group's new secret has not reached you yet; try again when it has")
		}
		rec, mine = lg.rec, lg.mine
		var recipients [][32]byte
		for _, m := range st.Members {
			if m.Account != n.account() {
				recipients = append(recipients, [32]byte(m.Account))
			}
		}
		if mine == nil || mine.Due(now) {
			var err error
			if mine, err = n.newSenderKeyTx(tx, &rec, lg.tree, now); err != nil {
				return err
			}
			d := mine.Distribution(group.ID(id))
			fresh = &d
		}
		text := typ == group.ContentText
		var seq uint64
		if text {
			rec.Lamport++
			rec.Seq++
			seq = rec.Seq
		}
		inner := group.Inner{Sender: n.account(), Group: group.ID(id), ID: msgID, Sent: time.UnixMilli(now.UnixMilli()),
			Lamport: rec.Lamport, Seq: seq, Type: typ, Body: body}
		b, err := inner.Marshal()
		if err != nil {
			return err
		}
		next := *mine
		env, err := next.Seal(n.cfg.Rand, s, protocol.Epoch(now), envelopeExpiry(now, n.cfg.MessageTTL), b)
		if err != nil {
			return err
		}
		if rec.SenderKey, err = next.MarshalBinary(); err != nil {
			return err
		}
		mine = &next
		stored = store.GroupMessage{ID: msgID, Group: id, Sender: [32]byte(n.account()), Lamport: rec.Lamport, Seq: seq,
			Type: typ, Body: body, SentAt: inner.Sent, ReceivedAt: now, Outgoing: true,
			Recipients: recipients, Envelope: env.Marshal()}
		if text {
			if err := tx.PutGroupMessage(stored); err != nil {
				return err
			}
			if len(recipients) > 0 {
				e := protocol.Epoch(now)
				if err := tx.PutGroupResend(store.GroupResend{Group: id, ID: msgID, Epoch: e, Topic: s.Topic(e),
					Next: now.Add(firstGroupResend), Wait: firstGroupResend}); err != nil {
					return err
				}
			}
		}
		return tx.PutGroup(rec)
	})
	if err != nil {
		return GroupMessage{}, groupTopic{}, nil, err
	}
	if fresh != nil {
		// The topic's validator checks this device's own messages too.
		if err := lg.recv.AddKey(n.account(), *fresh); err != nil {
			return GroupMessage{}, groupTopic{}, nil, err
		}
	}
	lg.rec, lg.mine = rec, mine
	e := protocol.Epoch(now)
	return n.groupMessageOf(stored), groupTopic{name: s.Topic(e), epoch: e}, stored.Envelope, nil
}

// refreshLocked loads lg again from the store when its record there
// differs from the one lg holds. n.grp.mu is held.
func refreshLocked(tx *store.Tx, lg *liveGroup) error {
	cur, err := tx.GetGroup(lg.rec.ID)
	if err != nil {
		return err
	}
	if reflect.DeepEqual(cur, lg.rec) {
		return nil
	}
	fresh, err := loadGroup(tx, lg.rec.ID)
	if err != nil {
		return err
	}
	lg.rec, lg.tree, lg.recv, lg.mine = fresh.rec, fresh.tree, fresh.recv, fresh.mine
	return nil
}

// groupTopic is a group topic's name and epoch.
type groupTopic struct {
	name  string
	epoch uint64
}

// publishGroup publishes a group envelope on topic. n.grp.mu must not be
// held: publishing runs the topic's validator.
func (n *Node) publishGroup(id [32]byte, topic groupTopic, env []byte) {
	g := n.mbx.gossip
	if g == nil {
		return
	}
	t, err := g.JoinVerdict(topic.name, func(_ peer.ID, data []byte) p2p.Verdict {
		return n.validateGroup(group.ID(id), topic.epoch, data)
	})
	if err == nil {
		err = t.Publish(n.ctx, env)
	}
	if err != nil && !errors.Is(err, pubsub.ErrTopicClosed) {
		n.cfg.Logger.Warn("publishing a group message", "err", err)
	}
	if n.debugOn() && t != nil {
		n.cfg.Logger.Debug("group publish", "group", fmt.Sprintf("%x", id[:6]), "topic_peers", len(t.ListPeers()), "err", err)
	}
}

// newSenderKeyTx makes this device a new sender key for the group in
// rec, and queues it to every other member who is a contact. It also
// takes the key into its own receiver's keys (stored), so that its own
// messages pass the topic's validator.
func (n *Node) newSenderKeyTx(tx *store.Tx, rec *store.Group, tree *group.Tree, now time.Time) (*group.SenderKey, error) {
	k, err := group.NewSenderKey(n.cfg.Rand, now)
	if err != nil {
		return nil, err
	}
	if rec.SenderKey, err = k.MarshalBinary(); err != nil {
		return nil, err
	}
	rec.Removals = removals(tree)
	d := k.Distribution(group.ID(rec.ID))
	recv := group.NewReceiver(group.ID(rec.ID))
	if err := recv.AddKey(n.account(), d); err != nil {
		return nil, err
	}
	own, _ := recv.MarshalKey(k.ID)
	if err := tx.PutGroupKey(rec.ID, k.ID, own); err != nil {
		return nil, err
	}
	body := d.Marshal()
	for _, m := range tree.State().Members {
		if m.Account == n.account() {
			continue
		}
		if err := n.queueGroupContent(tx, [32]byte(m.Account), group.ContentSenderKey, body, now); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// removals counts the removes and leaves on the canonical chain.
func removals(t *group.Tree) uint64 {
	var c uint64
	for _, o := range t.Canonical() {
		if o.Type == group.OpRemove || o.Type == group.OpLeave {
			c++
		}
	}
	return c
}

// queueGroupContent queues group content to a member over the pairwise
// session; a member who is not a contact is skipped (SPEC.md: member
// cards are reserved).
func (n *Node) queueGroupContent(tx *store.Tx, acct [32]byte, typ uint8, body []byte, now time.Time) error {
	if _, err := tx.GetContact(acct); err != nil {
		if errors.Is(err, store.ErrUnknownContact) || errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}
	id, err := newMessageID(n.cfg.Rand, now)
	if err != nil {
		return err
	}
	_, err = n.queueMessage(tx, acct, id, protocol.ContentType(typ), body, now)
	return err
}

// contactsByName resolves the names of contacts to their accounts.
func contactsByName(tx *store.Tx, names []string) ([]keys.AccountPublic, error) {
	var out []keys.AccountPublic
	for _, name := range names {
		c, err := contactByName(tx, strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		if c.IsRequest {
			return nil, fmt.Errorf("node: %s is a message request, not a contact; accept it first", c.Name)
		}
		out = append(out, keys.AccountPublic(c.Account))
	}
	return out, nil
}

// CreateGroup creates a group named name with the contacts members: this
// account is its first admin. Each member receives a welcome over its
// session.
func (n *Node) CreateGroup(ctx context.Context, name string, members []string) (Group, error) {
	if n.me == nil {
		return Group{}, ErrLocked
	}
	if len(members)+1 > group.MaxGroupMembers {
		return Group{}, ErrGroupTooLarge
	}
	now := n.now()
	var id group.ID
	var s group.Secret
	if _, err := n.cfg.Rand.Read(id[:]); err != nil {
		return Group{}, err
	}
	if _, err := n.cfg.Rand.Read(s[:]); err != nil {
		return Group{}, err
	}
	err := n.db.Update(func(tx *store.Tx) error {
		accts, err := contactsByName(tx, members)
		if err != nil {
			return err
		}
		create, err := group.NewOp(n.me.Account, group.Op{Group: id, Time: now, Type: group.OpCreate, Name: name, Commit: s.Commit(), Accounts: accts})
		if err != nil {
			return fmt.Errorf("node: %w", err)
		}
		tree, err := group.NewTree(create)
		if err != nil {
			return err
		}
		if err := tx.PutGroupOp([32]byte(id), create.Seq, create.Hash(), create.Bytes()); err != nil {
			return err
		}
		rec := store.Group{ID: id, Secrets: []store.GroupSecret{{Secret: s}}, Joined: now}
		if _, err := n.newSenderKeyTx(tx, &rec, tree, now); err != nil {
			return err
		}
		welcome := group.Welcome{Group: id, Secret: s, Ops: tree.Canonical()}.Marshal()
		for _, a := range accts {
			if err := n.queueGroupContent(tx, [32]byte(a), group.ContentWelcome, welcome, now); err != nil {
				return err
			}
		}
		return tx.PutGroup(rec)
	})
	if err != nil {
		return Group{}, err
	}
	n.reloadGroups([][32]byte{id})
	n.kickOutbox()
	return n.GroupInfo([32]byte(id))
}

// GroupInfo returns the group with ID id.
func (n *Node) GroupInfo(id [32]byte) (Group, error) {
	n.grp.mu.Lock()
	lg := n.grp.live[group.ID(id)]
	var st group.State
	var left bool
	if lg != nil {
		st, left = lg.tree.State(), lg.rec.Left
	}
	n.grp.mu.Unlock()
	if lg == nil {
		return Group{}, ErrUnknownGroup
	}
	g := Group{ID: id, Name: st.Name, Left: left || !st.IsMember(n.account()), Admin: st.IsAdmin(n.account())}
	err := n.db.View(func(tx *store.Tx) error {
		for _, m := range st.Members {
			gm := GroupMember{Account: [32]byte(m.Account), Admin: m.Admin, Me: m.Account == n.account()}
			if c, err := tx.GetContact(gm.Account); err == nil {
				gm.Name = c.Name
			}
			g.Members = append(g.Members, gm)
		}
		return nil
	})
	return g, err
}

// Groups lists the node's groups.
func (n *Node) Groups() ([]Group, error) {
	n.grp.mu.Lock()
	var ids [][32]byte
	for id := range n.grp.live {
		ids = append(ids, [32]byte(id))
	}
	n.grp.mu.Unlock()
	var out []Group
	for _, id := range ids {
		g, err := n.GroupInfo(id)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// GroupMessages returns up to limit messages of the group in display
// order, after the first skip.
func (n *Node) GroupMessages(id [32]byte, skip, limit int) ([]GroupMessage, error) {
	var ms []store.GroupMessage
	err := n.db.View(func(tx *store.Tx) error {
		if _, err := tx.GetGroup(id); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return ErrUnknownGroup
			}
			return err
		}
		var err error
		ms, err = tx.GroupMessages(id, skip, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]GroupMessage, len(ms))
	for i, m := range ms {
		out[i] = n.groupMessageOf(m)
	}
	return out, nil
}

// GroupStats counts the group content dropped, by reason.
func (n *Node) GroupStats() GroupDrops {
	d := &n.grp.drops
	return GroupDrops{Malformed: d.malformed.Load(), NotMember: d.notMember.Load(), Refused: d.refused.Load(),
		Replay: d.replay.Load(), Forged: d.forged.Load(), Unknown: d.unknown.Load()}
}

// groupOp makes a change of this account to group id: build returns the
// operation given the current state. The operation goes to every member
// concerned over their sessions (applyOpTx).
func (n *Node) groupOp(id [32]byte, build func(tx *store.Tx, st group.State) (group.Op, error)) (Group, error) {
	if n.me == nil {
		return Group{}, ErrLocked
	}
	now := n.now()
	n.grp.mu.Lock()
	lg := n.grp.live[group.ID(id)]
	if lg == nil {
		n.grp.mu.Unlock()
		return Group{}, ErrUnknownGroup
	}
	err := n.db.Update(func(tx *store.Tx) error {
		// A copy from the store: a failed change leaves the running
		// group as it was.
		work, err := loadGroup(tx, id)
		if err != nil {
			return err
		}
		st := work.tree.State()
		if work.rec.Left || !st.IsMember(n.account()) {
			return ErrNotGroupMember
		}
		o, err := build(tx, st)
		if err != nil {
			return err
		}
		rec := work.rec
		if err := n.applyOpTx(tx, work, &rec, o, now); err != nil {
			if errors.Is(err, group.ErrNotAllowed) {
				return fmt.Errorf("%w (%v)", ErrNotGroupAdmin, err)
			}
			return err
		}
		return tx.PutGroup(rec)
	})
	n.grp.mu.Unlock()
	if err != nil {
		return Group{}, err
	}
	n.groupsChanged([][32]byte{id})
	n.kickOutbox()
	return n.GroupInfo(id)
}

// AddToGroup adds contacts to the group (admins only). Each receives a
// welcome; every member sends them its sender key as it is now, so they
// read what is sent from then on.
func (n *Node) AddToGroup(ctx context.Context, id [32]byte, names []string) (Group, error) {
	return n.groupOp(id, func(tx *store.Tx, st group.State) (group.Op, error) {
		accts, err := contactsByName(tx, names)
		if err != nil {
			return group.Op{}, err
		}
		if len(st.Members)+len(accts) > group.MaxGroupMembers {
			return group.Op{}, ErrGroupTooLarge
		}
		return group.Op{Type: group.OpAdd, Accounts: accts}, nil
	})
}

// RemoveFromGroup removes the member called name (a contact) from the
// group (admins only). The group gets a new secret, sent only to the
// members who remain, and every remaining member a new sender key: what
// is sent from then on is unreadable to the removed member.
func (n *Node) RemoveFromGroup(ctx context.Context, id [32]byte, name string) (Group, error) {
	return n.groupOp(id, func(tx *store.Tx, st group.State) (group.Op, error) {
		accts, err := contactsByName(tx, []string{name})
		if err != nil {
			return group.Op{}, err
		}
		if !st.IsMember(accts[0]) {
			return group.Op{}, fmt.Errorf("node: %s is not a member of this group", name)
		}
		return group.Op{Type: group.OpRemove, Target: accts[0]}, nil
	})
}

// LeaveGroup leaves the group. The most senior admin who remains gives
// it a new secret.
func (n *Node) LeaveGroup(ctx context.Context, id [32]byte) (Group, error) {
	return n.groupOp(id, func(*store.Tx, group.State) (group.Op, error) {
		return group.Op{Type: group.OpLeave}, nil
	})
}

// RenameGroup renames the group (admins only).
func (n *Node) RenameGroup(ctx context.Context, id [32]byte, name string) (Group, error) {
	return n.groupOp(id, func(*store.Tx, group.State) (group.Op, error) {
		return group.Op{Type: group.OpRename, Name: name}, nil
	})
}

// PromoteInGroup makes the member called name an admin (admins only).
func (n *Node) PromoteInGroup(ctx context.Context, id [32]byte, name string) (Group, error) {
	return n.groupOp(id, func(tx *store.Tx, st group.State) (group.Op, error) {
		accts, err := contactsByName(tx, []string{name})
		if err != nil {
			return group.Op{}, err
		}
		return group.Op{Type: group.OpPromote, Target: accts[0]}, nil
	})
}
