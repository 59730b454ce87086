package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/store"
)

// TestMain lets the test binary act as the sotto command in script tests.
func TestMain(m *testing.M) {
	testscript.Main(cleanupM{m}, map[string]func(){
		"sotto": func() { os.Exit(mainCode()) },
	})
}

// cleanupM runs the tests, then removes the files they shared.
type cleanupM struct{ m *testing.M }

func (c cleanupM) Run() int {
	code := c.m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// shared holds files that several tests use, made once: the built sotto
// binary and a copy of the test binary that another user can run. They
// live in a directory that everyone can enter and read.
var shared struct {
	mu  sync.Mutex
	dir string

	buildOnce sync.Once
	bin       string // the built command
	buildErr  error

	unprivOnce sync.Once
	unprivBin  string // the test binary, as "sotto", runnable by unprivUID
	unprivErr  error
}

func sharedDir() (string, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dir != "" {
		return shared.dir, nil
	}
	dir, err := os.MkdirTemp("", "sotto-test-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	shared.dir = dir
	return dir, nil
}

// scriptNodeWait bounds how long a script waits for a node to serve its
// control socket.
const scriptNodeWait = 60 * time.Second

// unprivUID is the user (and group) a script runs sotto as when the tests
// run as root: nobody.
const unprivUID = 65534

// unprivCheckTimeout bounds the check that sotto runs as unprivUID.
const unprivCheckTimeout = 30 * time.Second

// TestScript runs the scripts in testdata/script against the real binary.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			// Keep the data directory inside the script's work directory.
			env.Setenv("SOTTO_HOME", env.WorkDir+"/sotto-home")
			env.Setenv("XDG_DATA_HOME", "")
			// mDNS does not work on loopback; nodes find each other
			// through --bootstrap.
			env.Setenv("SOTTO_NO_MDNS", "1")
			env.Values[snapshotsKey{}] = map[string]map[string]fileState{}
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			case "unprivileged":
				if os.Geteuid() != 0 {
					return true, nil
				}
				_, err := unprivBinary()
				return err == nil, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitnode":  cmdWaitNode,
			"unpriv":    cmdUnpriv,
			"snapshot":  cmdSnapshot,
			"unchanged": cmdUnchanged,
			"lockstore": cmdLockStore,
		},
	})
}

// cmdWaitNode implements "waitnode DIR": wait until a node serves the
// control socket of the data directory DIR.
func cmdWaitNode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitnode DIR")
	}
	dir := ts.MkAbs(args[0])
	ctx, cancel := context.WithTimeout(context.Background(), scriptNodeWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := api.Dial(dir); err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			ts.Fatalf("no node serves %s after %v", dir, scriptNodeWait)
		case <-tick.C:
		}
	}
}

// unprivBinary returns a copy of the test binary, named sotto, that
// unprivUID can run, after checking that it runs as that user.
func unprivBinary() (string, error) {
	shared.unprivOnce.Do(func() {
		shared.unprivBin, shared.unprivErr = makeUnprivBinary()
	})
	return shared.unprivBin, shared.unprivErr
}

func makeUnprivBinary() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir, err := sharedDir()
	if err != nil {
		return "", err
	}
	sub := filepath.Join(dir, "unpriv")
	if err := os.Mkdir(sub, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(sub, "sotto") // the name makes it act as the command
	if err := copyFile(self, bin, 0o755); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), unprivCheckTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--help")
	cmd.Dir = "/"
	cmd.SysProcAttr = unprivAttr()
	if out, err := cmd.CombinedOutput(); err != nil || !bytes.HasPrefix(out, []byte("usage: sotto")) {
		return "", fmt.Errorf("running sotto as uid %d: %v: %s", unprivUID, err, out)
	}
	return bin, nil
}

func unprivAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: unprivUID, Gid: unprivUID, Groups: []uint32{}}}
}

