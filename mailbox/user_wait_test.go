package mailbox

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
)

// AwaitRegistered waits past RegisterWait for a mailbox that answers but
// is slow (each fresh identity takes RegisterWait and a second to open,
// as under load), and returns true once it took the tag; with a mailbox
// that does not answer it gives up after RegisterWait, not
// MaxRegisterWait (a device whose mailboxes are down still answers its
// contacts directly). SPEC "Registration".
func TestAwaitRegisteredWaitsForSlowMailbox(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	s := newPairSession()
	regs := func(now time.Time) []Registration { return []Registration{s.reg(protocol.Epoch(now))} }
	run := func(mbxs []peer.AddrInfo, delay time.Duration) (bool, time.Duration) {
		t.Helper()
		u, err := NewUser(UserConfig{
			DB: openMailboxDB(t, filepath.Join(t.TempDir(), "user")), Static: mbxs, Registrations: regs,
			Deliver: func(peer.ID, []byte) error { return nil },
			NewHost: func() (host.Host, error) {
				time.Sleep(delay)
				return p2p.NewEphemeral()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); u.Run(rctx) }()
		defer func() { stop(); <-done }()
		start := time.Now()
		ok := u.AwaitRegistered(ctx, s.tag(protocol.Epoch(time.Now())))
		return ok, time.Since(start)
	}

	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	if ok, took := run(mailboxSet(m), RegisterWait+time.Second); !ok || took < RegisterWait {
		t.Fatalf("with a slow mailbox: registered %v after %v; want true, after more than RegisterWait (%v)", ok, took, RegisterWait)
	}
	// A mailbox nobody runs: every registration fails at once.
	id, err := peer.IDFromPrivateKey(p2ptest.NewKey(t))
	if err != nil {
		t.Fatal(err)
	}
	down := peer.AddrInfo{ID: id, Addrs: m.h.AddrInfo().Addrs}
	m.h.Close()
	if ok, took := run([]peer.AddrInfo{down}, 0); ok || took >= MaxRegisterWait/2 {
		t.Fatalf("with a mailbox down: registered %v after %v; want false, after about RegisterWait (%v)", ok, took, RegisterWait)
	}
}
