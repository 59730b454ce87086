package api_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
)

// TestNodeBackendBefore pages a conversation backwards with Before, as a
// reader scrolling up does, across messages of another conversation.
func TestNodeBackendBefore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice := openNode(t, "alice")
	b := api.NodeBackend(alice)
	for _, name := range []string{"bob", "carol"} {
		if _, err := b.AddContact(ctx, name, inviteOf(t, openNode(t, name))); err != nil {
			t.Fatal(err)
		}
	}
	var bob []api.Message
	for i := range 40 {
		to := "bob"
		if i%3 == 0 {
			to = "carol"
		}
		m, err := b.Send(ctx, to, fmt.Sprint("message ", i))
		if err != nil {
			t.Fatal(err)
		}
		if to == "bob" {
			bob = append(bob, m)
		}
	}
	for _, limit := range []int{1, 5, 26, 100} {
		var got []api.Message
		before := uint64(1 << 50)
		for range len(bob) + 1 {
			ms, err := b.Messages(ctx, api.MessageQuery{Contact: "bob", Before: before, Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(ms))
			}
			if len(ms) == 0 {
				break
			}
			for i := 1; i < len(ms); i++ {
				if ms[i].Seq <= ms[i-1].Seq {
					t.Fatalf("limit %d: page not ascending: %v", limit, ms)
				}
			}
			got = append(append([]api.Message(nil), ms...), got...)
			before = ms[0].Seq
		}
		if fmt.Sprint(got) != fmt.Sprint(bob) {
			t.Errorf("limit %d: paging back gave\n%v\nwant\n%v", limit, got, bob)
		}
	}
	ms, err := b.Messages(ctx, api.MessageQuery{Contact: "bob", After: bob[20].Seq, Before: bob[23].Seq, Limit: 10})
	if err != nil || fmt.Sprint(ms) != fmt.Sprint(bob[21:23]) {
		t.Errorf("between two seqs: %v, %v; want %v", ms, err, bob[21:23])
	}
}

// TestNodeBackendConversations checks the summaries, the read marks and
// that they survive a new backend over the same file.
func TestNodeBackendConversations(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice := openNode(t, "alice")
	marks := filepath.Join(t.TempDir(), api.ReadMarksFile)
	b := api.NodeBackend(alice, api.WithReadMarks(marks))
	for _, name := range []string{"bob", "carol", "dave"} {
		if _, err := b.AddContact(ctx, name, inviteOf(t, openNode(t, name))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Send(ctx, "carol", "first"); err != nil {
		t.Fatal(err)
	}
	last, err := b.Send(ctx, "bob", "second")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := b.Conversations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, c := range cs {
		order = append(order, c.Contact.Name)
	}
	if fmt.Sprint(order) != "[bob carol dave]" || cs[0].Last == nil || *cs[0].Last != last || cs[2].Last != nil {
		t.Errorf("Conversations = %+v, want bob (newest), carol, dave (no messages)", cs)
	}
	if err := b.MarkRead(ctx, "bob", last.Seq); err != nil {
		t.Fatal(err)
	}
	if err := b.MarkRead(ctx, "bob", 1); err != nil { // never moves back
		t.Fatal(err)
	}
	wantCode(t, b.MarkRead(ctx, "erin", 1), api.CodeUnknownContact)
	fi, err := os.Stat(marks)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("read marks file: %v, %v; want mode 0600", fi, err)
	}
	cs, err = api.NodeBackend(alice, api.WithReadMarks(marks)).Conversations(ctx)
	if err != nil || cs[0].ReadSeq != last.Seq {
		t.Errorf("after reopening: %+v, %v; want bob read up to %d", cs, err, last.Seq)
	}
}
