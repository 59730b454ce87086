package ui_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sotto-im/sotto/node"
)

// TestBrowserKeyChangeLive: bob reinstalls with a new account key on the
// same device and writes to alice straight from it. With the
// conversation open, alice's page shows the key-change banner from the
// event stream, without a reload, and pauses sending; the safety-number
// screen shows the number of the new key (the one the new bob computes);
// accepting it lifts the block, the new key's first message is in the
// conversation, and what alice types next reaches the new bob.
func TestBrowserKeyChangeLive(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three nodes and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice := nw.newUser("alice")

	// Two accounts on one device key: the account key comes from the
	// first 32 bytes Init draws, the device key from the next 32.
	deviceSeed := make([]byte, 32)
	rand.Read(deviceSeed)
	initOn := func(dir string) {
		t.Helper()
		acctSeed := make([]byte, 32)
		rand.Read(acctSeed)
		r := io.MultiReader(bytes.NewReader(append(acctSeed, deviceSeed...)), rand.Reader)
		if _, err := node.Init(dir, "bob", nil, node.InitWithRand(r)); err != nil {
			t.Fatal(err)
		}
	}
	oldDir, newDir := filepath.Join(t.TempDir(), "bob-old"), filepath.Join(t.TempDir(), "bob-new")
	initOn(oldDir)
	initOn(newDir)
	oldBob := nw.startUser("bob", oldDir)
	inv, err := oldBob.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.n.AddContact("bob", inv); err != nil {
		t.Fatal(err)
	}
	oldBob.stop()
	oldBob.n.Close()

	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	b.openConversation("bob")
	b.eval(`window.notReloaded = true`, nil)
	var open bool
	b.eval(`!document.getElementById('key-banner') && !document.getElementById('compose').disabled`, &open)
	if !open {
		t.Fatal("the conversation is blocked before any key change")
	}

	// The new account, on the same device, writes first and directly: a
	// proven key change.
	newBob := nw.startUser("bob", newDir, func(c *node.Config) { c.MailboxAfter = time.Hour })
	aliceInv, err := alice.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newBob.n.AddContact("alice", aliceInv); err != nil {
		t.Fatal(err)
	}
	if _, err := newBob.n.Send(ctx, "alice", "new key, same device"); err != nil {
		t.Fatal(err)
	}
	b.wait("the key-change banner, live", `!!document.getElementById('key-banner') && window.notReloaded === true`)
	b.wait("the send box paused", `document.getElementById('compose').disabled && document.getElementById('send').disabled`)
	b.wait("the list's key-change tag", `[...document.querySelectorAll('a.conv[data-contact="bob"] .tag')].some(e => e.textContent === 'Key changed')`)
	var presence string
	b.eval(`document.getElementById('presence').dataset.online`, &presence)
	if presence != "blocked" {
		t.Errorf("presence line state %q, want blocked", presence)
	}

	// The safety-number screen shows the new key's number; accept it.
	b.do("open the safety number screen", chromedp.Click("#key-banner a"))
	b.wait("the key-change choice", `!!document.getElementById('accept-key')`)
	v, err := newBob.n.VerifyContact("alice", false)
	if err != nil {
		t.Fatal(err)
	}
	var shown string
	b.eval(`document.getElementById('safety-number').textContent.replace(/\s+/g, '')`, &shown)
	if want := string(bytes.Join(bytes.Fields([]byte(v.SafetyNumber)), nil)); shown != want {
		t.Errorf("safety number shown %q, the new bob computes %q", shown, want)
	}
	b.do("accept the new key", chromedp.Click("#accept-key"))
	b.wait("the new key accepted", `document.getElementById('safety-result')?.textContent === 'New key accepted and marked verified.'`)
	if c, err := alice.n.Contact("bob"); err != nil || c.KeyChanged || c.Account != newBob.n.Identity().Account || !c.Verified {
		t.Fatalf("alice's contact bob after accepting: %+v, %v; want the new account, verified", c, err)
	}

	b.openConversation("bob")
	b.wait("the banner gone and sending open", `!document.getElementById('key-banner') && !document.getElementById('compose').disabled`)
	b.wait("the new key's first message", messageExpr("new key, same device")+`.length === 1`)
	b.wait("the verified badge", `document.getElementById('verified').textContent === 'Verified'`)
	b.typeMessage("welcome back")
	b.wait("the reply shown", messageExpr("welcome back")+`.length === 1`)
	waitNode(t, ctx, "the new bob to receive the reply", func() bool {
		_, err := newBob.nodeMessage("alice", "welcome back")
		return err == nil
	})
}
