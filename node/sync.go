package node

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Mailbox use by the messenger.
const (
	// DefaultMailboxAfter is how long a message may go undelivered directly
	// before it is also deposited in mailboxes.
	DefaultMailboxAfter = 2 * time.Second
	// DefaultMailboxCopies is how many mailboxes a deposit aims for.
	DefaultMailboxCopies = 3
	// syncInterval is how often the node syncs its mailboxes with nothing
	// else prompting it.
	syncInterval = 5 * time.Minute
	// minSyncGap spaces syncs that new connections trigger.
	minSyncGap = 2 * time.Second
	// syncPage is the page size of a mailbox query.
	syncPage = 1000
	// syncTimeout bounds one sync of one mailbox.
	syncTimeout = 2 * time.Minute
)

// mailboxes is the node's mailbox machinery: the gossip router, the
// client, the service (when serving), and the live subscription.
type mailboxes struct {
	gossip *Gossip
	client *MailboxClient
	svc    *MailboxService

	mu     sync.Mutex
	tags   map[protocol.Tag]bool // tags this node receives under
	shards []uint16              // shards subscribed for live delivery
	unsub  func()

	syncKick chan struct{}
	resub    chan struct{}
}

// startMailboxes sets up gossip, the mailbox client and (when configured)
// the mailbox service, and starts the sync loop.
func (n *Node) startMailboxes(h *Host) error {
	g, err := NewGossip(h, WithGossipClock(n.cfg.Now))
	if err != nil {
		return err
	}
	m := &n.mbx
	m.gossip = g
	m.syncKick = make(chan struct{}, 1)
	m.resub = make(chan struct{}, 1)
	if n.cfg.Mailbox {
		if m.svc, err = NewMailboxService(h, g, n.db, WithMailboxClock(n.cfg.Now), WithMailboxLogger(n.cfg.Logger)); err != nil {
			return err
		}
	}
	if m.client, err = NewMailboxClient(h, g, WithStaticMailboxes(n.cfg.Mailboxes...)); err != nil {
		return err
	}
	if err := n.resubscribe(); err != nil {
		n.cfg.Logger.Warn("live mailbox subscription", "err", err)
	}
	n.wg.Add(1)
	go n.syncLoop()
	return nil
}

// closeMailboxes stops the client, the service and gossip (before the host).
func (n *Node) closeMailboxes() {
	m := &n.mbx
	m.mu.Lock()
	unsub := m.unsub
	m.unsub = nil
	m.mu.Unlock()
	if unsub != nil {
		unsub()
	}
	if m.client != nil {
		m.client.Close()
	}
	if m.svc != nil {
		m.svc.Close()
	}
	if m.gossip != nil {
		m.gossip.Close()
	}
}

// myTags lists every tag an envelope for this node can carry in the live
// epochs: its intro tags and each session's (and spare session's)
// receiving tags.
func (n *Node) myTags() (map[protocol.Tag]bool, error) {
	now := n.now()
	live := protocol.LiveEpochs(now)
	tags := make(map[protocol.Tag]bool)
	for _, e := range live {
		tags[protocol.IntroTag(n.Account(), e)] = true
	}
	err := n.db.View(func(tx *store.Tx) error {
		cs, err := tx.ListContacts()
		if err != nil {
			return err
		}
		for _, c := range cs {
			for _, get := range []func() ([]byte, error){
				func() ([]byte, error) { return tx.GetSession(c.Account) },
				func() ([]byte, error) { return tx.GetSetting(altSessionSetting(c.Account)) },
			} {
				b, err := get()
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				s, err := protocol.UnmarshalSession(b)
				if err != nil {
					continue
				}
				for _, e := range live {
					tags[s.RecvTag(e)] = true
				}
			}
		}
		return nil
	})
	return tags, err
}

