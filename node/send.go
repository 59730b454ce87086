package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Outbox timing.
const (
	// minRetry and maxRetry bound the backoff between delivery attempts of
	// an envelope that could not be delivered.
	minRetry = time.Second
	maxRetry = 5 * time.Minute
	// receiptWait is how long after a direct ack the outbox waits for the
	// end-to-end receipt before sending the envelope again (the recipient
	// treats the copy as a duplicate and receipts it again): as long as
	// the message is old, at least receiptWait and at most maxReceiptWait,
	// so the waits roughly double.
	receiptWait    = 30 * time.Second
	maxReceiptWait = 10 * time.Minute
	// deliverTimeout bounds one delivery attempt to one contact.
	deliverTimeout = 30 * time.Second
	// maxOutboxWait is the longest the outbox sleeps without looking;
	// minOutboxWait the shortest, so that entries that are due but cannot
	// progress (their contact's delivery is running) do not spin it.
	maxOutboxWait   = time.Minute
	minOutboxWait   = 50 * time.Millisecond
	depositRetryGap = 2 * time.Second // between deposits that fail while a direct attempt runs
	// PendingRecheck: a session unanswered this long after a mailbox took
	// its envelopes has the peer's bundle checked again (startOver).
	PendingRecheck = 2 * time.Minute
)

// newMessageID makes a 16-byte message ID: the time in Unix nanoseconds
// (8 bytes, big-endian) and 8 random bytes. IDs key the message and outbox
// records in the store; IDs that grow with time keep new records together
// at the end of those B+trees, so a commit rewrites a few pages rather
// than one page per message. Only the recipient sees an ID (it travels
// inside the encryption), and it already sees the sent time.
func newMessageID(r io.Reader, now time.Time) ([16]byte, error) {
	var id [16]byte
	binary.BigEndian.PutUint64(id[:8], uint64(now.UnixNano()))
	if _, err := io.ReadFull(r, id[8:]); err != nil {
		return id, fmt.Errorf("node: message ID: %w", err)
	}
	return id, nil
}

// UnknownContactError is returned for a contact name that does not exist;
// Known lists the names that do.
type UnknownContactError struct {
	Name  string
	Known []string
}

func (e *UnknownContactError) Error() string {
	if len(e.Known) == 0 {
		return fmt.Sprintf("node: no contact named %q (no contacts yet: add one with `sotto contact add NAME INVITE`)", e.Name)
	}
	return fmt.Sprintf("node: no contact named %q (known: %v)", e.Name, e.Known)
}

func (e *UnknownContactError) Unwrap() error { return ErrUnknownContact }

// contactByName finds a contact or returns an UnknownContactError.
func contactByName(tx *store.Tx, name string) (store.Contact, error) {
	c, err := tx.ContactByName(name)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, store.ErrUnknownContact) && !errors.Is(err, store.ErrNotFound) {
		return store.Contact{}, err
	}
	all, lerr := tx.ListContacts()
	if lerr != nil {
		return store.Contact{}, lerr
	}
	ue := &UnknownContactError{Name: name}
	for _, c := range all {
		ue.Known = append(ue.Known, c.Name)
	}
	return store.Contact{}, ue
}

// Send queues a text message for the contact called name. It returns once
// the message is durably in the outbox (sealed already when the session
// exists and the keys are unlocked); delivery happens in the background
// while the node runs, or when it next runs.
func (n *Node) Send(ctx context.Context, name, text string) (Message, error) {
	switch {
	case text == "":
		return Message{}, ErrEmptyMessage
	case len(text) > protocol.MaxBodySize:
		return Message{}, ErrMessageTooLarge
	case !utf8.ValidString(text):
		return Message{}, fmt.Errorf("node: the message is not valid UTF-8 text")
	}
	now := n.now()
	id, err := newMessageID(n.cfg.Rand, now)
	if err != nil {
		return Message{}, err
	}
	var stored store.Message
	// Concurrent sends share one commit (and one fsync) through Batch; a
	// send with no other in flight commits at once rather than waiting
	// for company.
	commit := n.db.Batch
	if n.sending.Add(1) == 1 {
		commit = n.db.Update
	}
	defer n.sending.Add(-1)
	err = commit(func(tx *store.Tx) error {
		c, err := contactByName(tx, name)
		if err != nil {
			return err
		}
		if c.KeyChange != nil {
			return ErrKeyChangePending
		}
		// Answering a request keeps it: it is no longer one that waits.
		if err := unindexRequest(tx, c); err != nil {
			return err
		}
		stored, err = n.queueMessage(tx, c.Account, id, protocol.ContentText, []byte(text), now)
		return err
	})
	if err != nil {
		return Message{}, err
	}
	n.sent.Add(1)
	ev := messageEvent(EventState, stored)
	n.events.publish(ev)
	m := *ev.Message
	// A delivery already running for the contact picks this message up
	// when it finishes (it kicks the outbox then). That can take long (a
	// dial through a relay that forwards nothing runs into its timeout,
	// then the DHT is asked): the outbox looks again when the message is
	// due for the mailboxes, and deposits it while the delivery runs.
	n.ob.mu.Lock()
	busy := n.ob.busy[m.Contact]
	n.ob.mu.Unlock()
	if busy {
		time.AfterFunc(n.cfg.MailboxAfter, n.kickOutbox)
	} else {
		n.kickOutbox()
	}
	return m, nil
}

