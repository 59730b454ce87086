package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Reachability: how a node learns whether others can dial it, and what it
// does about it.
//
//   - A node on a network without NAT (WithNAT(false): one machine, a LAN)
//     is a DHT server and keeps private addresses; nothing else runs.
//   - A public node (WithPublic) says so: DHT server, reachability public,
//     and, with WithRelayService, a circuit relay v2 for others.
//   - Every other node finds out: AutoNAT (v1 for the verdict that drives
//     AutoRelay, v2 per address) and identify's observed addresses. The
//     DHT runs in auto mode (client until AutoNAT says public), keeps
//     private and loopback addresses out of the peerstore and routing
//     table, and AutoRelay holds reservations at relays met (configured
//     ones, bootstrap peers, any peer that offers the relay protocol), whose
//     relayed addresses the node advertises. DCUtR upgrades relayed
//     connections to direct ones. UPnP / NAT-PMP maps a port if the router
//     allows it.

// Reachability as the node sees it.
const (
	ReachUnknown = "unknown"
	ReachPublic  = "public"
	ReachPrivate = "private"
)

// DefaultPort is the TCP and UDP port a node listens on unless told
// otherwise (the next start then has the same address); when it is taken,
// the kernel picks one.
const DefaultPort = 4747

// Relay service limits: a relayed connection carries messages while a
// hole punch is tried or when it fails, so circuits are allowed more time
// and data than libp2p's defaults (2 minutes, 128 KiB), and reservations
// are counted per peer and IP so that one host cannot take them all.
const (
	DefaultRelayReservations      = 512
	DefaultRelayReservationsPerIP = 8
	DefaultRelayCircuitsPerPeer   = 16
	DefaultRelayCircuitDuration   = 10 * time.Minute
	DefaultRelayCircuitData       = 1 << 20
	DefaultRelayReservationTTL    = time.Hour
	// InfraRelayReservations is the preset of a public infrastructure node.
	InfraRelayReservations = 4096
)

// Connection limits of the infrastructure preset (WithInfra): a public
// bootstrap, relay and mailbox node holds thousands of connections.
const (
	InfraConnLow          = 2000
	InfraConnHigh         = 4000
	infraConnsInbound     = 8192
	infraConnsOutbound    = 2048
	infraStreamsInbound   = 32768
	infraStreamsOutbound  = 8192
	infraMemory           = 2 << 30
	infraFD               = 16384
	infraProtocolStreams  = 8192
	defaultProtocolStream = 1024
)

// Bounds of AutoRelay: how many relays a private node keeps reservations
// at, and how it looks for them.
const (
	relaysWanted     = 2
	relayCandidates  = 8
	relayBootDelay   = 5 * time.Second
	relayBackoff     = 30 * time.Second
	relayMinInterval = 5 * time.Second
)

// RelayLimits are the relay service's limits (WithRelayService).
type RelayLimits struct {
	Reservations      int           // active reservations
	ReservationsPerIP int           // reservations from one IP address
	CircuitsPerPeer   int           // open circuits per relayed peer
	CircuitDuration   time.Duration // a circuit is reset after this long
	CircuitData       int64         // or after this many bytes each way
	ReservationTTL    time.Duration
}

// DefaultRelayLimits are the relay service's limits unless told otherwise.
func DefaultRelayLimits() RelayLimits {
	return RelayLimits{
		Reservations:      DefaultRelayReservations,
		ReservationsPerIP: DefaultRelayReservationsPerIP,
		CircuitsPerPeer:   DefaultRelayCircuitsPerPeer,
		CircuitDuration:   DefaultRelayCircuitDuration,
		CircuitData:       DefaultRelayCircuitData,
		ReservationTTL:    DefaultRelayReservationTTL,
	}
}

func (l RelayLimits) validate() error {
	if l.Reservations <= 0 || l.ReservationsPerIP <= 0 || l.CircuitsPerPeer <= 0 ||
		l.CircuitDuration <= 0 || l.CircuitData <= 0 || l.ReservationTTL <= 0 {
		return fmt.Errorf("%w: relay limits must be positive: %+v", ErrBadConfig, l)
	}
	return nil
}

func (l RelayLimits) resources() relayv2.Resources {
	r := relayv2.DefaultResources()
	r.Limit = &relayv2.RelayLimit{Duration: l.CircuitDuration, Data: l.CircuitData}
	r.ReservationTTL = l.ReservationTTL
	r.MaxReservations = l.Reservations
	r.MaxCircuits = l.CircuitsPerPeer
	r.MaxReservationsPerIP = l.ReservationsPerIP
	return r
}

// WithPublic declares the node publicly reachable (a server with a public
// address): it runs its DHT in server mode and does not wait for AutoNAT.
func WithPublic(on bool) Option {
	return func(c *config) error {
		c.public = on
		return nil
	}
}

