package mailbox

import (
	"bytes"
	"context"
	crand "crypto/rand"
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
	// contactIntroPrefix + base64url(account) holds the intro secret a
	// contact's invite carried.
	contactIntroPrefix = "mbx2-intro/"
	// settingIntroSecret holds the device's own intro secret.
	settingIntroSecret = "intro-secret"
	// chooseGap spaces lookups of mailbox nodes in the DHT.
	chooseGap = time.Minute
)

// IntroSecret returns the device's intro secret (protocol/SPEC.md, "Tags
// and write keys"), drawing and storing it the first time.
func IntroSecret(db *store.DB) ([protocol.IntroSecretSize]byte, error) {
	var q [protocol.IntroSecretSize]byte
	found := false
	if err := db.View(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingIntroSecret)
		if found = err == nil && len(b) == len(q); found {
			copy(q[:], b)
		}
		return nil
	}); err != nil || found {
		return q, err
	}
	err := db.Update(func(tx *store.Tx) error {
		b, err := tx.GetSetting(settingIntroSecret)
		if err == nil && len(b) == len(q) {
			copy(q[:], b)
			return nil
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if _, err := crand.Read(q[:]); err != nil {
			return err
		}
		return tx.PutSetting(settingIntroSecret, q[:])
	})
	return q, err
}

// OwnMailboxes returns the mailboxes the device last chose to receive at.
func OwnMailboxes(tx *store.Tx) []peer.AddrInfo {
	b, err := tx.GetSetting(settingOwn)
	if err != nil {
		return nil
	}
	mbxs, _ := ParseAnnouncement(b)
	return mbxs
}

// PutContactInvite records what a contact's version 3 invite carried: its
// intro secret (nil: none) and its mailboxes, which any announcement it
// sends later replaces.
func PutContactInvite(tx *store.Tx, acct [32]byte, secret *[protocol.IntroSecretSize]byte, mbxs []peer.AddrInfo) error {
	if secret != nil {
		if err := tx.PutSetting(contactIntroPrefix+base64.RawURLEncoding.EncodeToString(acct[:]), secret[:]); err != nil {
			return err
		}
	}
	if len(mbxs) == 0 {
		return nil
	}
	body, err := EncodeAnnouncement(fitAnnouncement(mbxs))
	if err != nil {
		return nil // nothing usable in it
	}
	return PutContactMailboxes(tx, acct, time.UnixMilli(0), body)
}

// ContactIntroSecret returns the intro secret acct's invite carried, or
// nil.
func ContactIntroSecret(tx *store.Tx, acct [32]byte) *[protocol.IntroSecretSize]byte {
	b, err := tx.GetSetting(contactIntroPrefix + base64.RawURLEncoding.EncodeToString(acct[:]))
	if err != nil || len(b) != protocol.IntroSecretSize {
		return nil
	}
	return (*[protocol.IntroSecretSize]byte)(b)
}

// IntroDeposit stamps env, a first message under a version 2 intro tag,
// at protocol.DefaultStampBits.
func IntroDeposit(ctx context.Context, env []byte) ([]byte, error) {
	return protocol.MintIntroDeposit(ctx, env, protocol.DefaultStampBits)
}

// fitAnnouncement keeps as many addresses of each mailbox as an
// announcement holds for all of them (MaxAnnouncedAddrs in all).
func fitAnnouncement(mbxs []peer.AddrInfo) []peer.AddrInfo {
	if len(mbxs) > MaxAnnouncedAddrs {
		mbxs = mbxs[:MaxAnnouncedAddrs]
	}
	per := MaxAnnouncedAddrs / max(len(mbxs), 1)
	out := make([]peer.AddrInfo, len(mbxs))
	for i, m := range mbxs {
		out[i] = peer.AddrInfo{ID: m.ID, Addrs: m.Addrs[:min(len(m.Addrs), per)]}
	}
	return out
}

