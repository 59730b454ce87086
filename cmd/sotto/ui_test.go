package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
)

// TestUIListen runs the real binary with --ui-listen: it prints the
// interface's address and a login link; the link signs in once with an
// HttpOnly, SameSite=Strict cookie; without it, or under a foreign Host,
// requests are refused.
func TestUIListen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	e := newE2E(t)
	e.sotto("init", "--data", e.dir("alice"), "--name", "alice")
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:8080", "example.com:80"} {
		_, err := e.try("run", "--data", e.dir("alice"), "--ui-listen", addr)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), "is not a loopback address") {
			t.Errorf("run --ui-listen %s: %v, want a usage error about loopback", addr, err)
		}
	}

	n := e.start("alice", "--ui-listen", "127.0.0.1:0")
	base := strings.TrimSuffix(strings.TrimPrefix(n.startupLine("ui: http://127.0.0.1:"), "ui: "), "/")
	link := strings.TrimPrefix(n.startupLine("ui login: "), "ui login: ")
	if !strings.HasPrefix(link, base+"/login?code=") {
		t.Fatalf("login link %q does not belong to %q", link, base)
	}
	noLoginCodeInLog(t, n.log.String(), link)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(url, host, cookie string) *http.Response {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(base+"/v1/status", "", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no cookie: %d, want 401", resp.StatusCode)
	}
	resp := get(link, "", "")
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 {
		t.Fatalf("login link: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	c := resp.Cookies()[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie %+v: want HttpOnly and SameSite=Strict", c)
	}
	cookie := c.Name + "=" + c.Value
	if resp := get(base+"/v1/status", "", cookie); resp.StatusCode != http.StatusOK {
		t.Errorf("with the cookie: %d, want 200", resp.StatusCode)
	}
	if resp := get(base+"/", "", cookie); resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("the page: %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	if resp := get(base+"/", "rebind.example:"+strings.TrimPrefix(base, "http://127.0.0.1:"), cookie); resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host: %d, want 403", resp.StatusCode)
	}
	if resp := get(link, "", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the login link a second time: %d, want 401", resp.StatusCode)
	}
}

