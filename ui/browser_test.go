package ui_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/node"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/ui"
)

// Bounds of the browser tests.
const (
	browserTestTimeout = 4 * time.Minute  // a whole test, browsers included
	stepTimeout        = 60 * time.Second // one browser step or wait
	nodeStartTimeout   = 30 * time.Second
	pollInterval       = 25 * time.Millisecond
)

// chromiumNames are the programs the browser tests look for.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome"}

// findChromium returns the path of a Chromium. Without one the test
// skips, or fails when SOTTO_CI=1 (continuous integration installs it).
func findChromium(t *testing.T) string {
	t.Helper()
	return locateChromium(t, exec.LookPath, os.Getenv)
}

// skipper is the part of *testing.T that locateChromium uses.
type skipper interface {
	Helper()
	Skip(args ...any)
	Fatal(args ...any)
}

// locateChromium is findChromium with the program lookup and the
// environment given, so that its decision can be tested on a machine
// that has a Chromium: the first of chromiumNames that lookPath finds;
// else t.Fatal when getenv("SOTTO_CI") is "1", t.Skip otherwise, with a
// message that says how to install one. It returns "" when it did not
// find one (a real t has stopped the test by then).
func locateChromium(t skipper, lookPath func(string) (string, error), getenv func(string) string) string {
	t.Helper()
	for _, name := range chromiumNames {
		if p, err := lookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("no Chromium found (looked for %s); install it to run the browser tests: apt-get install chromium", strings.Join(chromiumNames, ", "))
	if getenv("SOTTO_CI") == "1" {
		t.Fatal(msg)
		return ""
	}
	t.Skip(msg)
	return ""
}

// testContext is the deadline of a whole browser test.
func testDeadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// ---- nodes

// network is a bootstrap host on loopback for the test's nodes.
type network struct {
	t    *testing.T
	boot *p2p.Host
}

func newNetwork(t *testing.T) *network {
	return &network{t: t, boot: p2ptest.NewHost(t, p2p.WithBundleVerifier(p2p.VerifyBundle))}
}

// user is a real node in this process with its web interface.
type user struct {
	t     *testing.T
	name  string
	dir   string
	net   *network
	n     *node.Node
	token string
	addr  string // the interface's listen address, kept across restarts
	srv   *ui.Server
	stop  func()
	opts  []func(*node.Config)
}

// newUser creates an identity and starts its node and interface.
func (nw *network) newUser(name string, opts ...func(*node.Config)) *user {
	nw.t.Helper()
	dir := filepath.Join(nw.t.TempDir(), name)
	if _, err := node.Init(dir, name, nil); err != nil {
		nw.t.Fatalf("Init %s: %v", name, err)
	}
	return nw.startUser(name, dir, opts...)
}

// startUser starts the node of the identity in dir and its interface;
// opts adjust the node's configuration.
func (nw *network) startUser(name, dir string, opts ...func(*node.Config)) *user {
	nw.t.Helper()
	u := &user{t: nw.t, name: name, dir: dir, net: nw, addr: "127.0.0.1:0", opts: opts}
	u.startNode()
	tok, err := api.LoadOrCreateToken(dir)
	if err != nil {
		nw.t.Fatal(err)
	}
	u.token = tok
	u.serve()
	return u
}

func (u *user) startNode() {
	u.t.Helper()
	cfg := node.Config{
		DataDir:      u.dir,
		ListenAddrs:  p2ptest.LoopbackAddrs,
		Bootstrap:    []peer.AddrInfo{u.net.boot.AddrInfo()},
		NoMDNS:       true,
		NoNAT:        true,
		MailboxAfter: 200 * time.Millisecond,
	}
	for _, o := range u.opts {
		o(&cfg)
	}
	n, err := node.Open(cfg)
	if err != nil {
		u.t.Fatalf("Open %s: %v", u.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodeStartTimeout)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		n.Close()
		u.t.Fatalf("Start %s: %v", u.name, err)
	}
	u.n = n
	u.t.Cleanup(func() { n.Close() })
}

// serve starts the web interface on u.addr (the same port again after a
// stop).
func (u *user) serve() {
	u.t.Helper()
	u.serveBackend(u.backend())
}

// backend is the API backend of u's node.
func (u *user) backend() api.Backend {
	return api.NodeBackend(u.n, api.WithReadMarks(filepath.Join(u.dir, api.ReadMarksFile)))
}

// serveBackend starts the web interface of b on u.addr.
func (u *user) serveBackend(b api.Backend) {
	u.t.Helper()
	srv, err := ui.New(b, u.token)
	if err != nil {
		u.t.Fatal(err)
	}
	ln, err := ui.Listen(u.addr)
	if err != nil {
		u.t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	u.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	u.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				u.t.Errorf("%s: ui: %v", u.name, err)
			}
		})
	}
	u.t.Cleanup(u.stop)
}

