package nattest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of the daemons and the commands that talk to them.
const (
	buildTimeout   = 5 * time.Minute  // go build of the binary
	commandTimeout = 30 * time.Second // one short sotto command
	startTimeout   = 45 * time.Second // a daemon to serve its control socket
	stopTimeout    = 15 * time.Second // a daemon to exit after SIGINT
	pollEvery      = 250 * time.Millisecond
	logTailLines   = 40
	basePort       = 4001 // every daemon's first TCP and UDP port
)

// buildSotto builds cmd/sotto once, or returns $SOTTO_NAT_BIN when set (a
// binary built elsewhere, say from another checkout).
func buildSotto(t *testing.T, ctx context.Context) string {
	t.Helper()
	if bin := os.Getenv("SOTTO_NAT_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("using SOTTO_NAT_BIN=%s", abs)
		return abs
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "sotto")
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sotto")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sotto: %v\n%s", err, out)
	}
	t.Logf("built sotto in %v", time.Since(start).Round(100*time.Millisecond))
	return bin
}

// network is the test's world: the binary, the testbed and the daemons
// running in it.
type network struct {
	ctx  context.Context // bounds the whole test
	bin  string
	tb   *testbed
	root string // data directories and logs
	env  []string

	// flags tells which of `sotto run`'s flags the binary has.
	flags map[string]bool

	mu      sync.Mutex
	daemons []*daemon
}

// newNetwork keeps the data directories and logs under root.
func newNetwork(t *testing.T, ctx context.Context, bin string, tb *testbed, root string) *network {
	t.Helper()
	nw := &network{
		ctx:  ctx,
		bin:  bin,
		tb:   tb,
		root: root,
		env:  append(os.Environ(), "SOTTO_NO_MDNS=1", "SOTTO_HOME=", "SOTTO_PASSPHRASE_FILE=", "TMPDIR="+root),
	}
	help, _ := nw.try("run", "--help")
	nw.flags = map[string]bool{}
	for _, f := range []string{"--relay", "--public", "--mailbox", "--no-mdns"} {
		nw.flags[f] = strings.Contains(help, f+" ") || strings.Contains(help, f+"\n") || strings.Contains(help, f+"]")
	}
	// Registered after the testbed's cleanup, so it runs before it: the
	// daemons stop before their namespaces go.
	t.Cleanup(func() { nw.stopAll(t) })
	return nw
}

// daemon is one user's node: a data directory and, while it runs, a
// `sotto run` process in the user's namespace.
type daemon struct {
	name string   // data directory name and label
	ns   string   // the testbed role whose namespace it runs in
	dir  string   // data directory
	args []string // `sotto run` flags besides --data and --listen
	env  []string // more environment of `sotto run`
	port int      // TCP and UDP listen port of the current run

	peerID string
	runs   int // how many times it was started
	// startedAt is when the current run served its control socket.
	startedAt time.Time
	log       string // the current run's log file

	cmd  *exec.Cmd
	done chan struct{} // closed when the current run's process exited
	err  error         // its exit status, once done is closed
}

// running reports whether the daemon's process runs.
func (d *daemon) running() bool {
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// addDaemon creates (sotto init) the data directory of a daemon that
// runs in the namespace of role.
func (nw *network) addDaemon(t *testing.T, name, role string, args ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, ns: role, dir: filepath.Join(nw.root, name), args: args, port: basePort}
	out := nw.sotto(t, "init", "--data", d.dir, "--name", name, "--json")
	var id struct {
		PeerID string `json:"peer_id"`
	}
	if err := json.Unmarshal([]byte(out), &id); err != nil || id.PeerID == "" {
		t.Fatalf("%s: init --json printed %q: %v", name, out, err)
	}
	d.peerID = id.PeerID
	nw.mu.Lock()
	nw.daemons = append(nw.daemons, d)
	nw.mu.Unlock()
	return d
}

