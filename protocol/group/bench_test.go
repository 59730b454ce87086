package group

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
)

const benchText = "a group message of ordinary length, about the size of a chat line"

// BenchmarkGroupSeal: one sealing per group message, whatever the group's
// size (the sender key is the same for every member).
func BenchmarkGroupSeal(b *testing.B) {
	f := newFixture(b, 2)
	inner := f.inner(b, 0, benchText)
	b.ReportAllocs()
	for b.Loop() {
		if f.send[0].Iteration == MaxSenderKeyMessages {
			f.send[0].Iteration = 0
		}
		if _, err := f.send[0].Seal(rand.Reader, f.g, f.epoch, f.expiry, inner); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGroupOpen: what each member spends on one message, the
// signature check (which the gossip validator also runs) included.
func BenchmarkGroupOpen(b *testing.B) {
	f := newFixture(b, 2)
	var envs []*protocol.Envelope
	var r *Receiver
	fresh := func() {
		k, err := NewSenderKey(rand.Reader, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		f.send[0] = k
		r = NewReceiver(f.id)
		if err := r.AddKey(f.members[0].Public(), k.Distribution(f.id)); err != nil {
			b.Fatal(err)
		}
		envs = envs[:0]
		for range 100 {
			envs = append(envs, f.seal(b, 0, benchText))
		}
	}
	fresh()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(envs) {
			b.StopTimer()
			fresh()
			i = 0
			b.StartTimer()
		}
		if _, err := r.Open(f.g, f.epoch, envs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkTreeAdd256: adding one operation to a 256-member group whose
// tree already holds 1,000 operations (the canonical chain is computed
// again on every add).
func BenchmarkTreeAdd256(b *testing.B) {
	admin := account(b, 1)
	var others []*keys.AccountPrivate
	for i := range MaxGroupMembers - 1 {
		others = append(others, account(b, 1000+i))
	}
	create, _ := newGroup(b, admin, "big", others...)
	var base []*Op
	head := create
	for i := range 1000 {
		head = after(b, head, admin, Op{Type: OpRekey, Commit: commit(byte(i))})
		base = append(base, head)
	}
	var ops []*Op
	for i := range 500 {
		head = after(b, head, admin, Op{Type: OpRename, Name: "n" + string(rune('a'+i%26))})
		ops = append(ops, head)
	}
	var tr *Tree
	build := func() {
		var err error
		if tr, err = NewTree(create); err != nil {
			b.Fatal(err)
		}
		for _, o := range base {
			add(b, tr, o)
		}
	}
	build()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(ops) {
			b.StopTimer()
			build()
			i = 0
			b.StartTimer()
		}
		if err := tr.Add(ops[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