// queueMessage stores an outgoing message of type typ to acct and puts
// it in the outbox, sealed already when the session exists and the keys
// are unlocked: the path of every message that must arrive exactly once
// and in order (text, and group content).
func (n *Node) queueMessage(tx *store.Tx, acct [32]byte, id [16]byte, typ protocol.ContentType, body []byte, now time.Time) (store.Message, error) {
	stored, err := tx.AppendMessage(store.Message{
		ID: id, Contact: acct, Direction: store.Outgoing, Type: uint8(typ),
		Body: body, SentAt: now, ReceivedAt: now, State: store.StateQueued,
	})
	if err != nil {
		return store.Message{}, err
	}
	e := store.OutboxEntry{
		MsgID: id, Contact: acct, Kind: store.OutboxMessage,
		Created: now, NextAttempt: now, Expires: envelopeExpiry(now, n.cfg.MessageTTL),
	}
	if n.me != nil {
		sess, _, err := n.takeSession(tx, acct)
		if err != nil {
			return store.Message{}, err
		}
		if sess != nil {
			if e.Envelope, e.DeleteToken, err = n.seal(tx, sess, stored, now); err != nil {
				return store.Message{}, err
			}
			if err := n.putSession(tx, sess, now); err != nil {
				return store.Message{}, err
			}
		}
	}
	return stored, tx.PutOutbox(e)
}

// sessionCache keeps decoded sessions with the stored bytes they decode
// from: a session whose stored bytes are unchanged need not be decoded
// again (decoding costs an X25519 scalar multiplication). The store stays
// the only truth: an entry is used only when the bytes stored in the
// current transaction equal the cached ones, so a transaction that failed
// after updating the cache just causes a fresh decode.
//
// A writer takes an entry out (takeSession), changes the session, and
// hands it back with its new bytes (putSession): no copy is made, and
// while it is out nobody else can see it. A reader (loadSession) gets a
// copy.
type sessionCache struct {
	mu sync.Mutex
	m  map[[32]byte]cachedSession
}

type cachedSession struct {
	raw  []byte
	sess *protocol.Session
}

// maxCachedSessions bounds the cache; past it, it starts over.
const maxCachedSessions = 1024

// get returns a copy of the cached session for acct if it decodes from raw.
func (c *sessionCache) get(acct [32]byte, raw []byte) *protocol.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[acct]; ok && bytes.Equal(e.raw, raw) {
		return e.sess.Clone()
	}
	return nil
}

// take removes the entry for acct and returns it.
func (c *sessionCache) take(acct [32]byte) (cachedSession, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[acct]
	if ok {
		delete(c.m, acct)
	}
	return e, ok
}

// put caches sess, decoded from (or encoded as) raw. The cache owns both
// afterwards: the caller must not change them.
func (c *sessionCache) put(acct [32]byte, raw []byte, sess *protocol.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedSessions {
		c.m = make(map[[32]byte]cachedSession)
	}
	c.m[acct] = cachedSession{raw: raw, sess: sess}
}

// loadSession reads the session with acct, nil if there is none. The
// caller gets its own copy, to read (a writer uses takeSession).
func (n *Node) loadSession(tx *store.Tx, acct [32]byte) (*protocol.Session, error) {
	b, err := tx.GetSession(acct)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s := n.sessions.get(acct, b); s != nil {
		return s, nil
	}
	s, err := protocol.UnmarshalSession(b)
	if err != nil {
		return nil, err
	}
	n.sessions.put(acct, b, s.Clone())
	return s, nil
}

// takeSession reads the session with acct for a writer, which changes it
// and saves it with putSession (nil if there is none). raw is the stored
// state it decodes from (a writer that ends up not changing the session
// may return it to the cache with raw).
func (n *Node) takeSession(tx *store.Tx, acct [32]byte) (sess *protocol.Session, raw []byte, err error) {
	if e, ok := n.sessions.take(acct); ok {
		same, err := tx.SessionIs(acct, e.raw)
		if err != nil {
			return nil, nil, err
		}
		if same {
			return e.sess, e.raw, nil
		}
	}
	b, err := tx.GetSession(acct)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	s, err := protocol.UnmarshalSession(b)
	if err != nil {
		return nil, nil, err
	}
	return s, b, nil
}

// seal encrypts a stored outgoing message on sess and returns the
// envelope's bytes. The caller saves sess (putSession) in the transaction
// that stores the envelope.
// envelopeExpiry is when the envelopes of a message written at sentAt
// expire: at the start of the epoch (UTC day) in which sentAt + ttl falls.
// An envelope's expiry so tells only the day its message was written, not
// the second, and a message, its copies sealed again later and every
// receipt written that day carry the same expiry. A message's life is
// therefore between ttl minus a day and ttl.
//
// A TTL shorter than two epochs (embedding programs, tests) is not
// rounded.
func envelopeExpiry(sentAt time.Time, ttl time.Duration) time.Time {
	if ttl < 2*protocol.EpochLength {
		return sentAt.Add(ttl)
	}
	return protocol.EpochStart(protocol.Epoch(sentAt.Add(ttl)))
}

