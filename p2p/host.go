package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
)

// Resource manager limits for the direct protocol, on top of libp2p's
// autoscaled defaults.
const (
	directStreamsPerPeer = 16
	directStreamsTotal   = 1024
	directMemoryBase     = 16 << 20
	// mdnsConnectTimeout bounds a connection attempt to a peer found on the LAN.
	mdnsConnectTimeout = 10 * time.Second
)

// ErrClosed is returned by operations on a closed Host.
var ErrClosed = errors.New("p2p: host is closed")

// Host is a running Sotto node on the network. Create it with New; Close
// stops everything it started.
type Host struct {
	cfg    config
	h      host.Host
	dht    *dht.IpfsDHT
	mdns   mdns.Service
	sender *Sender

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	wg      sync.WaitGroup
	inbound map[peer.ID]int // open inbound direct streams per peer

	reach    reachWatch
	upgrades upgrader

	pubMu     sync.Mutex
	published map[string][]byte // bundle records this node republishes
	republish chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// New builds and starts a host: it listens, serves the DHT and (with a
// Receiver) the direct protocol, and starts mDNS if enabled. It does not
// contact bootstrap peers; call Bootstrap for that.
func New(opts ...Option) (*Host, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}

	ref := new(hostRef)
	h := cfg.libp2p
	if h == nil {
		var err error
		if h, err = newLibp2pHost(&cfg, ref); err != nil {
			return nil, err
		}
	}

	n := &Host{
		cfg:       cfg,
		h:         h,
		inbound:   make(map[peer.ID]int),
		published: make(map[string][]byte),
		republish: make(chan struct{}, 1),
		upgrades:  upgrader{peers: make(map[peer.ID]*upgradeState)},
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())

	dopts := append(dhtOptions(&cfg),
		dht.ProtocolPrefix(ProtocolPrefix),
		dht.Validator(newValidator(cfg.verifier, cfg.now)),
	)
	if len(cfg.bootstrap) > 0 {
		dopts = append(dopts, dht.BootstrapPeers(cfg.bootstrap...))
	}
	dopts = append(dopts, cfg.dhtOpts...)
	var err error
	n.dht, err = dht.New(h, dopts...)
	if err != nil {
		n.cancel()
		h.Close()
		return nil, fmt.Errorf("p2p: dht: %w", err)
	}

	n.sender = newSender(n)
	ref.p.Store(n)
	if err := n.watchReachability(); err != nil {
		n.Close()
		return nil, err
	}
	if cfg.receiver != nil {
		h.SetStreamHandler(DirectProtocol, n.handleDirect)
	}
	n.goFunc(n.republishLoop)
	if cfg.nat && cfg.libp2p == nil {
		n.goFunc(n.upgradeLoop)
	}

	if cfg.mdns && cfg.libp2p == nil {
		// LAN discovery is a convenience: without it (no multicast, only
		// loopback addresses) the node still works through the DHT.
		svc := mdns.NewMdnsService(h, cfg.mdnsServiceName, mdnsNotifee{n})
		if err := svc.Start(); err != nil {
			cfg.logger.Warn("mDNS discovery unavailable", "err", err)
		} else {
			n.mdns = svc
		}
	}
	return n, nil
}

// newLibp2pHost builds the libp2p host: TCP and QUIC, Noise, yamux, the
// resource and connection managers and, if enabled, NAT traversal.
func newLibp2pHost(cfg *config, ref *hostRef) (host.Host, error) {
	rm, err := newResourceManager(cfg)
	if err != nil {
		return nil, err
	}
	cm, err := connmgr.NewConnManager(cfg.connLow, cfg.connHigh, connmgr.WithGracePeriod(cfg.connGrace))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("p2p: connection manager: %w", err)
	}
	listen := cfg.listenAddrs
	if cfg.defaultListen {
		listen = defaultListenAddrs()
	}
	lopts := []libp2p.Option{
		libp2p.Identity(cfg.identity),
		libp2p.ListenAddrs(listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
	}
	if cfg.gater != nil {
		lopts = append(lopts, libp2p.ConnectionGater(cfg.gater))
	}
	if len(cfg.announce) > 0 {
		lopts = append(lopts, libp2p.AddrsFactory(announceFactory(cfg.announce)))
	}
	if cfg.nat {
		lopts = append(lopts, natOptions(cfg, ref)...)
	} else {
		lopts = append(lopts, libp2p.DisableRelay())
	}
	if !cfg.metrics {
		lopts = append(lopts, libp2p.DisableMetrics())
	} else if cfg.registerer != nil {
		// The resource manager's metrics follow: libp2p.New registers them.
		lopts = append(lopts, libp2p.PrometheusRegisterer(cfg.registerer))
	}
	h, err := libp2p.New(lopts...)
	if err != nil {
		// libp2p closes rm and cm when construction fails.
		return nil, fmt.Errorf("p2p: libp2p host: %w", err)
	}
	if cfg.nat && !cfg.public {
		startRelayFinder(h, cfg.logger)
	}
	return h, nil
}