func (u *user) base() string { return "http://" + u.addr }

func (u *user) loginLink() string {
	u.t.Helper()
	link, err := u.srv.LoginURL(u.base())
	if err != nil {
		u.t.Fatal(err)
	}
	return link
}

// ---- browsers

// browser is one headless Chromium with its own profile (so its own
// cookies), driven through one tab.
type browser struct {
	t    *testing.T
	name string
	ctx  context.Context

	mu      sync.Mutex
	dialogs []string // JavaScript dialogs the page opened (alert, ...)
	errs    []string // uncaught exceptions and console errors
}

func newBrowser(t *testing.T, parent context.Context, name string) *browser {
	t.Helper()
	path := findChromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
		chromedp.DisableGPU,
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser process to exit
	})
	b := &browser{t: t, name: name, ctx: ctx}
	if err := chromedp.Listen(ctx, b.onEvent); err != nil {
		t.Fatalf("%s: starting Chromium: %v", name, err)
	}
	// Runs before the browser is closed (cleanups run last first).
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b.screenshot(filepath.Join(t.TempDir(), "failure-"+name+".png"))
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.errs {
			t.Logf("%s: page error: %s", name, e)
		}
	})
	return b
}

func (b *browser) onEvent(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e := ev.(type) {
	case *page.EventJavascriptDialogOpening:
		b.dialogs = append(b.dialogs, string(e.Type)+": "+e.Message)
	case *runtime.EventExceptionThrown:
		if e.ExceptionDetails != nil {
			msg := e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
			b.errs = append(b.errs, msg)
		}
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError {
			var parts []string
			for _, a := range e.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			b.errs = append(b.errs, strings.Join(parts, " "))
		}
	}
}

// screenshot saves the tab as a PNG at path, for a failed test.
func (b *browser) screenshot(path string) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 gives a PNG
	if err != nil {
		b.t.Logf("%s: no screenshot: %v", b.name, err)
		return
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Logf("%s: %v", b.name, err)
		return
	}
	b.t.Logf("%s: screenshot at %s", b.name, path)
}

// do runs steps, bounded by stepTimeout.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %s: %v", b.name, what, err)
	}
}

// eval evaluates a JavaScript expression into out (JSON-decoded).
func (b *browser) eval(expr string, out any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("%s: evaluating %s: %v", b.name, expr, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			b.t.Fatalf("%s: %s gave %s: %v", b.name, expr, raw, err)
		}
	}
}

// wait waits until the JavaScript expression is true.
func (b *browser) wait(what, expr string) {
	b.t.Helper()
	b.waitFor(what, expr, stepTimeout)
}

func (b *browser) waitFor(what, expr string, d time.Duration) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr,
		chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(pollInterval)))
	if err != nil {
		var diag string
		dctx, dcancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer dcancel()
		diag, _ = chromedp.Run(dctx, chromedp.Evaluate[string](`location.hash + " | stream " + document.getElementById('stream')?.dataset.state + " | " + (document.querySelector('main') ? document.querySelector('main').innerText.slice(0, 600) : '') + " | error: " + document.getElementById('error-text')?.textContent`))
		b.t.Fatalf("%s: waiting for %s (%s): %v; page: %s", b.name, what, expr, err, diag)
	}
}

