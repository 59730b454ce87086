package ui_test

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestBrowserConversation runs alice's and bob's nodes and a Chromium for
// each, side by side. They add each other by pasting invites into the
// interface; a message typed in alice's page appears in bob's without a
// reload and turns delivered in alice's; unread counts, the safety number
// screen, the status page, text that looks like HTML, an oversize message,
// a lost event stream and a contact gone offline follow.
func TestBrowserConversation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two nodes and two browsers")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice, bob := nw.newUser("alice"), nw.newUser("bob")
	ab, bb := newBrowser(t, ctx, "alice"), newBrowser(t, ctx, "bob")
	ab.login(alice)
	bb.login(bob)

	// Contacts from invites pasted in the interface.
	aliceInvite, bobInvite := ab.inviteText(), bb.inviteText()
	bb.addContact("alice", aliceInvite)
	ab.addContact("bob", bobInvite)
	bb.eval(`window.notReloaded = true`, nil)

	// Typed in alice's page (Shift+Enter is a new line, Enter sends);
	// shown in bob's, live; delivered in alice's.
	text := "hello bob\nsecond line"
	ab.do("type a two-line message",
		chromedp.Focus("#compose"),
		chromedp.KeyEvent("hello bob"),
		pressEnter(true),
		chromedp.KeyEvent("second line"),
		pressEnter(false))
	ab.wait("the message in alice's page", messageExpr(text)+`.length === 1`)
	var box string
	ab.eval(`document.getElementById('compose').value`, &box)
	if box != "" {
		t.Errorf("send box after sending: %q, want empty", box)
	}
	bb.wait("the message in bob's page, without a reload", messageExpr(text)+`.length === 1 && window.notReloaded === true`)
	var dir string
	bb.eval(messageExpr(text)+`[0].className`, &dir)
	if !strings.Contains(dir, "in") {
		t.Errorf("bob's element for the message has class %q, want an incoming message", dir)
	}
	ab.wait("the message delivered in alice's page", messageExpr(text)+`[0]?.querySelector('.state')?.dataset.state === 'delivered'`)
	var state string
	ab.eval(messageExpr(text)+`[0].querySelector('.state').textContent`, &state)
	if state != "Delivered" {
		t.Errorf("state shown %q", state)
	}

	// Unread counts: bob writes while alice looks at another screen.
	ab.goTo("#/status", "#status-list")
	if _, err := bob.n.Send(ctx, "alice", "are you there?"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.n.Send(ctx, "alice", "hello?"); err != nil {
		t.Fatal(err)
	}
	ab.wait("two unread from bob in the list", `document.querySelector('a.conv[data-contact="bob"] .badge')?.textContent === '2'`)
	var last string
	ab.eval(`document.querySelector('a.conv[data-contact="bob"] .conv-last').textContent`, &last)
	if last != "hello?" {
		t.Errorf("last message shown in the list: %q", last)
	}
	ab.openConversation("bob")
	ab.wait("the unread count cleared", `!document.querySelector('a.conv[data-contact="bob"] .badge')`)

	// The status page names the node and its peers.
	ab.goTo("#/status", "#status-list")
	var status string
	ab.eval(`document.getElementById('status-list').textContent`, &status)
	if !strings.Contains(status, alice.n.Identity().PeerID) || !strings.Contains(status, "Connected peers") {
		t.Errorf("status page: %q", status)
	}

	// The safety number is the same on both sides; alice marks bob verified.
	ab.goTo("#/safety/bob", "#safety-number")
	bb.goTo("#/safety/alice", "#safety-number")
	var an, bn string
	ab.eval(`document.getElementById('safety-number').textContent`, &an)
	bb.eval(`document.getElementById('safety-number').textContent`, &bn)
	if an == "" || an != bn {
		t.Errorf("safety numbers: alice sees %q, bob %q", an, bn)
	}
	ab.do("mark bob verified", chromedp.Click("#mark-verified"))
	ab.wait("bob verified", `!!document.getElementById('verified-note')`)
	ab.openConversation("bob")
	ab.wait("the verified badge", `document.getElementById('verified').textContent === 'Verified'`)
	bb.openConversation("alice")

	// Text that looks like HTML is text: no element is created, no script runs.
	xss := `<img src=x onerror=alert(1)>`
	ab.typeMessage(xss)
	bb.wait("the HTML-like message in bob's page", messageExpr(xss)+`.length === 1`)
	ab.wait("the HTML-like message in alice's page", messageExpr(xss)+`.length === 1`)
	for _, b := range []*browser{ab, bb} {
		var imgs int
		b.eval(`document.querySelectorAll('#messages img, #conversations img').length`, &imgs)
		if imgs != 0 || b.dialogCount() != 0 {
			t.Errorf("%s: %d img elements and dialogs %v after the HTML-like message", b.name, imgs, b.dialogs)
		}
	}
	var preview string
	ab.wait("the list preview", `document.querySelector('a.conv[data-contact="bob"] .conv-last')?.textContent === 'You: ' + `+js(xss))
	ab.eval(`document.querySelector('#conversations').querySelectorAll('img').length + ''`, &preview)
	if preview != "0" {
		t.Errorf("the conversation list holds %s img elements", preview)
	}

	// An oversize message gets the API's error, shown by the send box.
	ab.eval(`document.getElementById('compose').value = 'x'.repeat(60000), document.getElementById('send').click(), true`, nil)
	ab.wait("the oversize error", `document.getElementById('send-error').textContent.includes('longer than')`)
	var sendErr string
	ab.eval(`document.getElementById('send-error').textContent`, &sendErr)
	t.Logf("oversize message: %q", sendErr)
	var kept int
	ab.eval(`document.getElementById('compose').value.length`, &kept)
	if kept != 60000 {
		t.Errorf("the refused text was not kept in the send box (%d characters)", kept)
	}
	ab.eval(`document.getElementById('compose').value = '', true`, nil)

	// The event stream drops (the interface's server stops); bob writes
	// meanwhile; once it is back, the page fetches what it missed, once.
	ab.wait("the stream open", `document.getElementById('stream').dataset.state === 'open'`)
	var cursor uint64 // the newest message alice's page has seen
	all, err := alice.n.Messages("", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		cursor = max(cursor, m.GlobalSeq)
	}
	ab.eval(`performance.clearResourceTimings(), true`, nil)
	alice.stop()
	ab.wait("the page to notice", `document.getElementById('stream').dataset.state === 'reconnecting'`)
	missed := []string{"missed 1", "missed 2", "missed 3"}
	for _, m := range missed {
		if _, err := bob.n.Send(ctx, "alice", m); err != nil {
			t.Fatal(err)
		}
	}
	waitNode(t, ctx, "alice's node to receive the missed messages", func() bool {
		_, err := alice.nodeMessage("bob", missed[len(missed)-1])
		return err == nil
	})
	alice.serve()
	for _, m := range missed {
		ab.wait("missed message "+m, messageExpr(m)+`.length === 1`)
	}
	ab.wait("the stream open again", `document.getElementById('stream').dataset.state === 'open'`)
	ab.wait("the catch-up done", `!!document.getElementById('stream').dataset.caughtUp`)
	var dup string
	ab.eval(`(() => { const ids = [...document.querySelectorAll('#msg-list li')].map(e => e.dataset.id); return ids.length + '/' + new Set(ids).size })()`, &dup)
	if n := strings.Split(dup, "/"); n[0] != n[1] {
		t.Errorf("messages after reconnecting: %s elements/distinct ids", dup)
	}
	for _, m := range missed {
		var count int
		ab.eval(messageExpr(m)+`.length`, &count)
		if count != 1 {
			t.Errorf("%q shown %d times", m, count)
		}
	}
	// The catch-up asked for what came after the page's cursor.
	var afters []string
	ab.eval(`performance.getEntriesByType('resource').map(e => new URL(e.name)).filter(u => u.pathname === '/v1/messages' && u.searchParams.has('after') && !u.searchParams.has('contact')).map(u => u.searchParams.get('after'))`, &afters)
	if !slices.Contains(afters, strconv.FormatUint(cursor, 10)) {
		t.Errorf("catch-up requests with after=%v, want one with after=%d, the newest message before the drop", afters, cursor)
	}
	// And the stream works again: a new message arrives live.
	if _, err := bob.n.Send(ctx, "alice", "after the gap"); err != nil {
		t.Fatal(err)
	}
	ab.wait("a live message after reconnecting", messageExpr("after the gap")+`.length === 1`)
	if path := os.Getenv("SOTTO_UI_SCREENSHOT"); path != "" {
		ab.screenshot(path) // the README's picture: go test ./ui -run TestBrowserConversation with this set
	}

	// Bob goes offline: alice's page says so, and sending still works.
	bob.n.Close()
	waitNode(t, ctx, "alice to lose bob's connection", func() bool {
		st, err := alice.n.Status()
		if err != nil {
			return false
		}
		for _, c := range st.Connections {
			if c.Peer == bob.n.Identity().PeerID {
				return false
			}
		}
		return true
	})
	ab.openConversation("bob")
	ab.wait("the page to say bob is offline", `document.getElementById('presence').dataset.online === 'no'`)
	var presence string
	ab.eval(`document.getElementById('presence').textContent`, &presence)
	if !strings.Contains(presence, "not connected") || !strings.Contains(presence, "still send") {
		t.Errorf("presence line: %q", presence)
	}
	ab.typeMessage("for when you are back")
	ab.wait("the queued message", messageExpr("for when you are back")+`[0]?.querySelector('.state')?.dataset.state === 'queued'`)
	var queued string
	ab.eval(messageExpr("for when you are back")+`[0].querySelector('.state').textContent`, &queued)
	if !strings.Contains(queued, "Queued") {
		t.Errorf("queued message state: %q", queued)
	}
	var errShown bool
	ab.eval(`!document.getElementById('error').hidden || document.getElementById('send-error').textContent !== ''`, &errShown)
	if errShown {
		t.Error("sending to an offline contact showed an error")
	}
}
