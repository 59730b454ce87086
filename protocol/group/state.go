package group

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/sotto-im/sotto/keys"
)

// Bounds on what a group's tree holds.
const (
	MaxGroupOps  = 4096
	MaxOrphanOps = 64
)

var (
	// ErrOrphan: the operation's parent is not known yet; the tree holds
	// the operation until it arrives.
	ErrOrphan = errors.New("group: operation's parent not known yet (held)")
	// ErrTreeFull: the group holds MaxGroupOps operations.
	ErrTreeFull = errors.New("group: the group holds as many operations as it may")
	// ErrWrongGroup: the operation names another group.
	ErrWrongGroup = fmt.Errorf("%w: another group's operation", ErrMalformedOp)
)

// Member is one member of a group's state.
type Member struct {
	Account keys.AccountPublic
	Join    int  // 0, 1, 2, … in the order members were added
	Admin   bool //
	Rank    int  // for an admin: 0 for the creator, then in the order of promotion
}

// State is a group's state after one operation.
type State struct {
	Group   ID
	Head    [32]byte // OpHash of the operation that made this state
	Seq     uint32
	Name    string
	Commit  [32]byte // commitment to the current group secret
	Members []Member // in join order

	nextJoin, nextRank int
}

// Member returns the member with account a.
func (s *State) Member(a keys.AccountPublic) (Member, bool) {
	for _, m := range s.Members {
		if m.Account == a {
			return m, true
		}
	}
	return Member{}, false
}

// IsMember reports whether a is a member.
func (s *State) IsMember(a keys.AccountPublic) bool { _, ok := s.Member(a); return ok }

// IsAdmin reports whether a is an admin.
func (s *State) IsAdmin(a keys.AccountPublic) bool { m, ok := s.Member(a); return ok && m.Admin }

// Ended reports whether every member has left.
func (s *State) Ended() bool { return len(s.Members) == 0 }

// moreSenior reports whether member a goes before member b: an admin
// before a non-admin, then the lower rank, then the lower join position.
func moreSenior(a, b Member) bool {
	if a.Admin != b.Admin {
		return a.Admin
	}
	if a.Admin && a.Rank != b.Rank {
		return a.Rank < b.Rank
	}
	return a.Join < b.Join
}

func (s *State) clone() State {
	c := *s
	c.Members = slices.Clone(s.Members)
	return c
}

func (s *State) without(a keys.AccountPublic) {
	s.Members = slices.DeleteFunc(s.Members, func(m Member) bool { return m.Account == a })
	for _, m := range s.Members {
		if m.Admin {
			return
		}
	}
	if len(s.Members) > 0 {
		s.Members[0].Admin, s.Members[0].Rank = true, s.nextRank
		s.nextRank++
	}
}

func (s *State) join(a keys.AccountPublic) {
	s.Members = append(s.Members, Member{Account: a, Join: s.nextJoin})
	s.nextJoin++
}

func (s *State) addAll(accounts []keys.AccountPublic) error {
	seen := map[keys.AccountPublic]bool{}
	for _, a := range accounts {
		switch {
		case a.IsZero():
			return fmt.Errorf("%w: the zero account", ErrInvalidOp)
		case seen[a]:
			return fmt.Errorf("%w: an account listed twice", ErrInvalidOp)
		case s.IsMember(a):
			return fmt.Errorf("%w: %s is a member already", ErrInvalidOp, a)
		}
		seen[a] = true
	}
	if len(s.Members)+len(accounts) > MaxGroupMembers {
		return fmt.Errorf("%w: over %d members", ErrInvalidOp, MaxGroupMembers)
	}
	for _, a := range accounts {
		s.join(a)
	}
	return nil
}

// genesis is the state a create makes.
func genesis(o *Op) (State, error) {
	if o.Type != OpCreate || o.Seq != 0 || o.Parent != ([32]byte{}) {
		return State{}, fmt.Errorf("%w: a group starts with a create of seq 0 and no parent", ErrInvalidOp)
	}
	s := State{Group: o.Group, Head: o.Hash(), Name: o.Name, Commit: o.Commit}
	s.join(o.Author)
	s.Members[0].Admin, s.Members[0].Rank = true, 0
	s.nextRank = 1
	if err := s.addAll(o.Accounts); err != nil {
		return State{}, err
	}
	return s, nil
}