// WithRelayService makes the node a circuit relay v2 for others, with
// these limits. The relay serves only while the node is publicly
// reachable (WithPublic, or once AutoNAT says so).
func WithRelayService(l RelayLimits) Option {
	return func(c *config) error {
		if err := l.validate(); err != nil {
			return err
		}
		c.relay = &l
		return nil
	}
}

// WithRelays adds relays AutoRelay tries first, besides the bootstrap
// peers and the relay-capable peers it meets.
func WithRelays(peers ...peer.AddrInfo) Option {
	return func(c *config) error {
		c.relays = append(c.relays, peers...)
		return nil
	}
}

// WithAnnounce adds addresses others can reach the node at that it cannot
// see itself (a port forwarded by hand, a server's external address).
func WithAnnounce(addrs ...string) Option {
	return func(c *config) error {
		for _, s := range addrs {
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return fmt.Errorf("%w: announce address %q: %w", ErrBadListenAddr, s, err)
			}
			if _, err := manet.ToNetAddr(a); err != nil {
				return fmt.Errorf("%w: announce address %q is not an IP address with a TCP or UDP port: %w", ErrBadListenAddr, s, err)
			}
			c.announce = append(c.announce, a)
		}
		return nil
	}
}

// WithInfra applies the preset of a public infrastructure node
// (bootstrap, relay, mailbox): connection manager water marks
// InfraConnLow/InfraConnHigh, resource limits for thousands of
// connections, and the relay service with InfraRelayReservations if it
// runs. Explicit options given after it override its water marks.
func WithInfra() Option {
	return func(c *config) error {
		c.infra = true
		c.public = true
		c.connLow, c.connHigh = InfraConnLow, InfraConnHigh
		return nil
	}
}

// WithConnsPerAddr lets n connections come from one IPv4 address (or
// IPv6 /56; 8n from a /48) instead of libp2p's 8. A mailbox node needs
// more: each user connects from a fresh identity per sync round, push
// batch and filter, and many users share one address behind a carrier
// NAT; its protocol keeps its own limits per address.
func WithConnsPerAddr(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("%w: %d connections per address", ErrBadConfig, n)
		}
		c.connsPerAddr = n
		return nil
	}
}

// WithProtocolLimit caps the streams of one protocol: total over all
// peers and per peer, each way. Every Sotto protocol has one; services
// built on the host add theirs (the mailbox protocol).
func WithProtocolLimit(proto string, total, perPeer int) Option {
	return func(c *config) error {
		if total <= 0 || perPeer <= 0 || perPeer > total {
			return fmt.Errorf("%w: protocol %s limits total=%d per peer=%d", ErrBadConfig, proto, total, perPeer)
		}
		if c.protoLimits == nil {
			c.protoLimits = make(map[string][2]int)
		}
		c.protoLimits[proto] = [2]int{total, perPeer}
		return nil
	}
}

// natOptions are the libp2p options of NAT traversal: AutoNAT (v1 service
// and client, v2), the relay client with AutoRelay, hole punching, port
// mapping, and the relay service on a relay node.
func natOptions(cfg *config, ref *hostRef) []libp2p.Option {
	opts := []libp2p.Option{
		libp2p.EnableNATService(),
		libp2p.EnableAutoNATv2(),
		libp2p.EnableRelay(),
		libp2p.EnableHolePunching(),
		libp2p.NATPortMap(),
		// Private and loopback addresses stay out of identify and signed
		// peer records: they mean nothing across the internet and tell
		// strangers the layout of a home network.
		libp2p.NonPublicAddrPublishing(false),
	}
	if cfg.public {
		opts = append(opts, libp2p.ForceReachabilityPublic())
	} else {
		opts = append(opts, libp2p.EnableAutoRelayWithPeerSource(ref.relayCandidates,
			autorelay.WithNumRelays(relaysWanted),
			autorelay.WithMaxCandidates(relayCandidates),
			autorelay.WithMinCandidates(1),
			autorelay.WithBootDelay(relayBootDelay),
			autorelay.WithBackoff(relayBackoff),
			autorelay.WithMinInterval(relayMinInterval),
		))
	}
	if cfg.relay != nil {
		r := cfg.relay.resources()
		if cfg.infra && cfg.relay.Reservations == DefaultRelayReservations {
			r.MaxReservations = InfraRelayReservations
		}
		ropts := []relayv2.Option{relayv2.WithResources(r)}
		if cfg.registerer != nil {
			ropts = append(ropts, relayv2.WithMetricsTracer(relayv2.NewMetricsTracer(relayv2.WithRegisterer(cfg.registerer))))
		}
		opts = append(opts, libp2p.EnableRelayService(ropts...))
	}
	return opts
}

