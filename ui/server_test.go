package ui_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	qrcode "github.com/skip2/go-qrcode"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
	"github.com/sotto-im/sotto/ui"
)

const testToken = "0123456789abcdef0123456789abcdef"

// served is a UI server on a loopback port over an in-memory backend.
type served struct {
	t       *testing.T
	srv     *ui.Server
	backend *apitest.Backend
	base    string // http://127.0.0.1:PORT
	port    string
}

func serveUI(t *testing.T, b *apitest.Backend, token string) *served {
	t.Helper()
	srv, err := ui.New(b, token, ui.WithHeartbeat(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ui.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return &served{t: t, srv: srv, backend: b, base: "http://" + ln.Addr().String(), port: port}
}

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// request sends a request; host, when set, replaces the Host header.
func (s *served) request(method, path, host string, header map[string]string, body string) (*http.Response, string) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// login opens a fresh login link and returns the session cookie header.
func (s *served) login() string {
	s.t.Helper()
	link, err := s.srv.LoginURL(s.base)
	if err != nil {
		s.t.Fatal(err)
	}
	u, err := url.Parse(link)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, _ := s.request("GET", u.RequestURI(), "", nil, "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		s.t.Fatalf("login link: status %d, Location %q; want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	cs := resp.Cookies()
	if len(cs) != 1 {
		s.t.Fatalf("login link set %d cookies, want 1", len(cs))
	}
	return cs[0].Name + "=" + cs[0].Value
}

// TestLoginLink: the link sets an HttpOnly, SameSite=Strict cookie named
// for the port, redirects to a clean URL, works once, and the cookie then
// opens the interface and the API.
func TestLoginLink(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	link, err := s.srv.LoginURL(s.base)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(link, s.base+"/login?code=") || strings.Contains(link, testToken) {
		t.Fatalf("login link %q", link)
	}
	path := strings.TrimPrefix(link, s.base)
	resp, _ := s.request("GET", path, "", nil, "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("status %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	raw := resp.Header.Get("Set-Cookie")
	for _, want := range []string{"sotto_session_" + s.port + "=", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(raw, want) {
			t.Errorf("Set-Cookie %q lacks %q", raw, want)
		}
	}
	if strings.Contains(raw, testToken) {
		t.Error("the cookie holds the token")
	}
	cookie := resp.Cookies()[0]
	auth := map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}
	if resp, body := s.request("GET", "/", "", auth, ""); resp.StatusCode != 200 || !strings.Contains(body, `src="/assets/app.js"`) {
		t.Errorf("index with the cookie: %d %q", resp.StatusCode, body)
	}
	if resp, body := s.request("GET", "/v1/identity", "", auth, ""); resp.StatusCode != 200 || !strings.Contains(body, `"name":"alice"`) {
		t.Errorf("API with the cookie: %d %q", resp.StatusCode, body)
	}
	if resp, _ := s.request("GET", "/assets/app.js", "", auth, ""); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Errorf("app.js: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// Once only.
	if resp, body := s.request("GET", path, "", nil, ""); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "already used") {
		t.Errorf("second use of the link: %d %q", resp.StatusCode, body)
	}
}

// TestUnauthorized: without a valid cookie or token, every path gets 401.
func TestUnauthorized(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	other := serveUI(t, apitest.New("alice"), "another-token-0123456789abcdef")
	foreign := other.login() // a valid session of a server with another token
	foreign = "sotto_session_" + s.port + "=" + strings.SplitN(foreign, "=", 2)[1]
	for _, h := range []map[string]string{
		nil,
		{"Authorization": "Bearer " + strings.Repeat("x", len(testToken))},
		{"Authorization": "Bearer"},
		{"Cookie": "sotto_session_" + s.port + "=bogus.value"},
		{"Cookie": foreign},
	} {
		for _, p := range []string{"/", "/assets/app.js", "/invite.svg", "/v1/status", "/v1/events", "/v1/messages?contact=bob"} {
			resp, body := s.request("GET", p, "", h, "")
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s with %v: %d, want 401", p, h, resp.StatusCode)
			}
			if strings.HasPrefix(p, "/v1/") && !strings.Contains(body, `"code":"unauthorized"`) {
				t.Errorf("GET %s: body %q, want the API's JSON error", p, body)
			}
		}
	}
	if resp, _ := s.request("GET", "/login?code=not-a-code", "", nil, ""); resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Errorf("a made-up login code: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	if _, err := ui.New(apitest.New("x"), "short"); err == nil {
		t.Error("New accepted a short token")
	}
}

// TestHostCheck: only loopback names with the listener's port are
// served; a DNS-rebinding name gets 403 even with valid credentials.
func TestHostCheck(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	auth := map[string]string{"Cookie": s.login()}
	for _, tc := range []struct {
		host string
		want int
	}{
		{"127.0.0.1:" + s.port, 200},
		{"localhost:" + s.port, 200},
		{"LOCALHOST:" + s.port, 200},
		{"127.0.0.2:" + s.port, 200},
		{"[::1]:" + s.port, 200},
		{"evil.example:" + s.port, 403},
		{"localhost.evil.example:" + s.port, 403},
		{"127.0.0.1.nip.io:" + s.port, 403},
		{"192.168.1.10:" + s.port, 403},
		{"127.0.0.1:1", 403},
		{"localhost", 403},
	} {
		for _, p := range []string{"/", "/v1/status", "/login?code=x"} {
			resp, _ := s.request("GET", p, tc.host, auth, "")
			got := resp.StatusCode
			if p == "/login?code=x" && tc.want == 200 {
				continue // an invalid code: 401, checked elsewhere
			}
			if got != tc.want {
				t.Errorf("GET %s Host %q: %d, want %d", p, tc.host, got, tc.want)
			}
		}
	}
}

// TestOriginCheck: a request that changes state with the cookie must come
// from this origin; with the bearer token a missing Origin is fine (a
// bot), a foreign one is not.
func TestOriginCheck(t *testing.T) {
	b := apitest.New("alice")
	s := serveUI(t, b, testToken)
	cookie := s.login()
	if _, err := b.AddContact(context.Background(), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	body := `{"contact":"bob","text":"hi"}`
	self := s.base
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"cookie, same origin", map[string]string{"Cookie": cookie, "Origin": self}, 201},
		{"cookie, foreign origin", map[string]string{"Cookie": cookie, "Origin": "http://evil.example"}, 403},
		{"cookie, other port", map[string]string{"Cookie": cookie, "Origin": "http://127.0.0.1:1"}, 403},
		{"cookie, null origin", map[string]string{"Cookie": cookie, "Origin": "null"}, 403},
		{"cookie, no origin", map[string]string{"Cookie": cookie}, 403},
		{"cookie, cross-site fetch", map[string]string{"Cookie": cookie, "Origin": self, "Sec-Fetch-Site": "cross-site"}, 403},
		{"cookie, same-site fetch", map[string]string{"Cookie": cookie, "Origin": self, "Sec-Fetch-Site": "same-site"}, 403},
		{"token, no origin", map[string]string{"Authorization": "Bearer " + testToken}, 201},
		{"token, foreign origin", map[string]string{"Authorization": "Bearer " + testToken, "Origin": "http://evil.example"}, 403},
	} {
		resp, got := s.request("POST", "/v1/messages", "", tc.header, body)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, resp.StatusCode, got, tc.want)
		}
	}
	ms, _ := b.Messages(context.Background(), api.MessageQuery{Contact: "bob"})
	if len(ms) != 2 {
		t.Errorf("%d messages sent, want 2 (the two allowed requests)", len(ms))
	}
	// The login form is held to the same rule.
	form := "token=" + url.QueryEscape(testToken)
	ct := "application/x-www-form-urlencoded"
	if resp, _ := s.request("POST", "/login", "", map[string]string{"Content-Type": ct, "Origin": "http://evil.example"}, form); resp.StatusCode != 403 {
		t.Errorf("cross-origin login form: %d, want 403", resp.StatusCode)
	}
	if resp, _ := s.request("POST", "/login", "", map[string]string{"Content-Type": ct, "Origin": self}, "token=wrong"); resp.StatusCode != 401 || len(resp.Cookies()) != 0 {
		t.Errorf("login form with a wrong token: %d", resp.StatusCode)
	}
	resp, _ := s.request("POST", "/login", "", map[string]string{"Content-Type": ct, "Origin": self}, form)
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || !resp.Cookies()[0].HttpOnly {
		t.Errorf("login form with the token: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
}

// TestSecurityHeaders: every response, served or refused, carries the
// policy headers.
func TestSecurityHeaders(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	cookie := s.login()
	for _, tc := range []struct {
		path, host string
		header     map[string]string
		want       int
	}{
		{"/", "", map[string]string{"Cookie": cookie}, 200},
		{"/assets/style.css", "", map[string]string{"Cookie": cookie}, 200},
		{"/v1/status", "", map[string]string{"Cookie": cookie}, 200},
		{"/invite.svg", "", map[string]string{"Cookie": cookie}, 200},
		{"/v1/nothing", "", map[string]string{"Cookie": cookie}, 404},
		{"/", "", nil, 401},
		{"/", "evil.example:" + s.port, map[string]string{"Cookie": cookie}, 403},
	} {
		resp, _ := s.request("GET", tc.path, tc.host, tc.header, "")
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self';", "style-src 'self';", "frame-ancestors 'none'", "base-uri 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", tc.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") || strings.Contains(csp, "http") {
			t.Errorf("GET %s: CSP %q allows inline code or another origin", tc.path, csp)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", tc.path, got)
		}
		if got := resp.Header.Get("Referrer-Policy"); got != "no-referrer" {
			t.Errorf("GET %s: Referrer-Policy %q", tc.path, got)
		}
	}
}

