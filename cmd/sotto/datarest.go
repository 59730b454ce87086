package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/node"
)

// Commands about the data at rest: `sotto passphrase change` and
// `sotto compact`, both on a stopped node, and the store lines of
// `sotto status`.

var passphraseChangeCommand = &command{
	name:     "passphrase change",
	synopsis: "[--data DIR] [--passphrase-file OLD] --new-passphrase-file NEW",
	summary:  "change the passphrase of the keys and the store (node stopped)",
	detail: "Rewraps the keystore and the store's data key under the passphrase in NEW\n" +
		"(its first line); the records are not re-encrypted. Without --passphrase-file\n" +
		"(or $SOTTO_PASSPHRASE_FILE), a data directory without a passphrase gets one.\n" +
		"The node must be stopped.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		oldFile := fs.String("passphrase-file", "", "read the current passphrase from `FILE`")
		newFile := fs.String("new-passphrase-file", "", "read the new passphrase from `FILE`")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			if *newFile == "" {
				return usagef("missing --new-passphrase-file")
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			old, err := c.passphrase(*oldFile)
			if err != nil {
				return err
			}
			pass, err := readPassphrase(*newFile)
			if err != nil {
				return err
			}
			if len(pass) == 0 {
				return fmt.Errorf("the new passphrase file %s is empty", *newFile)
			}
			if c.app.ChangePassphrase == nil {
				return notAvailable("passphrase change")
			}
			if err := c.app.ChangePassphrase(ctx, dir, old, pass); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "Changed the passphrase of %s.\n", dir)
			return nil
		}
	},
}

var compactCommand = &command{
	name:     "compact",
	synopsis: "[--data DIR] [--passphrase-file FILE] [--json]",
	summary:  "rewrite the store into a fresh file to reclaim space (node stopped)",
	detail: "Copies every record into a new file that replaces the old one, so the space of\n" +
		"deleted records is reclaimed and their bytes leave the data directory.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		passFile := fs.String("passphrase-file", "", "read the passphrase from `FILE`")
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			pass, err := c.passphrase(*passFile)
			if err != nil {
				return err
			}
			if c.app.Compact == nil {
				return notAvailable("compact")
			}
			before, after, err := c.app.Compact(ctx, dir, pass)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, struct {
					Before int64 `json:"bytes_before"`
					After  int64 `json:"bytes_after"`
				}{before, after})
			}
			fmt.Fprintf(c.stdout, "Compacted %s: %d bytes before, %d after.\n", dir, before, after)
			return nil
		}
	},
}

// passphrase reads the passphrase from file, else from
// $SOTTO_PASSPHRASE_FILE; nil when neither is set.
func (c *cli) passphrase(file string) ([]byte, error) {
	if file == "" {
		file = c.getenv("SOTTO_PASSPHRASE_FILE")
	}
	if file == "" {
		return nil, nil
	}
	return readPassphrase(file)
}

// changePassphrase is App.ChangePassphrase of the real node.
func changePassphrase(_ context.Context, dir string, old, new []byte) error {
	if err := node.ChangePassphrase(dir, old, new); err != nil {
		return openError(dir, err)
	}
	return nil
}

// compactStore is App.Compact of the real node.
func compactStore(_ context.Context, dir string, pass []byte) (int64, int64, error) {
	before, after, err := node.Compact(dir, pass)
	if err != nil {
		return 0, 0, openError(dir, err)
	}
	return before, after, nil
}

// lockedStoreError explains how to open an encrypted data directory while
// no node runs.
func lockedStoreError(dir string) error {
	return fmt.Errorf("the data directory %s is encrypted: start its node (`sotto run --passphrase-file FILE`) "+
		"or set $SOTTO_PASSPHRASE_FILE", dir)
}

// isLockedStore reports an encrypted data directory opened without its
// passphrase.
func isLockedStore(err error) bool { return errors.Is(err, node.ErrStoreLocked) }

// printStore writes the store lines of `sotto status`.
func printStore(w io.Writer, st api.StoreStatus) {
	enc := "not encrypted (no passphrase: run `sotto run --passphrase-file FILE` to encrypt it)"
	if st.Encrypted {
		enc = "encrypted"
	}
	fmt.Fprintf(w, "store:            %s, %d bytes\n", enc, st.FileBytes)
	fmt.Fprintf(w, "                  %d contacts, %d messages, %d sessions, %d prekeys, %d in outbox\n",
		st.Contacts, st.Messages, st.Sessions, st.Prekeys, st.Outbox)
	fmt.Fprintf(w, "                  %d dedup marks, %d envelope tokens, %d replay marks\n",
		st.DedupMarks, st.EnvelopeTokens, st.ReplayMarks)
	if st.RewriteDue {
		fmt.Fprintf(w, "                  deleted secrets wait for the next rewrite (hourly, at stop, or `sotto compact`)\n")
	}
	if len(st.Problems) > 0 {
		fmt.Fprintf(w, "                  %s (found at open, or damaged records left out since): stop the node and run\n", plural(len(st.Problems), "problem", "problems"))
		fmt.Fprintf(w, "                  `sotto check` for every damaged record, or restore the data directory from a backup:\n")
		for _, p := range st.Problems {
			fmt.Fprintf(w, "                    %s\n", p)
		}
	}
}

