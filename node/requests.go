package node

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// First contact is open to anyone who knows an account key, so it is where
// a stranger can make a node work: every first message costs a PQXDH
// exchange, a session, a message request and one-time prekeys. These
// limits bound that work and what it leaves in the store.
const (
	// DefaultMaxRequests is how many message requests (first messages
	// from accounts that are not contacts, not answered by the user) are
	// kept; beyond it the oldest is dropped with its conversation.
	DefaultMaxRequests = 500
	// DefaultNewSessionsPerEpoch is how many first messages from unknown
	// accounts are accepted per epoch (UTC day); more are refused for now
	// (a direct sender is told to retry later, a mailbox copy stays for
	// the next sync).
	DefaultNewSessionsPerEpoch = 1000
	// minBundleRenewal spaces the bundles made because first messages used
	// up the one-time prekeys: in between, initiators use the signed and
	// last-resort prekeys, which PQXDH allows.
	minBundleRenewal = 10 * time.Minute
	// firstContactRate and firstContactBurst bound, per remote peer, the
	// envelopes under an intro tag that the direct protocol hands to the
	// store; strangeRate and strangeBurst those under no known tag at all.
	// Beyond them the envelope is refused before any transaction.
	firstContactRate  = 2
	firstContactBurst = 20
	strangeRate       = 2
	strangeBurst      = 20
)

// ErrTooManyFirstContacts is the refusal of a first message over the
// per-epoch limit or over its sender's rate: retry later.
var ErrTooManyFirstContacts = errors.New("node: too many first messages from unknown accounts right now; retry later")

// settings of first contact.
const (
	// requestPrefix indexes message requests by the time they came:
	// requestPrefix + 16 hex digits of Unix nanoseconds + "/" + account.
	requestPrefix = "req/"
	// settingRequestsDropped counts requests dropped over the limit.
	settingRequestsDropped = "requests_dropped"
	// newSessionsPrefix + epoch counts the first messages accepted then.
	newSessionsPrefix = "new_sessions/"
)

func requestSetting(c store.Contact) string {
	return fmt.Sprintf("%s%016x/%s", requestPrefix, uint64(c.Added.UnixNano()), base64.RawURLEncoding.EncodeToString(c.Account[:]))
}

// unindexRequest forgets c as a pending request (the user added, verified
// or answered it).
func unindexRequest(tx *store.Tx, c store.Contact) error {
	if !c.IsRequest {
		return nil
	}
	return tx.DeleteSetting(requestSetting(c))
}

// evictRequests drops the oldest message requests beyond the limit, with
// their sessions and conversations, at the end of an inbound batch; a
// request the batch touched (a new one among them) stays until a later
// batch, so nothing the batch is about to write goes away under it.
func (n *Node) evictRequests(tx *store.Tx, touched map[[32]byte]bool) error {
	names, err := tx.SettingNames(requestPrefix)
	if err != nil || len(names) <= n.cfg.MaxRequests {
		return err
	}
	over := len(names) - n.cfg.MaxRequests
	dropped := 0
	for _, name := range names {
		if over == 0 {
			break
		}
		b, err := base64.RawURLEncoding.DecodeString(name[strings.LastIndexByte(name, '/')+1:])
		ok := err == nil && len(b) == 32 // else not ours to read: its entry goes
		if ok && touched[[32]byte(b)] {
			continue
		}
		over--
		if err := tx.DeleteSetting(name); err != nil {
			return err
		}
		if !ok {
			continue
		}
		acct := [32]byte(b)
		old, err := tx.GetContact(acct)
		if errors.Is(err, store.ErrUnknownContact) || errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if !old.IsRequest {
			continue // answered since: an index entry left behind
		}
		if err := n.dropContact(tx, acct); err != nil {
			return err
		}
		dropped++
	}
	if dropped == 0 {
		return nil
	}
	total, _, err := tx.GetUint64(settingRequestsDropped)
	if err != nil {
		return err
	}
	return tx.PutUint64(settingRequestsDropped, total+uint64(dropped))
}

// dropContact removes a contact with its sessions, conversation and the
// record of the first message that started its session.
func (n *Node) dropContact(tx *store.Tx, acct [32]byte) error {
	for _, s := range []func(*store.Tx, [32]byte) (*protocol.Session, error){
		func(tx *store.Tx, a [32]byte) (*protocol.Session, error) { return n.loadSession(tx, a) },
		altSession,
	} {
		if sess, err := s(tx, acct); err != nil {
			return err
		} else if sess != nil {
			if err := tx.DeleteSetting(initialSetting(sess.InitialID())); err != nil {
				return err
			}
		}
	}
	n.sessions.take(acct) // evict: its bytes are gone
	if err := tx.DeleteAltSession(acct); err != nil {
		return err
	}
	if _, err := tx.DeleteConversation(acct); err != nil {
		return err
	}
	return tx.DeleteContact(acct)
}

// newSessionsFull reports whether the epoch's new sessions have reached
// the limit: checked before the PQXDH exchange, so a refused first message
// costs little.
func (n *Node) newSessionsFull(tx *store.Tx, now time.Time) (bool, error) {
	count, _, err := tx.GetUint64(fmt.Sprintf("%s%d", newSessionsPrefix, protocol.Epoch(now)))
	return count >= uint64(n.cfg.NewSessionsPerEpoch), err
}

// countNewSession counts an accepted first message against the epoch's
// limit, in the transaction that accepts it.
func countNewSession(tx *store.Tx, now time.Time) error {
	name := fmt.Sprintf("%s%d", newSessionsPrefix, protocol.Epoch(now))
	count, _, err := tx.GetUint64(name)
	if err != nil {
		return err
	}
	return tx.PutUint64(name, count+1)
}

// pruneNewSessionCounts drops the counters of past epochs.
func pruneNewSessionCounts(tx *store.Tx, now time.Time) (bool, error) {
	names, err := tx.SettingNames(newSessionsPrefix)
	if err != nil {
		return false, err
	}
	current := fmt.Sprintf("%s%d", newSessionsPrefix, protocol.Epoch(now))
	wrote := false
	for _, name := range names {
		if name == current {
			continue
		}
		if err := tx.DeleteSetting(name); err != nil {
			return wrote, err
		}
		wrote = true
	}
	return wrote, nil
}

// screen looks at an envelope that arrived over a direct stream from p
// before it goes to the committer: one under a tag this node knows goes
// on; one under an intro tag (a first message) or under no known tag at
// all goes on only within p's rate for such envelopes. What is refused here
// costs no write transaction.
func (n *Node) screen(p peer.ID, raw []byte) error {
	env, err := protocol.ParseEnvelope(raw)
	if err != nil {
		return malformed(err)
	}
	known := false
	n.db.View(func(tx *store.Tx) error {
		if _, _, err := tx.LookupTag(env.Tag); err == nil {
			known = true
		} else if id, ok := protocol.EnvelopeInitialID(env); ok {
			_, err := tx.GetSetting(initialSetting(id))
			known = err == nil
		}
		return nil
	})
	switch {
	case known:
		return nil
	case protocol.IsIntroTag(n.account(), env.Tag, n.now()) || protocol.IsIntroTag2(n.introSecret, env.Tag, n.now()):
		if !n.firstContact.Allow(p) {
			return ErrTooManyFirstContacts // acked "try later"
		}
	default:
		if !n.strange.Allow(p) {
			return malformed(errors.New("no session for this envelope's tag"))
		}
	}
	return nil
}
