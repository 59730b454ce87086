package group

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

func account(t testing.TB, i int) *keys.AccountPrivate {
	t.Helper()
	seed := make([]byte, 32)
	seed[0], seed[1] = byte(i), byte(i>>8)
	seed[31] = 0x9a
	k, err := keys.NewAccountPrivate(seed)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustOp(t testing.TB, by *keys.AccountPrivate, o Op) *Op {
	t.Helper()
	if o.Time.IsZero() {
		o.Time = time.Unix(1_800_000_000, 0)
	}
	op, err := NewOp(by, o)
	if err != nil {
		t.Fatal(err)
	}
	// Every operation in these tests goes through the wire encoding.
	got, err := ParseOp(op.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// after makes an operation of by on top of parent.
func after(t testing.TB, parent *Op, by *keys.AccountPrivate, o Op) *Op {
	o.Group, o.Parent, o.Seq = parent.Group, parent.Hash(), parent.Seq+1
	return mustOp(t, by, o)
}

func commit(i byte) [32]byte { var g Secret; g[0] = i; return g.Commit() }

func newGroup(t testing.TB, creator *keys.AccountPrivate, name string, members ...*keys.AccountPrivate) (*Op, *Tree) {
	t.Helper()
	var id ID
	id[0], id[31] = 0x47, byte(len(members))
	var acc []keys.AccountPublic
	for _, m := range members {
		acc = append(acc, m.Public())
	}
	c := mustOp(t, creator, Op{Group: id, Type: OpCreate, Name: name, Commit: commit(1), Accounts: acc})
	tr, err := NewTree(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, tr
}

func add(t testing.TB, tr *Tree, o *Op) {
	t.Helper()
	if err := tr.Add(o); err != nil {
		t.Fatalf("Add %s: %v", o.Type, err)
	}
}

func TestCreateAndRoles(t *testing.T) {
	a, b, c, d := account(t, 1), account(t, 2), account(t, 3), account(t, 4)
	create, tr := newGroup(t, a, "friends", b, c)
	s := tr.State()
	if s.Name != "friends" || len(s.Members) != 3 || !s.IsAdmin(a.Public()) || s.IsAdmin(b.Public()) {
		t.Fatalf("state after create: %+v", s)
	}
	// Only admins add, remove, rename, promote, rekey; anyone leaves.
	for _, o := range []Op{
		{Type: OpAdd, Accounts: []keys.AccountPublic{d.Public()}},
		{Type: OpRemove, Target: c.Public(), Commit: commit(2)},
		{Type: OpRename, Name: "mine"},
		{Type: OpPromote, Target: b.Public()},
		{Type: OpRekey, Commit: commit(3)},
	} {
		if err := tr.Add(after(t, create, b, o)); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s by a member who is no admin: %v, want ErrNotAllowed", o.Type, err)
		}
		if err := tr.Add(after(t, create, d, o)); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s by a stranger: %v, want ErrNotAllowed", o.Type, err)
		}
	}
	if tr.Len() != 1 {
		t.Fatalf("the tree holds %d operations after refusals, want 1", tr.Len())
	}
	p := after(t, create, a, Op{Type: OpPromote, Target: b.Public()})
	add(t, tr, p)
	// b, promoted after a, is junior: it may not remove a, a may remove it.
	if err := tr.Add(after(t, p, b, Op{Type: OpRemove, Target: a.Public(), Commit: commit(4)})); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("a junior admin removed the creator: %v", err)
	}
	add(t, tr, after(t, p, b, Op{Type: OpAdd, Accounts: []keys.AccountPublic{d.Public()}}))
	if s := tr.State(); len(s.Members) != 4 || !s.IsMember(d.Public()) {
		t.Fatalf("a promoted admin's add did not apply: %+v", s)
	}
}

func TestOpRulesRefused(t *testing.T) {
	a, b, c := account(t, 1), account(t, 2), account(t, 3)
	create, tr := newGroup(t, a, "g", b)
	for name, o := range map[string]Op{
		"add a member again":   {Type: OpAdd, Accounts: []keys.AccountPublic{b.Public()}},
		"add an account twice": {Type: OpAdd, Accounts: []keys.AccountPublic{c.Public(), c.Public()}},
		"add the zero account": {Type: OpAdd, Accounts: []keys.AccountPublic{{}}},
		"remove a non-member":  {Type: OpRemove, Target: c.Public()},
		"remove oneself":       {Type: OpRemove, Target: a.Public()},
		"promote a non-member": {Type: OpPromote, Target: c.Public()},
		"promote an admin":     {Type: OpPromote, Target: a.Public()},
		"a second create":      {Type: OpCreate, Name: "again"},
	} {
		if err := tr.Add(after(t, create, a, o)); !errors.Is(err, ErrInvalidOp) {
			t.Errorf("%s: %v, want ErrInvalidOp", name, err)
		}
	}
	// Seq and parent must agree.
	bad := mustOp(t, a, Op{Group: create.Group, Parent: create.Hash(), Seq: 5, Type: OpRename, Name: "x"})
	if err := tr.Add(bad); !errors.Is(err, ErrMalformedOp) {
		t.Errorf("seq 5 after 0: %v", err)
	}
	other := mustOp(t, a, Op{Group: ID{1}, Parent: create.Hash(), Seq: 1, Type: OpRename, Name: "x"})
	if err := tr.Add(other); !errors.Is(err, ErrWrongGroup) {
		t.Errorf("another group's operation: %v", err)
	}
	// Over 256 members.
	var many []keys.AccountPublic
	for i := range MaxGroupMembers - 1 {
		many = append(many, account(t, 100+i).Public())
	}
	if err := tr.Add(after(t, create, a, Op{Type: OpAdd, Accounts: many})); !errors.Is(err, ErrInvalidOp) {
		t.Errorf("257 members: %v", err)
	}
	add(t, tr, after(t, create, a, Op{Type: OpAdd, Accounts: many[:MaxGroupMembers-2]}))
	if n := len(tr.State().Members); n != MaxGroupMembers {
		t.Fatalf("%d members, want %d", n, MaxGroupMembers)
	}
}

func TestLastAdminLeaves(t *testing.T) {
	a, b, c := account(t, 1), account(t, 2), account(t, 3)
	create, tr := newGroup(t, a, "g", b, c)
	l := after(t, create, a, Op{Type: OpLeave})
	add(t, tr, l)
	s := tr.State()
	if s.IsMember(a.Public()) || !s.IsAdmin(b.Public()) || s.IsAdmin(c.Public()) {
		t.Fatalf("after the only admin left: %+v; want b (joined first) as admin", s)
	}
	l2 := after(t, l, b, Op{Type: OpLeave})
	add(t, tr, l2)
	l3 := after(t, l2, c, Op{Type: OpLeave})
	add(t, tr, l3)
	if s := tr.State(); !s.Ended() {
		t.Fatalf("every member left but the group has %d", len(s.Members))
	}
	if err := tr.Add(after(t, l3, c, Op{Type: OpRename, Name: "ghost"})); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("an operation after the group ended: %v", err)
	}
}