// resubscribe follows the shards of this node's current tags on gossip so
// that deposits for it arrive at once.
func (n *Node) resubscribe() error {
	m := &n.mbx
	if m.client == nil {
		return nil
	}
	tags, err := n.myTags()
	if err != nil {
		return err
	}
	set := map[uint16]bool{}
	for t := range tags {
		set[t.Shard(MailboxShards)] = true
	}
	var shards []uint16
	for s := range set {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	m.mu.Lock()
	m.tags = tags
	same := slices.Equal(shards, m.shards)
	m.mu.Unlock()
	if same {
		return nil
	}
	unsub, err := m.client.SubscribeShards(shards, n.liveEnvelope)
	if err != nil {
		return err
	}
	m.mu.Lock()
	old := m.unsub
	m.unsub, m.shards = unsub, shards
	m.mu.Unlock()
	if old != nil {
		old()
	}
	return nil
}

// kickResubscribe asks the sync loop to recompute the subscription (after
// a new session).
func (n *Node) kickResubscribe() {
	select {
	case n.mbx.resub <- struct{}{}:
	default:
	}
}

// liveEnvelope takes a deposit seen on gossip: one under this node's tags
// is processed at once, like a direct delivery.
func (n *Node) liveEnvelope(env []byte) {
	env = slices.Clone(env)
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		return
	}
	n.mbx.mu.Lock()
	mine := n.mbx.tags[e.Tag]
	n.mbx.mu.Unlock()
	if !mine {
		return
	}
	r := n.enqueueReq(n.ctx, "", env, store.ViaMailbox)
	select {
	case <-r.res:
	case <-n.ctx.Done():
	}
}

// kickSync asks for a mailbox sync soon.
func (n *Node) kickSync() {
	if n.mbx.syncKick == nil {
		return
	}
	select {
	case n.mbx.syncKick <- struct{}{}:
	default:
	}
}

// syncLoop syncs mailboxes at start, when prompted (a new connection, a
// kick) and every syncInterval.
func (n *Node) syncLoop() {
	defer n.wg.Done()
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	var last time.Time
	first := true
	for {
		if !first {
			select {
			case <-n.ctx.Done():
				return
			case <-n.mbx.resub:
				if err := n.resubscribe(); err != nil {
					n.cfg.Logger.Warn("live mailbox subscription", "err", err)
				}
				continue
			case <-n.mbx.syncKick:
				if d := time.Since(last); d < minSyncGap {
					select {
					case <-time.After(minSyncGap - d):
					case <-n.ctx.Done():
						return
					}
				}
			case <-t.C:
			}
		}
		first = false
		last = time.Now()
		if err := n.resubscribe(); err != nil {
			n.cfg.Logger.Warn("live mailbox subscription", "err", err)
		}
		if _, err := n.SyncMailboxes(n.ctx); err != nil && n.ctx.Err() == nil {
			n.cfg.Logger.Info("mailbox sync", "err", err)
		}
	}
}

// SyncMailboxes fetches from every reachable mailbox the envelopes under
// this node's tags, processes each page durably, then deletes what it
// processed by revealing the envelopes' delete tokens. It reports progress
// on the event feed and returns how many envelopes it fetched.
func (n *Node) SyncMailboxes(ctx context.Context) (int, error) {
	m := &n.mbx
	if m.client == nil {
		return 0, ErrNotRunning
	}
	tags, err := n.myTags()
	if err != nil {
		return 0, err
	}
	var tagList []protocol.Tag
	shardSet := map[uint16]bool{}
	for t := range tags {
		tagList = append(tagList, t)
		shardSet[t.Shard(MailboxShards)] = true
	}
	slices.SortFunc(tagList, func(a, b protocol.Tag) int { return slices.Compare(a[:], b[:]) })
	seen := map[peer.ID]bool{}
	var mbxs []peer.ID
	for s := range shardSet {
		for _, p := range m.client.Mailboxes(ctx, s) {
			if !seen[p] {
				seen[p] = true
				mbxs = append(mbxs, p)
			}
		}
	}
	if len(mbxs) == 0 {
		return 0, nil
	}
	total := 0
	var errs []error
	for i, p := range mbxs {
		got, err := n.syncOne(ctx, p, tagList)
		total += got
		if err != nil {
			errs = append(errs, err)
		}
		n.events.publish(Event{Type: EventSyncProgress, Sync: &SyncProgress{Mailboxes: i + 1, Envelopes: total, Done: i == len(mbxs)-1}})
	}
	return total, errors.Join(errs...)
}

