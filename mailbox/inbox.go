package mailbox

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// The user side of version 2 mailboxes (protocol/SPEC.md, "Choosing and
// announcing mailboxes", "What a user sends from where", "Bounds on a
// hostile mailbox").
const (
	// MailboxFailLimit is how many sync rounds in a row a mailbox may fail
	// before the user replaces it.
	MailboxFailLimit = 3
	// MaxJunkPerDay is how many envelopes that do not open a mailbox may
	// return in one UTC day before the user replaces it.
	MaxJunkPerDay = 32
	// DefaultInboxMailboxes is how many mailboxes a user receives at (k).
	DefaultInboxMailboxes = 3
	// filterRetry is how soon a filter that ended is opened again.
	filterRetry = 5 * time.Second
	// maxRecent bounds the content hashes an Inbox remembers to deliver an
	// envelope that several mailboxes hold only once, and the junk hashes
	// it remembers per mailbox so that junk it reads again counts once.
	maxRecent = 1 << 14
	// maxCursors bounds the query cursors kept per mailbox (one per set of
	// tags; the sets change daily).
	maxCursors = 64
	// syncMailboxTimeout bounds one kind's sync at one mailbox.
	syncMailboxTimeout = time.Minute
)

// ErrJunk is what an Inbox's Deliver returns (wrapped) for an envelope
// that does not open for the device: it counts against the mailbox.
var ErrJunk = errors.New("mailbox: the envelope does not open for this device")

// errNotTaken marks a sync that stopped because the owner could not take
// an envelope (its store failed): no fault of the mailbox.
var errNotTaken = errors.New("mailbox: envelopes read were not taken")

// InboxConfig configures NewInbox.
type InboxConfig struct {
	// Mailboxes are the mailbox nodes the user receives at.
	Mailboxes []peer.AddrInfo
	// Registrations returns, at now, every tag the user reads: the
	// pairwise tags of its sessions and its intro tags, for the live
	// epochs. Those of epochs from Epoch(now) on are registered; all are
	// queried and filtered.
	Registrations func(now time.Time) []Registration
	// Deliver hands over one envelope read from mbx, once per content.
	// It returns nil once the envelope is durably taken, an error that
	// wraps ErrJunk if it is junk (it does not open for this device), and
	// any other error if it could not be taken now (the same bytes are
	// then handed over again when read again).
	Deliver func(mbx peer.ID, env []byte) error
	// Replace, if set, is called (from the Inbox's goroutine) when a
	// mailbox failed MailboxFailLimit rounds in a row or returned
	// MaxJunkPerDay junk envelopes in a day: the owner should choose
	// another, call SetMailboxes and tell its contacts.
	Replace func(bad peer.ID)
	// NewHost opens the host of one round (default p2p.NewEphemeral: a
	// fresh identity each time).
	NewHost func() (host.Host, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Inbox reads a user's envelopes from its version 2 mailboxes: it
// registers the user's tags at each, keeps live filters open there and
// runs bounded sync rounds, every round from a fresh identity and the
// intro tags apart from the pairwise ones. Safe for concurrent use.
type Inbox struct {
	cfg InboxConfig

	mu      sync.Mutex
	mbxs    []peer.AddrInfo
	health  map[peer.ID]*mbxHealth
	recent  map[[32]byte]struct{}
	recentQ [][32]byte
}

// mbxHealth is what an Inbox knows of one mailbox.
type mbxHealth struct {
	registered map[[32]byte]uint64   // tag -> epoch registered + 1
	cursor     map[[32]byte][]byte   // query cursor per set of tags
	junkSeen   map[[32]byte]struct{} // junk already counted
	fails      int
	junk       int
	junkDay    uint64
	replaced   bool
}

func newHealth() *mbxHealth {
	return &mbxHealth{registered: map[[32]byte]uint64{}, cursor: map[[32]byte][]byte{}, junkSeen: map[[32]byte]struct{}{}}
}

// NewInbox returns an Inbox; it does nothing until SyncRound or
// RunFilters.
func NewInbox(cfg InboxConfig) (*Inbox, error) {
	if cfg.Registrations == nil || cfg.Deliver == nil {
		return nil, fmt.Errorf("%w: an inbox needs Registrations and Deliver", ErrBadConfig)
	}
	if cfg.NewHost == nil {
		cfg.NewHost = newEphemeral
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	in := &Inbox{cfg: cfg, health: map[peer.ID]*mbxHealth{}, recent: map[[32]byte]struct{}{}}
	in.SetMailboxes(cfg.Mailboxes)
	return in, nil
}

// SetMailboxes replaces the mailboxes the user receives at.
func (in *Inbox) SetMailboxes(mbxs []peer.AddrInfo) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.mbxs = append([]peer.AddrInfo(nil), mbxs...)
	keep := map[peer.ID]bool{}
	for _, m := range mbxs {
		keep[m.ID] = true
		if in.health[m.ID] == nil {
			in.health[m.ID] = newHealth()
		}
	}
	for id := range in.health {
		if !keep[id] {
			delete(in.health, id)
		}
	}
}

// Mailboxes returns the mailboxes the user receives at.
func (in *Inbox) Mailboxes() []peer.AddrInfo {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]peer.AddrInfo(nil), in.mbxs...)
}

