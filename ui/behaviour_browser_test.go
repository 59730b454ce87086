package ui_test

import (
	"context"
	"fmt"
	"testing"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
)

// pressTab presses Tab (Shift+Tab with shift) as a keyboard does, which
// moves the focus.
func pressTab(shift bool) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var mods int64
		if shift {
			mods = 8
		}
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			p := input.DispatchKeyEventParams{Type: typ, Modifiers: mods, Key: "Tab", Code: "Tab", WindowsVirtualKeyCode: 9, NativeVirtualKeyCode: 9}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// pressArrowDown presses the down arrow key.
func pressArrowDown() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			p := input.DispatchKeyEventParams{Type: typ, Key: "ArrowDown", Code: "ArrowDown", WindowsVirtualKeyCode: 40, NativeVirtualKeyCode: 40}
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// focusedExpr describes the focused element: its id or, for a
// conversation link, "conv:NAME".
const focusedExpr = `(() => { const e = document.activeElement; if (!e) return '';
	if (e.matches('a.conv')) return 'conv:' + e.dataset.contact; return e.id || e.tagName.toLowerCase(); })()`

// focusVisibleExpr is true when the focused element matches
// :focus-visible and is drawn with an outline or a shadow.
const focusVisibleExpr = `(() => { const e = document.activeElement; if (!e || !e.matches(':focus-visible')) return false;
	const s = getComputedStyle(e);
	const outline = s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
	return outline || (s.boxShadow !== 'none' && s.boxShadow !== ''); })()`

// tabTo presses Tab until the element described by want (see
// focusedExpr) has the focus, at most limit times, and checks that the
// focus is visible there.
func (b *browser) tabTo(want string, limit int) {
	b.t.Helper()
	var path []string
	for range limit {
		b.do("press Tab", pressTab(false))
		var got string
		b.eval(focusedExpr, &got)
		path = append(path, got)
		if got == want {
			var visible bool
			b.eval(focusVisibleExpr, &visible)
			if !visible {
				var style string
				b.eval(`(() => { const s = getComputedStyle(document.activeElement); return s.outlineStyle + ' ' + s.outlineWidth + ' / ' + s.boxShadow; })()`, &style)
				b.t.Errorf("%s: the focus on %s is not visible (outline / shadow: %s)", b.name, want, style)
			}
			return
		}
	}
	b.t.Fatalf("%s: %d presses of Tab never reached %s; the focus went %v", b.name, limit, want, path)
}

// TestBrowserKeyboard: with the keyboard alone, Tab reaches the
// conversation list, the arrow keys move within it, Enter opens a
// conversation, Tab reaches the send box, and Enter there sends. Every
// stop shows a visible focus ring (:focus-visible with an outline).
func TestBrowserKeyboard(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three nodes and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice, bob, carol := nw.newUser("alice"), nw.newUser("bob"), nw.newUser("carol")
	for _, u := range []*user{bob, carol} {
		inv, err := u.n.Invite()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.n.AddContact(u.name, inv); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.n.Send(ctx, "carol", "to carol first"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.n.Send(ctx, "bob", "to bob last"); err != nil {
		t.Fatal(err)
	}

	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	b.wait("both conversations listed", `document.querySelectorAll('a.conv').length === 2`)
	var first string
	b.eval(`document.querySelector('a.conv').dataset.contact`, &first)
	if first != "bob" {
		t.Fatalf("first conversation in the list %q, want bob (the most recent)", first)
	}
	b.tabTo("conv:bob", 12)
	// A new message refreshes the list; the focus stays where the
	// keyboard put it.
	if _, err := alice.n.Send(ctx, "bob", "sent while the list has the focus"); err != nil {
		t.Fatal(err)
	}
	b.wait("the list refreshed with the new message", `[...document.querySelectorAll('a.conv .conv-last')].some((e) => e.textContent.includes('sent while the list'))`)
	var got string
	b.eval(focusedExpr, &got)
	if got != "conv:bob" {
		t.Errorf("after the list refreshed the focus is on %q, want conv:bob", got)
	}
	b.do("press the down arrow", pressArrowDown())
	b.eval(focusedExpr, &got)
	if got != "conv:carol" {
		t.Errorf("after the down arrow the focus is on %q, want conv:carol", got)
	}
	b.do("open carol's conversation with Enter", pressEnter(false))
	b.wait("carol's conversation", `document.getElementById('conv-title')?.textContent === 'carol' && document.body.dataset.painted === 'carol'`)
	// Opening puts the focus in the send box; leave it backwards, then
	// come back with Tab.
	b.eval(focusedExpr, &got)
	if got != "compose" {
		t.Errorf("after opening a conversation the focus is on %q, want the send box", got)
	}
	b.do("press Shift+Tab", pressTab(true))
	b.eval(focusedExpr, &got)
	if got == "compose" {
		t.Fatal("Shift+Tab left the focus in the send box")
	}
	b.tabTo("compose", 6)
	b.do("type a message", chromedp.KeyEvent("typed with the keyboard"), pressEnter(false))
	b.wait("the message sent", messageExpr("typed with the keyboard")+`.length === 1`)
	if _, err := alice.nodeMessage("carol", "typed with the keyboard"); err != nil {
		t.Errorf("the message typed is not in alice's conversation with carol: %v", err)
	}
	// On to the send button, which shows its focus too, once the send
	// is over (the message can come from the event stream before the
	// node's answer, while the button is still disabled).
	b.wait("the send over", `!document.getElementById('send').disabled`)
	b.tabTo("send", 2)
}

// TestBrowserDarkTheme: the page follows prefers-color-scheme: the same
// page, emulated dark, has a dark background and light text; light has
// the opposite.
func TestBrowserDarkTheme(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice := nw.newUser("alice")
	b := newBrowser(t, ctx, "alice")
	b.login(alice)

	// luminance is the relative luminance (0 black, 1 white) of a
	// computed "rgb(r, g, b)" colour.
	const colours = `(() => { const lum = (c) => { const [r, g, bl] = c.match(/\d+/g).map(Number);
		return (0.2126 * r + 0.7152 * g + 0.0722 * bl) / 255; };
		const body = getComputedStyle(document.body), side = getComputedStyle(document.querySelector('.sidebar'));
		return { bg: body.backgroundColor, text: body.color, bgLum: lum(body.backgroundColor), textLum: lum(body.color), panel: side.backgroundColor,
			dark: matchMedia('(prefers-color-scheme: dark)').matches }; })()`
	type scheme struct {
		BG      string  `json:"bg"`
		Text    string  `json:"text"`
		BGLum   float64 `json:"bgLum"`
		TextLum float64 `json:"textLum"`
		Panel   string  `json:"panel"`
		Dark    bool    `json:"dark"`
	}
	read := func(mode string) scheme {
		t.Helper()
		b.do("emulate prefers-color-scheme: "+mode, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
				Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: mode}},
			})
			return err
		}))
		b.wait("the "+mode+" scheme applied", fmt.Sprintf(`matchMedia('(prefers-color-scheme: %s)').matches`, mode))
		var sc scheme
		b.eval(colours, &sc)
		return sc
	}
	light, dark := read("light"), read("dark")
	t.Logf("light: background %s, text %s; dark: background %s, text %s", light.BG, light.Text, dark.BG, dark.Text)
	if light.BG == dark.BG || light.Panel == dark.Panel || light.Text == dark.Text {
		t.Errorf("the colours do not change with the scheme: light %+v, dark %+v", light, dark)
	}
	if !(light.BGLum > 0.8 && light.TextLum < 0.2) {
		t.Errorf("light scheme: background %s (luminance %.2f), text %s (%.2f); want a light background and dark text", light.BG, light.BGLum, light.Text, light.TextLum)
	}
	if !(dark.BGLum < 0.2 && dark.TextLum > 0.8) {
		t.Errorf("dark scheme: background %s (luminance %.2f), text %s (%.2f); want a dark background and light text", dark.BG, dark.BGLum, dark.Text, dark.TextLum)
	}
	if !dark.Dark || light.Dark {
		t.Errorf("emulation not in effect: light %v, dark %v", light.Dark, dark.Dark)
	}
}

