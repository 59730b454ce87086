package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// serving is a Server on a unix socket in a temporary data directory.
type serving struct {
	dir    string
	path   string
	node   *apitest.Backend
	client *api.Client
	stop   func() error // shuts the server down and returns Serve's result
}

func serve(t *testing.T, b api.Backend) *serving {
	t.Helper()
	dir := t.TempDir()
	path, err := api.SocketPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.NewServer(b, api.WithHeartbeat(time.Hour)).Serve(ctx, ln) }()
	stopped := false
	var result error
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(testTimeout):
			result = errors.New("server did not shut down")
		}
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	c, err := api.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &serving{dir: dir, path: path, client: c, stop: stop}
	s.node, _ = b.(*apitest.Backend)
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// rawClient sends hand-made requests over the socket.
func rawClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// wireError is an error response body.
type wireError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func do(t *testing.T, hc *http.Client, method, url, body string, header map[string]string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testContext(t), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestEndpoints(t *testing.T) {
	node := apitest.New("alice")
	s := serve(t, node)
	c := s.client
	ctx := testContext(t)

	id, err := c.Identity(ctx)
	if err != nil || id.Name != "alice" || id.PeerID == "" || id.Account == "" || len(id.Addrs) != 1 {
		t.Fatalf("Identity = %+v, %v", id, err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.PeerID != id.PeerID || st.Mailbox != nil {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	inv, err := c.Invite(ctx)
	if err != nil || inv != apitest.InviteFor("alice") {
		t.Fatalf("Invite = %q, %v", inv, err)
	}
	cs, err := c.Contacts(ctx)
	if err != nil || len(cs) != 0 {
		t.Fatalf("Contacts before adding = %+v, %v", cs, err)
	}
	bob, err := c.AddContact(ctx, "bob", apitest.InviteFor("bob"))
	if err != nil || bob.Name != "bob" || bob.Account == "" || bob.Verified {
		t.Fatalf("AddContact = %+v, %v", bob, err)
	}
	// Names travel in the path: use one that needs escaping.
	if _, err := c.AddContact(ctx, "carol / c?", apitest.InviteFor("carol")); err != nil {
		t.Fatal(err)
	}
	cs, err = c.Contacts(ctx)
	if err != nil || len(cs) != 2 || cs[0] != bob {
		t.Fatalf("Contacts = %+v, %v", cs, err)
	}
	v, err := c.VerifyContact(ctx, "carol / c?", false)
	if err != nil || v.Verified || v.Contact != "carol / c?" || v.SafetyNumber == "" {
		t.Fatalf("VerifyContact = %+v, %v", v, err)
	}
	v, err = c.VerifyContact(ctx, "carol / c?", true)
	if err != nil || !v.Verified {
		t.Fatalf("VerifyContact confirm = %+v, %v", v, err)
	}

	for i := range 5 {
		m, err := c.Send(ctx, "bob", fmt.Sprintf("hello %d", i))
		if err != nil || m.Direction != api.DirectionOut || m.State != api.StateQueued || m.Seq != uint64(i+1) {
			t.Fatalf("Send = %+v, %v", m, err)
		}
	}
	node.Receive("carol / c?", "hi alice", api.ViaMailbox)

	all, err := c.Messages(ctx, api.MessageQuery{})
	if err != nil || len(all) != 6 {
		t.Fatalf("Messages = %d, %v", len(all), err)
	}
	if in := all[5]; in.Direction != api.DirectionIn || in.Via != api.ViaMailbox || in.Text != "hi alice" || in.State != "" {
		t.Errorf("incoming message = %+v", in)
	}
	// Paging with the seq cursor.
	var paged []api.Message
	var after uint64
	for {
		page, err := c.Messages(ctx, api.MessageQuery{Contact: "bob", After: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		after = page[len(page)-1].Seq
	}
	if len(paged) != 5 {
		t.Fatalf("paged %d messages, want 5", len(paged))
	}
	for i, m := range paged {
		if m.Text != fmt.Sprintf("hello %d", i) || !m.SentAt.Equal(all[i].SentAt) {
			t.Errorf("page item %d = %+v", i, m)
		}
	}
	// Paging back with Before: the newest before the bound, ascending.
	back, err := c.Messages(ctx, api.MessageQuery{Contact: "bob", Before: paged[4].Seq, Limit: 2})
	if err != nil || len(back) != 2 || back[0].Seq != paged[2].Seq || back[1].Seq != paged[3].Seq {
		t.Errorf("Messages before %d = %+v, %v; want messages 2 and 3", paged[4].Seq, back, err)
	}

	convs, err := c.Conversations(ctx)
	if err != nil || len(convs) != 2 || convs[0].Contact.Name != "carol / c?" || convs[0].Unread != 1 ||
		convs[0].Last == nil || convs[0].Last.Text != "hi alice" || convs[1].Unread != 0 {
		t.Fatalf("Conversations = %+v, %v; want carol first with one unread", convs, err)
	}
	if err := c.MarkRead(ctx, "carol / c?", convs[0].Last.Seq); err != nil {
		t.Fatal(err)
	}
	if convs, err = c.Conversations(ctx); err != nil || convs[0].Unread != 0 || convs[0].ReadSeq != all[5].Seq {
		t.Errorf("after MarkRead: %+v, %v", convs, err)
	}
	if err := c.MarkRead(ctx, "dave", 1); !errors.Is(err, api.ErrUnknownContact) {
		t.Errorf("MarkRead of an unknown contact: %v", err)
	}
}

func TestBackendErrors(t *testing.T) {
	s := serve(t, apitest.New("alice"))
	c := s.client
	ctx := testContext(t)
	if _, err := c.AddContact(ctx, "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		call   func() error
		target error
		status int
		text   string
	}{
		{"send unknown", func() error { _, err := c.Send(ctx, "bbo", "hi"); return err },
			api.ErrUnknownContact, 404, `unknown contact "bbo" (known: bob)`},
		{"verify unknown", func() error { _, err := c.VerifyContact(ctx, "eve", true); return err },
			api.ErrUnknownContact, 404, "known: bob"},
		{"messages unknown", func() error { _, err := c.Messages(ctx, api.MessageQuery{Contact: "eve"}); return err },
			api.ErrUnknownContact, 404, "known: bob"},
		{"bad invite", func() error { _, err := c.AddContact(ctx, "x", "https://example.com"); return err },
			api.ErrBadInvite, 400, "invalid invite"},
		{"duplicate", func() error { _, err := c.AddContact(ctx, "bob", apitest.InviteFor("bob")); return err },
			api.ErrContactExists, 409, `"bob" already exists`},
		{"empty text", func() error { _, err := c.Send(ctx, "bob", ""); return err },
			api.ErrBadRequest, 400, "required"},
		{"limit too large", func() error {
			_, err := c.Messages(ctx, api.MessageQuery{Limit: api.MaxMessageLimit + 1})
			return err
		}, api.ErrBadRequest, 400, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *api.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not *api.Error", err, err)
			}
			if !errors.Is(err, tt.target) || e.Status != tt.status || !strings.Contains(e.Message, tt.text) {
				t.Errorf("got %q code %s status %d; want code %s status %d containing %q",
					e.Message, e.Code, e.Status, tt.target.(*api.Error).Code, tt.status, tt.text)
			}
		})
	}
}

// failing is a backend whose Status fails with an internal error.
type failing struct{ *apitest.Backend }

func (failing) Status(context.Context) (api.Status, error) {
	return api.Status{}, errors.New("node: database is closed")
}

func TestInternalError(t *testing.T) {
	s := serve(t, failing{apitest.New("alice")})
	_, err := s.client.Status(testContext(t))
	var e *api.Error
	if !errors.As(err, &e) || e.Status != 500 || e.Code != api.CodeInternal || e.Message != "node: database is closed" {
		t.Fatalf("Status error = %#v", err)
	}
}

func TestBadRequests(t *testing.T) {
	s := serve(t, apitest.New("alice"))
	if _, err := s.client.AddContact(testContext(t), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	hc := rawClient(s.path)
	big := `{"contact":"bob","text":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed json", "POST", "/v1/messages", `{"contact": "bob", "text": `, 400, api.CodeBadRequest},
		{"not an object", "POST", "/v1/messages", `[1,2]`, 400, api.CodeBadRequest},
		{"unknown field", "POST", "/v1/messages", `{"contact":"bob","text":"hi","to":"x"}`, 400, api.CodeBadRequest},
		{"trailing data", "POST", "/v1/messages", `{"contact":"bob","text":"hi"} {}`, 400, api.CodeBadRequest},
		{"empty body", "POST", "/v1/contacts", ``, 400, api.CodeBadRequest},
		{"oversized", "POST", "/v1/messages", big, 413, api.CodeTooLarge},
		{"unknown contact", "POST", "/v1/messages", `{"contact":"eve","text":"hi"}`, 404, api.CodeUnknownContact},
		{"unknown contact verify", "POST", "/v1/contacts/eve/verify", `{"confirm":true}`, 404, api.CodeUnknownContact},
		{"bad after", "GET", "/v1/messages?after=-1", ``, 400, api.CodeBadRequest},
		{"bad limit", "GET", "/v1/messages?limit=zero", ``, 400, api.CodeBadRequest},
		{"no endpoint", "GET", "/v1/nothing", ``, 404, api.CodeNotFound},
		{"no version", "GET", "/status", ``, 404, api.CodeNotFound},
		{"wrong method", "DELETE", "/v1/status", ``, 405, api.CodeMethodNotAllowed},
		{"wrong method verify", "GET", "/v1/contacts/bob/verify", ``, 405, api.CodeMethodNotAllowed},
		{"verify empty body", "POST", "/v1/contacts/bob/verify", ``, 200, ""},
		{"send ok", "POST", "/v1/messages", `{"contact":"bob","text":"hi"}`, 201, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, hc, tt.method, "http://sotto"+tt.path, tt.body, nil)
			if status != tt.status {
				t.Fatalf("status %d, want %d (body %s)", status, tt.status, body)
			}
			if tt.code == "" {
				return
			}
			var e wireError
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("error body %q is not JSON: %v", body, err)
			}
			if e.Code != tt.code || e.Error == "" {
				t.Errorf("error body %+v, want code %s", e, tt.code)
			}
		})
	}
}

func TestTCPToken(t *testing.T) {
	dir := t.TempDir()
	token, err := api.LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := api.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.NewServer(apitest.New("alice")).ServeAuth(ctx, ln, token) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	url := "http://" + ln.Addr().String() + "/v1/identity"
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	tests := []struct {
		name   string
		header map[string]string
		status int
	}{
		{"missing", nil, 401},
		{"wrong", map[string]string{"Authorization": "Bearer " + strings.Repeat("A", len(token))}, 401},
		{"prefix of token", map[string]string{"Authorization": "Bearer " + token[:len(token)-1]}, 401},
		{"not bearer", map[string]string{"Authorization": "Basic " + token}, 401},
		{"right", map[string]string{"Authorization": "Bearer " + token}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, hc, "GET", url, "", tt.header)
			if status != tt.status {
				t.Fatalf("status %d, want %d (%s)", status, tt.status, body)
			}
			if status == 401 {
				var e wireError
				if err := json.Unmarshal(body, &e); err != nil || e.Code != api.CodeUnauthorized {
					t.Errorf("body %s, want code unauthorized", body)
				}
			}
		})
	}
	// The Go client with the token works; with another token it gets a typed error.
	id, err := api.NewTCPClient(ln.Addr().String(), token).Identity(testContext(t))
	if err != nil || id.Name != "alice" {
		t.Errorf("TCP client Identity = %+v, %v", id, err)
	}
	_, err = api.NewTCPClient(ln.Addr().String(), "wrong-token-wrong-token").Identity(testContext(t))
	if !errors.Is(err, api.ErrUnauthorized) {
		t.Errorf("wrong token: %v, want unauthorized", err)
	}
}

func TestTCPRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "example.com:0", "nonsense"} {
		if ln, err := api.ListenTCP(addr); err == nil {
			ln.Close()
			t.Errorf("ListenTCP(%q) succeeded", addr)
		}
	}
	err := api.NewServer(apitest.New("a")).ServeTCP(context.Background(), "127.0.0.1:0", "short")
	if err == nil {
		t.Error("ServeTCP accepted a short token")
	}
}

func TestIsLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:0":     true,
		"127.0.0.1:8080":  true,
		"127.1.2.3:80":    true,
		"[::1]:8080":      true,
		"localhost:8080":  true,
		"0.0.0.0:8080":    false,
		":8080":           false,
		"[::]:8080":       false,
		"192.0.2.1:8080":  false,
		"example.com:80":  false,
		"127.0.0.1":       false,
		"127.0.0.1:http":  false,
		"127.0.0.1:70000": false,
		"":                false,
	} {
		if got := api.IsLoopbackAddr(addr); got != want {
			t.Errorf("IsLoopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestEvents(t *testing.T) {
	node := apitest.New("alice")
	s := serve(t, node)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	events, err := s.client.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// More events than either side buffers, so that flow control is exercised.
	const n = 3 * api.EventBuffer
	go func() {
		for i := range n {
			node.Receive("bob", fmt.Sprintf("m%d", i), api.ViaDirect)
		}
	}()
	timeout := time.After(testTimeout)
	var msgs int
	var lastSeq uint64
	for msgs < n {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("stream closed after %d messages", msgs)
			}
			switch ev.Type {
			case api.EventContactRequest:
				if ev.Contact == nil || ev.Contact.Name != "bob" || !ev.Contact.Request || msgs != 0 {
					t.Fatalf("contact request event %+v after %d messages", ev.Contact, msgs)
				}
			case api.EventMessage:
				m := ev.Message
				if m == nil || m.Text != fmt.Sprintf("m%d", msgs) || m.Seq <= lastSeq {
					t.Fatalf("event %d = %+v, out of order", msgs, m)
				}
				lastSeq = m.Seq
				msgs++
			default:
				t.Fatalf("unexpected event %+v", ev)
			}
		case <-timeout:
			t.Fatalf("timed out after %d events", msgs)
		}
	}
	// Cancelling the subscription closes the channel and ends the
	// server-side subscription.
	cancel()
	for range events {
	}
	if err := node.WaitSubscribers(testContext(t), 0); err != nil {
		t.Fatal(err)
	}
}

func TestEventsEndOnShutdown(t *testing.T) {
	node := apitest.New("alice")
	s := serve(t, node)
	events, err := s.client.Subscribe(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	for range events {
	}
	if err := node.WaitSubscribers(testContext(t), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(s.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left behind after shutdown: %v", err)
	}
	if _, err := api.Dial(s.dir); !errors.Is(err, api.ErrNoNode) {
		t.Errorf("Dial after shutdown: %v, want ErrNoNode", err)
	}
}

func TestSocketMode(t *testing.T) {
	s := serve(t, apitest.New("alice"))
	fi, err := os.Lstat(s.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
}

func TestSocketInUse(t *testing.T) {
	s := serve(t, apitest.New("alice"))
	if ln, err := api.ListenUnix(s.path); !errors.Is(err, api.ErrAlreadyServing) {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("second ListenUnix: %v, want ErrAlreadyServing", err)
	}
	// The running server is unaffected.
	if _, err := s.client.Status(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	path, err := api.SocketPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Leave a socket file behind with nobody listening, as a killed node would.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	if _, err := api.Dial(dir); !errors.Is(err, api.ErrNoNode) {
		t.Fatalf("Dial to stale socket: %v, want ErrNoNode", err)
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatalf("ListenUnix over stale socket: %v", err)
	}
	ln.Close()
}

func TestSocketNotASocket(t *testing.T) {
	dir := t.TempDir()
	path, _ := api.SocketPath(dir)
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := api.ListenUnix(path); err == nil {
		ln.Close()
		t.Fatal("ListenUnix replaced a regular file")
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("regular file changed: %q, %v", b, err)
	}
}

func TestSocketPathLong(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	short := filepath.Join(tmp, "d")
	p, err := api.SocketPath(short)
	if err != nil || p != filepath.Join(short, api.SocketName) {
		t.Errorf("SocketPath(%q) = %q, %v", short, p, err)
	}
	long := filepath.Join(tmp, strings.Repeat("long-directory-name-", 6))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	p, err = api.SocketPath(long)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) > api.MaxSocketPath || !strings.HasPrefix(p, tmp+string(filepath.Separator)) {
		t.Fatalf("SocketPath(long) = %q", p)
	}
	if p2, _ := api.SocketPath(long + "/"); p2 != p {
		t.Errorf("SocketPath is not stable: %q vs %q", p, p2)
	}
	if p3, _ := api.SocketPath(long + "x"); p3 == p {
		t.Errorf("different data dirs share socket %q", p)
	}
	// Server and client meet at the fallback path.
	ln, err := api.ListenUnix(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(filepath.Dir(p))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("fallback directory mode %v, %v; want 0700", fi.Mode(), err)
	}
	if _, err := api.Dial(long); err != nil {
		t.Errorf("Dial(long): %v", err)
	}
}
