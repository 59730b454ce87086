package node

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/invite"
	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/mailbox"
	"github.com/sotto-im/sotto/protocol/group"
	"github.com/sotto-im/sotto/store"
)

// ErrSelfInvite is returned when adding one's own invite as a contact.
var ErrSelfInvite = errors.New("node: that is your own invite; ask your contact for theirs (`sotto invite` on their machine)")

// AddContact adds the account behind an invite under name. Adding an
// account that is already a contact fails with store.ErrDuplicate; adding
// one that wrote first (a message request) turns the request into a
// contact with the given name.
func (n *Node) AddContact(name, inviteText string) (Contact, error) {
	inv, err := invite.Parse(inviteText)
	if err != nil {
		return Contact{}, err
	}
	if inv.Account() == n.account() {
		return Contact{}, ErrSelfInvite
	}
	pid, err := inv.PeerID()
	if err != nil {
		return Contact{}, err
	}
	var addrs []string
	for _, a := range inv.Addrs {
		addrs = append(addrs, a.String())
	}
	now := n.now()
	var out store.Contact
	err = n.db.Update(func(tx *store.Tx) error {
		if err := mailbox.PutContactInvite(tx, inv.Account(), inv.IntroSecret, inv.Mailboxes); err != nil {
			return err
		}
		old, err := tx.GetContact(inv.Account())
		if err == nil {
			if !old.IsRequest {
				return fmt.Errorf("%w: this account is already your contact %q", store.ErrDuplicate, old.Name)
			}
			if err := unindexRequest(tx, old); err != nil {
				return err
			}
			old.IsRequest = false
			old.Name = name
			old.DeviceCert = inv.Device.Marshal()
			old.PeerID = pid.String()
			old.Addrs = addrs
			out = old
			return tx.PutContact(old)
		}
		if !errors.Is(err, store.ErrUnknownContact) && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// The same device under a different account: an identity change of
		// a contact the user already has (every contact: one whose record
		// is damaged fails the add rather than being passed over).
		all, err := tx.ListEveryContact()
		if err != nil {
			return err
		}
		for _, c := range all {
			if c.PeerID == pid.String() && !c.IsRequest {
				return fmt.Errorf("node: this invite's device belongs to your contact %q, who used another identity key before; compare safety numbers with them, then accept the change with `sotto contact verify %s --confirm`", c.Name, c.Name)
			}
		}
		out = store.Contact{
			Name: name, Account: inv.Account(), DeviceCert: inv.Device.Marshal(),
			PeerID: pid.String(), Addrs: addrs, Added: now,
		}
		return tx.AddContact(out)
	})
	if err != nil {
		return Contact{}, err
	}
	if h := n.Host(); h != nil {
		h.Protect(pid, "contact")
		n.addAddrs(pid, addrs)
		h.ClearBackoff(pid)
	}
	n.joinVia(inv.Peers)
	n.kickOutbox()
	n.spawn(n.announceMailboxes) // a request that became a contact learns them now
	return contactOf(out), nil
}

// Contacts lists the contacts and message requests, sorted by name.
func (n *Node) Contacts() ([]Contact, error) {
	var out []Contact
	err := n.db.View(func(tx *store.Tx) error {
		cs, err := tx.ListContacts()
		for _, c := range cs {
			out = append(out, contactOf(c))
		}
		return err
	})
	return out, err
}

// Contact finds a contact by name.
func (n *Node) Contact(name string) (Contact, error) {
	var c store.Contact
	err := n.db.View(func(tx *store.Tx) error {
		var err error
		c, err = contactByName(tx, name)
		return err
	})
	return contactOf(c), err
}

// ContactByAccount finds a contact by account key.
func (n *Node) ContactByAccount(acct [32]byte) (Contact, error) {
	var c store.Contact
	err := n.db.View(func(tx *store.Tx) error {
		var err error
		c, err = tx.GetContact(acct)
		return err
	})
	return contactOf(c), err
}

// Verification is what the user compares with a contact.
type Verification struct {
	Contact      Contact
	SafetyNumber string // of the current key, or of the pending new key
	KeyChanged   bool
}

// SafetyNumber returns the safety number of this account and acct.
func (n *Node) SafetyNumber(acct [32]byte) string {
	return keys.SafetyNumber(n.account(), keys.AccountPublic(acct))
}

// VerifyContact shows the safety number to compare with the contact named
// name; with confirm it marks the contact verified (and, when the
// contact's identity key changed, accepts the new key).
func (n *Node) VerifyContact(name string, confirm bool) (Verification, error) {
	var v Verification
	err := n.db.Update(func(tx *store.Tx) error {
		c, err := contactByName(tx, name)
		if err != nil {
			return err
		}
		acct := c.Account
		if c.KeyChange != nil {
			acct = c.KeyChange.Account
			v.KeyChanged = true
		}
		v.SafetyNumber = keys.SafetyNumber(n.account(), keys.AccountPublic(acct))
		if !confirm {
			v.Contact = contactOf(c)
			return nil
		}
		if c.KeyChange != nil {
			if c, err = n.acceptKeyChange(tx, c); err != nil {
				return err
			}
		}
		if err := unindexRequest(tx, c); err != nil {
			return err
		}
		c.Verified = true
		c.IsRequest = false
		if err := tx.PutContact(c); err != nil {
			return err
		}
		v.Contact = contactOf(c)
		return nil
	})
	if err == nil && confirm {
		n.kickOutbox()
		n.spawn(n.announceMailboxes)
	}
	return v, err
}