// TestAssetsHaveNoInlineCode: the pages hold no inline script, style or
// event handler attribute (the CSP would block them) and load nothing
// from another origin.
func TestAssetsHaveNoInlineCode(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	cookie := map[string]string{"Cookie": s.login()}
	for _, p := range []string{"/", "/login", "/assets/app.js", "/assets/messages.js", "/assets/groups.js", "/assets/dom.js", "/assets/api.js", "/assets/events.js", "/assets/style.css"} {
		h := cookie
		if p == "/login" {
			h = nil
		}
		resp, body := s.request("GET", p, "", h, "")
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d", p, resp.StatusCode)
			continue
		}
		low := strings.ToLower(body)
		for _, bad := range []string{"<script>", "<style", " style=", " onclick=", " onload=", "innerhtml", "outerhtml", "insertadjacenthtml", "document.write", "eval(", "https://", "http://"} {
			if strings.Contains(low, bad) {
				t.Errorf("%s contains %q", p, bad)
			}
		}
	}
}

// TestInviteQR: the SVG is the invite's QR code, module for module.
func TestInviteQR(t *testing.T) {
	s := serveUI(t, apitest.New("alice"), testToken)
	resp, body := s.request("GET", "/invite.svg", "", map[string]string{"Cookie": s.login()}, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/svg+xml" || !strings.HasPrefix(body, "<svg ") {
		t.Fatalf("GET /invite.svg: %d %q %.40q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	q, err := qrcode.New(strings.ToUpper(apitest.InviteFor("alice")), qrcode.Low)
	if err != nil {
		t.Fatal(err)
	}
	q.DisableBorder = true
	dark := 0
	for _, row := range q.Bitmap() {
		for _, d := range row {
			if d {
				dark++
			}
		}
	}
	if got := strings.Count(body, "h1v1h-1z"); got != dark || dark == 0 {
		t.Errorf("SVG draws %d modules, the QR code has %d dark ones", got, dark)
	}
}
