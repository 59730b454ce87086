package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of the end-to-end test.
const (
	e2eBuildTimeout   = 5 * time.Minute  // go build of the binary
	e2eCommandTimeout = 30 * time.Second // one short command
	e2eWait           = 90 * time.Second // a node to start, a message to arrive
	e2eStopTimeout    = 20 * time.Second // a node to stop after SIGINT
	e2ePoll           = 200 * time.Millisecond
)

// TestEndToEnd builds the real binary and runs three nodes on loopback: a
// bootstrap node, alice and bob. Alice and bob exchange invites with the
// commands a user types, and messages travel both ways; a message sent
// while alice's node is stopped goes out when it runs again.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three nodes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("unix sockets and signals")
	}
	e := newE2E(t)

	for _, name := range []string{"boot", "alice", "bob"} {
		e.sotto("init", "--data", e.dir(name), "--name", name)
	}
	boot := e.start("boot", "--mailbox") // also the mailbox for the offline part
	bootAddr := strings.TrimPrefix(boot.startupLine("address: /ip4/127.0.0.1/"), "address: ")
	if !strings.Contains(bootAddr, "/p2p/12D3KooW") {
		t.Fatalf("bootstrap address %q has no peer ID", bootAddr)
	}
	alice := e.start("alice", "--bootstrap", bootAddr)
	bob := e.start("bob", "--bootstrap", bootAddr)

	aliceInvite := strings.TrimSpace(e.sotto("invite", "--data", e.dir("alice")))
	bobInvite := strings.TrimSpace(e.sotto("invite", "--data", e.dir("bob")))
	e.sotto("contact", "add", "--data", e.dir("alice"), "bob", bobInvite)
	e.sotto("contact", "add", "--data", e.dir("bob"), "alice", aliceInvite)

	// Both nodes run: delivered end to end.
	out := e.sotto("send", "--data", e.dir("alice"), "--json", "bob", "hello bob")
	var sent messageLine
	if err := json.Unmarshal([]byte(out), &sent); err != nil || sent.ID == "" {
		t.Fatalf("send --json printed %q: %v", out, err)
	}
	e.waitMessage("alice", "bob", sent.ID, func(m messageLine) bool {
		return m.Direction == "out" && m.State == "delivered"
	})
	got := e.waitMessage("bob", "alice", sent.ID, func(m messageLine) bool { return m.Direction == "in" })
	if got.Text != "hello bob" || got.Via != "direct" {
		t.Errorf("bob received %+v", got)
	}

	// And back.
	out = e.sotto("send", "--data", e.dir("bob"), "--json", "alice", "hi alice")
	if err := json.Unmarshal([]byte(out), &sent); err != nil {
		t.Fatal(err)
	}
	if m := e.waitMessage("alice", "bob", sent.ID, func(m messageLine) bool { return m.Direction == "in" }); m.Text != "hi alice" {
		t.Errorf("alice received %+v", m)
	}

	// Alice's node stops; her message waits in the outbox and goes out
	// when it runs again.
	alice.stop()
	out = e.sotto("send", "--data", e.dir("alice"), "bob", "sent while offline")
	if !strings.Contains(out, "goes out when the node next runs") {
		t.Errorf("send with no node running printed %q", out)
	}
	_, after, _ := strings.Cut(out, "(id ")
	id, _, _ := strings.Cut(after, ")")
	if m := e.waitMessage("alice", "bob", id, nil); m.State != "queued" {
		t.Errorf("queued message: %+v", m)
	}
	alice = e.start("alice", "--bootstrap", bootAddr)
	if m := e.waitMessage("bob", "alice", id, func(m messageLine) bool { return m.Direction == "in" }); m.Text != "sent while offline" {
		t.Errorf("bob received %+v", m)
	}
	e.waitMessage("alice", "bob", id, func(m messageLine) bool { return m.State == "delivered" })

	// Bob's node stops; Alice's message goes to the mailbox; Alice stops
	// too, so only the mailbox holds it; Bob comes back and gets it from
	// the mailbox; Alice comes back and sees it delivered.
	bob.stop()
	out = e.sotto("send", "--data", e.dir("alice"), "--json", "bob", "kept for you by a mailbox")
	if err := json.Unmarshal([]byte(out), &sent); err != nil {
		t.Fatal(err)
	}
	if m := e.waitMessage("alice", "bob", sent.ID, func(m messageLine) bool { return m.State == "stored" }); m.StoredAt < 1 {
		t.Errorf("stored message: %+v", m)
	}
	alice.stop()
	bob = e.start("bob", "--bootstrap", bootAddr)
	if m := e.waitMessage("bob", "alice", sent.ID, func(m messageLine) bool { return m.Direction == "in" }); m.Text != "kept for you by a mailbox" || m.Via != "mailbox" {
		t.Errorf("bob received %+v, want it via the mailbox", m)
	}
	e.start("alice", "--bootstrap", bootAddr)
	e.waitMessage("alice", "bob", sent.ID, func(m messageLine) bool { return m.State == "delivered" })
}

// e2e is the environment of an end-to-end test: the binary, a directory
// for the data directories, and the running nodes.
type e2e struct {
	t    *testing.T
	bin  string
	root string
	env  []string
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	bin := builtSotto(t)
	root := t.TempDir()
	env := append(os.Environ(), "SOTTO_NO_MDNS=1", "SOTTO_HOME=", "SOTTO_PASSPHRASE_FILE=", "TMPDIR="+root)
	return &e2e{t: t, bin: bin, root: root, env: env}
}

func (e *e2e) dir(name string) string { return filepath.Join(e.root, name) }

