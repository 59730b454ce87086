package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sotto-im/sotto/api"
)

// dataDirFlag defines --data on fs.
func dataDirFlag(fs *flag.FlagSet) *string {
	return fs.String("data", "", "data directory `DIR` (default $SOTTO_HOME, $XDG_DATA_HOME/sotto or ~/.local/share/sotto)")
}

// jsonFlag defines --json on fs.
func jsonFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("json", false, "print JSON instead of text")
}

// dataDir resolves the data directory: the --data flag, else $SOTTO_HOME,
// else $XDG_DATA_HOME/sotto, else $HOME/.local/share/sotto.
func (c *cli) dataDir(flagValue string) (string, error) {
	switch {
	case flagValue != "":
		return flagValue, nil
	case c.getenv("SOTTO_HOME") != "":
		return c.getenv("SOTTO_HOME"), nil
	case c.getenv("XDG_DATA_HOME") != "":
		return filepath.Join(c.getenv("XDG_DATA_HOME"), "sotto"), nil
	case c.getenv("HOME") != "":
		return filepath.Join(c.getenv("HOME"), ".local", "share", "sotto"), nil
	}
	return "", errors.New("cannot find a data directory: set --data or $SOTTO_HOME")
}

// backend returns the Backend for a data directory: the running node's
// control socket if a node answers on it, else the data directory opened
// directly through App.OpenBackend. The returned func releases it.
func (c *cli) backend(flagValue string) (api.Backend, func(), error) {
	dir, err := c.dataDir(flagValue)
	if err != nil {
		return nil, nil, err
	}
	client, err := api.Dial(dir)
	if err == nil {
		return client, func() { client.Close() }, nil
	}
	if !errors.Is(err, api.ErrNoNode) {
		return nil, nil, err
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no data directory at %s: create one with `sotto init --data %s`", dir, dir)
	}
	if c.app.OpenBackend == nil {
		return nil, nil, fmt.Errorf("no node is running for %s: start one with `sotto run --data %s` "+
			"(reading the data directory without a node is %v)", dir, dir, errNotAvailable)
	}
	b, release, err := c.app.OpenBackend(dir)
	if err != nil {
		return nil, nil, err
	}
	if release == nil {
		release = func() {}
	}
	return b, release, nil
}
