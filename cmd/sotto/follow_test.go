package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestFollowWaitsForNode runs `messages --follow --json` while no node
// runs: it prints the stored messages and waits without holding the data
// directory, so `sotto run` starts; it then follows the node, printing a
// message sent afterwards and the message's state changes.
func TestFollowWaitsForNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs two nodes")
	}
	e := newE2E(t)
	for _, name := range []string{"alice", "bob"} {
		e.sotto("init", "--data", e.dir(name), "--name", name)
	}
	bob := e.start("bob")
	bobAddr := strings.TrimPrefix(bob.startupLine("address: /ip4/127.0.0.1/"), "address: ")
	bobInvite := strings.TrimSpace(e.sotto("invite", "--data", e.dir("bob")))
	aliceInvite := strings.TrimSpace(e.sotto("invite", "--data", e.dir("alice")))
	e.sotto("contact", "add", "--data", e.dir("alice"), "bob", bobInvite)
	e.sotto("contact", "add", "--data", e.dir("bob"), "alice", aliceInvite)
	e.sotto("send", "--data", e.dir("alice"), "bob", "written before the follow")

	follow := e.spawn("follow", "messages", "--data", e.dir("alice"), "--follow", "--json")
	follow.waitUntil("the stored message", func(line string) bool {
		return strings.Contains(line, `"text":"written before the follow"`)
	})
	follow.waitLog("No node is running for " + e.dir("alice") + "; waiting for one to start")

	// The follower does not hold the data directory: the node starts.
	e.start("alice", "--bootstrap", bobAddr)
	follow.waitLog("A node is running for " + e.dir("alice") + "; following it.")

	out := e.sotto("send", "--data", e.dir("alice"), "--json", "bob", "sent while following")
	var sent messageLine
	if err := json.Unmarshal([]byte(out), &sent); err != nil || sent.ID == "" {
		t.Fatalf("send --json printed %q: %v", out, err)
	}
	var lines []messageLine
	follow.waitUntil("the message delivered", func(line string) bool {
		var m messageLine
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("follow printed %q: %v", line, err)
		}
		if m.ID == sent.ID {
			lines = append(lines, m)
		}
		return m.ID == sent.ID && m.State == "delivered"
	})
	first, changes := lines[0], lines[1:]
	if first.Event != "" || first.Text != "sent while following" || first.State != "queued" || first.Direction != "out" {
		t.Errorf("first line of the message: %+v, want the queued message without an event", first)
	}
	var states []string
	for _, m := range changes {
		states = append(states, string(m.State))
		if m.Event != "state" || m.Text != first.Text || m.Seq != first.Seq || m.Contact != "bob" {
			t.Errorf("state change line %+v: want the message's line with \"event\":\"state\"", m)
		}
	}
	if len(states) == 0 || states[len(states)-1] != "delivered" {
		t.Errorf("state changes %v, want them to end with delivered", states)
	}
	follow.stop()
}
