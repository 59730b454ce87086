package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/node"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
)

// startNode initialises, opens and starts a node on loopback that
// bootstraps from boot.
func startNode(t *testing.T, ctx context.Context, boot *p2p.Host, name string) *node.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if _, err := node.Init(dir, name, nil); err != nil {
		t.Fatalf("Init %s: %v", name, err)
	}
	n, err := node.Open(node.Config{DataDir: dir, ListenAddrs: p2ptest.LoopbackAddrs,
		Bootstrap: []peer.AddrInfo{boot.AddrInfo()}, NoMDNS: true, NoNAT: true})
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	if err := n.Start(ctx); err != nil {
		t.Fatalf("Start %s: %v", name, err)
	}
	return n
}

// nextEvent returns the first event on evs of type typ for which ok
// holds, failing the test when ctx ends first.
func nextEvent(t *testing.T, ctx context.Context, evs <-chan api.Event, typ api.EventType, ok func(api.Event) bool) api.Event {
	t.Helper()
	for {
		select {
		case ev, open := <-evs:
			if !open {
				t.Fatalf("event stream ended before a %s event", typ)
			}
			if ev.Type == typ && ok(ev) {
				return ev
			}
		case <-ctx.Done():
			t.Fatalf("no %s event as expected: %v", typ, ctx.Err())
		}
	}
}

