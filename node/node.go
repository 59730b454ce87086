package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/sotto-im/sotto/invite"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// KeystoreFile is the name of the keystore file inside a data dir.
const KeystoreFile = "keystore"

// Defaults of the messenger.
const (
	// DefaultMessageTTL is how long a message envelope may wait in
	// mailboxes, and how long the outbox keeps trying before a message is
	// marked failed.
	DefaultMessageTTL = protocol.MaxTTL
	// DefaultOneTimePrekeys is how many one-time prekeys of each kind a
	// bundle carries.
	DefaultOneTimePrekeys = 8
	// MinOneTimePrekeys triggers a new bundle when fewer one-time X25519
	// prekeys remain.
	MinOneTimePrekeys = 3
	// DefaultBundleValidity is how long a published bundle is valid; a new
	// one is made when less than a quarter of it remains.
	DefaultBundleValidity = 30 * 24 * time.Hour
	// MaxIngestBatch bounds how many inbound envelopes commit in one
	// transaction.
	MaxIngestBatch = 256
	// MaxOutboxBatch bounds how many outbox entries one pass handles.
	MaxOutboxBatch = 512
	// sendBatchDelay is how long a send's commit waits for others to join
	// it.
	sendBatchDelay = 500 * time.Microsecond
	// eventBuffer is each subscriber's event queue length.
	eventBuffer = 1024
	// mailboxStreams and mailboxStreamsPerPeer cap the mailbox protocol's
	// streams, all peers together and per peer.
	mailboxStreams, mailboxStreamsPerPeer = 2048, 4
)

// settings keys in the store.
const (
	settingDeviceCert = "device-cert"
	settingBundle     = "bundle"
	settingAddrs      = "addrs"
)

// Errors of the messenger.
var (
	ErrNotInitialised     = errors.New("node: this data dir has no identity yet; run `sotto init` first")
	ErrAlreadyInitialised = errors.New("node: this data dir already holds an identity; use another --data to create a second one")
	ErrLocked             = errors.New("node: the keystore is protected by a passphrase; give it with --passphrase-file (or SOTTO_PASSPHRASE_FILE)")
	ErrUnknownContact     = errors.New("node: unknown contact")
	ErrNoKeyChange        = errors.New("node: no new key awaits a decision for this contact; nothing to reject")
	ErrKeyChangePending   = errors.New("node: this contact's identity key changed; compare safety numbers and accept the new key before sending")
	ErrNotRunning         = errors.New("node: the node is not running")
	ErrNotSealed          = errors.New("node: the message is not sealed yet: it waits for a session with the contact")
	ErrEmptyMessage       = errors.New("node: the message is empty")
	ErrMessageTooLarge    = fmt.Errorf("node: the message is longer than %d bytes; split it", protocol.MaxBodySize)
	// An invite that is not one, damaged, or from a newer version.
	ErrInviteFormat, ErrInviteChecksum, ErrInviteVersion = invite.ErrFormat, invite.ErrChecksum, invite.ErrVersion
)

// Conditions the store reports that callers of the node branch on; they
// are the store's errors, so errors.Is matches either name.
var (
	// ErrDuplicate: the account is already a contact.
	ErrDuplicate = store.ErrDuplicate
	// ErrNameTaken: another contact has that name.
	ErrNameTaken = store.ErrNameTaken
	// ErrInvalidName: the name is empty, too long or has control characters.
	ErrInvalidName = store.ErrInvalidName
	// ErrTooLarge: a value exceeds what the store keeps.
	ErrTooLarge = store.ErrTooLarge
	// ErrInUse: another process holds the data directory.
	ErrInUse = store.ErrInUse
)

