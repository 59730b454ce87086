package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
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

// errNoVersion2Mailboxes stops a deposit to a contact that announced no
// version 2 mailboxes once version 1 deposits have ended.
var errNoVersion2Mailboxes = errors.New("node: the contact announced no version 2 mailboxes, and version 1 deposits have ended")

// mailboxes is the node's mailbox machinery: the gossip router (which
// only a mailbox node's service joins topics on), the version 1 client,
// the service (when serving), and the version 2 user side, which receives
// live through filters at the node's own mailboxes.
type mailboxes struct {
	gossip   *p2p.Gossip
	client   *mailbox.Client
	svc      *mailbox.Service
	user     *mailbox.User
	syncKick chan struct{}
	v1Over   sync.Map // contacts whose messages wait since version 1 deposits ended, logged once
}

// startMailboxes sets up, on the gossip router, the mailbox client and (when configured)
// the mailbox service, and starts the sync loop.
func (n *Node) startMailboxes(h *p2p.Host) error {
	m := &n.mbx
	g := m.gossip
	var err error
	if n.cfg.Mailbox {
		if m.svc, err = mailbox.NewService(h, g, n.db, append([]mailbox.Option{mailbox.WithClock(n.cfg.Now), mailbox.WithLogger(n.cfg.Logger), mailbox.WithCounters(&n.deposits, &n.served)}, n.cfg.MailboxOptions...)...); err != nil {
			return err
		}
	}
	if m.client, err = mailbox.NewClient(h, g, mailbox.WithStaticMailboxes(n.cfg.Mailboxes...), mailbox.WithClientClock(n.cfg.Now)); err != nil {
		return err
	}
	n.wg.Go(func() { n.mbx.user.Run(n.ctx) })
	n.wg.Go(n.syncLoop)
	return nil
}

