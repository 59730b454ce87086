package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sotto-im/sotto/api"
	"github.com/sotto-im/sotto/ui"
)

// maxPassphraseFile bounds what a passphrase file may hold.
const maxPassphraseFile = 4 << 10

var initCommand = &command{
	name:     "init",
	synopsis: "[--data DIR] [--name NAME] [--passphrase-file FILE] [--json]",
	summary:  "create a new identity in the data directory",
	detail: "With --passphrase-file, the keys are encrypted under the passphrase in FILE\n" +
		"(its first line); `sotto run` then reads it from $SOTTO_PASSPHRASE_FILE.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		name := fs.String("name", "", "display `NAME` shown to contacts")
		passFile := fs.String("passphrase-file", "", "read the keystore passphrase from `FILE`")
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			var pass []byte
			if *passFile != "" {
				if pass, err = readPassphrase(*passFile); err != nil {
					return err
				}
			}
			if c.app.Init == nil {
				return notAvailable("init")
			}
			id, err := c.app.Init(ctx, InitConfig{DataDir: dir, Name: *name, Passphrase: pass})
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, id)
			}
			fmt.Fprintf(c.stdout, "Created a new identity in %s\n\n", dir)
			printIdentity(c.stdout, id)
			fmt.Fprintf(c.stdout, "\nNext: `sotto run --data %s`, then `sotto invite` to share your invite.\n", dir)
			return nil
		}
	},
}

