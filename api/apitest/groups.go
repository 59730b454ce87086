package apitest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/sotto-im/sotto/api"
)

// Errors of group changes, as a node words them.
var (
	errNotMember = &api.Error{Code: api.CodeNotGroupMember,
		Message: "you are no longer a member of this group: you left or were removed; its messages stay readable"}
	errNotAdmin = &api.Error{Code: api.CodeNotGroupAdmin,
		Message: "only an admin of the group may do this; ask one of its admins (`sotto group info` lists them)"}
)

// testGroup is a group this backend holds.
type testGroup struct {
	g        api.Group
	messages []api.GroupMessage
}

// Groups implements api.Backend.
func (b *Backend) Groups(ctx context.Context) ([]api.Group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]api.Group, 0, len(b.groups))
	for _, tg := range b.groups {
		out = append(out, cloneGroup(tg.g))
	}
	slices.SortFunc(out, func(x, y api.Group) int {
		if c := strings.Compare(strings.ToLower(x.Name), strings.ToLower(y.Name)); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return out, nil
}

// GroupInfo implements api.Backend.
func (b *Backend) GroupInfo(ctx context.Context, id string) (api.Group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tg, err := b.group(id)
	if err != nil {
		return api.Group{}, err
	}
	return cloneGroup(tg.g), nil
}

// CreateGroup implements api.Backend. Group IDs are derived from the
// group's name and how many groups exist, so that output is reproducible.
func (b *Backend) CreateGroup(ctx context.Context, name string, members []string) (api.Group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if strings.TrimSpace(name) == "" {
		return api.Group{}, api.BadRequest("a name is 1 to 128 bytes of UTF-8")
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", name, len(b.groups))))
	g := api.Group{ID: hex.EncodeToString(sum[:]), Name: name, Admin: true,
		Members: []api.GroupMember{{Account: b.id.Account, Admin: true, Me: true}}}
	if err := b.addMembers(&g, members); err != nil {
		return api.Group{}, err
	}
	if b.groups == nil {
		b.groups = map[string]*testGroup{}
	}
	b.groups[g.ID] = &testGroup{g: g}
	b.publishGroup(g)
	return cloneGroup(g), nil
}

// AddToGroup implements api.Backend.
func (b *Backend) AddToGroup(ctx context.Context, id string, members []string) (api.Group, error) {
	return b.change(id, true, func(g *api.Group) error { return b.addMembers(g, members) })
}

// RemoveFromGroup implements api.Backend.
func (b *Backend) RemoveFromGroup(ctx context.Context, id, member string) (api.Group, error) {
	return b.change(id, true, func(g *api.Group) error {
		i := slices.IndexFunc(g.Members, func(m api.GroupMember) bool { return m.Name == member })
		if i < 0 {
			return api.BadRequest("%s is not a member of this group", member)
		}
		g.Members = slices.Delete(g.Members, i, i+1)
		return nil
	})
}

// LeaveGroup implements api.Backend.
func (b *Backend) LeaveGroup(ctx context.Context, id string) (api.Group, error) {
	return b.change(id, false, func(g *api.Group) error {
		g.Members = slices.DeleteFunc(g.Members, func(m api.GroupMember) bool { return m.Me })
		g.Left, g.Admin = true, false
		return nil
	})
}

// RenameGroup implements api.Backend.
func (b *Backend) RenameGroup(ctx context.Context, id, name string) (api.Group, error) {
	return b.change(id, true, func(g *api.Group) error {
		g.Name = name
		return nil
	})
}

// PromoteInGroup implements api.Backend.
func (b *Backend) PromoteInGroup(ctx context.Context, id, member string) (api.Group, error) {
	return b.change(id, true, func(g *api.Group) error {
		i := slices.IndexFunc(g.Members, func(m api.GroupMember) bool { return m.Name == member })
		if i < 0 {
			return api.BadRequest("%s is not a member of this group", member)
		}
		g.Members[i].Admin = true
		return nil
	})
}

// SendGroup implements api.Backend: the message is stored as sent to
// every other member and announced with a group message event.
func (b *Backend) SendGroup(ctx context.Context, id, text string) (api.GroupMessage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tg, err := b.group(id)
	if err != nil {
		return api.GroupMessage{}, err
	}
	if tg.g.Left {
		return api.GroupMessage{}, errNotMember
	}
	m := b.appendGroup(tg, api.GroupMessage{Sender: b.id.Account, Direction: api.DirectionOut, Text: text,
		Recipients: len(tg.g.Members) - 1})
	b.publish(api.Event{Type: api.EventGroupMessage, GroupMessage: &m})
	return m, nil
}

// GroupMessages implements api.Backend.
func (b *Backend) GroupMessages(ctx context.Context, id string, skip, limit int) ([]api.GroupMessage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tg, err := b.group(id)
	if err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = api.DefaultGroupMessageLimit
	}
	ms := tg.messages[min(skip, len(tg.messages)):]
	return slices.Clone(ms[:min(limit, len(ms))]), nil
}

// ReceiveGroup records a message of the group id from the member called
// sender and announces it with a group message event.
func (b *Backend) ReceiveGroup(id, sender, text string) (api.GroupMessage, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tg, err := b.group(id)
	if err != nil {
		return api.GroupMessage{}, err
	}
	i := slices.IndexFunc(tg.g.Members, func(m api.GroupMember) bool { return m.Name == sender })
	if i < 0 {
		return api.GroupMessage{}, fmt.Errorf("apitest: %s is not a member of group %s", sender, id)
	}
	m := b.appendGroup(tg, api.GroupMessage{Sender: tg.g.Members[i].Account, SenderName: sender,
		Direction: api.DirectionIn, Text: text})
	b.publish(api.Event{Type: api.EventGroupMessage, GroupMessage: &m})
	return m, nil
}

// change applies a change to the group id; admin: only admins may.
func (b *Backend) change(id string, admin bool, f func(g *api.Group) error) (api.Group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	tg, err := b.group(id)
	if err != nil {
		return api.Group{}, err
	}
	switch {
	case tg.g.Left:
		return api.Group{}, errNotMember
	case admin && !tg.g.Admin:
		return api.Group{}, errNotAdmin
	}
	g := cloneGroup(tg.g)
	if err := f(&g); err != nil {
		return api.Group{}, err
	}
	tg.g = g
	b.publishGroup(g)
	return cloneGroup(g), nil
}

// addMembers adds the named contacts to g. b.mu is held.
func (b *Backend) addMembers(g *api.Group, names []string) error {
	for _, name := range names {
		i := b.find(name)
		if i < 0 {
			return b.unknown(name)
		}
		if slices.ContainsFunc(g.Members, func(m api.GroupMember) bool { return m.Name == name }) {
			return api.BadRequest("%s is a member already", name)
		}
		g.Members = append(g.Members, api.GroupMember{Account: b.contacts[i].Account, Name: name})
	}
	if len(g.Members) > 256 {
		return api.BadRequest("a group holds at most 256 members")
	}
	return nil
}

// group returns the group id. b.mu is held.
func (b *Backend) group(id string) (*testGroup, error) {
	if _, err := api.ParseGroupID(id); err != nil {
		return nil, err
	}
	tg := b.groups[id]
	if tg == nil {
		return nil, api.UnknownGroup(id)
	}
	return tg, nil
}

func (b *Backend) appendGroup(tg *testGroup, m api.GroupMessage) api.GroupMessage {
	b.seq++
	m.Seq = b.seq
	m.Lamport = uint64(len(tg.messages) + 1)
	m.ID = fmt.Sprintf("g%04d", b.seq)
	m.Group = tg.g.ID
	m.SentAt, m.ReceivedAt = b.now(), b.now()
	tg.messages = append(tg.messages, m)
	return m
}

// publishGroup announces a change of g. b.mu is held.
func (b *Backend) publishGroup(g api.Group) {
	c := cloneGroup(g)
	b.publish(api.Event{Type: api.EventGroup, Group: &c})
}

func cloneGroup(g api.Group) api.Group {
	g.Members = slices.Clone(g.Members)
	return g
}