// apply returns the state o makes from s (o's parent's state).
func (s *State) apply(o *Op) (State, error) {
	if o.Group != s.Group {
		return State{}, ErrWrongGroup
	}
	if o.Parent != s.Head || o.Seq != s.Seq+1 {
		return State{}, fmt.Errorf("%w: seq %d after %d", ErrMalformedOp, o.Seq, s.Seq)
	}
	author, ok := s.Member(o.Author)
	if !ok {
		return State{}, fmt.Errorf("%w: %s is no member", ErrNotAllowed, o.Author)
	}
	if !author.Admin && o.Type != OpLeave {
		return State{}, fmt.Errorf("%w: %s by %s, who is no admin", ErrNotAllowed, o.Type, o.Author)
	}
	n := s.clone()
	n.Head, n.Seq = o.Hash(), o.Seq
	switch o.Type {
	case OpAdd:
		if err := n.addAll(o.Accounts); err != nil {
			return State{}, err
		}
	case OpRemove:
		t, ok := s.Member(o.Target)
		switch {
		case !ok:
			return State{}, fmt.Errorf("%w: %s is no member", ErrInvalidOp, o.Target)
		case o.Target == o.Author:
			return State{}, fmt.Errorf("%w: a member removes itself by leaving", ErrInvalidOp)
		case t.Admin && !moreSenior(author, t):
			return State{}, fmt.Errorf("%w: %s may remove only admins junior to it", ErrNotAllowed, o.Author)
		}
		n.without(o.Target)
		n.Commit = o.Commit
	case OpLeave:
		n.without(o.Author)
	case OpRename:
		n.Name = o.Name
	case OpPromote:
		for i, m := range n.Members {
			if m.Account == o.Target {
				if m.Admin {
					return State{}, fmt.Errorf("%w: %s is an admin already", ErrInvalidOp, o.Target)
				}
				n.Members[i].Admin, n.Members[i].Rank = true, n.nextRank
				n.nextRank++
				return n, nil
			}
		}
		return State{}, fmt.Errorf("%w: %s is no member", ErrInvalidOp, o.Target)
	case OpRekey:
		n.Commit = o.Commit
	default: // OpCreate
		return State{}, fmt.Errorf("%w: a second create", ErrInvalidOp)
	}
	return n, nil
}

// Hash is StateHash (SPEC.md, "State hash"): members whose states hash
// alike agree on the head, the name, the secret and every member's role.
func (s State) Hash() [32]byte {
	h := sha256.New()
	h.Write([]byte(labelState))
	h.Write(s.Group[:])
	h.Write(s.Head[:])
	h.Write([]byte{byte(len(s.Name))})
	h.Write([]byte(s.Name))
	h.Write(s.Commit[:])
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(s.Members))))
	for _, m := range s.Members {
		h.Write(m.Account[:])
		var role byte
		var rank int
		if m.Admin {
			role, rank = 1, m.Rank
		}
		b := binary.BigEndian.AppendUint16(nil, uint16(m.Join))
		b = append(b, role)
		b = binary.BigEndian.AppendUint16(b, uint16(rank))
		h.Write(b)
	}
	return [32]byte(h.Sum(nil))
}

// node is a valid operation in the tree, with the state it makes.
type node struct {
	op       *Op
	state    State
	children []*node
}

// Tree holds a group's valid operations and computes its canonical chain
// (SPEC.md, "Convergence"). It is not safe for concurrent use.
type Tree struct {
	root    *node
	nodes   map[[32]byte]*node
	orphans []*Op // oldest first
	canon   []*node
}

// NewTree starts a group's tree from its create.
func NewTree(create *Op) (*Tree, error) {
	s, err := genesis(create)
	if err != nil {
		return nil, err
	}
	root := &node{op: create, state: s}
	t := &Tree{root: root, nodes: map[[32]byte]*node{create.Hash(): root}}
	t.recompute()
	return t, nil
}

// Group is the tree's group ID.
func (t *Tree) Group() ID { return t.root.op.Group }

// Has reports whether the tree holds the operation with hash h (held
// orphans are not counted).
func (t *Tree) Has(h [32]byte) bool { _, ok := t.nodes[h]; return ok }

// Len is the number of valid operations held.
func (t *Tree) Len() int { return len(t.nodes) }

// Orphans is the number of operations held until their parent is known.
func (t *Tree) Orphans() int { return len(t.orphans) }