// Config configures a Node. The zero value (with DataDir set) opens the
// data dir with no passphrase, listens on the default addresses, uses no
// bootstrap peers and serves no mailbox.
type Config struct {
	DataDir    string
	Passphrase []byte

	// Network (used by Start).
	ListenAddrs []string        // default DefaultListenAddrs
	Bootstrap   []peer.AddrInfo // DHT bootstrap peers
	NoMDNS      bool            // disable LAN discovery (tests, loopback)
	NoNAT       bool            // a network without NAT (loopback, a LAN): DHT server, private addresses kept, no NAT traversal
	HostOptions []p2p.Option    // further options for the libp2p host
	// Public says the node is publicly reachable (DHT server at once);
	// Relay makes it a circuit relay for NATed nodes; Infra applies the
	// preset of a public bootstrap, relay and mailbox node (p2p.WithInfra).
	Public, Relay, Infra bool
	// Announce adds external addresses the node cannot see itself.
	Announce []string

	// Mailbox makes the node also serve as a gossip mailbox for others.
	Mailbox bool
	// Mailboxes are version 1 mailbox nodes to use besides those found
	// in the DHT.
	Mailboxes []peer.AddrInfo
	// MailboxNodes are version 2 mailbox nodes to receive at (the first
	// MailboxCopies that answer); without them the node chooses from the
	// DHT's providers of the mailbox directory.
	MailboxNodes []peer.AddrInfo
	// EphemeralHost opens the fresh-identity hosts that version 2 mailbox
	// rounds, filters and pushes go from (default p2p.NewEphemeral). A
	// simulation on a mocknet sets one that opens mocknet peers.
	EphemeralHost func() (host.Host, error)
	// RegisterWait bounds how long a session's envelopes wait for one of
	// the node's mailboxes to take its tags (default mailbox.RegisterWait).
	RegisterWait time.Duration
	// MailboxAfter is how long a message waits for direct delivery before
	// it is also deposited in mailboxes (default DefaultMailboxAfter).
	MailboxAfter time.Duration
	// MailboxCopies is how many mailboxes a deposit aims for (default
	// DefaultMailboxCopies).
	MailboxCopies int
	// MailboxOptions tune the mailbox this node serves (limits, rate
	// limits, timeouts), when Mailbox is set.
	MailboxOptions []mailbox.Option

	// MaxRequests bounds the message requests kept (default
	// DefaultMaxRequests); NewSessionsPerEpoch the first messages accepted
	// per UTC day (default DefaultNewSessionsPerEpoch).
	MaxRequests         int
	NewSessionsPerEpoch int

	MessageTTL     time.Duration // default DefaultMessageTTL
	OneTimePrekeys int           // default DefaultOneTimePrekeys
	// ReorderWait is how long a received message waits for an earlier
	// message of the same sender that has not arrived before it is shown
	// anyway (default DefaultReorderWait).
	ReorderWait time.Duration

	Logger  *slog.Logger
	Metrics p2p.Registerer // where libp2p's metrics go (nil: none)
	Now     func() time.Time
	Rand    io.Reader
	// StoreKDF is the Argon2id cost of a new store encryption (nil:
	// store.DefaultKDF; tests lower it).
	StoreKDF *store.KDFParams
}