// Announcement returns the announcement of the device's mailboxes (none:
// nil).
func (u *User) Announcement() ([]byte, error) {
	if len(u.in.Mailboxes()) == 0 {
		return nil, nil
	}
	return EncodeAnnouncement(fitAnnouncement(u.in.Mailboxes()))
}

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
	// Back, if set, is called instead of Kick when a filter opened again
	// after a gap (InboxConfig.Reopened): the network or a mailbox is
	// back, and what waited for it can go now.
	Back func()
	// Registered, if set, runs after each registration RegisterSoon asked
	// for (the owner tells new contacts of its mailboxes).
	Registered func()
	// Registrations and Deliver as in InboxConfig; the User adds the
	// intro tags of the device's intro secret to the registrations, and
	// Deliver reports the delete token of what it took with Taken.
	Registrations func(now time.Time) []Registration
	Deliver       func(mbx peer.ID, env []byte) error
	// NewHost opens the host of each round, filter and delete (default
	// p2p.NewEphemeral: a fresh identity each time).
	NewHost func() (host.Host, error)
	Now     func() time.Time
	Logger  *slog.Logger
	// RegisterWait bounds AwaitRegistered (default RegisterWait).
	RegisterWait time.Duration
}

// User is the user side of version 2 mailboxes for one device: it keeps
// the mailboxes the device receives at (stored, so they stay across
// restarts), chooses new ones when some are given up, reads them through
// an Inbox and reveals at them the delete tokens of what the device took.
type User struct {
	cfg      UserConfig
	in       *Inbox
	register chan struct{}

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
		body, err := EncodeAnnouncement(fitAnnouncement(own))
		if err == nil {
			err = cfg.DB.Update(func(tx *store.Tx) error {
				if b, err := tx.GetSetting(settingOwn); err == nil && bytes.Equal(b, body) {
					return nil
				}
				return tx.PutSetting(settingOwn, body)
			})
		}
		if err != nil {
			return nil, fmt.Errorf("mailbox: storing the mailboxes given: %w", err)
		}
	}
	u := &User{cfg: cfg, dels: map[protocol.Tag][][32]byte{}, bad: map[peer.ID]bool{}, register: make(chan struct{}, 1)}
	q, err := IntroSecret(cfg.DB)
	if err != nil {
		return nil, err
	}
	regs := func(now time.Time) []Registration {
		out := cfg.Registrations(now)
		for _, e := range protocol.LiveEpochs(now) {
			out = append(out, Registration{Kind: store.RegIntro, Tag: protocol.IntroTag2(q, e), Epoch: e})
		}
		return out
	}
	back := cfg.Back
	if back == nil {
		back = cfg.Kick
	}
	in, err := NewInbox(InboxConfig{
		Mailboxes: own, Registrations: regs, Deliver: cfg.Deliver,
		Replace: func(bad peer.ID) {
			u.mu.Lock()
			u.bad[bad] = true
			u.mu.Unlock()
			if cfg.Kick != nil {
				cfg.Kick()
			}
		},
		Reopened: back,
		NewHost:  cfg.NewHost, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	u.in = in
	return u, nil
}

// Mailboxes returns the mailboxes the device receives at.
func (u *User) Mailboxes() []peer.AddrInfo { return u.in.Mailboxes() }

// Registered reports whether one of the device's mailboxes took a
// registration of tag since the User started.
func (u *User) Registered(tag protocol.Tag) bool { return u.in.Registered(tag) }

// Run keeps filters open at the mailboxes (Inbox.RunFilters) and
// registers what RegisterSoon asks for, until ctx ends.
func (u *User) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { u.in.RunFilters(ctx) })
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-u.register:
			if err := u.in.Register(ctx); err != nil && ctx.Err() == nil {
				u.cfg.Logger.Info("registering at mailboxes", "err", err)
			}
			if u.cfg.Registered != nil && ctx.Err() == nil {
				u.cfg.Registered()
			}
		}
	}
}

// RegisterWait bounds how long a session's envelopes wait for one of the
// device's mailboxes to take the session's tags while none of them
// answers registrations; MaxRegisterWait bounds it while one does (a
// mailbox slow under load). SPEC "Registration".
const (
	RegisterWait    = 3 * time.Second
	MaxRegisterWait = 20 * time.Second
)