// readPassphrase returns the first line of the file at path.
func readPassphrase(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("passphrase file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassphraseFile+1))
	if err != nil {
		return nil, fmt.Errorf("passphrase file: %w", err)
	}
	if len(b) > maxPassphraseFile {
		return nil, fmt.Errorf("passphrase file %s is larger than %d bytes", path, maxPassphraseFile)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, fmt.Errorf("passphrase file %s is empty", path)
	}
	return line, nil
}

var runCommand = &command{
	name:     "run",
	synopsis: "[--data DIR] [--listen MULTIADDR]... [--bootstrap MULTIADDR]... [--mailbox] [--mailbox-node MULTIADDR]... [--no-mdns] [--passphrase-file FILE] [--api-listen HOST:PORT] [--ui] [--ui-listen HOST:PORT] [--metrics-listen HOST:PORT] [--public] [--relay] [--infra] [--lan] [--announce MULTIADDR]...",
	summary:  "run the node and serve the control socket until interrupted",
	detail: "Once the node is on the network, it prints its peer ID and its addresses, one\n" +
		"per line (\"peer id: ID\", \"address: MULTIADDR/p2p/ID\": what others pass to\n" +
		"--bootstrap), then \"control socket: PATH\" when other commands can reach it.\n" +
		"Other commands talk to the running node through the socket api.sock in the data\n" +
		"directory (or, when that path is too long for a unix socket, in $TMPDIR/sotto-UID/).\n" +
		"With --api-listen, the same API is also served over HTTP on a loopback address,\n" +
		"for a browser UI; each request must carry \"Authorization: Bearer TOKEN\" with the\n" +
		"token in the file api.token of the data directory (created on first use, mode\n" +
		"0600). It prints \"api listener: http://HOST:PORT\" and \"api token file: PATH\"\n" +
		"before the control socket line.\n" +
		"With --ui (or --ui-listen HOST:PORT, a loopback address; --ui listens on\n" +
		"127.0.0.1:" + defaultUIPort + "), the node serves its web interface and prints\n" +
		"\"ui: http://HOST:PORT/\" and \"ui login: URL\", a link that signs one browser in\n" +
		"once (the page also accepts the token of api.token). On a data directory with\n" +
		"no identity yet, it serves the interface first: its first screen creates the\n" +
		"identity (as `sotto init` does, under the passphrase of --passphrase-file if\n" +
		"given), then the node starts and prints its peer ID and addresses.\n" +
		"With --metrics-listen, Prometheus metrics (libp2p's and Sotto's counts: peers,\n" +
		"outbox, mailbox, syncs, messages; no content, keys or names) are served without\n" +
		"authentication at http://HOST:PORT/metrics; it prints \"metrics: URL\" before the\n" +
		"control socket line.\n" +
		"If the keys are encrypted, --passphrase-file, else $SOTTO_PASSPHRASE_FILE, names\n" +
		"the passphrase file. SOTTO_NO_MDNS=1 has the effect of --no-mdns. On a terminal,\n" +
		"a progress line shows mailbox syncs.\n" + dataDirHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		var listen, bootstrap stringList
		fs.Var(&listen, "listen", "listen on `MULTIADDR` (repeatable)")
		fs.Var(&bootstrap, "bootstrap", "join the network through the peer at `MULTIADDR`, which ends in /p2p/PEERID (repeatable)")
		mailbox := fs.Bool("mailbox", false, "also hold messages for offline users (serve as a mailbox)")
		var mailboxNodes stringList
		fs.Var(&mailboxNodes, "mailbox-node", "receive offline messages at the mailbox node at `MULTIADDR`, which ends in /p2p/PEERID (repeatable; up to 3 are used; default: chosen from the network, in distinct networks)")
		noMDNS := fs.Bool("no-mdns", false, "do not look for peers on the local network (mDNS)")
		passFile := fs.String("passphrase-file", "", "read the keystore passphrase from `FILE` (default $SOTTO_PASSPHRASE_FILE)")
		apiListen := fs.String("api-listen", "", "also serve the API over HTTP at the loopback address `HOST:PORT` (127.0.0.1:PORT, [::1]:PORT or localhost:PORT), with a bearer token")
		withUI := fs.Bool("ui", false, "serve the web interface at http://127.0.0.1:"+defaultUIPort+"/ (see --ui-listen)")
		uiListen := fs.String("ui-listen", "", "serve the web interface at the loopback address `HOST:PORT` (127.0.0.1:PORT, [::1]:PORT or localhost:PORT)")
		var announce stringList
		fs.Var(&announce, "announce", "also advertise `MULTIADDR`, an address others reach this node at that it cannot see itself (a forwarded port, a server's external address) (repeatable)")
		public := fs.Bool("public", false, "this node has a public address: serve the DHT at once instead of waiting for AutoNAT's verdict")
		relay := fs.Bool("relay", false, "relay connections for nodes behind NAT (circuit relay v2, with limits per peer, per IP and per circuit), while this node is publicly reachable")
		infra := fs.Bool("infra", false, "run as a public infrastructure node: --public --relay --mailbox, with limits raised to thousands of connections")
		lan := fs.Bool("lan", false, "every node of this network can dial every other (one machine, or a LAN without NAT): DHT server at once, private and loopback addresses kept and shared, no NAT traversal")
		metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics, on any address and without authentication: they are counts (peers, outbox, mailbox, libp2p), never message content, keys or contacts")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			if *apiListen != "" && !api.IsLoopbackAddr(*apiListen) {
				return usagef("--api-listen %q is not a loopback address: the API listens only on 127.0.0.1:PORT, [::1]:PORT or localhost:PORT", *apiListen)
			}
			uiAddr := *uiListen
			if uiAddr == "" && *withUI {
				uiAddr = "127.0.0.1:" + defaultUIPort
			}
			if uiAddr != "" && !api.IsLoopbackAddr(uiAddr) {
				return usagef("--ui-listen %q is not a loopback address: the web interface listens only on 127.0.0.1:PORT, [::1]:PORT or localhost:PORT", uiAddr)
			}
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			if c.app.Run == nil {
				return notAvailable("run")
			}
			var pass []byte
			f := *passFile
			if f == "" {
				f = c.getenv("SOTTO_PASSPHRASE_FILE")
			}
			if f != "" {
				if pass, err = readPassphrase(f); err != nil {
					return err
				}
			}
			// A test knob: the chaos harness runs users whose clocks are
			// minutes off.
			var skew time.Duration
			if v := c.getenv("SOTTO_TEST_CLOCK_SKEW"); v != "" {
				if skew, err = time.ParseDuration(v); err != nil {
					return usagef("SOTTO_TEST_CLOCK_SKEW=%q is not a duration such as 10m or -10m", v)
				}
			}
			level := slog.LevelInfo
			if v := c.getenv("SOTTO_LOG_LEVEL"); v != "" {
				if err := level.UnmarshalText([]byte(v)); err != nil {
					return usagef("SOTTO_LOG_LEVEL=%q is not a log level: use debug, info, warn or error", v)
				}
			}
			out := newLiveWriter(c.stdout, isTerminal(c.stdout))
			log := slog.New(slog.NewTextHandler(out.Beside(c.stderr), &slog.HandlerOptions{Level: level}))
			cfg := RunConfig{
				ClockSkew:    skew,
				DataDir:      dir,
				Listen:       listen,
				Bootstrap:    bootstrap,
				Mailbox:      *mailbox || *infra,
				MailboxNodes: mailboxNodes,
				NoMDNS:       *noMDNS || c.getenv("SOTTO_NO_MDNS") == "1",
				Passphrase:   pass,
				Log:          log,
				Stdout:       out,
				ServeAPI: func(ctx context.Context, b api.Backend) error {
					return serveAPI(ctx, b, dir, listeners{tcp: *apiListen, ui: uiAddr}, out, log)
				},
				FirstRun:      uiAddr != "",
				MetricsListen: *metricsListen,
				Public:        *public || *infra,
				Relay:         *relay || *infra,
				Infra:         *infra,
				LAN:           *lan,
				Announce:      announce,
			}
			if out.live {
				cfg.Progress = out.Progress
			}
			err = c.app.Run(ctx, cfg)
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil // interrupted: a normal way to stop
			}
			return err
		}
	},
}

