package main

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
)

// TestGroupEndToEnd builds the real binary and runs four nodes on
// loopback: a bootstrap node, alice, bob and carol, each the others'
// contact. Alice creates a group with the commands a user types; bob and
// carol see it; a message sent with send --group shows at both with
// messages --group, and carol, following the group, sees it as it comes;
// alice sees it delivered 2/2.
func TestGroupEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs four nodes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("unix sockets and signals")
	}
	e := newE2E(t)
	users := []string{"alice", "bob", "carol"}
	for _, name := range append([]string{"boot"}, users...) {
		e.sotto("init", "--data", e.dir(name), "--name", name)
	}
	boot := e.start("boot")
	bootAddr := strings.TrimPrefix(boot.startupLine("address: /ip4/127.0.0.1/"), "address: ")
	invites := map[string]string{}
	for _, name := range users {
		e.start(name, "--bootstrap", bootAddr)
		invites[name] = strings.TrimSpace(e.sotto("invite", "--data", e.dir(name)))
	}
	for _, a := range users {
		for _, b := range users {
			if a != b {
				e.sotto("contact", "add", "--data", e.dir(a), b, invites[b])
			}
		}
	}

	out := e.sotto("group", "create", "--data", e.dir("alice"), "--json", "friends", "bob", "carol")
	var g api.Group
	if err := json.Unmarshal([]byte(out), &g); err != nil || len(g.ID) != 64 || g.Name != "friends" || !g.Admin || len(g.Members) != 3 {
		t.Fatalf("group create --json printed %q: %v", out, err)
	}
	for _, name := range []string{"bob", "carol"} {
		got := e.waitGroup(name, g.ID)
		if got.Name != "friends" || got.Admin || got.Left || len(got.Members) != 3 {
			t.Errorf("%s's group: %+v", name, got)
		}
	}
	if out := e.sotto("group", "info", "--data", e.dir("bob"), "friends"); !strings.Contains(out, "ID:      "+g.ID+"\n") ||
		!strings.Contains(out, "You:     member\n") || !strings.Contains(out, "\nalice ") {
		t.Errorf("bob's group info:\n%s", out)
	}

	// Carol follows the group before anything is sent to it.
	follow := e.spawn("follow", "messages", "--data", e.dir("carol"), "--group", g.ID[:8], "--follow", "--json")

	out = e.sotto("send", "--data", e.dir("alice"), "--json", "--group", "friends", "hello", "group")
	var sent groupMessageLine
	if err := json.Unmarshal([]byte(out), &sent); err != nil || sent.ID == "" || sent.Group != g.ID ||
		sent.Direction != api.DirectionOut || sent.Recipients != 2 {
		t.Fatalf("send --group --json printed %q: %v", out, err)
	}
	for _, name := range []string{"bob", "carol"} {
		m := e.waitGroupMessage(name, "friends", sent.ID, func(m groupMessageLine) bool { return true })
		if m.Text != "hello group" || m.SenderName != "alice" || m.Direction != api.DirectionIn || m.SentAt != sent.SentAt {
			t.Errorf("%s received %+v, want alice's %+v", name, m, sent)
		}
	}
	// Receipts come back in batches (delivered N/M).
	e.waitGroupMessage("alice", "friends", sent.ID, func(m groupMessageLine) bool { return m.Delivered == 2 && m.Recipients == 2 })
	if out := e.sotto("messages", "--data", e.dir("bob"), "--group", "friends"); !strings.Contains(out, "  alice: hello group\n") {
		t.Errorf("bob's messages --group:\n%s", out)
	}

	follow.waitUntil("alice's message", func(line string) bool {
		var m groupMessageLine
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("messages --group --follow --json printed %q: %v", line, err)
		}
		if m.Event != "" || m.ID != sent.ID || m.Text != "hello group" || m.SenderName != "alice" {
			t.Errorf("carol followed %+v, want alice's message %+v", m, sent)
		}
		return true
	})
	follow.stop()

	// Bob, no admin, may not remove carol.
	if _, err := e.try("group", "remove", "--data", e.dir("bob"), "friends", "carol"); err == nil ||
		!strings.Contains(err.Error(), "sotto: only an admin of the group may do this") {
		t.Errorf("group remove by bob: %v", err)
	}
}

// waitGroup polls name's groups until the group id is there.
func (e *e2e) waitGroup(name, id string) api.Group {
	e.t.Helper()
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	tick := time.NewTicker(e2ePoll)
	defer tick.Stop()
	for {
		var gs []api.Group
		out := e.sotto("group", "list", "--data", e.dir(name), "--json")
		if err := json.Unmarshal([]byte(out), &gs); err != nil {
			e.t.Fatalf("group list --json printed %q: %v", out, err)
		}
		for _, g := range gs {
			if g.ID == id {
				return g
			}
		}
		select {
		case <-deadline.C:
			e.t.Fatalf("%s: no group %s after %v; groups %+v", name, id, e2eWait, gs)
		case <-tick.C:
		}
	}
}

// waitGroupMessage polls name's messages of group until the message id
// is there and satisfies ok.
func (e *e2e) waitGroupMessage(name, group, id string, ok func(groupMessageLine) bool) groupMessageLine {
	e.t.Helper()
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	tick := time.NewTicker(e2ePoll)
	defer tick.Stop()
	var last groupMessageLine
	for {
		out := e.sotto("messages", "--data", e.dir(name), "--group", group, "--json")
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			var m groupMessageLine
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				e.t.Fatalf("messages --group --json printed %q: %v", line, err)
			}
			if m.ID == id {
				last = m
				if ok(m) {
					return m
				}
			}
		}
		select {
		case <-deadline.C:
			e.t.Fatalf("%s: group message %s not as expected after %v; last seen %+v", name, id, e2eWait, last)
		case <-tick.C:
		}
	}
}
