package api_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/node"
)

// serveSocket serves b on a unix socket until the test ends and returns
// a client of it.
func serveSocket(t *testing.T, ctx context.Context, b api.Backend) *api.Client {
	t.Helper()
	path, err := api.SocketPath(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- api.NewServer(b).Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := api.NewClient(path)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFirstRun: over the control API, a data directory with no identity
// answers no_identity (409) until POST /v1/setup creates one, as
// `sotto init` does; then unavailable (503) while the node starts, and
// the node's own answers once it runs. A second setup, or a setup on a
// node that has an identity, gets identity_exists (409); a bad name gets
// bad_request and creates nothing.
func TestFirstRun(t *testing.T) {
	ctx := testkit.Context(t, time.Minute)
	dir := filepath.Join(t.TempDir(), "fresh")
	fr := api.NewFirstRun(dir, nil)
	c := serveSocket(t, ctx, fr)

	_, err := c.Identity(ctx)
	wantCode(t, err, api.CodeNoIdentity)
	if e := (*api.Error)(nil); !errors.As(err, &e) || e.Status != 409 {
		t.Errorf("Identity before setup: %v, want status 409", err)
	}
	_, err = c.Conversations(ctx)
	wantCode(t, err, api.CodeNoIdentity)
	_, err = c.Setup(ctx, "bad\nname")
	wantCode(t, err, api.CodeBadRequest)
	select {
	case <-fr.Created():
		t.Fatal("Created after a refused name")
	default:
	}

	id, err := c.Setup(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "alice" || id.PeerID == "" || id.Account == "" {
		t.Fatalf("Setup = %+v", id)
	}
	select {
	case <-fr.Created():
	default:
		t.Fatal("Created not closed after Setup")
	}
	_, err = c.Identity(ctx)
	wantCode(t, err, api.CodeUnavailable)
	_, err = c.Setup(ctx, "alice again")
	wantCode(t, err, api.CodeIdentityExists)

	// The identity is the one the node opens.
	n, err := node.Open(node.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if got := n.Identity(); got.PeerID != id.PeerID || got.Fingerprint != id.Account || got.Name != "alice" {
		t.Fatalf("the node opens %+v, setup made %+v", got, id)
	}
	fr.SetBackend(api.NodeBackend(n))
	got, err := c.Identity(ctx)
	if err != nil || got.PeerID != id.PeerID || got.Name != "alice" {
		t.Fatalf("Identity once running = %+v, %v", got, err)
	}
	if cs, err := c.Conversations(ctx); err != nil || len(cs) != 0 {
		t.Errorf("Conversations once running = %+v, %v", cs, err)
	}
	_, err = c.Setup(ctx, "alice")
	wantCode(t, err, api.CodeIdentityExists)

	// A node's own backend has an identity.
	_, err = serveSocket(t, ctx, api.NodeBackend(openNode(t, "bob"))).Setup(ctx, "bob")
	wantCode(t, err, api.CodeIdentityExists)
}

// TestFirstRunPassphrase: the identity a FirstRun creates with a
// passphrase has its keystore and store encrypted under it.
func TestFirstRunPassphrase(t *testing.T) {
	ctx := testkit.Context(t, time.Minute)
	dir := filepath.Join(t.TempDir(), "fresh")
	pass := []byte("correct horse")
	if _, err := api.NewFirstRun(dir, pass).Setup(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Open(node.Config{DataDir: dir}); !errors.Is(err, node.ErrStoreLocked) {
		t.Errorf("Open without the passphrase = %v, want ErrStoreLocked", err)
	}
	n, err := node.Open(node.Config{DataDir: dir, Passphrase: pass})
	if err != nil {
		t.Fatalf("Open with the passphrase: %v", err)
	}
	n.Close()
}