// defaultUIPort is the port --ui listens on.
const defaultUIPort = "7374"

// listeners are the loopback addresses to serve on besides the control
// socket: the API with a bearer token, the web interface.
type listeners struct{ tcp, ui string }

// serveAPI serves b on the control socket of dir and on the loopback
// listeners asked for (the API with the data directory's bearer token,
// the web interface), until ctx ends or one fails. It prints where once
// all listen.
func serveAPI(ctx context.Context, b api.Backend, dir string, on listeners, out io.Writer, log *slog.Logger) error {
	path, err := api.SocketPath(dir)
	if err != nil {
		return err
	}
	ln, err := api.ListenUnix(path)
	if err != nil {
		return err
	}
	srv := api.NewServer(b, api.WithLogger(log))
	serves := []func(context.Context) error{func(ctx context.Context) error { return srv.Serve(ctx, ln) }}
	var lines []string
	closeAll := func(closers ...io.Closer) {
		ln.Close()
		for _, c := range closers {
			c.Close()
		}
	}
	var token string
	if on.tcp != "" || on.ui != "" {
		if token, err = api.LoadOrCreateToken(dir); err != nil {
			ln.Close()
			return err
		}
	}
	var opened []io.Closer
	if on.tcp != "" {
		tcp, err := api.ListenTCP(on.tcp)
		if err != nil {
			closeAll(opened...)
			return &prefixless{msg: "--api-listen " + on.tcp + ": " + strings.TrimPrefix(err.Error(), "api: "), err: err}
		}
		opened = append(opened, tcp)
		tokenFile := filepath.Join(dir, api.TokenFile)
		if abs, err := filepath.Abs(tokenFile); err == nil {
			tokenFile = abs
		}
		log.Info("API listener ready", "addr", tcp.Addr().String(), "token_file", tokenFile)
		lines = append(lines, fmt.Sprintf("api listener: http://%s", tcp.Addr()), "api token file: "+tokenFile)
		serves = append(serves, func(ctx context.Context) error { return srv.ServeAuth(ctx, tcp, token) })
	}
	if on.ui != "" {
		uln, err := ui.Listen(on.ui)
		if err != nil {
			closeAll(opened...)
			return &prefixless{msg: "--ui-listen " + on.ui + ": " + strings.TrimPrefix(err.Error(), "ui: "), err: err}
		}
		opened = append(opened, uln)
		us, err := ui.New(b, token, ui.WithLogger(log))
		if err != nil {
			closeAll(opened...)
			return err
		}
		base := "http://" + uln.Addr().String()
		login, err := us.LoginURL(base)
		if err != nil {
			closeAll(opened...)
			return err
		}
		log.Info("web interface ready", "addr", uln.Addr().String()) // never the login link
		lines = append(lines, "ui: "+base+"/", "ui login: "+login)
		serves = append(serves, func(ctx context.Context) error { return us.Serve(ctx, uln) })
	}
	log.Info("control socket ready", "path", path)
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
	fmt.Fprintf(out, "control socket: %s\n", path)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(serves))
	for _, serve := range serves {
		go func() { errc <- serve(ctx) }()
	}
	err = <-errc
	cancel() // the first to end stops the others
	for range len(serves) - 1 {
		if err2 := <-errc; err == nil {
			err = err2
		}
	}
	return err
}

var demoCommand = &command{
	name:     "demo",
	synopsis: "[--keep]",
	summary:  "run a small network on loopback and narrate direct, offline and first-contact messaging",
	detail: "The demo starts a bootstrap node, two mailboxes, alice, bob and carol in this\n" +
		"process, each with its own data directory in a temporary directory, and narrates\n" +
		"each step; on a terminal a live line shows the running step's time. It exits 0\n" +
		"when every step succeeded and deletes the data directories.",
	setup: func(fs *flag.FlagSet) runFunc {
		keep := fs.Bool("keep", false, "leave the network running after the last step and print the commands that talk to alice, bob and carol from another terminal; Ctrl-C stops it and keeps the data directories")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			if c.app.Demo == nil {
				return notAvailable("demo")
			}
			return c.app.Demo(ctx, *keep, c.stdout)
		}
	},
}
