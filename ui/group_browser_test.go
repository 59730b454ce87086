package ui_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// deliveredTimeout bounds the wait for a group message's receipts: they
// come back in batches every 2 s.
const deliveredTimeout = 30 * time.Second

// openGroup opens the group id and waits until its messages are shown.
func (b *browser) openGroup(id string) {
	b.t.Helper()
	b.eval(`document.body.dataset.painted = '', location.hash = '#/', true`, nil)
	b.wait("the start screen", `!document.getElementById('msg-list')`)
	b.eval(fmt.Sprintf(`location.hash = '#/g/' + %s, true`, js(id)), nil)
	b.wait("the group "+id, fmt.Sprintf(`document.body.dataset.painted === %s`, js("group:"+id)))
}

// groupLinkExpr is an expression for the group id's link in the list.
func groupLinkExpr(id string) string {
	return fmt.Sprintf(`document.querySelector('#groups a.conv[data-group=%s]')`, js(id))
}

// messageTexts is an expression for the texts of the open list's
// messages, in the page's order.
const messageTexts = `[...document.querySelectorAll('#msg-list li.msg .text')].map(e => e.textContent)`

// TestBrowserGroup runs alice's, bob's and carol's nodes, contacts of
// each other, with a Chromium each. Alice creates a group with bob and
// carol in her page; it appears in bob's list without a reload; a
// message typed in alice's page appears in bob's and carol's with her
// name, live and in order, and turns "delivered 2/2" in hers; text that
// looks like HTML stays text; bob, not an admin, is refused when he
// tries to remove alice and sees why; alice removes carol, whose page
// then shows the group as left; bob leaves after confirming, and his
// page shows the group as left.
func TestBrowserGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three nodes and three browsers")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	users := []*user{nw.newUser("alice"), nw.newUser("bob"), nw.newUser("carol")}
	alice, bob, carol := users[0], users[1], users[2]
	for _, a := range users {
		for _, b := range users {
			if a == b {
				continue
			}
			inv, err := b.n.Invite()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.n.AddContact(b.name, inv); err != nil {
				t.Fatal(err)
			}
		}
	}
	ab, bb, cb := newBrowser(t, ctx, "alice"), newBrowser(t, ctx, "bob"), newBrowser(t, ctx, "carol")
	ab.login(alice)
	bb.login(bob)
	cb.login(carol)
	bb.eval(`window.notReloaded = true`, nil)

	// Alice creates the group: a name, bob and carol ticked.
	ab.goTo("#/newgroup", "#new-group-form")
	ab.do("fill in the new-group form",
		chromedp.SendKeys("#new-group-name", "friends"),
		chromedp.Click(`#new-group-form input[value="bob"]`),
		chromedp.Click(`#new-group-form input[value="carol"]`),
		chromedp.Click("#new-group-submit"))
	ab.wait("the new group open", `document.getElementById('group-title')?.textContent === 'friends' && document.body.dataset.painted?.startsWith('group:')`)
	var id string
	ab.eval(`location.hash.slice('#/g/'.length)`, &id)
	gs, err := alice.n.Groups()
	if err != nil || len(gs) != 1 || fmt.Sprintf("%x", gs[0].ID) != id || len(gs[0].Members) != 3 {
		t.Fatalf("alice's groups after creating one in the page (%s): %+v, %v", id, gs, err)
	}
	var members string
	ab.eval(`document.getElementById('members-link').textContent`, &members)
	if members != "Members (3)" {
		t.Errorf("alice's members link: %q", members)
	}

	// Bob's list shows it without a reload.
	bb.wait("the group in bob's list, without a reload", groupLinkExpr(id)+`?.querySelector('.conv-name').textContent === 'friends' && window.notReloaded === true`)
	cb.wait("the group in carol's list", groupLinkExpr(id)+` !== null`)
	bb.openGroup(id)
	cb.openGroup(id)
	bb.eval(`window.notReloaded = true`, nil)

	// Alice writes: live in bob's and carol's pages with her name, in
	// order; delivered to both in hers.
	first, second := "hello group", "second line of news"
	ab.typeMessage(first)
	ab.wait("the first message in alice's page", messageExpr(first)+`.length === 1`)
	ab.typeMessage(second)
	ab.wait("the second message in alice's page", messageExpr(second)+`.length === 1`)
	for _, b := range []*browser{bb, cb} {
		b.wait("alice's messages in "+b.name+"'s page", messageExpr(second)+`.length === 1 && `+messageExpr(first)+`.length === 1`)
		var sender string
		b.eval(messageExpr(first)+`[0].querySelector('.sender').textContent`, &sender)
		if sender != "alice:" { // "alice" and a colon for screen readers
			t.Errorf("%s: sender shown as %q", b.name, sender)
		}
	}
	var notReloaded bool
	bb.eval(`window.notReloaded === true`, &notReloaded)
	if !notReloaded {
		t.Error("bob's page reloaded to show the message")
	}
	var sender string
	ab.eval(messageExpr(first)+`[0].querySelector('.sender').textContent`, &sender)
	if sender != "You:" {
		t.Errorf("alice's own message shown from %q", sender)
	}
	ab.waitFor("alice's first message delivered to both", messageExpr(first)+`[0]?.querySelector('.delivered')?.textContent === 'delivered 2/2'`, deliveredTimeout)

	// Bob answers from his page: after alice's messages everywhere.
	reply := "reply from bob"
	bb.typeMessage(reply)
	for _, b := range []*browser{ab, bb, cb} {
		b.wait("bob's reply in "+b.name+"'s page", messageExpr(reply)+`.length === 1`)
		var texts []string
		b.eval(messageTexts, &texts)
		if i, j, k := slices.Index(texts, first), slices.Index(texts, second), slices.Index(texts, reply); !(i >= 0 && i < j && j < k) {
			t.Errorf("%s: messages in the order %q", b.name, texts)
		}
	}
	ab.wait("bob's name on his reply in alice's page", messageExpr(reply)+`[0].querySelector('.sender').textContent === 'bob:'`)

	// Text that looks like HTML is text, in the messages and the list.
	xss := `<img src=x onerror=alert(1)>`
	ab.typeMessage(xss)
	for _, b := range []*browser{ab, bb, cb} {
		b.wait("the HTML-like message in "+b.name+"'s page", messageExpr(xss)+`.length === 1`)
	}
	bb.wait("the HTML-like message as the group's last in bob's list", groupLinkExpr(id)+`?.querySelector('.conv-last').textContent === 'alice: ' + `+js(xss))
	for _, b := range []*browser{ab, bb, cb} {
		var imgs int
		b.eval(`document.querySelectorAll('#messages img, #groups img, #conversations img').length`, &imgs)
		if imgs != 0 || b.dialogCount() != 0 {
			t.Errorf("%s: %d img elements and dialogs %v after the HTML-like message", b.name, imgs, b.dialogs)
		}
	}

	// Bob is not an admin: removing alice is refused, with the reason.
	bb.goTo("#/members/"+id, "#members")
	bb.do("try to remove alice", chromedp.Click(`#members li[data-member="alice"] button.remove`))
	bb.wait("the refusal", `document.getElementById('members-error').textContent !== ''`)
	var refusal string
	bb.eval(`document.getElementById('members-error').textContent`, &refusal)
	if !strings.Contains(refusal, "only an admin") {
		t.Errorf("bob's refusal: %q", refusal)
	}
	var aliceListed bool
	bb.eval(`!!document.querySelector('#members li[data-member="alice"]')`, &aliceListed)
	if !aliceListed {
		t.Error("alice gone from bob's member list after a refused removal")
	}

	// Bob starts typing a new name (refused later, but his to try) when
	// alice removes carol: his member list follows, his typing stays.
	bb.do("type in the rename field", chromedp.Focus("#rename-name"), chromedp.KeyEvent(" club"))

	// Alice removes carol; carol's page, on the group, shows it as left.
	ab.goTo("#/members/"+id, "#members")
	var badge string
	ab.eval(`document.querySelector('#members li[data-member="me"] .tag')?.textContent || ''`, &badge)
	if badge != "Admin" {
		t.Errorf("alice's own admin badge: %q", badge)
	}
	ab.do("remove carol", chromedp.Click(`#members li[data-member="carol"] button.remove`))
	ab.wait("carol removed", `document.getElementById('members-result').textContent.startsWith('carol was removed') && !document.querySelector('#members li[data-member="carol"]')`)
	cb.wait("the group shown as left in carol's page", `document.getElementById('group-role')?.textContent === 'Left' && document.getElementById('compose').disabled && `+groupLinkExpr(id)+`?.querySelector('.tag')?.textContent === 'Left'`)
	var carolLeft bool
	cb.eval(`document.getElementById('group-note').dataset.left === 'true'`, &carolLeft)
	if !carolLeft {
		t.Error("carol's page does not say she is no longer a member")
	}

	bb.wait("carol gone from bob's member list", `!document.querySelector('#members li[data-member="carol"]')`)
	var typing string
	bb.eval(`document.activeElement.id + ' ' + document.getElementById('rename-name').value`, &typing)
	if typing != "rename-name friends club" {
		t.Errorf("bob's rename field after a live change: focus and value %q, want rename-name and \"friends club\"", typing)
	}

	// Bob leaves, after confirming; Escape first takes the question back.
	// (Once his node has carol's removal, so that his member list does not
	// change under the clicks.)
	waitNode(t, ctx, "carol gone from bob's group", func() bool {
		g, err := bob.n.Groups()
		return err == nil && len(g) == 1 && len(g[0].Members) == 2
	})
	bb.goTo("#/members/"+id, "#leave")
	bb.do("ask to leave", chromedp.Click("#leave"))
	bb.wait("the confirmation, focus on staying", `!document.getElementById('leave-confirm').hidden && document.activeElement.id === 'leave-cancel'`)
	bb.do("press Escape", chromedp.KeyEvent(kb.Escape))
	bb.wait("the question gone", `document.getElementById('leave-confirm').hidden && document.activeElement.id === 'leave'`)
	bb.do("leave", chromedp.Click("#leave"), chromedp.Click("#leave-yes"))
	bb.wait("bob left", `document.getElementById('members-result').textContent === 'You left friends.' && `+groupLinkExpr(id)+`?.querySelector('.tag')?.textContent === 'Left'`)
}