// RejectKeyChange drops the new identity key a contact presented and
// keeps the old one: the safety number did not match, or the user does not
// trust the change. The new key's message request, if it wrote, stays a
// request. It returns the verification of the key kept.
func (n *Node) RejectKeyChange(name string) (Verification, error) {
	var v Verification
	err := n.db.Update(func(tx *store.Tx) error {
		c, err := contactByName(tx, name)
		if err != nil {
			return err
		}
		if c.KeyChange == nil {
			return fmt.Errorf("%w: %s", ErrNoKeyChange, c.Name)
		}
		c.KeyChange = nil
		if err := tx.PutContact(c); err != nil {
			return err
		}
		v = Verification{Contact: contactOf(c), SafetyNumber: n.SafetyNumber(c.Account)}
		return nil
	})
	if err == nil {
		n.kickOutbox()
	}
	return v, err
}

// acceptKeyChange makes a contact's pending key its key. A message request
// that the new key already made is folded into the contact.
func (n *Node) acceptKeyChange(tx *store.Tx, c store.Contact) (store.Contact, error) {
	newAcct := c.KeyChange.Account
	// The old key's sessions go with it (the store drops its session).
	if err := tx.DeleteAltSession(c.Account); err != nil {
		return store.Contact{}, err
	}
	if req, err := tx.GetContact(newAcct); err == nil {
		// The new key wrote first: keep that contact (its session and
		// messages), under the old name; the old key's history stays.
		name := c.Name
		if err := tx.DeleteContact(c.Account); err != nil {
			return store.Contact{}, err
		}
		if err := unindexRequest(tx, req); err != nil {
			return store.Contact{}, err
		}
		req.Name = name
		req.IsRequest = false
		req.Verified = false
		if err := tx.PutContact(req); err != nil {
			return store.Contact{}, err
		}
		if err := n.moveOutbox(tx, c.Account, newAcct, true); err != nil {
			return store.Contact{}, err
		}
		return req, nil
	} else if !errors.Is(err, store.ErrUnknownContact) && !errors.Is(err, store.ErrNotFound) {
		return store.Contact{}, err
	}
	nc, err := tx.AcceptKeyChange(c.Account)
	if err != nil {
		return store.Contact{}, err
	}
	if err := n.moveOutbox(tx, c.Account, newAcct, false); err != nil {
		return store.Contact{}, err
	}
	if cert, err := keys.ParseDeviceCertificate(nc.DeviceCert); err == nil {
		if pid, err := peer.IDFromBytes(cert.PeerID); err == nil {
			nc.PeerID = pid.String()
		}
	}
	return nc, nil
}

// moveOutbox hands what waits in the outbox for an old account key to the
// new one, to be sealed afresh on the new key's session. Receipts for the
// old key are dropped. With requeue, each message is written again under
// the new account (the original stays in the old key's history, marked
// failed); without it, the message records have moved already.
func (n *Node) moveOutbox(tx *store.Tx, oldAcct, newAcct [32]byte, requeue bool) error {
	entries, err := tx.OutboxFor(oldAcct, 1<<20)
	if err != nil {
		return err
	}
	now := n.now()
	for _, e := range entries {
		if _, err := tx.DeleteOutbox(e.MsgID); err != nil {
			return err
		}
		if e.Kind != store.OutboxMessage {
			continue
		}
		if requeue {
			m, err := tx.GetMessage(e.MsgID)
			if err != nil {
				return err
			}
			if _, _, err := tx.SetMessageState(e.MsgID, store.StateFailed); err != nil {
				return err
			}
			id, err := newMessageID(n.cfg.Rand, now)
			if err != nil {
				return err
			}
			m2, err := tx.AppendMessage(store.Message{
				ID: id, Contact: newAcct, Direction: store.Outgoing, Type: m.Type,
				Body: m.Body, SentAt: m.SentAt, ReceivedAt: now, State: store.StateQueued,
			})
			if err != nil {
				return err
			}
			e.MsgID = m2.ID
		}
		e.Contact = newAcct
		e.Envelope = nil
		e.Mailboxes = 0
		e.NextAttempt = now
		if err := tx.PutOutbox(e); err != nil {
			return err
		}
	}
	return nil
}