// sotto runs a short command and returns its standard output; it fails
// the test if the command fails.
func (e *e2e) sotto(args ...string) string {
	e.t.Helper()
	out, err := e.try(args...)
	if err != nil {
		e.t.Fatalf("sotto %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (e *e2e) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = e.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// messages returns the messages of name's conversation with contact.
func (e *e2e) messages(name, contact string) []messageLine {
	e.t.Helper()
	out := e.sotto("messages", "--data", e.dir(name), "--json", contact)
	var ms []messageLine
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m messageLine
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			e.t.Fatalf("messages --json printed %q: %v", line, err)
		}
		ms = append(ms, m)
	}
	return ms
}

// waitMessage polls name's conversation with contact until the message id
// is there and satisfies ok (nil: any state).
func (e *e2e) waitMessage(name, contact, id string, ok func(messageLine) bool) messageLine {
	e.t.Helper()
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	tick := time.NewTicker(e2ePoll)
	defer tick.Stop()
	var last messageLine
	for {
		for _, m := range e.messages(name, contact) {
			if m.ID == id {
				last = m
				if ok == nil || ok(m) {
					return m
				}
			}
		}
		select {
		case <-deadline.C:
			e.t.Fatalf("%s: message %s with %s not as expected after %v; last seen %+v", name, id, contact, e2eWait, last)
		case <-tick.C:
		}
	}
}

// runningNode is a running `sotto run`.
type runningNode struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	lines chan string   // standard output, line by line
	done  chan struct{} // closed when the process has exited
	err   error         // its exit status, once done is closed
	// startup is what the node printed up to "control socket: ".
	startup []string
	log     *syncLog

	stopOnce sync.Once
}

// syncLog collects a node's standard error for failure messages.
type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// start runs the node of the data directory name on a loopback port and
// waits until it serves its control socket. The node is stopped when the
// test ends.
func (e *e2e) start(name string, args ...string) *runningNode {
	e.t.Helper()
	// One machine is a network without NAT: --lan.
	n := e.spawn(name, append([]string{"run", "--data", e.dir(name), "--lan", "--listen", "/ip4/127.0.0.1/tcp/0"}, args...)...)
	n.startup = n.waitLine("control socket: ")
	return n
}

// spawn starts a command that runs until interrupted (a node, messages
// --follow) and reads its standard output line by line. It is stopped
// when the test ends.
func (e *e2e) spawn(name string, args ...string) *runningNode {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = e.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	n := &runningNode{t: e.t, name: name, cmd: cmd, lines: make(chan string, 64), done: make(chan struct{}), log: &syncLog{}}
	cmd.Stderr = n.log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(n.stop)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			n.lines <- sc.Text()
		}
		close(n.lines)
		n.err = cmd.Wait()
		close(n.done)
	}()
	return n
}

// waitLog waits until the command's standard error contains s.
func (n *runningNode) waitLog(s string) {
	n.t.Helper()
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	tick := time.NewTicker(e2ePoll)
	defer tick.Stop()
	for !strings.Contains(n.log.String(), s) {
		select {
		case <-n.done:
			n.t.Fatalf("%s: exited (%v) before writing %q; stderr:\n%s", n.name, n.err, s, n.log)
		case <-deadline.C:
			n.t.Fatalf("%s: no %q on stderr after %v; stderr:\n%s", n.name, s, e2eWait, n.log)
		case <-tick.C:
		}
	}
}

// startupLine returns the line the node printed before serving its
// control socket that starts with prefix.
func (n *runningNode) startupLine(prefix string) string {
	n.t.Helper()
	for _, line := range n.startup {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	n.t.Fatalf("%s: no %q line in %q", n.name, prefix, n.startup)
	return ""
}

// waitLine reads standard output up to and including the first line that
// starts with prefix, and returns what it read.
func (n *runningNode) waitLine(prefix string) []string {
	n.t.Helper()
	return n.waitUntil(fmt.Sprintf("a line starting with %q", prefix), func(line string) bool {
		return strings.HasPrefix(line, prefix)
	})
}

// waitUntil reads standard output up to and including the first line for
// which ok is true, and returns what it read; what describes that line.
func (n *runningNode) waitUntil(what string, ok func(line string) bool) []string {
	n.t.Helper()
	var read []string
	deadline := time.NewTimer(e2eWait)
	defer deadline.Stop()
	for {
		select {
		case line, open := <-n.lines:
			if !open {
				<-n.done
				n.t.Fatalf("%s: exited (%v) before printing %s; stdout so far %q; stderr:\n%s", n.name, n.err, what, read, n.log)
			}
			read = append(read, line)
			if ok(line) {
				return read
			}
		case <-deadline.C:
			n.t.Fatalf("%s: no %s after %v; stdout so far %q; stderr:\n%s", n.name, what, e2eWait, read, n.log)
		}
	}
}

// stop interrupts the node and waits for it to exit, killing it if it
// does not stop in time. An interrupted node must exit with status 0.
func (n *runningNode) stop() {
	n.stopOnce.Do(func() {
		go func() { // keep reading, so that the node never blocks on output
			for range n.lines {
			}
		}()
		n.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-n.done:
		case <-time.After(e2eStopTimeout):
			n.cmd.Process.Kill()
			<-n.done
			n.t.Errorf("%s: node did not stop within %v of SIGINT; log:\n%s", n.name, e2eStopTimeout, n.log)
			return
		}
		if n.err != nil {
			n.t.Errorf("%s: node exited with %v after SIGINT; log:\n%s", n.name, n.err, n.log)
		}
	})
}
