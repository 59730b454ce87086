package api

import (
	"context"
	"time"
)

// Backend is what the control API exposes. A running node implements it;
// so does Client, over the socket.
//
// Methods return *Error values (see errors.go) for conditions a caller can
// act on, such as an unknown contact or a malformed invite; any other error
// is reported as an internal error.
type Backend interface {
	// Status reports the node's network and queue state.
	Status(ctx context.Context) (Status, error)
	// Identity returns this device's peer ID, account fingerprint,
	// listen addresses and display name.
	Identity(ctx context.Context) (Identity, error)
	// Invite returns an invite link ("sotto://...") that others pass to
	// AddContact.
	Invite(ctx context.Context) (string, error)
	// Contacts lists the known contacts, including pending contact requests.
	Contacts(ctx context.Context) ([]Contact, error)
	// AddContact adds a contact under a local name from an invite link.
	AddContact(ctx context.Context, name, invite string) (Contact, error)
	// VerifyContact returns the safety number shared with the named
	// contact; with confirm set it also marks the contact verified.
	VerifyContact(ctx context.Context, name string, confirm bool) (Verification, error)
	// RejectKeyChange drops the new identity key the named contact
	// presented and keeps the old one; it returns the verification of the
	// key kept.
	RejectKeyChange(ctx context.Context, name string) (Verification, error)
	// Send queues a text message to the named contact and returns once
	// it is durably in the outbox.
	Send(ctx context.Context, contact, text string) (Message, error)
	// Messages returns messages in ascending Seq order, filtered and paged
	// by q.
	Messages(ctx context.Context, q MessageQuery) ([]Message, error)
	// Conversations lists one entry per contact and contact request:
	// message requests first, then by most recent message.
	Conversations(ctx context.Context) ([]Conversation, error)
	// MarkRead records that the user has read the named contact's
	// conversation up to and including the message with Seq seq; a mark
	// never moves back.
	MarkRead(ctx context.Context, contact string, seq uint64) error
	// Subscribe streams events until ctx ends, then closes the channel.
	Subscribe(ctx context.Context) (<-chan Event, error)

	// Groups lists this account's groups, by name, including those it
	// left.
	Groups(ctx context.Context) ([]Group, error)
	// GroupInfo returns the group with ID id (hex, see ParseGroupID).
	GroupInfo(ctx context.Context, id string) (Group, error)
	// CreateGroup creates a group named name with the named contacts as
	// members; this account is its first admin.
	CreateGroup(ctx context.Context, name string, members []string) (Group, error)
	// AddToGroup adds the named contacts to the group (admins only).
	AddToGroup(ctx context.Context, id string, members []string) (Group, error)
	// RemoveFromGroup removes the named contact from the group (admins
	// only); the group is re-keyed so that it reads nothing sent later.
	RemoveFromGroup(ctx context.Context, id, member string) (Group, error)
	// LeaveGroup leaves the group.
	LeaveGroup(ctx context.Context, id string) (Group, error)
	// RenameGroup renames the group (admins only).
	RenameGroup(ctx context.Context, id, name string) (Group, error)
	// PromoteInGroup makes the named member an admin (admins only).
	PromoteInGroup(ctx context.Context, id, member string) (Group, error)
	// SendGroup sends a text message to the group.
	SendGroup(ctx context.Context, id, text string) (GroupMessage, error)
	// GroupMessages returns the group's messages in display order
	// (senders' order, replies after what they answer), after the first
	// skip, at most limit of them (0 means DefaultGroupMessageLimit).
	GroupMessages(ctx context.Context, id string, skip, limit int) ([]GroupMessage, error)
}

