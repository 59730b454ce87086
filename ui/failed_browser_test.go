package ui_test

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sotto-im/sotto/node"
)

// TestBrowserFailedMessage: a message that expires before anyone took it
// turns failed in the open conversation, live, and says why: the API's
// fail_reason ("expired") as a sentence; after a reload the listing says
// the same.
func TestBrowserFailedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two nodes and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	// alice's messages expire at once: the outbox's first look fails them.
	alice := nw.newUser("alice", func(c *node.Config) { c.MessageTTL = time.Nanosecond })
	bob := nw.newUser("bob")
	inv, err := bob.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.n.AddContact("bob", inv); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	b.openConversation("bob")
	b.eval(`window.notReloaded = true`, nil)
	b.typeMessage("never delivered")
	failed := messageExpr("never delivered") + `[0]?.querySelector('.state')`
	b.wait("the message failed, live", failed+`?.dataset.state === 'failed' && window.notReloaded === true`)
	var shown string
	b.eval(failed+`.textContent`, &shown)
	if !strings.HasPrefix(shown, "Failed: not delivered before it expired") || !strings.Contains(shown, "bob") {
		t.Errorf("failed message shows %q, want the reason: expired", shown)
	}
	m, err := alice.nodeMessage("bob", "never delivered")
	if err != nil || m.State != node.StateFailed || m.Failure != node.FailExpired {
		t.Fatalf("alice's node holds %+v, %v; want failed, expired", m, err)
	}

	b.do("reload", chromedp.Reload())
	b.wait("the app to start again", `document.body.dataset.ready === 'true' && document.body.dataset.painted === 'bob'`)
	var again string
	b.eval(failed+`?.textContent`, &again)
	if again != shown {
		t.Errorf("after a reload the failed message shows %q, before %q", again, shown)
	}
}
