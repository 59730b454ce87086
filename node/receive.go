package node

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// replayMarkLifetime is how long an accepted initial message's ID is kept:
// at least as long as the prekeys it used can be used again. Those are
// deleted once their bundle has expired and no envelope sealed before that
// can still arrive (prekeyRetention), and a bundle expires at most
// DefaultBundleValidity after it was made, which is before the message was
// accepted.
const replayMarkLifetime = DefaultBundleValidity + prekeyRetention

// ingestReq is one inbound envelope waiting for the committer.
type ingestReq struct {
	from peer.ID
	raw  []byte
	via  store.Via
	res  chan error
	// token is the envelope's delete token, set when the envelope was
	// processed now or before (for mailbox clean-up after a sync).
	token    [32]byte
	hasToken bool
}

// directReceiver is the direct protocol's OrderedReceiver: it hands
// envelopes to the committer in frame order; each is acked once durably
// processed.
type directReceiver struct{ n *Node }

func (d directReceiver) Receive(ctx context.Context, from peer.ID, env []byte) error {
	if err := d.n.screen(from, env); err != nil {
		return err
	}
	return d.n.Ingest(ctx, from, env, Via(streamVia(ctx)))
}

// streamVia is how an envelope on a direct stream came: straight, or
// through a relay.
func streamVia(ctx context.Context) store.Via {
	if p2p.CameRelayed(ctx) {
		return store.ViaRelay
	}
	return store.ViaDirect
}

func (d directReceiver) Enqueue(ctx context.Context, from peer.ID, env []byte) <-chan error {
	if err := d.n.screen(from, env); err != nil {
		if errors.Is(err, p2p.ErrMalformedEnvelope) {
			d.n.rejected.Add(1)
		}
		res := make(chan error, 1)
		res <- err
		return res
	}
	return d.n.enqueue(ctx, from, env, streamVia(ctx))
}

// enqueue hands one envelope to the committer; the channel yields its
// result after the commit.
func (n *Node) enqueue(ctx context.Context, from peer.ID, env []byte, via store.Via) <-chan error {
	return n.enqueueReq(ctx, from, env, via).res
}

// enqueueReq hands one envelope to the committer and returns the request,
// whose res yields the result (and whose token is set) after the commit.
func (n *Node) enqueueReq(ctx context.Context, from peer.ID, env []byte, via store.Via) *ingestReq {
	r := &ingestReq{from: from, raw: env, via: via, res: make(chan error, 1)}
	if n.me == nil {
		r.res <- ErrLocked
		return r
	}
	// Once a stream's context ends, nothing more from it may be taken:
	// select alone would pick at random between a free queue slot and a
	// done context, and a later envelope could be committed after an
	// earlier one was refused (its retry would then arrive out of order).
	if err := ctx.Err(); err != nil {
		r.res <- err
		return r
	}
	if n.ctx.Err() != nil {
		r.res <- p2p.ErrClosed
		return r
	}
	select {
	case n.ingest <- r:
	case <-ctx.Done():
		r.res <- ctx.Err()
	case <-n.ctx.Done():
		r.res <- p2p.ErrClosed
	}
	return r
}

// Ingest processes one inbound envelope: it decrypts it, stores the
// message (or applies the receipt), queues the delivery receipt and saves
// the session — all in one commit, shared with other envelopes that arrive
// at the same time — and returns once that commit is durable. It returns
// ErrMalformedEnvelope (wrapped) for envelopes that will never decrypt and
// ErrDuplicateEnvelope for ones already processed.
func (n *Node) Ingest(ctx context.Context, from peer.ID, env []byte, via Via) error {
	res := n.enqueue(ctx, from, env, store.Via(via))
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		select {
		case err := <-res:
			return err
		default:
			return p2p.ErrClosed
		}
	}
}

