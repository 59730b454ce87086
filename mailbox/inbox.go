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
	// OldEpochsEvery is how often a sync round also reads the epochs
	// older than the filters cover (Epoch(now) − 1 on): a deposit under
	// them comes from a sender whose message waited for days. The first
	// round reads them too.
	OldEpochsEvery = 3 * time.Hour
	// FilterClockMargin is how far from its own clock a user expects a
	// live sender's: it filters the epochs now ± FilterClockMargin touch.
	FilterClockMargin = time.Hour
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
	// Reopened, if set, is called when a filter opens at a mailbox after
	// an earlier one of the same tags there ended or failed to open:
	// what was deposited in between was not pushed, so the owner should
	// run a SyncRound soon.
	Reopened func()
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
	// lastSweep is when a round last read the old epochs.
	lastSweep time.Time
	// registered is closed, and replaced, each time a Register ends: the
	// open filters take the tags it may have added at once, not at their
	// next refresh.
	registered chan struct{}
}

// mbxHealth is what an Inbox knows of one mailbox.
type mbxHealth struct {
	registered map[[32]byte]uint64   // tag -> epoch registered + 1
	cursor     map[[32]byte][]byte   // query cursor per set of tags
	junkSeen   map[[32]byte]struct{} // junk already counted
	fails      int
	// regFailed: the last attempt to register there failed or was
	// refused in part.
	regFailed bool
	junk      int
	junkDay   uint64
	replaced  bool
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
	in := &Inbox{cfg: cfg, health: map[peer.ID]*mbxHealth{}, recent: map[[32]byte]struct{}{}, registered: make(chan struct{})}
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

// Registered reports whether one of the user's mailboxes took a
// registration of tag (this run; the Inbox does not remember across
// restarts).
func (in *Inbox) Registered(tag [32]byte) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, m := range in.mbxs {
		if h := in.health[m.ID]; h != nil && h.registered[tag] > 0 {
			return true
		}
	}
	return false
}

// Answering reports whether one of the user's mailboxes may take
// registrations now: its last attempt to register did not fail and it is
// not being replaced.
func (in *Inbox) Answering() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, m := range in.mbxs {
		if h := in.health[m.ID]; h != nil && !h.regFailed && !h.replaced {
			return true
		}
	}
	return false
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

// epochGroup is what one identity of the user may name: the
// registrations of one kind in one epoch (SPEC "One identity, one
// epoch"), so that a mailbox cannot tie a pair's tags of two epochs to
// each other through the peer that named them.
type epochGroup struct {
	kind  byte
	epoch uint64
	regs  []Registration
}

// groupByEpoch splits regs into epoch groups, the pairwise ones first and
// the newest epoch first in each kind; with recentOnly, only the epochs a
// filter covers (from Epoch(now) − 1 on).
func groupByEpoch(regs []Registration, now time.Time, recentOnly bool) []epochGroup {
	e := protocol.Epoch(now)
	idx := map[[2]uint64]int{}
	var out []epochGroup
	for _, r := range regs {
		if recentOnly && r.Epoch+1 < e {
			continue
		}
		k := [2]uint64{uint64(r.Kind), r.Epoch}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, epochGroup{kind: r.Kind, epoch: r.Epoch})
		}
		out[i].regs = append(out[i].regs, r)
	}
	slices.SortStableFunc(out, func(a, b epochGroup) int {
		if a.kind != b.kind {
			return cmpKind(a.kind, b.kind)
		}
		return -cmpUint(a.epoch, b.epoch)
	})
	return out
}

