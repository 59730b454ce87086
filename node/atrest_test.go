package node

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/store"
)

// testStoreKDF is a cheap Argon2id cost for tests.
var testStoreKDF = store.KDFParams{Time: 1, Memory: 64, Threads: 1}

// TestAtRestScan: two nodes with a passphrase hold a conversation of 1,000
// messages (500 each way, delivered, with receipts). Afterwards no file of
// either data directory contains a message text, a contact's or the
// user's name, a peer ID, the account seed, the identity DH key, the host
// key, a private prekey or a session state. The secrets scanned for are
// read back through the keystore and the store (with the passphrase).
func TestAtRestScan(t *testing.T) {
	if testing.Short() {
		t.Skip("long exchange")
	}
	pass := []byte("at rest passphrase")
	withPass := func(c *Config) { c.Passphrase, c.StoreKDF = pass, &testStoreKDF }
	tn := newTestNet(t)
	names := map[string]string{"alice": "Araminta Fothergill", "bob": "Bartholomew Quarrington"}
	dirs := map[string]string{}
	for who, name := range names {
		dir := t.TempDir() + "/" + who
		if _, err := Init(dir, name, pass, func(c *Config) { c.StoreKDF = &testStoreKDF }); err != nil {
			t.Fatal(err)
		}
		dirs[who] = dir
	}
	alice, bob := tn.start(dirs["alice"], withPass), tn.start(dirs["bob"], withPass)
	befriend(t, alice, names["alice"], bob, names["bob"])
	ctx := testkit.Context(t, 240*time.Second)
	const N = 500
	var texts [][]byte
	for i := range N {
		for _, s := range []struct {
			from *Node
			to   string
		}{{alice, names["bob"]}, {bob, names["alice"]}} {
			text := fmt.Sprintf("secret rendezvous %04d from %s", i, s.to[:4])
			texts = append(texts, []byte(text))
			if _, err := s.from.Send(ctx, s.to, text); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitMessages(t, ctx, alice, names["bob"], N, delivered)
	waitMessages(t, ctx, bob, names["alice"], N, delivered)
	waitMessages(t, ctx, alice, names["bob"], N, incoming)
	waitMessages(t, ctx, bob, names["alice"], N, incoming)
	var peerIDs []string
	for _, n := range []*Node{alice, bob} {
		peerIDs = append(peerIDs, n.Identity().PeerID)
	}
	alice.Close()
	bob.Close()

	secrets := map[string][]byte{}
	for i, s := range texts {
		secrets[fmt.Sprintf("text %d", i)] = s
	}
	for who, name := range names {
		secrets["name of "+who] = []byte(name)
	}
	for i, p := range peerIDs {
		secrets[fmt.Sprintf("peer id %d", i)] = []byte(p)
	}
	for who, dir := range dirs {
		ks, err := keys.ReadKeystore(filepath.Join(dir, KeystoreFile), pass)
		if err != nil {
			t.Fatal(err)
		}
		secrets[who+" account seed"] = ks.Account.Seed()
		secrets[who+" identity dh"] = ks.IdentityDH.Bytes()
		secrets[who+" host key"] = ks.HostKey[len(ks.HostKey)-32:]
		db, err := store.Open(dir, store.WithPassphrase(pass))
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *store.Tx) error {
			for _, kind := range []store.PrekeyKind{store.PrekeySignedDH, store.PrekeyOneTimeDH, store.PrekeyLastResort, store.PrekeyOneTimeKEM} {
				ids, err := tx.PrekeyIDs(kind)
				if err != nil {
					return err
				}
				for _, id := range ids {
					pk, err := tx.GetPrekey(kind, id)
					if err != nil {
						return err
					}
					secrets[fmt.Sprintf("%s prekey %v %d", who, kind, id)] = pk[len(pk)-32:]
				}
			}
			cs, err := tx.ListContacts()
			if err != nil {
				return err
			}
			for _, c := range cs {
				secrets[who+" contact account "+c.Name] = c.Account[:]
				secrets[who+" contact account (base64) "+c.Name] = []byte(base64.RawURLEncoding.EncodeToString(c.Account[:]))
				if st, err := tx.GetSession(c.Account); err == nil {
					secrets[who+" session head"] = st[:min(48, len(st))]
					secrets[who+" session tail"] = st[max(0, len(st)-48):]
				}
			}
			return nil
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(secrets) < 2*N+10 {
		t.Fatalf("only %d secrets to look for", len(secrets))
	}
	for who, dir := range dirs {
		files := map[string][]byte{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				b, _ := os.ReadFile(p)
				files[filepath.Base(p)] = b
			}
			return nil
		})
		if len(files) == 0 {
			t.Fatalf("no files in %s", who)
		}
		for what, s := range secrets {
			for f, b := range files {
				if bytes.Contains(b, s) {
					t.Errorf("%s: %s is in %s", who, what, f)
				}
			}
		}
	}
}
