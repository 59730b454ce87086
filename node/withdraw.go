package node

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
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

// WithdrawRetry spaces the attempts of a withdrawal that some mailbox did
// not answer.
const WithdrawRetry = 10 * time.Minute

// withdrawPrefix + base64 of the delete token names a withdrawal; its
// value is the contact (32 bytes), the envelope's tag (32) and its expiry
// (uint64be Unix seconds).
const withdrawPrefix = "withdraw/"

// withdrawal is one dropped envelope whose mailbox copies are to go.
type withdrawal struct {
	contact [32]byte
	tag     [32]byte
	token   [32]byte
	expires time.Time
}

// noteWithdrawal records, in tx, that the mailbox copies of e's envelope
// are to be withdrawn, when a version 2 mailbox of the contact's holds
// one: e had been deposited, its token is known, and the contact has
// announced mailboxes. The caller then drops the envelope in the same tx
// and calls kickWithdraw after the commit.
func noteWithdrawal(tx *store.Tx, e store.OutboxEntry) (bool, error) {
	if e.Mailboxes == 0 || e.Envelope == nil || e.DeleteToken == ([32]byte{}) {
		return false, nil
	}
	env, err := protocol.ParseEnvelope(e.Envelope)
	if err != nil || !env.CheckDeleteToken(e.DeleteToken) {
		return false, nil // not ours to withdraw
	}
	if mailbox.ContactMailboxes(tx, e.Contact) == nil {
		return false, nil // deposited by version 1: not withdrawn
	}
	v := make([]byte, 0, 72)
	v = append(v, e.Contact[:]...)
	v = append(v, env.Tag[:]...)
	v = binary.BigEndian.AppendUint64(v, uint64(env.Expiry.Unix()))
	return true, tx.PutSetting(withdrawPrefix+base64.RawURLEncoding.EncodeToString(e.DeleteToken[:]), v)
}

// pendingWithdrawals lists the recorded withdrawals.
func pendingWithdrawals(tx *store.Tx) ([]withdrawal, error) {
	names, err := tx.SettingNames(withdrawPrefix)
	if err != nil {
		return nil, err
	}
	var out []withdrawal
	for _, name := range names {
		tok, err := base64.RawURLEncoding.DecodeString(name[len(withdrawPrefix):])
		if err != nil || len(tok) != 32 {
			return nil, fmt.Errorf("%w: withdrawal %q", store.ErrCorrupt, name)
		}
		v, err := tx.GetSetting(name)
		if err != nil {
			return nil, err
		}
		if len(v) != 72 {
			return nil, fmt.Errorf("%w: withdrawal of %d bytes", store.ErrCorrupt, len(v))
		}
		out = append(out, withdrawal{
			contact: [32]byte(v[:32]), tag: [32]byte(v[32:64]), token: [32]byte(tok),
			expires: time.Unix(int64(binary.BigEndian.Uint64(v[64:])), 0),
		})
	}
	return out, nil
}

func (w withdrawal) setting() string {
	return withdrawPrefix + base64.RawURLEncoding.EncodeToString(w.token[:])
}

// kickWithdraw has withdrawLoop run now.
func (n *Node) kickWithdraw() {
	select {
	case n.withdrawKick <- struct{}{}:
	default:
	}
}

// withdrawLoop sends the recorded withdrawals at start, on every
// kickWithdraw, and every WithdrawRetry while some are left. It is the
// body of a goroutine counted in n.wg.
func (n *Node) withdrawLoop() {
	n.kickLoop(n.withdrawKick, func() (time.Duration, bool) {
		if n.withdrawPass() > 0 {
			return WithdrawRetry, true
		}
		return 0, false
	})
}

// withdrawPass tries every recorded withdrawal once and returns how many
// are left. One is done when every mailbox the contact announced answered
// OK, or when its envelope has expired (the mailboxes dropped it then).
func (n *Node) withdrawPass() int {
	var ws []withdrawal
	if err := n.db.View(func(tx *store.Tx) (err error) { ws, err = pendingWithdrawals(tx); return err }); err != nil {
		n.cfg.Logger.Error("reading withdrawals", "err", err)
		return 0
	}
	left := 0
	for _, w := range ws {
		if n.ctx.Err() != nil {
			return left + 1
		}
		done := !n.now().Before(w.expires)
		if !done {
			var mbxs []peer.AddrInfo
			n.db.View(func(tx *store.Tx) error { mbxs = mailbox.ContactMailboxes(tx, w.contact); return nil })
			err := mailbox.Withdraw(n.ctx, n.cfg.EphemeralHost, mbxs, w.tag, w.token)
			done = err == nil
			if err != nil {
				n.cfg.Logger.Info("withdrawing a refused envelope from mailboxes; trying again later", "err", err)
			}
		}
		if !done {
			left++
			continue
		}
		if err := n.db.Update(func(tx *store.Tx) error { return tx.DeleteSetting(w.setting()) }); err != nil {
			n.cfg.Logger.Error("recording a withdrawal", "err", err)
			left++
		}
	}
	return left
}
