// Package testkit holds what the tests of several packages share: a
// goroutine leak check and bounded waits. Only tests import it.
package testkit

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Context is a context bounded by d and by the test.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// WaitFor polls cond until it holds, failing the test if ctx ends first.
func WaitFor(t testing.TB, ctx context.Context, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition never held")
		case <-tick.C:
		}
	}
}

// Goroutines returns a function that fails the test if, within a
// deadline, the number of goroutines does not fall back to what it was
// when Goroutines was called.
func Goroutines(t *testing.T) func() { return leakCheck(t, "") }

// MocknetGoroutines is Goroutines for tests on mocknet: it does not
// count goroutines blocked inside mocknet's own stream plumbing, which
// does not unwind when the hosts on both ends close (with a real
// transport the write fails with the connection). A goroutine of ours, or
// of libp2p's, blocked anywhere else is still a leak.
func MocknetGoroutines(t *testing.T) func() {
	return leakCheck(t, "github.com/libp2p/go-libp2p/p2p/net/mock.")
}

func leakCheck(t *testing.T, ignore string) func() {
	t.Helper()
	count := func() int {
		if ignore == "" {
			return runtime.NumGoroutine()
		}
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		n := 0
		for _, g := range strings.Split(string(buf), "\n\n") {
			if !blockedIn(g, ignore) {
				n++
			}
		}
		return n
	}
	before := count()
	return func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			now := count()
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after Close\n%s", before, now, leakReport(buf))
			}
			<-tick.C
		}
	}
}

// blockedIn reports whether goroutine dump g waits in a function of the
// package prefix pkg: its innermost frame outside the runtime and the
// standard library's io and sync packages is in pkg.
func blockedIn(g, pkg string) bool {
	lines := strings.Split(g, "\n")
	for i := 1; i < len(lines); i += 2 {
		fn := lines[i]
		if strings.HasPrefix(fn, "runtime.") || strings.HasPrefix(fn, "io.") || strings.HasPrefix(fn, "sync.") {
			continue
		}
		return strings.HasPrefix(fn, pkg)
	}
	return false
}

// leakReport keeps the goroutine dump readable: stacks grouped by their
// creator.
func leakReport(stacks []byte) string {
	var b strings.Builder
	for _, g := range strings.Split(string(stacks), "\n\n") {
		lines := strings.Split(g, "\n")
		if len(lines) > 12 {
			lines = append(lines[:12], "\t...")
		}
		fmt.Fprintln(&b, strings.Join(lines, "\n"))
	}
	return b.String()
}
