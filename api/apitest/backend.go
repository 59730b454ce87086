// Package apitest provides an in-memory api.Backend for tests of the
// control API's users: the command-line tool, bots and the API itself.
package apitest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sotto-im/sotto/api"
)

// InvitePrefix starts every invite this backend issues or accepts.
const InvitePrefix = "sotto://test/"

// subBuffer is the capacity of each subscriber's channel.
const subBuffer = 64

// Backend is an in-memory api.Backend. Its zero value is not usable; call
// New. It is safe for concurrent use.
type Backend struct {
	mu       sync.Mutex
	id       api.Identity
	contacts []api.Contact
	messages []api.Message
	seq      uint64
	read     map[string]uint64     // read marks by contact name
	groups   map[string]*testGroup // by ID
	subs     map[*subscriber]struct{}
	changed  chan struct{} // closed and replaced when subs changes
	now      func() time.Time
}

type subscriber struct {
	ctx context.Context
	ch  chan api.Event
}

var _ api.Backend = (*Backend)(nil)

// New returns a backend for a user called name, whose clock is fixed at a
// constant instant so that output is reproducible.
func New(name string) *Backend {
	sum := sha256.Sum256([]byte(name))
	return &Backend{
		id: api.Identity{
			PeerID:  "12D3KooW" + hex.EncodeToString(sum[:8]),
			Account: hex.EncodeToString(sum[8:16]),
			Addrs:   []string{"/ip4/127.0.0.1/tcp/4001"},
			Name:    name,
		},
		subs:    make(map[*subscriber]struct{}),
		changed: make(chan struct{}),
		now:     func() time.Time { return time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC) },
	}
}

// InviteFor returns the invite link a user called name would hand out.
func InviteFor(name string) string { return InvitePrefix + name }

// Status implements api.Backend.
func (b *Backend) Status(ctx context.Context) (api.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pending := 0
	for _, m := range b.messages {
		if m.Direction == api.DirectionOut && m.State == api.StateQueued {
			pending++
		}
	}
	return api.Status{PeerID: b.id.PeerID, Addrs: slices.Clone(b.id.Addrs), OutboxPending: pending}, nil
}

// Identity implements api.Backend.
func (b *Backend) Identity(ctx context.Context) (api.Identity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := b.id
	id.Addrs = slices.Clone(id.Addrs)
	return id, nil
}

// Invite implements api.Backend.
func (b *Backend) Invite(ctx context.Context) (string, error) {
	return InviteFor(b.id.Name), nil
}

// Contacts implements api.Backend.
func (b *Backend) Contacts(ctx context.Context) ([]api.Contact, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.contacts), nil
}

// AddContact implements api.Backend. Invites are InvitePrefix followed by
// the peer's name.
func (b *Backend) AddContact(ctx context.Context, name, invite string) (api.Contact, error) {
	peer, ok := strings.CutPrefix(invite, InvitePrefix)
	if !ok || peer == "" {
		return api.Contact{}, api.BadInvite("expected " + InvitePrefix + "NAME")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.find(name) >= 0 {
		return api.Contact{}, api.ContactExists(name)
	}
	sum := sha256.Sum256([]byte(peer))
	c := api.Contact{
		Name:    name,
		Account: hex.EncodeToString(sum[8:16]),
		PeerID:  "12D3KooW" + hex.EncodeToString(sum[:8]),
	}
	b.contacts = append(b.contacts, c)
	return c, nil
}

// VerifyContact implements api.Backend.
func (b *Backend) VerifyContact(ctx context.Context, name string, confirm bool) (api.Verification, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := b.find(name)
	if i < 0 {
		return api.Verification{}, b.unknown(name)
	}
	if confirm {
		b.contacts[i].Verified = true
		b.contacts[i].KeyChanged = false
	}
	return api.Verification{
		Contact:      name,
		SafetyNumber: "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890",
		Verified:     b.contacts[i].Verified,
	}, nil
}

// RejectKeyChange implements api.Backend: a pending key change is
// dropped; without one it is a bad request, as on a node.
func (b *Backend) RejectKeyChange(ctx context.Context, name string) (api.Verification, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := b.find(name)
	if i < 0 {
		return api.Verification{}, b.unknown(name)
	}
	if !b.contacts[i].KeyChanged {
		return api.Verification{}, api.BadRequest("no new key awaits a decision for this contact; nothing to reject: %s", name)
	}
	b.contacts[i].KeyChanged = false
	return api.Verification{
		Contact:      name,
		SafetyNumber: "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890",
		Verified:     b.contacts[i].Verified,
	}, nil
}

// Send implements api.Backend: the message is queued and announced with a
// message event.
func (b *Backend) Send(ctx context.Context, contact, text string) (api.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.find(contact) < 0 {
		return api.Message{}, b.unknown(contact)
	}
	m := b.append(api.Message{Contact: contact, Direction: api.DirectionOut, Text: text, State: api.StateQueued})
	b.publish(api.Event{Type: api.EventMessage, Message: &m})
	return m, nil
}

// Messages implements api.Backend.
func (b *Backend) Messages(ctx context.Context, q api.MessageQuery) ([]api.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q.Contact != "" && b.find(q.Contact) < 0 {
		return nil, b.unknown(q.Contact)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = api.DefaultMessageLimit
	}
	var out []api.Message
	for _, m := range b.messages {
		if m.Seq <= q.After || (q.Contact != "" && m.Contact != q.Contact) || (q.Before != 0 && m.Seq >= q.Before) {
			continue
		}
		out = append(out, m)
	}
	if len(out) > limit {
		if q.Before != 0 {
			out = out[len(out)-limit:] // the newest before the bound
		} else {
			out = out[:limit]
		}
	}
	return out, nil
}

// Conversations implements api.Backend.
func (b *Backend) Conversations(ctx context.Context) ([]api.Conversation, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]api.Conversation, 0, len(b.contacts))
	for _, c := range b.contacts {
		conv := api.Conversation{Contact: c, ReadSeq: b.read[c.Name]}
		for _, m := range b.messages {
			if m.Contact != c.Name {
				continue
			}
			conv.Last = &m
			if m.Direction == api.DirectionIn && m.Seq > conv.ReadSeq && conv.Unread < api.MaxUnread {
				conv.Unread++
			}
		}
		out = append(out, conv)
	}
	last := func(c api.Conversation) uint64 {
		if c.Last == nil {
			return 0
		}
		return c.Last.Seq
	}
	slices.SortStableFunc(out, func(a, b api.Conversation) int {
		switch {
		case a.Contact.Request != b.Contact.Request && a.Contact.Request:
			return -1
		case a.Contact.Request != b.Contact.Request:
			return 1
		case last(a) != last(b) && last(a) > last(b):
			return -1
		case last(a) != last(b):
			return 1
		}
		return strings.Compare(a.Contact.Name, b.Contact.Name)
	})
	return out, nil
}