// TestBrowserCopyInvite: the invite screen's copy button puts the invite
// on the clipboard and says so; where the clipboard refuses, it selects
// the text and says how to copy it.
func TestBrowserCopyInvite(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node and a browser")
	}
	ctx := testDeadline(t)
	findChromium(t)
	nw := newNetwork(t)
	alice := nw.newUser("alice")
	want, err := alice.n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, ctx, "alice")
	b.login(alice)
	b.do("grant clipboard access", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		for _, name := range []string{"clipboard-read", "clipboard-write"} {
			_, err := cdp.Call(ctx, chromedp.FromContext(ctx).Browser, cdpbrowser.SetPermission, cdpbrowser.SetPermissionParams{
				Permission: &cdpbrowser.PermissionDescriptor{Name: name}, Setting: cdpbrowser.PermissionSettingGranted, Origin: alice.base(),
			})
			if err != nil {
				return err
			}
		}
		// A headless page is not focused, and the clipboard serves only
		// a focused document.
		_, err := cdp.Call(ctx, chromedp.FromContext(ctx).Target, emulation.SetFocusEmulationEnabled, emulation.SetFocusEmulationEnabledParams{Enabled: true})
		return err
	}))
	inv := b.inviteText()
	if inv != want {
		t.Errorf("invite shown %q, the node's %q", inv, want)
	}
	b.do("clear the clipboard", chromedp.Evaluate[chromedp.Void](`navigator.clipboard.writeText('')`, chromedp.EvalAwaitPromise))
	b.do("press the copy button", chromedp.Click("#copy-invite"))
	b.wait("the copy confirmed", `document.getElementById('copy-result').textContent === 'Copied.'`)
	var clip string
	b.eval(`navigator.clipboard.readText()`, &clip)
	if clip != inv {
		t.Errorf("clipboard holds %q, want the invite %q", clip, inv)
	}

	// A browser that refuses the clipboard: the text is selected instead.
	b.goTo("#/", "#main")
	b.inviteText()
	b.eval(`navigator.clipboard.writeText = () => Promise.reject(new DOMException('denied', 'NotAllowedError')), true`, nil)
	b.do("press the copy button", chromedp.Click("#copy-invite"))
	b.wait("the fallback", `document.getElementById('copy-result').textContent.startsWith('Selected')`)
	var sel string
	b.eval(`(() => { const e = document.getElementById('invite-text'); return document.activeElement === e ? e.value.slice(e.selectionStart, e.selectionEnd) : ''; })()`, &sel)
	if sel != inv {
		t.Errorf("selected %q, want the whole invite", sel)
	}
}
