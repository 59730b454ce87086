package p2p

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults and limits of the node's configuration.
const (
	// DefaultConnLow and DefaultConnHigh are the connection manager's water
	// marks: above high it trims unprotected connections down to low.
	DefaultConnLow  = 64
	DefaultConnHigh = 192
	// DefaultConnGrace is how long a new connection is exempt from trimming.
	DefaultConnGrace = time.Minute

	// DefaultRepublishInterval is how often published bundles are put again.
	// The DHT drops records after 48 hours; republishing well inside that
	// keeps a bundle reachable as the set of closest peers changes.
	DefaultRepublishInterval = 4 * time.Hour
	// MinRepublishInterval keeps a misconfiguration from flooding the DHT.
	MinRepublishInterval = time.Second

	// DefaultReadIdleTimeout bounds how long an inbound direct stream may sit
	// without sending a complete frame before it is reset.
	DefaultReadIdleTimeout = 30 * time.Second
	// DefaultFrameTimeout bounds how long one frame (after its first byte)
	// may take to arrive, and how long a write may block.
	DefaultFrameTimeout = 10 * time.Second
	// DefaultMaxInboundStreamsPerPeer caps concurrent inbound direct streams
	// from one peer; excess streams are reset at once.
	DefaultMaxInboundStreamsPerPeer = 4
	// DefaultInboundPipeline caps concurrent Receive calls per inbound
	// direct stream (and so the envelopes buffered for it).
	DefaultInboundPipeline = 16
	// DefaultMaxInFlight caps how many envelopes one outbound stream carries
	// without an ack yet.
	DefaultMaxInFlight = 256

	// DefaultMDNSServiceName is the mDNS service tag Sotto nodes announce.
	DefaultMDNSServiceName = "_sotto-discovery._udp"
)

// DefaultListenAddrs are the addresses a node listens on unless told
// otherwise: any interface, IPv4 and IPv6, TCP and QUIC, on DefaultPort
// (the same address at every start, so contacts and routers keep it), or
// a kernel-chosen port where DefaultPort is taken. A host without IPv6
// listens on the IPv4 ones (libp2p fails only when no address can be
// listened on).
var DefaultListenAddrs = []string{
	"/ip4/0.0.0.0/tcp/4747",
	"/ip4/0.0.0.0/udp/4747/quic-v1",
	"/ip6/::/tcp/4747",
	"/ip6/::/udp/4747/quic-v1",
}

// Configuration errors.
var (
	ErrNoIdentity    = errors.New("p2p: a host identity key is required (WithIdentity)")
	ErrBadIdentity   = errors.New("p2p: the host identity must be an Ed25519 private key")
	ErrBadListenAddr = errors.New("p2p: bad listen address")
	ErrBadConfig     = errors.New("p2p: bad configuration")
)

// Option configures a Host. Options are applied over the defaults in order,
// then the result is validated.
type Option func(*config) error

type config struct {
	identity        crypto.PrivKey
	listenAddrs     []ma.Multiaddr
	bootstrap       []peer.AddrInfo
	mdns            bool
	mdnsServiceName string

	connLow, connHigh int
	connGrace         time.Duration

	nat     bool // AutoNAT service and client, relay client, hole punching
	metrics bool

	public        bool            // declared publicly reachable: DHT server
	infra         bool            // the public infrastructure preset
	relay         *RelayLimits    // serve circuit relay v2 with these limits
	relays        []peer.AddrInfo // AutoRelay's first candidates
	announce      []ma.Multiaddr  // external addresses to advertise
	protoLimits   map[string][2]int
	connsPerAddr  int  // inbound connections per IPv4 address or IPv6 /56 (0: libp2p's 8)
	defaultListen bool // listenAddrs are the defaults (DefaultPort)

	verifier          BundleVerifier
	republishInterval time.Duration
	now               func() time.Time

	receiver          Receiver
	readIdleTimeout   time.Duration
	frameTimeout      time.Duration
	maxInboundPerPeer int
	maxInFlight       int
	inboundPipeline   int

	logger *slog.Logger

	// libp2p, when set, is used instead of building a host; the transport,
	// listen, NAT, mDNS, metrics, resource and connection manager settings
	// then do not apply.
	libp2p host.Host

	dhtOpts []dht.Option // appended last; tests only

	registerer prometheus.Registerer // where libp2p's and the relay's metrics go

	upgrade upgradeTiming           // when relay-only peers are tried again (upgrade.go)
	gater   connmgr.ConnectionGater // tests only
}

