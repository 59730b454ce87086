package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// The messenger's side of version 2 mailboxes (protocol/SPEC.md,
// "Mailboxes, version 2"): a mailbox.User receives at the mailboxes of
// Config.MailboxNodes or the DHT; the node gives it the sessions' tags to
// register and takes what it reads, tells every contact of its mailboxes
// inside the ratchet, and pushes to the mailboxes a contact told it of.

// toldMailboxesPrefix + base64url(account) holds the SHA-256 of the
// announcement last queued for the contact.
const toldMailboxesPrefix = "mbx2-told/"

// errStoreFailed marks an envelope the node could not take because its
// store failed: no fault of the envelope.
var errStoreFailed = errors.New("node: store")

// newUser sets up the mailbox.User (Open); Start runs it.
func (n *Node) newUser() (err error) {
	self, _ := peer.Decode(n.ident.PeerID)
	n.mbx.user, err = mailbox.NewUser(mailbox.UserConfig{
		DB: n.db, Static: n.cfg.MailboxNodes, K: n.cfg.MailboxCopies, Self: self, Kick: n.kickSync, Registered: n.announceMailboxes,
		Find:          func(ctx context.Context) []peer.AddrInfo { return mailbox.FindMailboxNodes(ctx, n.Host(), 20) },
		Registrations: n.registrations, Deliver: n.deliver2, NewHost: n.cfg.EphemeralHost, Now: n.cfg.Now, Logger: n.cfg.Logger,
		RegisterWait: n.cfg.RegisterWait,
		Back:         func() { n.ob.peerUp(allPeers); n.kickOutbox(); n.kickSync() },
	})
	return err
}

// sessionStarted registers a new session's tags at once (its peer may
// write under them any moment), then announces the mailboxes to it.
func (n *Node) sessionStarted() { n.mbx.user.RegisterSoon() }

// awaitRegistration holds the envelopes of acct's session until one of
// this device's mailboxes took the session's tags of this epoch (at most
// mailbox.RegisterWait): the peer answers under them, maybe once this
// device is offline (SPEC "Registration").
func (n *Node) awaitRegistration(ctx context.Context, acct [32]byte) {
	var s *protocol.Session
	n.db.View(func(tx *store.Tx) (err error) { s, err = n.loadSession(tx, acct); return err })
	if s != nil && n.mbx.user != nil {
		n.mbx.user.AwaitRegistered(ctx, s.RecvTag2(protocol.Epoch(n.now())))
	}
}

// registrations lists the version 2 pairwise tags of every session's
// incoming messages in the live epochs, and the tags of the device's
// groups.
func (n *Node) registrations(now time.Time) []mailbox.Registration {
	live := protocol.LiveEpochs(now)
	var out []mailbox.Registration
	err := n.db.View(func(tx *store.Tx) error {
		err := n.eachSession(tx, func(_ store.Contact, s *protocol.Session) error {
			for _, e := range live {
				out = append(out, mailbox.Registration{Kind: store.RegPair, Tag: s.RecvTag2(e), Epoch: e})
			}
			return nil
		})
		if err != nil {
			return err
		}
		gs, err := groupRegistrations(tx, now)
		out = append(out, gs...)
		return err
	})
	if err != nil {
		n.cfg.Logger.Warn("listing mailbox registrations", "err", err)
	}
	return out
}

// deliver2 takes an envelope the User read or was pushed and hands it
// the delete token; it tells junk from a failure of its own.
func (n *Node) deliver2(_ peer.ID, env []byte) error {
	if ok, err := n.takeGroupFromMailbox(env); ok {
		return err
	}
	r := n.enqueueReq(n.ctx, "", env, store.ViaMailbox)
	var err error
	select {
	case err = <-r.res:
	case <-n.ctx.Done():
		return p2p.ErrClosed
	}
	if e, perr := protocol.ParseEnvelope(r.raw); r.hasToken && perr == nil {
		n.mbx.user.Taken(e.Tag, r.token)
	}
	switch {
	case err == nil || errors.Is(err, p2p.ErrDuplicateEnvelope):
		return nil
	case errors.Is(err, errStoreFailed), errors.Is(err, p2p.ErrClosed), errors.Is(err, ErrLocked), n.ctx.Err() != nil:
		return err
	}
	return fmt.Errorf("%w: %w", mailbox.ErrJunk, err)
}

