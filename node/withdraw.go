package node

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Withdrawals (SPEC "Withdrawing a refused envelope"). When the outbox
// drops an envelope that a version 2 mailbox acknowledged (the recipient
// rejected it, or its session started over), the recipient cannot delete
// the copies: it never opened the envelope. The sender can, with the
// delete token it derived when sealing, so it records the withdrawal in
// the commit that drops the envelope and withdrawLoop sends the deletes.

const (
	// WithdrawRetry spaces the attempts of a withdrawal that some mailbox
	// did not answer.
	WithdrawRetry = 10 * time.Minute
	// MaxWithdrawalsPerContact and MaxWithdrawals bound the withdrawals
	// kept: a contact whose mailboxes never answer a delete, and who
	// refuses every envelope, adds one each time. Past them a copy is left
	// to expire at its mailbox.
	MaxWithdrawalsPerContact = 64
	MaxWithdrawals           = 4096
)

// withdrawPrefix + base64url of the delete token + withdrawSuffix names
// a withdrawal (the suffix, so that the store does not take the token for
// an account key to hash, which would leave an entry in its key directory
// for good); its value is the contact (32 bytes), the envelope's tag (32),
// its expiry and the time of the next attempt (uint64be Unix seconds each).
const (
	withdrawPrefix = "withdraw/"
	withdrawSuffix = "~"
)

const withdrawalSize = 32 + 32 + 8 + 8

// withdrawal is one dropped envelope whose mailbox copies are to go.
type withdrawal struct {
	contact [32]byte
	tag     [32]byte
	token   [32]byte
	expires time.Time
	next    time.Time
}

func (w withdrawal) setting() string {
	return withdrawPrefix + base64.RawURLEncoding.EncodeToString(w.token[:]) + withdrawSuffix
}

func (w withdrawal) value() []byte {
	v := make([]byte, 0, withdrawalSize)
	v = append(v, w.contact[:]...)
	v = append(v, w.tag[:]...)
	v = binary.BigEndian.AppendUint64(v, uint64(w.expires.Unix()))
	return binary.BigEndian.AppendUint64(v, uint64(w.next.Unix()))
}

// noteWithdrawal records, in tx, that the mailbox copies of e's envelope
// are to be withdrawn, when a version 2 mailbox of the contact's holds
// one: e had been deposited, its token is known and opens it, and the
// contact has announced mailboxes; and the bounds leave room. The caller
// drops the envelope in the same tx and calls kickWithdraw after the
// commit.
func noteWithdrawal(tx *store.Tx, e store.OutboxEntry) (bool, error) {
	if e.Mailboxes == 0 || e.Envelope == nil || e.DeleteToken == ([32]byte{}) {
		return false, nil
	}
	env, err := protocol.ParseEnvelope(e.Envelope)
	if err != nil || !env.CheckDeleteToken(e.DeleteToken) {
		return false, nil // not ours to withdraw
	}
	if mailbox.ContactMailboxes(tx, e.Contact) == nil {
		return false, nil // no version 2 mailboxes to ask
	}
	ws, err := pendingWithdrawals(tx)
	if err != nil {
		return false, err
	}
	mine := 0
	for _, w := range ws {
		if w.contact == e.Contact {
			mine++
		}
	}
	if mine >= MaxWithdrawalsPerContact || len(ws) >= MaxWithdrawals {
		return false, nil // left to expire at the mailbox
	}
	w := withdrawal{contact: e.Contact, tag: env.Tag, token: e.DeleteToken, expires: env.Expiry}
	return true, tx.PutSetting(w.setting(), w.value())
}

// pendingWithdrawals lists the recorded withdrawals.
func pendingWithdrawals(tx *store.Tx) ([]withdrawal, error) {
	names, err := tx.SettingNames(withdrawPrefix)
	if err != nil {
		return nil, err
	}
	var out []withdrawal
	for _, name := range names {
		tok, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(name[len(withdrawPrefix):], withdrawSuffix))
		if err != nil || len(tok) != 32 || !strings.HasSuffix(name, withdrawSuffix) {
			return nil, fmt.Errorf("%w: withdrawal %q", store.ErrCorrupt, name)
		}
		v, err := tx.GetSetting(name)
		if err != nil {
			return nil, err
		}
		if len(v) != withdrawalSize {
			return nil, fmt.Errorf("%w: withdrawal of %d bytes", store.ErrCorrupt, len(v))
		}
		out = append(out, withdrawal{
			contact: [32]byte(v[:32]), tag: [32]byte(v[32:64]), token: [32]byte(tok),
			expires: time.Unix(int64(binary.BigEndian.Uint64(v[64:])), 0),
			next:    time.Unix(int64(binary.BigEndian.Uint64(v[72:])), 0),
		})
	}
	return out, nil
}