func (c *Config) setDefaults() {
	if c.MessageTTL <= 0 || c.MessageTTL > protocol.MaxTTL {
		c.MessageTTL = DefaultMessageTTL
	}
	if c.OneTimePrekeys <= 0 || c.OneTimePrekeys > keys.MaxOneTimePrekeys {
		c.OneTimePrekeys = DefaultOneTimePrekeys
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.NewSessionsPerEpoch <= 0 {
		c.NewSessionsPerEpoch = DefaultNewSessionsPerEpoch
	}
	if c.MailboxAfter <= 0 {
		c.MailboxAfter = DefaultMailboxAfter
	}
	if c.MailboxCopies <= 0 {
		c.MailboxCopies = DefaultMailboxCopies
	}
	if c.ReorderWait <= 0 {
		c.ReorderWait = DefaultReorderWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
}

// Node is a Sotto messenger: the store, the keys and, once started, the
// network. Open gives a node that works on the store alone (contacts,
// queueing sends, reading messages); Start joins the network.
type Node struct {
	cfg   Config
	db    *store.DB
	ident store.Identity
	me    *protocol.LocalIdentity // nil while the keystore is locked
	ks    *keys.Keystore

	events *feed

	syncs, sent, received, deposits, served atomic.Uint64 // for Status
	rejected                                atomic.Uint64 // envelopes refused as malformed, for Status
	// v1Syncing counts the version 1 syncs under way (SyncMailboxes), each
	// counted before it reads the clock.
	v1Syncing atomic.Int32
	// sending counts Send calls writing right now: a lone one commits
	// at once, concurrent ones share a batched commit.
	sending atomic.Int32

	mu      sync.Mutex
	host    *p2p.Host
	started bool
	closed  bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ingest chan *ingestReq
	kick   chan struct{}
	// releaseKick wakes releaseLoop when a message is held.
	releaseKick chan struct{}
	// publishKick has the bundle published again (kickPublish).
	publishKick chan struct{}
	// withdrawKick has withdrawLoop run (kickWithdraw).
	withdrawKick chan struct{}
	// published: how the bundle's publication went.
	published publication
	// firstContact and strange rate envelopes from a peer under an intro
	// tag and under no known tag (screen).
	firstContact, strange *p2p.PeerLimiter
	ob                    outboxState
	mbx                   mailboxes
	introSecret           [protocol.IntroSecretSize]byte // in invites: version 2 first contacts
	sessions              sessionCache
	grp                   groups
}

// Init creates a new identity in dir: account key, device (host) key,
// identity DH key, device certificate and a first prekey bundle. The keys
// go to the keystore file (encrypted when passphrase is not empty), the
// rest to the store.
func Init(dir, name string, passphrase []byte, opts ...InitOption) (store.Identity, error) {
	cfg := Config{DataDir: dir}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.setDefaults()
	if name != "" {
		if err := store.ValidateName(name); err != nil {
			return store.Identity{}, err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, KeystoreFile)); err == nil {
		return store.Identity{}, ErrAlreadyInitialised
	}
	cfg.Passphrase = passphrase
	db, err := store.Open(dir, storeOptions(&cfg)...)
	if err != nil {
		return store.Identity{}, err
	}
	defer db.Close()
	if err := db.View(func(tx *store.Tx) error {
		_, err := tx.GetIdentity()
		return err
	}); err == nil {
		return store.Identity{}, ErrAlreadyInitialised
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.Identity{}, err
	}
	if _, err := os.Stat(filepath.Join(dir, KeystoreFile)); err == nil {
		return store.Identity{}, ErrAlreadyInitialised
	}

	now := cfg.Now()
	acct, err := keys.GenerateAccount(cfg.Rand)
	if err != nil {
		return store.Identity{}, err
	}
	hostKey, _, err := crypto.GenerateEd25519Key(cfg.Rand)
	if err != nil {
		return store.Identity{}, fmt.Errorf("node: host key: %w", err)
	}
	hostKeyBytes, err := crypto.MarshalPrivateKey(hostKey)
	if err != nil {
		return store.Identity{}, fmt.Errorf("node: host key: %w", err)
	}
	pid, err := peer.IDFromPrivateKey(hostKey)
	if err != nil {
		return store.Identity{}, fmt.Errorf("node: host key: %w", err)
	}
	ik, err := keys.GenerateDH(cfg.Rand)
	if err != nil {
		return store.Identity{}, err
	}
	cert, err := keys.NewDeviceCertificate(acct, []byte(pid), ik.Public(), now)
	if err != nil {
		return store.Identity{}, err
	}
	ks := &keys.Keystore{Account: acct, IdentityDH: ik, HostKey: hostKeyBytes}
	ksPath := filepath.Join(dir, KeystoreFile)
	if err := keys.WriteKeystore(ksPath, ks, passphrase, cfg.Rand); err != nil {
		return store.Identity{}, err
	}
	ident := store.Identity{Name: name, Keystore: KeystoreFile, Account: acct.Public(), PeerID: pid.String(), Created: now}
	err = db.Update(func(tx *store.Tx) error {
		if err := tx.PutIdentity(ident); err != nil {
			return err
		}
		if err := tx.PutSetting(settingDeviceCert, cert.Marshal()); err != nil {
			return err
		}
		_, err := newBundle(tx, &cfg, acct, cert, now)
		return err
	})
	if err == nil {
		_, err = mailbox.IntroSecret(db)
	}
	if err != nil {
		os.Remove(ksPath)
		return store.Identity{}, err
	}
	return ident, nil
}

// InitOption adjusts Init (tests inject randomness and time).
type InitOption func(*Config)

// InitWithRand makes Init draw keys from r.
func InitWithRand(r io.Reader) InitOption { return func(c *Config) { c.Rand = r } }

// InitWithClock makes Init use now as the current time.
func InitWithClock(now func() time.Time) InitOption { return func(c *Config) { c.Now = now } }

// Open opens the node in cfg.DataDir: the store, and the keystore when it
// can be read (a passphrase-protected keystore without the passphrase
// leaves the node locked: it can queue and list, not seal or start).
func Open(cfg Config) (*Node, error) {
	cfg.setDefaults()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, store.FileName)); errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotInitialised
	}
	// Concurrent sends share a commit; a short window keeps one send fast.
	db, err := store.Open(cfg.DataDir, storeOptions(&cfg, store.WithMaxBatchDelay(sendBatchDelay))...)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, db: db, events: newFeed()}
	if p := db.OpenProblems(); len(p) > 0 {
		cfg.Logger.Error("the store has problems (the node runs; `sotto status` lists them; stop it and run `sotto check` for each damaged record, or restore from a backup)",
			"problems", strings.Join(p, "; "))
	}
	var certBytes []byte
	err = db.View(func(tx *store.Tx) error {
		var err error
		if n.ident, err = tx.GetIdentity(); err != nil {
			return err
		}
		certBytes, err = tx.GetSetting(settingDeviceCert)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		db.Close()
		return nil, ErrNotInitialised
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	ksPath := n.ident.Keystore
	if !filepath.IsAbs(ksPath) {
		ksPath = filepath.Join(cfg.DataDir, ksPath)
	}
	ks, err := keys.ReadKeystore(ksPath, cfg.Passphrase)
	switch {
	case errors.Is(err, keys.ErrPassphraseRequired) && len(cfg.Passphrase) == 0:
		// Locked: store-only operations still work.
	case err != nil:
		db.Close()
		return nil, err
	default:
		cert, err := keys.ParseDeviceCertificate(certBytes)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("node: stored device certificate: %w", err)
		}
		if cert.Account != ks.Account.Public() || cert.IdentityDH != ks.IdentityDH.Public() {
			db.Close()
			return nil, fmt.Errorf("node: the keystore does not belong to this data dir's identity")
		}
		n.ks = ks
		n.me = &protocol.LocalIdentity{Account: ks.Account, IdentityDH: ks.IdentityDH, Device: cert}
		if n.introSecret, err = mailbox.IntroSecret(db); err == nil {
			err = n.newUser()
		}
		if err != nil {
			db.Close()
			return nil, err
		}
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.ingest = make(chan *ingestReq, MaxIngestBatch)
	n.kick = make(chan struct{}, 1)
	n.releaseKick = make(chan struct{}, 1)
	n.publishKick = make(chan struct{}, 1)
	n.withdrawKick = make(chan struct{}, 1)
	n.ob.init()
	n.firstContact = p2p.NewPeerLimiter(firstContactRate, firstContactBurst)
	n.strange = p2p.NewPeerLimiter(strangeRate, strangeBurst)
	n.mbx.syncKick = make(chan struct{}, 1)
	return n, nil
}

// Identity is this device's identity.
func (n *Node) Identity() Identity {
	return Identity{
		Name: n.ident.Name, Account: n.ident.Account, Fingerprint: Fingerprint(n.ident.Account),
		PeerID: n.ident.PeerID, Created: n.ident.Created,
	}
}

// account is the node's account public key.
func (n *Node) account() keys.AccountPublic { return keys.AccountPublic(n.ident.Account) }

// Host is the running network host, nil before Start.
func (n *Node) Host() *p2p.Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.host
}