// TestBrowserGroupWindow opens a group of 300 messages: the page holds
// at most a window of them, the newest first; "Show earlier messages"
// moves it back and "Show the newest messages" returns, and a live
// message at the end keeps the window bounded. The sidebar's arrow keys
// reach the group, with the focus visible.
func TestBrowserGroupWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node and a browser")
	}
	const total, window = 300, 240 // window: groups.js's WINDOW
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice, bob := nw.newUser("alice"), nw.newUser("bob")
	inv, err := bob.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.n.AddContact("bob", inv); err != nil {
		t.Fatal(err)
	}
	g, err := alice.n.CreateGroup(ctx, "notes", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= total; i++ {
		if _, err := alice.n.SendGroup(ctx, g.ID, fmt.Sprintf("note %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	id := fmt.Sprintf("%x", g.ID)
	ab := newBrowser(t, ctx, "alice")
	ab.login(alice)

	// Arrow keys go from the conversation to the group.
	ab.wait("the group listed", groupLinkExpr(id)+` !== null`)
	ab.tabTo("conv:bob", 12)
	ab.do("press the down arrow", pressArrowDown())
	var onGroup, visible bool
	ab.eval(`document.activeElement === `+groupLinkExpr(id), &onGroup)
	ab.eval(focusVisibleExpr, &visible)
	if !onGroup || !visible {
		t.Errorf("after the down arrow: focus on the group %v, visible %v", onGroup, visible)
	}

	shown := func() (n int, first, last string) {
		var texts []string
		ab.eval(messageTexts, &texts)
		if len(texts) == 0 {
			return 0, "", ""
		}
		return len(texts), texts[0], texts[len(texts)-1]
	}
	// Opened by changing the hash twice in one task: the two events both
	// read the group's hash, and the screen is drawn once. (Drawn twice,
	// the second screen could replace the first after the test had
	// moved its window, and undo that.)
	ab.eval(`window.listsDrawn = 0;
		new MutationObserver((ms) => {
			for (const m of ms) for (const n of m.addedNodes) {
				if (n.id === 'msg-list' || (n.querySelector && n.querySelector('#msg-list'))) window.listsDrawn++;
			}
		}).observe(document.getElementById('main'), { childList: true, subtree: true });
		document.body.dataset.painted = '';
		location.hash = '#/';
		location.hash = '#/g/' + `+js(id)+`;
		true`, nil)
	ab.wait("the group "+id, `document.body.dataset.painted === `+js("group:"+id))
	var drawn int
	ab.eval(`window.listsDrawn`, &drawn)
	if drawn != 1 {
		t.Errorf("the group's screen was drawn %d times for one hash", drawn)
	}
	n, first, last := shown()
	if n > window || last != fmt.Sprintf("note %d", total) {
		t.Errorf("on opening: %d messages shown, %q to %q; want at most %d, ending with the newest", n, first, last, window)
	}
	ab.wait("the earlier-messages button", `!document.getElementById('show-older').hidden`)
	for range total / 100 {
		_, before, _ := shown()
		ab.do("show earlier messages", chromedp.Click("#show-older"))
		ab.wait("the earlier messages", `document.querySelector('#msg-list li.msg .text')?.textContent !== `+js(before))
		if n, _, _ := shown(); n > window {
			t.Errorf("going back: %d messages shown", n)
		}
		var more bool
		ab.eval(`!document.getElementById('show-older').hidden`, &more)
		if !more {
			break
		}
	}
	ab.wait("note 1 shown", messageExpr("note 1")+`.length === 1`)
	n, first, _ = shown()
	if n > window || first != "note 1" {
		t.Errorf("after going back: %d messages shown from %q", n, first)
	}
	ab.do("show the newest", chromedp.Click("#show-newest"))
	ab.wait("the newest again", messageExpr(fmt.Sprintf("note %d", total))+`.length === 1 && document.getElementById('show-newest').hidden`)
	ab.typeMessage("one more")
	ab.wait("the live message", messageExpr("one more")+`.length === 1`)
	n, _, last = shown()
	if n > window || last != "one more" {
		t.Errorf("after a live message: %d shown, last %q", n, last)
	}
}