// start runs the daemon in its namespace, listening on TCP and QUIC on
// its port, and waits until it serves its control socket.
func (nw *network) start(t *testing.T, d *daemon) {
	t.Helper()
	if d.running() {
		t.Fatalf("%s: already running", d.name)
	}
	d.runs++
	d.log = d.logFile(nw.root, d.runs)
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"netns", "exec", nw.tb.ns(d.ns), nw.bin, "run", "--data", d.dir,
		"--listen", fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", d.port),
		"--listen", fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", d.port)}
	args = append(args, d.args...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(slices.Clip(nw.env), d.env...)
	// Its own process group, so that cleanup can kill all of it; killed
	// with the test process if that dies first (a timeout's panic).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	ready := make(chan struct{})
	w := &lineWatcher{w: logf, prefix: "control socket: ", seen: ready}
	cmd.Stdout, cmd.Stderr = w, w
	fmt.Fprintf(logf, "# ip %s\n", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("%s: %v", d.name, err)
	}
	d.cmd, d.done, d.err = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		d.err = err
		close(done)
	}(d.done)

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		d.startedAt = time.Now()
	case <-d.done:
		t.Fatalf("%s: exited (%v) before serving its control socket; log:\n%s", d.name, d.err, tail(d.log, logTailLines))
	case <-timer.C:
		t.Fatalf("%s: no control socket after %v; log:\n%s", d.name, startTimeout, tail(d.log, logTailLines))
	case <-nw.ctx.Done():
		t.Fatalf("%s: the test's time ran out while it started", d.name)
	}
}

// stop interrupts the daemon and waits for it to exit, killing its
// process group if it does not stop in time.
func (nw *network) stop(t *testing.T, d *daemon) {
	t.Helper()
	if !d.running() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGINT)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-d.done:
		if d.err != nil {
			t.Errorf("%s: exited with %v after SIGINT; log:\n%s", d.name, d.err, tail(d.log, logTailLines))
		}
	case <-timer.C:
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
		t.Errorf("%s: did not stop within %v of SIGINT; killed", d.name, stopTimeout)
	}
}

// restart stops the daemon and starts it again; with newPort, on the next
// port (new listen addresses, and flows the NAT has not seen).
func (nw *network) restart(t *testing.T, d *daemon, newPort bool) {
	t.Helper()
	nw.stop(t, d)
	if newPort {
		d.port++
	}
	nw.start(t, d)
}

// stopAll kills every daemon's process group and, if the test failed,
// shows the end of each daemon's latest log.
func (nw *network) stopAll(t *testing.T) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if t.Failed() {
		// What each running daemon reported last, before it goes.
		for _, d := range nw.daemons {
			if d.running() {
				out, err := command(context.Background(), commandTimeout, nw.bin, "status", "--data", d.dir, "--json")
				t.Logf("--- %s status at the end: %s %v", d.name, strings.TrimSpace(out), errOrNil(err))
			}
		}
	}
	for _, d := range nw.daemons {
		if d.running() {
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-d.done:
			case <-time.After(stopTimeout):
				t.Errorf("%s: still running after SIGKILL", d.name)
			}
		}
	}
	if !t.Failed() {
		return
	}
	for _, d := range nw.daemons {
		for run := 1; run <= d.runs; run++ {
			log := d.logFile(nw.root, run)
			t.Logf("--- %s (%s), run %d of %d, last %d lines of its log:\n%s", d.name, d.peerID, run, d.runs, logTailLines, tail(log, logTailLines))
		}
	}
}

// logFile is the log of the daemon's run (1, 2, ...).
func (d *daemon) logFile(root string, run int) string {
	return filepath.Join(root, fmt.Sprintf("%s-%d.log", d.name, run))
}

// errOrNil shows err when there is one.
func errOrNil(err error) string {
	if err == nil {
		return ""
	}
	return "(" + err.Error() + ")"
}

// checkRunning fails the test if a daemon that was started has exited
// without being stopped.
func (nw *network) checkRunning(t *testing.T, ds ...*daemon) {
	t.Helper()
	for _, d := range ds {
		if d.cmd != nil && !d.running() {
			t.Fatalf("%s: exited (%v); log:\n%s", d.name, d.err, tail(d.log, logTailLines))
		}
	}
}

// lineWatcher writes a process's output to a file and closes seen once a
// line that starts with prefix has gone by.
type lineWatcher struct {
	w      *os.File
	prefix string
	seen   chan struct{}

	mu      sync.Mutex
	partial []byte
	done    bool
}

