package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// testListenAddrs keep tests on loopback.
var testListenAddrs = []string{
	"/ip4/127.0.0.1/tcp/0",
	"/ip4/127.0.0.1/udp/0/quic-v1",
}

// Fake bundle records for tests: 8-byte big-endian sequence number, then
// the marker "valid" or "forged".
var errForged = errors.New("test: forged bundle")

func fakeBundle(seq uint64, marker string) []byte {
	b := binary.BigEndian.AppendUint64(nil, seq)
	return append(b, marker...)
}

type fakeVerifier struct{}

func (fakeVerifier) Verify(key string, value []byte, now time.Time) (uint64, error) {
	if len(value) < 8 || !bytes.Equal(value[8:], []byte("valid")) {
		return 0, errForged
	}
	return binary.BigEndian.Uint64(value), nil
}

// acceptAll is what a lying node would run: it stores anything.
var acceptAll = BundleVerifierFunc(func(key string, value []byte, now time.Time) (uint64, error) {
	if len(value) < 8 {
		return 0, errForged
	}
	return binary.BigEndian.Uint64(value), nil
})

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestHost builds a loopback host with mDNS off and closes it at the end
// of the test.
func newTestHost(t testing.TB, opts ...Option) *Host {
	t.Helper()
	base := []Option{
		WithIdentity(newKey(t)),
		WithListenAddrs(testListenAddrs...),
		WithMDNS(false),
		WithBundleVerifier(fakeVerifier{}),
	}
	h, err := New(append(base, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// memReceiver records envelopes in memory and acks them at once.
type memReceiver struct {
	mu   sync.Mutex
	got  [][]byte
	from []peer.ID
	// status, if set, decides the result per envelope.
	status func(env []byte) error
	// notify, if set, receives a value per stored envelope.
	notify chan struct{}
}

func (m *memReceiver) Receive(ctx context.Context, from peer.ID, env []byte) error {
	if m.status != nil {
		if err := m.status(env); err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.got = append(m.got, env)
	m.from = append(m.from, from)
	m.mu.Unlock()
	if m.notify != nil {
		select {
		case m.notify <- struct{}{}:
		case <-ctx.Done():
		}
	}
	return nil
}

func (m *memReceiver) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.got)
}

// testContext is a context bounded by d and by the test.
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// goroutineLeakCheck returns a function that fails the test if, within a
// deadline, the number of goroutines does not fall back to what it was
// when goroutineLeakCheck was called.
func goroutineLeakCheck(t *testing.T) func() { return leakCheck(t, "") }

// mocknetLeakCheck is goroutineLeakCheck for tests on mocknet: it does not
// count goroutines blocked inside mocknet's own stream plumbing, which
// does not unwind when the hosts on both ends close (with a real
// transport the write fails with the connection). A goroutine of ours, or
// of libp2p's, blocked anywhere else is still a leak.
func mocknetLeakCheck(t *testing.T) func() {
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

func TestBlockedIn(t *testing.T) {
	const mock = "github.com/libp2p/go-libp2p/p2p/net/mock."
	inMock := "goroutine 7 [select]:\nio.(*pipe).write(0x1)\n\t/go/src/io/pipe.go:86 +0x1e5\n" +
		"github.com/libp2p/go-libp2p/p2p/net/mock.(*stream).transport(0x2)\n\t/mod/mock_stream.go:290 +0x411\n" +
		"created by github.com/libp2p/go-libp2p/p2p/net/mock.newStream in goroutine 6\n\t/mod/mock_stream.go:67 +0x168"
	ours := "goroutine 8 [chan receive]:\ngithub.com/sotto-im/sotto/node.(*Node).releaseLoop(0x1)\n\t/node/order.go:20 +0x1\n" +
		"created by github.com/sotto-im/sotto/node.(*Node).Start in goroutine 1\n\t/node/node.go:375 +0x1"
	if !blockedIn(inMock, mock) || blockedIn(ours, mock) {
		t.Fatal("blockedIn misclassifies")
	}
}