// kickWithdraw has withdrawLoop look at the withdrawals now.
func (n *Node) kickWithdraw() {
	select {
	case n.withdrawKick <- struct{}{}:
	default:
	}
}

// withdrawLoop sends the recorded withdrawals that are due: at start, on
// every kickWithdraw, and when the next is due. It is the body of a
// goroutine counted in n.wg.
func (n *Node) withdrawLoop() {
	n.kickLoop(n.withdrawKick, func() (time.Duration, bool) {
		next, ok := n.withdrawPass()
		if !ok {
			return 0, false
		}
		return max(next.Sub(n.now()), time.Second), true
	})
}

// withdrawPass tries once each withdrawal that is due, those of one
// contact and tag together (one fresh identity, one delete per mailbox),
// and returns when the next one left is due (false: none left). A
// withdrawal is done when every mailbox the contact announced answered
// OK, or when its envelope has expired (the mailboxes dropped it then);
// one that is not is tried again WithdrawRetry later.
func (n *Node) withdrawPass() (time.Time, bool) {
	var ws []withdrawal
	if err := n.db.View(func(tx *store.Tx) (err error) { ws, err = pendingWithdrawals(tx); return err }); err != nil {
		n.cfg.Logger.Error("reading withdrawals", "err", err)
		return time.Time{}, false
	}
	now := n.now()
	type batchKey struct{ contact, tag [32]byte }
	batches := map[batchKey][]withdrawal{}
	var order []batchKey
	var done, retry []withdrawal
	for _, w := range ws {
		switch {
		case !now.Before(w.expires):
			done = append(done, w)
		case now.Before(w.next):
		default:
			k := batchKey{w.contact, w.tag}
			if batches[k] == nil {
				order = append(order, k)
			}
			batches[k] = append(batches[k], w)
		}
	}
	for _, k := range order {
		if n.ctx.Err() != nil {
			break
		}
		b := batches[k]
		var mbxs []peer.AddrInfo
		n.db.View(func(tx *store.Tx) error { mbxs = mailbox.ContactMailboxes(tx, k.contact); return nil })
		for chunk := range slices.Chunk(b, mailbox.MaxDeleteTokens) {
			toks := make([][32]byte, len(chunk))
			for i, w := range chunk {
				toks[i] = w.token
			}
			if err := mailbox.Withdraw(n.ctx, n.cfg.EphemeralHost, mbxs, k.tag, toks); err != nil {
				n.cfg.Logger.Info("withdrawing refused envelopes from mailboxes; trying again later", "envelopes", len(chunk), "err", err)
				retry = append(retry, chunk...)
			} else {
				done = append(done, chunk...)
			}
		}
	}
	if len(done)+len(retry) > 0 {
		err := n.db.Update(func(tx *store.Tx) error {
			for _, w := range done {
				if err := tx.DeleteSetting(w.setting()); err != nil {
					return err
				}
			}
			for _, w := range retry {
				w.next = now.Add(WithdrawRetry)
				if err := tx.PutSetting(w.setting(), w.value()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			n.cfg.Logger.Error("recording withdrawals", "err", err)
			return now.Add(WithdrawRetry), true
		}
	}
	// When the next one left is due, or expires.
	state := map[[32]byte]int{} // 1 done, 2 to retry
	for _, w := range done {
		state[w.token] = 1
	}
	for _, w := range retry {
		state[w.token] = 2
	}
	var next time.Time
	left := false
	for _, w := range ws {
		at := w.next
		switch state[w.token] {
		case 1:
			continue
		case 2:
			at = now.Add(WithdrawRetry)
		}
		if w.expires.Before(at) {
			at = w.expires
		}
		if !left || at.Before(next) {
			next, left = at, true
		}
	}
	return next, left
}
