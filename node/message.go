package node

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// What the messenger shows its user: messages, contacts and this device's
// identity, converted at this boundary from what the store keeps, so that
// the API and the command line see the messenger and nothing under it.

// Direction says who wrote a message.
type Direction uint8

// Directions.
const (
	Incoming = Direction(store.Incoming)
	Outgoing = Direction(store.Outgoing)
)

func (d Direction) String() string { return store.Direction(d).String() }

// MessageState is where a message is on its way. An outgoing message goes
// queued → sent (the recipient's device acknowledged it) or stored (k
// mailboxes acknowledged it) → delivered (an end-to-end receipt came
// back); failed is for messages that could not be sent before they
// expired. An incoming message is received.
type MessageState uint8

// Message states.
const (
	StateQueued    = MessageState(store.StateQueued)
	StateSent      = MessageState(store.StateSent)
	StateStored    = MessageState(store.StateStored)
	StateDelivered = MessageState(store.StateDelivered)
	StateFailed    = MessageState(store.StateFailed)
	StateReceived  = MessageState(store.StateReceived)
)

func (s MessageState) String() string { return store.MessageState(s).String() }

// FailReason says why an outgoing message failed. The store keeps the
// state only; the reason follows from the rest of what it holds.
type FailReason uint8

// Reasons for a failed message.
const (
	FailNone FailReason = iota
	// FailExpired: neither the contact's device nor a mailbox took it
	// before its envelope expired (Config.MessageTTL after it was
	// written); it is no longer sent.
	FailExpired
	// FailKeyChanged: the contact's new key was accepted while it waited
	// (the new key had written first); it was queued again, as a new
	// message in the conversation of the new key, and this copy stays in
	// the old key's history.
	FailKeyChanged
)

func (r FailReason) String() string {
	switch r {
	case FailNone:
		return "none"
	case FailExpired:
		return "expired"
	case FailKeyChanged:
		return "key changed"
	}
	return fmt.Sprintf("fail-reason(%d)", uint8(r))
}

// Via says which path carried an incoming message.
type Via uint8

// Paths.
const (
	ViaDirect  = Via(store.ViaDirect)
	ViaMailbox = Via(store.ViaMailbox)
	ViaRelay   = Via(store.ViaRelay)
)

func (v Via) String() string { return store.Via(v).String() }

// Message is one message of a conversation.
type Message struct {
	ID         [16]byte // chosen by the sender
	Contact    [32]byte // the other party's account key
	Direction  Direction
	Type       uint8 // content type; Text describes types it cannot show
	Body       []byte
	SentAt     time.Time // the sender's clock
	ReceivedAt time.Time // this device's clock; for outgoing messages, when queued
	State      MessageState
	Via        Via // incoming messages
	StoredAt   int // mailboxes that acknowledged it, when stored
	// Failure says why, when State is StateFailed.
	Failure FailReason
	Seq     uint64
	// GlobalSeq orders messages across all conversations of a data
	// directory, strictly increasing: the cursor of Messages.
	GlobalSeq uint64
	// SessionReset: the first message shown from the contact after its
	// device started a new session in place of one that worked (a
	// restored backup, a reinstall). Its account key is the same: not a
	// key change.
	SessionReset bool
	// Damaged: the message's record in the store failed its check (a
	// changed byte: damage to the disk or the file). Nothing of its
	// content is known; ID, Contact, Seq and GlobalSeq are.
	Damaged bool
}

// DamagedText is what Text says of a damaged message.
const DamagedText = "[this message is damaged in the store and cannot be shown; stop the node and run `sotto check`]"

// Text is the message's text; content this version cannot show is
// described instead, and invalid UTF-8 is replaced.
func (m Message) Text() string {
	if m.Damaged {
		return DamagedText
	}
	if protocol.ContentType(m.Type) != protocol.ContentText {
		return fmt.Sprintf("[content of type %d, which this version of sotto cannot show]", m.Type)
	}
	if !utf8.Valid(m.Body) {
		return strings.ToValidUTF8(string(m.Body), "\uFFFD")
	}
	return string(m.Body)
}

// messageOf converts a message. A failed message's reason is taken as
// FailExpired, the reason of every failure the outbox reports as it
// happens; failureIn corrects it for messages listed from the store.
func messageOf(m store.Message) Message {
	out := Message{
		ID: m.ID, Contact: m.Contact, Direction: Direction(m.Direction),
		Type: m.Type, Body: m.Body, SentAt: m.SentAt, ReceivedAt: m.ReceivedAt,
		State: MessageState(m.State), Via: Via(m.Via), StoredAt: m.StoredAt,
		Seq: m.Seq, GlobalSeq: m.GlobalSeq, SessionReset: m.SessionReset, Damaged: m.Damaged,
	}
	if m.State == store.StateFailed {
		out.Failure = FailExpired
	}
	return out
}

// failureIn sets the reason of each failed message of ms: a message
// fails either in the outbox, when it expires, or when the contact's new
// key is accepted and the message goes again to it, which leaves the
// failed copy under an account that is no longer a contact.
func failureIn(tx *store.Tx, ms []Message) error {
	gone := map[[32]byte]bool{}
	for i := range ms {
		m := &ms[i]
		if m.State != StateFailed {
			continue
		}
		g, ok := gone[m.Contact]
		if !ok {
			// Whether the record is there, not what it holds (a damaged
			// one does not hold the listing back).
			has, err := tx.HasContact(m.Contact)
			if err != nil {
				return err
			}
			g = !has
			gone[m.Contact] = g
		}
		if g {
			m.Failure = FailKeyChanged
		}
	}
	return nil
}

func messagesOf(ms []store.Message) []Message {
	out := make([]Message, len(ms))
	for i, m := range ms {
		out[i] = messageOf(m)
	}
	return out
}

// Connection is one open connection of the node (Status): the remote peer
// and address, relayed or direct, and who dialled.
type Connection struct {
	Peer, Addr        string
	Relayed, Outbound bool
}

// maxStatusConns bounds the connections Status lists.
const maxStatusConns = 256

// Contact is a contact, or a message request from an account that is not
// one yet.
type Contact struct {
	Name        string   // unique among contacts
	Account     [32]byte // account public key
	Fingerprint string   // of the account key
	PeerID      string   // the device's network address
	Verified    bool     // the user compared safety numbers
	// KeyChanged: the contact presented a new identity key that awaits
	// the user's decision; sending is refused until then.
	KeyChanged bool
	// Request: created by a first message from an unknown account.
	Request bool
	Added   time.Time
}

func contactOf(c store.Contact) Contact {
	return Contact{
		Name: c.Name, Account: c.Account, Fingerprint: Fingerprint(c.Account),
		PeerID: c.PeerID, Verified: c.Verified, KeyChanged: c.KeyChange != nil,
		Request: c.IsRequest, Added: c.Added,
	}
}

// Identity is this device's identity.
type Identity struct {
	Name        string   // the user's display name, may be empty
	Account     [32]byte // account public key
	Fingerprint string   // of the account key
	PeerID      string   // this device's network address
	Created     time.Time
}

// Fingerprint is the printable fingerprint of an account key, what a
// message of a former contact is shown under.
func Fingerprint(account [32]byte) string {
	return keys.AccountPublic(account).Fingerprint()
}

// messageEvent and contactEvent are events about a committed change.
func messageEvent(t EventType, m store.Message) Event {
	mm := messageOf(m)
	return Event{Type: t, Message: &mm}
}

func contactEvent(t EventType, c store.Contact) Event {
	cc := contactOf(c)
	return Event{Type: t, Contact: &cc}
}