// cmpKind orders pairwise registrations before intro ones.
func cmpKind(a, b byte) int {
	rank := func(k byte) int {
		if k == store.RegPair {
			return 0
		}
		return 1
	}
	return rank(a) - rank(b)
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SyncRound registers what is new and reads what is waiting at every
// mailbox, each kind and epoch of tags from its own fresh identity:
// pairwise tags first, then intro tags. The epochs older than the
// filters cover are read on the first round and then at most every
// OldEpochsEvery (SPEC "One identity, one epoch"). It reads at most
// MaxSyncBytes per mailbox and kind, and returns how many envelopes it
// delivered.
func (in *Inbox) SyncRound(ctx context.Context) (int, error) {
	if len(in.Mailboxes()) == 0 {
		return 0, nil
	}
	now := in.cfg.Now()
	in.mu.Lock()
	recentOnly := !in.lastSweep.IsZero() && now.Sub(in.lastSweep) < OldEpochsEvery && !now.Before(in.lastSweep)
	if !recentOnly {
		in.lastSweep = now
	}
	in.mu.Unlock()
	total := 0
	var errs []error
	failed := map[peer.ID]bool{}
	type budgetKey struct {
		mbx  peer.ID
		kind byte
	}
	budget := map[budgetKey]int{}
	for _, g := range groupByEpoch(in.cfg.Registrations(now), now, recentOnly) {
		h, err := in.cfg.NewHost()
		if err != nil {
			return total, err
		}
		c := NewClient2(ctx, h)
		for _, m := range in.Mailboxes() {
			bk := budgetKey{m.ID, g.kind}
			b, ok := budget[bk]
			if !ok {
				b = MaxSyncBytes
			}
			if b <= 0 || failed[m.ID] {
				continue // spent, or not answering this round
			}
			mctx, cancel := context.WithTimeout(ctx, syncMailboxTimeout)
			n, err := in.syncOne(mctx, c, m, g.regs, g.kind, now, &b)
			cancel()
			budget[bk] = b
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
// kind and epoch goes from its own fresh identity.
func (in *Inbox) Register(ctx context.Context) error {
	if len(in.Mailboxes()) == 0 {
		return nil // nowhere to register: the registrations are not even listed
	}
	defer in.registerEnded()
	now := in.cfg.Now()
	var errs []error
	for _, g := range groupByEpoch(in.cfg.Registrations(now), now, true) {
		var h host.Host
		for _, m := range in.Mailboxes() {
			toRegister, _ := in.split(g.regs, g.kind, m.ID, protocol.Epoch(now))
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

// registerEnded wakes the open filters after a Register.
func (in *Inbox) registerEnded() {
	in.mu.Lock()
	close(in.registered)
	in.registered = make(chan struct{})
	in.mu.Unlock()
}

// registerEnds is closed when the next Register ends.
func (in *Inbox) registerEnds() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.registered
}

// register registers regs at m and remembers what m took.
func (in *Inbox) register(ctx context.Context, c *Client2, m peer.AddrInfo, toRegister []Registration) error {
	for len(toRegister) > 0 {
		chunk := toRegister[:min(len(toRegister), MaxRegistrations)]
		toRegister = toRegister[len(chunk):]
		accepted, _, err := c.Register(ctx, m, chunk)
		in.mu.Lock()
		if h := in.health[m.ID]; h != nil {
			// Refused in part (a quota, say) counts as failed: nothing
			// waits long for what it may never take.
			h.regFailed = err != nil || accepted < len(chunk)
		}
		in.mu.Unlock()
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

// syncOne registers and reads one kind of tag at one mailbox, spending
// at most *budget bytes.
func (in *Inbox) syncOne(ctx context.Context, c *Client2, m peer.AddrInfo, regs []Registration, kind byte, now time.Time, budget *int) (int, error) {
	toRegister, tags := in.split(regs, kind, m.ID, protocol.Epoch(now))
	if err := in.register(ctx, c, m, toRegister); err != nil {
		return 0, err
	}
	delivered := 0
	for len(tags) > 0 && *budget > 0 {
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
		envs, next, charged, err := c.sync(ctx, m, chunk, cursor, *budget)
		*budget -= charged
		d, notTaken := in.deliverAll(m.ID, kind, envs, now)
		delivered += d
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

// deliverAll delivers envelopes of kind read from mbx and counts the new
// junk among the pairwise ones against it. It returns how many it handed
// over and the first error of one the owner could not take now.
func (in *Inbox) deliverAll(mbx peer.ID, kind byte, envs [][]byte, now time.Time) (int, error) {
	delivered, junk := 0, 0
	var notTaken error
	for _, env := range envs {
		d, j, err := in.deliver(mbx, env)
		switch {
		case d:
			delivered++
		case j && kind == store.RegPair && in.newJunk(mbx, env):
			junk++
		case err != nil && notTaken == nil:
			notTaken = err
		}
	}
	in.recordJunk(mbx, junk, now)
	return delivered, notTaken
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

// filterKey names one filter: a mailbox, a kind of tag and an epoch.
type filterKey struct {
	mbx   peer.ID
	kind  byte
	epoch uint64
}

// RunFilters keeps filters open at every mailbox until ctx ends, one for
// each kind of tag and each epoch that now ± FilterClockMargin touches
// (one epoch most of the day, two around midnight UTC), each from its own
// fresh identity; envelopes pushed go to Deliver. A filter that ends is
// opened again after filterRetry; what arrived meanwhile was not pushed,
// so the reopened filter calls Reopened (the owner runs a SyncRound), and
// the owner also runs one periodically, which reads what senders with
// clocks further off sealed.
func (in *Inbox) RunFilters(ctx context.Context) {
	var wg sync.WaitGroup
	running := map[filterKey]context.CancelFunc{}
	tick := time.NewTicker(filterRetry)
	defer tick.Stop()
	for {
		now := in.cfg.Now()
		want := map[filterKey]bool{}
		for _, m := range in.Mailboxes() {
			for _, kind := range []byte{store.RegPair, store.RegIntro} {
				for ep := protocol.Epoch(now.Add(-FilterClockMargin)); ep <= protocol.Epoch(now.Add(FilterClockMargin)); ep++ {
					k := filterKey{m.ID, kind, ep}
					want[k] = true
					if running[k] != nil {
						continue
					}
					fctx, cancel := context.WithCancel(ctx)
					running[k] = cancel
					wg.Go(func() { in.filterLoop(fctx, m, kind, ep) })
				}
			}
		}
		// Stop the filters of mailboxes no longer used and of past epochs.
		for k, cancel := range running {
			if !want[k] {
				cancel()
				delete(running, k)
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

// filterLoop holds one filter of kind and epoch at m open until ctx ends.
// Each filter after one that ended or failed to open asks for a round
// (Reopened): pushes stop while no filter is open, deposits do not.
func (in *Inbox) filterLoop(ctx context.Context, m peer.AddrInfo, kind byte, epoch uint64) {
	missed := false
	for ctx.Err() == nil {
		opened := func() {
			if missed && in.cfg.Reopened != nil {
				in.cfg.Logger.Debug("mailbox filter open again", "mailbox", m.ID)
				in.cfg.Reopened()
			}
		}
		if in.filterOnce(ctx, m, kind, epoch, opened) {
			missed = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(filterRetry):
		}
	}
}

// filterTags returns the tags of kind and epoch a filter names at now,
// at most MaxFilterTags.
func (in *Inbox) filterTags(kind byte, epoch uint64, now time.Time) [][32]byte {
	var tags [][32]byte
	for _, r := range in.cfg.Registrations(now) {
		if r.Kind == kind && r.Epoch == epoch && len(tags) < MaxFilterTags {
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

// filterOnce opens a filter at m and holds it until it ends or ctx does,
// calling opened once it is open. It reports whether it tried: false
// when there were no tags to name.
func (in *Inbox) filterOnce(ctx context.Context, m peer.AddrInfo, kind byte, epoch uint64, opened func()) bool {
	tags := in.filterTags(kind, epoch, in.cfg.Now())
	if len(tags) == 0 {
		return false
	}
	h, err := in.cfg.NewHost()
	if err != nil {
		in.cfg.Logger.Warn("mailbox filter: no host", "err", err)
		return true
	}
	defer h.Close()
	c := NewClient2(ctx, h)
	// What the filter ever named; a push under any other tag is the
	// mailbox's own junk, whatever the kind, and is not handed over.
	var amu sync.Mutex
	asked := map[[32]byte]bool{}
	ask := func(ts [][32]byte) {
		amu.Lock()
		for _, t := range ts {
			asked[t] = true
		}
		amu.Unlock()
	}
	ask(tags)
	f, err := c.Filter(ctx, m, tags, func(env []byte) {
		amu.Lock()
		ok := len(env) > protocol.TagSize && asked[envelopeTag(env)]
		amu.Unlock()
		if !ok {
			if in.newJunk(m.ID, env) {
				in.recordJunk(m.ID, 1, in.cfg.Now())
			}
			return
		}
		if _, junk, _ := in.deliver(m.ID, env); junk && kind == store.RegPair && in.newJunk(m.ID, env) {
			in.recordJunk(m.ID, 1, in.cfg.Now())
		}
	})
	if err != nil {
		in.cfg.Logger.Debug("mailbox filter not open", "mailbox", m.ID, "err", err)
		return true
	}
	defer f.Close()
	opened()
	// What was deposited under the tags before the filter named them
	// was never pushed: a peer may answer a new session between its
	// registration and this open.
	in.catchUp(ctx, c, m, kind, tags)
	tick := time.NewTicker(filterRefresh)
	defer tick.Stop()
	for {
		registered := in.registerEnds()
		select {
		case <-ctx.Done():
			return true
		case <-f.Done():
			in.cfg.Logger.Debug("mailbox filter ended", "mailbox", m.ID, "err", f.Err())
			return true
		case <-registered: // a new session's tags, say: read under them now
		case <-tick.C:
		}
		if next := in.filterTags(kind, epoch, in.cfg.Now()); len(next) > 0 && !sameTags(next, tags) {
			ask(next) // before the mailbox knows them
			if err := f.SetTags(next); err != nil {
				return true
			}
			in.catchUp(ctx, c, m, kind, added(tags, next))
			tags = next
		}
	}
}

// catchUp reads once, from the filter's identity, what m already holds
// under tags the filter has just started to name, and delivers it: a
// deposit made after their registration and before the filter named
// them was never pushed. It costs at most MaxSyncBytes, and junk counts
// against m as in a round.
func (in *Inbox) catchUp(ctx context.Context, c *Client2, m peer.AddrInfo, kind byte, tags [][32]byte) {
	budget := MaxSyncBytes
	for len(tags) > 0 && budget > 0 {
		chunk := tags[:min(len(tags), MaxQueryTags)]
		tags = tags[len(chunk):]
		envs, _, charged, err := c.sync(ctx, m, chunk, nil, budget)
		budget -= charged
		in.deliverAll(m.ID, kind, envs, in.cfg.Now())
		if err != nil {
			// What is left is read by the next round.
			in.cfg.Logger.Debug("mailbox filter catch-up", "mailbox", m.ID, "err", err)
			return
		}
	}
}

// added returns the tags of next that are not in prev.
func added(prev, next [][32]byte) [][32]byte {
	had := make(map[[32]byte]bool, len(prev))
	for _, t := range prev {
		had[t] = true
	}
	var out [][32]byte
	for _, t := range next {
		if !had[t] {
			out = append(out, t)
		}
	}
	return out
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

// PushAll pushes deposit to each of mbxs at once from the client's host
// and returns how many acknowledged it (stored, or held already) and the
// refusals and failures of the others.
func (c *Client2) PushAll(ctx context.Context, mbxs []peer.AddrInfo, deposit []byte) (int, error) {
	errs := make([]error, len(mbxs))
	var wg sync.WaitGroup
	for i, m := range mbxs {
		wg.Go(func() {
			if err := c.Push(ctx, m, deposit); err != nil {
				errs[i] = fmt.Errorf("mailbox %s: %w", m.ID, err)
			}
		})
	}
	wg.Wait()
	stored := 0
	for _, err := range errs {
		if err == nil {
			stored++
		}
	}
	return stored, errors.Join(errs...)
}