func copyFile(from, to string, mode fs.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// cmdUnpriv implements "unpriv sotto ARGS...": run sotto as a user
// without privileges. When the test runs as root, that is unprivUID, to
// whom the script's work directory then belongs; otherwise it is the
// user running the test.
func cmdUnpriv(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) == 0 || args[0] != "sotto" {
		ts.Fatalf("usage: unpriv sotto ARGS...")
	}
	bin, err := exec.LookPath("sotto")
	if err != nil {
		ts.Fatalf("%v", err)
	}
	var attr *syscall.SysProcAttr
	if os.Geteuid() == 0 {
		if bin, err = unprivBinary(); err != nil {
			ts.Fatalf("%v", err)
		}
		attr = unprivAttr()
		work := ts.Getenv("WORK")
		for _, d := range []string{work, filepath.Join(work, ".tmp")} {
			if err := os.Chown(d, unprivUID, unprivUID); err != nil && !errors.Is(err, fs.ErrNotExist) {
				ts.Fatalf("%v", err)
			}
		}
		// Let the user reach the work directory.
		for d := filepath.Dir(work); d != filepath.Dir(d); d = filepath.Dir(d) {
			fi, err := os.Stat(d)
			if err != nil {
				ts.Fatalf("%v", err)
			}
			if fi.Mode().Perm()&0o001 == 0 {
				ts.Check(os.Chmod(d, fi.Mode().Perm()|0o001))
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptNodeWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args[1:]...)
	cmd.Dir = ts.MkAbs(".")
	cmd.SysProcAttr = attr
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "SOTTO_HOME", "SOTTO_NO_MDNS", "XDG_DATA_HOME", "SOTTO_PASSPHRASE_FILE"} {
		cmd.Env = append(cmd.Env, k+"="+ts.Getenv(k))
	}
	cmd.Stdout, cmd.Stderr = ts.Stdout(), ts.Stderr()
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err != nil && !errors.As(err, &exit):
		ts.Fatalf("unpriv sotto: %v", err)
	case err != nil && !neg:
		ts.Fatalf("unexpected command failure: %v", err)
	case err == nil && neg:
		ts.Fatalf("unexpected command success")
	}
}

// snapshotsKey names the script's saved directory states in its Values.
type snapshotsKey struct{}

// fileState is what "unchanged" compares: a file's content and mtime.
type fileState struct {
	sum   [sha256.Size]byte
	mtime time.Time
}

// snapshotAge is how far into the past "snapshot" sets the files' mtimes,
// so that any later write shows even on a coarse clock.
const snapshotAge = time.Hour

// cmdSnapshot implements "snapshot DIR": set the mtimes of the files in
// DIR into the past, then remember their contents and mtimes.
func cmdSnapshot(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: snapshot DIR")
	}
	dir := ts.MkAbs(args[0])
	past := time.Now().Add(-snapshotAge).Truncate(time.Second)
	ts.Check(filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		return os.Chtimes(path, past, past)
	}))
	ts.Value(snapshotsKey{}).(map[string]map[string]fileState)[dir] = dirState(ts, dir)
}

// cmdUnchanged implements "unchanged DIR": the files in DIR are those of
// its snapshot, with the same contents and mtimes.
func cmdUnchanged(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: unchanged DIR")
	}
	dir := ts.MkAbs(args[0])
	before, ok := ts.Value(snapshotsKey{}).(map[string]map[string]fileState)[dir]
	if !ok {
		ts.Fatalf("no snapshot of %s", dir)
	}
	after := dirState(ts, dir)
	for name, b := range before {
		a, ok := after[name]
		switch {
		case !ok:
			ts.Fatalf("%s was removed", name)
		case a.sum != b.sum:
			ts.Fatalf("%s changed", name)
		case !a.mtime.Equal(b.mtime):
			ts.Fatalf("%s has a new mtime: %v, was %v", name, a.mtime, b.mtime)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			ts.Fatalf("%s was created", name)
		}
	}
	if len(before) == 0 {
		ts.Fatalf("the snapshot of %s holds no files", dir)
	}
}

func dirState(ts *testscript.TestScript, dir string) map[string]fileState {
	files := map[string]fileState{}
	ts.Check(filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var sum [sha256.Size]byte
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum = sha256.Sum256(b)
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = fileState{sum: sum, mtime: fi.ModTime()}
		return nil
	}))
	return files
}

// cmdLockStore implements "lockstore DIR": open the store of the data
// directory DIR in the test process and hold it until the script ends,
// as a running node would.
func cmdLockStore(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: lockstore DIR")
	}
	db, err := store.Open(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Defer(func() { db.Close() })
}

// builtSotto builds the sotto command once for the tests that run the real
// binary, and returns its path.
func builtSotto(t *testing.T) string {
	t.Helper()
	shared.buildOnce.Do(func() {
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			if gobin, err = exec.LookPath("go"); err != nil {
				shared.buildErr = errNoGo
				return
			}
		}
		dir, err := sharedDir()
		if err != nil {
			shared.buildErr = err
			return
		}
		bin := filepath.Join(dir, "sotto")
		ctx, cancel := context.WithTimeout(context.Background(), e2eBuildTimeout)
		defer cancel()
		build := exec.CommandContext(ctx, gobin, "build", "-o", bin, ".")
		if out, err := build.CombinedOutput(); err != nil {
			shared.buildErr = fmt.Errorf("go build: %v\n%s", err, strings.TrimSpace(string(out)))
			return
		}
		shared.bin = bin
	})
	if errors.Is(shared.buildErr, errNoGo) {
		t.Skip("no go command to build the binary with")
	}
	if shared.buildErr != nil {
		t.Fatal(shared.buildErr)
	}
	return shared.bin
}

var errNoGo = errors.New("no go command")
