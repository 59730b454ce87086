package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/api/apitest"
)

const testTimeout = 10 * time.Second

type result struct {
	code           int
	stdout, stderr string
}

// syncBuffer is a bytes.Buffer safe for concurrent use that announces writes.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{writes: make(chan struct{}, 1)} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.writes <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the buffer contains s.
func (b *syncBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(testTimeout)
	for !strings.Contains(b.String(), s) {
		select {
		case <-b.writes:
		case <-timeout:
			t.Fatalf("output %q never contained %q", b.String(), s)
		}
	}
}

type harness struct {
	app   App
	env   map[string]string
	stdin string
}

func (h harness) run(ctx context.Context, args ...string) result {
	out, errOut := newSyncBuffer(), newSyncBuffer()
	c := &cli{app: h.app, stdin: strings.NewReader(h.stdin), stdout: out, stderr: errOut,
		getenv: func(k string) string { return h.env[k] }}
	code := c.main(ctx, args)
	return result{code, out.String(), errOut.String()}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// offline returns a harness whose App opens node as the data directory's
// backend, with SOTTO_HOME pointing at an existing directory.
func offline(t *testing.T, node *apitest.Backend) (harness, *int) {
	opened := new(int)
	return harness{
		app: App{OpenBackend: func(dir string) (api.Backend, func(), error) {
			*opened++
			return node, func() {}, nil
		}},
		env: map[string]string{"SOTTO_HOME": t.TempDir()},
	}, opened
}

func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		args     []string
		wantPos  []string
		wantData string
		wantJSON bool
	}{
		{[]string{"bob", "hi"}, []string{"bob", "hi"}, "", false},
		{[]string{"--data", "D", "bob", "hi"}, []string{"bob", "hi"}, "D", false},
		{[]string{"bob", "--data", "D", "hi", "--json"}, []string{"bob", "hi"}, "D", true},
		{[]string{"bob", "hi", "-data=D"}, []string{"bob", "hi"}, "D", false},
		{[]string{"bob", "--", "--json", "-x"}, []string{"bob", "--json", "-x"}, "", false},
		{[]string{"--json", "--", "bob"}, []string{"bob"}, "", true},
		{[]string{"bob", "-", "--json"}, []string{"bob", "-"}, "", true},
		{nil, nil, "", false},
	}
	for _, tt := range tests {
		fs := newFlagSet("t")
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		pos, err := parseInterspersed(fs, tt.args)
		if err != nil {
			t.Errorf("%q: %v", tt.args, err)
			continue
		}
		if fmt.Sprint(pos) != fmt.Sprint(tt.wantPos) || *data != tt.wantData || *asJSON != tt.wantJSON {
			t.Errorf("%q: pos %q data %q json %v; want %q %q %v", tt.args, pos, *data, *asJSON, tt.wantPos, tt.wantData, tt.wantJSON)
		}
	}
}