// ingestLoop is the committer: it takes every envelope waiting (up to
// MaxIngestBatch), processes them in arrival order in one transaction, and
// answers each only after the commit.
func (n *Node) ingestLoop() {
	batch := make([]*ingestReq, 0, MaxIngestBatch)
	for {
		batch = batch[:0]
		select {
		case r := <-n.ingest:
			batch = append(batch, r)
		case <-n.ctx.Done():
			return
		}
	fill:
		for len(batch) < MaxIngestBatch {
			select {
			case r := <-n.ingest:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		n.commitBatch(batch)
	}
}

// commitBatch processes a batch in one transaction. If the transaction
// fails as a whole (disk full, I/O error) every envelope gets a retryable
// error and nothing is acked.
func (n *Node) commitBatch(batch []*ingestReq) {
	now := n.now()
	results := make([]error, len(batch))
	var events []Event
	var groups [][32]byte
	kick, newSession, held, republish := false, false, false, false
	err := n.db.Update(func(tx *store.Tx) error {
		events, groups = events[:0], groups[:0]
		kick, newSession, held, republish = false, false, false, false
		rc := &ingestBatch{}
		for i, r := range batch {
			r.hasToken = false
			out, err := n.process(tx, r, rc, now)
			if err != nil {
				var se storeError
				if errors.As(err, &se) {
					return se.err // abort the whole transaction
				}
				results[i] = err
				continue
			}
			results[i] = nil
			events = append(events, out.events...)
			groups = append(groups, out.groups...)
			newSession = newSession || out.newSession
			held = held || out.held
			republish = republish || out.republish
		}
		queued, err := n.sealReceipts(tx, rc, now)
		if err != nil {
			return err
		}
		if err := rc.flush(n, tx, now); err != nil {
			return err
		}
		if err := n.evictRequests(tx, rc.touched()); err != nil {
			return err
		}
		kick = queued
		return nil
	})
	if err != nil && errors.Is(err, store.ErrCorrupt) && len(batch) > 1 {
		// A damaged record one envelope met fails the transaction of
		// all: each goes again in its own, so that only those that need
		// the record fail (a poisoned batch would otherwise hold back
		// every envelope that came with it, every time).
		n.cfg.Logger.Warn("inbound commit met a damaged record; committing the envelopes one by one", "err", err, "count", len(batch))
		for _, r := range batch {
			n.commitBatch([]*ingestReq{r})
		}
		return
	}
	if err != nil {
		n.cfg.Logger.Error("inbound commit failed; envelopes will be retried by their senders", "err", err, "count", len(batch))
		for i := range results {
			results[i] = fmt.Errorf("%w: %w", errStoreFailed, err)
		}
		events, groups = nil, nil
		kick, held, republish = false, false, false
	}
	for i, r := range batch {
		if err := results[i]; err != nil {
			if errors.Is(err, p2p.ErrMalformedEnvelope) {
				n.rejected.Add(1)
			}
			if n.debugOn() && !errors.Is(err, p2p.ErrDuplicateEnvelope) {
				n.cfg.Logger.Debug("envelope not accepted", "from", r.from, "via", r.via, "err", err)
			}
		}
		r.res <- results[i]
	}
	if len(events) > 0 {
		n.events.publish(events...)
	}
	n.groupsChanged(groups)
	if kick || len(groups) > 0 {
		n.kickOutbox()
	}
	if newSession {
		n.sessionStarted()
	}
	if held {
		n.kickRelease()
	}
	if republish {
		n.kickPublish()
	}
}

// storeError marks an error from the store, which aborts the transaction,
// as opposed to an error about the envelope, which rejects only it.
type storeError struct{ err error }

func (e storeError) Error() string { return e.err.Error() }
func (e storeError) Unwrap() error { return e.err }

func se(err error) error {
	if err == nil {
		return nil
	}
	return storeError{err}
}

// processed is what one envelope changed, reported after the commit.
type processed struct {
	events     []Event
	newSession bool
	held       bool       // a message waits for a missing predecessor
	republish  bool       // the bundle changed (dropUsedPrekeys)
	groups     [][32]byte // groups whose state changed
}

// ingestBatch is the state of one inbound batch: per contact in
// first-seen order, the IDs of the messages received (one receipt message
// per contact acknowledges them all), and the sessions the batch loaded or
// changed.
type ingestBatch struct {
	order []([32]byte)
	ids   map[[32]byte][]byte

	// sessions holds the sessions this batch has loaded or changed; they
	// are written back once, at the end of the batch, in its transaction.
	sessions map[[32]byte]*protocol.Session
	dirty    map[[32]byte]bool
	// raw holds the stored state of each session taken from the store
	// (see takeSession), to return unchanged ones to the cache.
	raw map[[32]byte][]byte
}

// touched lists the accounts whose sessions or receipts this batch holds.
func (rc *ingestBatch) touched() map[[32]byte]bool {
	t := make(map[[32]byte]bool, len(rc.sessions)+len(rc.order))
	for a := range rc.sessions {
		t[a] = true
	}
	for _, a := range rc.order {
		t[a] = true
	}
	return t
}

// session returns the batch's copy of the session with acct (nil if none).
func (rc *ingestBatch) session(n *Node, tx *store.Tx, acct [32]byte) (*protocol.Session, error) {
	if s, ok := rc.sessions[acct]; ok {
		return s, nil
	}
	s, raw, err := n.takeSession(tx, acct)
	if err != nil {
		return nil, err
	}
	if s != nil {
		if rc.sessions == nil {
			rc.sessions = make(map[[32]byte]*protocol.Session)
		}
		if rc.raw == nil {
			rc.raw = make(map[[32]byte][]byte)
		}
		rc.sessions[acct] = s
		rc.raw[acct] = raw
	}
	return s, nil
}

// changed records that sess is the batch's new state of its session.
func (rc *ingestBatch) changed(sess *protocol.Session) {
	acct := [32]byte(sess.Peer())
	if rc.sessions == nil {
		rc.sessions = make(map[[32]byte]*protocol.Session)
	}
	if rc.dirty == nil {
		rc.dirty = make(map[[32]byte]bool)
	}
	rc.sessions[acct] = sess
	rc.dirty[acct] = true
}

// flush writes the changed sessions, and returns the unchanged ones it
// took to the cache.
//
// The batch owns the sessions it took until then: a session stored by
// anyone else meanwhile would be overwritten here, and whatever was
// sealed on that other copy would share chain positions with what the
// batch seals (the recipient drops one as a duplicate or refuses it).
// Code that seals on its own inside the batch's transaction runs after
// release; a session changed behind the batch anyway aborts the commit
// rather than be overwritten.
func (rc *ingestBatch) flush(n *Node, tx *store.Tx, now time.Time) error {
	for acct, sess := range rc.sessions {
		raw, took := rc.raw[acct]
		if !rc.dirty[acct] {
			if took {
				n.sessions.put(acct, raw, sess)
			}
			continue
		}
		if took {
			same, err := tx.SessionIs(acct, raw)
			if err != nil {
				return err
			}
			if !same {
				return fmt.Errorf("node: the session with %x was stored behind the inbound batch that holds it", acct[:8])
			}
		}
		if err := n.putSession(tx, sess, now); err != nil {
			return err
		}
	}
	return nil
}

// release flushes the batch's sessions and gives them up: code that
// takes sessions on its own (group content queues messages to members)
// then seals on the latest state, and the batch takes them again after
// it.
func (rc *ingestBatch) release(n *Node, tx *store.Tx, now time.Time) error {
	if err := rc.flush(n, tx, now); err != nil {
		return err
	}
	rc.sessions, rc.dirty, rc.raw = nil, nil, nil
	return nil
}

func (rc *ingestBatch) add(acct [32]byte, id [16]byte) {
	if rc.ids == nil {
		rc.ids = make(map[[32]byte][]byte)
	}
	if _, ok := rc.ids[acct]; !ok {
		rc.order = append(rc.order, acct)
	}
	rc.ids[acct] = append(rc.ids[acct], id[:]...)
}

// maxReceiptIDs bounds the message IDs one receipt carries.
const maxReceiptIDs = 1024

// sealReceipts seals the batch's receipts on each contact's current
// session and queues them, inside the batch's transaction.
func (n *Node) sealReceipts(tx *store.Tx, rc *ingestBatch, now time.Time) (bool, error) {
	queued := false
	for _, acct := range rc.order {
		ids := rc.ids[acct]
		sess, err := rc.session(n, tx, acct)
		if err != nil {
			return false, err
		}
		if sess == nil {
			continue
		}
		for len(ids) > 0 {
			k := min(len(ids), maxReceiptIDs*protocol.MessageIDSize)
			body := ids[:k]
			ids = ids[k:]
			if err := n.queueControl(tx, sess, acct, protocol.ContentReceipt, body, now); err != nil {
				return false, err
			}
			queued = true
		}
		rc.changed(sess)
	}
	return queued, nil
}

// queueControl seals a message of type typ (a receipt, a mailbox
// announcement) on sess and queues it to acct as a control entry: nobody
// is shown it, and it leaves the outbox once delivered or deposited. The
// caller saves sess.
func (n *Node) queueControl(tx *store.Tx, sess *protocol.Session, acct [32]byte, typ protocol.ContentType, body []byte, now time.Time) error {
	id, err := newMessageID(n.cfg.Rand, now)
	if err != nil {
		return err
	}
	env, sealed, err := sess.Seal(n.cfg.Rand, now, protocol.Message{Sender: n.account(), ID: id, Sent: now, Type: typ, Body: body},
		sealTTL(now, now, n.cfg.MessageTTL), n.sealOpts(tx, acct)...)
	if err != nil {
		return fmt.Errorf("sealing a message of type %d: %w", typ, err)
	}
	return tx.PutOutbox(store.OutboxEntry{
		MsgID: id, Contact: acct, Envelope: env.Marshal(), Kind: store.OutboxReceipt,
		Created: now, NextAttempt: now, Expires: env.Expiry, DeleteToken: sealed.DeleteToken,
	})
}

// keepToken records the delete token of an envelope just processed, and,
// for a message that asks for a receipt, its sender and ID: a copy of the
// envelope that comes back (from a mailbox after a sync, or from its
// sender, who retransmits when no receipt came back) is then found by its
// outer fields, deleted from mailboxes, and answered with a fresh receipt.
func keepToken(tx *store.Tx, r *ingestReq, env *protocol.Envelope, tok [32]byte, msg protocol.Message) error {
	r.token, r.hasToken = tok, true
	v := tok[:]
	if msg.Type != protocol.ContentReceipt && msg.Type != protocol.ContentMailboxes {
		v = slices.Concat(tok[:], msg.Sender[:], msg.ID[:])
	}
	return tx.PutEnvelopeToken(env.Expiry, env.DeleteHash, v)
}

// knownToken looks up what keepToken recorded for an envelope processed
// before, and reports whether there is such a record. When the copy came
// straight from the sender's device, the message it carried is receipted
// again.
func knownToken(tx *store.Tx, r *ingestReq, rc *ingestBatch, env *protocol.Envelope) (bool, error) {
	b, err := tx.EnvelopeToken(env.Expiry, env.DeleteHash)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, se(err)
	}
	if len(b) != 32 && len(b) != 32+32+protocol.MessageIDSize {
		return false, nil
	}
	tok := [32]byte(b[:32])
	if !env.CheckDeleteToken(tok) {
		return false, nil
	}
	r.token, r.hasToken = tok, true
	if len(b) == 32 || !r.via.Stream() {
		return true, nil // a receipt, or a mailbox copy of something already receipted
	}
	acct, id := [32]byte(b[32:64]), [16]byte(b[64:])
	c, err := tx.GetContact(acct)
	if err != nil {
		return true, nil // no longer a contact
	}
	if c.PeerID == r.from.String() {
		rc.add(acct, id)
	}
	return true, nil
}

// malformed wraps a protocol error so the direct protocol acks it as
// rejected (the sender must not retry this envelope).
func malformed(err error) error { return fmt.Errorf("%w: %w", p2p.ErrMalformedEnvelope, err) }

// process handles one envelope inside tx. Errors about the envelope are
// returned plain (the transaction goes on); store errors wrapped in
// storeError.
func (n *Node) process(tx *store.Tx, r *ingestReq, rc *ingestBatch, now time.Time) (processed, error) {
	env, err := protocol.ParseEnvelope(r.raw)
	if err != nil {
		return processed{}, malformed(err)
	}
	if err := env.Validate(now); err != nil {
		return processed{}, malformed(err)
	}

	// 1. A pairwise tag names the session.
	acct, _, err := tx.LookupTag(env.Tag)
	switch {
	case err == nil:
		return n.openOn(tx, r, rc, env, acct, now)
	case !errors.Is(err, store.ErrNotFound):
		return processed{}, se(err)
	}

	// 2. An initial message on a session that already exists.
	if id, ok := protocol.EnvelopeInitialID(env); ok {
		b, err := tx.GetSetting(initialSetting(id))
		switch {
		case err == nil && len(b) == 32:
			return n.openOn(tx, r, rc, env, [32]byte(b), now)
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return processed{}, se(err)
		}
		// 3. A new session.
		return n.accept(tx, r, rc, env, now)
	}
	return processed{}, malformed(errors.New("no session for this envelope's tag"))
}

// initialSetting names the setting that maps an accepted initial message's
// ID to the account whose session it started.
func initialSetting(id [32]byte) string {
	return "initial/" + base64.RawURLEncoding.EncodeToString(id[:])
}

// openOn decrypts env on the session with acct (or its alternate, after a
// simultaneous initiation) and applies the message.
func (n *Node) openOn(tx *store.Tx, r *ingestReq, rc *ingestBatch, env *protocol.Envelope, acct [32]byte, now time.Time) (processed, error) {
	sess, err := rc.session(n, tx, acct)
	if err != nil {
		return processed{}, se(fmt.Errorf("stored session: %w", err))
	}
	var firstErr error
	if sess != nil {
		msg, op, err := sess.Open(now, env)
		if err == nil {
			rc.changed(sess)
			if err := keepToken(tx, r, env, op.DeleteToken, msg); err != nil {
				return processed{}, se(err)
			}
			return n.apply(tx, r, rc, msg, now)
		}
		firstErr = err
	}
	// The alternate session, kept for receiving after simultaneous initiation.
	alt, err := altSession(tx, acct)
	if err != nil {
		return processed{}, se(err)
	}
	if alt != nil {
		msg, op, err := alt.Open(now, env)
		if err == nil {
			if err := putAltSession(tx, acct, alt, now); err != nil {
				return processed{}, se(err)
			}
			if err := keepToken(tx, r, env, op.DeleteToken, msg); err != nil {
				return processed{}, se(err)
			}
			return n.apply(tx, r, rc, msg, now)
		}
		// A duplicate on either session is a duplicate: it is
		// receipted again rather than rejected.
		if firstErr == nil || errors.Is(err, protocol.ErrDuplicate) {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = errors.New("no session with this contact")
	}
	// A copy of an envelope processed before is a duplicate, also when
	// the ratchet no longer knows its chain (it was dropped after many
	// steps): its delete token is on record.
	known, err := knownToken(tx, r, rc, env)
	if err != nil {
		return processed{}, err
	}
	if known || errors.Is(firstErr, protocol.ErrDuplicate) {
		return processed{}, fmt.Errorf("%w: %w", p2p.ErrDuplicateEnvelope, firstErr)
	}
	return processed{}, malformed(firstErr)
}

// altSession reads the session kept for receiving with acct: nil if there
// is none or it no longer decodes.
func altSession(tx *store.Tx, acct [32]byte) (*protocol.Session, error) {
	b, err := tx.GetAltSession(acct)
	if err != nil || b == nil {
		return nil, err
	}
	s, err := protocol.UnmarshalSession(b)
	if err != nil {
		return nil, nil
	}
	return s, nil
}

// putAltSession stores alt as the session kept for receiving with acct.
// It never becomes the session to send on again: a message on it does not
// tell whether the peer still holds it (the late first message of a
// simultaneous initiation) or sent it before it lost its state (and now
// sends on the session it started afresh). Sending on the newer session
// is right in both cases, since the peer keeps the other for receiving.
//
// The time it was last stored goes with it: an alternate session that
// still holds this node's signed prekey is dropped once no envelope for it
// can still be on its way (pruneSecrets).
func putAltSession(tx *store.Tx, acct [32]byte, alt *protocol.Session, now time.Time) error {
	b, err := alt.MarshalBinary()
	if err != nil {
		return err
	}
	return tx.PutAltSession(acct, b, now)
}

// accept runs the responder's side of PQXDH for a first message.
func (n *Node) accept(tx *store.Tx, r *ingestReq, rc *ingestBatch, env *protocol.Envelope, now time.Time) (processed, error) {
	src := &prekeySource{tx: tx}
	sess, msg, acc, err := protocol.Accept(now, *n.me, src, env, protocol.WithIntroSecret(n.introSecret))
	if src.err != nil {
		return processed{}, se(src.err)
	}
	if err != nil {
		if errors.Is(err, protocol.ErrReplay) {
			if _, err := knownToken(tx, r, rc, env); err != nil {
				return processed{}, err
			}
			return processed{}, fmt.Errorf("%w: %w", p2p.ErrDuplicateEnvelope, err)
		}
		return processed{}, malformed(err)
	}
	var out processed
	peerAcct := sess.Peer()
	contact, err := tx.GetContact(peerAcct)
	switch {
	case errors.Is(err, store.ErrUnknownContact) || errors.Is(err, store.ErrNotFound):
		// An account that is not a contact: within the day's budget only.
		// (Accept wrote nothing: refused here, the envelope changes
		// nothing and can come again.)
		if full, err := n.newSessionsFull(tx, now); err != nil {
			return processed{}, se(err)
		} else if full {
			return processed{}, ErrTooManyFirstContacts
		}
		if err := countNewSession(tx, now); err != nil {
			return processed{}, se(err)
		}
		// The device certificate's peer ID is the new account's own claim.
		// It proves a device moved to a new account only when that device
		// sent the message itself: over a direct stream whose Noise-
		// authenticated remote peer is the certificate's peer ID.
		cert := sess.PeerDevice()
		proven := r.via.Stream() && r.from != "" && string(cert.PeerID) == string(r.from)
		c, evs, err := n.newRequest(tx, cert, proven, now)
		if err != nil {
			return processed{}, se(err)
		}
		// A request that a contact's key change names waits for the
		// user's decision: never dropped for others.
		flagged := slices.ContainsFunc(evs, func(e Event) bool { return e.Type == EventKeyChange })
		if !flagged {
			if err := tx.PutSetting(requestSetting(c), nil); err != nil {
				return processed{}, se(err)
			}
		}
		out.events = append(out.events, evs...)
	case err != nil:
		return processed{}, se(err)
	default:
		// A known contact: take the device certificate the session proves.
		cert := sess.PeerDevice()
		if pid, err := peer.IDFromBytes(cert.PeerID); err == nil && pid.String() != contact.PeerID {
			contact.PeerID = pid.String()
			contact.DeviceCert = cert.Marshal()
			contact.Addrs = nil
			if err := tx.PutContact(contact); err != nil {
				return processed{}, se(err)
			}
		}
	}

	// Consume what the initial message used, in this same commit.
	if acc.ConsumedOneTimeDH != nil {
		if _, err := tx.ConsumePrekey(store.PrekeyOneTimeDH, uint32(*acc.ConsumedOneTimeDH)); err != nil {
			return processed{}, se(err)
		}
	}
	if acc.ConsumedKEM != nil {
		if _, err := tx.ConsumePrekey(store.PrekeyOneTimeKEM, uint32(*acc.ConsumedKEM)); err != nil {
			return processed{}, se(err)
		}
	}
	if acc.ConsumedOneTimeDH != nil || acc.ConsumedKEM != nil {
		changed, err := n.dropUsedPrekeys(tx)
		if err != nil {
			return processed{}, se(err)
		}
		out.republish = changed
	}
	if _, err := tx.MarkInitialSeen(acc.InitialID, now.Add(replayMarkLifetime)); err != nil {
		return processed{}, se(err)
	}
	if err := tx.PutSetting(initialSetting(acc.InitialID), peerAcct[:]); err != nil {
		return processed{}, se(err)
	}

	// A session already there is kept for receiving: the peer may still
	// send on it. Simultaneous initiation (this side's first message not
	// yet answered): both sides send on the session PreferSession picks.
	// Otherwise the new session is the one to send on: the peer may have
	// lost the old one. If the new one is instead a late first message of
	// a simultaneous initiation, the peer goes on sending on the preferred
	// session, which this side reads as its alternate, and reads this
	// side's messages on its own alternate.
	keep := sess
	if oldSess, err := rc.session(n, tx, peerAcct); err == nil && oldSess != nil {
		if oldSess.Initiator() && oldSess.PendingInitial() {
			keep = protocol.PreferSession(oldSess, sess)
		} else if err := markSessionReset(tx, peerAcct, msg.Sent); err != nil {
			return processed{}, se(err)
		}
		other := sess
		if keep == sess {
			other = oldSess
		}
		if err := putAltSession(tx, peerAcct, other, now); err != nil {
			return processed{}, se(err)
		}
		if err := n.putTags(tx, other, now); err != nil {
			return processed{}, se(err)
		}
	} else if err != nil {
		return processed{}, se(err)
	}
	rc.changed(keep)
	if err := n.putTags(tx, keep, now); err != nil {
		return processed{}, se(err)
	}
	if keep != sess {
		if err := n.putTags(tx, sess, now); err != nil {
			return processed{}, se(err)
		}
	}
	if err := keepToken(tx, r, env, acc.DeleteToken, msg); err != nil {
		return processed{}, se(err)
	}
	res, err := n.apply(tx, r, rc, msg, now)
	res.events = append(out.events, res.events...)
	res.newSession = true
	res.republish = out.republish
	return res, err
}

// sessionResetPrefix + base64url(account) marks a contact whose device
// started a new session in place of one that worked: the next message
// shown from it carries the mark (store.Message.SessionReset).
const sessionResetPrefix = "session-reset/"

// markSessionReset marks acct's next shown message as the first after a
// session reset when the new session's first message was sent after the
// latest message shown from acct (among its last 64 messages). Sent
// before it, it is the late first message of a simultaneous initiation,
// not a device that started over; with nothing shown from acct, there
// is nothing the reset breaks off from (and only receipts may have
// answered a simultaneous initiation).
func markSessionReset(tx *store.Tx, acct [32]byte, sent time.Time) error {
	last, err := tx.LastSeq(&acct)
	if err != nil {
		return err
	}
	ms, err := tx.ListMessages(&acct, last-min(last, 64), 64)
	if err != nil {
		return err
	}
	for _, m := range slices.Backward(ms) {
		if m.Direction != store.Incoming {
			continue
		}
		if !sent.After(m.SentAt) {
			return nil
		}
		return tx.PutSetting(sessionResetPrefix+base64.RawURLEncoding.EncodeToString(acct[:]), []byte{1})
	}
	return nil
}

// newRequest creates a contact for an account that wrote first: a message
// request, never dropped. If the sender proved that its device is a known
// contact's device (proven: the device itself sent the message), that
// contact is flagged as changed too; the user decides. An unproven claim
// to a contact's device is an ordinary request from a new account.
func (n *Node) newRequest(tx *store.Tx, cert keys.DeviceCertificate, proven bool, now time.Time) (store.Contact, []Event, error) {
	var events []Event
	pid, _ := peer.IDFromBytes(cert.PeerID)
	var all []store.Contact
	if proven { // rare: a device moving to a new account
		var err error
		// Every contact: a damaged one fails this first message (its
		// sender tries again) rather than be passed over unflagged.
		if all, err = tx.ListEveryContact(); err != nil {
			return store.Contact{}, nil, err
		}
	}
	for _, c := range all {
		if c.PeerID == pid.String() && c.Account != cert.Account && !c.IsRequest {
			c.KeyChange = &store.KeyChange{Account: cert.Account, DeviceCert: cert.Marshal(), Detected: now}
			if err := tx.PutContact(c); err != nil {
				return store.Contact{}, nil, err
			}
			events = append(events, contactEvent(EventKeyChange, c))
		}
	}
	base := "request-" + cert.Account.Fingerprint()[len("sotto1"):][:8]
	name := base
	for i := 2; ; i++ {
		_, err := tx.ContactByName(name)
		if errors.Is(err, store.ErrUnknownContact) || errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			return store.Contact{}, nil, err
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
	c := store.Contact{
		Name: name, Account: cert.Account, DeviceCert: cert.Marshal(), PeerID: pid.String(),
		IsRequest: true, Added: now,
	}
	if err := tx.AddContact(c); err != nil {
		return store.Contact{}, nil, err
	}
	events = append(events, contactEvent(EventContactRequest, c))
	return c, events, nil
}

// apply stores a decrypted message (or applies a receipt) and notes the
// receipt to send for it.
func (n *Node) apply(tx *store.Tx, r *ingestReq, rc *ingestBatch, msg protocol.Message, now time.Time) (processed, error) {
	var out processed
	peerAcct := [32]byte(msg.Sender)
	if msg.Type == protocol.ContentReceipt {
		body := msg.Body
		for len(body) >= protocol.MessageIDSize {
			id := [16]byte(body[:protocol.MessageIDSize])
			body = body[protocol.MessageIDSize:]
			// A receipt naming a message that is not ours to this
			// peer changes nothing.
			m2, changed, err := tx.ConfirmDelivery(peerAcct, id)
			if err != nil {
				return processed{}, se(err)
			}
			if changed {
				out.events = append(out.events, messageEvent(EventState, m2))
			}
		}
		return out, nil
	}
	if msg.Type == protocol.ContentMailboxes {
		// Not shown and not receipted: the contact's mailboxes.
		return out, se(mailbox.PutContactMailboxes(tx, peerAcct, msg.Sent, msg.Body))
	}

	// The first message shown after the contact's session reset says so
	// (group content is not shown in the conversation).
	resetKey := sessionResetPrefix + base64.RawURLEncoding.EncodeToString(peerAcct[:])
	reset := false
	if !group.IsContent(uint8(msg.Type)) {
		_, err := tx.GetSetting(resetKey)
		reset = err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return processed{}, se(err)
		}
	}
	shown, err := tx.ReceiveMessage(store.Message{
		ID: msg.ID, Contact: peerAcct, Direction: store.Incoming, Type: uint8(msg.Type),
		Body: msg.Body, SentAt: msg.Sent, ReceivedAt: now, State: store.StateReceived, Via: r.via,
		PeerSeq: msg.Seq, SessionReset: reset,
	})
	if err == nil && reset {
		if err := tx.DeleteSetting(resetKey); err != nil {
			return processed{}, se(err)
		}
	}
	if n.debugOn() {
		n.cfg.Logger.Debug("message received", "id", hex.EncodeToString(msg.ID[:]), "seq", msg.Seq, "via", r.via, "shown", len(shown), "err", err)
	}
	switch {
	case err == nil:
		n.received.Add(1) // if the commit fails, the sender's retry counts it again
		out.held = len(shown) == 0
		for i := range shown {
			out.events = append(out.events, messageEvent(EventMessage, shown[i]))
		}
		if slices.ContainsFunc(shown, func(m store.Message) bool { return group.IsContent(m.Type) }) {
			// Group content may queue messages to any member.
			if err := rc.release(n, tx, now); err != nil {
				return processed{}, se(err)
			}
			if out.groups, err = n.groupsShown(tx, shown, now); err != nil {
				return processed{}, se(err)
			}
		}
	case errors.Is(err, store.ErrDuplicate):
		// Shown once already; the sender still needs its receipt.
	default:
		return processed{}, se(err)
	}
	rc.add(peerAcct, msg.ID)
	return out, nil
}

// putSession saves a session and caches it: the caller must not change
// sess afterwards. (Its receiving tags are indexed when it is
// created, with putTags, and refreshed hourly for new epochs.)
func (n *Node) putSession(tx *store.Tx, sess *protocol.Session, now time.Time) error {
	b, err := sess.MarshalBinary()
	if err != nil {
		return err
	}
	acct := [32]byte(sess.Peer())
	if err := tx.PutSession(acct, b); err != nil {
		return err
	}
	n.sessions.put(acct, b, sess)
	return nil
}

// putTags indexes the session's receiving tags (versions 1 and 2) for the live epochs. Tags
// already present are rewritten in place; the cost is a few small puts.
func (n *Node) putTags(tx *store.Tx, sess *protocol.Session, now time.Time) error {
	peerAcct := [32]byte(sess.Peer())
	for _, e := range protocol.LiveEpochs(now) {
		for _, t := range []protocol.Tag{sess.RecvTag(e), sess.RecvTag2(e)} {
			if a, _, err := tx.LookupTag(t); err == nil && a == peerAcct {
				continue
			}
			if err := tx.PutTag(t, peerAcct, e); err != nil {
				return err
			}
		}
	}
	return nil
}

// prekeySource gives protocol.Accept the node's private prekeys from the
// store, inside the transaction.
type prekeySource struct {
	tx  *store.Tx
	err error // the first store error; Accept's result is then void
}

func (p *prekeySource) get(kind store.PrekeyKind, id keys.PrekeyID) ([]byte, bool) {
	b, err := p.tx.GetPrekey(kind, uint32(id))
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) && p.err == nil {
			p.err = err
		}
		return nil, false
	}
	return b, true
}

