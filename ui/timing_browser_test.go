package ui_test

import (
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sotto-im/sotto/node"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// seededMessages is the size of the conversation TestBrowserTiming opens.
const seededMessages = 10000

// TestBrowserTiming opens a conversation of 10,000 messages and reports
// the time from navigation to the first messages painted, and from an
// incoming message reaching the node to its element in the page. It
// checks that the page holds a bounded window of elements while older
// messages load on scroll. Timings are reported, never asserted.
func TestBrowserTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two nodes and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice, bob := nw.newUser("alice"), nw.newUser("bob")
	bobInvite, err := bob.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	aliceInvite, err := alice.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.n.AddContact("bob", bobInvite); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.n.AddContact("alice", aliceInvite); err != nil {
		t.Fatal(err)
	}
	bobAcct := bob.n.Identity().Account

	// The history goes straight into alice's store, as the node keeps
	// messages; sending 10,000 over the network would time the network.
	alice.stop()
	alice.n.Close()
	db, err := store.Open(alice.dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-seededMessages * time.Second)
	for batch := 0; batch < seededMessages; batch += 1000 {
		err := db.Update(func(tx *store.Tx) error {
			for i := batch; i < batch+1000; i++ {
				m := store.Message{Contact: bobAcct, Type: uint8(protocol.ContentText),
					Body: fmt.Appendf(nil, "seeded message %d", i), SentAt: start.Add(time.Duration(i) * time.Second)}
				m.ReceivedAt = m.SentAt
				rand.Read(m.ID[:])
				if i%2 == 0 {
					m.Direction, m.State = store.Outgoing, store.StateDelivered
				} else {
					m.Direction, m.PeerSeq = store.Incoming, uint64(i)
				}
				if _, err := tx.AppendMessage(m); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	alice.startNode()
	alice.serve()

	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	// Navigation to painted, on fresh loads of the conversation's address.
	var paint []float64
	for range 7 {
		b.do("leave", chromedp.Navigate("about:blank"))
		b.do("open the conversation", chromedp.Navigate(alice.base()+"/#/c/bob"))
		b.wait("the first messages painted", `document.body.dataset.painted === 'bob'`)
		var ms float64
		b.eval(`performance.getEntriesByName('sotto:conversation-painted')[0].startTime`, &ms)
		paint = append(paint, ms)
	}
	var shown int
	b.eval(`document.querySelectorAll('#msg-list li').length`, &shown)
	if shown == 0 || shown > 300 {
		t.Errorf("%d message elements after opening, want a window of at most 300", shown)
	}

	// Scrolling up loads older messages; the page keeps a window.
	var firstSeq int
	b.eval(`+document.querySelector('#msg-list li').dataset.seq`, &firstSeq)
	for range 12 {
		prev := firstSeq
		b.eval(`document.getElementById('messages').scrollTop = 0, true`, nil)
		b.wait("older messages", fmt.Sprintf(`+document.querySelector('#msg-list li').dataset.seq < %d`, prev))
		b.eval(`+document.querySelector('#msg-list li').dataset.seq`, &firstSeq)
		b.eval(`document.querySelectorAll('#msg-list li').length`, &shown)
		if shown > 300 {
			t.Fatalf("%d message elements in the page after scrolling, want at most 300", shown)
		}
	}

	// Incoming message to element: the node's event (in this process) to
	// the element's insertion (a MutationObserver in the page), on one
	// wall clock.
	b.openConversation("bob") // back to the newest, where new messages show
	b.eval(`window.seen = {}, new MutationObserver((rs) => { const now = performance.timeOrigin + performance.now();
		for (const r of rs) for (const n of r.addedNodes) if (n.dataset && n.dataset.id) window.seen[n.querySelector('.text').textContent] = now; })
		.observe(document.getElementById('msg-list'), { childList: true }), true`, nil)
	events := alice.n.Subscribe(ctx)
	var live []float64
	for i := range 7 {
		text := fmt.Sprintf("live message %d", i)
		if _, err := bob.n.Send(ctx, "alice", text); err != nil {
			t.Fatal(err)
		}
		var at time.Time
		for at.IsZero() {
			select {
			case ev := <-events:
				if ev.Type == node.EventMessage && ev.Message != nil && ev.Message.Text() == text {
					at = time.Now()
				}
			case <-ctx.Done():
				t.Fatal("no event for the live message")
			}
		}
		b.wait("the live message in the page", fmt.Sprintf(`window.seen[%s] !== undefined`, js(text)))
		var seen float64
		b.eval(fmt.Sprintf(`window.seen[%s]`, js(text)), &seen)
		live = append(live, seen-float64(at.UnixMicro())/1000)
	}
	t.Logf("navigation to first messages painted (%d messages): %s", seededMessages, summary(paint))
	t.Logf("incoming message at the node to its element in the page: %s", summary(live))
}

// summary is "median X ms (min Y, max Z, n N)".
func summary(xs []float64) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("median %.1f ms (min %.1f, max %.1f, n %d)", s[len(s)/2], s[0], s[len(s)-1], len(s))
}