// TestNodeBackendGroups runs three real nodes on loopback, alice's and
// bob's served over sockets: alice creates a group with bob and carol
// and sends to it; bob sees the group and the message as events and in
// the listing, paged; the message reaches delivered 2/2; bob, not an
// admin, may not remove carol; alice removes carol, who may then not
// send; the API's errors carry their codes and statuses over the socket.
func TestNodeBackendGroups(t *testing.T) {
	ctx := testkit.Context(t, 2*time.Minute)
	boot := p2ptest.NewHost(t, p2p.WithBundleVerifier(p2p.VerifyBundle))
	nodes := map[string]*node.Node{}
	backends := map[string]api.Backend{}
	for _, name := range []string{"alice", "bob", "carol"} {
		nodes[name] = startNode(t, ctx, boot, name)
		backends[name] = api.NodeBackend(nodes[name])
	}
	alice, bob, carol := serveSocket(t, ctx, backends["alice"]), serveSocket(t, ctx, backends["bob"]), backends["carol"]
	backends["alice"], backends["bob"] = alice, bob
	for i, a := range []string{"alice", "bob", "carol"} {
		for _, b := range []string{"alice", "bob", "carol"}[i+1:] {
			if _, err := backends[a].AddContact(ctx, b, inviteOf(t, nodes[b])); err != nil {
				t.Fatal(err)
			}
			if _, err := backends[b].AddContact(ctx, a, inviteOf(t, nodes[a])); err != nil {
				t.Fatal(err)
			}
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	aliceEvents, err := alice.Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}
	bobEvents, err := bob.Subscribe(sctx)
	if err != nil {
		t.Fatal(err)
	}

	if gs, err := alice.Groups(ctx); err != nil || gs == nil || len(gs) != 0 {
		t.Fatalf("Groups before creating one = %#v, %v; want an empty list", gs, err)
	}
	g, err := alice.CreateGroup(ctx, "friends", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.ID) != 64 || g.Name != "friends" || !g.Admin || g.Left || len(g.Members) != 3 {
		t.Fatalf("CreateGroup = %+v", g)
	}
	want := map[string]api.GroupMember{
		nodes["alice"].Identity().Fingerprint: {Account: nodes["alice"].Identity().Fingerprint, Admin: true, Me: true},
		nodes["bob"].Identity().Fingerprint:   {Account: nodes["bob"].Identity().Fingerprint, Name: "bob"},
		nodes["carol"].Identity().Fingerprint: {Account: nodes["carol"].Identity().Fingerprint, Name: "carol"},
	}
	for _, m := range g.Members {
		if m != want[m.Account] {
			t.Errorf("member %+v, want %+v", m, want[m.Account])
		}
	}
	if gs, err := alice.Groups(ctx); err != nil || len(gs) != 1 || gs[0].ID != g.ID {
		t.Errorf("Groups = %+v, %v", gs, err)
	}

	// Bob joins: a group event, then the group by its ID.
	nextEvent(t, ctx, bobEvents, api.EventGroup, func(ev api.Event) bool { return ev.Group.ID == g.ID })
	testkit.WaitFor(t, ctx, func() bool {
		bg, err := bob.GroupInfo(ctx, g.ID)
		return err == nil && len(bg.Members) == 3 && !bg.Admin && bg.Name == "friends"
	})
	testkit.WaitFor(t, ctx, func() bool {
		_, err := carol.GroupInfo(ctx, g.ID)
		return err == nil
	})

	sent, err := alice.SendGroup(ctx, g.ID, "hello group")
	if err != nil {
		t.Fatal(err)
	}
	if sent.Group != g.ID || sent.Direction != api.DirectionOut || sent.Text != "hello group" || len(sent.ID) != 32 ||
		sent.Sender != nodes["alice"].Identity().Fingerprint || sent.SenderName != "" || sent.Recipients != 2 || sent.Delivered != 0 {
		t.Errorf("SendGroup = %+v", sent)
	}
	ev := nextEvent(t, ctx, bobEvents, api.EventGroupMessage, func(ev api.Event) bool { return ev.GroupMessage.ID == sent.ID })
	if m := ev.GroupMessage; m.Direction != api.DirectionIn || m.Text != "hello group" || m.SenderName != "alice" ||
		m.Sender != sent.Sender || m.Group != g.ID || !m.SentAt.Equal(sent.SentAt) {
		t.Errorf("bob's event %+v, want alice's message %+v", m, sent)
	}
	// Receipts come in batches: delivered 2/2, as an event and listed.
	nextEvent(t, ctx, aliceEvents, api.EventGroupMessage, func(ev api.Event) bool {
		return ev.GroupMessage.ID == sent.ID && ev.GroupMessage.Delivered == 2
	})
	if ms, err := alice.GroupMessages(ctx, g.ID, 0, 0); err != nil || len(ms) != 1 || ms[0].Delivered != 2 || ms[0].Recipients != 2 {
		t.Errorf("alice's GroupMessages = %+v, %v; want one, delivered 2/2", ms, err)
	}

	if st, err := alice.Status(ctx); err != nil || st.GroupDrops.Malformed+st.GroupDrops.Forged+st.GroupDrops.NotMember+st.GroupDrops.Unknown != 0 {
		t.Errorf("alice's group_drops %+v, %v; want none malformed, forged, from strangers or unknown", st.GroupDrops, err)
	}

	// Two more from bob; paging by skip and limit, in display order.
	for _, text := range []string{"second", "third"} {
		if _, err := bob.SendGroup(ctx, g.ID, text); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		skip, limit int
		want        string
	}{
		{0, 0, "hello group|second|third"},
		{1, 1, "second"},
		{2, 10, "third"},
		{3, 10, ""},
	} {
		ms, err := bob.GroupMessages(ctx, g.ID, tt.skip, tt.limit)
		var got []string
		for _, m := range ms {
			got = append(got, m.Text)
		}
		if err != nil || ms == nil || strings.Join(got, "|") != tt.want {
			t.Errorf("GroupMessages skip %d limit %d = %q (%#v), %v; want %q", tt.skip, tt.limit, got, ms, err, tt.want)
		}
	}

	// Errors, with their codes and statuses over the socket.
	unknown := strings.Repeat("ab", 32)
	errs := []struct {
		name   string
		call   func() error
		code   string
		status int
	}{
		{"unknown group", func() error { _, err := alice.GroupInfo(ctx, unknown); return err }, api.CodeUnknownGroup, 404},
		{"send to unknown group", func() error { _, err := alice.SendGroup(ctx, unknown, "hi"); return err }, api.CodeUnknownGroup, 404},
		{"messages of unknown group", func() error { _, err := alice.GroupMessages(ctx, unknown, 0, 0); return err }, api.CodeUnknownGroup, 404},
		{"bad hex ID", func() error { _, err := alice.GroupInfo(ctx, "friends"); return err }, api.CodeBadRequest, 400},
		{"short ID", func() error { _, err := alice.SendGroup(ctx, g.ID[:10], "hi"); return err }, api.CodeBadRequest, 400},
		{"non-admin remove", func() error { _, err := bob.RemoveFromGroup(ctx, g.ID, "carol"); return err }, api.CodeNotGroupAdmin, 403},
		{"non-admin rename", func() error { _, err := bob.RenameGroup(ctx, g.ID, "mine"); return err }, api.CodeNotGroupAdmin, 403},
		{"oversize text", func() error {
			_, err := alice.SendGroup(ctx, g.ID, strings.Repeat("x", 60<<10))
			return err
		}, api.CodeBadRequest, 400},
		{"empty text", func() error { _, err := alice.SendGroup(ctx, g.ID, ""); return err }, api.CodeBadRequest, 400},
		{"unknown contact", func() error { _, err := alice.AddToGroup(ctx, g.ID, []string{"dave"}); return err }, api.CodeUnknownContact, 404},
		{"member already", func() error { _, err := alice.AddToGroup(ctx, g.ID, []string{"bob"}); return err }, api.CodeBadRequest, 400},
		{"empty name", func() error { _, err := alice.CreateGroup(ctx, "", nil); return err }, api.CodeBadRequest, 400},
		{"name too long", func() error { _, err := alice.RenameGroup(ctx, g.ID, strings.Repeat("n", 129)); return err }, api.CodeBadRequest, 400},
		{"bad limit", func() error { _, err := alice.GroupMessages(ctx, g.ID, 0, api.MaxGroupMessageLimit+1); return err }, api.CodeBadRequest, 400},
		{"bad skip", func() error { _, err := alice.GroupMessages(ctx, g.ID, -1, 0); return err }, api.CodeBadRequest, 400},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *api.Error
			if !errors.As(err, &e) || e.Code != tt.code || e.Status != tt.status {
				t.Fatalf("error %v (%T), want code %s status %d", err, err, tt.code, tt.status)
			}
			t.Logf("%s: %s", e.Code, e.Message)
			if strings.HasPrefix(e.Message, "node:") || strings.HasPrefix(e.Message, "group:") || strings.HasPrefix(e.Message, "api:") {
				t.Errorf("message %q keeps a package prefix", e.Message)
			}
		})
	}

	// Alice renames and promotes bob, then removes carol: carol sees
	// she left and may not send.
	if g2, err := alice.RenameGroup(ctx, g.ID, "old friends"); err != nil || g2.Name != "old friends" {
		t.Errorf("RenameGroup = %+v, %v", g2, err)
	}
	g2, err := alice.PromoteInGroup(ctx, g.ID, "bob")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range g2.Members {
		if m.Name == "bob" && !m.Admin {
			t.Errorf("bob not an admin after PromoteInGroup: %+v", g2)
		}
	}
	if g2, err = alice.RemoveFromGroup(ctx, g.ID, "carol"); err != nil || len(g2.Members) != 2 {
		t.Fatalf("RemoveFromGroup = %+v, %v", g2, err)
	}
	testkit.WaitFor(t, ctx, func() bool {
		cg, err := carol.GroupInfo(ctx, g.ID)
		return err == nil && cg.Left
	})
	_, err = carol.SendGroup(ctx, g.ID, "still here?")
	wantCode(t, err, api.CodeNotGroupMember)
	if !errors.Is(err, api.ErrNotGroupMember) {
		t.Errorf("errors.Is(%v, ErrNotGroupMember) is false", err)
	}
	_, err = alice.RemoveFromGroup(ctx, g.ID, "carol")
	wantCode(t, err, api.CodeBadRequest)

	// Bob leaves; the group stays listed, left.
	if g3, err := bob.LeaveGroup(ctx, g.ID); err != nil || !g3.Left {
		t.Errorf("LeaveGroup = %+v, %v", g3, err)
	}
	if gs, err := bob.Groups(ctx); err != nil || len(gs) != 1 || !gs[0].Left {
		t.Errorf("bob's Groups after leaving = %+v, %v", gs, err)
	}
}