// startRelayFinder tells the host, at start, that its reachability is
// unknown. AutoRelay looks for relays on a reachability event of private
// or unknown, and AutoNAT emits one only once it reaches a verdict: when
// its first round of probes ends without one (too few peers had
// identified, or dial-backs over TCP alone did not finish), the next round
// is 90 s later, and a node behind NAT sat without a relay all that time.
// A node behind NAT looks for relays from the start; AutoRelay stops when
// AutoNAT finds the node public.
func startRelayFinder(h host.Host, logger *slog.Logger) {
	em, err := h.EventBus().Emitter(new(event.EvtLocalReachabilityChanged), eventbus.Stateful)
	if err != nil {
		logger.Warn("relay search waits for AutoNAT", "err", err)
		return
	}
	defer em.Close()
	if err := em.Emit(event.EvtLocalReachabilityChanged{Reachability: network.ReachabilityUnknown}); err != nil {
		logger.Warn("relay search waits for AutoNAT", "err", err)
	}
}

// announceFactory adds the announced addresses to what the host
// advertises.
func announceFactory(announce []ma.Multiaddr) func([]ma.Multiaddr) []ma.Multiaddr {
	return func(addrs []ma.Multiaddr) []ma.Multiaddr {
		out := slices.Clone(addrs)
		for _, a := range announce {
			if !slices.ContainsFunc(out, a.Equal) {
				out = append(out, a)
			}
		}
		return out
	}
}

// dhtOptions are the DHT's options for the node's reachability.
func dhtOptions(cfg *config) []dht.Option {
	switch {
	case !cfg.nat:
		// Everyone dials everyone: loopback, a LAN. AutoNAT would never
		// reach a verdict here.
		return []dht.Option{dht.Mode(dht.ModeServer)}
	case cfg.public:
		return []dht.Option{dht.Mode(dht.ModeServer),
			dht.AddressFilter(PublicAddrs),
			dht.QueryFilter(dht.PublicQueryFilter),
			dht.RoutingTableFilter(dht.PublicRoutingTableFilter)}
	default:
		return []dht.Option{dht.Mode(dht.ModeAuto),
			dht.AddressFilter(PublicAddrs),
			dht.QueryFilter(dht.PublicQueryFilter),
			dht.RoutingTableFilter(dht.PublicRoutingTableFilter)}
	}
}

// PublicAddrs keeps the addresses worth telling a stranger about: public
// IP addresses and relayed addresses through a public relay. Loopback,
// private, link-local and unspecified addresses are dropped.
func PublicAddrs(in []ma.Multiaddr) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range in {
		if IsRelayed(a) {
			relay, _ := ma.SplitFunc(a, func(c ma.Component) bool { return c.Code() == ma.P_CIRCUIT })
			if manet.IsPublicAddr(relay) {
				out = append(out, a)
			}
			continue
		}
		if manet.IsPublicAddr(a) {
			out = append(out, a)
		}
	}
	return out
}

