package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// bundleTimeout bounds a bundle lookup.
const bundleTimeout = p2p.BundleTimeout

// maintenanceInterval is how often the node re-indexes tags, prunes old
// ones and checks its bundle.
const maintenanceInterval = time.Hour

// ErrNoBundle is returned when a contact's prekey bundle cannot be found
// (the contact's device is unreachable and the DHT holds no record).
var ErrNoBundle = errors.New("node: the contact's prekey bundle is not reachable yet; the message stays queued and is retried")

// newBundle generates a new bundle with fresh prekeys, stores their
// private halves (earlier ones stay until they expire) and the bundle.
func newBundle(tx *store.Tx, cfg *Config, acct *keys.AccountPrivate, cert keys.DeviceCertificate, now time.Time) (*keys.Bundle, error) {
	seq, err := tx.NextBundleSeq()
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		b, sec, err := keys.GeneratePrekeys(cfg.Rand, acct, cert, now, seq, cfg.OneTimePrekeys, DefaultBundleValidity)
		if err != nil {
			return nil, err
		}
		clash := false
		put := func(kind store.PrekeyKind, id keys.PrekeyID, secret []byte) error {
			if _, err := tx.GetPrekey(kind, uint32(id)); err == nil {
				clash = true
				return nil
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return tx.PutPrekey(kind, uint32(id), secret)
		}
		// Check every ID first so that a clash writes nothing.
		for _, chk := range []struct {
			kind store.PrekeyKind
			id   keys.PrekeyID
		}{{store.PrekeySignedDH, b.SignedPrekey.ID}, {store.PrekeyLastResort, b.LastResortKEM.ID}} {
			if _, err := tx.GetPrekey(chk.kind, uint32(chk.id)); err == nil {
				clash = true
			}
		}
		for _, p := range b.OneTimeDH {
			if _, err := tx.GetPrekey(store.PrekeyOneTimeDH, uint32(p.ID)); err == nil {
				clash = true
			}
		}
		for _, p := range b.OneTimeKEM {
			if _, err := tx.GetPrekey(store.PrekeyOneTimeKEM, uint32(p.ID)); err == nil {
				clash = true
			}
		}
		if clash {
			if attempt > 8 {
				return nil, fmt.Errorf("node: could not choose fresh prekey IDs")
			}
			continue
		}
		if k, ok := sec.SignedPrekey(b.SignedPrekey.ID); ok {
			if err := put(store.PrekeySignedDH, b.SignedPrekey.ID, k.Bytes()); err != nil {
				return nil, err
			}
		}
		if k, ok := sec.KEMPrekey(b.LastResortKEM.ID); ok {
			if err := put(store.PrekeyLastResort, b.LastResortKEM.ID, k.Seed()); err != nil {
				return nil, err
			}
		}
		for _, p := range b.OneTimeDH {
			if k, ok := sec.OneTimePrekey(p.ID); ok {
				if err := put(store.PrekeyOneTimeDH, p.ID, k.Bytes()); err != nil {
					return nil, err
				}
			}
		}
		for _, p := range b.OneTimeKEM {
			if k, ok := sec.KEMPrekey(p.ID); ok {
				if err := put(store.PrekeyOneTimeKEM, p.ID, k.Seed()); err != nil {
					return nil, err
				}
			}
		}
		if raw, err := tx.GetSetting(settingBundle); err == nil {
			if old, err := keys.ParseBundle(raw); err == nil {
				if err := retire(tx, old); err != nil {
					return nil, err
				}
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		if err := tx.PutSetting(settingBundle, b.Marshal()); err != nil {
			return nil, err
		}
		return b, nil
	}
}

// currentBundle returns the stored bundle, replacing it first when it is
// close to expiry or has run low on one-time prekeys.
func (n *Node) currentBundle(now time.Time) ([]byte, error) {
	var out []byte
	err := n.db.Update(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingBundle)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		fresh := false
		if err == nil {
			if bd, err := keys.ParseBundle(b); err == nil && bd.Expires.Sub(now) > DefaultBundleValidity/4 {
				// What the bundle still offers (dropUsedPrekeys takes out
				// what first messages used), not what is held: prekeys of
				// earlier bundles are held until they expire. A bundle made
				// less than minBundleRenewal ago stays, even with none left
				// (a flood of first messages does not make bundles without
				// end).
				low := min(MinOneTimePrekeys, n.cfg.OneTimePrekeys)
				made := bd.Expires.Add(-DefaultBundleValidity)
				fresh = len(bd.OneTimeDH) >= low && len(bd.OneTimeKEM) >= low || now.Sub(made) < minBundleRenewal
			}
		}
		if fresh {
			out = b
			return nil
		}
		bd, err := newBundle(tx, &n.cfg, n.me.Account, n.me.Device, now)
		if err != nil {
			return err
		}
		out = bd.Marshal()
		return nil
	})
	return out, err
}

