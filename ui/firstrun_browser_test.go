package ui_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/store"
)

// TestBrowserFirstRun starts the web interface on an empty data
// directory, as `sotto run --ui` does (api.FirstRun): without the login
// link the browser gets the login page; signed in, the first screen asks
// for a name, shows the API's error for one the node refuses, and creates
// the identity with the name typed; the node then starts on it, and the
// page turns into the app: the user's name, the (empty) conversation list
// and a working invite.
func TestBrowserFirstRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	dir := filepath.Join(t.TempDir(), "dana") // does not exist yet
	tok, err := api.LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	u := &user{t: t, name: "dana", dir: dir, net: nw, addr: "127.0.0.1:0", token: tok}
	first := api.NewFirstRun(dir, nil)
	u.serveBackend(first)

	b := newBrowser(t, ctx, "dana")
	b.do("open the interface without signing in", chromedp.Navigate(u.base()+"/"))
	var title string
	b.eval(`document.title + (document.getElementById('setup-form') ? ' with the setup form' : '')`, &title)
	if title != "Sotto: sign in" {
		t.Fatalf("without a session the page is %q, want the login page", title)
	}
	b.do("open the login link", chromedp.Navigate(u.loginLink()))
	b.wait("the first-run screen", `document.body.dataset.setup === 'shown'`)
	var loc string
	b.eval(`location.href`, &loc)
	if loc != u.base()+"/" {
		t.Errorf("after login at %q, want the clean URL %s/", loc, u.base())
	}
	var hidden bool
	b.eval(`getComputedStyle(document.querySelector('.sidebar')).display === 'none' && getComputedStyle(document.querySelector('.top nav')).display === 'none'`, &hidden)
	if !hidden {
		t.Error("the first-run screen shows the navigation and the conversation list")
	}

	// A name the node refuses: the API's error, nothing created.
	b.do("submit a name that is too long",
		chromedp.SetValue("#setup-name", strings.Repeat("d", store.MaxNameLen+1)),
		chromedp.Click("#setup-submit"))
	b.wait("the API's error", `document.getElementById('setup-error').textContent !== ''`)
	var msg string
	b.eval(`document.getElementById('setup-error').textContent`, &msg)
	t.Logf("a name too long: %q", msg)
	if !strings.Contains(msg, "invalid name") || strings.Contains(msg, "contact") {
		t.Errorf("error shown %q, want the API's message about the name", msg)
	}
	select {
	case <-first.Created():
		t.Fatal("an identity was created with a refused name")
	default:
	}

	b.eval(`document.getElementById('setup-name').value = '', true`, nil)
	b.do("type a name and create the identity",
		chromedp.SendKeys("#setup-name", "dana"),
		chromedp.Click("#setup-submit"))
	select {
	case <-first.Created():
	case <-ctx.Done():
		t.Fatal("no identity created")
	}
	b.wait("the page to say the node starts", `document.getElementById('setup-status')?.textContent === 'Starting your node…' || document.body.dataset.ready === 'true'`)
	b.eval(`window.sottoBeforeReload = true`, nil)
	// As `sotto run` does: start the node on the new identity, then hand
	// the requests to it.
	u.startNode()
	first.SetBackend(u.backend())

	b.waitAfterReload("the app", `document.body.dataset.ready === 'true'`)
	b.wait("the conversation list, empty", `!!document.getElementById('conversations') && !document.getElementById('no-conversations').hidden && document.querySelectorAll('a.conv').length === 0`)
	var me string
	b.eval(`document.getElementById('me').textContent`, &me)
	if me != "Signed in as dana" {
		t.Errorf("header says %q", me)
	}
	if id := u.n.Identity(); id.Name != "dana" {
		t.Errorf("the node's identity is named %q", id.Name)
	}
	b.eval(`getComputedStyle(document.querySelector('.sidebar')).display !== 'none' && !document.body.dataset.firstRun`, &hidden)
	if !hidden {
		t.Error("the conversation list is not shown after the first run")
	}
	inv := b.inviteText()
	want, err := u.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if inv != want {
		t.Errorf("the page's invite %q, the node's %q", inv, want)
	}
}
