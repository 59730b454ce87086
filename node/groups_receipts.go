package node

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// Receipts and publishing again (SPEC.md, "Receipts and delivered N/M",
// "Publishing again").
const (
	groupReceiptBatch = 2 * time.Second // GroupReceiptBatch
	// A message acknowledged on the pairwise session (its copy came from
	// a mailbox) is not acknowledged so again for pairReceiptMemory.
	pairReceiptMemory = time.Hour
	firstGroupResend  = 5 * time.Second  // the first wait before publishing again
	maxGroupResend    = 10 * time.Minute // the longest wait
)

// receiptReplayLocked notes a receipt for a copy of a message this
// device opened before (its sender publishes it again while it misses
// our receipt), when the store still says which message that was: the
// copy no longer opens (its message key is gone), so its ID comes from
// the record made when it first did, which a restart keeps. fromMailbox:
// the copy was read at a mailbox. n.grp.mu is held.
func (n *Node) receiptReplayLocked(id group.ID, lg *liveGroup, s group.Secret, epoch uint64, env *protocol.Envelope, fromMailbox bool) {
	k, it, err := lg.recv.Header(s, epoch, env)
	if err != nil {
		return
	}
	// The key's owner, for a receipt on the pairwise session too; a key
	// dropped since (its owner left) still gets one on the topic.
	owner, known := lg.recv.KeyOwner(k)
	var msgID [16]byte
	var ok bool
	if err := n.db.View(func(tx *store.Tx) (err error) {
		msgID, ok, err = tx.GroupOpened([32]byte(id), k, it)
		return err
	}); err != nil {
		n.cfg.Logger.Error("reading which group message a copy carried", "err", err)
		return
	}
	if ok {
		n.receiptLocked(id, msgID, [32]byte(owner), fromMailbox && known)
	}
}

// pendingReceipts are a group's receipts waiting for the next batch:
// the IDs of the messages, and the senders of those whose copies came
// from a mailbox, which are acknowledged on the pairwise session too.
type pendingReceipts struct {
	ids   [][16]byte
	viaMB map[[16]byte][32]byte
}

// receiptLocked notes that message id of group g, sent by sender, is to
// be acknowledged in the group's next receipts, at most
// groupReceiptBatch from now; fromMailbox: its copy was read at a
// mailbox. n.grp.mu is held.
func (n *Node) receiptLocked(g group.ID, id [16]byte, sender [32]byte, fromMailbox bool) {
	if n.grp.receipts == nil {
		n.grp.receipts = map[group.ID]*pendingReceipts{}
	}
	p := n.grp.receipts[g]
	if p == nil {
		p = &pendingReceipts{viaMB: map[[16]byte][32]byte{}}
		n.grp.receipts[g] = p
	}
	if !slices.Contains(p.ids, id) {
		p.ids = append(p.ids, id)
	}
	if at, ok := n.grp.pairReceipted[id]; ok && time.Since(at) < pairReceiptMemory {
		fromMailbox = false // acknowledged on the pairwise session already
	}
	if fromMailbox {
		p.viaMB[id] = sender
	}
	if !n.grp.flushing {
		n.grp.flushing = true
		time.AfterFunc(groupReceiptBatch, n.flushGroupReceipts)
	}
}

// flushGroupReceipts publishes each group's pending receipts as one
// message, and acknowledges the copies read at a mailbox on the pairwise
// sessions with their senders too (SPEC.md, "Receipts and delivered
// N/M").
func (n *Node) flushGroupReceipts() {
	n.grp.mu.Lock()
	pending := n.grp.receipts
	n.grp.receipts, n.grp.flushing = nil, false
	n.grp.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	for g, p := range pending {
		ids := p.ids
		for len(ids) > 0 {
			k := min(len(ids), group.MaxBody/16)
			chunk := ids[:k]
			body := make([]byte, 0, 16*k)
			for _, id := range chunk {
				body = append(body, id[:]...)
			}
			ids = ids[k:]
			now := n.now()
			msgID, err := newMessageID(n.cfg.Rand, now)
			if err != nil {
				return
			}
			_, topic, env, err := n.sealGroup([32]byte(g), msgID, group.ContentReceipts, body, now)
			if err != nil {
				if !errors.Is(err, ErrNotGroupMember) {
					n.cfg.Logger.Warn("sealing group receipts", "err", err)
				}
				break
			}
			n.publishGroup([32]byte(g), topic, env)
		}
		if len(p.viaMB) > 0 {
			n.queuePairReceipts(g, p.viaMB)
		}
	}
}