// dropUsedPrekeys re-signs the stored bundle, under a new sequence number,
// without the one-time prekeys that are no longer held (a first message
// used them), so that the bundle served and published next offers only
// prekeys that can still be used: an initiator that picked a used one
// would be rejected. It reports whether the bundle changed; the caller
// publishes it after the commit (kickPublish).
func (n *Node) dropUsedPrekeys(tx *store.Tx) (bool, error) {
	b, err := tx.GetSetting(settingBundle)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	bd, err := keys.ParseBundle(b)
	if err != nil {
		return false, nil // currentBundle replaces it
	}
	held := func(kind store.PrekeyKind, id keys.PrekeyID) (bool, error) {
		_, err := tx.GetPrekey(kind, uint32(id))
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}
	var dh []keys.OneTimePrekey
	for _, p := range bd.OneTimeDH {
		ok, err := held(store.PrekeyOneTimeDH, p.ID)
		if err != nil {
			return false, err
		}
		if ok {
			dh = append(dh, p)
		}
	}
	var kem []keys.SignedKEMPrekey
	for _, p := range bd.OneTimeKEM {
		ok, err := held(store.PrekeyOneTimeKEM, p.ID)
		if err != nil {
			return false, err
		}
		if ok {
			kem = append(kem, p)
		}
	}
	if len(dh) == len(bd.OneTimeDH) && len(kem) == len(bd.OneTimeKEM) {
		return false, nil
	}
	seq, err := tx.NextBundleSeq()
	if err != nil {
		return false, err
	}
	bd.Seq, bd.OneTimeDH, bd.OneTimeKEM = seq, dh, kem
	bd.Sign(n.me.Account)
	return true, tx.PutSetting(settingBundle, bd.Marshal())
}

// kickPublish has the bundle published again soon; kicks that come while
// a publication runs are served by one more.
func (n *Node) kickPublish() {
	select {
	case n.publishKick <- struct{}{}:
	default:
	}
}

// publishBundle puts the current bundle into the DHT (the host republishes
// it on its own schedule afterwards) and reports why that failed.
func (n *Node) publishBundle(ctx context.Context) error {
	h := n.Host()
	if h == nil {
		return nil // closing: nothing to retry
	}
	b, err := n.currentBundle(n.now())
	if err != nil {
		n.cfg.Logger.Error("prekey bundle", "err", err)
		return err
	}
	acct := n.account()
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := h.PutBundle(pctx, acct[:], b); err != nil && !errors.Is(err, p2p.ErrStaleBundle) {
		n.cfg.Logger.Info("bundle not published to the DHT yet (it is still served directly)", "err", err)
		return err
	}
	return nil
}

// publication is how the bundle's publication went, for Status.
type publication struct {
	mu  sync.Mutex
	at  time.Time // the last publication that worked
	err error     // why the last attempt failed; nil if it worked
}

func (p *publication) record(at time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.at = at
	}
	p.err = err
}

func (p *publication) get() (time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.at, p.err
}

// Retries of a bundle publication that failed (no DHT peers yet, say):
// the wait starts at minPublishRetry and doubles up to maxPublishRetry.
const (
	minPublishRetry = 2 * time.Second
	maxPublishRetry = 10 * time.Minute
	// minPublishGap spaces publications of a changed bundle.
	minPublishGap = 5 * time.Second
)

// publishLoop publishes the bundle at start, on every kickPublish, and
// again after a failure, with backoff. It is the body of a goroutine
// counted in n.wg.
func (n *Node) publishLoop() {
	retry := minPublishRetry
	var last time.Time
	n.kickLoop(n.publishKick, func() (time.Duration, bool) {
		// Kicks come with first messages: publish at most every
		// minPublishGap, the latest bundle then.
		if since := time.Since(last); since < minPublishGap {
			return minPublishGap - since, true
		}
		last = time.Now()
		err := n.publishBundle(n.ctx)
		n.published.record(n.now(), err)
		if err == nil {
			retry = minPublishRetry
			return 0, false
		}
		d := retry
		retry = min(2*retry, maxPublishRetry)
		return d, true
	})
}

