package p2p

import (
	"crypto/rand"
	"fmt"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// NewEphemeral returns a client-only libp2p host under a fresh Ed25519
// identity: it listens nowhere, dials over TCP and QUIC with Noise and
// yamux, and runs no relay, NAT service or metrics. A user opens one per
// mailbox sync round or deposit batch, so that a mailbox sees a new peer ID
// each time, unrelated to the device's published one; the caller closes it
// after the round. extra adds libp2p options (a bandwidth reporter, in
// measurements). Mailbox nodes are publicly reachable, so an outbound
// dial from behind a NAT is all it needs.
func NewEphemeral(extra ...libp2p.Option) (host.Host, error) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("p2p: ephemeral identity: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.ChainOptions(extra...),
	)
	if err != nil {
		return nil, fmt.Errorf("p2p: ephemeral host: %w", err)
	}
	return h, nil
}
