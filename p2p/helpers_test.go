package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
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