// fetchBundle finds the contact's current bundle: straight from its device
// when reachable, else from the DHT. It checks that the bundle verifies
// and belongs to the contact's account.
func (n *Node) fetchBundle(ctx context.Context, c store.Contact) (*keys.Bundle, error) {
	h := n.Host()
	if h == nil {
		return nil, ErrNotRunning
	}
	now := n.now()
	check := func(raw []byte) (*keys.Bundle, error) {
		b, err := keys.ParseBundle(raw)
		if err != nil {
			return nil, err
		}
		if err := b.Verify(now); err != nil {
			return nil, err
		}
		if b.Account != keys.AccountPublic(c.Account) {
			return nil, &identityChangedError{bundle: b}
		}
		return b, nil
	}
	var errs []error
	if pid, err := peer.Decode(c.PeerID); err == nil {
		n.addAddrs(pid, c.Addrs)
		raw, err := h.AskBundle(ctx, pid)
		if err == nil {
			// (AskBundle took it only if it names pid's device: what a
			// device serves speaks for that device only.)
			b, err := check(raw)
			if err == nil {
				return b, nil
			}
			var ice *identityChangedError
			if errors.As(err, &ice) {
				// The device itself now speaks for another account: that
				// is authoritative, whatever older record the DHT holds.
				return nil, err
			}
			errs = append(errs, err)
		} else {
			errs = append(errs, err)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, bundleTimeout)
	defer cancel()
	raw, err := h.GetBundle(dctx, c.Account[:])
	if err == nil {
		b, err := check(raw)
		if err == nil {
			return b, nil
		}
		errs = append(errs, err)
	} else {
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w (%w)", ErrNoBundle, errors.Join(errs...))
}

// identityChangedError reports a contact's device publishing a bundle
// under another account key.
type identityChangedError struct{ bundle *keys.Bundle }

func (e *identityChangedError) Error() string {
	return "node: the contact's device now speaks for another account key"
}

func (e *identityChangedError) Unwrap() error { return protocol.ErrIdentityChanged }

// addAddrs tells the peerstore where a contact was last seen.
func (n *Node) addAddrs(p peer.ID, addrs []string) {
	h := n.Host()
	if h == nil {
		return
	}
	var mas []ma.Multiaddr
	for _, s := range addrs {
		if a, err := ma.NewMultiaddr(s); err == nil {
			mas = append(mas, a)
		}
	}
	if len(mas) > 0 {
		h.LibP2P().Peerstore().AddAddrs(p, mas, time.Hour)
	}
}

// refreshTags re-indexes every session's receiving tags for the live
// epochs and drops tags of epochs no envelope can still carry, and the
// replay marks, envelope tokens and records of group messages opened
// whose envelopes expired.
func (n *Node) refreshTags() error {
	now := n.now()
	err := n.db.Update(func(tx *store.Tx) error {
		if err := n.eachSession(tx, func(_ store.Contact, s *protocol.Session) error { return n.putTags(tx, s, now) }); err != nil {
			return err
		}
		if live := protocol.LiveEpochs(now); len(live) > 0 && live[0] > 0 {
			if _, err := tx.PruneTags(live[0]); err != nil {
				return err
			}
		}
		if _, err := tx.PruneInitialSeen(now); err != nil {
			return err
		}
		// Which message a group envelope carried: no copy of it comes
		// after its TTL.
		if _, err := tx.PruneGroupOpened(now.Add(-protocol.MaxTTL-protocol.MaxClockSkew), seenPruneBatch); err != nil {
			return err
		}
		_, err := tx.PruneSeen(now, seenPruneBatch)
		return err
	})
	if err != nil {
		return err
	}
	// Records of envelopes that expired go in batches, a commit each.
	for {
		var pruned int
		err := n.db.Update(func(tx *store.Tx) error {
			var err error
			pruned, err = tx.PruneEnvelopeTokens(now, tokenPruneBatch)
			return err
		})
		if err != nil || pruned < tokenPruneBatch {
			return err
		}
	}
}

// seenPruneBatch bounds the dedup marks one upkeep prunes.
const seenPruneBatch = 100000

// tokenPruneBatch bounds the envelope token records one commit prunes.
const tokenPruneBatch = 10000

// protectContacts keeps connections to contacts from being trimmed.
func (n *Node) protectContacts() {
	h := n.Host()
	if h == nil {
		return
	}
	var cs []store.Contact
	n.db.View(func(tx *store.Tx) error {
		var err error
		cs, err = tx.ListContacts()
		return err
	})
	for _, c := range cs {
		if pid, err := peer.Decode(c.PeerID); err == nil {
			h.Protect(pid, "contact")
			n.addAddrs(pid, c.Addrs)
		}
	}
}

// maintenanceLoop runs the hourly upkeep: tags, replay marks, bundle.
func (n *Node) maintenanceLoop() {
	t := time.NewTicker(maintenanceInterval)
	defer t.Stop()
	for {
		if err := n.pruneSecrets(n.now()); err != nil {
			n.cfg.Logger.Error("deleting old prekeys and sessions", "err", err)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if err := n.refreshTags(); err != nil {
				n.cfg.Logger.Error("tag upkeep", "err", err)
			}
			n.saveGoodPeers()
			n.kickPublish()
			n.storeUpkeep()
		}
	}
}

// connNotifee reacts to a contact's device or a mailbox connecting: a
// contact's queued messages are tried at once, and a sync runs. Other
// connections (DHT traffic from strangers, relays) start no work.
type connNotifee struct{ n *Node }

func (c connNotifee) Listen(network.Network, ma.Multiaddr)       {}
func (c connNotifee) ListenClose(network.Network, ma.Multiaddr)  {}
func (c connNotifee) Disconnected(network.Network, network.Conn) {}
func (c connNotifee) Connected(_ network.Network, conn network.Conn) {
	h := c.n.Host()
	if h == nil {
		return
	}
	p := conn.RemotePeer()
	contact, mbx := h.IsProtected(p, "contact"), h.IsProtected(p, mailbox.ProtectTag)
	if !contact && !mbx {
		return
	}
	// Not here: the swarm calls notifiees while a dial that the sender
	// may be waiting on (holding the peer's slot) completes.
	c.n.spawn(func() { h.Sender().ResetStale(p, conn) })
	if contact {
		c.n.ob.peerUp(p)
		c.n.kickOutbox()
	}
	c.n.kickSync()
}
