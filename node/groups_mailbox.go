package node

import (
	"context"
	"crypto/ed25519"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// Group messages at mailboxes (protocol/SPEC.md, Groups, "Mailboxes"):
// each member registers its groups' tags where it receives; a sender
// deposits what some member has not acknowledged GroupDepositAfter after
// sending, once at each distinct mailbox those members receive at.

// groupDepositAfter is how long a sender waits for receipts before it
// deposits a group message (SPEC GroupDepositAfter): the first
// republication on the topic comes at the same time.
const groupDepositAfter = firstGroupResend

// groupRegistrations lists the tags of the groups this device is in, for
// the live epochs of now: the current secret's, and a replaced secret's
// up to the epoch it was replaced in while it is kept (what was sent
// under it may wait at a mailbox until MaxTTL after).
func groupRegistrations(tx *store.Tx, now time.Time) ([]mailbox.Registration, error) {
	gs, err := tx.ListGroups()
	if err != nil {
		return nil, err
	}
	var out []mailbox.Registration
	for _, g := range gs {
		if g.Left {
			continue
		}
		for i, s := range g.Secrets {
			if i > 0 && now.Sub(s.Replaced) > protocol.MaxTTL {
				continue
			}
			for _, e := range protocol.LiveEpochs(now) {
				if i > 0 && e > protocol.Epoch(s.Replaced) {
					continue
				}
				out = append(out, mailbox.Registration{Kind: store.RegPair, Tag: group.Secret(s.Secret).Tag(e), Epoch: e})
			}
		}
	}
	return out, nil
}

// groupOfTag finds the group, secret and epoch whose group tag is tag,
// among the groups this device is in.
func (n *Node) groupOfTag(tag protocol.Tag, now time.Time) (group.ID, group.Secret, uint64, bool) {
	n.grp.mu.Lock()
	defer n.grp.mu.Unlock()
	for id, lg := range n.grp.live {
		if lg.rec.Left {
			continue
		}
		for _, s := range lg.rec.Secrets {
			if e, ok := group.EpochOf(group.Secret(s.Secret), tag, now); ok {
				return id, group.Secret(s.Secret), e, true
			}
		}
	}
	return group.ID{}, group.Secret{}, 0, false
}

// takeGroupFromMailbox takes env, read at a mailbox, if it is under one
// of this device's group tags; false if it is not. Nobody deletes a group
// envelope (other members read the same copy): it expires.
func (n *Node) takeGroupFromMailbox(env []byte) (bool, error) {
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		return false, nil
	}
	id, s, epoch, ok := n.groupOfTag(e.Tag, n.now())
	if !ok {
		return false, nil
	}
	return true, n.takeGroupEnvelope(id, &s, epoch, env)
}

// groupDeposit is one group envelope to deposit: its schedule, the
// credential's key and the mailboxes.
type groupDeposit struct {
	r    store.GroupResend
	env  []byte
	tag  protocol.Tag
	key  ed25519.PrivateKey
	mbxs []peer.AddrInfo
}

// depositGroups deposits, once each, the envelopes of the group messages
// in rs that some member of the state at sending has not acknowledged
// groupDepositAfter after sending: at the distinct mailboxes those
// members told this device of, one copy per mailbox however many of them
// read there. A deposit that reaches no mailbox is tried again at the
// message's next republication.
func (n *Node) depositGroups(rs []store.GroupResend) {
	if !n.grp.depositing.CompareAndSwap(false, true) {
		return
	}
	defer n.grp.depositing.Store(false)
	now := n.now()
	var todo []groupDeposit
	var done []store.GroupResend
	n.db.View(func(tx *store.Tx) error {
		for _, r := range rs {
			if r.Deposited {
				continue
			}
			m, err := tx.GetGroupMessage(r.Group, r.ID)
			if err != nil {
				continue
			}
			// Sent less than groupDepositAfter ago: not yet. Sent "in the
			// future", by a clock that has since gone back (a restart
			// onto the right time): its age is unknown, and waiting for
			// the clock to catch up would strand it.
			if age := now.Sub(m.ReceivedAt); age >= 0 && age < groupDepositAfter {
				continue
			}
			rec, err := tx.GetGroup(r.Group)
			if err != nil {
				continue
			}
			s, found := secretOfTopic(rec, r.Topic, r.Epoch)
			if !found {
				done = append(done, r) // its secret is gone: nobody reads it any more
				continue
			}
			mbxs := membersMailboxes(tx, appendMissing(nil, m))
			if len(mbxs) == 0 {
				continue // no mailbox known yet: republication goes on
			}
			todo = append(todo, groupDeposit{r: r, env: m.Envelope, tag: s.Tag(r.Epoch), key: s.WriteKey(r.Epoch), mbxs: mbxs})
		}
		return nil
	})
	if len(todo) > 0 {
		ctx, cancel := context.WithTimeout(n.ctx, deliverTimeout)
		defer cancel()
		p := mailbox.Pusher{NewHost: n.cfg.EphemeralHost}
		defer p.Close()
		for _, d := range todo {
			k, err := p.Push(ctx, d.tag, d.mbxs, protocol.SealPairDeposit(d.key, d.env))
			if n.debugOn() {
				n.cfg.Logger.Debug("group deposit", "mailboxes", len(d.mbxs), "copies", k, "err", err)
			}
			if err != nil {
				n.cfg.Logger.Info("depositing a group message", "err", err)
				continue
			}
			done = append(done, d.r)
		}
	}
	if len(done) == 0 {
		return
	}
	err := n.db.Update(func(tx *store.Tx) error {
		cur, err := tx.GroupResends()
		if err != nil {
			return err
		}
		for _, r := range cur {
			if !r.Deposited && slices.ContainsFunc(done, func(d store.GroupResend) bool { return d.Group == r.Group && d.ID == r.ID }) {
				r.Deposited = true
				if err := tx.PutGroupResend(r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		// Deposited again later: a mailbox keeps one copy of the same bytes.
		n.cfg.Logger.Error("recording group deposits", "err", err)
	}
}

// secretOfTopic finds the secret of rec whose topic in epoch is topic.
func secretOfTopic(rec store.Group, topic string, epoch uint64) (group.Secret, bool) {
	for _, gs := range rec.Secrets {
		if s := group.Secret(gs.Secret); s.Topic(epoch) == topic {
			return s, true
		}
	}
	return group.Secret{}, false
}

// membersMailboxes lists the distinct mailboxes that the members accts
// (contacts) announced.
func membersMailboxes(tx *store.Tx, accts [][32]byte) []peer.AddrInfo {
	var mbxs []peer.AddrInfo
	for _, a := range accts {
		for _, ai := range mailbox.ContactMailboxes(tx, a) {
			if !slices.ContainsFunc(mbxs, func(x peer.AddrInfo) bool { return x.ID == ai.ID }) {
				mbxs = append(mbxs, ai)
			}
		}
	}
	return mbxs
}