// Locked reports whether the keystore could not be opened (passphrase
// missing): the node can queue messages but not seal or send them.
func (n *Node) Locked() bool { return n.me == nil }

// Start joins the network: it starts the libp2p host and DHT, serves the
// direct and bundle protocols, publishes the prekey bundle and starts the
// outbox. It returns once the node can receive.
func (n *Node) Start(ctx context.Context) error {
	if n.me == nil {
		return ErrLocked
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return p2p.ErrClosed
	}
	if n.started {
		n.mu.Unlock()
		return nil
	}
	n.started = true
	n.mu.Unlock()

	hostKey, err := crypto.UnmarshalPrivateKey(n.ks.HostKey)
	if err != nil {
		return fmt.Errorf("node: keystore host key: %w", err)
	}
	boot := n.bootstrapPeers()
	opts := []p2p.Option{
		p2p.WithIdentity(hostKey),
		p2p.WithBootstrapPeers(boot...),
		p2p.WithMDNS(!n.cfg.NoMDNS),
		p2p.WithNAT(!n.cfg.NoNAT),
		p2p.WithProtocolLimit(string(mailbox.Protocol), mailboxStreams, mailboxStreamsPerPeer),
		mailbox.StreamLimit2(n.cfg.Infra),
		p2p.WithBundleVerifier(p2p.VerifyBundle),
		p2p.WithReceiver(directReceiver{n}),
		// Up to a whole commit's worth of envelopes per stream in flight.
		p2p.WithInboundPipeline(MaxIngestBatch),
		p2p.WithLogger(n.cfg.Logger),
		p2p.WithClock(n.cfg.Now),
		p2p.WithMetrics(n.cfg.Metrics != nil), p2p.WithPrometheusRegisterer(n.cfg.Metrics),
	}
	if len(n.cfg.ListenAddrs) > 0 {
		opts = append(opts, p2p.WithListenAddrs(n.cfg.ListenAddrs...))
	}
	if n.cfg.Infra {
		opts = append(opts, p2p.WithInfra())
	}
	if n.cfg.Public {
		opts = append(opts, p2p.WithPublic(true))
	}
	if n.cfg.Mailbox {
		opts = append(opts, p2p.WithConnsPerAddr(mailbox.ConnsPerNet))
	}
	if n.cfg.Relay || n.cfg.Infra {
		opts = append(opts, p2p.WithRelayService(p2p.DefaultRelayLimits()))
	}
	if len(n.cfg.Announce) > 0 {
		opts = append(opts, p2p.WithAnnounce(n.cfg.Announce...))
	}
	opts = append(opts, n.cfg.HostOptions...)

	// The committer must run before the host accepts envelopes.
	n.wg.Go(n.ingestLoop)
	n.wg.Go(n.releaseLoop)

	h, err := p2p.New(opts...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.host = h
	n.mu.Unlock()
	h.ServeBundles(func() ([]byte, error) { return n.currentBundle(n.now()) })
	h.LibP2P().Network().Notify(connNotifee{n})

	if err := n.refreshTags(); err != nil {
		return err
	}
	n.saveAddrs()
	n.protectContacts()

	// The gossip router runs before the first connections: a peer met
	// before it started is not in its mesh, and live copies of deposits
	// would miss this node until the next sync. Peers that forward invalid
	// version 2 deposits are scored down (mailbox.GossipScoring).
	if n.mbx.gossip, err = p2p.NewGossip(h, p2p.WithPubSubOptions(mailbox.GossipScoring()...)); err != nil {
		return err
	}
	if len(boot) > 0 {
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := h.Bootstrap(bctx); err != nil {
			n.cfg.Logger.Warn("DHT bootstrap failed; will rely on direct addresses", "err", err)
		} else {
			n.saveGoodPeers()
		}
		cancel()
	}
	// Mailboxes announce themselves in the DHT: after bootstrap.
	if err := n.startMailboxes(h); err != nil {
		return err
	}
	if err := n.startGroups(); err != nil {
		return err
	}
	// What a clock further ahead scheduled moves back: before the loop's
	// first pass reads the schedule.
	if now := n.now(); n.clockStepBack(now) > 0 {
		n.rescheduleFuture(now, n.clockStepBack(now))
	}
	n.wg.Go(n.outboxLoop)
	n.wg.Go(n.maintenanceLoop)
	// The bundle goes into the DHT now (retried until it works), and again
	// whenever a first message used some of its one-time prekeys.
	n.wg.Go(n.publishLoop)
	// Mailbox copies of envelopes the outbox dropped as refused go.
	n.wg.Go(n.withdrawLoop)
	n.kickOutbox()
	return nil
}

// Close stops the network (if started), waits for every goroutine and
// closes the store. It is idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	h := n.host
	n.mu.Unlock()
	var errs []error
	if n.cancel != nil {
		n.cancel()
	}
	n.closeMailboxes()
	if h != nil {
		n.saveGoodPeers()
		n.saveAddrs() // with the relayed ones found since Start
		h.LibP2P().Network().StopNotify(connNotifee{n})
		errs = append(errs, h.Close())
	}
	if n.cancel != nil {
		n.cancel()
	}
	n.wg.Wait()
	if h != nil {
		n.noteClock(n.now()) // a restart onto an earlier clock finds it
	}
	n.events.close()
	errs = append(errs, n.db.Close())
	return errors.Join(errs...)
}

