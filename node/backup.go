package node

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/store"
)

// Backup and restore. A backup file holds the keystore file and a
// snapshot of the store (store.DB.Snapshot), both under the passphrase:
//
//	magic     "SOTTOBAK"
//	version   uint8 = 1
//	keystore  uint32be length (at most maxBackupKeystore), the keystore file
//	store     uint64be length (at most MaxBackupStore), the snapshot file
//	checksum  [32]byte SHA-256 of every byte before it
//
// The checksum tells a truncated or damaged file from a wrong passphrase;
// the keystore's and the store's own encryption protect the content. A
// restore writes nothing in place before all of it has been read, checked
// and opened with the passphrase.

// Limits of a backup file.
const (
	backupMagic       = "SOTTOBAK"
	backupVersion     = 1
	maxBackupKeystore = 64 << 10
	// MaxBackupStore bounds the store snapshot a backup may hold.
	MaxBackupStore = 64 << 30
)

// restoreBundleSeqJump is how far a restore moves the bundle sequence
// number on, past bundles published after the backup was taken.
const restoreBundleSeqJump = 1 << 20

// Errors of backups.
var (
	// ErrNotEncryptedBackup: a backup needs a passphrase on the data dir.
	ErrNotEncryptedBackup = errors.New("node: only an encrypted data dir can be backed up; give it a passphrase first (`sotto passphrase change --new-passphrase-file FILE`)")
	// ErrBackupDamaged: the backup file is truncated, damaged or not one.
	ErrBackupDamaged = errors.New("node: the backup file is truncated, damaged or not a Sotto backup; nothing was restored")
	// ErrRestoreTarget: the data directory to restore into holds data.
	ErrRestoreTarget = errors.New("node: the data dir to restore into is not empty; restore into a new --data")
)

// Backup writes a backup of the running (or open) node to w: a consistent
// snapshot of the store taken in one read transaction, and the keystore.
func (n *Node) Backup(w io.Writer) error {
	ksPath := n.ident.Keystore
	if !filepath.IsAbs(ksPath) {
		ksPath = filepath.Join(n.cfg.DataDir, ksPath)
	}
	ks, err := os.ReadFile(ksPath)
	if err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	if len(ks) > maxBackupKeystore {
		return fmt.Errorf("node: backup: the keystore is %d bytes", len(ks))
	}
	// Snapshots a killed node left behind.
	if old, _ := filepath.Glob(filepath.Join(n.cfg.DataDir, "backup-*")); len(old) > 0 {
		for _, p := range old {
			os.RemoveAll(p)
		}
	}
	tmp, err := os.MkdirTemp(n.cfg.DataDir, "backup-")
	if err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	defer os.RemoveAll(tmp)
	snap := filepath.Join(tmp, store.FileName)
	if err := n.db.Snapshot(snap); err != nil {
		if errors.Is(err, store.ErrNotEncrypted) {
			return ErrNotEncryptedBackup
		}
		return err
	}
	f, err := os.Open(snap)
	if err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	h := sha256.New()
	bw := bufio.NewWriter(io.MultiWriter(w, h))
	bw.WriteString(backupMagic)
	bw.WriteByte(backupVersion)
	binary.Write(bw, binary.BigEndian, uint32(len(ks)))
	bw.Write(ks)
	binary.Write(bw, binary.BigEndian, uint64(fi.Size()))
	if _, err := io.Copy(bw, f); err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("node: backup: %w", err)
	}
	_, err = w.Write(h.Sum(nil))
	return err
}

