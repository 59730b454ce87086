package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/node"
)

// nodeApp is the App of the real node.
func nodeApp() App {
	return App{OpenBackend: openNodeBackend, Init: initNode, Run: runNode, Demo: runDemo,
		ChangePassphrase: changePassphrase, Compact: compactStore, Restore: restoreBackup, Check: checkStore}
}

// startupWait bounds how long a command waits for a node that holds the
// data directory but does not serve its control socket yet (it is
// starting).
const startupWait = 15 * time.Second

// startupPoll is how often a command looks for the starting node's socket.
const startupPoll = 100 * time.Millisecond

func initNode(ctx context.Context, cfg InitConfig) (api.Identity, error) {
	if _, err := node.Init(cfg.DataDir, cfg.Name, cfg.Passphrase); err != nil {
		return api.Identity{}, openError(cfg.DataDir, err)
	}
	n, err := node.Open(node.Config{DataDir: cfg.DataDir, Passphrase: cfg.Passphrase})
	if err != nil {
		return api.Identity{}, userError(err)
	}
	defer n.Close()
	return api.NodeBackend(n).Identity(ctx)
}

// openNodeBackend opens the data directory for a command while no node
// serves it. Without a passphrase an encrypted keystore stays locked,
// which is enough for everything but running: messages are queued and
// sealed when the node next runs.
func openNodeBackend(dir string) (api.Backend, func(), error) {
	n, err := node.Open(node.Config{DataDir: dir})
	if isLockedStore(err) {
		// An encrypted store opens with $SOTTO_PASSPHRASE_FILE (never a
		// plain one: that is encrypted only by `sotto run`).
		var pass []byte
		if f := os.Getenv("SOTTO_PASSPHRASE_FILE"); f != "" {
			if pass, err = readPassphrase(f); err != nil {
				return nil, nil, err
			}
			n, err = node.Open(node.Config{DataDir: dir, Passphrase: pass})
		}
		if isLockedStore(err) {
			return nil, nil, lockedStoreError(dir)
		}
	}
	if errors.Is(err, node.ErrInUse) {
		// A node holds the directory but its socket did not answer: it
		// is starting, or another command has it open for a moment.
		return waitForNode(dir, err)
	}
	if err != nil {
		return nil, nil, openError(dir, err)
	}
	return api.NodeBackend(n, api.WithReadMarks(filepath.Join(dir, api.ReadMarksFile))), func() { n.Close() }, nil
}

// waitForNode waits up to startupWait for a node to serve dir, or for the
// directory to be free again.
func waitForNode(dir string, inUse error) (api.Backend, func(), error) {
	deadline := time.NewTimer(startupWait)
	defer deadline.Stop()
	tick := time.NewTicker(startupPoll)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return nil, nil, userError(inUse)
		case <-tick.C:
		}
		if c, err := api.Dial(dir); err == nil {
			return c, func() { c.Close() }, nil
		}
		n, err := node.Open(node.Config{DataDir: dir})
		if err == nil {
			return api.NodeBackend(n), func() { n.Close() }, nil
		}
		if !errors.Is(err, node.ErrInUse) {
			return nil, nil, userError(err)
		}
	}
}