// Two admins change the group at once while a third member is offline:
// whatever order the operations arrive in, and whether the offline
// member sees them before or after the authors' re-made operations, every
// member ends on the same state, in which both changes hold.
func TestConcurrentChangesConverge(t *testing.T) {
	a, b, c, d, e := account(t, 1), account(t, 2), account(t, 3), account(t, 4), account(t, 5)
	create, _ := newGroup(t, a, "g", b, c)
	p := after(t, create, a, Op{Type: OpPromote, Target: b.Public()})
	// At once: a adds d, b adds e and renames.
	byA := after(t, p, a, Op{Type: OpAdd, Accounts: []keys.AccountPublic{d.Public()}})
	byB := after(t, p, b, Op{Type: OpAdd, Accounts: []keys.AccountPublic{e.Public()}})
	byB2 := after(t, byB, b, Op{Type: OpRename, Name: "renamed"})
	ops := []*Op{p, byA, byB, byB2}

	members := map[string]*Tree{}
	for _, name := range []string{"a", "b", "c"} {
		_, tr := newGroup(t, a, "g", b, c)
		members[name] = tr
	}
	// a and b each see their own first, then the other's.
	for _, o := range []*Op{p, byA, byB, byB2} {
		add(t, members["a"], o)
	}
	for _, o := range []*Op{p, byB, byB2, byA} {
		add(t, members["b"], o)
	}
	// a is more senior: its branch wins; b's operations fell off the
	// chain, and b makes them again on top.
	sb := members["b"].State()
	if sb.Head != byA.Hash() || members["b"].OnChain(byB.Hash()) {
		t.Fatalf("b's head is not a's operation: the more senior admin's change must go first")
	}
	reB := after(t, byA, b, Op{Type: OpAdd, Accounts: []keys.AccountPublic{e.Public()}})
	reB2 := after(t, reB, b, Op{Type: OpRename, Name: "renamed"})
	ops = append(ops, reB, reB2)
	add(t, members["a"], reB)
	add(t, members["a"], reB2)
	add(t, members["b"], reB)
	add(t, members["b"], reB2)
	// c was offline: it gets everything at once, in a scrambled order
	// (children before parents).
	for i := len(ops) - 1; i >= 0; i-- {
		if err := members["c"].Add(ops[i]); err != nil && !errors.Is(err, ErrOrphan) {
			t.Fatal(err)
		}
	}
	want := members["a"].State()
	if want.Name != "renamed" || !want.IsMember(d.Public()) || !want.IsMember(e.Public()) {
		t.Fatalf("the converged state lost a change: %+v", want)
	}
	for name, tr := range members {
		if s := tr.State(); s.Hash() != want.Hash() {
			t.Errorf("%s's state differs: head %x vs %x", name, s.Head[:4], want.Head[:4])
		}
	}
}