func TestUsage(t *testing.T) {
	h, opened := offline(t, apitest.New("alice"))
	ctx := testContext(t)
	tests := []struct {
		args   []string
		code   int
		stderr string // prefix of the first stderr line
	}{
		{nil, exitUsage, "sotto: missing command"},
		{[]string{"nope"}, exitUsage, `sotto: unknown command "nope"`},
		{[]string{"contact"}, exitUsage, "sotto: contact: missing subcommand"},
		{[]string{"contact", "rm"}, exitUsage, `sotto: contact: unknown subcommand "rm"`},
		{[]string{"send", "bob"}, exitUsage, "sotto send: need a contact NAME"},
		{[]string{"send", "--bogus", "bob", "hi"}, exitUsage, "sotto send: flag provided but not defined: --bogus"},
		{[]string{"send", "-bogus", "bob", "hi"}, exitUsage, "sotto send: flag provided but not defined: --bogus"},
		{[]string{"send", "bob", "hi", "--data"}, exitUsage, "sotto send: flag needs an argument: --data"},
		{[]string{"contact", "add", "bob"}, exitUsage, "sotto contact add: need a NAME and an INVITE"},
		{[]string{"contact", "add", "bob", "x", "y"}, exitUsage, `sotto contact add: unexpected argument "y"`},
		{[]string{"contact", "verify"}, exitUsage, "sotto contact verify: need a contact NAME"},
		{[]string{"contact", "list", "x"}, exitUsage, `sotto contact list: unexpected argument "x"`},
		{[]string{"messages", "a", "b"}, exitUsage, `sotto messages: unexpected argument "b"`},
		{[]string{"status", "--json=maybe"}, exitUsage, `sotto status: invalid boolean value "maybe" for --json: parse error`},
		{[]string{"help", "nope"}, exitUsage, `sotto help: unknown command "nope"`},
		{[]string{"--json", "id"}, exitUsage, "sotto: flag --json goes after the command name (sotto COMMAND --json ...); only --data DIR may come before it"},
		{[]string{"--data", "D", "-listen=x", "run"}, exitUsage, "sotto: flag --listen goes after the command name"},
		{[]string{"---data", "D", "id"}, exitUsage, "sotto: bad flag syntax: ---data"},
		{[]string{"--data"}, exitUsage, "sotto: flag needs an argument: --data"},
		{[]string{"--data", "D"}, exitUsage, "sotto: missing command"},
		{[]string{"--data=D", "nope"}, exitUsage, `sotto: unknown command "nope"`},
		{[]string{"--data", "D", "demo"}, exitUsage, "sotto demo: flag provided but not defined: --data"},
		{[]string{"--data", "D", "--help"}, exitOK, ""},
		{[]string{"--data", "D", "help", "send"}, exitOK, ""},
		{[]string{"--help"}, exitOK, ""},
		{[]string{"help"}, exitOK, ""},
		{[]string{"help", "contact"}, exitOK, ""},
		{[]string{"help", "contact", "add"}, exitOK, ""},
		{[]string{"contact", "-h"}, exitOK, ""},
	}
	for _, cmd := range commands {
		tests = append(tests, struct {
			args   []string
			code   int
			stderr string
		}{append(strings.Fields(cmd.name), "x", "--help"), exitOK, ""})
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := h.run(ctx, tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			if tt.code == exitOK {
				if r.stderr != "" || !strings.HasPrefix(r.stdout, "usage: sotto ") {
					t.Errorf("help: stdout %q, stderr %q", r.stdout, r.stderr)
				}
				return
			}
			first, rest, _ := strings.Cut(r.stderr, "\n")
			if !strings.HasPrefix(first, tt.stderr) || !strings.HasPrefix(rest, "usage: sotto ") || r.stdout != "" {
				t.Errorf("stderr %q, stdout %q; want first line %q then usage", r.stderr, r.stdout, tt.stderr)
			}
		})
	}
	if *opened != 0 {
		t.Errorf("usage errors opened the backend %d times", *opened)
	}
}

