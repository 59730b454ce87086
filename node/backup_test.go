package node

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
)

// TestBackupRestore: Alice (with a passphrase) backs up while her node
// runs; the backup restores on a fresh data directory A', which has her
// identity, her contact Bob and their history but no session. A' writes
// to Bob, who shows it in the same conversation with Alice, and Bob's
// answer reaches A'. Truncated or damaged backups and a wrong passphrase
// are refused with nothing written.
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("network exchange")
	}
	pass := []byte("backup passphrase")
	withPass := func(c *Config) { c.Passphrase, c.StoreKDF = pass, &testStoreKDF }
	tn := newTestNet(t)
	aliceDir := t.TempDir() + "/alice"
	if _, err := Init(aliceDir, "alice", pass, func(c *Config) { c.StoreKDF = &testStoreKDF }); err != nil {
		t.Fatal(err)
	}
	alice := tn.start(aliceDir, withPass)
	bob := tn.start(tn.initNode("bob"))
	befriend(t, alice, "alice", bob, "bob")
	ctx := testkit.Context(t, 180*time.Second)
	if _, err := alice.Send(ctx, "bob", "before the backup"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, bob, "alice", 1, incoming)
	if _, err := bob.Send(ctx, "alice", "answer before the backup"); err != nil {
		t.Fatal(err)
	}
	waitMessages(t, ctx, alice, "bob", 1, incoming)
	waitMessages(t, ctx, alice, "bob", 1, delivered)

	var backup bytes.Buffer
	if err := alice.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	alice.Close()
	if bytes.Contains(backup.Bytes(), []byte("before the backup")) {
		t.Fatal("the backup holds a message in the clear")
	}

	restored := t.TempDir() + "/alice-restored"
	b := backup.Bytes()
	for name, bad := range map[string][]byte{
		"truncated":    b[:len(b)/2],
		"no checksum":  b[:len(b)-1],
		"flipped byte": append(bytes.Clone(b[:len(b)/3]), append([]byte{b[len(b)/3] ^ 1}, b[len(b)/3+1:]...)...),
		"trailing":     append(bytes.Clone(b), 0),
		"empty":        nil,
	} {
		if _, err := Restore(bytes.NewReader(bad), restored, pass); !errors.Is(err, ErrBackupDamaged) {
			t.Errorf("%s backup: %v, want ErrBackupDamaged", name, err)
		}
	}
	if _, err := Restore(bytes.NewReader(b), restored, []byte("wrong")); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Errorf("wrong passphrase: %v", err)
	}
	if _, err := os.Stat(restored); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore left %s: %v", restored, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(restored), ".alice-restored.restore-*")); len(left) > 0 {
		t.Fatalf("a refused restore left %v", left)
	}
	ident, err := Restore(bytes.NewReader(b), restored, pass, func(c *Config) { c.StoreKDF = &testStoreKDF })
	if err != nil {
		t.Fatal(err)
	}
	if ident.Name != "alice" {
		t.Fatalf("restored identity %+v", ident)
	}
	if _, err := Restore(bytes.NewReader(b), restored, pass); !errors.Is(err, ErrRestoreTarget) {
		t.Fatalf("restore over a data dir: %v", err)
	}

	alice2 := tn.start(restored, withPass)
	if got := allMessages(t, alice2, "bob"); len(got) != 2 {
		t.Fatalf("restored history: %d messages, want 2", len(got))
	}
	if _, err := alice2.Send(ctx, "bob", "after the restore"); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, ctx, bob, "alice", 2, incoming)
	if string(got[len(got)-1].Body) != "after the restore" {
		t.Fatalf("bob's conversation with alice ends %q", got[len(got)-1].Body)
	}
	// Bob is told, on that message and no other, that Alice's device
	// started a new session.
	for _, m := range got {
		if want := string(m.Body) == "after the restore"; m.SessionReset != want {
			t.Errorf("bob's message %q: session reset %v, want %v", m.Body, m.SessionReset, want)
		}
	}
	if _, err := bob.Send(ctx, "alice", "answer after the restore"); err != nil {
		t.Fatal(err)
	}
	back := waitMessages(t, ctx, alice2, "bob", 2, incoming)
	if string(back[len(back)-1].Body) != "answer after the restore" {
		t.Fatalf("the restored node's conversation ends %q", back[len(back)-1].Body)
	}
	for _, m := range append(back, waitMessages(t, ctx, bob, "alice", 2, incoming)...) {
		if m.SessionReset && string(m.Body) != "after the restore" {
			t.Errorf("%q is marked as after a session reset", m.Body)
		}
	}
	// Same account key: Bob sees no key change, and keeps one contact.
	if c := storedContact(t, bob, "alice"); c.KeyChange != nil || c.IsRequest {
		t.Errorf("bob's contact after the restore: key change %v, request %v", c.KeyChange != nil, c.IsRequest)
	}
	if cs, err := bob.Contacts(); err != nil || len(cs) != 1 {
		t.Errorf("bob's contacts: %d, %v", len(cs), err)
	}
}