// eachSession calls fn with every contact's session, and the spare
// session kept after a simultaneous initiation while it lasts.
func (n *Node) eachSession(tx *store.Tx, fn func(store.Contact, *protocol.Session) error) error {
	cs, err := tx.ListContacts()
	if err != nil {
		return err
	}
	for _, c := range cs {
		// Through the cache: decoding costs an X25519 multiplication.
		s, err := n.loadSession(tx, c.Account)
		if err != nil {
			n.cfg.Logger.Error("stored session does not load", "contact", c.Name, "err", err)
		} else if s != nil {
			if err := fn(c, s); err != nil {
				return err
			}
		}
		alt, err := altSession(tx, c.Account)
		if err != nil {
			return err
		}
		if alt != nil {
			if err := fn(c, alt); err != nil {
				return err
			}
		}
	}
	return nil
}

// announceMailboxes queues, for every contact with a session that has not
// been told the current set, a mailbox announcement (content type 0x03)
// sealed on the session, as a control entry (queueControl).
func (n *Node) announceMailboxes() {
	if n.mbx.user == nil {
		return // not started
	}
	body, err := n.mbx.user.Announcement()
	if len(body) == 0 || n.me == nil {
		if err != nil {
			n.cfg.Logger.Error("encoding the mailbox announcement", "err", err)
		}
		return
	}
	sum := sha256.Sum256(body)
	now := n.now()
	queued := false
	err = n.db.Update(func(tx *store.Tx) error {
		queued = false
		cs, err := tx.ListContacts()
		if err != nil {
			return err
		}
		for _, c := range cs {
			key := toldMailboxesPrefix + base64.RawURLEncoding.EncodeToString(c.Account[:])
			// Not to a stranger's request: only contacts learn where this device receives.
			if b, err := tx.GetSetting(key); c.IsRequest || c.KeyChange != nil || (err == nil && bytes.Equal(b, sum[:])) {
				continue
			}
			// Not before a mailbox takes the session's deposits: told
			// after the round that registers its tags.
			if s, err := n.loadSession(tx, c.Account); err != nil || s == nil || !n.mbx.user.Registered(s.RecvTag2(protocol.Epoch(now))) {
				continue
			}
			sess, _, err := n.takeSession(tx, c.Account)
			if err != nil || sess == nil {
				continue
			}
			if err := n.queueControl(tx, sess, c.Account, protocol.ContentMailboxes, body, now); err != nil {
				return err
			}
			if err := n.putSession(tx, sess, now); err != nil {
				return err
			}
			if err := tx.PutSetting(key, sum[:]); err != nil {
				return err
			}
			queued = true
		}
		return nil
	})
	if err != nil {
		n.cfg.Logger.Error("queueing mailbox announcements", "err", err)
	}
	if queued {
		n.kickOutbox()
	}
}

// sealOpts are the Seal options for messages to acct: version 2 tags
// once it named version 2 mailboxes (in its invite or an announcement),
// and for a first message its invite's intro secret. (Without mailboxes a
// first message keeps the version 1 intro tag, which the version 1 sync
// reads: it never names the version 2 one.)
func (n *Node) sealOpts(tx *store.Tx, acct [32]byte) []protocol.SealOption {
	if mailbox.ContactMailboxes(tx, acct) == nil {
		return nil
	}
	if q := mailbox.ContactIntroSecret(tx, acct); q != nil {
		return []protocol.SealOption{protocol.WithVersion2Tags(), protocol.WithPeerIntroSecret(*q)}
	}
	return []protocol.SealOption{protocol.WithVersion2Tags()}
}
