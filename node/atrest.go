package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/store"
)

// Data at rest. With a passphrase, the node's store is encrypted (see
// package store): a plain data directory is encrypted the first time the
// node opens it with one, after the passphrase has been checked against
// the keystore.

// Errors about an encrypted data directory (the store's, so errors.Is
// matches either name).
var (
	// ErrStoreLocked: the data dir is encrypted and no passphrase was given.
	ErrStoreLocked = store.ErrPassphraseRequired
	// ErrWrongStorePassphrase: the passphrase does not open the data dir.
	ErrWrongStorePassphrase = store.ErrWrongPassphrase
)

// StoreStats describes the store for status.
type StoreStats = store.Stats

// storeOptions are the store.Open options for cfg.
func storeOptions(cfg *Config, extra ...store.Option) []store.Option {
	logger := cfg.Logger
	opts := []store.Option{
		store.WithPassphrase(cfg.Passphrase),
		store.WithBeforeEncrypt(func() error { return prepareKeystore(cfg.DataDir, cfg.Passphrase, cfg.Rand) }),
		store.WithOnDamage(func(err error) {
			logger.Error("a damaged record in the store was left out; `sotto status` lists it: stop the node and run `sotto check`, or restore from a backup", "err", err)
		}),
	}
	if cfg.StoreKDF != nil {
		opts = append(opts, store.WithKDF(*cfg.StoreKDF))
	}
	return append(opts, extra...)
}

// prepareKeystore runs before a plain store is encrypted under pass: it
// refuses a passphrase that the data directory's encrypted keystore does
// not accept, and encrypts a plain keystore under pass, so that the keys
// are not left in the clear next to an encrypted store.
func prepareKeystore(dir string, pass []byte, rand io.Reader) error {
	path := filepath.Join(dir, KeystoreFile)
	ks, err := keys.ReadKeystore(path, nil)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // Init: the keystore comes after the store
	case errors.Is(err, keys.ErrPassphraseRequired):
		_, err = keys.ReadKeystore(path, pass)
		return err
	case err != nil:
		return err
	}
	return keys.WriteKeystore(path, ks, pass, rand)
}

// ChangePassphrase changes the passphrase of the data directory dir
// (keystore and store) from old to new; the node must be stopped. An empty
// old means none: the keystore and store are then encrypted under new. If
// an earlier change was interrupted (one of the two already under new), it
// is finished. Nothing is written unless the old passphrase (or new, for
// the part already changed) opens both.
func ChangePassphrase(dir string, old, new []byte, opts ...InitOption) error {
	if len(new) == 0 {
		return errors.New("node: the new passphrase is empty")
	}
	cfg := Config{DataDir: dir}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.setDefaults()
	ksPath := filepath.Join(dir, KeystoreFile)
	ks, err := keys.ReadKeystore(ksPath, old)
	if errors.Is(err, keys.ErrWrongPassphrase) {
		ks, err = keys.ReadKeystore(ksPath, new)
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return ErrNotInitialised
	}
	open := func(p []byte) (*store.DB, error) {
		c := cfg
		c.Passphrase = p
		o := storeOptions(&c)
		// The keystore was checked above.
		o = append(o, store.WithBeforeEncrypt(nil))
		return store.Open(dir, o...)
	}
	db, err := open(old)
	if errors.Is(err, store.ErrWrongPassphrase) || (errors.Is(err, store.ErrPassphraseRequired) && len(old) == 0) {
		db, err = open(new)
	}
	if err != nil {
		return err
	}
	if db.Encrypted() {
		if err := db.ChangePassphrase(new); err != nil {
			db.Close()
			return err
		}
	} else {
		// A plain store: opening it with the new passphrase encrypts it.
		if err := db.Close(); err != nil {
			return err
		}
		if db, err = open(new); err != nil {
			return err
		}
	}
	if err := db.Close(); err != nil {
		return err
	}
	if err := keys.WriteKeystore(ksPath, ks, new, cfg.Rand); err != nil {
		return fmt.Errorf("node: the store now takes the new passphrase, but the keystore could not be rewritten (run the change again): %w", err)
	}
	return nil
}

// Compact rewrites the store of the stopped node in dir into a fresh file,
// reclaiming the space of deleted records, and returns the file's size
// before and after.
func Compact(dir string, passphrase []byte) (before, after int64, err error) {
	cfg := Config{DataDir: dir, Passphrase: passphrase}
	cfg.setDefaults()
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return 0, 0, ErrNotInitialised
	}
	db, err := store.Open(dir, storeOptions(&cfg)...)
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	st, err := db.Stats()
	if err != nil {
		return 0, 0, err
	}
	if err := db.Compact(); err != nil {
		return st.FileBytes, 0, err
	}
	st2, err := db.Stats()
	return st.FileBytes, st2.FileBytes, err
}

// storeUpkeep rewrites the store if a secret was deleted since the last
// rewrite (part of the hourly maintenance).
func (n *Node) storeUpkeep() {
	if err := n.db.RewriteIfDue(); err != nil {
		n.cfg.Logger.Error("rewriting the store", "err", err)
	}
}

// CheckStore checks the store of the stopped node in dir (store.DB.Check:
// every page and record, and the indexes against the records) and returns
// the problems found, or nil.
func CheckStore(dir string, passphrase []byte) error {
	cfg := Config{DataDir: dir, Passphrase: passphrase}
	cfg.setDefaults()
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return ErrNotInitialised
	}
	o := storeOptions(&cfg)
	if len(passphrase) > 0 {
		// Checking never encrypts a plain store.
		o = append(o, store.WithBeforeEncrypt(func() error { return errCheckPlain }))
	}
	db, err := store.Open(dir, o...)
	if errors.Is(err, errCheckPlain) {
		cfg.Passphrase = nil
		db, err = store.Open(dir, storeOptions(&cfg)...)
	}
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Check()
}

var errCheckPlain = errors.New("node: plain store")