// runNode opens the data directory, joins the network, prints the peer ID
// and the addresses others can reach it at, and serves the control socket
// until ctx ends.
func runNode(ctx context.Context, cfg RunConfig) error {
	stdout := cfg.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	bootstrap, err := parseBootstrap(cfg.Bootstrap)
	if err != nil {
		return err
	}
	mailboxNodes, err := parsePeers("--mailbox-node", cfg.MailboxNodes)
	if err != nil {
		return err
	}
	for _, a := range cfg.Listen {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return usagef("--listen %q is not a multiaddr: %v", a, err)
		}
	}
	ncfg := node.Config{
		DataDir:      cfg.DataDir,
		Passphrase:   cfg.Passphrase,
		ListenAddrs:  cfg.Listen,
		Bootstrap:    bootstrap,
		NoMDNS:       cfg.NoMDNS,
		MailboxNodes: mailboxNodes,
		NoNAT:        cfg.LAN,
		Public:       cfg.Public,
		Relay:        cfg.Relay,
		Infra:        cfg.Infra,
		Logger:       cfg.Log,
	}
	if skew := cfg.ClockSkew; skew != 0 {
		ncfg.Now = func() time.Time { return time.Now().Add(skew) }
		fmt.Fprintf(stdout, "clock: %v off the system's ($SOTTO_TEST_CLOCK_SKEW)\n", skew)
	}
	for _, a := range cfg.Announce {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return usagef("--announce %q is not a multiaddr: %v", a, err)
		}
		ncfg.Announce = append(ncfg.Announce, a)
	}
	if err := setMailbox(&ncfg, cfg.Mailbox); err != nil {
		return err
	}
	// The metrics listener opens first, so that a bad address fails the
	// run before the node joins the network.
	var metrics *prometheus.Registry
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		if metricsLn, err = listenMetrics(cfg.MetricsListen); err != nil {
			return err
		}
		defer metricsLn.Close()
		metrics = newMetricsRegistry()
		ncfg.Metrics = metrics
	}
	n, err := node.Open(ncfg)
	var first *firstRun
	if errors.Is(err, node.ErrNotInitialised) && cfg.FirstRun {
		first = startFirstRun(ctx, cfg, stdout)
		defer first.stop()
		if err := first.wait(ctx); err != nil {
			return err
		}
		n, err = node.Open(ncfg)
	}
	if err != nil {
		return openError(cfg.DataDir, err)
	}
	defer n.Close()
	if first != nil {
		defer first.stop() // before the node closes
	}
	if cfg.Progress != nil {
		// Subscribe before Start, which begins the first sync.
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			showSync(n.Subscribe(sctx), cfg.Progress, stdout)
		}()
		defer func() { cancel(); <-done }()
	}
	if err := n.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return userError(err)
	}
	fmt.Fprintf(stdout, "peer id: %s\n", n.Identity().PeerID)
	for _, a := range p2pAddrs(n) {
		fmt.Fprintf(stdout, "address: %s\n", a)
	}
	if metrics != nil {
		metrics.MustRegister(newStatusCollector(api.NodeBackend(n).Status))
		log := cfg.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		stop := serveMetrics(metricsLn, metrics, log)
		defer stop() // before n.Close
		fmt.Fprintf(stdout, "metrics: http://%s%s\n", metricsLn.Addr(), metricsPath)
	}
	b := api.NodeBackend(n, api.WithReadMarks(filepath.Join(cfg.DataDir, api.ReadMarksFile)))
	if first != nil {
		return first.serve(b)
	}
	return cfg.ServeAPI(ctx, b)
}

// firstRun serves the control API and the web interface of a data
// directory that has no identity yet, until the user creates one, and
// then the node started on it.
type firstRun struct {
	backend *api.FirstRun
	cancel  context.CancelFunc
	done    chan error // ServeAPI's result
	result  error
	ended   bool
}

// startFirstRun starts serving cfg.DataDir with an api.FirstRun backend
// and says so on stdout.
func startFirstRun(ctx context.Context, cfg RunConfig, stdout io.Writer) *firstRun {
	sctx, cancel := context.WithCancel(ctx)
	f := &firstRun{backend: api.NewFirstRun(cfg.DataDir, cfg.Passphrase), cancel: cancel, done: make(chan error, 1)}
	fmt.Fprintf(stdout, "first run: %s holds no identity yet; create one on the web interface's first screen (or stop this and run `sotto init`)\n", cfg.DataDir)
	go func() { f.done <- cfg.ServeAPI(sctx, f.backend) }()
	return f
}