// TestUIFirstRun runs the real binary with --ui-listen on a data
// directory that holds no identity: instead of failing, it serves the
// control socket and the web interface, which answer "no identity yet"
// until a signed-in page creates one with POST /v1/setup (with the
// interface's checks: the cookie and the Origin); then the node starts
// on the new identity and prints its peer ID, and the API, the socket and
// the commands serve it. Without --ui, such a directory still fails the
// run with how to create an identity.
func TestUIFirstRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	e := newE2E(t)
	dir := e.dir("carol")
	if _, err := e.try("run", "--data", dir, "--lan", "--listen", "/ip4/127.0.0.1/tcp/0"); err == nil || !strings.Contains(err.Error(), "sotto init") {
		t.Fatalf("run without --ui on an empty data directory: %v, want an error naming `sotto init`", err)
	}

	n := e.start("carol", "--ui-listen", "127.0.0.1:0")
	if !strings.Contains(n.startupLine("first run: "), dir) {
		t.Errorf("the first-run line does not name the data directory: %q", n.startup)
	}
	for _, l := range n.startup {
		if strings.HasPrefix(l, "peer id: ") {
			t.Fatalf("a peer ID before any identity exists: %q", n.startup)
		}
	}
	base := strings.TrimSuffix(strings.TrimPrefix(n.startupLine("ui: http://127.0.0.1:"), "ui: "), "/")
	link := strings.TrimPrefix(n.startupLine("ui login: "), "ui login: ")
	if _, err := e.try("id", "--data", dir); err == nil || !strings.Contains(err.Error(), "no identity yet") {
		t.Errorf("`sotto id` over the socket before setup: %v, want \"no identity yet\"", err)
	}

	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// call sends a request and returns the status and the body, or for
	// the login link the session cookie it sets.
	call := func(method, url, cookie, origin, body string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if cs := resp.Cookies(); url == link && len(cs) == 1 {
			return resp.StatusCode, cs[0].Name + "=" + cs[0].Value
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := call(http.MethodPost, base+"/v1/setup", "", base, `{"name":"carol"}`); code != http.StatusUnauthorized {
		t.Errorf("setup without a session: %d, want 401", code)
	}
	code, cookie := call(http.MethodGet, link, "", "", "")
	if code != http.StatusSeeOther || !strings.HasPrefix(cookie, "sotto_session_") {
		t.Fatalf("login link: %d %q", code, cookie)
	}
	// The interface's page and headers, and its Host check, are there
	// before any identity.
	page := func(host string) *http.Response {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		req.Header.Set("Cookie", cookie)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := page(""); resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("the page before setup: %d, CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	if resp := page("rebind.example:" + strings.TrimPrefix(base, "http://127.0.0.1:")); resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Host before setup: %d, want 403", resp.StatusCode)
	}
	if code, body := call(http.MethodGet, base+"/v1/identity", cookie, "", ""); code != http.StatusConflict || !strings.Contains(body, `"no_identity"`) {
		t.Errorf("identity before setup: %d %s, want 409 no_identity", code, body)
	}
	if code, _ := call(http.MethodPost, base+"/v1/setup", cookie, "http://evil.example", `{"name":"carol"}`); code != http.StatusForbidden {
		t.Errorf("setup from another origin: %d, want 403", code)
	}
	code, body := call(http.MethodPost, base+"/v1/setup", cookie, base, `{"name":"carol"}`)
	if code != http.StatusCreated {
		t.Fatalf("setup: %d %s", code, body)
	}
	var id api.Identity
	if err := json.Unmarshal([]byte(body), &id); err != nil || id.Name != "carol" || id.PeerID == "" {
		t.Fatalf("setup answered %s (%v)", body, err)
	}

	// The node starts on the new identity.
	started := n.waitLine("peer id: ")
	if got := strings.TrimPrefix(started[len(started)-1], "peer id: "); got != id.PeerID {
		t.Errorf("the node started as %s, setup made %s", got, id.PeerID)
	}
	deadline := time.Now().Add(e2eWait)
	for {
		code, body := call(http.MethodGet, base+"/v1/identity", cookie, "", "")
		if code == http.StatusOK {
			var got api.Identity
			if err := json.Unmarshal([]byte(body), &got); err != nil || got.PeerID != id.PeerID || got.Name != "carol" {
				t.Errorf("identity once running: %s (%v)", body, err)
			}
			break
		}
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("identity after setup: %d %s, want 503 while starting, then 200", code, body)
		}
		time.Sleep(e2ePoll)
	}
	var viaSocket api.Identity
	if err := json.Unmarshal([]byte(e.sotto("id", "--data", dir, "--json")), &viaSocket); err != nil || viaSocket.PeerID != id.PeerID {
		t.Errorf("`sotto id --json` over the socket: %+v, %v", viaSocket, err)
	}
	if code, body := call(http.MethodPost, base+"/v1/setup", cookie, base, `{"name":"again"}`); code != http.StatusConflict || !strings.Contains(body, `"identity_exists"`) {
		t.Errorf("a second setup: %d %s, want 409 identity_exists", code, body)
	}
	noLoginCodeInLog(t, n.log.String(), link)

	// Interrupted before anyone creates an identity, it stops cleanly
	// (exit status 0, checked by stop) and leaves none.
	idle := e.start("erin", "--ui-listen", "127.0.0.1:0")
	idle.startupLine("first run: ")
	idle.stop()
	if _, err := e.try("id", "--data", e.dir("erin")); err == nil || !strings.Contains(err.Error(), "sotto init") {
		t.Errorf("`sotto id` after a first run that was interrupted: %v, want no identity", err)
	}
}

// noLoginCodeInLog fails t if the login link's one-time code is in the
// node's log. (Not any "code=": the log names the codes of failed API
// requests, which are no secret.)
func noLoginCodeInLog(t *testing.T, log, link string) {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatalf("login link %q: %v", link, err)
	}
	code := u.Query().Get("code")
	if len(code) < 16 {
		t.Fatalf("login link %q has no code of a secret's length", link)
	}
	for line := range strings.Lines(log) {
		if strings.Contains(line, code) {
			t.Errorf("the login link's code reached the log: %q", line)
		}
	}
}