func (p *prekeySource) dh(kind store.PrekeyKind, id keys.PrekeyID) (*keys.DHPrivate, bool) {
	b, ok := p.get(kind, id)
	if !ok {
		return nil, false
	}
	k, err := keys.NewDHPrivate(b)
	if err != nil {
		return nil, false
	}
	return k, true
}

func (p *prekeySource) SignedPrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	return p.dh(store.PrekeySignedDH, id)
}

func (p *prekeySource) OneTimePrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	return p.dh(store.PrekeyOneTimeDH, id)
}

func (p *prekeySource) KEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	if k, ok := p.OneTimeKEMPrekey(id); ok {
		return k, true
	}
	return p.LastResortKEMPrekey(id)
}

// OneTimeKEMPrekey and LastResortKEMPrekey tell protocol.Accept which
// kind of KEM prekey an initial message used (protocol.KEMPrekeyKinds).
func (p *prekeySource) OneTimeKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	return p.kem(store.PrekeyOneTimeKEM, id)
}

func (p *prekeySource) LastResortKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	return p.kem(store.PrekeyLastResort, id)
}

func (p *prekeySource) kem(kind store.PrekeyKind, id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	b, ok := p.get(kind, id)
	if !ok {
		return nil, false
	}
	k, err := keys.NewKEMPrivate(b)
	if err != nil {
		return nil, false
	}
	return k, true
}

var _ protocol.KEMPrekeyKinds = (*prekeySource)(nil)

func (p *prekeySource) SeenInitial(id [32]byte) bool {
	seen, err := p.tx.InitialSeen(id)
	if err != nil && p.err == nil {
		p.err = err
	}
	return seen
}
