package api

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/sotto-im/sotto/node"
)

// NodeBackend returns the Backend of a node, opened or running. Message
// cursors (Message.Seq, MessageQuery.After) are the store's global
// sequence numbers, strictly increasing per data directory, whether or not
// the query is filtered by contact, so that one cursor serves listing and
// the event stream alike.
func NodeBackend(n *node.Node, opts ...NodeOption) Backend {
	b := &nodeBackend{n: n}
	for _, o := range opts {
		o(b)
	}
	return b
}

type nodeBackend struct {
	n     *node.Node
	marks readMarks
}

var _ Backend = (*nodeBackend)(nil)

func (b *nodeBackend) Status(ctx context.Context) (Status, error) {
	st, err := b.n.Status()
	if err != nil {
		return Status{}, nodeError(err)
	}
	out := Status{
		PeerID:          st.PeerID,
		Addrs:           nonNil(st.Addrs),
		ConnectedPeers:  st.ConnectedPeers,
		OutboxPending:   st.OutboxPending,
		Requests:        st.Requests,
		RequestsDropped: st.RequestsDropped,

		DepositsAccepted:  st.DepositsAccepted,
		EnvelopesServed:   st.EnvelopesServed,
		SyncsRun:          st.SyncsRun,
		MessagesSent:      st.MessagesSent,
		MessagesReceived:  st.MessagesReceived,
		EnvelopesRejected: st.EnvelopesRejected,
		RelayReopens:      st.RelayReopens,
	}
	if st.Mailbox != nil {
		out.Mailbox = &MailboxStatus{Envelopes: int(st.Mailbox.Envelopes), Bytes: st.Mailbox.Bytes}
	}
	out.Reachability, out.DHTMode, out.Relays = st.Reachability, st.DHTMode, st.Relays
	s := st.Store
	out.Store = StoreStatus{Encrypted: s.Encrypted, FileBytes: s.FileBytes, Contacts: s.Contacts, Messages: s.Messages,
		Sessions: s.Sessions, Prekeys: s.Prekeys, Outbox: s.Outbox, DedupMarks: s.DedupMarks,
		EnvelopeTokens: s.EnvelopeTokens, ReplayMarks: s.ReplayMarks, RewriteDue: s.RewriteDue, Problems: s.Problems}
	d := b.n.GroupStats()
	out.GroupDrops = GroupDrops{Malformed: d.Malformed, NotMember: d.NotMember, Refused: d.Refused,
		Replay: d.Replay, Forged: d.Forged, Unknown: d.Unknown}
	out.Connections = []Connection{}
	for _, c := range st.Connections {
		dir := "in"
		if c.Outbound {
			dir = "out"
		}
		out.Connections = append(out.Connections, Connection{Peer: c.Peer, Addr: c.Addr, Relayed: c.Relayed, Direction: dir})
	}
	return out, nil
}

func (b *nodeBackend) Identity(ctx context.Context) (Identity, error) {
	id := b.n.Identity()
	out := Identity{
		PeerID:  id.PeerID,
		Account: id.Fingerprint,
		Name:    id.Name,
		Addrs:   []string{},
	}
	for _, a := range b.n.Addrs() {
		out.Addrs = append(out.Addrs, a.String())
	}
	return out, nil
}

func (b *nodeBackend) Invite(ctx context.Context) (string, error) {
	inv, err := b.n.Invite()
	if err != nil {
		return "", nodeError(err)
	}
	return inv, nil
}

func (b *nodeBackend) Contacts(ctx context.Context) ([]Contact, error) {
	cs, err := b.n.Contacts()
	if err != nil {
		return nil, nodeError(err)
	}
	out := make([]Contact, 0, len(cs))
	for _, c := range cs {
		out = append(out, contactOf(c))
	}
	return out, nil
}

func (b *nodeBackend) AddContact(ctx context.Context, name, invite string) (Contact, error) {
	c, err := b.n.AddContact(name, invite)
	if err != nil {
		return Contact{}, nodeError(err)
	}
	return contactOf(c), nil
}

func (b *nodeBackend) VerifyContact(ctx context.Context, name string, confirm bool) (Verification, error) {
	v, err := b.n.VerifyContact(name, confirm)
	if err != nil {
		return Verification{}, nodeError(err)
	}
	return verificationOf(v), nil
}

func verificationOf(v node.Verification) Verification {
	return Verification{
		Contact:      v.Contact.Name,
		SafetyNumber: v.SafetyNumber,
		Verified:     v.Contact.Verified && !v.Contact.KeyChanged,
		KeyChanged:   v.KeyChanged,
	}
}