// Same operations, any arrival order: the same state. Random trees of
// concurrent operations by three admins and two members, delivered in
// random orders to several replicas.
func TestConvergenceAnyOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		people := []*keys.AccountPrivate{account(t, 1), account(t, 2), account(t, 3), account(t, 4), account(t, 5), account(t, 6), account(t, 7)}
		create, ref := newGroup(t, people[0], "g", people[1], people[2], people[3])
		all := []*Op{}
		// Grow a tree: each operation picks a random known parent and a
		// random author; invalid ones are simply not added.
		for len(all) < 12 {
			parents := append([]*Op{create}, all...)
			par := parents[rng.IntN(len(parents))]
			by := people[rng.IntN(len(people))]
			other := people[rng.IntN(len(people))].Public()
			var o Op
			switch rng.IntN(6) {
			case 0:
				o = Op{Type: OpAdd, Accounts: []keys.AccountPublic{other}}
			case 1:
				o = Op{Type: OpRemove, Target: other, Commit: commit(byte(len(all)))}
			case 2:
				o = Op{Type: OpLeave}
			case 3:
				o = Op{Type: OpRename, Name: fmt.Sprint("n", len(all))}
			case 4:
				o = Op{Type: OpPromote, Target: other}
			default:
				o = Op{Type: OpRekey, Commit: commit(byte(100 + len(all)))}
			}
			op := after(t, par, by, o)
			if ref.Add(op) == nil {
				all = append(all, op)
			}
		}
		want := ref.State().Hash()
		for range 5 {
			_, tr := newGroup(t, people[0], "g", people[1], people[2], people[3])
			for _, i := range rng.Perm(len(all)) {
				if err := tr.Add(all[i]); err != nil && !errors.Is(err, ErrOrphan) {
					t.Fatalf("round %d: %v", round, err)
				}
			}
			if tr.Len() != ref.Len() {
				t.Fatalf("round %d: %d operations held, want %d", round, tr.Len(), ref.Len())
			}
			if got := tr.State().Hash(); got != want {
				t.Fatalf("round %d: a replica that got the same operations in another order has another state", round)
			}
		}
	}
}

