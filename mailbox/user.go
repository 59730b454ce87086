package mailbox

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Settings a User keeps in the device's store.
const (
	// settingOwn holds the announcement of the mailboxes the device
	// receives at.
	settingOwn = "mailboxes2"
	// contactPrefix + base64url(account) holds what a contact last announced:
	// uint64be(its sent time, ms) || announcement.
	contactPrefix = "mbx2-of/"
	// chooseGap spaces lookups of mailbox nodes in the DHT.
	chooseGap = time.Minute
)

// UserConfig configures NewUser.
type UserConfig struct {
	DB *store.DB
	// Static are mailbox nodes to receive at (--mailbox-node), preferred
	// to any the DHT names.
	Static []peer.AddrInfo
	// K is how many mailboxes to receive at (default DefaultInboxMailboxes).
	K int
	// Find looks mailbox nodes up (FindMailboxNodes); nil: only Static.
	Find func(ctx context.Context) []peer.AddrInfo
	// Self is the device's own peer ID, never chosen.
	Self peer.ID
	// Kick asks the owner for a Round soon (a mailbox was given up).
	Kick func()
	// Registrations and Deliver as in InboxConfig; Deliver reports the
	// delete token of what it took with Taken.
	Registrations func(now time.Time) []Registration
	Deliver       func(mbx peer.ID, env []byte) error
	Now           func() time.Time
	Logger        *slog.Logger
}

// User is the user side of version 2 mailboxes for one device: it keeps
// the mailboxes the device receives at (stored, so they stay across
// restarts), chooses new ones when some are given up, reads them through
// an Inbox and reveals at them the delete tokens of what the device took.
type User struct {
	cfg UserConfig
	in  *Inbox

	mu     sync.Mutex
	dels   map[protocol.Tag][][32]byte
	bad    map[peer.ID]bool
	lookup time.Time
}