// split returns the registrations of kind, those to register (from
// epoch e on and not yet registered at mbx) and all tags to read.
func (in *Inbox) split(regs []Registration, kind byte, mbx peer.ID, e uint64) (toRegister []Registration, tags [][32]byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	h := in.health[mbx]
	if h != nil {
		for tag, next := range h.registered {
			if next-1+store.RegistrationEpochs <= e {
				delete(h.registered, tag) // its registration has ended
			}
		}
	}
	for _, r := range regs {
		if r.Kind != kind {
			continue
		}
		tags = append(tags, r.Tag)
		if r.Epoch >= e && (h == nil || h.registered[r.Tag] < r.Epoch+1) {
			toRegister = append(toRegister, r)
		}
	}
	return toRegister, tags
}

// SyncRound registers what is new and reads what is waiting at every
// mailbox: first the pairwise tags, then, from another fresh identity, the
// intro tags. It reads at most MaxSyncBytes per mailbox and kind, and
// returns how many envelopes it delivered.
func (in *Inbox) SyncRound(ctx context.Context) (int, error) {
	if len(in.Mailboxes()) == 0 {
		return 0, nil
	}
	now := in.cfg.Now()
	regs := in.cfg.Registrations(now)
	total := 0
	var errs []error
	failed := map[peer.ID]bool{}
	for _, kind := range []byte{store.RegPair, store.RegIntro} {
		if !slices.ContainsFunc(regs, func(r Registration) bool { return r.Kind == kind }) {
			continue // nothing of this kind to register or read
		}
		h, err := in.cfg.NewHost()
		if err != nil {
			return total, err
		}
		c := NewClient2(ctx, h)
		for _, m := range in.Mailboxes() {
			mctx, cancel := context.WithTimeout(ctx, syncMailboxTimeout)
			n, err := in.syncOne(mctx, c, m, regs, kind, now)
			cancel()
			total += n
			if err != nil {
				// A round the owner could not take counts not against the mailbox.
				failed[m.ID] = failed[m.ID] || !errors.Is(err, errNotTaken)
				errs = append(errs, fmt.Errorf("mailbox %s: %w", m.ID, err))
			}
		}
		h.Close()
	}
	for _, m := range in.Mailboxes() {
		in.recordRound(m.ID, failed[m.ID])
	}
	return total, errors.Join(errs...)
}

