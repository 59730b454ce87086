package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
)

// TestGroupCommands runs the group commands against the in-memory
// backend: text and --json output, and GROUP resolved by name, by name
// ignoring case and by ID prefix, with an ambiguous name or prefix an
// error that lists the candidates.
func TestGroupCommands(t *testing.T) {
	node := apitest.New("alice")
	h, _ := offline(t, node)
	ctx := testContext(t)
	for _, name := range []string{"bob", "carol", "dave"} {
		if r := h.run(ctx, "contact", "add", name, apitest.InviteFor(name)); r.code != 0 {
			t.Fatalf("contact add %s: %+v", name, r)
		}
	}

	if r := h.run(ctx, "group", "list"); r.code != 0 || !strings.Contains(r.stdout, "No groups yet: create one with `sotto group create NAME CONTACT...`") {
		t.Errorf("group list with none: %+v", r)
	}
	if r := h.run(ctx, "group", "list", "--json"); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("group list --json with none: %+v", r)
	}
	if r := h.run(ctx, "send", "--group", "friends", "hi"); r.code != exitFailure ||
		r.stderr != "sotto: no group \"friends\": you have no groups yet; create one with `sotto group create NAME CONTACT...`\n" {
		t.Errorf("send to a group with none: %+v", r)
	}

	r := h.run(ctx, "group", "create", "friends", "bob", "carol")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Created the group friends (ID ") ||
		!strings.Contains(r.stdout, ") with bob, carol; you are its admin.\n") ||
		!strings.Contains(r.stdout, "Send to it with `sotto send --group friends TEXT`.") {
		t.Fatalf("group create: %+v", r)
	}
	r = h.run(ctx, "group", "create", "--json", "Friends", "dave")
	var second api.Group
	if err := json.Unmarshal([]byte(r.stdout), &second); r.code != 0 || err != nil || second.Name != "Friends" || len(second.Members) != 2 {
		t.Fatalf("group create --json: %+v %v", r, err)
	}
	r = h.run(ctx, "group", "create", "--json", "friends", "dave")
	var third api.Group
	if err := json.Unmarshal([]byte(r.stdout), &third); r.code != 0 || err != nil {
		t.Fatalf("group create --json: %+v %v", r, err)
	}

	r = h.run(ctx, "group", "list", "--json")
	var gs []api.Group
	if err := json.Unmarshal([]byte(r.stdout), &gs); r.code != 0 || err != nil || len(gs) != 3 {
		t.Fatalf("group list --json: %+v %v", r, err)
	}
	first := gs[0]
	if first.ID == third.ID || first.Name != "friends" {
		first = gs[1]
	}
	r = h.run(ctx, "group", "list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "NAME ") || !strings.Contains(r.stdout, first.ID[:12]) ||
		strings.Count(r.stdout, "admin") != 3 {
		t.Errorf("group list: %+v", r)
	}

	// Two groups named friends: the name is ambiguous, an ID prefix is
	// not; Friends matches exactly.
	r = h.run(ctx, "group", "info", "friends")
	if r.code != exitFailure || !strings.HasPrefix(r.stderr, `sotto: 2 groups named "friends": friends (ID `) ||
		!strings.Contains(r.stderr, first.ID[:12]) || !strings.Contains(r.stderr, third.ID[:12]) ||
		!strings.HasSuffix(r.stderr, "; name one by more of its ID\n") {
		t.Errorf("group info of an ambiguous name: %+v", r)
	}
	r = h.run(ctx, "group", "info", "--json", "Friends")
	var got api.Group
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 0 || err != nil || got.ID != second.ID {
		t.Errorf("group info Friends: %+v %v, want %s", r, err, second.ID)
	}
	r = h.run(ctx, "group", "info", first.ID[:8])
	if r.code != 0 || !strings.Contains(r.stdout, "ID:      "+first.ID+"\n") || !strings.Contains(r.stdout, "You:     admin\n") ||
		!strings.Contains(r.stdout, "\nyou ") || !strings.Contains(r.stdout, "\nbob ") || !strings.Contains(r.stdout, "\ncarol ") {
		t.Errorf("group info by ID prefix: %+v", r)
	}
	if r := h.run(ctx, "group", "info", first.ID[:3]); r.code != exitFailure || !strings.Contains(r.stderr, "no group \""+first.ID[:3]+"\": `sotto group list`") {
		t.Errorf("group info with 3 hex digits: %+v", r)
	}
	if r := h.run(ctx, "group", "info", "enemies"); r.code != exitFailure ||
		r.stderr != "sotto: no group \"enemies\": `sotto group list` lists your groups with their IDs\n" {
		t.Errorf("group info of an unknown name: %+v", r)
	}

	// Send and list, in text and JSON.
	r = h.run(ctx, "send", "--group", first.ID[:8], "hello", "friends")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Sent to friends (id g") || !strings.HasSuffix(r.stdout, "; 2 members to receive it)\n") {
		t.Errorf("send --group: %+v", r)
	}
	r = h.run(ctx, "send", "--json", "--group", "Friends", "hi dave")
	var line groupMessageLine
	if err := json.Unmarshal([]byte(r.stdout), &line); r.code != 0 || err != nil || line.Group != second.ID || line.Text != "hi dave" ||
		line.Direction != api.DirectionOut || line.Recipients != 1 {
		t.Errorf("send --group --json: %+v %v", r, err)
	}
	if _, err := node.ReceiveGroup(first.ID, "bob", "hi alice"); err != nil {
		t.Fatal(err)
	}
	r = h.run(ctx, "messages", "--group", first.ID[:8])
	if r.code != 0 || !strings.Contains(r.stdout, "  you: hello friends  (delivered 0/2)\n") || !strings.Contains(r.stdout, "  bob: hi alice\n") {
		t.Errorf("messages --group: %+v", r)
	}
	r = h.run(ctx, "messages", "--group", first.ID[:8], "--json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 {
		t.Fatalf("messages --group --json: %+v", r)
	}
	var in groupMessageLine
	if err := json.Unmarshal([]byte(lines[1]), &in); err != nil || in.SenderName != "bob" || in.Direction != api.DirectionIn ||
		in.Text != "hi alice" || in.Group != first.ID || in.Sender == "" || in.SentAt == "" {
		t.Errorf("messages --group --json line %q: %+v %v", lines[1], in, err)
	}

	// Changes.
	if r := h.run(ctx, "group", "add", first.ID[:8], "dave"); r.code != 0 || r.stdout != "friends now has 4 members: you, bob, carol, dave.\n" {
		t.Errorf("group add: %+v", r)
	}
	if r := h.run(ctx, "group", "remove", first.ID[:8], "carol"); r.code != 0 || r.stdout != "Removed from friends; it now has 3 members: you, bob, dave.\n" {
		t.Errorf("group remove: %+v", r)
	}
	if r := h.run(ctx, "group", "promote", first.ID[:8], "bob"); r.code != 0 || r.stdout != "Admins of friends: you, bob.\n" {
		t.Errorf("group promote: %+v", r)
	}
	if r := h.run(ctx, "group", "rename", first.ID[:8], "old friends"); r.code != 0 || r.stdout != "Renamed friends to old friends.\n" {
		t.Errorf("group rename: %+v", r)
	}
	r = h.run(ctx, "group", "leave", "--json", "old friends")
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 0 || err != nil || !got.Left || got.ID != first.ID {
		t.Errorf("group leave --json: %+v %v", r, err)
	}
	if r := h.run(ctx, "group", "rename", "old friends", "x"); r.code != exitFailure || r.stderr != "sotto: "+errNotMemberText+"\n" {
		t.Errorf("group rename after leaving: %+v", r)
	}
}

// errNotMemberText is what a node says to a change of a group left.
const errNotMemberText = "you are no longer a member of this group: you left or were removed; its messages stay readable"