// closeMailboxes stops the client, the service and gossip (before the host).
func (n *Node) closeMailboxes() {
	m := &n.mbx
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
func (n *Node) myTags() ([]protocol.Tag, error) {
	live := protocol.LiveEpochs(n.now())
	var tags []protocol.Tag
	for _, e := range live {
		tags = append(tags, protocol.IntroTag(n.account(), e))
	}
	err := n.db.View(func(tx *store.Tx) error {
		return n.eachSession(tx, func(_ store.Contact, s *protocol.Session) error {
			for _, e := range live {
				tags = append(tags, s.RecvTag(e))
			}
			return nil
		})
	})
	return tags, err
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
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	var last time.Time
	first := true
	for {
		if !first {
			select {
			case <-n.ctx.Done():
				return
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
		if _, err := n.SyncMailboxes(n.ctx); err != nil && n.ctx.Err() == nil {
			n.cfg.Logger.Info("mailbox sync", "err", err)
		}
		if _, err := n.mbx.user.Round(n.ctx); err != nil && n.ctx.Err() == nil {
			n.cfg.Logger.Info("mailbox sync (version 2)", "err", err)
		}
		n.announceMailboxes()
	}
}

// maxSyncEnvelopes bounds the envelopes one sync round holds in memory;
// a sync with more goes on in further rounds.
const maxSyncEnvelopes = 50_000

// SyncMailboxes fetches from every reachable mailbox the envelopes under
// this node's tags, processes them durably, then deletes what it processed
// by revealing the envelopes' delete tokens. It reports progress on the
// event feed and returns how many distinct envelopes it processed.
//
// Each mailbox returns envelopes in the order they reached it, and a
// sender deposits in the order it sent; but mailboxes may each hold a
// different part of a conversation. The envelopes from all mailboxes are
// therefore merged into one order consistent with every mailbox's order
// (a topological merge) before they are processed, so messages are shown
// in the order they were sent.
//
// This is the version 1 sync; from protocol.Version1ReadEnds on it does
// nothing (SPEC "Migration from version 1").
func (n *Node) SyncMailboxes(ctx context.Context) (int, error) {
	m := &n.mbx
	if m.client == nil {
		return 0, ErrNotRunning
	}
	n.v1Syncing.Add(1)
	defer n.v1Syncing.Add(-1)
	if !protocol.Version1Reads(n.now()) {
		return 0, nil
	}
	n.syncs.Add(1)
	tags, err := n.myTags()
	if err != nil {
		return 0, err
	}
	asked, done, more, err := m.client.SyncAll(ctx, tags, syncPage, maxSyncEnvelopes, syncTimeout, func(mbxs int, envs [][]byte) ([]*[32]byte, error) {
		n.events.publish(Event{Type: EventSyncProgress, Sync: &SyncProgress{Mailboxes: mbxs}})
		// Processed in that order (the committer groups them into batches).
		pending := make([]*ingestReq, len(envs))
		for i, env := range envs {
			pending[i] = n.enqueueReq(ctx, "", env, store.ViaMailbox)
		}
		toks := make([]*[32]byte, len(envs))
		for i, r := range pending {
			select {
			case <-r.res:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			// r.res was drained: the token is set if it was processed.
			if r.hasToken {
				toks[i] = &r.token
			}
			if (i+1)%1000 == 0 {
				n.events.publish(Event{Type: EventSyncProgress, Sync: &SyncProgress{Mailboxes: mbxs, Envelopes: i + 1}})
			}
		}
		return toks, nil
	})
	if asked > 0 {
		n.cfg.Logger.Debug("mailbox sync", "mailboxes", asked, "envelopes", done, "err", err)
		n.events.publish(Event{Type: EventSyncProgress, Sync: &SyncProgress{Mailboxes: asked, Envelopes: done, Done: true}})
	}
	if more {
		n.kickSync() // more remain
	}
	return done, err
}

// depositDue deposits in mailboxes the sealed entries that have waited
// MailboxAfter without a direct delivery, and records where they are. It
// goes on, batch after batch, until nothing is left to deposit, so a long
// queue to an offline contact does not wait for the next delivery attempt.
//
// Deposits for one contact never run concurrently, and each batch reads
// the outbox afresh under that lock, so envelopes reach the mailboxes in
// the order they were written and each is deposited once.
func (n *Node) depositDue(ctx context.Context, acct [32]byte, now time.Time) {
	if n.mbx.client == nil {
		return
	}
	mu := n.ob.depositLock(acct)
	mu.Lock()
	defer mu.Unlock()
	n.awaitRegistration(ctx, acct)
	for ctx.Err() == nil {
		var todo []store.OutboxEntry
		if err := n.db.View(func(tx *store.Tx) error {
			es, err := tx.UndepositedFor(acct, now.Add(-n.cfg.MailboxAfter), 4*MaxOutboxBatch)
			if err != nil {
				return err
			}
			for _, e := range es {
				if e.Kind == store.OutboxMessage {
					st, err := tx.MessageState(e.MsgID)
					if err == nil && (st == store.StateSent || st == store.StateDelivered) {
						continue // acked directly: no mailbox needed
					}
				}
				if todo = append(todo, e); len(todo) == MaxOutboxBatch {
					break
				}
			}
			return nil
		}); err != nil || len(todo) == 0 {
			return
		}
		done, more := n.depositBatch(ctx, todo)
		if !more || done < len(todo) {
			return
		}
	}
}

// depositBatch deposits entries in order and records the outcome; it
// stops at the first failed deposit or expired entry. It returns how many were deposited
// and false when recording failed.
func (n *Node) depositBatch(ctx context.Context, todo []store.OutboxEntry) (int, bool) {
	now := n.now()
	var done []store.OutboxEntry
	var counts []int
	// A contact that announced version 2 mailboxes gets pushes there.
	var sess *protocol.Session
	var mbxs []peer.AddrInfo
	var intro *[protocol.IntroSecretSize]byte
	n.db.View(func(tx *store.Tx) error {
		if mbxs = mailbox.ContactMailboxes(tx, todo[0].Contact); mbxs != nil {
			sess, _ = n.loadSession(tx, todo[0].Contact)
			intro = mailbox.ContactIntroSecret(tx, todo[0].Contact)
		}
		return nil
	})
	p := mailbox.Pusher{NewHost: n.cfg.EphemeralHost}
	defer p.Close()
	for _, e := range todo {
		if !e.Expires.IsZero() && now.After(e.Expires) {
			break // the delivery loop fails it, visibly
		}
		env, err := protocol.ParseEnvelope(e.Envelope)
		if err != nil {
			// Not a reason to hold back the rest; sent directly, it is
			// rejected and sealed again.
			n.cfg.Logger.Error("an outbox envelope does not parse; not deposited", "err", err)
			continue
		}
		t0 := time.Now()
		var k int
		dep, err := mailbox.DepositFor(ctx, sess, intro, e.Envelope, env.Tag, now)
		v2 := dep != nil
		switch {
		case v2:
			k, err = p.Push(ctx, env.Tag, mbxs, dep)
		case err == nil && !protocol.Version1Deposits(now):
			err = errNoVersion2Mailboxes
			if _, told := n.mbx.v1Over.LoadOrStore(e.Contact, true); !told {
				n.cfg.Logger.Warn("a message waits for direct delivery: the contact announced no version 2 mailboxes and version 1 deposits have ended", "contact", hex.EncodeToString(e.Contact[:8]))
			}
		case err == nil:
			k, err = n.mbx.client.Deposit(ctx, env, n.cfg.MailboxCopies)
		}
		if n.debugOn() {
			n.cfg.Logger.Debug("mailbox deposit", "kind", e.Kind, "v2", v2, "id", hex.EncodeToString(e.MsgID[:]), "copies", k, "took", time.Since(t0), "err", err)
		}
		if err != nil {
			if !errors.Is(err, errNoVersion2Mailboxes) {
				n.cfg.Logger.Info("mailbox deposit", "err", err)
			}
			n.ob.failed.Store(todo[0].Contact, n.now())
			if v2 && intro != nil && staleIntroTag(*intro, env.Tag, now) && refusedFull(err) {
				n.resealStale(e)
			}
			break // no mailbox now: the next attempt tries again, after its backoff
		}
		n.ob.failed.Delete(todo[0].Contact)
		done = append(done, e)
		counts = append(counts, k)
	}
	if len(done) == 0 {
		return 0, true
	}
	var events []Event
	withdraw := false
	err := n.db.Update(func(tx *store.Tx) error {
		events, withdraw = events[:0], false
		for i, e := range done {
			cur, err := tx.GetOutbox(e.MsgID)
			if errors.Is(err, store.ErrNotFound) {
				continue // delivered meanwhile
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(cur.Envelope, e.Envelope) {
				// Refused directly (or sealed again) while the deposit
				// ran: the copy just deposited is withdrawn, and the
				// entry's new envelope is not counted as stored.
				e.Mailboxes = counts[i]
				if w, err := noteWithdrawal(tx, e); err != nil {
					return err
				} else if w {
					withdraw = true
				}
				continue
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
			if err := setState(tx, &events, cur.MsgID, store.StateStored, store.WithStoredAt(counts[i])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("recording mailbox deposits", "err", err)
		return len(done), false
	}
	n.events.publish(events...)
	if withdraw {
		n.kickWithdraw()
	}
	return len(done), true
}

// staleIntroTag reports whether tag is the recipient's intro tag (of its
// intro secret) for an epoch before now's.
func staleIntroTag(secret [protocol.IntroSecretSize]byte, tag protocol.Tag, now time.Time) bool {
	return protocol.IsIntroTag2(secret, tag, now) && tag != protocol.IntroTag2(secret, protocol.Epoch(now))
}

// refusedFull reports a deposit that a mailbox refused as full.
func refusedFull(err error) bool {
	var me *mailbox.Error
	return errors.As(err, &me) && me.Status == mailbox.StatusFull
}

// resealStale has a first message that no mailbox took, refused as full
// under an intro tag of an earlier epoch (a flooded day's), sealed again
// under today's (SPEC "Registration"): its entry's envelope is cleared,
// unless the entry changed meanwhile, and the delivery loop seals it on
// the session, which is still pending.
func (n *Node) resealStale(e store.OutboxEntry) {
	err := n.db.Update(func(tx *store.Tx) error {
		cur, err := tx.GetOutbox(e.MsgID)
		if err != nil || cur.Mailboxes != 0 || !bytes.Equal(cur.Envelope, e.Envelope) {
			return nil // delivered, deposited or sealed again meanwhile
		}
		cur.Envelope, cur.DeleteToken = nil, [32]byte{}
		cur.NextAttempt = n.now()
		return tx.PutOutbox(cur)
	})
	if err != nil {
		n.cfg.Logger.Error("sealing a refused first message again", "err", err)
		return
	}
	n.cfg.Logger.Info("a first message refused under an earlier day's intro tag is sealed again under today's")
	n.kickOutbox()
}

// MailboxHeld reports what this node holds as a mailbox (nil if it serves
// none).
func (n *Node) mailboxHeld() (h *MailboxHeld) {
	if n.cfg.Mailbox {
		h = new(mailbox.Held(n.db))
	}
	return h
}

// HeldEnvelope is one envelope a mailbox node holds, as the mailbox sees
// it.
type HeldEnvelope = mailbox.HeldEnvelope

// MailboxPeek lists up to limit envelopes this node holds as a mailbox,
// oldest first.
func (n *Node) MailboxPeek(limit int) ([]HeldEnvelope, error) { return mailbox.Peek(n.db, limit) }

// SealedEnvelope is the sealed envelope of outgoing message id while it
// waits in the outbox: the bytes that travel, and that mailboxes hold.
// It fails with ErrNotSealed while the message waits for a session.
func (n *Node) SealedEnvelope(id [16]byte) ([]byte, error) {
	var env []byte
	err := n.db.View(func(tx *store.Tx) error {
		e, err := tx.GetOutbox(id)
		env = e.Envelope
		return err
	})
	if err == nil && len(env) == 0 {
		err = ErrNotSealed
	}
	return env, err
}
