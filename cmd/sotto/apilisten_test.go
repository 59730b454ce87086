package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAPIListen runs a node with --api-listen and calls the HTTP API on
// loopback without the bearer token, with a wrong one and with the one in
// the data directory.
func TestAPIListen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	e := newE2E(t)
	e.sotto("init", "--data", e.dir("alice"), "--name", "alice")

	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:8080", ":0", "example.com:80"} {
		_, err := e.try("run", "--data", e.dir("alice"), "--api-listen", addr)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), "is not a loopback address") {
			t.Errorf("run --api-listen %s: %v, want a usage error about loopback", addr, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.dir("alice"), "api.token")); err == nil {
		t.Error("a refused run created the token file")
	}

	n := e.start("alice", "--api-listen", "127.0.0.1:0")
	base := strings.TrimPrefix(n.startupLine("api listener: http://127.0.0.1:"), "api listener: ")
	tokenFile := strings.TrimPrefix(n.startupLine("api token file: "), "api token file: ")
	if want, _ := filepath.Abs(filepath.Join(e.dir("alice"), "api.token")); tokenFile != want {
		t.Errorf("token file %q, want %q", tokenFile, want)
	}
	fi, err := os.Stat(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(b))

	status := func(auth string) (int, map[string]any) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Errorf("status %d with a body that is not JSON: %v", resp.StatusCode, err)
		}
		return resp.StatusCode, body
	}
	if code, _ := status(""); code != http.StatusUnauthorized {
		t.Errorf("no token: status %d, want 401", code)
	}
	if code, _ := status("Bearer " + strings.Repeat("x", len(token))); code != http.StatusUnauthorized {
		t.Errorf("wrong token: status %d, want 401", code)
	}
	code, body := status("Bearer " + token)
	if code != http.StatusOK || !strings.HasPrefix(body["peer_id"].(string), "12D3KooW") {
		t.Errorf("right token: status %d, body %v; want 200 with the node's status", code, body)
	}
}