// Register registers at every mailbox what is new, without reading: a
// new session's tags, which its peer may write under at any moment. Each
// kind goes from its own fresh identity.
func (in *Inbox) Register(ctx context.Context) error {
	if len(in.Mailboxes()) == 0 {
		return nil // nowhere to register: the registrations are not even listed
	}
	now := in.cfg.Now()
	regs := in.cfg.Registrations(now)
	var errs []error
	for _, kind := range []byte{store.RegPair, store.RegIntro} {
		var h host.Host
		for _, m := range in.Mailboxes() {
			toRegister, _ := in.split(regs, kind, m.ID, protocol.Epoch(now))
			if len(toRegister) == 0 {
				continue
			}
			if h == nil {
				var err error
				if h, err = in.cfg.NewHost(); err != nil {
					return err
				}
				defer h.Close()
			}
			if err := in.register(ctx, NewClient2(ctx, h), m, toRegister); err != nil {
				errs = append(errs, fmt.Errorf("mailbox %s: %w", m.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// register registers regs at m and remembers what m took.
func (in *Inbox) register(ctx context.Context, c *Client2, m peer.AddrInfo, toRegister []Registration) error {
	for len(toRegister) > 0 {
		chunk := toRegister[:min(len(toRegister), MaxRegistrations)]
		toRegister = toRegister[len(chunk):]
		accepted, _, err := c.Register(ctx, m, chunk)
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		if accepted < len(chunk) {
			// Not all taken (the mailbox lost them, or refused): try
			// them again next round rather than believe them held.
			continue
		}
		in.mu.Lock()
		if h := in.health[m.ID]; h != nil {
			for _, r := range chunk {
				h.registered[r.Tag] = max(h.registered[r.Tag], r.Epoch+1)
			}
		}
		in.mu.Unlock()
	}
	return nil
}

// syncOne registers and reads one kind of tag at one mailbox.
func (in *Inbox) syncOne(ctx context.Context, c *Client2, m peer.AddrInfo, regs []Registration, kind byte, now time.Time) (int, error) {
	toRegister, tags := in.split(regs, kind, m.ID, protocol.Epoch(now))
	if err := in.register(ctx, c, m, toRegister); err != nil {
		return 0, err
	}
	delivered := 0
	budget := MaxSyncBytes
	for len(tags) > 0 && budget > 0 {
		chunk := tags[:min(len(tags), MaxQueryTags)]
		tags = tags[len(chunk):]
		// Each set of tags resumes where the last round left it, so junk
		// nobody can delete does not hide what came after it.
		key := tagSetKey(chunk)
		in.mu.Lock()
		var cursor []byte
		if h := in.health[m.ID]; h != nil {
			cursor = h.cursor[key]
		}
		in.mu.Unlock()
		envs, next, err := c.Sync(ctx, m, chunk, cursor, budget)
		junk := 0
		var notTaken error
		for _, env := range envs {
			budget -= len(env)
			d, j, derr := in.deliver(m.ID, env)
			switch {
			case d:
				delivered++
			case j && kind == store.RegPair && in.newJunk(m.ID, env):
				junk++
			case derr != nil && notTaken == nil:
				notTaken = derr
			}
		}
		in.recordJunk(m.ID, junk, now)
		if notTaken != nil {
			// Not taken for a local reason: the cursor stays, so the
			// next round reads it again.
			return delivered, fmt.Errorf("%w: %w", errNotTaken, notTaken)
		}
		if len(next) > 0 {
			in.mu.Lock()
			if h := in.health[m.ID]; h != nil {
				if len(h.cursor) >= maxCursors {
					clear(h.cursor) // old tag sets (past days); a set read again costs a re-read
				}
				h.cursor[key] = next
			}
			in.mu.Unlock()
		}
		if err != nil && !errors.Is(err, ErrSyncBudget) {
			return delivered, err
		}
	}
	return delivered, nil
}

// deliver hands env to the owner unless an envelope of the same content
// was delivered recently. It reports whether it handed it over, and
// whether the owner found it junk.
func (in *Inbox) deliver(mbx peer.ID, env []byte) (delivered, junk bool, err error) {
	h := sha256.Sum256(env)
	in.mu.Lock()
	if _, ok := in.recent[h]; ok {
		in.mu.Unlock()
		return false, false, nil
	}
	in.recent[h] = struct{}{}
	in.recentQ = append(in.recentQ, h)
	if len(in.recentQ) > maxRecent {
		delete(in.recent, in.recentQ[0])
		in.recentQ = in.recentQ[1:]
	}
	in.mu.Unlock()
	err = in.cfg.Deliver(mbx, env)
	if err == nil {
		return true, false, nil
	}
	// An envelope not taken is not remembered: junk from another mailbox
	// counts against that one too, and what failed for a local reason is
	// taken when read again.
	in.mu.Lock()
	delete(in.recent, h)
	in.mu.Unlock()
	if errors.Is(err, ErrJunk) {
		return false, true, nil
	}
	return false, false, err
}

// tagSetKey names a set of tags (in order) for its query cursor.
func tagSetKey(tags [][32]byte) [32]byte {
	h := sha256.New()
	for _, t := range tags {
		h.Write(t[:])
	}
	return [32]byte(h.Sum(nil))
}

// newJunk reports whether env is junk mbx has not sent before (each junk
// envelope counts once, however often it is read again).
func (in *Inbox) newJunk(mbx peer.ID, env []byte) bool {
	hash := sha256.Sum256(env)
	in.mu.Lock()
	defer in.mu.Unlock()
	h := in.health[mbx]
	if h == nil {
		return false
	}
	if _, ok := h.junkSeen[hash]; ok {
		return false
	}
	if len(h.junkSeen) >= maxRecent {
		clear(h.junkSeen)
	}
	h.junkSeen[hash] = struct{}{}
	return true
}

// recordRound records whether mbx failed a sync round: MailboxFailLimit
// failed rounds in a row and it is replaced.
func (in *Inbox) recordRound(mbx peer.ID, failed bool) {
	in.mu.Lock()
	h := in.health[mbx]
	if h == nil || h.replaced {
		in.mu.Unlock()
		return
	}
	if failed {
		h.fails++
	} else {
		h.fails = 0
	}
	replace := h.fails >= MailboxFailLimit
	fails := h.fails
	h.replaced = replace
	in.mu.Unlock()
	if replace {
		in.replace(mbx, "failed rounds", fails)
	}
}

// recordJunk counts n new junk envelopes from mbx at now: MaxJunkPerDay
// in a UTC day and it is replaced. Only envelopes under pairwise tags
// count: deposits under them need the session's write key, so junk there
// is the mailbox's own; junk under an intro tag can come from anyone who
// holds an invite.
func (in *Inbox) recordJunk(mbx peer.ID, n int, now time.Time) {
	if n == 0 {
		return
	}
	in.mu.Lock()
	h := in.health[mbx]
	if h == nil || h.replaced {
		in.mu.Unlock()
		return
	}
	if day := protocol.Epoch(now); day != h.junkDay {
		h.junkDay, h.junk = day, 0
	}
	h.junk += n
	replace := h.junk >= MaxJunkPerDay
	junk := h.junk
	h.replaced = replace
	in.mu.Unlock()
	if replace {
		in.replace(mbx, "junk today", junk)
	}
}

func (in *Inbox) replace(mbx peer.ID, why string, n int) {
	in.cfg.Logger.Info("replacing a mailbox", "mailbox", mbx, why, n)
	if in.cfg.Replace != nil {
		in.cfg.Replace(mbx)
	}
}

// Delete reveals delete tokens at every mailbox for envelopes the owner
// has durably stored, from one fresh identity.
func (in *Inbox) Delete(ctx context.Context, tag [32]byte, tokens [][32]byte) error {
	h, err := in.cfg.NewHost()
	if err != nil {
		return err
	}
	defer h.Close()
	c := NewClient2(ctx, h)
	var errs []error
	for _, m := range in.Mailboxes() {
		for rest := tokens; len(rest) > 0; {
			chunk := rest[:min(len(rest), MaxDeleteTokens)]
			if _, err := c.Delete(ctx, m, tag, chunk); err != nil {
				errs = append(errs, fmt.Errorf("mailbox %s: %w", m.ID, err))
				break
			}
			rest = rest[len(chunk):]
		}
	}
	return errors.Join(errs...)
}

// RunFilters keeps a filter open at every mailbox, for each kind of tag
// from its own fresh identity, until ctx ends; envelopes pushed go to
// Deliver. A filter that ends is opened again after filterRetry; what
// arrived meanwhile was not pushed, so the owner runs a SyncRound on
// reconnect and periodically.
func (in *Inbox) RunFilters(ctx context.Context) {
	var wg sync.WaitGroup
	running := map[peer.ID]context.CancelFunc{}
	tick := time.NewTicker(filterRetry)
	defer tick.Stop()
	for {
		for _, m := range in.Mailboxes() {
			if running[m.ID] != nil {
				continue
			}
			fctx, cancel := context.WithCancel(ctx)
			running[m.ID] = cancel
			for _, kind := range []byte{store.RegPair, store.RegIntro} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					in.filterLoop(fctx, m, kind)
				}()
			}
		}
		// Stop the filters of mailboxes no longer used.
		current := map[peer.ID]bool{}
		for _, m := range in.Mailboxes() {
			current[m.ID] = true
		}
		for id, cancel := range running {
			if !current[id] {
				cancel()
				delete(running, id)
			}
		}
		select {
		case <-ctx.Done():
			for _, cancel := range running {
				cancel()
			}
			wg.Wait()
			return
		case <-tick.C:
		}
	}
}

// filterLoop holds one filter of kind at m open until ctx ends.
func (in *Inbox) filterLoop(ctx context.Context, m peer.AddrInfo, kind byte) {
	for ctx.Err() == nil {
		in.filterOnce(ctx, m, kind)
		select {
		case <-ctx.Done():
			return
		case <-time.After(filterRetry):
		}
	}
}

// filterTags returns the tags of kind a filter names at now: those of
// epochs from Epoch(now) − 1 on (live traffic; a sender's clock may be a
// day behind), at most MaxFilterTags. Older epochs are left to sync rounds.
func (in *Inbox) filterTags(kind byte, now time.Time) [][32]byte {
	e := protocol.Epoch(now)
	var tags [][32]byte
	for _, r := range in.cfg.Registrations(now) {
		if r.Kind == kind && r.Epoch+1 >= e && len(tags) < MaxFilterTags {
			tags = append(tags, r.Tag)
		}
	}
	return tags
}

func sameTags(a, b [][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// filterRefresh is how often an open filter's tags are recomputed (new
// sessions, a new epoch).
const filterRefresh = time.Minute

func (in *Inbox) filterOnce(ctx context.Context, m peer.AddrInfo, kind byte) {
	tags := in.filterTags(kind, in.cfg.Now())
	if len(tags) == 0 {
		return
	}
	h, err := in.cfg.NewHost()
	if err != nil {
		in.cfg.Logger.Warn("mailbox filter: no host", "err", err)
		return
	}
	defer h.Close()
	c := NewClient2(ctx, h)
	f, err := c.Filter(ctx, m, tags, func(env []byte) {
		if _, junk, _ := in.deliver(m.ID, env); junk && kind == store.RegPair && in.newJunk(m.ID, env) {
			in.recordJunk(m.ID, 1, in.cfg.Now())
		}
	})
	if err != nil {
		in.cfg.Logger.Debug("mailbox filter not open", "mailbox", m.ID, "err", err)
		return
	}
	defer f.Close()
	tick := time.NewTicker(filterRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.Done():
			in.cfg.Logger.Debug("mailbox filter ended", "mailbox", m.ID, "err", f.Err())
			return
		case <-tick.C:
			if next := in.filterTags(kind, in.cfg.Now()); len(next) > 0 && !sameTags(next, tags) {
				if err := f.SetTags(next); err != nil {
					return
				}
				tags = next
			}
		}
	}
}

func newEphemeral() (host.Host, error) { return p2p.NewEphemeral() }

// PushAll pushes deposit to each of mbxs from one fresh identity and
// returns how many acknowledged it (stored, or held already) and the
// refusals and failures of the others.
func PushAll(ctx context.Context, newHost func() (host.Host, error), mbxs []peer.AddrInfo, deposit []byte) (int, error) {
	if newHost == nil {
		newHost = newEphemeral
	}
	h, err := newHost()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	return NewClient2(ctx, h).PushAll(ctx, mbxs, deposit)
}

// PushAll pushes deposit to each of mbxs from the client's host and
// returns how many acknowledged it (stored, or held already) and the
// refusals and failures of the others.
func (c *Client2) PushAll(ctx context.Context, mbxs []peer.AddrInfo, deposit []byte) (int, error) {
	stored := 0
	var errs []error
	for _, m := range mbxs {
		if err := c.Push(ctx, m, deposit); err != nil {
			errs = append(errs, fmt.Errorf("mailbox %s: %w", m.ID, err))
			continue
		}
		stored++
	}
	return stored, errors.Join(errs...)
}
