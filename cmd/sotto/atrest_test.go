package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/node"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
	bolt "go.etcd.io/bbolt"
)

// migrationMessages is how many messages the plain store holds before the
// migration test encrypts it: enough that encrypting takes a while.
const migrationMessages = 30000

// fillPlainStore gives the plain store in dir three contacts and
// migrationMessages messages, and returns the message texts and names.
func fillPlainStore(t *testing.T, dir string) [][]byte {
	t.Helper()
	return fillStore(t, dir, migrationMessages)
}

// fillStore is fillPlainStore with n messages (a multiple of 5,000, or
// fewer than 5,000).
func fillStore(t *testing.T, dir string, total int) [][]byte {
	t.Helper()
	db, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var secrets [][]byte
	var accts [][32]byte
	if err := db.Update(func(tx *store.Tx) error {
		for i, name := range []string{"Ottoline Brackenbury", "Casimir Wolstenholme", "Perpetua Ansorge"} {
			var a [32]byte
			rand.Read(a[:])
			if err := tx.AddContact(store.Contact{Name: name, Account: a, PeerID: "12D3KooWPeer" + fmt.Sprint(i), Added: time.Now()}); err != nil {
				return err
			}
			accts = append(accts, a)
			secrets = append(secrets, []byte(name))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	per := min(total, 5000)
	for b := 0; b < total/per; b++ {
		if err := db.Update(func(tx *store.Tx) error {
			for j := 0; j < per; j++ {
				n := b*per + j
				var id [16]byte
				rand.Read(id[:])
				text := fmt.Sprintf("migrating message %05d: the eagle lands at noon", n)
				m := store.Message{ID: id, Contact: accts[n%3], Direction: store.Incoming, Type: uint8(protocol.ContentText),
					Body: []byte(text), SentAt: time.Now(), ReceivedAt: time.Now()}
				if _, err := tx.AppendMessage(m); err != nil {
					return err
				}
				if n%100 == 0 {
					secrets = append(secrets, []byte(text))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return secrets
}

// storeState opens the data directory in this process as any command
// would after a crash, and returns whether the store is encrypted and how
// many messages it holds.
func storeState(t *testing.T, dir string, pass []byte) (encrypted bool, messages int) {
	t.Helper()
	db, err := store.Open(dir)
	if errors.Is(err, store.ErrPassphraseRequired) {
		encrypted = true
		db, err = store.Open(dir, store.WithPassphrase(pass))
	}
	if err != nil {
		t.Fatalf("the data directory does not open: %v", err)
	}
	defer db.Close()
	st, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Check(); err != nil {
		t.Fatalf("check after a kill: %v", err)
	}
	return encrypted, st.Messages
}

// TestMigrationKill9 runs the real binary: a data directory made before
// stores were encrypted (keystore under a passphrase, store plain, 30,000
// messages) is encrypted by the first `sotto run` with the passphrase.
// A wrong passphrase is refused with nothing written. `sotto run` killed
// with SIGKILL at increasing points of the migration leaves each time a
// directory that opens with every message, plain or encrypted; the next
// run finishes the migration, after which no message text or contact name
// is anywhere in the directory.
func TestMigrationKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and writes 30,000 messages")
	}
	e := newE2E(t)
	dir := e.dir("old")
	e.sotto("init", "--data", dir, "--name", "old")
	pass := []byte("migration passphrase")
	passFile := filepath.Join(e.root, "pass.txt")
	wrongFile := filepath.Join(e.root, "wrong.txt")
	os.WriteFile(passFile, append(pass, '\n'), 0o600)
	os.WriteFile(wrongFile, []byte("not it\n"), 0o600)
	ksPath := filepath.Join(dir, node.KeystoreFile)
	ks, err := keys.ReadKeystore(ksPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.WriteKeystore(ksPath, ks, pass, rand.Reader); err != nil {
		t.Fatal(err)
	}
	secrets := fillPlainStore(t, dir)

	before := dirFilesOf(t, dir)
	if out, err := e.try("run", "--data", dir, "--lan", "--listen", "/ip4/127.0.0.1/tcp/0", "--passphrase-file", wrongFile); err == nil {
		t.Fatalf("run with the wrong passphrase succeeded: %s", out)
	}
	if after := dirFilesOf(t, dir); !sameFiles(before, after) {
		t.Fatal("a run with the wrong passphrase changed the data directory")
	}

	args := []string{"run", "--data", dir, "--lan", "--listen", "/ip4/127.0.0.1/tcp/0", "--passphrase-file", passFile}
	encrypted := false
	for i := 0; i < 16 && !encrypted; i++ {
		cmd := exec.Command(e.bin, args...)
		cmd.Env = e.env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(100+180*i) * time.Millisecond
		time.Sleep(delay) // where the kill lands; nothing is asserted about timing
		cmd.Process.Kill()
		cmd.Wait()
		_, statErr := os.Stat(filepath.Join(dir, store.FileName+".rewrite"))
		var n int
		encrypted, n = storeState(t, dir, pass)
		t.Logf("kill after %v: encrypted %v, half-written rewrite left: %v", delay, encrypted, statErr == nil)
		if n != migrationMessages {
			t.Fatalf("after a kill at %v: %d messages, want %d", delay, n, migrationMessages)
		}
	}
	// A run to the end finishes whatever is left.
	node := e.start("old", "--passphrase-file", passFile)
	node.stop()
	if enc, n := storeState(t, dir, pass); !enc || n != migrationMessages {
		t.Fatalf("after a full run: encrypted %v, %d messages", enc, n)
	}
	for _, s := range secrets {
		for p, b := range dirFilesOf(t, dir) {
			if bytes.Contains(b, s) {
				t.Errorf("%q is in %s after the migration", s, p)
			}
		}
	}
}

func dirFilesOf(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&os.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for p, x := range a {
		if y, ok := b[p]; !ok || !bytes.Equal(x, y) {
			return false
		}
	}
	return true
}

// TestDamagedStoreCommands runs the real binary on a data directory whose
// store was cut short: `sotto check`, `sotto messages` and `sotto run`
// each exit 1 with a message naming the damage, and none panics.
// `sotto check` on the intact directory reports no problems.
func TestDamagedStoreCommands(t *testing.T) {
	e := newE2E(t)
	dir := e.dir("cut")
	e.sotto("init", "--data", dir, "--name", "cut")
	fillStore(t, dir, 5000)
	if out := e.sotto("check", "--data", dir); !strings.Contains(out, "has no problems") {
		t.Fatalf("check of an intact store: %q", out)
	}
	path := filepath.Join(dir, store.FileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()/3); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"check", "--data", dir},
		{"messages", "--data", dir},
		{"run", "--data", dir, "--lan", "--listen", "/ip4/127.0.0.1/tcp/0"},
	} {
		out, err := e.try(args...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("sotto %s: %v (stdout %q), want exit status 1", args[0], err, out)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine ") || !strings.Contains(msg, "truncated") {
			t.Errorf("sotto %s: %s", args[0], msg)
		}
	}
}

// TestQuickCheckAtRun runs the real binary on a data directory whose
// store lost one conversation index entry behind its back: `sotto run`
// starts all the same and logs the problem, `sotto status` lists it,
// and, with the node stopped, `sotto check` names the gap.
func TestQuickCheckAtRun(t *testing.T) {
	e := newE2E(t)
	dir := e.dir("gap")
	e.sotto("init", "--data", dir, "--name", "gap")
	fillStore(t, dir, 50)
	bdb, err := bolt.Open(filepath.Join(dir, store.FileName), store.FileMode, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("conv"))
		if b == nil {
			return errors.New("no conv bucket")
		}
		c := b.Cursor()
		c.First()
		k, _ := c.Next()
		return b.Delete(k)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	n := e.start("gap")
	n.waitLog("the store has problems")
	out := e.sotto("status", "--data", dir)
	for _, want := range []string{"1 problem (found at open", "50 messages but 49 conversation index entries"} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not say %q:\n%s", want, out)
		}
	}
	n.stop()
	out, err = e.try("check", "--data", dir)
	if err == nil || !strings.Contains(err.Error(), "seq 3 follows 1") {
		t.Errorf("check: %v (stdout %q), want the gap named", err, out)
	}
}

// TestDamagedMessageShown runs the real binary on a data directory in
// which one byte of one stored message was changed: `sotto messages`
// lists the 29 others as written and the damaged one as damaged, never
// its text, whether the node runs or not; `--json` marks it; `sotto
// check` names the record.
func TestDamagedMessageShown(t *testing.T) {
	e := newE2E(t)
	dir := e.dir("flip")
	e.sotto("init", "--data", dir, "--name", "flip")
	fillStore(t, dir, 30)
	flipRecord(t, dir, "messages", func(tx *bolt.Tx) []byte {
		id := tx.Bucket([]byte("global")).Get(binary.BigEndian.AppendUint64(nil, 5))
		return id[:min(len(id), 16)] // then its checksum
	})
	listed := func(how string) {
		t.Helper()
		out := e.sotto("messages", "--data", dir)
		if n := strings.Count(out, node.DamagedText); n != 1 {
			t.Errorf("%s: the damaged message is shown %d times, want once:\n%s", how, n, out)
		}
		for i := range 30 {
			text := fmt.Sprintf("migrating message %05d", i)
			if strings.Contains(out, text) != (i != 4) {
				t.Errorf("%s: %q shown: %v", how, text, i != 4)
			}
		}
		js := e.sotto("messages", "--data", dir, "--json")
		if n := strings.Count(js, `"damaged":true`); n != 1 {
			t.Errorf("%s: %d lines marked damaged in --json, want 1", how, n)
		}
	}
	listed("node stopped")
	_, err := e.try("check", "--data", dir)
	if err == nil || !strings.Contains(err.Error(), "messages record") {
		t.Errorf("check: %v, want the damaged record named", err)
	}
	e.start("flip")
	listed("node running")
}

// flipRecord changes one byte of the record of bucket whose key which
// returns, in the plain store of the stopped node in dir.
func flipRecord(t *testing.T, dir, bucket string, which func(*bolt.Tx) []byte) {
	t.Helper()
	bdb, err := bolt.Open(filepath.Join(dir, store.FileName), store.FileMode, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, k := tx.Bucket([]byte(bucket)), which(tx)
		v := bytes.Clone(b.Get(k))
		if v == nil {
			return fmt.Errorf("no record %x in %s", k, bucket)
		}
		v[len(v)-1] ^= 1
		return b.Put(k, v)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDamagedContactLeftOut runs the real binary on a data directory in
// which one byte of one of its three contacts' records was changed:
// `contact list` shows the other two, `sotto run` starts and logs the
// damaged record, `sotto status` lists it, and the other contacts'
// conversations read as before.
func TestDamagedContactLeftOut(t *testing.T) {
	e := newE2E(t)
	dir := e.dir("flip")
	e.sotto("init", "--data", dir, "--name", "flip")
	fillStore(t, dir, 30)
	flipRecord(t, dir, "contacts", func(tx *bolt.Tx) []byte { k, _ := tx.Bucket([]byte("contacts")).Cursor().First(); return k })
	contacts := func(how string) {
		t.Helper()
		out := e.sotto("contact", "list", "--data", dir)
		n := 0
		for _, name := range []string{"Ottoline Brackenbury", "Casimir Wolstenholme", "Perpetua Ansorge"} {
			if strings.Contains(out, name) {
				n++
				if m := e.sotto("messages", "--data", dir, name); strings.Count(m, "the eagle lands") != 10 {
					t.Errorf("%s: the conversation with %s:\n%s", how, name, m)
				}
			}
		}
		if n != 2 {
			t.Errorf("%s: %d of the 3 contacts listed, want the 2 intact ones:\n%s", how, n, out)
		}
	}
	contacts("node stopped")
	n := e.start("flip")
	n.waitLog("a damaged record in the store was left out")
	contacts("node running")
	if out := e.sotto("status", "--data", dir); !strings.Contains(out, "contacts record") {
		t.Errorf("status does not list the damaged contact:\n%s", out)
	}
}

// TestBackupKill9 runs the real binary: `sotto backup` runs against a node
// whose encrypted store holds 30,000 messages, and the node is killed with
// SIGKILL at increasing points of it. Each time the data directory opens
// with every message, and the backup file is either absent or whole: it
// restores with every message.
func TestBackupKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and writes 30,000 messages")
	}
	e := newE2E(t)
	dir := e.dir("bk")
	e.sotto("init", "--data", dir, "--name", "bk")
	fillPlainStore(t, dir)
	pass := []byte("backup kill passphrase")
	passFile := filepath.Join(e.root, "pass.txt")
	os.WriteFile(passFile, append(pass, '\n'), 0o600)
	whole, runs := 0, 8
	for i := 0; i < runs; i++ {
		n := e.start("bk", "--passphrase-file", passFile)
		out := filepath.Join(e.root, fmt.Sprintf("bk-%d.bak", i))
		bk := exec.Command(e.bin, "backup", "--data", dir, out)
		bk.Env = e.env
		if err := bk.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(100+120*i) * time.Millisecond
		time.Sleep(delay) // where the kill lands; nothing is asserted about timing
		n.cmd.Process.Kill()
		<-n.done
		n.stopOnce.Do(func() {}) // killed on purpose: no clean stop to check
		bk.Wait()
		if enc, msgs := storeState(t, dir, pass); !enc || msgs != migrationMessages {
			t.Fatalf("after a kill at %v: encrypted %v, %d messages", delay, enc, msgs)
		}
		f, err := os.Open(out)
		if errors.Is(err, os.ErrNotExist) {
			t.Logf("kill after %v: no backup file", delay)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		restored := filepath.Join(e.root, fmt.Sprintf("restored-%d", i))
		_, err = node.Restore(f, restored, pass)
		f.Close()
		if err != nil {
			t.Fatalf("kill after %v: the backup file left does not restore: %v", delay, err)
		}
		if enc, msgs := storeState(t, restored, pass); !enc || msgs != migrationMessages {
			t.Fatalf("restored: encrypted %v, %d messages", enc, msgs)
		}
		whole++
		t.Logf("kill after %v: a whole backup", delay)
	}
	t.Logf("%d of %d backups finished before the kill", whole, runs)
}