// NewUser returns a User over the mailboxes stored (or cfg.Static, which
// replace them).
func NewUser(cfg UserConfig) (*User, error) {
	if cfg.K <= 0 {
		cfg.K = DefaultInboxMailboxes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var own []peer.AddrInfo
	if err := cfg.DB.View(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingOwn)
		if err == nil {
			own, err = ParseAnnouncement(b)
		}
		if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
		return err
	}); err != nil {
		cfg.Logger.Warn("stored mailbox choice unreadable; choosing again", "err", err)
	}
	if len(cfg.Static) > 0 {
		own = cfg.Static[:min(len(cfg.Static), cfg.K)]
	}
	u := &User{cfg: cfg, dels: map[protocol.Tag][][32]byte{}, bad: map[peer.ID]bool{}}
	in, err := NewInbox(InboxConfig{
		Mailboxes: own, Registrations: cfg.Registrations, Deliver: cfg.Deliver,
		Replace: func(bad peer.ID) {
			u.mu.Lock()
			u.bad[bad] = true
			u.mu.Unlock()
			if cfg.Kick != nil {
				cfg.Kick()
			}
		},
		Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	u.in = in
	return u, nil
}

// Mailboxes returns the mailboxes the device receives at.
func (u *User) Mailboxes() []peer.AddrInfo { return u.in.Mailboxes() }

// RunFilters keeps filters open at the mailboxes until ctx ends
// (Inbox.RunFilters).
func (u *User) RunFilters(ctx context.Context) { u.in.RunFilters(ctx) }

// Taken records the delete token of an envelope the device took, to be
// revealed at its mailboxes after the next round.
func (u *User) Taken(tag protocol.Tag, token [32]byte) {
	u.mu.Lock()
	u.dels[tag] = append(u.dels[tag], token)
	u.mu.Unlock()
}

// Round chooses mailboxes if some were given up or fewer than K are
// known, registers and reads (Inbox.SyncRound), and reveals the delete
// tokens taken since the last round. It returns how many envelopes it
// delivered.
func (u *User) Round(ctx context.Context) (int, error) {
	if err := u.choose(ctx); err != nil {
		u.cfg.Logger.Error("choosing mailboxes", "err", err)
	}
	if len(u.in.Mailboxes()) == 0 {
		return 0, nil
	}
	n, err := u.in.SyncRound(ctx)
	u.mu.Lock()
	dels := u.dels
	u.dels = map[protocol.Tag][][32]byte{}
	u.mu.Unlock()
	for tag, toks := range dels {
		if derr := u.in.Delete(ctx, tag, toks); derr != nil {
			u.cfg.Logger.Debug("mailbox delete", "err", derr)
		}
	}
	return n, err
}

// choose drops the mailboxes given up and, while fewer than K remain,
// adds others: from Static first, then from Find (at most one lookup per
// chooseGap), in distinct networks where it can. It stores a new set.
func (u *User) choose(ctx context.Context) error {
	cur := u.in.Mailboxes()
	u.mu.Lock()
	avoid := map[peer.ID]bool{u.cfg.Self: true}
	var keep []peer.AddrInfo
	for _, m := range cur {
		if !u.bad[m.ID] {
			keep = append(keep, m)
		}
		avoid[m.ID] = true
	}
	for id := range u.bad {
		avoid[id] = true
	}
	lookup := u.cfg.Find != nil && time.Since(u.lookup) >= chooseGap
	u.mu.Unlock()
	if len(keep) >= u.cfg.K && len(keep) == len(cur) {
		return nil
	}
	more := ChooseMailboxes(u.cfg.Static, u.cfg.K-len(keep), avoid)
	if len(keep)+len(more) < u.cfg.K && lookup {
		u.mu.Lock()
		u.lookup = time.Now()
		u.mu.Unlock()
		cands := u.cfg.Find(ctx)
		rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
		for _, m := range more {
			avoid[m.ID] = true
		}
		more = append(more, ChooseMailboxes(cands, u.cfg.K-len(keep)-len(more), avoid)...)
	}
	set := append(keep, more...)
	if len(set) == 0 || (len(more) == 0 && len(set) == len(cur)) {
		return nil // nothing better found: keep what is there
	}
	body, err := EncodeAnnouncement(set)
	if err != nil {
		return err
	}
	if err := u.cfg.DB.Update(func(tx *store.Tx) error { return tx.PutSetting(settingOwn, body) }); err != nil {
		return err
	}
	u.cfg.Logger.Info("receiving at mailboxes", "count", len(set), "new", len(more))
	u.in.SetMailboxes(set)
	u.mu.Lock()
	u.bad = map[peer.ID]bool{}
	u.mu.Unlock()
	return nil
}

// PutContactMailboxes records in tx the mailboxes a contact announced in
// body (content type 0x03) at sent, unless an announcement it sent later
// is recorded already. A body that does not parse changes nothing, and
// the mailboxes known stay.
func PutContactMailboxes(tx *store.Tx, acct [32]byte, sent time.Time, body []byte) error {
	if _, err := ParseAnnouncement(body); err != nil {
		return nil
	}
	key := contactPrefix + base64.RawURLEncoding.EncodeToString(acct[:])
	ms := uint64(sent.UnixMilli())
	if b, err := tx.GetSetting(key); err == nil && len(b) >= 8 && binary.BigEndian.Uint64(b) > ms {
		return nil
	}
	return tx.PutSetting(key, append(binary.BigEndian.AppendUint64(nil, ms), body...))
}

// ContactMailboxes returns the mailboxes acct last announced; nil if it
// announced none (it runs version 1).
func ContactMailboxes(tx *store.Tx, acct [32]byte) []peer.AddrInfo {
	b, err := tx.GetSetting(contactPrefix + base64.RawURLEncoding.EncodeToString(acct[:]))
	if err != nil || len(b) < 8 {
		return nil
	}
	mbxs, err := ParseAnnouncement(b[8:])
	if err != nil {
		return nil
	}
	return mbxs
}

// Pusher pushes one batch of deposits from one fresh identity, opened at
// the first push. Close it after the batch.
type Pusher struct {
	h host.Host
	c *Client2
}

// Push pushes deposit to each of mbxs (Client2.PushAll); it fails only
// when none took it.
func (p *Pusher) Push(ctx context.Context, mbxs []peer.AddrInfo, deposit []byte) (int, error) {
	if p.c == nil {
		h, err := newEphemeral()
		if err != nil {
			return 0, err
		}
		p.h, p.c = h, NewClient2(ctx, h)
	}
	stored, err := p.c.PushAll(ctx, mbxs, deposit)
	switch {
	case stored > 0:
		return stored, nil // the others are the mesh's to fill
	case err == nil:
		return 0, fmt.Errorf("mailbox: no mailbox to push to")
	}
	return 0, err
}

// Close closes the batch's host.
func (p *Pusher) Close() {
	if p.h != nil {
		p.h.Close()
	}
}
