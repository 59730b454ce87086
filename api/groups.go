package api

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sotto-im/sotto/node"
)

// Groups in the API. A group is named by its ID, 64 hex digits; names
// are for people and need not be unique, so resolving one is the
// caller's business (the command-line tool does it). Members are named by
// the contact's name, as everywhere else in the API.

// GroupIDSize is the size of a group ID in bytes; it travels as twice as
// many hex digits.
const GroupIDSize = 32

// Group is a private group as this account sees it.
type Group struct {
	ID      string        `json:"id"` // 64 hex digits
	Name    string        `json:"name"`
	Members []GroupMember `json:"members"`
	Admin   bool          `json:"admin"` // this account is an admin
	// Left is set once this account is no longer a member: it left or
	// was removed. The group and its messages stay, read only.
	Left bool `json:"left"`
}

// GroupMember is one member of a group.
type GroupMember struct {
	Account string `json:"account"` // fingerprint of the member's account key
	// Name is the contact's name; empty for this account and for a
	// member who is not a contact.
	Name  string `json:"name,omitempty"`
	Admin bool   `json:"admin"`
	Me    bool   `json:"me"` // this account
}

// GroupMessage is a message of a group, sent or received.
type GroupMessage struct {
	ID     string `json:"id"`
	Group  string `json:"group"`  // the group's ID
	Sender string `json:"sender"` // fingerprint of the sender's account key
	// SenderName is the sender's contact name; empty for this account's
	// own messages and for a sender who is not a contact.
	SenderName string    `json:"sender_name,omitempty"`
	Direction  Direction `json:"direction"`
	Text       string    `json:"text"`
	SentAt     time.Time `json:"sent_at"`
	ReceivedAt time.Time `json:"received_at"`
	// Lamport orders the group's messages for display (protocol/SPEC.md,
	// "Groups"); Seq is the message's place in this node's store.
	Lamport uint64 `json:"lamport"`
	Seq     uint64 `json:"seq"`
	// Delivered of Recipients members have receipted an outgoing message
	// (delivered N/M).
	Delivered  int `json:"delivered"`
	Recipients int `json:"recipients"`
}

// Paging limits for GroupMessages.
const (
	DefaultGroupMessageLimit = DefaultMessageLimit
	MaxGroupMessageLimit     = MaxMessageLimit
)

// ParseGroupID parses a group ID, 64 hex digits. Its error is a
// bad_request error that says what an ID looks like.
func ParseGroupID(s string) ([GroupIDSize]byte, error) {
	var id [GroupIDSize]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != GroupIDSize {
		return id, BadRequest("a group ID is %d hex digits, got %q (list groups and their IDs with `sotto group list` or GET /v1/groups)",
			2*GroupIDSize, s)
	}
	copy(id[:], b)
	return id, nil
}

// UnknownGroup returns an unknown_group error for the group ID id.
func UnknownGroup(id string) *Error {
	return &Error{Code: CodeUnknownGroup,
		Message: fmt.Sprintf("no group with ID %s (list your groups with `sotto group list` or GET /v1/groups)", id)}
}

// sortGroups orders groups by name, then ID, so that listings are stable.
func sortGroups(gs []Group) {
	sort.Slice(gs, func(i, j int) bool {
		a, b := strings.ToLower(gs[i].Name), strings.ToLower(gs[j].Name)
		if a != b {
			return a < b
		}
		return gs[i].ID < gs[j].ID
	})
}

// errGroupsNotRunning answers a group request to a node that is open but
// not running: it loads its groups when it starts.
var errGroupsNotRunning = &Error{Code: CodeUnavailable,
	Message: "groups need the running node: start it with `sotto run`, then try again"}

// running reports errGroupsNotRunning before the node runs.
func (b *nodeBackend) running() error {
	if b.n.Host() == nil {
		return errGroupsNotRunning
	}
	return nil
}

func (b *nodeBackend) Groups(ctx context.Context) ([]Group, error) {
	if err := b.running(); err != nil {
		return nil, err
	}
	gs, err := b.n.Groups()
	if err != nil {
		return nil, nodeError(err)
	}
	out := make([]Group, 0, len(gs))
	for _, g := range gs {
		out = append(out, groupOf(g))
	}
	sortGroups(out)
	return out, nil
}

func (b *nodeBackend) GroupInfo(ctx context.Context, id string) (Group, error) {
	gid, err := ParseGroupID(id)
	if err != nil {
		return Group{}, err
	}
	if err := b.running(); err != nil {
		return Group{}, err
	}
	g, err := b.n.GroupInfo(gid)
	if err != nil {
		return Group{}, groupError(err, id)
	}
	return groupOf(g), nil
}

func (b *nodeBackend) CreateGroup(ctx context.Context, name string, members []string) (Group, error) {
	if err := b.running(); err != nil {
		return Group{}, err
	}
	g, err := b.n.CreateGroup(ctx, name, members)
	if err != nil {
		return Group{}, groupError(err, "")
	}
	return groupOf(g), nil
}

// change runs one membership change of the group id.
func (b *nodeBackend) change(id string, op func(gid [GroupIDSize]byte) (node.Group, error)) (Group, error) {
	gid, err := ParseGroupID(id)
	if err != nil {
		return Group{}, err
	}
	if err := b.running(); err != nil {
		return Group{}, err
	}
	g, err := op(gid)
	if err != nil {
		return Group{}, groupError(err, id)
	}
	return groupOf(g), nil
}

