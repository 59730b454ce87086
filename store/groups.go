package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Groups (protocol/SPEC.md, "Groups"). The store keeps, per group, what
// the node needs to read and write it after a restart: the group's
// secrets, this device's sender key and counters (Group), the operations
// it holds (replayed into a tree at open), the members' sender keys as a
// receiver holds them, sender keys that came before their group's
// welcome, and the group's messages in display order.
var (
	bucketGroups       = []byte("groups")        // G(32) -> Group
	bucketGroupOps     = []byte("group_ops")     // G(32) || seq(4) || op hash(32) -> op
	bucketGroupKeys    = []byte("group_keys")    // G(32) || key ID(16) -> member key state
	bucketGroupPending = []byte("group_pending") // G(32) || key ID(16) -> time(8) || owner(32) || distribution
	bucketGroupMsgs    = []byte("group_msgs")    // G(32) || lamport(8) || message ID(16) -> GroupMessage
	bucketGroupMsgIDs  = []byte("group_msg_ids") // G(32) || message ID(16) -> group_msgs key
	bucketGroupUnacked = []byte("group_unacked") // G(32) || message ID(16) -> epoch(8) || next(8) || wait(8) || flags(1) || topic
	groupBuckets       = [][]byte{bucketGroups, bucketGroupOps, bucketGroupKeys, bucketGroupPending, bucketGroupMsgs, bucketGroupMsgIDs, bucketGroupUnacked}
	// Which message each (sender key, iteration) opened carried, so that
	// a copy published again is named in a receipt again, also after a
	// restart: G(32) || key ID(16) || iteration(4) -> message ID(16) ||
	// opened (Unix nanoseconds, 8).
	bucketGroupOpened = []byte("group_opened")
)

func createGroupOpenedBucket(tx *bolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketGroupOpened)
	return err
}

// PutGroupOpened records that the message of sender key keyID at
// iteration it of group g, opened at now, was message id.
func (tx *Tx) PutGroupOpened(g [32]byte, keyID [16]byte, it uint32, id [16]byte, now time.Time) error {
	b, err := tx.wbucket(bucketGroupOpened)
	if err != nil {
		return err
	}
	return b.Put(concat(g[:], keyID[:], binary.BigEndian.AppendUint32(nil, it)), concat(id[:], be64(uint64(timeToNanos(now)))))
}

// GroupOpened returns the message ID that PutGroupOpened recorded for
// sender key keyID at iteration it of group g, if it is still kept.
func (tx *Tx) GroupOpened(g [32]byte, keyID [16]byte, it uint32) ([16]byte, bool, error) {
	b, err := tx.bucket(bucketGroupOpened)
	if err != nil {
		return [16]byte{}, false, err
	}
	v := b.Get(concat(g[:], keyID[:], binary.BigEndian.AppendUint32(nil, it)))
	switch {
	case v == nil:
		return [16]byte{}, false, nil
	case len(v) != 24:
		return [16]byte{}, false, fmt.Errorf("%w: group opened record of %d bytes", ErrCorrupt, len(v))
	}
	return [16]byte(v), true, nil
}