var backupCommand = &command{
	name:     "backup",
	synopsis: "[--data DIR] FILE",
	summary:  "write an encrypted backup of the data directory to FILE",
	detail: "A consistent snapshot of the store and the keystore, both under the data\n" +
		"directory's passphrase, taken while the node runs (or with it stopped, given\n" +
		"$SOTTO_PASSPHRASE_FILE). FILE must not exist. A data directory without a\n" +
		"passphrase cannot be backed up: give it one with `sotto passphrase change`.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			switch {
			case len(args) < 1:
				return usageError{"missing FILE"}
			case len(args) > 1:
				return usagef("unexpected argument %q", args[1])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			bk, ok := b.(api.Backupper)
			if !ok {
				return notAvailable("backup")
			}
			n, err := writeNewFile(args[0], func(w io.Writer) error { return bk.Backup(ctx, w) })
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(c.stdout, "Wrote a backup of %d bytes to %s.\n", n, args[0])
			return nil
		}
	},
}

var restoreCommand = &command{
	name:     "restore",
	synopsis: "[--data DIR] [--passphrase-file FILE] [--json] BACKUP",
	summary:  "restore a backup into a new data directory",
	detail: "Brings back identity, contacts, verified states and history from BACKUP, which\n" +
		"must open with the passphrase. Ratchet sessions are not restored: the node\n" +
		"starts new ones, which contacts see as a session reset from the same account.\n" +
		"The data directory must not exist or be empty; nothing is written there unless\n" +
		"the whole backup checks out.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		passFile := fs.String("passphrase-file", "", "read the backup's passphrase from `FILE`")
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			switch {
			case len(args) < 1:
				return usageError{"missing BACKUP"}
			case len(args) > 1:
				return usagef("unexpected argument %q", args[1])
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			pass, err := c.passphrase(*passFile)
			if err != nil {
				return err
			}
			if len(pass) == 0 {
				return usagef("a backup is encrypted: give its passphrase with --passphrase-file (or $SOTTO_PASSPHRASE_FILE)")
			}
			if c.app.Restore == nil {
				return notAvailable("restore")
			}
			id, err := c.app.Restore(ctx, dir, args[0], pass)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, id)
			}
			fmt.Fprintf(c.stdout, "Restored %s into %s.\n\n", args[0], dir)
			printIdentity(c.stdout, id)
			return nil
		}
	},
}

// writeNewFile writes a new file at path (0600) with write, through a
// temporary file renamed into place once complete and synced; an
// existing path is refused.
func writeNewFile(path string, write func(io.Writer) error) (int64, error) {
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("%s exists; choose a new file name", path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return 0, err
	}
	cw := &countWriter{w: f}
	err = write(cw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(f.Name(), path) // fails if path appeared meanwhile
	}
	os.Remove(f.Name())
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// restoreBackup is App.Restore of the real node.
func restoreBackup(ctx context.Context, dir, file string, pass []byte) (api.Identity, error) {
	f, err := os.Open(file)
	if err != nil {
		return api.Identity{}, err
	}
	defer f.Close()
	if _, err := node.Restore(f, dir, pass); err != nil {
		return api.Identity{}, openError(dir, err)
	}
	n, err := node.Open(node.Config{DataDir: dir, Passphrase: pass})
	if err != nil {
		return api.Identity{}, userError(err)
	}
	defer n.Close()
	return api.NodeBackend(n).Identity(ctx)
}

var checkCommand = &command{
	name:     "check",
	synopsis: "[--data DIR] [--passphrase-file FILE]",
	summary:  "check the store for damage (node stopped)",
	detail: "Reads every page and record of the store and checks the indexes against the\n" +
		"records; prints what is wrong and exits 1 if anything is.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		passFile := fs.String("passphrase-file", "", "read the passphrase from `FILE`")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			pass, err := c.passphrase(*passFile)
			if err != nil {
				return err
			}
			if c.app.Check == nil {
				return notAvailable("check")
			}
			if err := c.app.Check(ctx, dir, pass); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "The store in %s has no problems.\n", dir)
			return nil
		}
	},
}

// checkStore is App.Check of the real node.
func checkStore(_ context.Context, dir string, pass []byte) error {
	if err := node.CheckStore(dir, pass); err != nil {
		if isLockedStore(err) {
			return lockedStoreError(dir)
		}
		return openError(dir, fmt.Errorf("the store has problems:\n%w", err))
	}
	return nil
}
