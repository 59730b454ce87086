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

// AskBundle asks p for its bundle over BundleProtocol; a bundle whose
// device certificate names another peer is refused.
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
	// A peer serving another device's bundle proves nothing about either.
	if bundle, err := keys.ParseBundle(b); err != nil {
		return nil, fmt.Errorf("p2p: bundle from %s: %w", p, err)
	} else if string(bundle.Device.PeerID) != string(p) {
		return nil, fmt.Errorf("p2p: %s served a bundle for another device", p)
	}
	return b, nil
}

// VerifyBundle is the DHT validator's check of a bundle record
// (WithBundleVerifier): it must parse, verify at now, and be stored under
// its own account's key.
var VerifyBundle = BundleVerifierFunc(func(key string, value []byte, now time.Time) (uint64, error) {
	b, err := keys.ParseBundle(value)
	if err != nil {
		return 0, err
	}
	if err := b.Verify(now); err != nil {
		return 0, err
	}
	if key != BundleKey(b.Account[:]) {
		return 0, fmt.Errorf("p2p: bundle stored under another account's key")
	}
	return b.Seq, nil
})
