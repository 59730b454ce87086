package node

import (
	"context"
	"slices"
	"sync"

	"github.com/sotto-im/sotto/protocol/group"
)

// EventType says what an Event reports.
type EventType uint8

// Event types.
const (
	// EventMessage: a message was received and stored (Message set).
	EventMessage EventType = iota + 1
	// EventState: an outgoing message changed state (Message set).
	EventState
	// EventContactRequest: a message arrived from an account that is not a
	// contact; it is kept under a new request contact (Contact set).
	EventContactRequest
	// EventKeyChange: a contact presented a new identity key that awaits
	// the user's decision (Contact set).
	EventKeyChange
	// EventSyncProgress: mailbox sync progress (Sync set).
	EventSyncProgress
	// EventGroupMessage: a group message was stored, received or sent
	// (GroupMessage set).
	EventGroupMessage
	// EventGroup: a group was joined or changed (Group set).
	EventGroup
)

// SyncProgress reports a mailbox sync.
type SyncProgress struct {
	Mailboxes int
	Envelopes int
	Done      bool
}

// Event is one entry of the node's event feed. Events are published only
// after the change they report has been committed.
type Event struct {
	Type    EventType
	Message *Message
	Contact *Contact
	Sync    *SyncProgress

	GroupMessage *GroupMessage
	Group        *Group
}

// feed fans events out to subscribers. A subscriber that falls more than
// eventBuffer events behind loses the oldest ones (everything is in the
// store; the feed is a notification, not the record).
type feed struct {
	mu     sync.Mutex
	subs   map[chan Event]struct{}
	closed bool
}

func newFeed() *feed { return &feed{subs: make(map[chan Event]struct{})} }

func (f *feed) publish(evs ...Event) {
	// Group content carried by a pairwise session is not shown in the
	// conversation (SPEC.md, "Group content on a pairwise session").
	evs = slices.DeleteFunc(slices.Clone(evs), func(e Event) bool { return e.Message != nil && group.IsContent(e.Message.Type) })
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		for _, ev := range evs {
			select {
			case ch <- ev:
			default:
				select { // drop the oldest, keep the newest
				case <-ch:
				default:
				}
				select {
				case ch <- ev:
				default:
				}
			}
		}
	}
}

func (f *feed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for ch := range f.subs {
		close(ch)
		delete(f.subs, ch)
	}
}

// Subscribe returns a channel of events that is closed when ctx ends or
// the node closes.
func (n *Node) Subscribe(ctx context.Context) <-chan Event {
	ch := make(chan Event, eventBuffer)
	f := n.events
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	drop := func() {
		f.mu.Lock()
		if _, ok := f.subs[ch]; ok {
			delete(f.subs, ch)
			close(ch)
		}
		f.mu.Unlock()
	}
	if !n.spawn(func() {
		select {
		case <-ctx.Done():
		case <-n.ctx.Done():
		}
		drop()
	}) {
		drop() // closed
	}
	return ch
}
