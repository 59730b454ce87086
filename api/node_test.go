package api_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/invite"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/node"
)

// openNode initialises and opens a node in a fresh directory, without
// starting its network.
func openNode(t *testing.T, name string) *node.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if _, err := node.Init(dir, name, nil); err != nil {
		t.Fatalf("Init %s: %v", name, err)
	}
	n, err := node.Open(node.Config{DataDir: dir, NoMDNS: true, NoNAT: true})
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func inviteOf(t *testing.T, n *node.Node) string {
	t.Helper()
	inv, err := n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v (%T), want code %s", err, err, code)
	}
}

func TestNodeBackendIdentityAndContacts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, bob := openNode(t, "alice"), openNode(t, "bob")
	b := api.NodeBackend(alice)

	id, err := b.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "alice" || id.PeerID != alice.Identity().PeerID || id.Account != alice.Identity().Fingerprint {
		t.Errorf("Identity = %+v", id)
	}
	inv, err := b.Invite(ctx)
	if err != nil || !strings.HasPrefix(inv, invite.Scheme) {
		t.Fatalf("Invite = %q, %v", inv, err)
	}

	cs, err := b.Contacts(ctx)
	if err != nil || cs == nil || len(cs) != 0 {
		t.Fatalf("Contacts before adding = %#v, %v; want an empty list", cs, err)
	}
	c, err := b.AddContact(ctx, "bob", inviteOf(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	want := api.Contact{Name: "bob", Account: bob.Identity().Fingerprint, PeerID: bob.Identity().PeerID}
	if c != want {
		t.Errorf("AddContact = %+v, want %+v", c, want)
	}
	if cs, err = b.Contacts(ctx); err != nil || len(cs) != 1 || cs[0] != want {
		t.Errorf("Contacts = %+v, %v", cs, err)
	}

	tests := []struct {
		name, contact, invite, code string
	}{
		{"malformed", "carol", "sotto://not-an-invite", api.CodeBadInvite},
		{"not a link", "carol", "hello", api.CodeBadInvite},
		{"damaged", "carol", damage(inviteOf(t, bob)), api.CodeBadInvite},
		{"own invite", "me", inv, api.CodeBadInvite},
		{"same account again", "bobby", inviteOf(t, bob), api.CodeContactExists},
		{"name taken", "BOB", inviteOf(t, openNode(t, "carol")), api.CodeContactExists},
		{"invalid name", " ", inviteOf(t, openNode(t, "dave")), api.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.AddContact(ctx, tt.contact, tt.invite)
			wantCode(t, err, tt.code)
			if strings.HasPrefix(err.Error(), "node:") || strings.HasPrefix(err.Error(), "store:") {
				t.Errorf("message %q keeps the package prefix", err)
			}
		})
	}
	if cs, _ := b.Contacts(ctx); len(cs) != 1 {
		t.Errorf("refused invites added contacts: %+v", cs)
	}
}

// damage flips one character of an invite's base32 part.
func damage(inv string) string {
	i := len(inv) - 3
	c := byte('a')
	if inv[i] == 'a' {
		c = 'b'
	}
	return inv[:i] + string(c) + inv[i+1:]
}

func TestNodeBackendSendQueuesOffline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, bob := openNode(t, "alice"), openNode(t, "bob")
	b := api.NodeBackend(alice)

	_, err := b.Send(ctx, "bob", "hi")
	wantCode(t, err, api.CodeUnknownContact)
	if !strings.Contains(err.Error(), "no contacts yet") {
		t.Errorf("unknown contact without contacts: %q", err)
	}
	if _, err := b.AddContact(ctx, "bob", inviteOf(t, bob)); err != nil {
		t.Fatal(err)
	}
	_, err = b.Send(ctx, "bbo", "hi")
	if !errors.Is(err, api.ErrUnknownContact) || !strings.Contains(err.Error(), "known: bob") {
		t.Errorf("Send to a typo = %v, want unknown contact listing bob", err)
	}
	_, err = b.Send(ctx, "bob", "")
	wantCode(t, err, api.CodeBadRequest)

	evs, err := b.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	m, err := b.Send(ctx, "bob", "hello bob")
	if err != nil {
		t.Fatal(err)
	}
	if m.Contact != "bob" || m.Direction != api.DirectionOut || m.State != api.StateQueued ||
		m.Text != "hello bob" || len(m.ID) != 32 || m.Seq == 0 || m.SentAt.Before(before) || m.Via != "" {
		t.Errorf("Send = %+v", m)
	}
	select {
	case ev := <-evs:
		if ev.Type != api.EventMessage || ev.Message == nil || *ev.Message != m {
			t.Errorf("event %+v, want a message event for %+v", ev, m)
		}
	case <-ctx.Done():
		t.Fatal("no event for the queued message")
	}
	st, err := b.Status(ctx)
	if err != nil || st.OutboxPending != 1 || st.PeerID != alice.Identity().PeerID {
		t.Errorf("Status = %+v, %v; want one pending", st, err)
	}
}