// wait waits until the identity exists; it fails if serving fails or
// ctx ends first.
func (f *firstRun) wait(ctx context.Context) error {
	select {
	case <-f.backend.Created():
		return nil
	case err := <-f.done:
		f.result, f.ended = err, true
		if err == nil {
			err = ctx.Err()
		}
		if err == nil {
			err = errors.New("the control socket closed before an identity was created")
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serve hands the requests to the running node's backend b and serves
// until ctx ends or serving fails.
func (f *firstRun) serve(b api.Backend) error {
	f.backend.SetBackend(b)
	if !f.ended {
		f.result, f.ended = <-f.done, true
	}
	return f.result
}

// stop ends serving and waits for it.
func (f *firstRun) stop() {
	f.cancel()
	if !f.ended {
		f.result, f.ended = <-f.done, true
	}
}

// showSync shows mailbox syncs from the node's events as a progress line
// until events closes, and a summary line for a sync that fetched
// envelopes.
func showSync(events <-chan node.Event, progress func(string), out io.Writer) {
	for ev := range events {
		s := ev.Sync
		if ev.Type != node.EventSyncProgress || s == nil {
			continue
		}
		from := plural(s.Mailboxes, "mailbox", "mailboxes")
		if !s.Done {
			progress(fmt.Sprintf("syncing mailboxes: %s from %s…", plural(s.Envelopes, "envelope", "envelopes"), from))
			continue
		}
		progress("")
		if s.Envelopes > 0 {
			fmt.Fprintf(out, "mailbox sync: %s from %s\n", plural(s.Envelopes, "envelope", "envelopes"), from)
		}
	}
	progress("")
}

// p2pAddrs are the node's listen addresses with its peer ID, the form
// --bootstrap takes.
func p2pAddrs(n *node.Node) []string {
	id, err := peer.Decode(n.Identity().PeerID)
	if err != nil {
		return nil
	}
	full, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: id, Addrs: n.Addrs()})
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(full))
	for _, a := range full {
		out = append(out, a.String())
	}
	return out
}

// parseBootstrap parses --bootstrap values, each a multiaddr that ends in
// /p2p/PEERID; addresses of one peer are merged.
func parseBootstrap(addrs []string) ([]peer.AddrInfo, error) { return parsePeers("--bootstrap", addrs) }

// parsePeers parses the values of flag, each a multiaddr that ends in
// /p2p/PEERID; addresses of one peer are merged.
func parsePeers(flag string, addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, usagef("%s %q is not a multiaddr: %v", flag, s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_P2P); err != nil {
			return nil, usagef("%s %q has no peer ID: end it with /p2p/PEERID (`sotto run` prints its full addresses)", flag, s)
		}
		mas = append(mas, a)
	}
	if len(mas) == 0 {
		return nil, nil
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, usagef("%s: %v", flag, err)
	}
	return infos, nil
}

// openError explains an error of opening the data directory dir.
func openError(dir string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		// A file that cannot be read in a data directory that can (the
		// file's metadata is then readable): name the file.
		var pe *fs.PathError
		if errors.As(err, &pe) && filepath.Dir(filepath.Clean(pe.Path)) == filepath.Clean(dir) && statOK(pe.Path) {
			return fmt.Errorf("cannot open %s: permission denied; it must belong to you, "+
				"with mode 0600 (chmod 600 %s)", pe.Path, pe.Path)
		}
		return fmt.Errorf("cannot open the data directory %s: permission denied; it must belong to you, "+
			"with mode 0700 (chmod 700 %s)", dir, dir)
	}
	return userError(err)
}

func statOK(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// userError drops the package prefix from the errors of the node's
// packages, whose messages are written for the user.
func userError(err error) error {
	s := err.Error()
	for _, p := range []string{"node: ", "invite: ", "store: ", "keys: "} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			return &prefixless{msg: rest, err: err}
		}
	}
	return err
}

// prefixless is an error shown with another message than its cause's.
type prefixless struct {
	msg string
	err error
}

func (e *prefixless) Error() string { return e.msg }
func (e *prefixless) Unwrap() error { return e.err }