// sealTTL is the TTL that makes an envelope sealed at now expire at
// envelopeExpiry(sentAt, ttl), within what the protocol allows (a message
// so old that less than a minute remains is sealed for a minute: the
// outbox fails it at its expiry).
func sealTTL(sentAt, now time.Time, ttl time.Duration) time.Duration {
	return min(max(envelopeExpiry(sentAt, ttl).Sub(now), time.Minute), protocol.MaxTTL)
}

func (n *Node) seal(tx *store.Tx, sess *protocol.Session, m store.Message, now time.Time) ([]byte, [32]byte, error) {
	env, sealed, err := sess.Seal(n.cfg.Rand, now, protocol.Message{
		Sender: n.account(), ID: m.ID, Sent: m.SentAt, Seq: m.PeerSeq, Type: protocol.ContentType(m.Type), Body: m.Body,
	}, sealTTL(m.SentAt, now, n.cfg.MessageTTL), n.sealOpts(tx, m.Contact)...)
	if err != nil {
		return nil, [32]byte{}, err
	}
	return env.Marshal(), sealed.DeleteToken, nil
}

// outboxState tracks which contacts a delivery is running for, and which
// contacts' devices just connected.
type outboxState struct {
	mu         sync.Mutex
	deposits   map[[32]byte]*sync.Mutex // serialises deposits per contact
	busy       map[[32]byte]bool        // a delivery runs for the contact
	depositing map[[32]byte]bool        // a mailbox deposit runs for the contact
	failed     sync.Map                 // contact -> when its last deposit failed (time.Time), until one succeeds
	rechecked  sync.Map                 // contact -> when its bundle was last checked for startOver (time.Time)
	up         map[peer.ID]bool
}

func (o *outboxState) init() {
	o.busy, o.depositing = make(map[[32]byte]bool), make(map[[32]byte]bool)
	o.up = make(map[peer.ID]bool)
}

// depositLock is the contact's deposit mutex.
func (o *outboxState) depositLock(acct [32]byte) *sync.Mutex {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.deposits == nil {
		o.deposits = make(map[[32]byte]*sync.Mutex)
	}
	m := o.deposits[acct]
	if m == nil {
		m = &sync.Mutex{}
		o.deposits[acct] = m
	}
	return m
}

// allPeers marked up stands for every contact: the network came back.
const allPeers = peer.ID("")

func (o *outboxState) peerUp(p peer.ID) {
	o.mu.Lock()
	o.up[p] = true
	o.mu.Unlock()
}

func (o *outboxState) takeUp() map[peer.ID]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.up) == 0 {
		return nil
	}
	up := o.up
	o.up = make(map[peer.ID]bool)
	return up
}

// outboxLoop delivers what the outbox holds: on a kick, when the next
// entry falls due, and at least every maxOutboxWait. When the clock
// steps back, it first moves back what the clock further ahead scheduled
// (Start does so for a step back across a restart); it records the time
// it has seen every minute for that.
func (n *Node) outboxLoop() {
	last, saved := n.now(), time.Time{}
	n.kickLoop(n.kick, func() (time.Duration, bool) {
		now := n.now()
		if now.Before(last.Add(-clockStepMin)) {
			n.rescheduleFuture(now, last.Sub(now))
		}
		if now.Sub(saved) >= time.Minute || now.Before(saved) {
			n.noteClock(now)
			saved = now
		}
		last = now
		n.outboxPass()
		var next time.Time
		var ok bool
		n.db.View(func(tx *store.Tx) error {
			var err error
			next, ok, err = tx.NextOutboxAttempt()
			return err
		})
		if !ok {
			return maxOutboxWait, true
		}
		return min(max(next.Sub(n.now()), minOutboxWait), maxOutboxWait), true
	})
}

// clockSetting holds the latest time the outbox saw (Unix nanoseconds),
// and clockStepMin is the smallest step back it corrects for.
const (
	clockSetting = "outbox/clock"
	clockStepMin = time.Minute
)

// noteClock records now as the latest time the outbox saw.
func (n *Node) noteClock(now time.Time) {
	if err := n.db.Update(func(tx *store.Tx) error { return tx.PutUint64(clockSetting, uint64(now.UnixNano())) }); err != nil {
		n.cfg.Logger.Warn("recording the time", "err", err)
	}
}

// clockStepBack is how far now is behind the latest time the outbox
// recorded, when that is more than clockStepMin (a restart onto a clock
// that was ahead before); else 0.
func (n *Node) clockStepBack(now time.Time) time.Duration {
	var seen uint64
	var ok bool
	n.db.View(func(tx *store.Tx) error {
		var err error
		seen, ok, err = tx.GetUint64(clockSetting)
		return err
	})
	if d := time.Unix(0, int64(seen)).Sub(now); ok && d > clockStepMin {
		return d
	}
	return 0
}