// TestFlagErrorDashes checks that each kind of error of the flag package
// names the flag with two dashes, however it was written.
func TestFlagErrorDashes(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--nope"}, "flag provided but not defined: --nope"},
		{[]string{"-nope"}, "flag provided but not defined: --nope"},
		{[]string{"--s"}, "flag needs an argument: --s"},
		{[]string{"-b=maybe"}, `invalid boolean value "maybe" for --b: parse error`},
		{[]string{`--b=a "-b" \`}, `invalid boolean value "a \"-b\" \\" for --b: parse error`},
		{[]string{"--f", "x"}, `invalid value "x" for flag --f: refused`},
		{[]string{"--bf"}, "invalid boolean flag --bf: refused"},
		{[]string{"---x"}, "bad flag syntax: ---x"},
	}
	for _, tt := range tests {
		fs := newFlagSet("t")
		fs.String("s", "", "")
		fs.Bool("b", false, "")
		refuse := func(string) error { return errors.New("refused") }
		fs.Func("f", "", refuse)
		fs.BoolFunc("bf", "", refuse)
		_, err := parseInterspersed(fs, tt.args)
		if !isFlagError(err) || err.Error() != tt.want {
			t.Errorf("%q: %v, want the flag error %q", tt.args, err, tt.want)
		}
	}
}

// TestDataBeforeCommand checks that --data before the command name selects
// the data directory as it does after it, and that a --data after the
// command name wins.
func TestDataBeforeCommand(t *testing.T) {
	dir := t.TempDir()
	var openedDir string
	h := harness{
		app: App{OpenBackend: func(d string) (api.Backend, func(), error) {
			openedDir = d
			return apitest.New("alice"), func() {}, nil
		}},
		env: map[string]string{"SOTTO_HOME": t.TempDir()},
	}
	for _, args := range [][]string{
		{"--data", dir, "id"},
		{"--data=" + dir, "id", "--json"},
		{"-data", dir, "contact", "list"},
		{"-data=" + dir, "contact", "verify", "--", "bob"},
		{"--data", t.TempDir(), "id", "--data", dir},
	} {
		openedDir = ""
		r := h.run(testContext(t), args...)
		if openedDir != dir {
			t.Errorf("%q opened %q, want %q (%+v)", args, openedDir, dir, r)
		}
	}
}

func TestHelpListsFlags(t *testing.T) {
	h := harness{}
	for _, cmd := range commands {
		r := h.run(testContext(t), append(strings.Fields(cmd.name), "--help")...)
		// Every flag in the synopsis is documented below it, and vice versa.
		for _, word := range strings.Fields(cmd.synopsis) {
			if f := strings.Trim(word, "[].,"); strings.HasPrefix(f, "--") && !strings.Contains(r.stdout, "\n  "+f) {
				t.Errorf("%s --help does not describe %s:\n%s", cmd.name, f, r.stdout)
			}
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if f, ok := strings.CutPrefix(line, "  --"); ok && !strings.Contains(cmd.synopsis, "--"+strings.Fields(f)[0]) {
				t.Errorf("%s: flag --%s missing from the synopsis %q", cmd.name, f, cmd.synopsis)
			}
		}
	}
}

func TestDataDir(t *testing.T) {
	tests := []struct {
		flag string
		env  map[string]string
		want string
	}{
		{"/f", map[string]string{"SOTTO_HOME": "/s", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/f"},
		{"", map[string]string{"SOTTO_HOME": "/s", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/s"},
		{"", map[string]string{"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/sotto"},
		{"", map[string]string{"HOME": "/h"}, "/h/.local/share/sotto"},
		{"", nil, ""},
	}
	for _, tt := range tests {
		c := &cli{getenv: func(k string) string { return tt.env[k] }}
		got, err := c.dataDir(tt.flag)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("flag %q env %v: %q, %v; want %q", tt.flag, tt.env, got, err, tt.want)
		}
	}
}

func TestCommandsOffline(t *testing.T) {
	node := apitest.New("alice")
	h, _ := offline(t, node)
	ctx := testContext(t)

	r := h.run(ctx, "id", "--json")
	var id api.Identity
	if err := json.Unmarshal([]byte(r.stdout), &id); r.code != 0 || err != nil || id.Name != "alice" {
		t.Fatalf("id --json: %+v %v", r, err)
	}
	if r := h.run(ctx, "id"); r.code != 0 || !strings.Contains(r.stdout, "account:    "+id.Account) {
		t.Errorf("id: %+v", r)
	}
	if r := h.run(ctx, "invite"); r.code != 0 || r.stdout != apitest.InviteFor("alice")+"\n" {
		t.Errorf("invite: %+v", r)
	}
	if r := h.run(ctx, "invite", "--json"); r.code != 0 || r.stdout != `{"invite":"`+apitest.InviteFor("alice")+`"}`+"\n" {
		t.Errorf("invite --json: %+v", r)
	}
	if r := h.run(ctx, "invite", "--qr"); r.code != 0 || !strings.HasSuffix(r.stdout, "\n"+apitest.InviteFor("alice")+"\n") ||
		!strings.Contains(r.stdout, "█") {
		t.Errorf("invite --qr: %+v", r)
	}
	if r := h.run(ctx, "contact", "list", "--json"); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("contact list --json with no contacts: %+v", r)
	}
	// Flags after positional arguments.
	if r := h.run(ctx, "contact", "add", "bob", apitest.InviteFor("bob"), "--json"); r.code != 0 || !strings.Contains(r.stdout, `"name":"bob"`) {
		t.Fatalf("contact add: %+v", r)
	}
	if r := h.run(ctx, "contact", "add", "x", "garbage"); r.code != exitFailure || r.stderr != "sotto: invalid invite: expected "+apitest.InvitePrefix+"NAME\n" {
		t.Errorf("contact add with a bad invite: %+v", r)
	}
	if r := h.run(ctx, "contact", "verify", "bob"); r.code != 0 || !strings.Contains(r.stdout, "sotto contact verify bob --confirm") {
		t.Errorf("contact verify: %+v", r)
	}
	if r := h.run(ctx, "contact", "verify", "--confirm", "bob"); r.code != 0 || !strings.Contains(r.stdout, "bob is now verified") {
		t.Errorf("contact verify --confirm: %+v", r)
	}
	if r := h.run(ctx, "contact", "list"); r.code != 0 || !strings.Contains(r.stdout, "bob   verified") {
		t.Errorf("contact list: %+v", r)
	}

	// Interspersed flags: the words of TEXT around a flag are joined.
	if r := h.run(ctx, "send", "bob", "hello", "--json", "world"); r.code != 0 || !strings.Contains(r.stdout, `"text":"hello world"`) {
		t.Errorf("send: %+v", r)
	}
	if r := h.run(ctx, "send", "bob", "--", "--not-a-flag"); r.code != 0 || !strings.HasPrefix(r.stdout, "Queued to bob") {
		t.Errorf("send after --: %+v", r)
	}
	h.stdin = "from stdin\n"
	if r := h.run(ctx, "send", "bob", "-"); r.code != 0 {
		t.Errorf("send -: %+v", r)
	}
	h.stdin = ""
	r = h.run(ctx, "send", "bbo", "hi")
	if r.code != exitFailure || r.stderr != "sotto: unknown contact \"bbo\" (known: bob)\n" || r.stdout != "" {
		t.Errorf("send to unknown contact: %+v", r)
	}
	node.Receive("bob", "hi\x1b[2Jthere", api.ViaMailbox)

	r = h.run(ctx, "messages", "--json", "bob")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 4 {
		t.Fatalf("messages --json: %+v", r)
	}
	wantText := []string{"hello world", "--not-a-flag", "from stdin", "hi\x1b[2Jthere"}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if m["text"] != wantText[i] || m["contact"] != "bob" || m["id"] == "" {
			t.Errorf("line %d = %v", i, m)
		}
		if _, err := time.Parse(time.RFC3339, fmt.Sprint(m["sent_at"])); err != nil {
			t.Errorf("sent_at %v: %v", m["sent_at"], err)
		}
		out := m["direction"] == "out"
		if _, hasState := m["state"]; hasState != out {
			t.Errorf("line %d: state present %v for direction %v", i, hasState, m["direction"])
		}
		if _, hasVia := m["via"]; hasVia == out {
			t.Errorf("line %d: via present %v for direction %v", i, hasVia, m["direction"])
		}
	}
	// Text output never passes terminal control sequences through.
	r = h.run(ctx, "messages")
	if r.code != 0 || strings.ContainsRune(r.stdout, '\x1b') || !strings.Contains(r.stdout, "bob < hi\uFFFD[2Jthere  (via mailbox)") {
		t.Errorf("messages: %+v", r)
	}
	if r := h.run(ctx, "messages", "carol"); r.code != exitFailure || !strings.HasPrefix(r.stderr, `sotto: unknown contact "carol"`) {
		t.Errorf("messages for unknown contact: %+v", r)
	}
	if r := h.run(ctx, "status", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"outbox_pending":3`) {
		t.Errorf("status --json: %+v", r)
	}
}

// serveSocket serves b on the control socket of dir until the test ends.
func serveSocket(t *testing.T, dir string, b api.Backend) {
	t.Helper()
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
	go func() { done <- api.NewServer(b).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serving the control socket: %v", err)
		}
	})
}