// Status is a snapshot of the node's state.
type Status struct {
	PeerID         string   `json:"peer_id"`
	Addrs          []string `json:"addrs"`
	ConnectedPeers int      `json:"connected_peers"`
	OutboxPending  int      `json:"outbox_pending"`
	// Requests is how many message requests wait; RequestsDropped how
	// many were dropped, oldest first, over the node's limit.
	Requests        int            `json:"requests"`
	RequestsDropped uint64         `json:"requests_dropped"`
	Mailbox         *MailboxStatus `json:"mailbox,omitempty"` // set when the node serves as a mailbox
	// Counters since the node's process opened the data directory (they
	// start from zero again when it restarts): envelopes its mailbox newly
	// stored (deposits accepted) and returned to syncing clients
	// (envelopes served), mailbox syncs it ran as a client, messages
	// sent (queued by Send) and messages received (stored; a batch whose
	// commit failed is counted again when its senders retry).
	DepositsAccepted uint64 `json:"deposits_accepted"`
	EnvelopesServed  uint64 `json:"envelopes_served"`
	SyncsRun         uint64 `json:"syncs_run"`
	MessagesSent     uint64 `json:"messages_sent"`
	MessagesReceived uint64 `json:"messages_received"`
	// EnvelopesRejected counts envelopes refused as malformed.
	EnvelopesRejected uint64 `json:"envelopes_rejected"`
	// RelayReopens counts relayed connections to contacts closed and
	// dialled again so that hole punching would run on them.
	RelayReopens uint64 `json:"relay_reopens"`
	// Reachability is "public", "private" (others reach this node through
	// Relays) or "unknown"; DHTMode is "server" or "client".
	Reachability string       `json:"reachability"`
	Relays       []string     `json:"relays,omitempty"`
	DHTMode      string       `json:"dht_mode"`
	Connections  []Connection `json:"connections"`
	Store        StoreStatus  `json:"store"`
	// GroupDrops counts group content dropped or refused since the node
	// started, by reason.
	GroupDrops GroupDrops `json:"group_drops"`
}

// StoreStatus describes the data directory's store: whether it is
// encrypted (a passphrase was given), the file's size, and its records.
type StoreStatus struct {
	Encrypted      bool  `json:"encrypted"`
	FileBytes      int64 `json:"file_bytes"`
	Contacts       int   `json:"contacts"`
	Messages       int   `json:"messages"`
	Sessions       int   `json:"sessions"`
	Prekeys        int   `json:"prekeys"`
	Outbox         int   `json:"outbox"`
	DedupMarks     int   `json:"dedup_marks"`
	EnvelopeTokens int   `json:"envelope_tokens"`
	ReplayMarks    int   `json:"replay_marks"`
	// RewriteDue: a deleted secret is still in freed pages of the file
	// until the next rewrite (hourly while running, at stop, or compact).
	RewriteDue bool `json:"rewrite_due"`
	// Problems are what the quick check found when the node opened its
	// store (bbolt's pages, index counts), then the damaged records that
	// listings left out since; `sotto check`, with the node stopped,
	// names each damaged record.
	Problems []string `json:"problems,omitempty"`
}

// GroupDrops counts group content a node dropped or refused, by reason:
// malformed; from a non-member; a change the author may not make (or
// one that breaks the group's rules); a replay; a bad signature; for a
// group the node does not know.
type GroupDrops struct {
	Malformed uint64 `json:"malformed"`
	NotMember uint64 `json:"not_member"`
	Refused   uint64 `json:"refused"`
	Replay    uint64 `json:"replay"`
	Forged    uint64 `json:"forged"`
	Unknown   uint64 `json:"unknown"`
}

// Connection is one open connection of the node.
type Connection struct {
	Peer      string `json:"peer"`
	Addr      string `json:"addr"`
	Relayed   bool   `json:"relayed"`
	Direction string `json:"direction"` // "in" or "out"
}

// MailboxStatus describes what a node serving as a mailbox holds for others.
type MailboxStatus struct {
	Envelopes int   `json:"envelopes"`
	Bytes     int64 `json:"bytes"`
}

// Identity is this device's public identity.
type Identity struct {
	PeerID  string   `json:"peer_id"`
	Account string   `json:"account"` // the account key's fingerprint
	Addrs   []string `json:"addrs"`
	Name    string   `json:"name"`
}

// Contact is a known correspondent.
type Contact struct {
	Name    string `json:"name"`
	Account string `json:"account"` // fingerprint of the contact's account key
	PeerID  string `json:"peer_id"`
	// Verified is set once the safety number was confirmed.
	Verified bool `json:"verified"`
	// KeyChanged is set when the contact's account key differs from the
	// one seen first; the user should verify again.
	KeyChanged bool `json:"key_changed"`
	// Request is set for someone who wrote to us but whom we did not add.
	Request bool `json:"request"`
}

// Verification is the result of comparing keys with a contact.
type Verification struct {
	Contact      string `json:"contact"`
	SafetyNumber string `json:"safety_number"`
	Verified     bool   `json:"verified"`
	// KeyChanged is set when the contact presented a new key that awaits
	// confirmation; SafetyNumber is then the new key's.
	KeyChanged bool `json:"key_changed,omitempty"`
}

// Direction tells whether a message was received or sent.
type Direction string

// Message directions.
const (
	DirectionIn  Direction = "in"
	DirectionOut Direction = "out"
)

// State is the delivery state of an outgoing message.
type State string