// Addrs are the node's current listen addresses with its peer ID (empty
// when not started: then the last known ones).
func (n *Node) Addrs() []ma.Multiaddr {
	if h := n.Host(); h != nil {
		return h.Addrs()
	}
	var out []ma.Multiaddr
	n.db.View(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingAddrs)
		out = p2p.DecodeAddrs(b)
		return err
	})
	return out
}

// saveAddrs remembers the addresses for invites made while the node is
// not running.
func (n *Node) saveAddrs() {
	if h := n.Host(); h != nil {
		n.db.Update(func(tx *store.Tx) error { return tx.PutSetting(settingAddrs, p2p.EncodeAddrs(h.Addrs())) })
	}
}

// Invite is this node's invite link, what others add as a contact.
func (n *Node) Invite() (string, error) {
	inv, err := n.invite()
	if err != nil {
		return "", err
	}
	return inv.String(), nil
}

// invite is this node's invite: account, device certificate, the
// addresses others can reach it at and the good public peers it knows.
func (n *Node) invite() (*invite.Invite, error) {
	var cert keys.DeviceCertificate
	err := n.db.View(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingDeviceCert)
		if err != nil {
			return err
		}
		cert, err = keys.ParseDeviceCertificate(b)
		return err
	})
	if err != nil {
		return nil, err
	}
	inv := &invite.Invite{Device: cert, Addrs: n.shareableAddrs(), IntroSecret: &n.introSecret}
	n.db.View(func(tx *store.Tx) error { inv.Mailboxes = mailbox.OwnMailboxes(tx); return nil })
	for _, p := range n.knownPeers() {
		if len(inv.Peers) < invite.MaxPeers && len(p.Addrs) > 0 && p.ID.String() != n.ident.PeerID {
			inv.Peers = append(inv.Peers, p)
		}
	}
	return inv, nil
}

// shareableAddrs are the addresses worth giving a contact: on a network
// without NAT every specific one (0.0.0.0 says nothing to another
// machine); on the internet the public and relayed ones only.
func (n *Node) shareableAddrs() []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range n.Addrs() {
		if ip, err := manet.ToIP(a); err == nil && ip.IsUnspecified() {
			continue
		}
		out = append(out, a)
	}
	if !n.cfg.NoNAT {
		out = p2p.PublicAddrs(out)
	}
	return out[:min(len(out), invite.MaxAddrs)]
}

func (n *Node) now() time.Time { return n.cfg.Now() }

// debugOn reports whether debug lines are logged: per-message debug lines
// are built only then.
func (n *Node) debugOn() bool { return n.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) }

func (n *Node) kickOutbox() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// kickLoop runs step at once, then on every kick and whenever the delay
// step last asked for has passed (false: only on a kick), until the node
// closes. It is the body of a goroutine counted in n.wg.
func (n *Node) kickLoop(kick <-chan struct{}, step func() (time.Duration, bool)) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-kick:
		case <-timer.C:
		}
		if d, ok := step(); ok {
			timer.Reset(d)
		} else {
			timer.Stop()
		}
	}
}