func (b *nodeBackend) AddToGroup(ctx context.Context, id string, members []string) (Group, error) {
	return b.change(id, func(gid [GroupIDSize]byte) (node.Group, error) { return b.n.AddToGroup(ctx, gid, members) })
}

func (b *nodeBackend) RemoveFromGroup(ctx context.Context, id, member string) (Group, error) {
	return b.change(id, func(gid [GroupIDSize]byte) (node.Group, error) { return b.n.RemoveFromGroup(ctx, gid, member) })
}

func (b *nodeBackend) LeaveGroup(ctx context.Context, id string) (Group, error) {
	return b.change(id, func(gid [GroupIDSize]byte) (node.Group, error) { return b.n.LeaveGroup(ctx, gid) })
}

func (b *nodeBackend) RenameGroup(ctx context.Context, id, name string) (Group, error) {
	return b.change(id, func(gid [GroupIDSize]byte) (node.Group, error) { return b.n.RenameGroup(ctx, gid, name) })
}

func (b *nodeBackend) PromoteInGroup(ctx context.Context, id, member string) (Group, error) {
	return b.change(id, func(gid [GroupIDSize]byte) (node.Group, error) { return b.n.PromoteInGroup(ctx, gid, member) })
}

func (b *nodeBackend) SendGroup(ctx context.Context, id, text string) (GroupMessage, error) {
	gid, err := ParseGroupID(id)
	if err != nil {
		return GroupMessage{}, err
	}
	if err := b.running(); err != nil {
		return GroupMessage{}, err
	}
	m, err := b.n.SendGroup(ctx, gid, text)
	if err != nil {
		return GroupMessage{}, groupError(err, id)
	}
	return groupMessageOf(m), nil
}

// GroupMessages returns the group's messages in display order, after the
// first skip.
func (b *nodeBackend) GroupMessages(ctx context.Context, id string, skip, limit int) ([]GroupMessage, error) {
	gid, err := ParseGroupID(id)
	if err != nil {
		return nil, err
	}
	if err := b.running(); err != nil {
		return nil, err
	}
	if skip < 0 {
		return nil, BadRequest("skip must not be negative, got %d", skip)
	}
	if limit <= 0 {
		limit = DefaultGroupMessageLimit
	}
	limit = min(limit, MaxGroupMessageLimit)
	ms, err := b.n.GroupMessages(gid, skip, limit)
	if err != nil {
		return nil, groupError(err, id)
	}
	out := make([]GroupMessage, 0, len(ms))
	for _, m := range ms {
		out = append(out, groupMessageOf(m))
	}
	return out, nil
}

func groupOf(g node.Group) Group {
	out := Group{ID: hex.EncodeToString(g.ID[:]), Name: g.Name, Admin: g.Admin, Left: g.Left, Members: []GroupMember{}}
	for _, m := range g.Members {
		out.Members = append(out.Members, GroupMember{
			Account: node.Fingerprint(m.Account), Name: m.Name, Admin: m.Admin, Me: m.Me,
		})
	}
	return out
}

func groupMessageOf(m node.GroupMessage) GroupMessage {
	out := GroupMessage{
		ID:         hex.EncodeToString(m.ID[:]),
		Group:      hex.EncodeToString(m.Group[:]),
		Sender:     node.Fingerprint(m.Sender),
		SenderName: m.SenderName,
		Direction:  DirectionIn,
		Text:       m.Body,
		SentAt:     m.SentAt.UTC(),
		ReceivedAt: m.ReceivedAt.UTC(),
		Lamport:    m.Lamport,
		Seq:        m.Seq,
		Delivered:  m.Delivered,
		Recipients: m.Recipients,
	}
	if m.Outgoing {
		out.Direction = DirectionOut
		out.SenderName = ""
	}
	return out
}

// groupError turns the node's errors about the group id (hex; "" for a
// new group) into errors for the API's user.
func groupError(err error, id string) error {
	msg := userText(err)
	switch {
	case errors.Is(err, node.ErrUnknownGroup):
		return UnknownGroup(id)
	case errors.Is(err, node.ErrNotGroupAdmin):
		return &Error{Code: CodeNotGroupAdmin,
			Message: "only an admin of the group may do this; ask one of its admins (`sotto group info` lists them)"}
	case errors.Is(err, node.ErrNotGroupMember):
		return &Error{Code: CodeNotGroupMember,
			Message: "you are no longer a member of this group: you left or were removed; its messages stay readable"}
	case errors.Is(err, node.ErrGroupTooLarge):
		return BadRequest("%s; remove members or make a second group", msg)
	}
	// The group package's rules, which api cannot name: its errors come
	// wrapped in the node's.
	for _, p := range []string{"group: malformed operation: ", "group: operation breaks the group's rules: "} {
		if _, rest, ok := strings.Cut(msg, p); ok {
			return BadRequest("%s", rest)
		}
	}
	if strings.HasSuffix(msg, "is not a member of this group") ||
		strings.Contains(msg, "is a message request, not a contact") {
		return BadRequest("%s", msg)
	}
	return nodeError(err)
}