// MarkRead implements api.Backend.
func (b *Backend) MarkRead(ctx context.Context, contact string, seq uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.find(contact) < 0 {
		return b.unknown(contact)
	}
	if b.read == nil {
		b.read = map[string]uint64{}
	}
	b.read[contact] = max(b.read[contact], seq)
	return nil
}

// Subscribe implements api.Backend.
func (b *Backend) Subscribe(ctx context.Context) (<-chan api.Event, error) {
	s := &subscriber{ctx: ctx, ch: make(chan api.Event, subBuffer)}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.notify()
	b.mu.Unlock()
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		delete(b.subs, s)
		close(s.ch)
		b.notify()
		b.mu.Unlock()
	})
	return s.ch, nil
}

// Subscribers returns the number of live subscriptions.
func (b *Backend) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// WaitSubscribers waits until there are exactly n live subscriptions or ctx
// ends.
func (b *Backend) WaitSubscribers(ctx context.Context, n int) error {
	for {
		b.mu.Lock()
		got, changed := len(b.subs), b.changed
		b.mu.Unlock()
		if got == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("apitest: %d subscribers, want %d: %w", got, n, ctx.Err())
		}
	}
}

// notify wakes WaitSubscribers. b.mu is held.
func (b *Backend) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// Receive records an incoming message from contact, adding the contact as
// a contact request if unknown, and announces it with a message event.
func (b *Backend) Receive(contact, text string, via api.Via) api.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.find(contact) < 0 {
		c := api.Contact{Name: contact, Request: true}
		b.contacts = append(b.contacts, c)
		b.publish(api.Event{Type: api.EventContactRequest, Contact: &c})
	}
	m := b.append(api.Message{Contact: contact, Direction: api.DirectionIn, Text: text, Via: via})
	b.publish(api.Event{Type: api.EventMessage, Message: &m})
	return m
}

// SetState changes an outgoing message's state and announces it with a
// state event.
func (b *Backend) SetState(id string, st api.State, storedAt int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.messages {
		if b.messages[i].ID == id {
			b.messages[i].State = st
			b.messages[i].StoredAt = storedAt
			m := b.messages[i]
			b.publish(api.Event{Type: api.EventState, Message: &m})
			return nil
		}
	}
	return fmt.Errorf("apitest: no message %q", id)
}

// Publish sends ev to every subscriber.
func (b *Backend) Publish(ev api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.publish(ev)
}

// publish delivers ev to every subscriber, waiting for room in each
// channel unless that subscription ends. b.mu is held.
func (b *Backend) publish(ev api.Event) {
	for s := range b.subs {
		select {
		case s.ch <- ev:
		case <-s.ctx.Done():
		}
	}
}

func (b *Backend) append(m api.Message) api.Message {
	b.seq++
	m.Seq = b.seq
	m.ID = fmt.Sprintf("m%04d", b.seq)
	m.SentAt = b.now()
	b.messages = append(b.messages, m)
	return m
}

func (b *Backend) find(name string) int {
	return slices.IndexFunc(b.contacts, func(c api.Contact) bool { return c.Name == name })
}

func (b *Backend) unknown(name string) error {
	names := make([]string, 0, len(b.contacts))
	for _, c := range b.contacts {
		names = append(names, c.Name)
	}
	return api.UnknownContact(name, names)
}