// IsRelayed reports whether a is a relayed (p2p-circuit) address.
func IsRelayed(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// hostRef lets options made before the libp2p host exists (AutoRelay's
// peer source) reach the Host once it does.
type hostRef struct{ p atomic.Pointer[Host] }

// relayCandidates feeds AutoRelay: configured relays, then bootstrap
// peers, then peers met that offer the relay protocol.
func (r *hostRef) relayCandidates(ctx context.Context, num int) <-chan peer.AddrInfo {
	out := make(chan peer.AddrInfo, num)
	defer close(out)
	n := r.p.Load()
	if n == nil || num <= 0 {
		return out
	}
	seen := map[peer.ID]bool{n.h.ID(): true}
	add := func(ai peer.AddrInfo) bool {
		if seen[ai.ID] || len(out) == num {
			return len(out) < num
		}
		seen[ai.ID] = true
		if len(ai.Addrs) == 0 {
			ai = n.h.Peerstore().PeerInfo(ai.ID)
		}
		if len(ai.Addrs) > 0 {
			out <- ai
		}
		return len(out) < num
	}
	for _, ai := range n.cfg.relays {
		if !add(ai) {
			return out
		}
	}
	for _, ai := range n.cfg.bootstrap {
		if !add(ai) {
			return out
		}
	}
	ps := n.h.Peerstore()
	for _, p := range ps.PeersWithAddrs() {
		if seen[p] {
			continue
		}
		if ok, err := ps.SupportsProtocols(p, relayHopProtocol); err == nil && len(ok) > 0 {
			if !add(peer.AddrInfo{ID: p}) {
				return out
			}
		}
	}
	return out
}

// relayHopProtocol is circuit relay v2's reservation and connect protocol:
// a peer that speaks it offers to relay.
const relayHopProtocol = "/libp2p/circuit/relay/0.2.0/hop"

// reachWatch follows AutoNAT's verdict.
type reachWatch struct {
	mu    sync.Mutex
	state network.Reachability
}

func (n *Host) watchReachability() error {
	if n.cfg.public {
		n.reach.set(network.ReachabilityPublic)
	}
	sub, err := n.h.EventBus().Subscribe(new(event.EvtLocalReachabilityChanged))
	if err != nil {
		return fmt.Errorf("p2p: reachability events: %w", err)
	}
	ok := n.goFunc(func() {
		defer sub.Close()
		for {
			select {
			case <-n.ctx.Done():
				return
			case e, ok := <-sub.Out():
				if !ok {
					return
				}
				r := e.(event.EvtLocalReachabilityChanged).Reachability
				n.reach.set(r)
				n.cfg.logger.Info("reachability", "state", reachName(r))
			}
		}
	})
	if !ok {
		sub.Close()
		return ErrClosed
	}
	return nil
}

func (w *reachWatch) set(r network.Reachability) {
	w.mu.Lock()
	w.state = r
	w.mu.Unlock()
}

func (w *reachWatch) get() network.Reachability {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

func reachName(r network.Reachability) string {
	switch r {
	case network.ReachabilityPublic:
		return ReachPublic
	case network.ReachabilityPrivate:
		return ReachPrivate
	}
	return ReachUnknown
}

// Reachability is what the node knows of its own reachability.
type Reachability struct {
	State   string   // ReachPublic, ReachPrivate or ReachUnknown
	Relays  []string // peers holding a reservation for this node
	DHTMode string   // "server" or "client"
}

// Reachability reports the node's reachability, its relays and its DHT
// mode.
func (n *Host) Reachability() Reachability {
	r := Reachability{State: reachName(n.reach.get()), DHTMode: "client"}
	if n.dht.Mode() == dht.ModeServer {
		r.DHTMode = "server"
	}
	for _, a := range n.h.Addrs() {
		if !IsRelayed(a) {
			continue
		}
		if id, err := a.ValueForProtocol(ma.P_P2P); err == nil && !slices.Contains(r.Relays, id) {
			r.Relays = append(r.Relays, id)
		}
	}
	return r
}

// Connection is one open connection.
type Connection struct {
	Peer     peer.ID
	Addr     ma.Multiaddr // the remote address
	Relayed  bool         // through a relay (limited)
	Outbound bool
	Opened   time.Time
}

// Connections lists the open connections, the direct ones of a peer
// before its relayed ones.
func (n *Host) Connections() []Connection {
	conns := n.h.Network().Conns()
	out := make([]Connection, 0, len(conns))
	for _, c := range conns {
		st := c.Stat()
		out = append(out, Connection{
			Peer:     c.RemotePeer(),
			Addr:     c.RemoteMultiaddr(),
			Relayed:  st.Limited || IsRelayed(c.RemoteMultiaddr()),
			Outbound: st.Direction == network.DirOutbound,
			Opened:   st.Opened,
		})
	}
	slices.SortStableFunc(out, func(a, b Connection) int {
		if a.Peer != b.Peer {
			if a.Peer < b.Peer {
				return -1
			}
			return 1
		}
		if a.Relayed == b.Relayed {
			return 0
		}
		if a.Relayed {
			return 1
		}
		return -1
	})
	return out
}

// HasDirect reports whether a direct (not relayed) connection to p is open.
func (n *Host) HasDirect(p peer.ID) bool {
	for _, c := range n.h.Network().ConnsToPeer(p) {
		if !c.Stat().Limited && !IsRelayed(c.RemoteMultiaddr()) {
			return true
		}
	}
	return false
}

// defaultListenAddrs are DefaultListenAddrs on DefaultPort, or on a
// kernel-chosen port where DefaultPort is taken.
func defaultListenAddrs() []ma.Multiaddr {
	tcp, udp := strconv.Itoa(DefaultPort), strconv.Itoa(DefaultPort)
	if !portFree("tcp", DefaultPort) {
		tcp = "0"
	}
	if !portFree("udp", DefaultPort) {
		udp = "0"
	}
	return []ma.Multiaddr{
		ma.StringCast("/ip4/0.0.0.0/tcp/" + tcp),
		ma.StringCast("/ip4/0.0.0.0/udp/" + udp + "/quic-v1"),
		ma.StringCast("/ip6/::/tcp/" + tcp),
		ma.StringCast("/ip6/::/udp/" + udp + "/quic-v1"),
	}
}

// portFree reports whether port can be bound on all IPv4 interfaces.
func portFree(network string, port int) bool {
	addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(port))
	if network == "udp" {
		c, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ErrNoDirectPath: no connection to the peer could be made, directly or
// through a relay; the message must take another path (mailboxes).
var ErrNoDirectPath = errors.New("p2p: the peer cannot be reached now, directly or through a relay")
