package main

import (
	"context"
	"errors"
	"net/http"
	"os/exec"
	"strings"
	"testing"
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
	if strings.Contains(n.log.String(), "code=") {
		t.Error("the login link reached the log")
	}
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
