package p2p

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	record "github.com/libp2p/go-libp2p-record"
)

// BundleNamespace is the DHT namespace of prekey bundle records: a bundle
// for account key A is stored under "/sotto-bundle/<hex(A)>".
const BundleNamespace = "sotto-bundle"

// Record limits and timings.
const (
	// MaxBundleKeyLen bounds the account key in a record key (bytes).
	MaxBundleKeyLen = 64
	// MaxBundleRecordSize is checked before the verifier runs, so an
	// oversized value costs no parsing.
	MaxBundleRecordSize = 1 << 20
	// republishTimeout bounds one round of republishing.
	republishTimeout = 2 * time.Minute
)

// Record errors.
var (
	ErrBadRecordKey   = errors.New("p2p: bad bundle record key")
	ErrRecordTooLarge = errors.New("p2p: bundle record too large")
	ErrNoVerifier     = errors.New("p2p: no bundle verifier configured")
	ErrNoValidRecord  = errors.New("p2p: no valid bundle record")
	ErrBundleNotFound = errors.New("p2p: bundle not found")
	ErrStaleBundle    = errors.New("p2p: bundle sequence number is not above the one already published")
)

// BundleVerifier checks a bundle record found under key at time now: it
// parses value, checks signatures and expiry and that the bundle belongs to
// the account named by key, and returns the bundle's sequence number. The
// DHT keeps only values it accepts and prefers the highest sequence number.
type BundleVerifier interface {
	Verify(key string, value []byte, now time.Time) (seq uint64, err error)
}

// BundleVerifierFunc adapts a function to BundleVerifier.
type BundleVerifierFunc func(key string, value []byte, now time.Time) (uint64, error)

// Verify calls f.
func (f BundleVerifierFunc) Verify(key string, value []byte, now time.Time) (uint64, error) {
	return f(key, value, now)
}

// BundleKey is the DHT key of account's bundle record.
func BundleKey(account []byte) string {
	return "/" + BundleNamespace + "/" + hex.EncodeToString(account)
}

// parseBundleKey returns the account bytes named by a bundle record key.
func parseBundleKey(key string) ([]byte, error) {
	rest, ok := strings.CutPrefix(key, "/"+BundleNamespace+"/")
	if !ok {
		return nil, fmt.Errorf("%w: wrong namespace", ErrBadRecordKey)
	}
	if len(rest) == 0 || len(rest) > 2*MaxBundleKeyLen || strings.ToLower(rest) != rest {
		return nil, fmt.Errorf("%w: account must be 1..%d bytes in lowercase hex", ErrBadRecordKey, MaxBundleKeyLen)
	}
	acct, err := hex.DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRecordKey, err)
	}
	return acct, nil
}

// bundleValidator is the DHT record validator of the bundle namespace.
type bundleValidator struct {
	v   BundleVerifier
	now func() time.Time
}

func (b bundleValidator) check(key string, value []byte) (uint64, error) {
	if _, err := parseBundleKey(key); err != nil {
		return 0, err
	}
	if len(value) > MaxBundleRecordSize {
		return 0, fmt.Errorf("%w: %d bytes", ErrRecordTooLarge, len(value))
	}
	if b.v == nil {
		return 0, ErrNoVerifier
	}
	seq, err := b.v.Verify(key, value, b.now())
	if err != nil {
		return 0, fmt.Errorf("p2p: bundle record rejected: %w", err)
	}
	return seq, nil
}

// Validate accepts value under key only if the verifier does.
func (b bundleValidator) Validate(key string, value []byte) error {
	_, err := b.check(key, value)
	return err
}

// Select picks the valid value with the highest sequence number; on a tie
// the earliest wins, so a stored record is not replaced by an equal one.
func (b bundleValidator) Select(key string, values [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, v := range values {
		seq, err := b.check(key, v)
		if err != nil {
			continue
		}
		if best < 0 || seq > bestSeq {
			best, bestSeq = i, seq
		}
	}
	if best < 0 {
		return 0, ErrNoValidRecord
	}
	return best, nil
}

// newValidator is the DHT's validator: bundles, and peers' public keys.
// The IPNS namespace is left out: Sotto stores no IPNS records.
func newValidator(v BundleVerifier, now func() time.Time) record.Validator {
	return record.NamespacedValidator{
		BundleNamespace: bundleValidator{v: v, now: now},
		"pk":            record.PublicKeyValidator{},
	}
}

// PutBundle validates value with the configured verifier, stores it in the
// DHT under account's bundle key, and remembers it for republishing until
// Unpublish. A record whose sequence number is not above the one this node
// already publishes is refused with ErrStaleBundle (and the DHT refuses one
// below what it stores).
func (n *Host) PutBundle(ctx context.Context, account, value []byte) error {
	if n.isClosed() {
		return ErrClosed
	}
	key := BundleKey(account)
	v := bundleValidator{v: n.cfg.verifier, now: n.cfg.now}
	if err := v.Validate(key, value); err != nil {
		return err
	}
	n.pubMu.Lock()
	if old, ok := n.published[key]; ok && !bytes.Equal(old, value) {
		if i, err := v.Select(key, [][]byte{old, value}); err == nil && i == 0 {
			n.pubMu.Unlock()
			return ErrStaleBundle
		}
	}
	n.published[key] = append([]byte(nil), value...)
	n.pubMu.Unlock()
	if err := n.dht.PutValue(ctx, key, value); err != nil {
		return fmt.Errorf("p2p: put bundle: %w", err)
	}
	return nil
}

// Unpublish stops republishing account's bundle. Copies already in the DHT
// expire on their own.
func (n *Host) Unpublish(account []byte) {
	n.pubMu.Lock()
	delete(n.published, BundleKey(account))
	n.pubMu.Unlock()
}

// GetBundle fetches account's bundle from the DHT: the valid value with the
// highest sequence number among the peers asked.
func (n *Host) GetBundle(ctx context.Context, account []byte) ([]byte, error) {
	if n.isClosed() {
		return nil, ErrClosed
	}
	v, err := n.dht.GetValue(ctx, BundleKey(account))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundleNotFound, err)
	}
	return v, nil
}

// RepublishNow asks the republisher to put every published bundle again
// without waiting for the next tick (after joining a network, say). It
// does not block.
func (n *Host) RepublishNow() {
	select {
	case n.republish <- struct{}{}:
	default:
	}
}

// Republish puts every published bundle again and returns the errors.
func (n *Host) Republish(ctx context.Context) error {
	n.pubMu.Lock()
	recs := make(map[string][]byte, len(n.published))
	for k, v := range n.published {
		recs[k] = v
	}
	n.pubMu.Unlock()
	var errs []error
	for k, v := range recs {
		if err := n.dht.PutValue(ctx, k, v); err != nil {
			errs = append(errs, fmt.Errorf("p2p: republish %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// republishLoop republishes on every tick and on RepublishNow until Close.
func (n *Host) republishLoop() {
	t := time.NewTicker(n.cfg.republishInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.republish:
		}
		ctx, cancel := context.WithTimeout(n.ctx, republishTimeout)
		if err := n.Republish(ctx); err != nil {
			n.cfg.logger.Warn("bundle republish failed", "err", err)
		}
		cancel()
	}
}