func defaultConfig() config {
	c := config{
		mdns:              true,
		mdnsServiceName:   DefaultMDNSServiceName,
		connLow:           DefaultConnLow,
		connHigh:          DefaultConnHigh,
		connGrace:         DefaultConnGrace,
		nat:               true,
		republishInterval: DefaultRepublishInterval,
		now:               time.Now,
		readIdleTimeout:   DefaultReadIdleTimeout,
		frameTimeout:      DefaultFrameTimeout,
		maxInboundPerPeer: DefaultMaxInboundStreamsPerPeer,
		maxInFlight:       DefaultMaxInFlight,
		inboundPipeline:   DefaultInboundPipeline,
		logger:            slog.New(slog.DiscardHandler),
		upgrade:           defaultUpgradeTiming,
	}
	for _, s := range DefaultListenAddrs {
		c.listenAddrs = append(c.listenAddrs, ma.StringCast(s))
	}
	c.defaultListen = true
	return c
}

func (c *config) validate() error {
	if c.identity == nil {
		return ErrNoIdentity
	}
	if c.identity.Type() != crypto.Ed25519 {
		return ErrBadIdentity
	}
	if c.libp2p != nil {
		id, err := peer.IDFromPrivateKey(c.identity)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadIdentity, err)
		}
		if id != c.libp2p.ID() {
			return fmt.Errorf("%w: the libp2p host is %s, the identity key's peer ID is %s", ErrBadIdentity, c.libp2p.ID(), id)
		}
	}
	if len(c.listenAddrs) == 0 {
		return fmt.Errorf("%w: no listen addresses", ErrBadListenAddr)
	}
	if c.connLow < 0 || c.connHigh <= 0 || c.connLow > c.connHigh {
		return fmt.Errorf("%w: connection water marks low=%d high=%d", ErrBadConfig, c.connLow, c.connHigh)
	}
	if c.republishInterval < MinRepublishInterval {
		return fmt.Errorf("%w: republish interval %v is below %v", ErrBadConfig, c.republishInterval, MinRepublishInterval)
	}
	if c.readIdleTimeout <= 0 || c.frameTimeout <= 0 {
		return fmt.Errorf("%w: timeouts must be positive", ErrBadConfig)
	}
	if c.maxInboundPerPeer <= 0 || c.maxInFlight <= 0 || c.inboundPipeline <= 0 {
		return fmt.Errorf("%w: stream limits must be positive", ErrBadConfig)
	}
	if c.mdns && c.mdnsServiceName == "" {
		return fmt.Errorf("%w: empty mDNS service name", ErrBadConfig)
	}
	return nil
}

// WithIdentity sets the device's host key (Ed25519). Required: the key's
// peer ID is the device's network address.
func WithIdentity(k crypto.PrivKey) Option {
	return func(c *config) error {
		c.identity = k
		return nil
	}
}

// WithLibp2pHost makes the Host run on h instead of building its own
// libp2p host (simulations on an in-process network). h must belong to the
// identity key (WithIdentity). Listen addresses, NAT traversal, mDNS,
// metrics and resource and connection management are then h's business and
// their options are ignored; the DHT and the node's protocols are set up on
// h as usual, and Close closes h.
func WithLibp2pHost(h host.Host) Option {
	return func(c *config) error {
		c.libp2p = h
		return nil
	}
}