// Messages lists messages in conversation order: of the contact named
// name (all conversations when name is empty), at most limit (0: the
// store's default), those after the cursor after. The cursor is a
// GlobalSeq, the same whether or not the list is filtered by contact, so
// that one cursor serves a listing and the event stream alike.
func (n *Node) Messages(name string, after uint64, limit int) ([]Message, error) {
	var out []Message
	err := n.db.View(func(tx *store.Tx) error {
		var filter *[32]byte
		if strings.TrimSpace(name) != "" {
			c, err := contactByName(tx, name)
			if err != nil {
				return err
			}
			filter = &c.Account
			// The store pages a conversation by its own numbers.
			if after, err = tx.ConvCursor(c.Account, after); err != nil {
				return err
			}
		}
		if limit <= 0 {
			limit = store.DefaultPageSize
		}
		limit = min(limit, store.MaxPageSize)
		// Group content carried by the sessions is not shown: pages go on
		// past it until limit messages are found or none are left.
		for len(out) < limit {
			want := limit - len(out)
			ms, err := tx.ListMessages(filter, after, want)
			if err != nil {
				return err
			}
			for _, m := range ms {
				if after = m.GlobalSeq; filter != nil {
					after = m.Seq
				}
				if !group.IsContent(m.Type) {
					out = append(out, messageOf(m))
				}
			}
			if len(ms) < want {
				break
			}
		}
		return failureIn(tx, out)
	})
	return out, err
}

// Status is a snapshot of the node.
type Status struct {
	PeerID         string
	Addrs          []string
	ConnectedPeers int
	OutboxPending  int
	Running        bool
	Mailbox        *MailboxHeld // set when the node serves as a mailbox
	// BundlePublished is when this node's prekey bundle last went into
	// the DHT (zero: not since the node started); BundleError says why
	// the last attempt failed, empty when it worked. Without a published
	// bundle, a stranger with the invite can still write first, over a
	// direct connection.
	BundlePublished time.Time
	BundleError     string
	// Requests is how many message requests wait for the user;
	// RequestsDropped how many were dropped, oldest first, over the limit
	// (Config.MaxRequests).
	Requests        int
	RequestsDropped uint64
	// Reachability is "public", "private" or "unknown"; Relays the relays
	// holding a reservation for this node; DHTMode "server" or "client";
	// Connections the open connections (at most maxStatusConns).
	Reachability, DHTMode string
	Relays                []string
	Connections           []Connection
	// Counters since Open: deposits this node's mailbox stored, envelopes it served, syncs run, Send calls, messages received.
	DepositsAccepted, EnvelopesServed, SyncsRun, MessagesSent, MessagesReceived uint64
	// EnvelopesRejected counts envelopes addressed to this node that it
	// refused as malformed since Open: junk from strangers, or a
	// contact's envelope that will never decrypt.
	EnvelopesRejected uint64
	// RelayReopens counts relayed connections to contacts this node
	// closed and dialled again since Open, so that hole punching would
	// run on them (p2p.Host.RelayReopens).
	RelayReopens uint64
	// Store: whether the data dir is encrypted, its size and contents.
	Store StoreStats
}

// MailboxHeld is what a mailbox node holds for others.
type MailboxHeld = mailbox.Holding

// Status reports the node's state.
func (n *Node) Status() (Status, error) {
	st := Status{PeerID: n.ident.PeerID, Mailbox: n.mailboxHeld()}
	st.DepositsAccepted, st.EnvelopesServed, st.SyncsRun, st.MessagesSent, st.MessagesReceived = n.deposits.Load(), n.served.Load(), n.syncs.Load(), n.sent.Load(), n.received.Load()
	st.EnvelopesRejected = n.rejected.Load()
	at, perr := n.published.get()
	st.BundlePublished = at
	if perr != nil {
		st.BundleError = perr.Error()
	}
	for _, a := range n.Addrs() {
		st.Addrs = append(st.Addrs, a.String())
	}
	if h := n.Host(); h != nil {
		st.Running = true
		st.ConnectedPeers = len(h.LibP2P().Network().Peers())
		r := h.Reachability()
		st.Reachability, st.DHTMode, st.Relays = r.State, r.DHTMode, r.Relays
		st.RelayReopens = h.RelayReopens()
		conns := h.Connections()
		for _, c := range conns[:min(len(conns), maxStatusConns)] {
			st.Connections = append(st.Connections, Connection{Peer: c.Peer.String(), Addr: c.Addr.String(), Relayed: c.Relayed, Outbound: c.Outbound})
		}
	}
	err := n.db.View(func(tx *store.Tx) error {
		var err error
		if st.OutboxPending, err = tx.PendingCount(); err != nil {
			return err
		}
		reqs, err := tx.SettingNames(requestPrefix)
		if err != nil {
			return err
		}
		st.Requests = len(reqs)
		st.RequestsDropped, _, err = tx.GetUint64(settingRequestsDropped)
		return err
	})
	if err == nil {
		st.Store, err = n.db.Stats()
	}
	return st, err
}
