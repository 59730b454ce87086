package ui_test

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/store"
)

// TestBrowserKeyChange: when a contact's identity key changed (recorded
// in the store as the node records it on detection), the conversation
// shows a banner and refuses to send until the user decides on the
// safety-number screen; keeping the old key lifts the block.
func TestBrowserKeyChange(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two nodes and a browser")
	}
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
	alice.stop()
	alice.n.Close()
	db, err := store.Open(alice.dir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := keys.GenerateAccount(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *store.Tx) error {
		c, err := tx.GetContact(bob.n.Identity().Account)
		if err != nil {
			return err
		}
		c.KeyChange = &store.KeyChange{Account: [32]byte(other.Public()), Detected: time.Now()}
		return tx.PutContact(c)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	alice.startNode()
	alice.serve()

	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	b.openConversation("bob")
	b.wait("the key-change banner", `!!document.getElementById('key-banner')`)
	var blocked bool
	b.eval(`document.getElementById('compose').disabled && document.getElementById('send').disabled`, &blocked)
	if !blocked {
		t.Error("the send box is usable while the key change waits")
	}
	// Pressing Enter in the (disabled) box sends nothing.
	b.eval(`document.getElementById('compose').value = 'should not go', document.getElementById('composer').requestSubmit(), true`, nil)
	if ms, err := alice.n.Messages("bob", 0, 10); err != nil || len(ms) != 0 {
		t.Errorf("messages while blocked: %d, %v", len(ms), err)
	}
	b.do("open the safety number screen", chromedp.Click("#key-banner a"))
	b.wait("the key-change choice", `!!document.getElementById('reject-key')`)
	b.do("keep the old key", chromedp.Click("#reject-key"))
	b.wait("the old key kept", `document.getElementById('safety-result')?.textContent === 'The old key is kept.'`)
	b.openConversation("bob")
	b.wait("the banner gone and sending open", `!document.getElementById('key-banner') && !document.getElementById('compose').disabled`)
	b.typeMessage("after the decision")
	b.wait("the message sent", messageExpr("after the decision")+`.length === 1`)
}