// WithListenAddrs replaces the default listen addresses.
func WithListenAddrs(addrs ...string) Option {
	return func(c *config) error {
		c.listenAddrs = c.listenAddrs[:0:0]
		c.defaultListen = false
		for _, s := range addrs {
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return fmt.Errorf("%w %q: %w", ErrBadListenAddr, s, err)
			}
			c.listenAddrs = append(c.listenAddrs, a)
		}
		return nil
	}
}

// WithBootstrapPeers sets the peers the node connects to before it
// bootstraps its DHT, and falls back to when its routing table empties.
// There are no default bootstrap peers: a Sotto node never joins the public
// IPFS DHT.
func WithBootstrapPeers(peers ...peer.AddrInfo) Option {
	return func(c *config) error {
		c.bootstrap = append(c.bootstrap[:0:0], peers...)
		return nil
	}
}

// WithMDNS turns LAN discovery on or off (on by default). mDNS does not work
// on loopback; tests turn it off.
func WithMDNS(on bool) Option {
	return func(c *config) error {
		c.mdns = on
		return nil
	}
}

// WithConnLimits sets the connection manager's low and high water marks.
func WithConnLimits(low, high int) Option {
	return func(c *config) error {
		c.connLow, c.connHigh = low, high
		return nil
	}
}

// WithNAT turns NAT traversal on or off (on by default): the AutoNAT
// service (dial-backs for other peers) and client, the relay v2 client and
// hole punching. On loopback they need no special options: AutoNAT only
// probes public addresses, so reachability stays unknown, and relay and
// hole punching stay idle. Off saves the AutoNAT service's second host
// (tests and benchmarks turn it off for speed).
func WithNAT(on bool) Option {
	return func(c *config) error {
		c.nat = on
		return nil
	}
}

// WithMetrics turns libp2p's Prometheus metrics (host and resource
// manager) on or off. They are off by default: they go to Prometheus's
// default registry, which an embedding program must serve itself, and
// collecting them costs CPU on every stream frame.
func WithMetrics(on bool) Option {
	return func(c *config) error {
		c.metrics = on
		return nil
	}
}

// WithBundleVerifier sets the verifier the DHT record validator calls for
// the "sotto-bundle" namespace. Without one, every bundle record is rejected.
func WithBundleVerifier(v BundleVerifier) Option {
	return func(c *config) error {
		c.verifier = v
		return nil
	}
}

// WithRepublishInterval sets how often published bundles are put again.
func WithRepublishInterval(d time.Duration) Option {
	return func(c *config) error {
		c.republishInterval = d
		return nil
	}
}

// WithClock sets the clock the record validator uses (tests).
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrBadConfig)
		}
		c.now = now
		return nil
	}
}

// WithReceiver sets what inbound direct envelopes are handed to. Without
// one, the node does not serve the direct protocol.
func WithReceiver(r Receiver) Option {
	return func(c *config) error {
		c.receiver = r
		return nil
	}
}

// WithDirectTimeouts sets the direct protocol's read idle timeout and its
// per-frame timeout.
func WithDirectTimeouts(idle, frame time.Duration) Option {
	return func(c *config) error {
		c.readIdleTimeout, c.frameTimeout = idle, frame
		return nil
	}
}

// WithMaxInboundStreamsPerPeer caps concurrent inbound direct streams per peer.
func WithMaxInboundStreamsPerPeer(n int) Option {
	return func(c *config) error {
		c.maxInboundPerPeer = n
		return nil
	}
}

// WithMaxInFlight caps unacknowledged envelopes per outbound stream.
func WithMaxInFlight(n int) Option {
	return func(c *config) error {
		c.maxInFlight = n
		return nil
	}
}

// WithInboundPipeline caps concurrent Receive calls per inbound direct
// stream; 1 makes them sequential in frame order.
func WithInboundPipeline(n int) Option {
	return func(c *config) error {
		c.inboundPipeline = n
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrBadConfig)
		}
		c.logger = l
		return nil
	}
}
