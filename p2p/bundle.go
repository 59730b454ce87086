package p2p

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/keys"
)

// BundleProtocol serves a device's current prekey bundle to whoever asks:
// the asker writes nothing, the server writes one frame (the bundle, at
// most keys.MaxBundleSize bytes) and closes. Bundles are public; the DHT
// holds the same record. The stream is Noise-authenticated, so a bundle
// read from peer p is what p itself serves.
const BundleProtocol = "/sotto/bundle/1.0.0"

// BundleTimeout bounds a whole bundle exchange.
const BundleTimeout = 10 * time.Second

// ServeBundles answers BundleProtocol with what current returns, until
// Close. An error from current resets the stream.
func (n *Host) ServeBundles(current func() ([]byte, error)) {
	n.h.SetStreamHandler(BundleProtocol, func(s network.Stream) {
		defer s.Close()
		s.SetDeadline(time.Now().Add(BundleTimeout))
		b, err := current()
		if err != nil {
			s.Reset()
			return
		}
		bw := bufio.NewWriter(s)
		if err := WriteFrame(bw, b, keys.MaxBundleSize); err != nil || bw.Flush() != nil {
			s.Reset()
		}
	})
}

// AskBundle asks p for its bundle over BundleProtocol.
func (n *Host) AskBundle(ctx context.Context, p peer.ID) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, BundleTimeout)
	defer cancel()
	s, err := n.h.NewStream(network.WithAllowLimitedConn(ctx, "sotto bundle"), p, BundleProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(BundleTimeout))
	b, err := ReadFrame(bufio.NewReader(s), keys.MaxBundleSize)
	if err != nil {
		s.Reset()
		return nil, fmt.Errorf("p2p: reading bundle from %s: %w", p, err)
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(s, 1)); err != nil {
		s.Reset()
	}
	return b, nil
}