// Add adds o. It returns ErrOrphan when o's parent is not known yet (o is
// held until it is, and added then), nil when o was added or already held,
// and the rule o breaks otherwise (o is dropped).
func (t *Tree) Add(o *Op) error {
	if o.Group != t.Group() {
		return ErrWrongGroup
	}
	if t.Has(o.Hash()) {
		return nil
	}
	parent, ok := t.nodes[o.Parent]
	if !ok {
		if o.Type == OpCreate {
			return fmt.Errorf("%w: a second create", ErrInvalidOp)
		}
		for _, h := range t.orphans {
			if h.Hash() == o.Hash() {
				return ErrOrphan
			}
		}
		if len(t.orphans) == MaxOrphanOps {
			t.orphans = t.orphans[1:]
		}
		t.orphans = append(t.orphans, o)
		return ErrOrphan
	}
	if err := t.attach(parent, o); err != nil {
		return err
	}
	// Orphans whose parents are now known, until no more are.
	for again := true; again; {
		again = false
		for i, h := range t.orphans {
			if p, ok := t.nodes[h.Parent]; ok {
				t.orphans = slices.Delete(t.orphans, i, i+1)
				t.attach(p, h) // an invalid orphan is dropped
				again = true
				break
			}
		}
	}
	t.recompute()
	return nil
}

func (t *Tree) attach(parent *node, o *Op) error {
	if len(t.nodes) >= MaxGroupOps {
		return ErrTreeFull
	}
	s, err := parent.state.apply(o)
	if err != nil {
		return err
	}
	n := &node{op: o, state: s}
	parent.children = append(parent.children, n)
	t.nodes[o.Hash()] = n
	return nil
}

// removal is a linked list of the removals in a branch: who was removed,
// by whom.
type removal struct {
	account, by keys.AccountPublic
	next        *removal
}

// remover returns the most senior (in s) of the members who removed a in
// the branch; ok is false if nobody did. A remover who is no member of s
// (added within the branch) goes after every member of s.
func (r *removal) remover(s *State, a keys.AccountPublic) (best Member, ok bool) {
	for ; r != nil; r = r.next {
		if r.account != a {
			continue
		}
		m, member := s.Member(r.by)
		if !member {
			m = Member{Join: 1 << 30}
		}
		if !ok || moreSenior(m, best) {
			best, ok = m, true
		}
	}
	return best, ok
}

func (t *Tree) recompute() {
	best := map[*node]*node{}
	removed := map[*node]*removal{}
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			walk(c)
		}
		if w := pick(n, removed); w != nil {
			best[n] = w
			removed[n] = removed[w]
		}
		if n.op.Type == OpRemove {
			removed[n] = &removal{account: n.op.Target, by: n.op.Author, next: removed[n]}
		}
	}
	walk(t.root)
	t.canon = t.canon[:0]
	for n := t.root; n != nil; n = best[n] {
		t.canon = append(t.canon, n)
	}
}

// pick chooses the child of n the canonical chain goes on to (rules 2
// and 3), given the removals in each child's branch.
func pick(n *node, removed map[*node]*removal) *node {
	if len(n.children) == 0 {
		return nil
	}
	kept := make([]*node, 0, len(n.children))
	for _, c := range n.children {
		dropped := false
		for _, d := range n.children {
			if d == c {
				continue
			}
			// c's author is removed in d's branch: c goes, unless d's
			// author is removed in c's branch by someone at least as
			// senior.
			rc, ok := removed[d].remover(&n.state, c.op.Author)
			if !ok {
				continue
			}
			rd, ok := removed[c].remover(&n.state, d.op.Author)
			if !ok || moreSenior(rc, rd) {
				dropped = true
				break
			}
		}
		if !dropped {
			kept = append(kept, c)
		}
	}
	if len(kept) == 0 {
		kept = n.children
	}
	return slices.MinFunc(kept, func(a, b *node) int {
		ma, _ := n.state.Member(a.op.Author)
		mb, _ := n.state.Member(b.op.Author)
		switch {
		case moreSenior(ma, mb):
			return -1
		case moreSenior(mb, ma):
			return 1
		}
		ha, hb := a.op.Hash(), b.op.Hash()
		return bytes.Compare(ha[:], hb[:])
	})
}

// State is the state after the canonical chain's last operation.
func (t *Tree) State() State { return t.canon[len(t.canon)-1].state.clone() }

// Canonical returns the canonical chain, from the create.
func (t *Tree) Canonical() []*Op {
	out := make([]*Op, len(t.canon))
	for i, n := range t.canon {
		out[i] = n.op
	}
	return out
}

// OnChain reports whether the operation with hash h is on the canonical
// chain (an author whose operation is not SHOULD make it again).
func (t *Tree) OnChain(h [32]byte) bool {
	n, ok := t.nodes[h]
	return ok && slices.Contains(t.canon, n)
}

// StateAt is the state the operation with hash h made, whether or not it
// is on the canonical chain.
func (t *Tree) StateAt(h [32]byte) (State, bool) {
	n, ok := t.nodes[h]
	if !ok {
		return State{}, false
	}
	return n.state.clone(), true
}