// A removed admin signs operations as if it had not been removed: on top
// of its removal (not a member there), or forked from above it — alone,
// or removing the admin who removed it, or after a long run of its own
// operations. None of it changes the state, whatever arrives first.
func TestRemovedMemberCannotReturn(t *testing.T) {
	a, b, x, y := account(t, 1), account(t, 2), account(t, 3), account(t, 4)
	create, tr := newGroup(t, a, "g", b, x)
	px := after(t, create, a, Op{Type: OpPromote, Target: x.Public()})
	pb := after(t, px, a, Op{Type: OpPromote, Target: b.Public()}) // b junior to x
	rename := after(t, pb, b, Op{Type: OpRename, Name: "before"})
	rm := after(t, rename, a, Op{Type: OpRemove, Target: x.Public(), Commit: commit(9)})
	later := after(t, rm, b, Op{Type: OpRename, Name: "after"})
	honest := []*Op{px, pb, rename, rm, later}
	for _, o := range honest {
		add(t, tr, o)
	}
	want := tr.State()
	if want.IsMember(x.Public()) || want.Name != "after" {
		t.Fatalf("honest state: %+v", want)
	}

	if err := tr.Add(after(t, later, x, Op{Type: OpAdd, Accounts: []keys.AccountPublic{y.Public()}})); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("an operation by the removed member on the current head: %v", err)
	}
	// Forks from above the removal. x is senior to b, so at pb it would
	// win a plain seniority contest against b's rename.
	f1 := after(t, pb, x, Op{Type: OpRemove, Target: b.Public(), Commit: commit(10)})
	f2 := after(t, f1, x, Op{Type: OpAdd, Accounts: []keys.AccountPublic{y.Public()}})
	f3 := after(t, f2, x, Op{Type: OpRename, Name: "taken"})
	f4 := after(t, f3, x, Op{Type: OpRekey, Commit: commit(11)})
	g1 := after(t, rename, x, Op{Type: OpAdd, Accounts: []keys.AccountPublic{y.Public()}})
	forks := []*Op{f1, f2, f3, f4, g1}
	for _, o := range forks {
		add(t, tr, o) // valid where they hang, so held...
	}
	if got := tr.State(); got.Hash() != want.Hash() {
		t.Fatalf("a removed admin's forks changed the state: %+v", got)
	}
	// ...and the same whatever came first.
	_, tr2 := newGroup(t, a, "g", b, x)
	for _, o := range append(append([]*Op{px, pb}, forks[:4]...), rename, g1, rm, later) {
		if err := tr2.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	if got := tr2.State(); got.Hash() != want.Hash() {
		t.Fatalf("forks that arrived before the removal changed the state: %+v", got)
	}
}

// A removal by a senior admin concurrent with the removed admin's own
// change: the removal's branch wins even when the removed admin is the
// more senior of the two authors at the fork.
func TestConcurrentRemovalWins(t *testing.T) {
	a, b, x := account(t, 1), account(t, 2), account(t, 3)
	create, tr := newGroup(t, a, "g", b, x)
	px := after(t, create, a, Op{Type: OpPromote, Target: x.Public()})
	pb := after(t, px, a, Op{Type: OpPromote, Target: b.Public()})
	// b (junior) renames; x (senior to b) renames at the same point; a
	// removes x on top of b's rename.
	rb := after(t, pb, b, Op{Type: OpRename, Name: "b's"})
	rx := after(t, pb, x, Op{Type: OpRename, Name: "x's"})
	rm := after(t, rb, a, Op{Type: OpRemove, Target: x.Public(), Commit: commit(5)})
	for _, o := range []*Op{px, pb, rx, rb} {
		add(t, tr, o)
	}
	if s := tr.State(); s.Name != "x's" {
		t.Fatalf("before the removal, the more senior author's change should win: %q", s.Name)
	}
	add(t, tr, rm)
	if s := tr.State(); s.Name != "b's" || s.IsMember(x.Public()) {
		t.Fatalf("after the removal: name %q, x member %v", s.Name, s.IsMember(x.Public()))
	}
}

func TestOrphansBounded(t *testing.T) {
	a, b := account(t, 1), account(t, 2)
	create, tr := newGroup(t, a, "g", b)
	for i := range MaxOrphanOps + 10 {
		o := mustOp(t, a, Op{Group: create.Group, Parent: [32]byte{byte(i), 1}, Seq: 1, Type: OpRename, Name: "x"})
		if err := tr.Add(o); !errors.Is(err, ErrOrphan) {
			t.Fatalf("an operation with an unknown parent: %v", err)
		}
	}
	if len(tr.orphans) != MaxOrphanOps {
		t.Fatalf("%d orphans held, want at most %d", len(tr.orphans), MaxOrphanOps)
	}
}