// Delivery states of outgoing messages, in the order they are reached.
const (
	StateQueued    State = "queued"    // in the outbox, not yet on the wire
	StateSent      State = "sent"      // acknowledged by the recipient's device
	StateStored    State = "stored"    // acknowledged by StoredAt mailboxes
	StateDelivered State = "delivered" // end-to-end receipt received
	StateFailed    State = "failed"    // given up on
)

// FailReason says why an outgoing message failed.
type FailReason string

// Reasons for a failed message.
const (
	// FailExpired: neither the contact's device nor a mailbox took the
	// message before it expired; it is no longer sent.
	FailExpired FailReason = "expired"
	// FailKeyChanged: the contact's new key was accepted while the
	// message waited; it was queued again, as a new message to the new
	// key, and this copy stays with the old key (its Contact is the old
	// key's fingerprint).
	FailKeyChanged FailReason = "key_changed"
)

// Via tells which path a message took: for an incoming one, how it
// arrived; for an outgoing one, what took it (a stream to the contact's
// device, direct or relayed, or the mailboxes), empty while queued.
type Via string

// Delivery paths.
const (
	ViaDirect  Via = "direct"
	ViaRelay   Via = "relay" // a stream to the device through a relay
	ViaMailbox Via = "mailbox"
)

// Message is a sent or received text message.
type Message struct {
	ID        string    `json:"id"`
	Contact   string    `json:"contact"`
	Direction Direction `json:"direction"`
	Text      string    `json:"text"`
	SentAt    time.Time `json:"sent_at"`
	State     State     `json:"state,omitempty"`     // outgoing only
	Via       Via       `json:"via,omitempty"`       // the path it took
	StoredAt  int       `json:"stored_at,omitempty"` // mailboxes that acknowledged (outgoing)
	// FailReason says why, for a message in StateFailed.
	FailReason FailReason `json:"fail_reason,omitempty"`
	Seq        uint64     `json:"seq"` // cursor: strictly increasing per data dir
	// SessionReset marks the first message from the contact after its
	// device started a new session (a restored backup, a reinstall): the
	// same account key, not a key change.
	SessionReset bool `json:"session_reset,omitempty"`
	// Damaged: the message's record failed its check in the store; Text
	// says so, and nothing of its content is shown.
	Damaged bool `json:"damaged,omitempty"`
}

// Paging limits for Messages.
const (
	DefaultMessageLimit = 100
	MaxMessageLimit     = 1000
)

// MessageQuery selects messages: those of one contact (all when Contact is
// empty) with Seq greater than After, at most Limit of them (0 means
// DefaultMessageLimit). With Before set, it selects the Limit newest
// messages with Seq less than Before and greater than After (still
// returned in ascending order): the page a reader scrolling back in a
// conversation loads next.
type MessageQuery struct {
	Contact string
	After   uint64
	Before  uint64 // 0: no upper bound, oldest first
	Limit   int
}

// MaxUnread is the most unread messages a Conversation counts.
const MaxUnread = MaxMessageLimit

// Conversation is a summary of the conversation with one contact.
type Conversation struct {
	Contact Contact  `json:"contact"`
	Last    *Message `json:"last,omitempty"` // the newest message, if any
	// Unread counts incoming messages after ReadSeq, at most MaxUnread.
	Unread  int    `json:"unread"`
	ReadSeq uint64 `json:"read_seq"`
}

// EventType names the kind of an Event.
type EventType string

// Event types.
const (
	EventMessage        EventType = "message"         // a message was received or sent
	EventState          EventType = "state"           // an outgoing message changed state
	EventContactRequest EventType = "contact_request" // someone not in the contacts wrote
	EventKeyChange      EventType = "key_change"      // a contact presented a new key
	EventSyncProgress   EventType = "sync_progress"   // mailbox sync advanced
	// A group message was received or sent, or its Delivered count
	// changed.
	EventGroupMessage EventType = "group_message"
	EventGroup        EventType = "group" // a group was joined or changed
)

// Event is one item of the event stream.
type Event struct {
	Type    EventType     `json:"type"`
	Message *Message      `json:"message,omitempty"` // message, state
	Contact *Contact      `json:"contact,omitempty"` // contact_request, key_change
	Sync    *SyncProgress `json:"sync,omitempty"`    // sync_progress

	GroupMessage *GroupMessage `json:"group_message,omitempty"` // group_message
	Group        *Group        `json:"group,omitempty"`         // group
}

// SyncProgress reports a mailbox sync in progress.
type SyncProgress struct {
	Mailboxes int  `json:"mailboxes"` // mailboxes queried so far
	Envelopes int  `json:"envelopes"` // envelopes fetched so far
	Done      bool `json:"done"`
}