// waitAfterReload waits until the page has reloaded itself (the page
// marked with a variable is gone) and the JavaScript expression is true.
// Polling stops at a navigation, so this evaluates in a loop.
func (b *browser) waitAfterReload(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	full := fmt.Sprintf(`window.sottoBeforeReload === undefined && (%s)`, expr)
	var last error
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](full))
		if err == nil && ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			b.t.Fatalf("%s: waiting for %s after a reload (%s): %v (last error %v)", b.name, what, expr, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// login opens the user's one-time login link and waits for the app.
func (b *browser) login(u *user) {
	b.t.Helper()
	b.do("open the login link", chromedp.Navigate(u.loginLink()))
	b.wait("the app to start", `document.body.dataset.ready === 'true'`)
	var loc string
	b.eval(`location.href`, &loc)
	if loc != u.base()+"/" {
		b.t.Fatalf("%s: after login at %q, want the clean URL %s/", b.name, loc, u.base())
	}
}

// goTo changes the hash route and waits for the screen's element.
func (b *browser) goTo(hash, ready string) {
	b.t.Helper()
	b.eval(fmt.Sprintf(`location.hash = %q, true`, hash), nil)
	b.wait("screen "+hash, fmt.Sprintf(`!!document.querySelector(%q)`, ready))
}

// openConversation opens the conversation with name and waits until its
// messages are shown.
func (b *browser) openConversation(name string) {
	b.t.Helper()
	b.eval(`document.body.dataset.painted = '', location.hash = '#/', true`, nil)
	b.wait("the start screen", `!document.getElementById('msg-list')`)
	b.eval(fmt.Sprintf(`location.hash = '#/c/' + encodeURIComponent(%q), true`, name), nil)
	b.wait("the conversation with "+name, fmt.Sprintf(`document.body.dataset.painted === %q`, name))
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// messageExpr is an expression for the elements of the open conversation
// whose text is text.
func messageExpr(text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#msg-list li.msg')].filter(e => e.querySelector('.text').textContent === %s)`, js(text))
}

// addContact adds a contact in the interface: the name typed, the invite
// pasted; it waits for the new conversation.
func (b *browser) addContact(name, invite string) {
	b.t.Helper()
	b.goTo("#/add", "#add-form")
	b.do("fill in the add-contact form",
		chromedp.SendKeys("#add-name", name),
		chromedp.SetValue("#add-invite", invite),
		chromedp.Click("#add-submit"),
	)
	b.wait("the conversation with the new contact", fmt.Sprintf(`document.getElementById('conv-title')?.textContent === %s`, js(name)))
}

// inviteText reads the invite off the "My invite" screen, after checking
// that its QR code loaded.
func (b *browser) inviteText() string {
	b.t.Helper()
	b.goTo("#/invite", "#invite-text")
	b.wait("the invite's QR code", `document.getElementById('invite-qr').complete && document.getElementById('invite-qr').naturalWidth > 0`)
	var inv string
	b.eval(`document.getElementById('invite-text').value`, &inv)
	if !strings.HasPrefix(inv, "sotto://") {
		b.t.Fatalf("%s: invite %q", b.name, inv)
	}
	return inv
}

// typeMessage types text in the send box and presses Enter.
func (b *browser) typeMessage(text string) {
	b.t.Helper()
	b.do("type a message", chromedp.Focus("#compose"), chromedp.KeyEvent(text), pressEnter(false))
}

// pressEnter presses Enter (with Shift if shift) as a keyboard does: a
// key-down that carries the text "\r", which the page may cancel, and a
// key-up. (A separate character event, as chromedp.KeyEvent sends, would
// type a new line whatever the page did with the key-down.)
func pressEnter(shift bool) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var mods int64
		if shift {
			mods = 8 // Shift, in the protocol's bit field
		}
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeKeyDown, input.DispatchKeyEventTypeKeyUp} {
			p := input.DispatchKeyEventParams{Type: typ, Modifiers: mods, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}
			if typ == input.DispatchKeyEventTypeKeyDown {
				p.Text, p.UnmodifiedText = "\r", "\r"
			}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, p); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *browser) dialogCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.dialogs)
}

// waitNode waits until cond holds on a node, polling.
func waitNode(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

var errNoMessage = errors.New("no such message")

// nodeMessage finds the message with text in u's conversation with contact.
func (u *user) nodeMessage(contact, text string) (node.Message, error) {
	ms, err := u.n.Messages(contact, 0, 1000)
	if err != nil {
		return node.Message{}, err
	}
	for _, m := range ms {
		if m.Text() == text {
			return m, nil
		}
	}
	return node.Message{}, errNoMessage
}