func (b *nodeBackend) RejectKeyChange(ctx context.Context, name string) (Verification, error) {
	v, err := b.n.RejectKeyChange(name)
	if err != nil {
		return Verification{}, nodeError(err)
	}
	return verificationOf(v), nil
}

func (b *nodeBackend) Send(ctx context.Context, contact, text string) (Message, error) {
	m, err := b.n.Send(ctx, contact, text)
	if err != nil {
		return Message{}, nodeError(err)
	}
	return b.message(m, nil), nil
}

// Messages lists messages after the global cursor q.After, of one
// conversation or of all.
func (b *nodeBackend) Messages(ctx context.Context, q MessageQuery) ([]Message, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultMessageLimit
	}
	limit = min(limit, MaxMessageLimit)
	names, err := b.names()
	if err != nil {
		return nil, nodeError(err)
	}
	page := b.pager(q.Contact, names)
	var out []Message
	if q.Before != 0 {
		out, err = newestBefore(page, q.After, q.Before, limit)
	} else {
		out, err = page(q.After, limit)
	}
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []Message{}
	}
	return out, nil
}

// pager pages the messages of the named contact (all when empty) forwards.
func (b *nodeBackend) pager(contact string, names map[[32]byte]string) pageFunc {
	return func(after uint64, limit int) ([]Message, error) {
		ms, err := b.n.Messages(contact, after, limit)
		if err != nil {
			return nil, nodeError(err)
		}
		out := make([]Message, 0, len(ms))
		for _, m := range ms {
			out = append(out, b.message(m, names))
		}
		return out, nil
	}
}

// Conversations summarises each contact's conversation; unread counts
// come from the read marks.
func (b *nodeBackend) Conversations(ctx context.Context) ([]Conversation, error) {
	cs, err := b.Contacts(ctx)
	if err != nil {
		return nil, err
	}
	names, err := b.names()
	if err != nil {
		return nil, nodeError(err)
	}
	return conversations(ctx, cs, func(name string) pageFunc { return b.pager(name, names) }, &b.marks)
}

// MarkRead moves the contact's read mark forwards.
func (b *nodeBackend) MarkRead(ctx context.Context, contact string, seq uint64) error {
	c, err := b.n.Contact(contact)
	if err != nil {
		return nodeError(err)
	}
	return b.marks.advance(c.Fingerprint, seq)
}

// Subscribe converts the node's events. A node event for a message that
// was just queued becomes a message event: it is the message's first
// appearance.
func (b *nodeBackend) Subscribe(ctx context.Context) (<-chan Event, error) {
	in := b.n.Subscribe(ctx)
	out := make(chan Event, eventQueue)
	go func() {
		defer close(out)
		for ev := range in {
			e, ok := b.event(ev)
			if !ok {
				continue
			}
			select {
			case out <- e:
			case <-ctx.Done():
				for range in { // the node closes in once ctx ends
				}
				return
			}
		}
	}()
	return out, nil
}

// eventQueue is the length of a subscriber's queue of converted events.
const eventQueue = 64

func (b *nodeBackend) event(ev node.Event) (Event, bool) {
	switch ev.Type {
	case node.EventMessage, node.EventState:
		if ev.Message == nil {
			return Event{}, false
		}
		m := b.message(*ev.Message, nil)
		t := EventMessage
		if ev.Type == node.EventState && ev.Message.State != node.StateQueued {
			t = EventState
		}
		return Event{Type: t, Message: &m}, true
	case node.EventContactRequest, node.EventKeyChange:
		if ev.Contact == nil {
			return Event{}, false
		}
		c := contactOf(*ev.Contact)
		t := EventContactRequest
		if ev.Type == node.EventKeyChange {
			t = EventKeyChange
		}
		return Event{Type: t, Contact: &c}, true
	case node.EventGroupMessage:
		if ev.GroupMessage == nil {
			return Event{}, false
		}
		m := groupMessageOf(*ev.GroupMessage)
		return Event{Type: EventGroupMessage, GroupMessage: &m}, true
	case node.EventGroup:
		if ev.Group == nil {
			return Event{}, false
		}
		g := groupOf(*ev.Group)
		return Event{Type: EventGroup, Group: &g}, true
	case node.EventSyncProgress:
		if ev.Sync == nil {
			return Event{}, false
		}
		return Event{Type: EventSyncProgress, Sync: &SyncProgress{
			Mailboxes: ev.Sync.Mailboxes, Envelopes: ev.Sync.Envelopes, Done: ev.Sync.Done,
		}}, true
	}
	return Event{}, false
}