// syncOne syncs one mailbox.
func (n *Node) syncOne(ctx context.Context, p peer.ID, tags []protocol.Tag) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	total := 0
	for len(tags) > 0 {
		chunk := tags[:min(len(tags), MaxMailboxQueryTags)]
		tags = tags[len(chunk):]
		var cursor []byte
		for {
			res, err := n.mbx.client.Query(ctx, p, chunk, cursor, syncPage)
			if err != nil {
				return total, err
			}
			total += len(res.Envelopes)
			reqs := make([]*ingestReq, 0, len(res.Envelopes))
			for _, env := range res.Envelopes {
				reqs = append(reqs, n.enqueueReq(ctx, p, env, store.ViaMailbox))
			}
			dels := map[protocol.Tag][][32]byte{}
			for _, r := range reqs {
				var err error
				select {
				case err = <-r.res:
				case <-ctx.Done():
					return total, ctx.Err()
				}
				if (err == nil || errors.Is(err, ErrDuplicateEnvelope)) && r.hasToken {
					e, perr := protocol.ParseEnvelope(r.raw)
					if perr == nil {
						dels[e.Tag] = append(dels[e.Tag], r.token)
					}
				}
			}
			for tag, toks := range dels {
				for len(toks) > 0 {
					k := min(len(toks), MaxMailboxDeleteTokens)
					if _, err := n.mbx.client.Delete(ctx, p, tag, toks[:k]); err != nil && !errors.Is(err, store.ErrNotFound) {
						n.cfg.Logger.Debug("mailbox delete", "mailbox", p, "err", err)
					}
					toks = toks[k:]
				}
			}
			if !res.More || len(res.Envelopes) == 0 {
				break
			}
			cursor = res.Cursor
		}
	}
	return total, nil
}

// depositDue deposits in mailboxes the sealed entries that have waited
// MailboxAfter without a direct delivery, and records where they are.
func (n *Node) depositDue(ctx context.Context, live []store.OutboxEntry, now time.Time) {
	if n.mbx.client == nil {
		return
	}
	var done []store.OutboxEntry
	var counts []int
	for _, e := range live {
		if e.Envelope == nil || e.Mailboxes > 0 || now.Sub(e.Created) < n.cfg.MailboxAfter {
			continue
		}
		env, err := protocol.ParseEnvelope(e.Envelope)
		if err != nil {
			continue
		}
		k, err := n.mbx.client.Deposit(ctx, env, n.cfg.MailboxCopies)
		if err != nil {
			n.cfg.Logger.Info("mailbox deposit", "err", err)
			break // no mailbox now: the next attempt tries again
		}
		done = append(done, e)
		counts = append(counts, k)
	}
	if len(done) == 0 {
		return
	}
	var events []Event
	err := n.db.Update(func(tx *store.Tx) error {
		events = events[:0]
		for i, e := range done {
			cur, err := tx.GetOutbox(e.MsgID)
			if errors.Is(err, store.ErrNotFound) {
				continue // delivered meanwhile
			}
			if err != nil {
				return err
			}
			if cur.Kind == store.OutboxReceipt {
				// A receipt in mailboxes is as good as delivered to us.
				if _, err := tx.DeleteOutbox(cur.MsgID); err != nil {
					return err
				}
				continue
			}
			cur.Mailboxes = counts[i]
			if err := tx.PutOutbox(cur); err != nil {
				return err
			}
			m, changed, err := tx.SetMessageState(cur.MsgID, store.StateStored, store.WithStoredAt(counts[i]))
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if changed {
				mm := m
				events = append(events, Event{Type: EventState, Message: &mm})
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("recording mailbox deposits", "err", err)
		return
	}
	n.events.publish(events...)
}

// MailboxHeld reports what this node holds as a mailbox (nil if it serves
// none).
func (n *Node) mailboxHeld() *MailboxHeld {
	if !n.cfg.Mailbox {
		return nil
	}
	var h MailboxHeld
	n.db.View(func(tx *store.Tx) error {
		var err error
		h.Envelopes, h.Bytes, err = tx.MailboxStats()
		return err
	})
	return &h
}
