package node

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// groupContent applies group content that a pairwise session delivered,
// in its order, inside the transaction that received it (SPEC.md, "Group
// content on a pairwise session"). Content that breaks a rule is dropped
// and counted; only a store error is returned. It reports the group
// whose running state must be loaded again after the commit.
func (n *Node) groupContent(tx *store.Tx, m store.Message, now time.Time) ([32]byte, bool, error) {
	from := keys.AccountPublic(m.Contact)
	var (
		id      [32]byte
		changed bool
		err     error
	)
	switch m.Type {
	case group.ContentWelcome:
		id, changed, err = n.takeWelcome(tx, from, m.Body, now)
	case group.ContentOp:
		id, changed, err = n.takeOp(tx, from, m.Body, now)
	case group.ContentSenderKey:
		id, changed, err = n.takeSenderKey(tx, from, m.Body, now)
	case group.ContentPairReceipts:
		id, err = n.takePairReceipts(tx, from, m.Body)
	}
	var se storeError
	if errors.As(err, &se) {
		return id, false, se.err
	}
	if err != nil {
		n.cfg.Logger.Info("group content dropped", "type", m.Type, "err", err)
		return id, false, nil
	}
	return id, changed, nil
}

// groupsShown applies the group content among messages a session just
// delivered in order, and returns the groups that changed.
func (n *Node) groupsShown(tx *store.Tx, ms []store.Message, now time.Time) ([][32]byte, error) {
	var out [][32]byte
	for _, m := range ms {
		if m.Direction != store.Incoming || !group.IsContent(m.Type) {
			continue
		}
		if c, err := tx.GetContact(m.Contact); err != nil || c.IsRequest {
			n.grp.drops.notMember.Add(1) // a stranger's group content
			continue
		}
		id, changed, err := n.groupContent(tx, m, now)
		if err != nil {
			return nil, err
		}
		if changed && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// groupsChanged loads the groups ids again after the commit that changed
// them and announces them.
func (n *Node) groupsChanged(ids [][32]byte) {
	if len(ids) == 0 {
		return
	}
	n.reloadGroups(ids)
	for _, id := range ids {
		if g, err := n.GroupInfo(id); err == nil {
			n.events.publish(Event{Type: EventGroup, Group: &g})
		}
	}
}

// dropped counts a refusal under c and returns err.
func dropped(c interface{ Add(uint64) uint64 }, err error) error {
	c.Add(1)
	return err
}

// takeWelcome joins the group a welcome describes, when it makes this
// account a member and comes from an admin of it.
func (n *Node) takeWelcome(tx *store.Tx, from keys.AccountPublic, body []byte, now time.Time) ([32]byte, bool, error) {
	d := &n.grp.drops
	w, err := group.ParseWelcome(body)
	if err != nil {
		return [32]byte{}, false, dropped(&d.malformed, err)
	}
	id := [32]byte(w.Group)
	if rec, err := tx.GetGroup(id); err == nil {
		// Known already (added again after leaving): its operations are
		// merged, and its secret kept when the add is on the chain.
		if err := keepSecret(tx, rec, w.Secret); err != nil {
			return id, false, err
		}
		return n.mergeOps(tx, from, id, w.Ops, now)
	} else if !errors.Is(err, store.ErrNotFound) {
		return id, false, se(err)
	}
	tree, err := group.NewTree(w.Ops[0])
	if err != nil {
		return id, false, dropped(&d.refused, err)
	}
	for _, o := range w.Ops[1:] {
		if err := tree.Add(o); err != nil && !errors.Is(err, group.ErrOrphan) {
			return id, false, dropped(&d.refused, err)
		}
	}
	st := tree.State()
	switch {
	case !st.IsMember(n.account()):
		return id, false, dropped(&d.refused, errors.New("a welcome to a group this account is not in"))
	case !st.IsAdmin(from):
		return id, false, dropped(&d.notMember, errors.New("a welcome from someone who is not an admin of the group"))
	case w.Secret.Commit() != st.Commit:
		return id, false, dropped(&d.refused, errors.New("a welcome whose secret is not the group's"))
	}
	for _, o := range w.Ops {
		if tree.Has(o.Hash()) {
			if err := tx.PutGroupOp(id, o.Seq, o.Hash(), o.Bytes()); err != nil {
				return id, false, se(err)
			}
		}
	}
	rec := store.Group{ID: id, Secrets: []store.GroupSecret{{Secret: w.Secret}}, Joined: now}
	pending, err := tx.TakePendingGroupKeys(id)
	if err != nil {
		return id, false, se(err)
	}
	for owner, b := range pending {
		if err := n.addMemberKey(tx, tree, keys.AccountPublic(owner), b); err != nil && !isStoreError(err) {
			n.cfg.Logger.Info("held sender key refused", "err", err)
		} else if err != nil {
			return id, false, err
		}
	}
	if _, err := n.newSenderKeyTx(tx, &rec, tree, now); err != nil {
		return id, false, se(err)
	}
	return id, true, se(tx.PutGroup(rec))
}

func isStoreError(err error) bool {
	var s storeError
	return errors.As(err, &s)
}

// takeOp adds an operation that a member sent, with the secret it
// carries.
func (n *Node) takeOp(tx *store.Tx, from keys.AccountPublic, body []byte, now time.Time) ([32]byte, bool, error) {
	d := &n.grp.drops
	om, err := group.ParseOpMessage(body)
	if err != nil {
		return [32]byte{}, false, dropped(&d.malformed, err)
	}
	id := [32]byte(om.Op.Group)
	rec, err := tx.GetGroup(id)
	if errors.Is(err, store.ErrNotFound) {
		return id, false, dropped(&d.unknown, errors.New("an operation for a group this node does not know"))
	} else if err != nil {
		return id, false, se(err)
	}
	if om.HasSecret && om.Op.Author != from {
		return id, false, dropped(&d.refused, errors.New("a group secret from someone who did not make its operation"))
	}
	if om.HasSecret {
		// Kept before the operation is merged, so that what the merge
		// does (a welcome, a rekey) finds it; dropped again if the tree
		// refuses the operation.
		if err := keepSecret(tx, rec, om.Secret); err != nil {
			return id, false, err
		}
	}
	gid, changed, err := n.mergeOps(tx, from, id, []*group.Op{om.Op}, now)
	if err != nil && om.HasSecret && !isStoreError(err) {
		if rerr := se(tx.PutGroup(rec)); rerr != nil {
			return id, false, rerr
		}
	}
	return gid, changed, err
}

// keepSecret adds s to the group's known secrets, the newest first.
func keepSecret(tx *store.Tx, rec store.Group, s group.Secret) error {
	if slices.ContainsFunc(rec.Secrets, func(k store.GroupSecret) bool { return k.Secret == [32]byte(s) }) {
		return nil
	}
	rec.Secrets = append([]store.GroupSecret{{Secret: s}}, rec.Secrets...)
	if len(rec.Secrets) > store.MaxGroupSecrets {
		rec.Secrets = rec.Secrets[:store.MaxGroupSecrets]
	}
	return se(tx.PutGroup(rec))
}

// mergeOps adds operations to a known group, then does what the new
// state asks of this device: a new sender key after a removal or leave,
// its key to members just added, a rekey when it is the most senior
// admin and a member left.
func (n *Node) mergeOps(tx *store.Tx, from keys.AccountPublic, id [32]byte, ops []*group.Op, now time.Time) ([32]byte, bool, error) {
	d := &n.grp.drops
	lg, err := loadGroup(tx, id)
	if err != nil {
		return id, false, se(err)
	}
	before := lg.tree.State()
	if _, ok := before.Member(from); !ok && !slices.ContainsFunc(ops, func(o *group.Op) bool { return o.Author == from }) {
		return id, false, dropped(&d.notMember, errors.New("group content from someone who is not a member"))
	}
	added := false
	for _, o := range ops {
		if lg.tree.Has(o.Hash()) {
			continue
		}
		switch err := lg.tree.Add(o); {
		case err == nil:
		case errors.Is(err, group.ErrOrphan):
		default:
			return id, false, dropped(&d.refused, err)
		}
		if err := tx.PutGroupOp(id, o.Seq, o.Hash(), o.Bytes()); err != nil {
			return id, false, se(err)
		}
		added = true
	}
	if !added {
		return id, false, nil
	}
	return id, true, n.afterOps(tx, lg, before, now)
}

// afterOps does what a change of state asks of this device.
func (n *Node) afterOps(tx *store.Tx, lg *liveGroup, before group.State, now time.Time) error {
	st := lg.tree.State()
	rec := lg.rec
	me := n.account()
	if !st.IsMember(me) {
		rec.Left, rec.SenderKey = true, nil
		return se(tx.PutGroup(rec))
	}
	if rec.Left {
		// Added again: a new sender key follows below.
		rec.Left, lg.mine = false, nil
	}
	// Keys of members who are gone are deleted.
	for _, kid := range lg.recv.KeyIDs() {
		if owner, ok := lg.recv.KeyOwner(kid); ok && !st.IsMember(owner) {
			if err := tx.DeleteGroupKey(rec.ID, kid); err != nil {
				return se(err)
			}
		}
	}
	if removals(lg.tree) > rec.Removals || lg.mine == nil {
		// A removal or leave: a new key, to the remaining members only.
		if _, err := n.newSenderKeyTx(tx, &rec, lg.tree, now); err != nil {
			return se(err)
		}
	} else if lg.mine != nil {
		// Members just added get this device's key as it is now.
		body := lg.mine.Distribution(group.ID(rec.ID)).Marshal()
		for _, m := range st.Members {
			if m.Account != me && !before.IsMember(m.Account) {
				if err := n.queueGroupContent(tx, [32]byte(m.Account), group.ContentSenderKey, body, now); err != nil {
					return se(err)
				}
			}
		}
	}
	if err := n.redoOwnOps(tx, lg, &rec, now); err != nil {
		return err
	}
	if err := n.rekeyIfSenior(tx, lg, &rec, now); err != nil {
		return err
	}
	return se(tx.PutGroup(rec))
}

// rekeyIfSenior makes a rekey when the canonical chain ends in a leave
// and this account is the most senior admin: the leaver knew the secret.
func (n *Node) rekeyIfSenior(tx *store.Tx, lg *liveGroup, rec *store.Group, now time.Time) error {
	chain := lg.tree.Canonical()
	if chain[len(chain)-1].Type != group.OpLeave {
		return nil
	}
	st := lg.tree.State()
	senior, rank := keys.AccountPublic{}, -1
	for _, m := range st.Members {
		if m.Admin && (rank < 0 || m.Rank < rank) {
			senior, rank = m.Account, m.Rank
		}
	}
	if senior != n.account() || n.me == nil {
		return nil
	}
	return n.applyOpTx(tx, lg, rec, group.Op{Type: group.OpRekey}, now)
}

// applyOpTx makes an operation of this account on top of the group's
// canonical chain, stores it and sends it to every member of the state
// before and after it (a new secret, when it has one, only to the members
// after it); a welcome goes to members it adds.
func (n *Node) applyOpTx(tx *store.Tx, lg *liveGroup, rec *store.Group, o group.Op, now time.Time) error {
	chain := lg.tree.Canonical()
	head := chain[len(chain)-1]
	before := lg.tree.State()
	o.Group, o.Parent, o.Seq, o.Time = head.Group, head.Hash(), head.Seq+1, now
	var s group.Secret
	fresh := o.Type == group.OpRemove || o.Type == group.OpRekey
	if fresh {
		if _, err := n.cfg.Rand.Read(s[:]); err != nil {
			return err
		}
		o.Commit = s.Commit()
	}
	op, err := group.NewOp(n.me.Account, o)
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := lg.tree.Add(op); err != nil {
		return fmt.Errorf("node: the group refuses this change: %w", err)
	}
	if err := tx.PutGroupOp(rec.ID, op.Seq, op.Hash(), op.Bytes()); err != nil {
		return se(err)
	}
	after := lg.tree.State()
	if fresh {
		rec.Secrets = append([]store.GroupSecret{{Secret: s}}, rec.Secrets...)
		if len(rec.Secrets) > store.MaxGroupSecrets {
			rec.Secrets = rec.Secrets[:store.MaxGroupSecrets]
		}
	}
	cur, _ := secretFor(*rec, after.Commit)
	welcome := group.Welcome{Group: op.Group, Secret: cur, Ops: lg.tree.Canonical()}.Marshal()
	for _, m := range mergeMembers(before, after) {
		a := [32]byte(m)
		if m == n.account() {
			continue
		}
		var body []byte
		switch {
		case !before.IsMember(m) && after.IsMember(m):
			body = welcome
			if err := n.queueGroupContent(tx, a, group.ContentWelcome, body, now); err != nil {
				return se(err)
			}
			continue
		case fresh && after.IsMember(m):
			body = group.OpMessage{Op: op, Secret: s, HasSecret: true}.Marshal()
		default:
			body = group.OpMessage{Op: op}.Marshal()
		}
		if err := n.queueGroupContent(tx, a, group.ContentOp, body, now); err != nil {
			return se(err)
		}
	}
	if !after.IsMember(n.account()) {
		rec.Left, rec.SenderKey = true, nil
		return nil
	}
	if removals(lg.tree) > rec.Removals {
		if _, err := n.newSenderKeyTx(tx, rec, lg.tree, now); err != nil {
			return se(err)
		}
	} else if lg.mine != nil {
		body := lg.mine.Distribution(group.ID(rec.ID)).Marshal()
		for _, m := range after.Members {
			if m.Account != n.account() && !before.IsMember(m.Account) {
				if err := n.queueGroupContent(tx, [32]byte(m.Account), group.ContentSenderKey, body, now); err != nil {
					return se(err)
				}
			}
		}
	}
	return nil
}

// mergeMembers lists the accounts of either state once.
func mergeMembers(a, b group.State) []keys.AccountPublic {
	var out []keys.AccountPublic
	for _, s := range []group.State{a, b} {
		for _, m := range s.Members {
			if !slices.Contains(out, m.Account) {
				out = append(out, m.Account)
			}
		}
	}
	return out
}

// takePairReceipts records group receipts that a member sent on the
// pairwise session, for copies it read at a mailbox (SPEC.md, "Receipts
// and delivered N/M").
func (n *Node) takePairReceipts(tx *store.Tx, from keys.AccountPublic, body []byte) ([32]byte, error) {
	r, err := group.ParsePairReceipts(body)
	if err != nil {
		return [32]byte{}, dropped(&n.grp.drops.malformed, err)
	}
	if _, err := tx.GetGroup([32]byte(r.Group)); errors.Is(err, store.ErrNotFound) {
		return [32]byte(r.Group), dropped(&n.grp.drops.unknown, fmt.Errorf("node: group receipts for a group this device does not hold"))
	} else if err != nil {
		return [32]byte(r.Group), storeError{err}
	}
	if err := n.addReceiptsTx(tx, r.Group, [32]byte(from), r.IDs); err != nil {
		return [32]byte(r.Group), storeError{err}
	}
	return [32]byte(r.Group), nil
}

// takeSenderKey takes a member's sender key; one for a group not known
// yet is held until its welcome.
func (n *Node) takeSenderKey(tx *store.Tx, from keys.AccountPublic, body []byte, now time.Time) ([32]byte, bool, error) {
	d := &n.grp.drops
	dist, err := group.ParseDistribution(body)
	if err != nil {
		return [32]byte{}, false, dropped(&d.malformed, err)
	}
	id := [32]byte(dist.Group)
	if _, err := tx.GetGroup(id); errors.Is(err, store.ErrNotFound) {
		return id, false, se(tx.PutPendingGroupKey(id, [32]byte(from), body, now))
	} else if err != nil {
		return id, false, se(err)
	}
	lg, err := loadGroup(tx, id)
	if err != nil {
		return id, false, se(err)
	}
	if err := n.addMemberKey(tx, lg.tree, from, body); err != nil {
		return id, false, err
	}
	return id, true, nil
}

// addMemberKey stores owner's sender key (an encoded distribution) for
// the group of tree, when owner is a member.
func (n *Node) addMemberKey(tx *store.Tx, tree *group.Tree, owner keys.AccountPublic, body []byte) error {
	d := &n.grp.drops
	dist, err := group.ParseDistribution(body)
	if err != nil {
		return dropped(&d.malformed, err)
	}
	st := tree.State()
	if !st.IsMember(owner) || owner == n.account() {
		return dropped(&d.notMember, errors.New("a sender key from someone who is not a member of the group"))
	}
	id := [32]byte(tree.Group())
	recv := group.NewReceiver(tree.Group())
	ks, err := tx.GroupKeys(id)
	if err != nil {
		return se(err)
	}
	for _, b := range ks {
		if err := recv.LoadKey(b); err != nil {
			return se(fmt.Errorf("%w: %v", store.ErrCorrupt, err))
		}
	}
	if _, held := recv.KeyOwner(dist.ID); held {
		return nil // taken already; its chain may be ahead
	}
	if err := recv.AddKey(owner, dist); err != nil {
		return dropped(&d.refused, err)
	}
	b, _ := recv.MarshalKey(dist.ID)
	return se(tx.PutGroupKey(id, dist.ID, b))
}

// redoOwnOps makes again, on top of the canonical chain, this account's
// operations that a concurrent change pushed off it (SPEC.md: an author
// whose operation is not on the chain SHOULD make it again) when the
// state does not already do what they did: a leave while still a member,
// an add of accounts that are not members, a removal of one who still
// is. A rename or promotion that lost is not made again: the other
// admin's choice stands.
func (n *Node) redoOwnOps(tx *store.Tx, lg *liveGroup, rec *store.Group, now time.Time) error {
	if n.me == nil {
		return nil
	}
	ops, err := tx.GroupOps(rec.ID)
	if err != nil {
		return se(err)
	}
	me := n.account()
	for _, b := range ops {
		o, err := group.ParseOp(b)
		if err != nil || o.Author != me || lg.tree.OnChain(o.Hash()) || !lg.tree.Has(o.Hash()) {
			continue
		}
		st := lg.tree.State()
		if !st.IsMember(me) {
			return nil
		}
		var again group.Op
		switch o.Type {
		case group.OpLeave:
			again = group.Op{Type: group.OpLeave}
		case group.OpAdd:
			var missing []keys.AccountPublic
			for _, a := range o.Accounts {
				if !st.IsMember(a) {
					missing = append(missing, a)
				}
			}
			if len(missing) == 0 {
				continue
			}
			again = group.Op{Type: group.OpAdd, Accounts: missing}
		case group.OpRemove:
			if !st.IsMember(o.Target) {
				continue
			}
			again = group.Op{Type: group.OpRemove, Target: o.Target}
		default:
			continue
		}
		if err := n.applyOpTx(tx, lg, rec, again, now); err != nil {
			if isStoreError(err) {
				return err
			}
			n.cfg.Logger.Info("a group change of this account that lost to a concurrent one is not made again", "type", o.Type, "err", err)
		}
	}
	return nil
}