// names maps account keys to contact names.
func (b *nodeBackend) names() (map[[32]byte]string, error) {
	cs, err := b.n.Contacts()
	if err != nil {
		return nil, err
	}
	names := make(map[[32]byte]string, len(cs))
	for _, c := range cs {
		names[c.Account] = c.Name
	}
	return names, nil
}

// message converts a message. The contact's name comes from names when
// given, else from the node; a message of an account that is no longer a
// contact shows the account's fingerprint.
func (b *nodeBackend) message(m node.Message, names map[[32]byte]string) Message {
	name, ok := names[m.Contact]
	if names == nil {
		if c, err := b.n.ContactByAccount(m.Contact); err == nil {
			name, ok = c.Name, true
		}
	}
	if !ok {
		name = node.Fingerprint(m.Contact)
	}
	out := Message{
		ID:      hex.EncodeToString(m.ID[:]),
		Contact: name,
		Text:    m.Text(),
		SentAt:  m.SentAt.UTC(),
		Seq:     m.GlobalSeq,

		SessionReset: m.SessionReset,
		Damaged:      m.Damaged,
	}
	switch m.Via {
	case node.ViaDirect:
		out.Via = ViaDirect
	case node.ViaRelay:
		out.Via = ViaRelay
	case node.ViaMailbox:
		out.Via = ViaMailbox
	}
	switch m.Direction {
	case node.Outgoing:
		out.Direction = DirectionOut
		out.State = stateOf(m.State)
		out.StoredAt = m.StoredAt
		switch m.Failure {
		case node.FailExpired:
			out.FailReason = FailExpired
		case node.FailKeyChanged:
			out.FailReason = FailKeyChanged
		}
		if out.Via == "" && m.StoredAt > 0 {
			out.Via = ViaMailbox // stored at mailboxes, not acked by a stream
		}
	default:
		out.Direction = DirectionIn
	}
	return out
}

func stateOf(s node.MessageState) State {
	switch s {
	case node.StateQueued:
		return StateQueued
	case node.StateSent:
		return StateSent
	case node.StateStored:
		return StateStored
	case node.StateDelivered:
		return StateDelivered
	case node.StateFailed:
		return StateFailed
	}
	return State(s.String())
}

func contactOf(c node.Contact) Contact {
	return Contact{
		Name:       c.Name,
		Account:    c.Fingerprint,
		PeerID:     c.PeerID,
		Verified:   c.Verified,
		KeyChanged: c.KeyChanged,
		Request:    c.Request,
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// nodeError turns the node's and the store's errors into errors for the
// API's user: conditions the user can correct get their code, and the
// package prefix goes, since the message is shown as it is.
func nodeError(err error) error {
	var unknown *node.UnknownContactError
	switch {
	case errors.As(err, &unknown):
		return UnknownContact(unknown.Name, unknown.Known)
	case errors.Is(err, node.ErrInviteFormat), errors.Is(err, node.ErrInviteChecksum),
		errors.Is(err, node.ErrInviteVersion), errors.Is(err, node.ErrSelfInvite),
		strings.HasPrefix(err.Error(), "node: the invite"):
		return BadInvite(userText(err))
	case errors.Is(err, node.ErrDuplicate), errors.Is(err, node.ErrNameTaken),
		strings.HasPrefix(err.Error(), "node: this invite's device belongs to"):
		return &Error{Code: CodeContactExists, Message: userText(err)}
	case errors.Is(err, node.ErrKeyChangePending):
		return &Error{Code: CodeKeyChanged, Message: userText(err)}
	case errors.Is(err, node.ErrInvalidName), errors.Is(err, node.ErrEmptyMessage),
		errors.Is(err, node.ErrMessageTooLarge), errors.Is(err, node.ErrTooLarge),
		strings.HasPrefix(err.Error(), "node: the message"):
		return BadRequest("%s", userText(err))
	case errors.Is(err, node.ErrNoKeyChange):
		return BadRequest("%s", userText(err))
	case errors.Is(err, node.ErrLocked), errors.Is(err, node.ErrNotRunning):
		return &Error{Code: CodeUnavailable, Message: userText(err)}
	}
	return err
}

// userText is err's message without the leading package prefix.
func userText(err error) string {
	s := err.Error()
	for _, p := range []string{"node: ", "invite: ", "store: ", "duplicate: "} {
		s = strings.TrimPrefix(s, p)
	}
	return s
}