// follow runs `sotto messages --follow ARGS...` with h until the returned
// stop is called; stop returns its exit status.
func (h harness) follow(t *testing.T, args ...string) (stdout, stderr *syncBuffer, stop func() int) {
	ctx, cancel := context.WithCancel(testContext(t))
	stdout, stderr = newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		c := &cli{app: h.app, stdin: strings.NewReader(""), stdout: stdout, stderr: stderr,
			getenv: func(k string) string { return h.env[k] }}
		done <- c.main(ctx, append([]string{"messages", "--follow"}, args...))
	}()
	return stdout, stderr, func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(testTimeout):
			t.Fatal("messages --follow did not stop")
			return -1
		}
	}
}

func TestMessagesFollow(t *testing.T) {
	node := apitest.New("alice")
	if _, err := node.AddContact(context.Background(), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	node.Receive("bob", "before", api.ViaDirect)
	dir := t.TempDir()
	serveSocket(t, dir, node)
	h := harness{env: map[string]string{"SOTTO_HOME": dir}} // no OpenBackend: only the socket answers
	out, _, stop := h.follow(t, "--json", "bob")
	out.waitFor(t, `"text":"before"`)
	if err := node.WaitSubscribers(testContext(t), 1); err != nil {
		t.Fatal(err)
	}
	node.Receive("carol", "not shown", api.ViaDirect)
	node.Receive("bob", "after", api.ViaMailbox)
	out.waitFor(t, `"text":"after"`)
	if code := stop(); code != 0 {
		t.Errorf("exit %d after interrupt", code)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || strings.Contains(out.String(), "not shown") {
		t.Errorf("output %q: want exactly the two messages with bob, once each", out.String())
	}
}

// TestMessagesFollowStates checks that --follow prints state changes:
// with --json as the message's line with its new state and "event":"state",
// as text as a note.
func TestMessagesFollowStates(t *testing.T) {
	node := apitest.New("alice")
	if _, err := node.AddContact(context.Background(), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	node.Receive("bob", "earlier", api.ViaDirect)
	dir := t.TempDir()
	serveSocket(t, dir, node)
	h := harness{env: map[string]string{"SOTTO_HOME": dir}}
	jsonOut, _, stopJSON := h.follow(t, "--json", "bob")
	textOut, _, stopText := h.follow(t, "bob")
	// Both have read the history once they print it.
	jsonOut.waitFor(t, `"text":"earlier"`)
	textOut.waitFor(t, "bob < earlier")
	m, err := node.Send(context.Background(), "bob", "hello")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct {
		state    api.State
		storedAt int
	}{{api.StateSent, 0}, {api.StateStored, 1}, {api.StateDelivered, 0}} {
		if err := node.SetState(m.ID, st.state, st.storedAt); err != nil {
			t.Fatal(err)
		}
	}
	jsonOut.waitFor(t, `"state":"delivered"`)
	textOut.waitFor(t, "delivered)")
	if code := stopJSON(); code != 0 {
		t.Errorf("--json: exit %d after interrupt", code)
	}
	if code := stopText(); code != 0 {
		t.Errorf("text: exit %d after interrupt", code)
	}

	var states []string
	lines := strings.Split(strings.TrimSpace(jsonOut.String()), "\n")
	for i, line := range lines[1:] { // after "earlier"
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if got["id"] != m.ID || got["text"] != "hello" || got["contact"] != "bob" || got["direction"] != "out" {
			t.Errorf("line %q: want message %s's fields", line, m.ID)
		}
		event, hasEvent := got["event"]
		if (i == 0) == hasEvent || (hasEvent && event != "state") {
			t.Errorf("line %d %q: want \"event\":\"state\" on state changes only", i, line)
		}
		states = append(states, fmt.Sprint(got["state"]))
	}
	if want := "queued sent stored delivered"; strings.Join(states, " ") != want {
		t.Errorf("states %v, want %s", states, want)
	}
	for _, want := range []string{"bob > hello  (queued)", ": sent)", ": stored at 1 mailbox)", ": delivered)"} {
		if !strings.Contains(textOut.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, textOut.String())
		}
	}
}

// TestMessagesFollowWaits runs --follow while no node serves the data
// directory: it prints what is stored, lets go of the directory, says it
// waits, and follows the node that then serves the socket.
func TestMessagesFollowWaits(t *testing.T) {
	offlineNode := apitest.New("alice")
	if _, err := offlineNode.AddContact(context.Background(), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	offlineNode.Receive("bob", "stored", api.ViaMailbox)
	dir := t.TempDir()
	released := make(chan struct{})
	h := harness{env: map[string]string{"SOTTO_HOME": dir}, app: App{
		OpenBackend: func(string) (api.Backend, func(), error) {
			return offlineNode, func() { close(released) }, nil
		},
	}}
	out, errOut, stop := h.follow(t, "--json")
	out.waitFor(t, `"text":"stored"`)
	errOut.waitFor(t, "No node is running for "+dir+"; waiting for one to start (`sotto run --data "+dir+"`).")
	select {
	case <-released:
	case <-time.After(testTimeout):
		t.Fatal("the follower still holds the data directory while it waits")
	}

	// The node starts with what the store held, and a message arrives.
	running := apitest.New("alice")
	if _, err := running.AddContact(context.Background(), "bob", apitest.InviteFor("bob")); err != nil {
		t.Fatal(err)
	}
	running.Receive("bob", "stored", api.ViaMailbox)
	serveSocket(t, dir, running)
	errOut.waitFor(t, "A node is running for "+dir+"; following it.")
	if err := running.WaitSubscribers(testContext(t), 1); err != nil {
		t.Fatal(err)
	}
	running.Receive("bob", "new", api.ViaDirect)
	out.waitFor(t, `"text":"new"`)
	if code := stop(); code != 0 {
		t.Errorf("exit %d after interrupt", code)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("output %q: want the stored message and the new one, once each", out.String())
	}
}

func TestNotAvailable(t *testing.T) {
	h := harness{env: map[string]string{"SOTTO_HOME": t.TempDir()}}
	for _, args := range [][]string{{"init"}, {"run"}, {"demo"}, {"status"}} {
		r := h.run(testContext(t), args...)
		if r.code != exitFailure || !strings.Contains(r.stderr, "not available in this build") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: %+v", args, r)
		}
	}
}

func TestInitAndDemoHooks(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("correct horse\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got InitConfig
	var keep bool
	h := harness{env: map[string]string{"XDG_DATA_HOME": dir}, app: App{
		Init: func(ctx context.Context, cfg InitConfig) (api.Identity, error) {
			got = cfg
			return api.Identity{Name: cfg.Name, Account: "acct"}, nil
		},
		Demo: func(ctx context.Context, k bool, out io.Writer) error {
			keep = k
			fmt.Fprintln(out, "demo ran")
			return nil
		},
	}}
	r := h.run(testContext(t), "init", "--name", "alice", "--passphrase-file", pass, "--json")
	if r.code != 0 || r.stdout != `{"peer_id":"","account":"acct","addrs":null,"name":"alice"}`+"\n" {
		t.Errorf("init: %+v", r)
	}
	if got.DataDir != filepath.Join(dir, "sotto") || got.Name != "alice" || string(got.Passphrase) != "correct horse" {
		t.Errorf("InitConfig = %+v", got)
	}
	if r := h.run(testContext(t), "demo", "--keep"); r.code != 0 || r.stdout != "demo ran\n" || !keep {
		t.Errorf("demo: %+v keep=%v", r, keep)
	}
	h.app.Init = func(context.Context, InitConfig) (api.Identity, error) {
		return api.Identity{}, errors.New("an identity already exists in this directory")
	}
	if r := h.run(testContext(t), "init"); r.code != exitFailure || r.stderr != "sotto: an identity already exists in this directory\n" {
		t.Errorf("failing init: %+v", r)
	}
}

// TestRunServesAPI runs `sotto run` with a hook that serves an in-memory
// node, and drives it with other commands over the control socket.
func TestRunServesAPI(t *testing.T) {
	dir := t.TempDir()
	node := apitest.New("alice")
	ready := make(chan struct{})
	var cfg RunConfig
	runner := harness{env: map[string]string{"SOTTO_HOME": dir, "SOTTO_PASSPHRASE_FILE": ""}, app: App{
		Run: func(ctx context.Context, c RunConfig) error {
			cfg = c
			close(ready)
			return c.ServeAPI(ctx, node)
		},
	}}
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	logs := newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		c := &cli{app: runner.app, stdin: strings.NewReader(""), stdout: io.Discard, stderr: logs,
			getenv: func(k string) string { return runner.env[k] }}
		done <- c.main(ctx, []string{"run", "--listen", "/ip4/127.0.0.1/tcp/0", "--mailbox",
			"--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--bootstrap", "/ip4/127.0.0.1/tcp/4001/p2p/x",
			"--mailbox-node", "/ip4/127.0.0.1/tcp/4002/p2p/y", "--mailbox-node", "/ip4/127.0.0.1/tcp/4003/p2p/z"})
	}()
	<-ready
	if len(cfg.Listen) != 2 || len(cfg.Bootstrap) != 1 || len(cfg.MailboxNodes) != 2 || !cfg.Mailbox || cfg.DataDir != dir || cfg.Passphrase != nil {
		t.Errorf("RunConfig = %+v", cfg)
	}
	logs.waitFor(t, "control socket ready")
	// Another command finds the node through the socket (the App it runs
	// with has no OpenBackend, so nothing else could answer).
	client := harness{env: map[string]string{"SOTTO_HOME": dir}}
	r := client.run(ctx, "id", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"name":"alice"`) {
		t.Fatalf("id over the socket: %+v", r)
	}
	if r := client.run(ctx, "contact", "add", "bob", apitest.InviteFor("bob")); r.code != 0 {
		t.Fatalf("contact add: %+v", r)
	}
	if r := client.run(ctx, "send", "bob", "hi"); r.code != 0 {
		t.Fatalf("send: %+v", r)
	}
	if r := client.run(ctx, "send", "eve", "hi"); r.code != 1 || r.stderr != "sotto: unknown contact \"eve\" (known: bob)\n" {
		t.Errorf("send to unknown contact over the socket: %+v", r)
	}
	// A second node on the same data directory is refused.
	second := runner
	second.app.Run = func(ctx context.Context, c RunConfig) error { return c.ServeAPI(ctx, node) }
	if r := second.run(ctx, "run"); r.code != 1 || !strings.Contains(r.stderr, "another process is serving") {
		t.Errorf("second run: %+v", r)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("run after interrupt: exit %d, log %s", code, logs.String())
	}
}

// Peer addresses on the command line must be multiaddrs with a peer ID;
// the error names the flag and says what to do.
func TestParsePeersNamesTheFlag(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"not-an-addr", `--mailbox-node "not-an-addr" is not a multiaddr`},
		{"/ip4/198.51.100.7/tcp/4001", `--mailbox-node "/ip4/198.51.100.7/tcp/4001" has no peer ID: end it with /p2p/PEERID`},
	} {
		_, err := parsePeers("--mailbox-node", []string{tc.addr})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parsePeers(%q) = %v, want %q", tc.addr, err, tc.want)
		}
	}
	const id = "/p2p/12D3KooWGZcF7ZGYH1aGTt7Fj9svhG6a3ufW5qbYtg879HboyVxV"
	if ps, err := parsePeers("--mailbox-node", []string{"/ip4/198.51.100.7/tcp/4001" + id, "/ip4/198.51.100.7/udp/4001/quic-v1" + id}); err != nil || len(ps) != 1 || len(ps[0].Addrs) != 2 {
		t.Errorf("parsePeers of two addresses of one node = %v, %v; want one peer with both", ps, err)
	}
}

// TestRunClockSkew: $SOTTO_TEST_CLOCK_SKEW reaches the node's
// configuration as a duration, and a value that is not one is refused
// with what to write instead.
func TestRunClockSkew(t *testing.T) {
	var got time.Duration
	app := App{Run: func(ctx context.Context, c RunConfig) error { got = c.ClockSkew; return nil }}
	env := map[string]string{"SOTTO_HOME": t.TempDir(), "SOTTO_TEST_CLOCK_SKEW": "-10m"}
	if r := (harness{app: app, env: env}).run(testContext(t), "run"); r.code != 0 || got != -10*time.Minute {
		t.Fatalf("run with SOTTO_TEST_CLOCK_SKEW=-10m: %+v, skew %v", r, got)
	}
	env["SOTTO_TEST_CLOCK_SKEW"] = "ten minutes"
	r := (harness{app: app, env: env}).run(testContext(t), "run")
	if r.code != 2 || !strings.Contains(r.stderr, "not a duration such as 10m or -10m") {
		t.Fatalf("run with SOTTO_TEST_CLOCK_SKEW=%q: %+v", env["SOTTO_TEST_CLOCK_SKEW"], r)
	}
}

// TestRunLogLevel: $SOTTO_LOG_LEVEL sets how much `sotto run` logs; a
// value that is no level is refused with the ones there are.
func TestRunLogLevel(t *testing.T) {
	var debug bool
	app := App{Run: func(ctx context.Context, c RunConfig) error {
		debug = c.Log.Enabled(ctx, slog.LevelDebug)
		return nil
	}}
	env := map[string]string{"SOTTO_HOME": t.TempDir()}
	for _, level := range []string{"", "debug", "info"} {
		env["SOTTO_LOG_LEVEL"] = level
		if r := (harness{app: app, env: env}).run(testContext(t), "run"); r.code != 0 || debug != (level == "debug") {
			t.Fatalf("run with SOTTO_LOG_LEVEL=%q: %+v, debug logged: %v", level, r, debug)
		}
	}
	env["SOTTO_LOG_LEVEL"] = "loud"
	if r := (harness{app: app, env: env}).run(testContext(t), "run"); r.code != 2 || !strings.Contains(r.stderr, "use debug, info, warn or error") {
		t.Fatalf("run with SOTTO_LOG_LEVEL=loud: %+v", r)
	}
}