// TestNodeBackendGroupsNotRunning: a node that is open but not running
// has not loaded its groups; every group request says to start it.
func TestNodeBackendGroupsNotRunning(t *testing.T) {
	ctx := testkit.Context(t, time.Minute)
	b := api.NodeBackend(openNode(t, "alice"))
	id := strings.Repeat("ab", 32)
	for name, call := range map[string]func() error{
		"list":     func() error { _, err := b.Groups(ctx); return err },
		"info":     func() error { _, err := b.GroupInfo(ctx, id); return err },
		"create":   func() error { _, err := b.CreateGroup(ctx, "friends", nil); return err },
		"rename":   func() error { _, err := b.RenameGroup(ctx, id, "x"); return err },
		"send":     func() error { _, err := b.SendGroup(ctx, id, "hi"); return err },
		"messages": func() error { _, err := b.GroupMessages(ctx, id, 0, 0); return err },
	} {
		err := call()
		wantCode(t, err, api.CodeUnavailable)
		if !strings.Contains(err.Error(), "sotto run") {
			t.Errorf("%s: %q does not say to run the node", name, err)
		}
	}
}

// TestGroupWire checks the JSON of the group endpoints, hand-made
// requests the server refuses before the backend sees them, and the group
// events on the stream, against the in-memory backend.
func TestGroupWire(t *testing.T) {
	s := serve(t, apitest.New("alice"))
	ctx := testContext(t)
	for _, name := range []string{"bob", "carol"} {
		if _, err := s.client.AddContact(ctx, name, apitest.InviteFor(name)); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.client.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.node.WaitSubscribers(ctx, 1); err != nil {
		t.Fatal(err)
	}
	hc := rawClient(s.path)

	status, body := do(t, hc, "POST", "http://sotto/v1/groups", `{"name":"friends","members":["bob"]}`, nil)
	var g map[string]any
	if err := json.Unmarshal(body, &g); status != 201 || err != nil {
		t.Fatalf("create: %d %s", status, body)
	}
	id, _ := g["id"].(string)
	if _, err := api.ParseGroupID(id); err != nil || g["name"] != "friends" || g["admin"] != true || g["left"] != false {
		t.Errorf("create answered %s", body)
	}
	members, _ := g["members"].([]any)
	if len(members) != 2 {
		t.Fatalf("members %s", body)
	}
	if m := members[1].(map[string]any); m["name"] != "bob" || m["admin"] != false || m["me"] != false || m["account"] == "" {
		t.Errorf("member %v, want bob with account, admin and me", m)
	}
	if ev := nextEvent(t, ctx, evs, api.EventGroup, func(api.Event) bool { return true }); ev.Group.ID != id {
		t.Errorf("group event %+v", ev.Group)
	}

	status, body = do(t, hc, "POST", "http://sotto/v1/groups/"+id+"/messages", `{"text":"hi all"}`, nil)
	var m map[string]any
	if err := json.Unmarshal(body, &m); status != 201 || err != nil {
		t.Fatalf("send: %d %s", status, body)
	}
	for _, k := range []string{"id", "group", "sender", "direction", "text", "sent_at", "received_at", "lamport", "seq", "delivered", "recipients"} {
		if _, ok := m[k]; !ok {
			t.Errorf("group message %s has no %q", body, k)
		}
	}
	if m["group"] != id || m["direction"] != "out" || m["text"] != "hi all" || m["recipients"] != float64(1) {
		t.Errorf("group message %s", body)
	}
	if ev := nextEvent(t, ctx, evs, api.EventGroupMessage, func(api.Event) bool { return true }); ev.GroupMessage.ID != m["id"] {
		t.Errorf("group message event %+v, want %v", ev.GroupMessage, m["id"])
	}
	if _, err := s.node.ReceiveGroup(id, "bob", "hi alice"); err != nil {
		t.Fatal(err)
	}
	status, body = do(t, hc, "GET", "http://sotto/v1/groups/"+id+"/messages?skip=1&limit=5", ``, nil)
	var ms []api.GroupMessage
	if err := json.Unmarshal(body, &ms); status != 200 || err != nil || len(ms) != 1 || ms[0].Text != "hi alice" || ms[0].SenderName != "bob" {
		t.Errorf("messages skip 1: %d %s", status, body)
	}

	other := strings.Repeat("0", 64)
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"list", "GET", "/v1/groups", ``, 200, ""},
		{"info", "GET", "/v1/groups/" + id, ``, 200, ""},
		{"bad hex", "GET", "/v1/groups/xyz", ``, 400, api.CodeBadRequest},
		{"bad hex send", "POST", "/v1/groups/" + id[:63] + "g/messages", `{"text":"x"}`, 400, api.CodeBadRequest},
		{"unknown group", "GET", "/v1/groups/" + other, ``, 404, api.CodeUnknownGroup},
		{"unknown group rename", "POST", "/v1/groups/" + other + "/rename", `{"name":"x"}`, 404, api.CodeUnknownGroup},
		{"create without name", "POST", "/v1/groups", `{"members":["bob"]}`, 400, api.CodeBadRequest},
		{"create unknown field", "POST", "/v1/groups", `{"name":"x","member":"bob"}`, 400, api.CodeBadRequest},
		{"create unknown contact", "POST", "/v1/groups", `{"name":"x","members":["eve"]}`, 404, api.CodeUnknownContact},
		{"add without members", "POST", "/v1/groups/" + id + "/add", `{"members":[]}`, 400, api.CodeBadRequest},
		{"remove without member", "POST", "/v1/groups/" + id + "/remove", `{}`, 400, api.CodeBadRequest},
		{"send empty", "POST", "/v1/groups/" + id + "/messages", `{"text":""}`, 400, api.CodeBadRequest},
		{"bad skip", "GET", "/v1/groups/" + id + "/messages?skip=-2", ``, 400, api.CodeBadRequest},
		{"bad limit", "GET", "/v1/groups/" + id + "/messages?limit=0", ``, 400, api.CodeBadRequest},
		{"wrong method", "GET", "/v1/groups/" + id + "/leave", ``, 405, api.CodeMethodNotAllowed},
		{"wrong method info", "POST", "/v1/groups/" + id, `{}`, 405, api.CodeMethodNotAllowed},
		{"add", "POST", "/v1/groups/" + id + "/add", `{"members":["carol"]}`, 200, ""},
		{"promote", "POST", "/v1/groups/" + id + "/promote", `{"member":"carol"}`, 200, ""},
		{"leave empty body", "POST", "/v1/groups/" + id + "/leave", ``, 200, ""},
		{"rename after leaving", "POST", "/v1/groups/" + id + "/rename", `{"name":"x"}`, 403, api.CodeNotGroupMember},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, hc, tt.method, "http://sotto"+tt.path, tt.body, nil)
			if status != tt.status {
				t.Fatalf("status %d, want %d (body %s)", status, tt.status, body)
			}
			if tt.code == "" {
				return
			}
			var e wireError
			if err := json.Unmarshal(body, &e); err != nil || e.Code != tt.code || e.Error == "" {
				t.Errorf("error body %s, want code %s", body, tt.code)
			}
		})
	}
}