// Restore makes dir (which must not exist, or be empty) a copy of the
// backup read from r, which must open with passphrase. Identity, contacts,
// verified states and history come back; ratchet sessions do not: the
// restored node starts fresh sessions with each contact, which sees a new
// session from the same account key. It returns the restored identity.
func Restore(r io.Reader, dir string, passphrase []byte, opts ...InitOption) (store.Identity, error) {
	cfg := Config{DataDir: dir, Passphrase: passphrase}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.setDefaults()
	if len(passphrase) == 0 {
		return store.Identity{}, store.ErrPassphraseRequired
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return store.Identity{}, ErrRestoreTarget
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return store.Identity{}, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return store.Identity{}, err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".restore-")
	if err != nil {
		return store.Identity{}, err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := readBackup(r, tmp); err != nil {
		return store.Identity{}, err
	}
	if _, err := keys.ReadKeystore(filepath.Join(tmp, KeystoreFile), passphrase); err != nil {
		return store.Identity{}, err
	}
	db, err := store.Open(tmp, storeOptions(&cfg)...)
	if err != nil {
		return store.Identity{}, err
	}
	var ident store.Identity
	err = db.Update(func(tx *store.Tx) error {
		if ident, err = tx.GetIdentity(); err != nil {
			return err
		}
		ident.Keystore = KeystoreFile
		if err := tx.PutIdentity(ident); err != nil {
			return err
		}
		// The device may have published bundles after the backup: the
		// restored one starts from a new bundle whose sequence number
		// passes any of them.
		seq, _, err := tx.GetUint64(store.SettingBundleSeq)
		if err != nil {
			return err
		}
		if err := tx.PutUint64(store.SettingBundleSeq, seq+restoreBundleSeqJump); err != nil {
			return err
		}
		if err := tx.DeleteSetting(settingBundle); err != nil {
			return err
		}
		_, err = tx.ForgetSessions()
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr // the close rewrites the file: no dropped session stays in it
	}
	if err != nil {
		return store.Identity{}, err
	}
	os.Remove(dir) // an empty directory, if any
	if err := os.Rename(tmp, dir); err != nil {
		return store.Identity{}, err
	}
	done = true
	return ident, nil
}

// readBackup checks a backup file's layout and checksum while writing its
// keystore and store into dir.
func readBackup(r io.Reader, dir string) error {
	h := sha256.New()
	br := bufio.NewReader(r)
	tr := io.TeeReader(br, h)
	damaged := func(what string, err error) error {
		return fmt.Errorf("%w (%s: %v)", ErrBackupDamaged, what, err)
	}
	var hdr [len(backupMagic) + 1 + 4]byte
	if _, err := io.ReadFull(tr, hdr[:]); err != nil {
		return damaged("header", err)
	}
	if string(hdr[:len(backupMagic)]) != backupMagic || hdr[len(backupMagic)] != backupVersion {
		return damaged("header", errors.New("not a version 1 Sotto backup"))
	}
	ksLen := binary.BigEndian.Uint32(hdr[len(backupMagic)+1:])
	if ksLen == 0 || ksLen > maxBackupKeystore {
		return damaged("keystore", fmt.Errorf("length %d", ksLen))
	}
	if err := copyPart(tr, filepath.Join(dir, KeystoreFile), int64(ksLen)); err != nil {
		return damaged("keystore", err)
	}
	var sl [8]byte
	if _, err := io.ReadFull(tr, sl[:]); err != nil {
		return damaged("store length", err)
	}
	stLen := binary.BigEndian.Uint64(sl[:])
	if stLen == 0 || stLen > MaxBackupStore {
		return damaged("store", fmt.Errorf("length %d", stLen))
	}
	if err := copyPart(tr, filepath.Join(dir, store.FileName), int64(stLen)); err != nil {
		return damaged("store", err)
	}
	return checkSum(br, h)
}

func checkSum(r io.Reader, h hash.Hash) error {
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(r, sum[:]); err != nil {
		return fmt.Errorf("%w (checksum: %v)", ErrBackupDamaged, err)
	}
	if string(sum[:]) != string(h.Sum(nil)) {
		return fmt.Errorf("%w (the checksum does not match)", ErrBackupDamaged)
	}
	if n, _ := io.Copy(io.Discard, io.LimitReader(r, 1)); n > 0 {
		return fmt.Errorf("%w (bytes after the checksum)", ErrBackupDamaged)
	}
	return nil
}

// copyPart copies exactly n bytes of r into a new file at path (0600).
func copyPart(r io.Reader, path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, store.FileMode)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, r, n)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