// AwaitRegistered has Run register new tags now unless one of the
// device's mailboxes took tag already, and waits until one does or ctx
// ends: at most UserConfig.RegisterWait (default RegisterWait) while no
// mailbox answers registrations (Inbox.Answering), and at most
// MaxRegisterWait (or RegisterWait, if longer) in any case. It reports
// whether one took it. A device without mailboxes does not wait.
func (u *User) AwaitRegistered(ctx context.Context, tag protocol.Tag) bool {
	if u.Registered(tag) {
		return true
	}
	if len(u.Mailboxes()) == 0 {
		return false
	}
	u.RegisterSoon()
	wait := u.cfg.RegisterWait
	if wait <= 0 {
		wait = RegisterWait
	}
	ctx, cancel := context.WithTimeout(ctx, max(wait, MaxRegisterWait))
	defer cancel()
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !u.Registered(tag) {
		if time.Since(start) >= wait && !u.in.Answering() {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

// RegisterSoon has Run register new tags now, without reading (a new
// session's, which its peer may write under at any moment).
func (u *User) RegisterSoon() {
	select {
	case u.register <- struct{}{}:
	default:
	}
}

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
	body, err := EncodeAnnouncement(fitAnnouncement(set))
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

// DepositFor returns the version 2 deposit of env, sealed under tag, to a
// contact: signed with the session's write key for tag, or, for a first
// message under the intro tag of the contact's intro secret, stamped. It
// returns nil (and no error) when neither applies: the envelope goes by
// version 1.
func DepositFor(ctx context.Context, sess *protocol.Session, intro *[protocol.IntroSecretSize]byte, env []byte, tag protocol.Tag, now time.Time) ([]byte, error) {
	if key, ok := sess.SendWriteKey(tag, now); ok {
		return protocol.SealPairDeposit(key, env), nil
	}
	if intro != nil && protocol.IsIntroTag2(*intro, tag, now) {
		return IntroDeposit(ctx, env)
	}
	return nil, nil
}

// Pusher pushes one batch of deposits, those under each tag from their
// own fresh identity, opened at the tag's first push: a pairwise tag
// belongs to one epoch, so no identity names a pair's tags of two epochs
// (SPEC "One identity, one epoch"). Close it after the batch.
type Pusher struct {
	// NewHost opens each identity's host (default p2p.NewEphemeral).
	NewHost func() (host.Host, error)

	hosts map[protocol.Tag]host.Host
	cs    map[protocol.Tag]*Client2
}

// Push pushes deposit, sealed under tag, to each of mbxs
// (Client2.PushAll); it fails only when none took it.
func (p *Pusher) Push(ctx context.Context, tag protocol.Tag, mbxs []peer.AddrInfo, deposit []byte) (int, error) {
	c := p.cs[tag]
	if c == nil {
		newHost := p.NewHost
		if newHost == nil {
			newHost = newEphemeral
		}
		h, err := newHost()
		if err != nil {
			return 0, err
		}
		if p.cs == nil {
			p.hosts, p.cs = map[protocol.Tag]host.Host{}, map[protocol.Tag]*Client2{}
		}
		c = NewClient2(ctx, h)
		p.hosts[tag], p.cs[tag] = h, c
	}
	stored, err := c.PushAll(ctx, mbxs, deposit)
	switch {
	case stored > 0:
		return stored, nil // the others are the mesh's to fill
	case err == nil:
		return 0, fmt.Errorf("mailbox: no mailbox to push to")
	}
	return 0, err
}

// Close closes the batch's hosts.
func (p *Pusher) Close() {
	for _, h := range p.hosts {
		h.Close()
	}
}

// Withdraw deletes the copies of envelopes under tag that their sender
// dropped (SPEC "Withdrawing a refused envelope") at each of mbxs,
// revealing their delete tokens (at most MaxDeleteTokens) from one fresh
// identity. It returns nil once every mailbox answered OK, whether or not
// it still held copies.
func Withdraw(ctx context.Context, newHost func() (host.Host, error), mbxs []peer.AddrInfo, tag [32]byte, tokens [][32]byte) error {
	if newHost == nil {
		newHost = newEphemeral
	}
	h, err := newHost()
	if err != nil {
		return err
	}
	defer h.Close()
	c := NewClient2(ctx, h)
	var errs []error
	for _, m := range mbxs {
		if _, err := c.Delete(ctx, m, tag, tokens); err != nil {
			errs = append(errs, fmt.Errorf("mailbox %s: %w", m.ID, err))
		}
	}
	return errors.Join(errs...)
}
