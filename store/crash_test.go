package store

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash and lock tests re-execute the test binary as a child process
// running TestHelperProcess in one of these modes.
const (
	helperEnv    = "SOTTO_STORE_HELPER"
	helperDir    = "SOTTO_STORE_HELPER_DIR"
	modeAppend   = "append"
	modeHold     = "hold"
	crashKillAt  = 300 // committed messages the parent waits for before SIGKILL
	crashWriters = 4
	helperLimit  = 60 * time.Second // a child never outlives this
)

// TestHelperProcess is not a test: it is the child side of the crash and
// lock tests, and does nothing unless helperEnv is set.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	dir := os.Getenv(helperDir)
	go func() { // bound the child's life even if the parent vanishes
		time.Sleep(helperLimit)
		os.Exit(3)
	}()
	db, err := Open(dir)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	switch mode {
	case modeHold:
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // hold the lock until stdin closes
		db.Close()
		os.Exit(0)
	case modeAppend:
		crashWriter(db)
	}
	os.Exit(1)
}

// crashWriter appends messages forever from several goroutines (half with
// Update, half with Batch); in the same transaction it stores the
// conversation's session state "seq=N". Each ID is printed only after its
// transaction has committed.
func crashWriter(db *DB) {
	if err := db.Update(func(tx *Tx) error {
		for c := byte(1); c <= 3; c++ {
			if err := tx.AddContact(contact(fmt.Sprintf("c%d", c), c)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	for w := range crashWriters {
		go func() {
			run := db.Update
			if w%2 == 1 {
				run = db.Batch
			}
			for i := uint64(0); ; i++ {
				id := msgID(uint64(w)<<32 | i)
				c := acct(byte(i%3 + 1))
				err := run(func(tx *Tx) error {
					m, err := tx.AppendMessage(Message{ID: id, Contact: c, Direction: Direction(i%2 + 1), Body: []byte("crash test body")})
					if err != nil {
						return err
					}
					if m.Direction == Outgoing {
						if err := tx.PutOutbox(OutboxEntry{MsgID: id, Contact: c, Envelope: []byte("env"), Kind: OutboxMessage, NextAttempt: time.Now()}); err != nil {
							return err
						}
					}
					return tx.PutSession(c, fmt.Appendf(nil, "seq=%d", m.Seq))
				})
				if err != nil {
					fmt.Println("error", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(out, "committed %x\n", id)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// startHelper starts the test binary as a child in mode on dir and returns
// it with a line reader on its stdout.
func startHelper(t *testing.T, ctx context.Context, mode, dir string) (*exec.Cmd, io.WriteCloser, <-chan string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperDir+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, stdin, lines
}

func TestCrashLosesNoCommittedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperLimit)
	defer cancel()
	dir := t.TempDir() + "/data"
	cmd, stdin, lines := startHelper(t, ctx, modeAppend, dir)
	defer stdin.Close()

	var committed [][16]byte
	record := func(line string) {
		if msg, ok := strings.CutPrefix(line, "error "); ok {
			t.Fatalf("child: %s", msg)
		}
		h, ok := strings.CutPrefix(line, "committed ")
		if !ok {
			return
		}
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 16 {
			t.Fatalf("bad child line %q", line)
		}
		committed = append(committed, [16]byte(b))
	}
	for len(committed) < crashKillAt {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("child exited after %d messages", len(committed))
			}
			record(line)
		case <-ctx.Done():
			t.Fatalf("child committed only %d messages before the deadline", len(committed))
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for line := range lines { // lines already written before the kill
		record(line)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL: %v", err)
	}

	db, err := Open(dir)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Fatalf("inconsistent after crash: %v", err)
	}
	mustView(t, db, func(tx *Tx) error {
		for _, id := range committed {
			if _, err := tx.GetMessage(id); err != nil {
				t.Errorf("committed message %x lost: %v", id, err)
			}
		}
		total := 0
		for c := byte(1); c <= 3; c++ {
			a := acct(c)
			var last uint64
			for after := uint64(0); ; {
				page, err := tx.ListMessages(&a, after, MaxPageSize)
				if err != nil {
					return err
				}
				if len(page) == 0 {
					break
				}
				for _, m := range page {
					if m.Seq != last+1 {
						t.Errorf("contact %d: seq %d after %d", c, m.Seq, last)
					}
					last = m.Seq
				}
				after = last
				total += len(page)
			}
			// The session state was written in the same transaction as
			// the conversation's last message.
			s, err := tx.GetSession(a)
			if err != nil {
				return err
			}
			if want := fmt.Sprintf("seq=%d", last); string(s) != want {
				t.Errorf("contact %d: session %q, last message seq %d", c, s, last)
			}
		}
		if total < len(committed) {
			t.Errorf("%d messages stored, %d reported committed", total, len(committed))
		}
		t.Logf("%d messages reported committed, %d stored after SIGKILL", len(committed), total)
		return nil
	})
}

func TestErrInUseAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperLimit)
	defer cancel()
	dir := t.TempDir() + "/data"
	cmd, stdin, lines := startHelper(t, ctx, modeHold, dir)
	select {
	case line := <-lines:
		if line != "ready" {
			t.Fatalf("child: %q", line)
		}
	case <-ctx.Done():
		t.Fatal("child did not open the database")
	}
	start := time.Now()
	_, err := Open(dir)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("Open while a child holds the dir: %v, want ErrInUse", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("ErrInUse took %v", d)
	}
	t.Logf("ErrInUse after %v: %v", time.Since(start).Round(time.Millisecond), err)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	db, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after the child exited: %v", err)
	}
	db.Close()
}
