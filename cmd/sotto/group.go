package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sotto-im/sotto/api"
)

// Groups are named on the command line by name or by a prefix of their
// ID; the API names them by ID only.
const (
	// minGroupIDPrefix is the fewest hex digits of an ID that name a
	// group.
	minGroupIDPrefix = 4
	// shortGroupID is how many hex digits of an ID are shown where the
	// whole ID is not needed.
	shortGroupID = 12
)

const groupArgHelp = "GROUP is the group's name, if no other group of yours has that name, or at\n" +
	"least 4 hex digits of its ID (`sotto group list` shows both)."

// resolveGroup finds the group arg names: a group whose name is arg
// (exactly, else ignoring case), or whose ID starts with arg (at least
// minGroupIDPrefix hex digits). Several groups of that name, or an ID
// prefix several IDs share, are an error that lists them.
func resolveGroup(ctx context.Context, b api.Backend, arg string) (api.Group, error) {
	gs, err := b.Groups(ctx)
	if err != nil {
		return api.Group{}, err
	}
	var exact, folded, byID []api.Group
	prefix := strings.ToLower(arg)
	for _, g := range gs {
		switch {
		case g.Name == arg:
			exact = append(exact, g)
		case strings.EqualFold(g.Name, arg):
			folded = append(folded, g)
		}
		if len(prefix) >= minGroupIDPrefix && isHex(prefix) && strings.HasPrefix(g.ID, prefix) {
			byID = append(byID, g)
		}
	}
	for _, c := range []struct {
		gs   []api.Group
		what string
	}{{exact, "named"}, {folded, "named"}, {byID, "with an ID starting"}} {
		switch len(c.gs) {
		case 0:
			continue
		case 1:
			return c.gs[0], nil
		}
		var names []string
		for _, g := range c.gs {
			names = append(names, fmt.Sprintf("%s (ID %s)", clean(g.Name, true), g.ID[:shortGroupID]))
		}
		return api.Group{}, fmt.Errorf("%d groups %s %q: %s; name one by more of its ID", len(c.gs), c.what, clean(arg, true), strings.Join(names, ", "))
	}
	if len(gs) == 0 {
		return api.Group{}, fmt.Errorf("no group %q: you have no groups yet; create one with `sotto group create NAME CONTACT...`", clean(arg, true))
	}
	return api.Group{}, fmt.Errorf("no group %q: `sotto group list` lists your groups with their IDs", clean(arg, true))
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return s != ""
}

// groupCall is the runFunc of a command about one group, named by its
// first argument: it defines --data and --json on fs, wants from min to
// max positional arguments in all (max < 0: no limit), resolves the
// group, and prints what call returns as JSON with --json, else with
// text.
func groupCall[T any](fs *flag.FlagSet, min, max int, missing string,
	call func(ctx context.Context, b api.Backend, g api.Group, args []string) (T, error),
	text func(w io.Writer, g api.Group, v T) error) runFunc {
	data := dataDirFlag(fs)
	asJSON := jsonFlag(fs)
	return func(ctx context.Context, c *cli, args []string) error {
		switch {
		case len(args) < min:
			return usageError{missing}
		case max >= 0 && len(args) > max:
			return usagef("unexpected argument %q", args[max])
		}
		b, release, err := c.backend(*data)
		if err != nil {
			return err
		}
		defer release()
		g, err := resolveGroup(ctx, b, args[0])
		if err != nil {
			return err
		}
		v, err := call(ctx, b, g, args[1:])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(c.stdout, v)
		}
		return text(c.stdout, g, v)
	}
}

var groupCreateCommand = &command{
	name:     "group create",
	synopsis: "[--data DIR] [--json] NAME [CONTACT...]",
	summary:  "create a group named NAME with the contacts CONTACT...",
	detail: "You are the group's first admin. Each contact receives the group over your\n" +
		"session with them; add more later with `sotto group add`.",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) < 1 {
				return usagef("need a group NAME")
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			g, err := b.CreateGroup(ctx, args[0], args[1:])
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, g)
			}
			fmt.Fprintf(c.stdout, "Created the group %s (ID %s) with %s; you are its admin.\n",
				clean(g.Name, true), g.ID[:shortGroupID], memberNames(g, false))
			fmt.Fprintf(c.stdout, "Send to it with `sotto send --group %s TEXT`.\n", shellWord(g.Name, g.ID))
			return nil
		}
	},
}

var groupAddCommand = &command{
	name:     "group add",
	synopsis: "[--data DIR] [--json] GROUP CONTACT...",
	summary:  "add contacts to a group (admins only)",
	detail:   groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 2, -1, "need a GROUP and the CONTACT names to add",
			func(ctx context.Context, b api.Backend, g api.Group, args []string) (api.Group, error) {
				return b.AddToGroup(ctx, g.ID, args)
			}, func(w io.Writer, _ api.Group, g api.Group) error {
				_, err := fmt.Fprintf(w, "%s now has %s: %s.\n", clean(g.Name, true), plural(len(g.Members), "member", "members"), memberNames(g, true))
				return err
			})
	},
}

