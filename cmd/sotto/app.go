package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/sotto-im/sotto/api"
)

// App is what the command-line tool needs from the node. The commands that
// manage an identity or run a node call these hooks; a nil hook makes its
// command fail with "not available in this build".
type App struct {
	// OpenBackend opens the data directory directly, for commands run
	// while no node is serving it. The returned func releases it.
	OpenBackend func(dataDir string) (api.Backend, func(), error)
	// Init creates a new identity in cfg.DataDir.
	Init func(ctx context.Context, cfg InitConfig) (api.Identity, error)
	// Run runs a node until ctx ends. Once the node is ready it calls
	// cfg.ServeAPI, which serves the control socket until ctx ends.
	Run func(ctx context.Context, cfg RunConfig) error
	// Demo runs a self-contained demonstration, writing its narration to
	// out; with keep set it leaves the network running until ctx ends,
	// prints how to talk to it, and keeps its data directories.
	Demo func(ctx context.Context, keep bool, out io.Writer) error
	// ChangePassphrase changes the passphrase of the stopped node's keys
	// and store from old (nil: none) to new.
	ChangePassphrase func(ctx context.Context, dataDir string, old, new []byte) error
	// Compact rewrites the stopped node's store into a fresh file and
	// returns its size before and after.
	Compact func(ctx context.Context, dataDir string, passphrase []byte) (before, after int64, err error)
	// Restore restores the backup in file into the new data directory
	// dataDir and returns the restored identity.
	Restore func(ctx context.Context, dataDir, file string, passphrase []byte) (api.Identity, error)
	// Check checks the stopped node's store and returns its problems.
	Check func(ctx context.Context, dataDir string, passphrase []byte) error
}

// InitConfig is what `sotto init` asks for.
type InitConfig struct {
	DataDir    string
	Name       string
	Passphrase []byte // nil: store keys unencrypted
}

// RunConfig is what `sotto run` asks for.
type RunConfig struct {
	DataDir   string
	Listen    []string // multiaddrs; empty means the node's defaults
	Bootstrap []string // multiaddrs of peers to join the network through
	Mailbox   bool     // also serve as a mailbox for others
	// MailboxNodes are multiaddrs of mailbox nodes to receive at
	// (--mailbox-node); without them the node chooses from the DHT.
	MailboxNodes []string
	NoMDNS       bool // no LAN discovery (--no-mdns or SOTTO_NO_MDNS=1)
	// LAN: every node can dial every other (one machine, a LAN without
	// NAT): DHT server, private addresses kept, no NAT traversal.
	LAN bool
	// Public, Relay and Infra: see node.Config; Announce are external
	// addresses to advertise.
	Public, Relay, Infra bool
	Announce             []string
	Passphrase           []byte // from --passphrase-file or $SOTTO_PASSPHRASE_FILE; nil if unset
	Log                  *slog.Logger
	// Stdout receives what scripts read: the node's peer ID and addresses.
	Stdout io.Writer
	// Progress, when set (standard output is a terminal), shows text as a
	// live progress line on Stdout; an empty text removes it.
	Progress func(text string)
	// ServeAPI serves b on the data directory's control socket (and the
	// TCP listener --api-listen asks for) until ctx ends. It fails at once
	// if another node serves the directory.
	ServeAPI func(ctx context.Context, b api.Backend) error
	// FirstRun: on a data directory with no identity, serve the control
	// API and the web interface (ServeAPI) with a backend that creates
	// one (api.FirstRun: POST /v1/setup), then start the node on it,
	// instead of failing (--ui).
	FirstRun bool
	// MetricsListen, when set (--metrics-listen), is the HOST:PORT where
	// Prometheus metrics are served at /metrics while the node runs.
	MetricsListen string
	// ClockSkew runs the node on a clock this far off the system's
	// ($SOTTO_TEST_CLOCK_SKEW, a test knob).
	ClockSkew time.Duration
}

// errNotAvailable reports a command whose hook this build lacks.
var errNotAvailable = errors.New("not available in this build")

func notAvailable(what string) error {
	return fmt.Errorf("%s: %w", what, errNotAvailable)
}