// newResourceManager builds a resource manager with libp2p's autoscaled
// default limits (raised to thousands of connections by the
// infrastructure preset) and explicit stream limits for every Sotto
// protocol. Loopback addresses stay exempt from the per-IP connection
// limit (the library default). Without metrics, it records no
// per-reservation statistics (their cost shows at high message rates:
// every stream frame reserves memory).
func newResourceManager(cfg *config) (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	protoTotal := defaultProtocolStream
	if cfg.infra {
		protoTotal = infraProtocolStreams
	}
	protos := map[string][2]int{
		string(DirectProtocol):        {directStreamsTotal, directStreamsPerPeer},
		BundleProtocol:                {protoTotal, 2},
		ProtocolPrefix + "/kad/1.0.0": {protoTotal, 16},
		"/meshsub/1.1.0":              {protoTotal, 4},
		"/meshsub/1.2.0":              {protoTotal, 4},
	}
	for p, l := range cfg.protoLimits {
		protos[p] = l
	}
	for p, l := range protos {
		mem := int64(directMemoryBase)
		limits.AddProtocolLimit(protocol.ID(p),
			rcmgr.BaseLimit{StreamsInbound: l[0], StreamsOutbound: l[0], Streams: 2 * l[0], Memory: mem},
			rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(protocol.ID(p),
			rcmgr.BaseLimit{StreamsInbound: l[1], StreamsOutbound: l[1], Streams: 2 * l[1], Memory: mem},
			rcmgr.BaseLimitIncrease{})
	}
	concrete := limits.AutoScale()
	if cfg.infra {
		concrete = rcmgr.PartialLimitConfig{System: rcmgr.ResourceLimits{
			Conns:           infraConnsInbound + infraConnsOutbound,
			ConnsInbound:    infraConnsInbound,
			ConnsOutbound:   infraConnsOutbound,
			Streams:         infraStreamsInbound + infraStreamsOutbound,
			StreamsInbound:  infraStreamsInbound,
			StreamsOutbound: infraStreamsOutbound,
			Memory:          infraMemory,
			FD:              infraFD,
		}, Transient: rcmgr.ResourceLimits{
			Conns:          infraConnsInbound / 8,
			ConnsInbound:   infraConnsInbound / 8,
			ConnsOutbound:  infraConnsOutbound / 8,
			Streams:        infraStreamsInbound / 8,
			StreamsInbound: infraStreamsInbound / 8,
		}}.Build(concrete)
	}
	var opts []rcmgr.Option
	if !cfg.metrics {
		opts = append(opts, rcmgr.WithMetricsDisabled())
	}
	if n := cfg.connsPerAddr; n > 0 {
		opts = append(opts, rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: n}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: n}, {PrefixLength: 48, ConnCount: 8 * n}}),
			rcmgr.WithConnRateLimiters(connRateLimiter(n)))
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(concrete), opts...)
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	return rm, nil
}

// goFunc runs f in a goroutine that Close waits for. It reports false, and
// does not run f, once the host is closing.
func (n *Host) goFunc(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// ID is the host's peer ID (the device's network address).
func (n *Host) ID() peer.ID { return n.h.ID() }

// Addrs are the addresses the host listens on.
func (n *Host) Addrs() []ma.Multiaddr { return n.h.Addrs() }

// AddrInfo is the host's peer ID with its listen addresses, what another
// node needs to connect to it.
func (n *Host) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.h.ID(), Addrs: n.h.Addrs()}
}

// Context is done once the host closes; services built on the host
// derive their own contexts from it.
func (n *Host) Context() context.Context { return n.ctx }