func TestNodeBackendMessagesPaging(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice := openNode(t, "alice")
	b := api.NodeBackend(alice)
	for _, name := range []string{"bob", "carol"} {
		if _, err := b.AddContact(ctx, name, inviteOf(t, openNode(t, name))); err != nil {
			t.Fatal(err)
		}
	}
	// bob 1, carol 1, bob 2, bob 3, carol 2, bob 4, ...
	var sent []api.Message
	for i, to := range []string{"bob", "carol", "bob", "bob", "carol", "bob", "carol", "carol", "bob"} {
		m, err := b.Send(ctx, to, fmt.Sprintf("message %d", i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m)
	}

	// page reads every page of q with the given limit, passing the last
	// Seq back as the cursor.
	page := func(contact string, after uint64, limit int) []api.Message {
		var all []api.Message
		for range len(sent) + 1 {
			ms, err := b.Messages(ctx, api.MessageQuery{Contact: contact, After: after, Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) > limit {
				t.Fatalf("page of %d messages, limit %d", len(ms), limit)
			}
			all = append(all, ms...)
			if len(ms) < limit {
				return all
			}
			after = ms[len(ms)-1].Seq
		}
		t.Fatal("paging does not end")
		return nil
	}
	filter := func(contact string, after uint64) []api.Message {
		var out []api.Message
		for _, m := range sent {
			if (contact == "" || m.Contact == contact) && m.Seq > after {
				out = append(out, m)
			}
		}
		return out
	}
	for _, contact := range []string{"", "bob", "carol", "Carol"} {
		for _, limit := range []int{1, 2, 3, 100} {
			for _, after := range []uint64{0, sent[0].Seq, sent[1].Seq, sent[4].Seq, sent[len(sent)-1].Seq, 1 << 40} {
				got := page(contact, after, limit)
				want := filter(strings.ToLower(contact), after)
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("contact %q after %d limit %d:\n got %v\nwant %v", contact, after, limit, got, want)
				}
			}
		}
	}
	for i := 1; i < len(sent); i++ {
		if sent[i].Seq <= sent[i-1].Seq {
			t.Fatalf("Seq not increasing across conversations: %d then %d", sent[i-1].Seq, sent[i].Seq)
		}
	}
	_, err := b.Messages(ctx, api.MessageQuery{Contact: "dave"})
	wantCode(t, err, api.CodeUnknownContact)
}

func TestNodeBackendVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, bob := openNode(t, "alice"), openNode(t, "bob")
	b := api.NodeBackend(alice)
	if _, err := b.AddContact(ctx, "bob", inviteOf(t, bob)); err != nil {
		t.Fatal(err)
	}
	want := keys.SafetyNumber(keys.AccountPublic(alice.Identity().Account), keys.AccountPublic(bob.Identity().Account))
	v, err := b.VerifyContact(ctx, "bob", false)
	if err != nil || v != (api.Verification{Contact: "bob", SafetyNumber: want}) {
		t.Fatalf("VerifyContact = %+v, %v; want number %s, not verified", v, err, want)
	}
	if v, err = b.VerifyContact(ctx, "Bob", true); err != nil || !v.Verified || v.SafetyNumber != want || v.Contact != "bob" {
		t.Fatalf("VerifyContact confirm = %+v, %v", v, err)
	}
	if cs, _ := b.Contacts(ctx); len(cs) != 1 || !cs[0].Verified {
		t.Errorf("Contacts after confirming = %+v", cs)
	}
	_, err = b.VerifyContact(ctx, "carol", true)
	wantCode(t, err, api.CodeUnknownContact)
}

// TestNodeBackendOverSocket checks that the adapter's error codes survive
// the trip through the server and client.
func TestNodeBackendOverSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, bob := openNode(t, "alice"), openNode(t, "bob")
	dir := t.TempDir()
	path, err := api.SocketPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- api.NewServer(api.NodeBackend(alice)).Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := api.NewClient(path)
	defer c.Close()

	_, err = c.AddContact(ctx, "bob", "sotto://garbage")
	wantCode(t, err, api.CodeBadInvite)
	if _, err := c.AddContact(ctx, "bob", inviteOf(t, bob)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Send(ctx, "bobb", "hi")
	if e := (*api.Error)(nil); !errors.As(err, &e) || e.Status != 404 || !strings.Contains(e.Message, "known: bob") {
		t.Errorf("Send to unknown contact over the socket = %v", err)
	}
	m, err := c.Send(ctx, "bob", "hi")
	if err != nil || m.State != api.StateQueued {
		t.Fatalf("Send = %+v, %v", m, err)
	}
	ms, err := c.Messages(ctx, api.MessageQuery{Contact: "bob"})
	if err != nil || len(ms) != 1 || ms[0].ID != m.ID || !ms[0].SentAt.Equal(m.SentAt) {
		t.Errorf("Messages = %+v, %v", ms, err)
	}
}