// rescheduleFuture moves back by step what a clock that ran step ahead
// of this one wrote into the outbox (a restart onto a corrected clock, a
// clock stepped back): a NextAttempt or Created still in the future is
// taken back by step, and not past now (deposits wait for Created +
// MailboxAfter). Entries scheduled far ahead on purpose keep their wait.
// It reads the whole outbox, so it runs only after a step back.
func (n *Node) rescheduleFuture(now time.Time, step time.Duration) {
	err := n.db.Update(func(tx *store.Tx) error {
		es, err := tx.DueOutbox(now.Add(100*365*24*time.Hour), math.MaxInt)
		for _, e := range es {
			if err != nil {
				return err
			}
			changed := false
			if e.NextAttempt.After(now) {
				e.NextAttempt, changed = later(e.NextAttempt.Add(-step), now), true
			}
			if e.Created.After(now) {
				e.Created, changed = later(e.Created.Add(-step), now), true
			}
			if changed {
				err = tx.PutOutbox(e)
			}
		}
		return err
	})
	if err != nil {
		n.cfg.Logger.Error("rescheduling the outbox after a clock step", "err", err)
	}
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// outboxPass starts a delivery for every contact with due entries (or
// whose device just connected) that has none running.
func (n *Node) outboxPass() {
	now := n.now()
	up := n.ob.takeUp()
	var due []store.OutboxEntry
	byPeer := map[[32]byte]bool{}
	err := n.db.View(func(tx *store.Tx) error {
		var err error
		// Enough to find the contacts with due entries: each delivery
		// reads its contact's entries itself.
		due, err = tx.DueOutbox(now, passScan)
		if err != nil || len(up) == 0 {
			return err
		}
		cs, err := tx.ListContacts()
		if err != nil {
			return err
		}
		for _, c := range cs {
			if pid, err := peer.Decode(c.PeerID); err == nil && up[pid] {
				byPeer[c.Account] = true
			} else if up[allPeers] {
				byPeer[c.Account] = false // only what no mailbox holds yet
			}
		}
		if len(byPeer) == 0 {
			return nil
		}
		// Everything queued for a contact that just came back, due or not;
		// after the network came back, what no mailbox holds.
		later, err := tx.DueOutbox(now.Add(100*365*24*time.Hour), MaxOutboxBatch)
		if err != nil {
			return err
		}
		seen := map[[16]byte]bool{}
		for _, e := range due {
			seen[e.MsgID] = true
		}
		for _, e := range later {
			if all, ok := byPeer[e.Contact]; ok && (all || e.Mailboxes == 0) && !seen[e.MsgID] {
				due = append(due, e)
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("reading the outbox", "err", err)
		return
	}
	groups := map[[32]byte][]store.OutboxEntry{}
	var order [][32]byte
	for _, e := range due {
		if _, ok := groups[e.Contact]; !ok {
			order = append(order, e.Contact)
		}
		groups[e.Contact] = append(groups[e.Contact], e)
	}
	for _, acct := range order {
		entries := groups[acct]
		n.ob.mu.Lock()
		if n.ob.busy[acct] {
			// A direct attempt is under way (a dial to a device that is
			// gone can take seconds): mailbox deposits need not wait for it.
			at, ok := n.depositTime(acct, entries)
			f, failed := n.ob.failed.Load(acct) // a failed deposit is tried again after depositRetryGap, not every pass
			start := ok && !at.After(now) && !n.ob.depositing[acct] && (!failed || now.Sub(f.(time.Time)) >= depositRetryGap)
			if start {
				n.ob.depositing[acct] = true
			}
			n.ob.mu.Unlock()
			if start && !n.spawn(func() {
				defer func() {
					n.ob.mu.Lock()
					delete(n.ob.depositing, acct)
					n.ob.mu.Unlock()
				}()
				n.depositFor(acct)
			}) {
				return
			}
			continue
		}
		n.ob.busy[acct] = true
		n.ob.mu.Unlock()
		if !n.spawn(func() {
			defer func() {
				n.ob.mu.Lock()
				delete(n.ob.busy, acct)
				n.ob.mu.Unlock()
				n.kickOutbox() // what fell due meanwhile
			}()
			n.deliver(acct, entries)
		}) {
			return
		}
	}
}

// spawn runs f in a goroutine the node waits for on Close; false if the
// node is closing.
func (n *Node) spawn(f func()) bool {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return false
	}
	n.wg.Go(f)
	n.mu.Unlock()
	return true
}

// depositFor deposits the contact's sealed entries that are due for
// mailboxes, while a direct attempt is still running.
func (n *Node) depositFor(acct [32]byte) {
	ctx, cancel := context.WithTimeout(n.ctx, deliverTimeout)
	defer cancel()
	n.depositDue(ctx, acct, n.now())
}

// receiptRetry is how long to wait for a receipt after a direct ack of a
// message created age ago. (Not by attempts: those count the failed
// attempts while the recipient was away too.)
func receiptRetry(age time.Duration) time.Duration {
	return min(max(age, receiptWait), maxReceiptWait)
}

// minRefusedRetry is the longest first wait before a refused message,
// sealed again, is tried (see refusedRetry).
const minRefusedRetry = 4 * time.Second

// refusedRetry is the wait, with jitter, before a refused message sealed
// again is tried: an eighth of the message's age, at least minRefusedRetry
// and at most maxRetry. A young message (a first message that met a used
// prekey, say) goes again within seconds; a recipient that keeps refusing
// is tried ever less often, and so are the mailboxes that take each new
// envelope's copies.
func refusedRetry(age time.Duration) time.Duration {
	d := min(max(age/8, minRefusedRetry), maxRetry)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// backoff is the wait before attempt number attempts+1, with jitter.
func backoff(attempts int) time.Duration {
	d := minRetry << min(attempts, 16)
	if d > maxRetry || d <= 0 {
		d = maxRetry
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// deliver seals what is unsealed and sends the entries for one contact,
// in order, on one pipelined stream, then records each outcome.
func (n *Node) deliver(acct [32]byte, entries []store.OutboxEntry) {
	ctx, cancel := context.WithTimeout(n.ctx, deliverTimeout)
	defer cancel()
	now := n.now()

	// Everything queued for the contact, oldest first, so that messages
	// leave (directly and to mailboxes) in the order they were written.
	var c store.Contact
	var expired []store.OutboxEntry
	var live []store.OutboxEntry
	err := n.db.View(func(tx *store.Tx) error {
		var err error
		if c, err = tx.GetContact(acct); err != nil {
			return err
		}
		// Not what was acked directly and still waits for its receipt;
		// what waited for it too long is sent again.
		entries, err = pendingFor(tx, acct, now)
		return err
	})
	if errors.Is(err, store.ErrUnknownContact) || errors.Is(err, store.ErrNotFound) {
		// The contact was deleted: what waited for it fails, visibly.
		n.cfg.Logger.Warn("outbox entries for a contact that is gone", "count", len(entries))
		n.failEntries(entries)
		return
	}
	if err != nil {
		n.cfg.Logger.Error("reading the outbox", "err", err)
		return
	}
	for _, e := range entries {
		if !e.Expires.IsZero() && now.After(e.Expires) {
			expired = append(expired, e)
		} else {
			live = append(live, e)
		}
	}
	if len(expired) > 0 {
		n.failEntries(expired)
	}
	if len(live) == 0 || c.KeyChange != nil || n.startOver(ctx, c, live, now) {
		return
	}

	// Seal what was queued unsealed, starting a session if needed.
	if hasUnsealed(live) {
		var bundle *keys.Bundle
		var sess *protocol.Session
		n.db.View(func(tx *store.Tx) error {
			var err error
			sess, err = n.loadSession(tx, acct)
			return err
		})
		if sess == nil {
			bundle, err = n.fetchBundle(ctx, c)
			var ice *identityChangedError
			if errors.As(err, &ice) {
				n.flagKeyChange(acct, ice.bundle)
				return
			}
			if err != nil {
				n.cfg.Logger.Info("no session yet and no bundle", "contact", c.Name, "err", err)
				n.reschedule(live, now)
				return
			}
		}
		// A new session's tags are followed on gossip once it is
		// committed: a refresh that reads the store before the commit
		// misses them, and receipts and replies under them are dropped.
		newSession := false
		err := n.db.Update(func(tx *store.Tx) error {
			newSession = false
			sess, _, err := n.takeSession(tx, acct)
			if err != nil {
				return err
			}
			if sess == nil {
				if bundle == nil {
					return ErrNoBundle
				}
				sess, err = protocol.Initiate(n.cfg.Rand, now, *n.me, bundle, protocol.WithExpectedPeer(keys.AccountPublic(acct)))
				if err != nil {
					return err
				}
				if err := n.putTags(tx, sess, now); err != nil {
					return err
				}
				newSession = true
			}
			for i := range live {
				if live[i].Envelope != nil {
					continue
				}
				m, err := tx.GetMessage(live[i].MsgID)
				if err != nil {
					return err
				}
				env, tok, err := n.seal(tx, sess, m, now)
				if err != nil {
					return err
				}
				live[i].Envelope, live[i].DeleteToken = env, tok
				if err := tx.PutOutbox(live[i]); err != nil {
					return err
				}
			}
			return n.putSession(tx, sess, now)
		})
		if err == nil && newSession {
			n.sessionStarted()
		}
		if err != nil {
			n.cfg.Logger.Error("sealing queued messages", "contact", c.Name, "err", err)
			n.reschedule(live, now)
			return
		}
	}

	pid, err := peer.Decode(c.PeerID)
	if err != nil {
		n.reschedule(live, now)
		return
	}
	h := n.Host()
	if h == nil {
		return
	}
	n.addAddrs(pid, c.Addrs)
	n.awaitRegistration(ctx, acct)
	// What has waited long enough goes to mailboxes too; direct delivery
	// keeps being tried, and the recipient drops whichever copy is second.
	// Meanwhile, what waits longer than MailboxAfter goes to mailboxes too
	// (a dial to a device that is gone can take seconds to fail).
	sent := make(chan struct{})
	deposited := make(chan struct{})
	go func() {
		defer close(deposited)
		at, ok := n.depositTime(acct, live)
		if !ok && len(live) == MaxOutboxBatch && n.mbx.client != nil {
			// live is the head of a longer queue, all of it in mailboxes
			// already: deposit what follows.
			at, ok = now, true
		}
		if ok {
			// at is on the node's clock (Config.Now), as is the wait.
			if d := at.Sub(n.now()); d > 0 {
				t := time.NewTimer(d)
				defer t.Stop()
				select {
				case <-t.C:
				case <-sent:
					// The direct attempt is over. What is still undelivered
					// is deposited by the next attempt, unless the deposit
					// is due sooner than the outbox would look again.
					if at.Sub(n.now()) > minOutboxWait {
						return
					}
					select {
					case <-t.C:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
			n.depositDue(ctx, acct, n.now())
		}
	}()
	envs := make([][]byte, len(live))
	for i := range live {
		envs[i] = live[i].Envelope
	}
	errs := h.Sender().SendBatch(ctx, pid, envs)
	close(sent)
	via := store.ViaDirect
	if h.Sender().Relayed(pid) {
		via = store.ViaRelay
	}
	n.recordResults(acct, live, errs, via)
	<-deposited
}

// passScan bounds the due entries an outbox pass reads to find the
// contacts to deliver to.
const passScan = 64

// pendingHorizon reaches past the longest retry backoff: every entry not
// acked yet is due within it. Entries acked directly and waiting for their
// receipt are left out until they are due.
const pendingHorizon = maxRetry + time.Second

// pendingScan bounds the outbox entries one look at a contact's pending
// ones reads.
const pendingScan = 4 * MaxOutboxBatch

// pendingFor lists the contact's outbox entries that are not waiting for a
// receipt, oldest first (by Created, then ID), so that they leave in the
// order they were written. It reads the outbox's time index up to
// pendingHorizon ahead, not the whole outbox.
func pendingFor(tx *store.Tx, acct [32]byte, now time.Time) ([]store.OutboxEntry, error) {
	due, err := tx.DueOutbox(now.Add(pendingHorizon), pendingScan)
	if err != nil {
		return nil, err
	}
	out := due[:0]
	for _, e := range due {
		if e.Contact != acct {
			continue
		}
		if e.Kind == store.OutboxMessage && e.NextAttempt.After(now) {
			st, err := tx.MessageState(e.MsgID)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
			if err == nil && (st == store.StateSent || st == store.StateDelivered) {
				continue // acked; it waits for its receipt
			}
		}
		out = append(out, e)
	}
	slices.SortFunc(out, store.CompareOutbox)
	if len(out) > MaxOutboxBatch {
		out = out[:MaxOutboxBatch]
	}
	return out, nil
}

// depositTime is when the first entry to acct not yet in mailboxes is
// due for a deposit; false if there is none (or no mailbox client).
func (n *Node) depositTime(acct [32]byte, live []store.OutboxEntry) (time.Time, bool) {
	if n.mbx.client == nil {
		return time.Time{}, false
	}
	for _, e := range live {
		if e.Envelope != nil && e.Mailboxes == 0 {
			wait := n.cfg.MailboxAfter
			if n.stampedWhileConnected(acct, e.Envelope) {
				wait = max(wait, StampedDepositAfter)
			}
			return e.Created.Add(wait), true
		}
	}
	return time.Time{}, false
}

// StampedDepositAfter is how long a session's first messages wait before
// they are also deposited while their recipient is connected. Such a
// deposit goes under the recipient's intro tag with a proof-of-work
// stamp (about 2^20 hashes, a third of a second of a core), and a
// connected recipient usually acks directly well within it: a group's
// start, where every pair of members opens a session at once, minted a
// stamp for nearly every one and starved the direct path that would
// have made them needless.
const StampedDepositAfter = 15 * time.Second

// stampedWhileConnected reports whether env, to acct, is a session's
// first message (its deposit needs a stamp) and acct's device is
// connected now.
func (n *Node) stampedWhileConnected(acct [32]byte, env []byte) bool {
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		return false
	}
	if _, initial := protocol.EnvelopeInitialID(e); !initial {
		return false
	}
	h := n.Host()
	if h == nil {
		return false
	}
	var c store.Contact
	if err := n.db.View(func(tx *store.Tx) (err error) { c, err = tx.GetContact(acct); return err }); err != nil {
		return false
	}
	pid, err := peer.Decode(c.PeerID)
	return err == nil && h.LibP2P().Network().Connectedness(pid) == network.Connected
}

func hasUnsealed(es []store.OutboxEntry) bool {
	for _, e := range es {
		if e.Envelope == nil {
			return true
		}
	}
	return false
}

// sealedOn reports whether env is a first message of sess (it carries
// that session's initial ID).
func sealedOn(env []byte, sess *protocol.Session) bool {
	e, err := protocol.ParseEnvelope(env)
	if err != nil {
		return false
	}
	id, ok := protocol.EnvelopeInitialID(e)
	return ok && id == sess.InitialID()
}

// startOver starts c's session over, as after a rejected first message,
// when it is still pending PendingRecheck after a mailbox took one of its
// envelopes and the peer's bundle no longer lists a one-time prekey it
// named: another initiator took it, and the peer cannot read this session
// (SPEC "A one-time prekey taken twice"). It reports whether it did.
func (n *Node) startOver(ctx context.Context, c store.Contact, live []store.OutboxEntry, now time.Time) bool {
	var sess *protocol.Session
	n.db.View(func(tx *store.Tx) (err error) { sess, err = n.loadSession(tx, c.Account); return err })
	if sess == nil || !sess.PendingInitial() || !slices.ContainsFunc(live, func(e store.OutboxEntry) bool {
		return e.Mailboxes > 0 && now.Sub(e.Created) >= PendingRecheck && sealedOn(e.Envelope, sess)
	}) {
		return false
	}
	if at, ok := n.ob.rechecked.Load(c.Account); ok && now.Sub(at.(time.Time)) < PendingRecheck {
		return false
	}
	n.ob.rechecked.Store(c.Account, now)
	if b, err := n.fetchBundle(ctx, c); err != nil || !sess.PendingPrekeysGone(b) {
		return false
	}
	n.cfg.Logger.Info("a first message went unanswered and its one-time prekeys are gone: starting the session over", "contact", c.Name)
	mu := n.ob.depositLock(c.Account) // no deposit records an envelope cleared here
	mu.Lock()
	defer mu.Unlock()
	withdraw := false
	err := n.db.Update(func(tx *store.Tx) error {
		withdraw = false
		cur, err := n.loadSession(tx, c.Account)
		if err != nil || cur == nil || cur.InitialID() != sess.InitialID() || !cur.PendingInitial() {
			return err // answered or replaced meanwhile: nothing to do
		}
		// Kept for reading a late answer on it, unless another session
		// (the peer's, after a simultaneous initiation) is kept already.
		if alt, err := altSession(tx, c.Account); err != nil || alt == nil {
			if err := putAltSession(tx, c.Account, cur, now); err != nil {
				return err
			}
		}
		es, err := tx.OutboxFor(c.Account, 1<<20)
		if err != nil {
			return err
		}
		for _, e := range es {
			if !sealedOn(e.Envelope, sess) {
				continue
			}
			if w, err := noteWithdrawal(tx, e); err != nil {
				return err
			} else if w {
				withdraw = true
			}
			if e.Kind != store.OutboxMessage { // as when rejected: not sealed again
				if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
					return err
				}
				continue
			}
			e.Envelope, e.Mailboxes, e.DeleteToken = nil, 0, [32]byte{}
			if err := tx.PutOutbox(e); err != nil {
				return err
			}
		}
		// The mailbox announcement went on the dropped session: told again.
		if err := tx.DeleteSetting(toldMailboxesPrefix + base64.RawURLEncoding.EncodeToString(c.Account[:])); err != nil {
			return err
		}
		return tx.DeleteSession(c.Account)
	})
	if err != nil {
		n.cfg.Logger.Error("starting a session over", "err", err)
		return false
	}
	if withdraw {
		n.kickWithdraw()
	}
	n.kickOutbox()
	return true
}

// recordResults commits the outcome of a delivery attempt.
func (n *Node) recordResults(acct [32]byte, live []store.OutboxEntry, errs []error, via store.Via) {
	now := n.now()
	var events []Event
	resetSession, withdraw, again := false, false, false
	// The outcome commits at once, on its own: the next delivery to the
	// contact waits for it. (Shared with concurrent sends through Batch,
	// it made the 100-node simulation lose first-contact messages and
	// receipts in 3 runs of 5; the cause is not understood.)
	err := n.db.Update(func(tx *store.Tx) error {
		events = events[:0]
		resetSession, withdraw, again = false, false, false
		for i, e := range live {
			err := errs[i]
			switch {
			case err == nil:
				if n.debugOn() {
					n.cfg.Logger.Debug("delivered directly", "kind", e.Kind, "id", hex.EncodeToString(e.MsgID[:]))
				}
				if e.Kind == store.OutboxReceipt {
					if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
						return err
					}
					continue
				}
				m, changed, err := tx.SetMessageState(e.MsgID, store.StateSent, store.WithVia(via))
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				if changed {
					events = append(events, messageEvent(EventState, m))
				}
				if m.State == store.StateDelivered {
					if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
						return err
					}
					continue
				}
				e.Attempts = min(e.Attempts+1, 1000)
				e.NextAttempt = now.Add(receiptRetry(now.Sub(e.Created)))
				if err := tx.PutOutbox(e); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
			case errors.Is(err, p2p.ErrRejected):
				if n.debugOn() {
					n.cfg.Logger.Debug("recipient rejected an envelope; sealing it again", "kind", e.Kind, "id", hex.EncodeToString(e.MsgID[:]))
				}
				// The recipient cannot decrypt this envelope: its one-time
				// prekey was taken by another initiator, the session it
				// was sealed on lost a simultaneous initiation, or the
				// recipient lost its state. A message is sealed again on
				// the current session (after a first message, on a fresh
				// one) and retried with backoff until it is delivered or
				// its outbox entry expires (then it is marked failed).
				cur, err := tx.GetOutbox(e.MsgID)
				if errors.Is(err, store.ErrNotFound) {
					continue // delivered meanwhile
				}
				if err != nil {
					return err
				}
				// Its mailbox copies are refused too: withdrawn (unless
				// the entry holds another envelope by now).
				if bytes.Equal(cur.Envelope, e.Envelope) {
					if w, err := noteWithdrawal(tx, cur); err != nil {
						return err
					} else if w {
						withdraw = true
					}
				}
				if e.Kind != store.OutboxMessage {
					if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
						return err
					}
					continue
				}
				sess, serr := n.loadSession(tx, acct)
				if serr != nil {
					return serr
				}
				// A session whose first message is refused starts over,
				// with a fresh bundle; not when the refused envelope was
				// sealed on an earlier session (then the current one may
				// well be accepted already).
				if sess != nil && sess.PendingInitial() && !resetSession && sealedOn(e.Envelope, sess) {
					if err := tx.DeleteSession(acct); err != nil {
						return err
					}
					resetSession = true
				}
				cur.Envelope, cur.DeleteToken = nil, [32]byte{}
				cur.Mailboxes = 0
				// The envelope sealed again is a new one: the attempts that
				// failed while the recipient was away do not delay it (a
				// message held behind it waits only ReorderWait).
				cur.Attempts = min(cur.Attempts+1, 1000)
				cur.NextAttempt = now.Add(refusedRetry(now.Sub(cur.Created)))
				if err := tx.PutOutbox(cur); err != nil {
					return err
				}
			default:
				if n.debugOn() {
					n.cfg.Logger.Debug("delivery failed", "kind", e.Kind, "id", hex.EncodeToString(e.MsgID[:]), "err", err)
				}
				failure := err
				cur, err := tx.GetOutbox(e.MsgID)
				if errors.Is(err, store.ErrNotFound) {
					continue // delivered meanwhile
				}
				if err != nil {
					return err
				}
				switch {
				case errors.Is(failure, p2p.ErrStreamReplaced):
					// This side reset the stream for a newer connection
					// to the peer: not a failed try; sent again at once.
					cur.NextAttempt = now
					again = true
				default:
					cur.Attempts = min(cur.Attempts+1, 1000)
					cur.NextAttempt = now.Add(backoff(cur.Attempts))
					if at := now.Add(p2p.DialFailMemory); errors.Is(failure, p2p.ErrNoDirectPath) && at.After(cur.NextAttempt) {
						cur.NextAttempt = at // no dial is tried before then
					}
				}
				acked := false
				if cur.Kind == store.OutboxMessage {
					st, err := tx.MessageState(cur.MsgID)
					acked = err == nil && (st == store.StateSent || st == store.StateDelivered)
				}
				if cur.Mailboxes == 0 && n.mbx.client != nil && !acked {
					// Come back for the deposit when it falls due, or at once if due and
					// untried; one that failed since the entry was queued keeps the backoff.
					// (Not for a message acked directly that waits for its receipt:
					// depositDue leaves it out, so coming back at once would spin.)
					at := cur.Created.Add(n.cfg.MailboxAfter)
					if f, ok := n.ob.failed.Load(acct); !at.After(now) && (!ok || f.(time.Time).Before(cur.Created)) {
						at = now.Add(10 * time.Millisecond)
					}
					if at.After(now) && at.Before(cur.NextAttempt) {
						cur.NextAttempt = at
					}
				}
				if err := tx.PutOutbox(cur); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("recording delivery results", "err", err)
		return
	}
	n.events.publish(events...)
	if resetSession || again {
		n.kickOutbox()
	}
	if withdraw {
		n.kickWithdraw()
	}
}

// reschedule pushes entries back with backoff after a failed attempt.
func (n *Node) reschedule(es []store.OutboxEntry, now time.Time) {
	err := n.db.Update(func(tx *store.Tx) error {
		for _, e := range es {
			cur, err := tx.GetOutbox(e.MsgID)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			cur.Attempts = min(cur.Attempts+1, 1000)
			cur.NextAttempt = now.Add(backoff(cur.Attempts))
			if err := tx.PutOutbox(cur); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("rescheduling outbox entries", "err", err)
	}
}

// setState moves message id to state (a message that is gone is no
// error) and notes the change for the event feed.
func setState(tx *store.Tx, events *[]Event, id [16]byte, state store.MessageState, opts ...store.StateOption) error {
	m, changed, err := tx.SetMessageState(id, state, opts...)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if changed {
		*events = append(*events, messageEvent(EventState, m))
	}
	return nil
}

// failEntries marks expired entries failed and drops them.
func (n *Node) failEntries(es []store.OutboxEntry) {
	var events []Event
	err := n.db.Update(func(tx *store.Tx) error {
		events = events[:0]
		for _, e := range es {
			if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
				return err
			}
			if e.Kind != store.OutboxMessage {
				continue
			}
			if err := setState(tx, &events, e.MsgID, store.StateFailed); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("expiring outbox entries", "err", err)
		return
	}
	n.events.publish(events...)
}

// flagKeyChange records that a contact's published bundle is signed by
// another account key than the one the user added: nothing is sent to it
// until the user accepts the change.
func (n *Node) flagKeyChange(acct [32]byte, b *keys.Bundle) {
	var ev []Event
	n.db.Update(func(tx *store.Tx) error {
		c, err := tx.GetContact(acct)
		if err != nil || c.KeyChange != nil {
			return err
		}
		c.KeyChange = &store.KeyChange{Account: b.Account, DeviceCert: b.Device.Marshal(), Detected: n.now()}
		if err := tx.PutContact(c); err != nil {
			return err
		}
		ev = append(ev, contactEvent(EventKeyChange, c))
		return nil
	})
	n.events.publish(ev...)
}