// Logger is the host's logger, the default of services built on it.
func (n *Host) Logger() *slog.Logger { return n.cfg.logger }

// Clock is the host's clock (WithClock), the default of services built on
// it.
func (n *Host) Clock() func() time.Time { return n.cfg.now }

// Closed reports whether Close has been called.
func (n *Host) Closed() bool { return n.isClosed() }

// LibP2P exposes the underlying libp2p host for the services built on it
// (mailboxes, pubsub). Its lifetime is the Host's.
func (n *Host) LibP2P() host.Host { return n.h }

// DHT exposes the Kademlia DHT for services built on it (provider records).
func (n *Host) DHT() *dht.IpfsDHT { return n.dht }

// Sender is the host's pipelined direct-protocol sender.
func (n *Host) Sender() *Sender { return n.sender }

// Protect keeps connections to p from being trimmed by the connection
// manager while any tag protects it. Tags name why (e.g. "contact",
// "mailbox").
func (n *Host) Protect(p peer.ID, tag string) { n.h.ConnManager().Protect(p, tag) }

// Unprotect removes one protection tag from p and reports whether p is
// still protected by another tag.
func (n *Host) Unprotect(p peer.ID, tag string) bool { return n.h.ConnManager().Unprotect(p, tag) }

// IsProtected reports whether tag protects p (any tag if tag is "").
func (n *Host) IsProtected(p peer.ID, tag string) bool { return n.h.ConnManager().IsProtected(p, tag) }

// Connect dials p (its addresses joined with what the peerstore knows).
func (n *Host) Connect(ctx context.Context, p peer.AddrInfo) error {
	if n.isClosed() {
		return ErrClosed
	}
	if err := n.h.Connect(ctx, p); err != nil {
		return fmt.Errorf("p2p: connect %s: %w", p.ID, err)
	}
	return nil
}

func (n *Host) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

// Close stops the host: mDNS, the republisher, the direct protocol handler
// and sender streams, the DHT and the libp2p host. It waits for every
// goroutine the Host started and is safe to call more than once.
func (n *Host) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		n.cancel()
		n.h.RemoveStreamHandler(DirectProtocol)
		n.h.RemoveStreamHandler(BundleProtocol)
		var errs []error
		if n.mdns != nil {
			errs = append(errs, n.mdns.Close())
		}
		n.sender.close()
		errs = append(errs, n.dht.Close())
		errs = append(errs, n.h.Close())
		n.wg.Wait()
		if err := errors.Join(errs...); err != nil {
			n.closeErr = fmt.Errorf("p2p: close: %w", err)
		}
	})
	return n.closeErr
}

// mdnsNotifee connects to peers found on the LAN.
type mdnsNotifee struct{ n *Host }

func (m mdnsNotifee) HandlePeerFound(pi peer.AddrInfo) {
	n := m.n
	if pi.ID == n.h.ID() {
		return
	}
	n.goFunc(func() {
		ctx, cancel := context.WithTimeout(n.ctx, mdnsConnectTimeout)
		defer cancel()
		if err := n.h.Connect(ctx, pi); err != nil {
			n.cfg.logger.Debug("mdns connect failed", "peer", pi.ID, "err", err)
			return
		}
		n.cfg.logger.Debug("mdns peer connected", "peer", pi.ID)
	})
}

// connRateLimiter lets each IPv4 address (or IPv6 /56) open n new
// connections at once and n/16 a second after that, 8 times as many for an
// IPv6 /48; loopback is not limited. libp2p's default, a burst of 16 and
// one every 5 s, refuses the users of a mailbox node, who open a fresh
// connection per kind and epoch of tags in each sync round.
func connRateLimiter(n int) *rate.Limiter {
	per := rate.Limit{RPS: float64(n) / 16, Burst: n}
	return &rate.Limiter{
		NetworkPrefixLimits: []rate.PrefixLimit{
			{Prefix: netip.MustParsePrefix("127.0.0.0/8")},
			{Prefix: netip.MustParsePrefix("::1/128")},
		},
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: per}},
			IPv6SubnetLimits: []rate.SubnetLimit{{PrefixLength: 56, Limit: per}, {PrefixLength: 48, Limit: rate.Limit{RPS: 8 * per.RPS, Burst: 8 * n}}},
			GracePeriod:      time.Minute,
		},
	}
}