var groupRemoveCommand = &command{
	name:     "group remove",
	synopsis: "[--data DIR] [--json] GROUP CONTACT",
	summary:  "remove a member from a group (admins only)",
	detail: "The group gets new keys that only the remaining members receive: CONTACT\n" +
		"reads nothing sent to the group from then on.\n" + groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 2, 2, "need a GROUP and the CONTACT to remove",
			func(ctx context.Context, b api.Backend, g api.Group, args []string) (api.Group, error) {
				return b.RemoveFromGroup(ctx, g.ID, args[0])
			}, func(w io.Writer, _ api.Group, g api.Group) error {
				_, err := fmt.Fprintf(w, "Removed from %s; it now has %s: %s.\n", clean(g.Name, true), plural(len(g.Members), "member", "members"), memberNames(g, true))
				return err
			})
	},
}

var groupLeaveCommand = &command{
	name:     "group leave",
	synopsis: "[--data DIR] [--json] GROUP",
	summary:  "leave a group",
	detail:   "Its messages stay readable with `sotto messages --group`.\n" + groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 1, 1, "need the GROUP to leave",
			func(ctx context.Context, b api.Backend, g api.Group, _ []string) (api.Group, error) {
				return b.LeaveGroup(ctx, g.ID)
			}, func(w io.Writer, _ api.Group, g api.Group) error {
				_, err := fmt.Fprintf(w, "You left %s.\n", clean(g.Name, true))
				return err
			})
	},
}

var groupRenameCommand = &command{
	name:     "group rename",
	synopsis: "[--data DIR] [--json] GROUP NEWNAME",
	summary:  "rename a group (admins only)",
	detail:   groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 2, 2, "need a GROUP and its NEWNAME",
			func(ctx context.Context, b api.Backend, g api.Group, args []string) (api.Group, error) {
				return b.RenameGroup(ctx, g.ID, args[0])
			}, func(w io.Writer, old api.Group, g api.Group) error {
				_, err := fmt.Fprintf(w, "Renamed %s to %s.\n", clean(old.Name, true), clean(g.Name, true))
				return err
			})
	},
}

var groupPromoteCommand = &command{
	name:     "group promote",
	synopsis: "[--data DIR] [--json] GROUP CONTACT",
	summary:  "make a member an admin of a group (admins only)",
	detail:   groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 2, 2, "need a GROUP and the CONTACT to promote",
			func(ctx context.Context, b api.Backend, g api.Group, args []string) (api.Group, error) {
				return b.PromoteInGroup(ctx, g.ID, args[0])
			}, func(w io.Writer, _ api.Group, g api.Group) error {
				_, err := fmt.Fprintf(w, "Admins of %s: %s.\n", clean(g.Name, true), adminNames(g))
				return err
			})
	},
}

var groupListCommand = &command{
	name:     "group list",
	synopsis: "[--data DIR] [--json]",
	summary:  "list your groups",
	setup: func(fs *flag.FlagSet) runFunc {
		return backendCall(fs, 0, "", func(ctx context.Context, b api.Backend, _ []string) ([]api.Group, error) {
			gs, err := b.Groups(ctx)
			if err == nil && gs == nil {
				gs = []api.Group{} // --json prints [], not null
			}
			return gs, err
		}, func(w io.Writer, gs []api.Group) error {
			if len(gs) == 0 {
				fmt.Fprintln(w, "No groups yet: create one with `sotto group create NAME CONTACT...`.")
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tMEMBERS\tYOU\tID")
			for _, g := range gs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", clean(g.Name, true), len(g.Members), groupRole(g), g.ID[:shortGroupID])
			}
			return tw.Flush()
		})
	},
}

var groupInfoCommand = &command{
	name:     "group info",
	synopsis: "[--data DIR] [--json] GROUP",
	summary:  "show a group's ID and members",
	detail:   groupArgHelp,
	setup: func(fs *flag.FlagSet) runFunc {
		return groupCall(fs, 1, 1, "need a GROUP",
			func(ctx context.Context, b api.Backend, g api.Group, _ []string) (api.Group, error) {
				return g, nil
			}, func(w io.Writer, _ api.Group, g api.Group) error {
				fmt.Fprintf(w, "Group:   %s\nID:      %s\nYou:     %s\n\n", clean(g.Name, true), g.ID, groupRole(g))
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "MEMBER\tROLE\tACCOUNT")
				for _, m := range g.Members {
					role := "member"
					if m.Admin {
						role = "admin"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", memberName(m), role, m.Account)
				}
				return tw.Flush()
			})
	},
}

// groupRole is this account's place in g.
func groupRole(g api.Group) string {
	switch {
	case g.Left:
		return "left"
	case g.Admin:
		return "admin"
	}
	return "member"
}

// memberName is how a member is shown: "you", the contact's name, or the
// account's fingerprint for a member who is not a contact.
func memberName(m api.GroupMember) string {
	switch {
	case m.Me:
		return "you"
	case m.Name != "":
		return clean(m.Name, true)
	}
	return m.Account
}