func (lw *lineWatcher) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if !lw.done {
		lw.partial = append(lw.partial, p...)
		for {
			i := slices.Index(lw.partial, '\n')
			if i < 0 {
				break
			}
			line := string(lw.partial[:i])
			lw.partial = lw.partial[i+1:]
			if strings.HasPrefix(line, lw.prefix) {
				lw.done = true
				lw.partial = nil
				close(lw.seen)
				break
			}
		}
	}
	return lw.w.Write(p)
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// sotto runs a short command and returns its standard output; it fails
// the test if the command fails.
func (nw *network) sotto(t *testing.T, args ...string) string {
	t.Helper()
	out, err := nw.try(args...)
	if err != nil {
		t.Fatalf("sotto %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// try runs a short command (from the host namespace: the control socket
// is a file) and returns its standard output.
func (nw *network) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(nw.ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nw.bin, args...)
	cmd.Env = nw.env
	cmd.WaitDelay = time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// message is a line of `sotto messages --json`.
type message struct {
	ID        string `json:"id"`
	Contact   string `json:"contact"`
	Direction string `json:"direction"`
	Text      string `json:"text"`
	State     string `json:"state"`
	Via       string `json:"via"`
	StoredAt  int    `json:"stored_at"`
}

// messages returns all of d's messages, every conversation.
func (nw *network) messages(t *testing.T, d *daemon) []message {
	t.Helper()
	out := nw.sotto(t, "messages", "--data", d.dir, "--json")
	var ms []message
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m message
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: messages --json printed %q: %v", d.name, line, err)
		}
		ms = append(ms, m)
	}
	return ms
}

// send queues text from d to contact and returns the message's ID.
func (nw *network) send(t *testing.T, d *daemon, contact, text string) string {
	t.Helper()
	out := nw.sotto(t, "send", "--data", d.dir, "--json", contact, text)
	var m message
	if err := json.Unmarshal([]byte(out), &m); err != nil || m.ID == "" {
		t.Fatalf("%s: send --json printed %q: %v", d.name, out, err)
	}
	return m.ID
}

// find returns the message with id in ms.
func find(ms []message, id string) (message, bool) {
	for _, m := range ms {
		if m.ID == id {
			return m, true
		}
	}
	return message{}, false
}

// status is `sotto status --json`. Connections, Reachability, Relays and
// DHTMode are the reachability report; fields tells which fields the
// binary printed, raw the whole line.
type status struct {
	PeerID         string       `json:"peer_id"`
	Addrs          []string     `json:"addrs"`
	ConnectedPeers int          `json:"connected_peers"`
	Connections    []connection `json:"connections"`
	Reachability   string       `json:"reachability"`
	Relays         []string     `json:"relays"`
	DHTMode        string       `json:"dht_mode"`
	RelayReopens   uint64       `json:"relay_reopens"`

	fields map[string]json.RawMessage
	raw    string
}

// connection is one of status's connections.
type connection struct {
	Peer      string `json:"peer"`
	Addr      string `json:"addr"`
	Relayed   bool   `json:"relayed"`
	Direction string `json:"direction"`
}

// reportFields are the status fields of the reachability report that are
// always there ("relays" is left out when there are none).
var reportFields = []string{"connections", "reachability", "dht_mode"}

func (nw *network) status(t *testing.T, d *daemon) status {
	t.Helper()
	out := strings.TrimSpace(nw.sotto(t, "status", "--data", d.dir, "--json"))
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%s: status --json printed %q: %v", d.name, out, err)
	}
	if err := json.Unmarshal([]byte(out), &st.fields); err != nil {
		t.Fatalf("%s: status --json printed %q: %v", d.name, out, err)
	}
	st.raw = out
	return st
}

// missing lists the fields of the reachability report st lacks.
func (st status) missing() []string {
	var m []string
	for _, f := range reportFields {
		if _, ok := st.fields[f]; !ok {
			m = append(m, f)
		}
	}
	return m
}

// requireReport fails the test if st lacks a field of the reachability
// report: the binary predates it.
func requireReport(t *testing.T, d *daemon, st status) {
	t.Helper()
	if m := st.missing(); len(m) > 0 {
		t.Fatalf("%s: `sotto status --json` has no %s field: the reachability report (connections, reachability, relays, dht_mode) is not in this binary yet; status: %s",
			d.name, strings.Join(m, ", "), st.raw)
	}
}

// connectionsTo returns st's connections to peer.
func (st status) connectionsTo(peer string) []connection {
	var cs []connection
	for _, c := range st.Connections {
		if c.Peer == peer {
			cs = append(cs, c)
		}
	}
	return cs
}

// until calls check every pollEvery until it reports done, for at most
// wait (and never past the test's deadline), and reports whether it did;
// state is what check said last. It fails the test at once if one of the
// daemons to watch exits.
func (nw *network) until(t *testing.T, wait time.Duration, watch []*daemon, check func() (done bool, state string)) (ok bool, state string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(nw.ctx, wait)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		nw.checkRunning(t, watch...)
		done, s := check()
		if done {
			return true, s
		}
		select {
		case <-ctx.Done():
			return false, s
		case <-tick.C:
		}
	}
}

// poll is until, failing the test if check never reports done.
func (nw *network) poll(t *testing.T, what string, wait time.Duration, watch []*daemon, check func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	if ok, state := nw.until(t, wait, watch, check); !ok {
		t.Fatalf("%s: not within %v; last: %s", what, wait, state)
	}
	return time.Since(start)
}