// queuePairReceipts queues, to the sender of each message in via (its
// copy came from a mailbox), a group receipts message on their pairwise
// session naming its messages of group g.
func (n *Node) queuePairReceipts(g group.ID, via map[[16]byte][32]byte) {
	bySender := map[[32]byte][][16]byte{}
	for id, sender := range via {
		bySender[sender] = append(bySender[sender], id)
	}
	now := n.now()
	queued := 0
	err := n.db.Update(func(tx *store.Tx) error {
		queued = 0
		for sender, ids := range bySender {
			for len(ids) > 0 {
				k := min(len(ids), group.MaxPairReceipts)
				body := group.PairReceipts{Group: g, IDs: ids[:k]}.Marshal()
				ids = ids[k:]
				if err := n.queueGroupContent(tx, sender, group.ContentPairReceipts, body, now); err != nil {
					return err
				}
				queued++
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("queueing group receipts", "err", err)
		return
	}
	n.grp.pairReceipts.Add(uint64(queued))
	n.kickOutbox()
	at := time.Now()
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	if n.grp.pairReceipted == nil {
		n.grp.pairReceipted = map[[16]byte]time.Time{}
	}
	for id, t := range n.grp.pairReceipted {
		if at.Sub(t) >= pairReceiptMemory {
			delete(n.grp.pairReceipted, id)
		}
	}
	for id := range via {
		n.grp.pairReceipted[id] = at
	}
}

// takeGroupReceipts records a member's receipts, published on the
// topic, of this device's messages. n.grp.mu is held.
func (n *Node) takeGroupReceipts(g group.ID, inner *group.Inner, keyID [group.KeyIDSize]byte, state []byte) {
	var ids [][16]byte
	for b := inner.Body; len(b) >= 16; b = b[16:] {
		ids = append(ids, [16]byte(b[:16]))
	}
	err := n.db.Update(func(tx *store.Tx) error {
		if err := tx.PutGroupKey([32]byte(g), keyID, state); err != nil {
			return err
		}
		return n.addReceiptsTx(tx, g, [32]byte(inner.Sender), ids)
	})
	if err != nil {
		n.cfg.Logger.Error("storing group receipts", "err", err)
	}
}

// addReceiptsTx records in tx that member from acknowledged the messages
// ids of group g: those of this device's messages sent to it that it had
// not acknowledged yet; the others are ignored. A message acknowledged by
// all its recipients is not published again. Each message changed is
// announced once tx commits.
func (n *Node) addReceiptsTx(tx *store.Tx, g group.ID, from [32]byte, ids [][16]byte) error {
	var changed []store.GroupMessage
	for _, id := range ids {
		m, err := tx.GetGroupMessage([32]byte(g), id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if !m.Outgoing || !slices.Contains(m.Recipients, from) || slices.Contains(m.Receipts, from) {
			continue
		}
		m.Receipts = append(m.Receipts, from)
		if err := tx.UpdateGroupMessage(m); err != nil {
			return err
		}
		if len(m.Receipts) == len(m.Recipients) {
			if err := tx.DeleteGroupResend(m.Group, m.ID); err != nil {
				return err
			}
		}
		changed = append(changed, m)
	}
	if len(changed) > 0 {
		tx.OnCommit(func() {
			for _, m := range changed {
				gm := n.groupMessageOf(m)
				n.events.publish(Event{Type: EventGroupMessage, GroupMessage: &gm})
			}
		})
	}
	return nil
}

// resendGroups publishes again the messages that some member has not
// acknowledged and that are due, and ends the schedules that can no
// longer help (the topic is no longer followed, the group left).
func (n *Node) resendGroups() {
	now := n.now()
	var due []store.GroupResend
	if err := n.db.View(func(tx *store.Tx) error {
		rs, err := tx.GroupResends()
		for _, r := range rs {
			if !r.Next.After(now) {
				due = append(due, r)
			}
		}
		return err
	}); err != nil || len(due) == 0 {
		return
	}
	type send struct {
		r   store.GroupResend
		env []byte
	}
	// Which topics are followed, read before the write transaction: the
	// groups' lock is never taken inside one (sealGroup and
	// groupReceived write while they hold it).
	followed := make([]bool, len(due))
	n.grp.mu.Lock()
	for i, r := range due {
		_, followed[i] = n.grp.live[group.ID(r.Group)].subsOf(r.Topic)
	}
	n.grp.mu.Unlock()
	var (
		sends  []send
		absent [][32]byte
	)
	err := n.db.Update(func(tx *store.Tx) error {
		sends, absent = sends[:0], absent[:0]
		for i, r := range due {
			m, err := tx.GetGroupMessage(r.Group, r.ID)
			if !followed[i] || err != nil {
				if err := tx.DeleteGroupResend(r.Group, r.ID); err != nil {
					return err
				}
				continue
			}
			sends = append(sends, send{r, m.Envelope})
			absent = appendMissing(absent, m)
			r.Wait = min(3*r.Wait, maxGroupResend)
			r.Next = now.Add(r.Wait)
			if err := tx.PutGroupResend(r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("scheduling group messages again", "err", err)
		return
	}
	for _, s := range sends {
		// The same bytes again would be one gossip message, which the
		// router has seen: a fresh delete hash (no reader deletes a group
		// envelope, and the signature does not cover it) makes a new one.
		env, err := protocol.ParseEnvelope(s.env)
		if err != nil {
			continue
		}
		if _, err := n.cfg.Rand.Read(env.DeleteHash[:]); err != nil {
			return
		}
		n.publishGroup(s.r.Group, groupTopic{name: s.r.Topic, epoch: s.r.Epoch}, env.Marshal())
	}
	if slices.ContainsFunc(due, func(r store.GroupResend) bool { return !r.Deposited }) {
		n.spawn(func() { n.depositGroups(due) })
	}
	n.reachMembers(absent)
}

// appendMissing adds to accts the members whose receipts m still lacks.
func appendMissing(accts [][32]byte, m store.GroupMessage) [][32]byte {
	for _, a := range m.Recipients {
		if !slices.Contains(m.Receipts, a) && !slices.Contains(accts, a) {
			accts = append(accts, a)
		}
	}
	return accts
}

// reachMembers dials the members accts (contacts) that this device is not
// connected to. A copy published again reaches a member only from a
// topic peer that forwards it, and a member who read it already drops it
// without passing it on: so it goes from this device straight to each
// member that has not acknowledged it, over a connection this makes.
// Once connected, the member's subscription arrives and the topic's
// peer-join publishes again at once (followLocked).
func (n *Node) reachMembers(accts [][32]byte) {
	h := n.Host()
	if h == nil || len(accts) == 0 {
		return
	}
	var pids []peer.ID
	n.db.View(func(tx *store.Tx) error {
		for _, a := range accts {
			c, err := tx.GetContact(a)
			if err != nil {
				continue // not a contact: no pairwise session, no address
			}
			if pid, err := peer.Decode(c.PeerID); err == nil && h.LibP2P().Network().Connectedness(pid) != network.Connected {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	for _, pid := range pids {
		n.spawn(func() {
			ctx, cancel := context.WithTimeout(n.ctx, p2p.DirectDialTimeout+p2p.RouteTimeout)
			defer cancel()
			if err := h.Sender().Reach(ctx, pid); err != nil && n.debugOn() {
				n.cfg.Logger.Debug("reaching a group member", "peer", pid, "err", err)
			}
		})
	}
}

// subsOf reports whether lg follows topic; lg may be nil.
func (lg *liveGroup) subsOf(topic string) (struct{}, bool) {
	if lg == nil || lg.rec.Left {
		return struct{}{}, false
	}
	_, ok := lg.subs[topic]
	return struct{}{}, ok
}

// resendNow makes the messages of group g waiting for receipts on topic
// due now, and publishes them.
func (n *Node) resendNow(g group.ID, topic string) {
	now := n.now()
	err := n.db.Update(func(tx *store.Tx) error {
		rs, err := tx.GroupResends()
		for _, r := range rs {
			if err != nil {
				return err
			}
			if r.Group == [32]byte(g) && r.Topic == topic && r.Next.After(now) {
				r.Next = now
				err = tx.PutGroupResend(r)
			}
		}
		return err
	})
	if err != nil {
		n.cfg.Logger.Error("scheduling group messages again", "err", err)
		return
	}
	n.resendGroups()
}