// PruneGroupOpened deletes at most limit records of messages opened
// before before, and returns how many it deleted.
func (tx *Tx) PruneGroupOpened(before time.Time, limit int) (int, error) {
	b, err := tx.wbucket(bucketGroupOpened)
	if err != nil {
		return 0, err
	}
	var doomed [][]byte
	if err := b.ForEach(func(k, v []byte) error {
		if len(v) != 24 {
			return fmt.Errorf("%w: group opened record of %d bytes", ErrCorrupt, len(v))
		}
		if len(doomed) < limit && nanosToTime(int64(binary.BigEndian.Uint64(v[16:]))).Before(before) {
			doomed = append(doomed, bytes.Clone(k))
		}
		return nil
	}); err != nil {
		return 0, err
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

func createGroupBuckets(tx *bolt.Tx) error {
	for _, name := range groupBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// Limits of group records.
const (
	MaxGroupSecrets  = 64        // current and replaced secrets kept
	MaxGroupKeyState = 64 << 10  // a member key with its skipped keys
	MaxGroupOpSize   = 16 << 10  // protocol/group.MaxOpSize
	MaxGroupMembers  = 256       // recipients counted for a message
	maxGroupEnvelope = 256 << 10 // a group message's envelope
	// MaxPendingGroupKeys bounds sender keys held for groups not known
	// yet (protocol/group.MaxPendingSenderKeys).
	MaxPendingGroupKeys = 64
)

// GroupSecret is a group secret and when it was replaced (zero while it
// is the current one).
type GroupSecret struct {
	Secret   [32]byte
	Replaced time.Time
}

// Group is what the node keeps of a group besides its operations, keys
// and messages.
type Group struct {
	ID        [32]byte
	Secrets   []GroupSecret // the current one first
	SenderKey []byte        // this device's, encoded; nil when it has none
	Lamport   uint64        // the group's Lamport clock
	Seq       uint64        // the last seq this device sent in the group
	Joined    time.Time
	// Removals counts the removes and leaves on the canonical chain when
	// this device's sender key was made: one more means a new key.
	Removals uint64
	// Left: this device's account is no longer a member.
	Left bool
}

func (g Group) marshal() ([]byte, error) {
	if len(g.Secrets) > MaxGroupSecrets {
		return nil, tooLarge("group secrets", len(g.Secrets), MaxGroupSecrets)
	}
	e := newEncoder(128 + 40*len(g.Secrets) + len(g.SenderKey))
	e.fixed(g.ID[:])
	e.uvarint(uint64(len(g.Secrets)))
	for _, s := range g.Secrets {
		e.fixed(s.Secret[:])
		e.time(s.Replaced)
	}
	e.bytes(g.SenderKey)
	e.uvarint(g.Lamport)
	e.uvarint(g.Seq)
	e.time(g.Joined)
	e.uvarint(g.Removals)
	e.bool(g.Left)
	return e.b, nil
}

func unmarshalGroup(b []byte) (Group, error) {
	var g Group
	d := newDecoder("group", b)
	d.fixed(g.ID[:])
	if n := d.int(MaxGroupSecrets); n > 0 {
		g.Secrets = make([]GroupSecret, n)
		for i := range g.Secrets {
			d.fixed(g.Secrets[i].Secret[:])
			g.Secrets[i].Replaced = d.time()
		}
	}
	g.SenderKey = d.bytes(MaxGroupKeyState)
	g.Lamport = d.uvarint()
	g.Seq = d.uvarint()
	g.Joined = d.time()
	g.Removals = d.uvarint()
	g.Left = d.bool()
	return g, d.finish()
}

// PutGroup stores g.
func (tx *Tx) PutGroup(g Group) error {
	b, err := tx.wbucket(bucketGroups)
	if err != nil {
		return err
	}
	v, err := g.marshal()
	if err != nil {
		return err
	}
	return b.Put(g.ID[:], v)
}

// GetGroup returns the group with ID id, or ErrNotFound.
func (tx *Tx) GetGroup(id [32]byte) (Group, error) {
	b, err := tx.bucket(bucketGroups)
	if err != nil {
		return Group{}, err
	}
	v := b.Get(id[:])
	if v == nil {
		return Group{}, ErrNotFound
	}
	return unmarshalGroup(v)
}

// ListGroups returns every group, by ID.
func (tx *Tx) ListGroups() ([]Group, error) {
	b, err := tx.bucket(bucketGroups)
	if err != nil {
		return nil, err
	}
	var out []Group
	err = b.ForEach(func(_, v []byte) error {
		g, err := unmarshalGroup(v)
		if err != nil {
			return err
		}
		out = append(out, g)
		return nil
	})
	return out, err
}

// PutGroupOp stores an operation of group id with its seq and hash;
// storing it again changes nothing.
func (tx *Tx) PutGroupOp(id [32]byte, seq uint32, hash [32]byte, op []byte) error {
	if len(op) > MaxGroupOpSize {
		return tooLarge("group operation", len(op), MaxGroupOpSize)
	}
	b, err := tx.wbucket(bucketGroupOps)
	if err != nil {
		return err
	}
	k := concat(id[:], binary.BigEndian.AppendUint32(nil, seq), hash[:])
	if b.Get(k) != nil {
		return nil
	}
	return b.Put(k, op)
}

// GroupOps returns the operations stored for group id, parents before
// children (by seq).
func (tx *Tx) GroupOps(id [32]byte) ([][]byte, error) {
	b, err := tx.bucket(bucketGroupOps)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	c := b.Cursor()
	for k, v := c.Seek(id[:]); k != nil && bytes.HasPrefix(k, id[:]); k, v = c.Next() {
		out = append(out, bytes.Clone(v))
	}
	return out, nil
}

// PutGroupKey stores a member's sender key state, keyed by its key ID.
func (tx *Tx) PutGroupKey(id [32]byte, keyID [16]byte, state []byte) error {
	if len(state) > MaxGroupKeyState {
		return tooLarge("group member key", len(state), MaxGroupKeyState)
	}
	b, err := tx.wbucket(bucketGroupKeys)
	if err != nil {
		return err
	}
	return b.Put(concat(id[:], keyID[:]), state)
}

// DeleteGroupKey drops a member's sender key.
func (tx *Tx) DeleteGroupKey(id [32]byte, keyID [16]byte) error {
	b, err := tx.wbucket(bucketGroupKeys)
	if err != nil {
		return err
	}
	return b.Delete(concat(id[:], keyID[:]))
}

// GroupKeys returns the member key states stored for group id.
func (tx *Tx) GroupKeys(id [32]byte) ([][]byte, error) {
	b, err := tx.bucket(bucketGroupKeys)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	c := b.Cursor()
	for k, v := c.Seek(id[:]); k != nil && bytes.HasPrefix(k, id[:]); k, v = c.Next() {
		out = append(out, bytes.Clone(v))
	}
	return out, nil
}

// PutPendingGroupKey holds a sender key of owner for group id, which the
// node does not know yet, received at now. Past MaxPendingGroupKeys the
// oldest is dropped.
func (tx *Tx) PutPendingGroupKey(id, owner [32]byte, dist []byte, now time.Time) error {
	if len(dist) > MaxGroupKeyState {
		return tooLarge("pending group key", len(dist), MaxGroupKeyState)
	}
	b, err := tx.wbucket(bucketGroupPending)
	if err != nil {
		return err
	}
	var (
		n      int
		oldest []byte
		at     = ^uint64(0)
	)
	if err := b.ForEach(func(k, v []byte) error {
		n++
		if len(v) < 8 {
			oldest, at = bytes.Clone(k), 0
		} else if t := binary.BigEndian.Uint64(v); t < at {
			oldest, at = bytes.Clone(k), t
		}
		return nil
	}); err != nil {
		return err
	}
	if n >= MaxPendingGroupKeys {
		if oldest != nil {
			if err := b.Delete(oldest); err != nil {
				return err
			}
		}
	}
	// Keyed by the key ID inside the distribution (random), not by the
	// owner: an encrypted store seals values, not keys.
	if len(dist) < 32+16 {
		return fmt.Errorf("%w: a pending sender key of %d bytes", ErrTooLarge, len(dist))
	}
	return b.Put(concat(id[:], dist[32:48]), concat(be64(uint64(now.UnixNano())), owner[:], dist))
}

// TakePendingGroupKeys returns and deletes the sender keys held for group
// id, keyed by owner.
func (tx *Tx) TakePendingGroupKeys(id [32]byte) (map[[32]byte][]byte, error) {
	b, err := tx.wbucket(bucketGroupPending)
	if err != nil {
		return nil, err
	}
	out := map[[32]byte][]byte{}
	var ks [][]byte
	c := b.Cursor()
	for k, v := c.Seek(id[:]); k != nil && bytes.HasPrefix(k, id[:]); k, v = c.Next() {
		if len(v) >= 8+32 {
			out[[32]byte(v[8:40])] = bytes.Clone(v[40:])
		}
		ks = append(ks, bytes.Clone(k))
	}
	for _, k := range ks {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GroupMessage is a message of a group, sent or received.
type GroupMessage struct {
	ID         [16]byte
	Group      [32]byte
	Sender     [32]byte
	Lamport    uint64
	Seq        uint64
	Type       uint8
	Body       []byte
	SentAt     time.Time
	ReceivedAt time.Time
	Outgoing   bool
	// Recipients are the other members when it was sent (outgoing), and
	// Receipts those of them whose receipts named it.
	Recipients [][32]byte
	Receipts   [][32]byte
	// Envelope is what was published (outgoing): deposited again for
	// members who did not acknowledge it.
	Envelope []byte
}

func (m GroupMessage) marshal() ([]byte, error) {
	switch {
	case len(m.Body) > MaxBodySize:
		return nil, tooLarge("group message body", len(m.Body), MaxBodySize)
	case len(m.Recipients) > MaxGroupMembers || len(m.Receipts) > MaxGroupMembers:
		return nil, tooLarge("group message recipients", max(len(m.Recipients), len(m.Receipts)), MaxGroupMembers)
	case len(m.Envelope) > maxGroupEnvelope:
		return nil, tooLarge("group message envelope", len(m.Envelope), maxGroupEnvelope)
	}
	e := newEncoder(128 + len(m.Body) + len(m.Envelope) + 32*(len(m.Recipients)+len(m.Receipts)))
	e.fixed(m.ID[:])
	e.fixed(m.Group[:])
	e.fixed(m.Sender[:])
	e.uvarint(m.Lamport)
	e.uvarint(m.Seq)
	e.u8(m.Type)
	e.bytes(m.Body)
	e.time(m.SentAt)
	e.time(m.ReceivedAt)
	e.bool(m.Outgoing)
	for _, l := range [][][32]byte{m.Recipients, m.Receipts} {
		e.uvarint(uint64(len(l)))
		for _, a := range l {
			e.fixed(a[:])
		}
	}
	e.bytes(m.Envelope)
	return e.b, nil
}

func unmarshalGroupMessage(b []byte) (GroupMessage, error) {
	var m GroupMessage
	d := newDecoder("group message", b)
	d.fixed(m.ID[:])
	d.fixed(m.Group[:])
	d.fixed(m.Sender[:])
	m.Lamport = d.uvarint()
	m.Seq = d.uvarint()
	m.Type = d.u8()
	m.Body = d.bytes(MaxBodySize)
	m.SentAt = d.time()
	m.ReceivedAt = d.time()
	m.Outgoing = d.bool()
	for _, l := range []*[][32]byte{&m.Recipients, &m.Receipts} {
		if n := d.int(MaxGroupMembers); n > 0 {
			*l = make([][32]byte, n)
			for i := range *l {
				d.fixed((*l)[i][:])
			}
		}
	}
	m.Envelope = d.bytes(maxGroupEnvelope)
	return m, d.finish()
}

// groupMsgKey orders a group's messages by Lamport clock, then message
// ID (SPEC.md, "Order"); it names no account, since an encrypted store
// seals values, not keys.
func groupMsgKey(m GroupMessage) []byte {
	return concat(m.Group[:], be64(m.Lamport), m.ID[:])
}

// PutGroupMessage stores a new message of a group; a message whose ID
// the group holds already is ErrDuplicate.
func (tx *Tx) PutGroupMessage(m GroupMessage) error {
	msgs, err := tx.wbucket(bucketGroupMsgs)
	if err != nil {
		return err
	}
	ids, err := tx.wbucket(bucketGroupMsgIDs)
	if err != nil {
		return err
	}
	idk := concat(m.Group[:], m.ID[:])
	if ids.Get(idk) != nil {
		return ErrDuplicate
	}
	k := groupMsgKey(m)
	if msgs.Get(k) != nil {
		return ErrDuplicate
	}
	v, err := m.marshal()
	if err != nil {
		return err
	}
	if err := ids.Put(idk, k); err != nil {
		return err
	}
	return msgs.Put(k, v)
}

// GetGroupMessage returns message id of group g, or ErrNotFound.
func (tx *Tx) GetGroupMessage(g [32]byte, id [16]byte) (GroupMessage, error) {
	msgs, err := tx.bucket(bucketGroupMsgs)
	if err != nil {
		return GroupMessage{}, err
	}
	ids, err := tx.bucket(bucketGroupMsgIDs)
	if err != nil {
		return GroupMessage{}, err
	}
	k := ids.Get(concat(g[:], id[:]))
	if k == nil {
		return GroupMessage{}, ErrNotFound
	}
	v := msgs.Get(k)
	if v == nil {
		return GroupMessage{}, fmt.Errorf("%w: group message index points at nothing", ErrCorrupt)
	}
	return unmarshalGroupMessage(v)
}

// UpdateGroupMessage rewrites a message PutGroupMessage stored (its
// receipts); its place in the order does not change.
func (tx *Tx) UpdateGroupMessage(m GroupMessage) error {
	msgs, err := tx.wbucket(bucketGroupMsgs)
	if err != nil {
		return err
	}
	k := groupMsgKey(m)
	if msgs.Get(k) == nil {
		return ErrNotFound
	}
	v, err := m.marshal()
	if err != nil {
		return err
	}
	return msgs.Put(k, v)
}

// GroupMessages returns up to limit messages of group g in display order
// (lamport, message ID), skipping the first skip.
func (tx *Tx) GroupMessages(g [32]byte, skip, limit int) ([]GroupMessage, error) {
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	msgs, err := tx.bucket(bucketGroupMsgs)
	if err != nil {
		return nil, err
	}
	var out []GroupMessage
	c := msgs.Cursor()
	i := 0
	for k, v := c.Seek(g[:]); k != nil && bytes.HasPrefix(k, g[:]) && len(out) < limit; k, v = c.Next() {
		if i++; i <= skip {
			continue
		}
		m, err := unmarshalGroupMessage(v)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// GroupResend is the schedule of an outgoing group message that some
// member has not acknowledged: published again at Next on the topic of
// Epoch.
type GroupResend struct {
	Group [32]byte
	ID    [16]byte
	Epoch uint64
	Next  time.Time
	Wait  time.Duration // the last wait
	Topic string
	// Deposited: the envelope went to the mailboxes of the members whose
	// receipts had not named it (once, GroupDepositAfter after sending).
	Deposited bool
}

// resendDeposited is the flag of GroupResend.Deposited.
const resendDeposited = 1

// PutGroupResend schedules (or reschedules) r.
func (tx *Tx) PutGroupResend(r GroupResend) error {
	b, err := tx.wbucket(bucketGroupUnacked)
	if err != nil {
		return err
	}
	if len(r.Topic) > 256 {
		return tooLarge("group topic", len(r.Topic), 256)
	}
	var flags byte
	if r.Deposited {
		flags |= resendDeposited
	}
	return b.Put(concat(r.Group[:], r.ID[:]), concat(be64(r.Epoch), be64(uint64(timeToNanos(r.Next))), be64(uint64(r.Wait)), []byte{flags}, []byte(r.Topic)))
}

// DeleteGroupResend ends the schedule of message id of group g.
func (tx *Tx) DeleteGroupResend(g [32]byte, id [16]byte) error {
	b, err := tx.wbucket(bucketGroupUnacked)
	if err != nil {
		return err
	}
	return b.Delete(concat(g[:], id[:]))
}

// GroupResends lists every scheduled resend.
func (tx *Tx) GroupResends() ([]GroupResend, error) {
	b, err := tx.bucket(bucketGroupUnacked)
	if err != nil {
		return nil, err
	}
	var out []GroupResend
	err = b.ForEach(func(k, v []byte) error {
		if len(k) != 48 || len(v) < 25 || v[24]&^resendDeposited != 0 {
			return fmt.Errorf("%w: group resend record", ErrCorrupt)
		}
		out = append(out, GroupResend{
			Group: [32]byte(k[:32]), ID: [16]byte(k[32:]), Epoch: binary.BigEndian.Uint64(v),
			Next: nanosToTime(int64(binary.BigEndian.Uint64(v[8:]))), Wait: time.Duration(binary.BigEndian.Uint64(v[16:])),
			Deposited: v[24]&resendDeposited != 0, Topic: string(v[25:]),
		})
		return nil
	})
	return out, err
}