// memberNames lists g's members, with or without "you".
func memberNames(g api.Group, me bool) string {
	var names []string
	for _, m := range g.Members {
		if m.Me && !me {
			continue
		}
		names = append(names, memberName(m))
	}
	if len(names) == 0 {
		return "no one else yet"
	}
	return strings.Join(names, ", ")
}

func adminNames(g api.Group) string {
	var names []string
	for _, m := range g.Members {
		if m.Admin {
			names = append(names, memberName(m))
		}
	}
	return strings.Join(names, ", ")
}

// shellWord is how a group is named in a command to copy: its name when
// it can be typed as one word, else a prefix of its ID.
func shellWord(name, id string) string {
	if name != "" && !strings.ContainsFunc(name, func(r rune) bool {
		return !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) {
		return name
	}
	return id[:shortGroupID]
}

// groupMessageLine is a group message as `sotto send --group --json` and
// `sotto messages --group --json` print it.
type groupMessageLine struct {
	ID         string        `json:"id"`
	Group      string        `json:"group"`
	Sender     string        `json:"sender"`
	SenderName string        `json:"sender_name,omitempty"`
	Direction  api.Direction `json:"direction"`
	Text       string        `json:"text"`
	SentAt     string        `json:"sent_at"`
	// Delivered and Recipients: receipts of an outgoing message
	// (delivered N/M).
	Delivered  int    `json:"delivered,omitempty"`
	Recipients int    `json:"recipients,omitempty"`
	Seq        uint64 `json:"seq"`
	// Event is set only on a line that `messages --group --follow --json`
	// prints for a message shown before whose delivered count changed:
	// "delivered".
	Event string `json:"event,omitempty"`
}

// eventDelivered marks a delivered-count line of `messages --group
// --follow --json`.
const eventDelivered = "delivered"

func groupMessageJSON(m api.GroupMessage) groupMessageLine {
	return groupMessageLine{
		ID:         m.ID,
		Group:      m.Group,
		Sender:     m.Sender,
		SenderName: m.SenderName,
		Direction:  m.Direction,
		Text:       m.Text,
		SentAt:     m.SentAt.UTC().Format(time.RFC3339),
		Delivered:  m.Delivered,
		Recipients: m.Recipients,
		Seq:        m.Seq,
	}
}

// groupPrinter prints the messages of one group for `sotto messages
// --group`.
type groupPrinter struct {
	w    io.Writer
	json bool
	g    api.Group
	// delivered is the delivered count shown for each message printed.
	delivered map[string]int
	skip      int // messages of the history read so far
}

func newGroupPrinter(w io.Writer, asJSON bool, g api.Group) *groupPrinter {
	return &groupPrinter{w: w, json: asJSON, g: g, delivered: map[string]int{}}
}

// history prints the stored messages not printed yet, page by page.
func (p *groupPrinter) history(ctx context.Context, b api.Backend) error {
	for {
		page, err := b.GroupMessages(ctx, p.g.ID, p.skip, api.MaxGroupMessageLimit)
		if err != nil {
			return err
		}
		p.skip += len(page)
		for _, m := range page {
			if err := p.message(m); err != nil {
				return err
			}
		}
		if len(page) < api.MaxGroupMessageLimit {
			return nil
		}
	}
}

func (p *groupPrinter) event(ev api.Event) error {
	switch ev.Type {
	case api.EventGroupMessage:
		if ev.GroupMessage != nil && ev.GroupMessage.Group == p.g.ID {
			return p.message(*ev.GroupMessage)
		}
	case api.EventGroup:
		if p.json || ev.Group == nil || ev.Group.ID != p.g.ID {
			return nil
		}
		g := *ev.Group
		_, err := fmt.Fprintf(p.w, "  (%s: %s, you: %s)\n", clean(g.Name, true), plural(len(g.Members), "member", "members"), groupRole(g))
		return err
	}
	return nil
}

// message prints m, or, for a message printed before, its new delivered
// count.
func (p *groupPrinter) message(m api.GroupMessage) error {
	shown, seen := p.delivered[m.ID]
	if seen && (m.Direction != api.DirectionOut || shown == m.Delivered) {
		return nil
	}
	p.delivered[m.ID] = m.Delivered
	if p.json {
		line := groupMessageJSON(m)
		if seen {
			line.Event = eventDelivered
		}
		return printJSON(p.w, line)
	}
	if seen {
		_, err := fmt.Fprintf(p.w, "  (%s: delivered %d/%d)\n", m.ID, m.Delivered, m.Recipients)
		return err
	}
	who, note := m.SenderName, ""
	switch {
	case m.Direction == api.DirectionOut:
		who, note = "you", fmt.Sprintf("  (delivered %d/%d)", m.Delivered, m.Recipients)
	case who == "":
		who = m.Sender
	}
	text := strings.ReplaceAll(clean(m.Text, false), "\n", "\n    ")
	_, err := fmt.Fprintf(p.w, "%s  %s: %s%s\n", m.SentAt.Local().Format("2006-01-02 15:04"), clean(who, true), text, note)
	return err
}
