package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/sotto-im/sotto/api"
)

// maxStdinText bounds a message read from standard input; the API refuses
// larger requests anyway.
const maxStdinText = api.MaxBodyBytes

var sendCommand = &command{
	name:     "send",
	synopsis: "[--data DIR] [--json] NAME TEXT... | --group GROUP TEXT...",
	summary:  "send a message to the contact NAME, or to a group",
	detail: "The words of TEXT are joined with spaces; TEXT \"-\" reads the message from\n" +
		"standard input. Use -- before a TEXT that starts with a dash.\n" +
		"The command returns once the message is in the outbox; `sotto messages` shows\n" +
		"whether it was sent, stored at mailboxes or delivered.\n" +
		"With --group, the message goes to every member of GROUP, its name or at least\n" +
		"4 hex digits of its ID; `sotto messages --group GROUP` shows how many have it.",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		group := fs.String("group", "", "send to the group `GROUP` (a name or an ID prefix) instead of a contact")
		return func(ctx context.Context, c *cli, args []string) error {
			if *group != "" {
				// No contact NAME: every argument is TEXT.
				args = append([]string{""}, args...)
			}
			if len(args) < 2 {
				if *group != "" {
					return usagef("need the TEXT to send")
				}
				return usagef("need a contact NAME and the TEXT to send")
			}
			text := strings.Join(args[1:], " ")
			if len(args) == 2 && args[1] == "-" {
				b, err := io.ReadAll(io.LimitReader(c.stdin, maxStdinText+1))
				if err != nil {
					return fmt.Errorf("reading the message: %w", err)
				}
				if len(b) > maxStdinText {
					return fmt.Errorf("message on standard input is larger than %d bytes", maxStdinText)
				}
				text = strings.TrimSuffix(string(b), "\n")
			}
			if strings.TrimSpace(text) == "" {
				return errors.New("the message is empty")
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			if *group != "" {
				return sendGroup(ctx, c, b, *group, text, *asJSON)
			}
			m, err := b.Send(ctx, args[0], text)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, messageJSON(m))
			}
			_, running := b.(*api.Client)
			if m.State == api.StateQueued && !running {
				fmt.Fprintf(c.stdout, "Queued to %s (id %s); no node is running, so it goes out when the node next runs (`sotto run`).\n",
					clean(m.Contact, true), m.ID)
				return nil
			}
			fmt.Fprintf(c.stdout, "%s to %s (id %s)\n", capitalize(string(m.State)), clean(m.Contact, true), m.ID)
			return nil
		}
	},
}

// sendGroup sends text to the group that arg names.
func sendGroup(ctx context.Context, c *cli, b api.Backend, arg, text string, asJSON bool) error {
	g, err := resolveGroup(ctx, b, arg)
	if err != nil {
		return err
	}
	m, err := b.SendGroup(ctx, g.ID, text)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.stdout, groupMessageJSON(m))
	}
	_, err = fmt.Fprintf(c.stdout, "Sent to %s (id %s; %s)\n", clean(g.Name, true), m.ID,
		plural(m.Recipients, "member to receive it", "members to receive it"))
	return err
}

// messageLine is a message as `sotto messages --json` prints it: state for
// outgoing messages, via for incoming ones.
type messageLine struct {
	ID        string        `json:"id"`
	Contact   string        `json:"contact"`
	Direction api.Direction `json:"direction"`
	Text      string        `json:"text"`
	SentAt    string        `json:"sent_at"`
	State     api.State     `json:"state,omitempty"`
	Via       api.Via       `json:"via,omitempty"`
	StoredAt  int           `json:"stored_at,omitempty"`
	Seq       uint64        `json:"seq"`
	// SessionReset: the first message after the contact's device started
	// a new session (a restored backup, a reinstall; not a key change).
	SessionReset bool `json:"session_reset,omitempty"`
	// Damaged: the message's record failed its check in the store.
	Damaged bool `json:"damaged,omitempty"`
	// Event is set only on a line that `messages --follow --json` prints
	// for a change of state of a message shown before: "state".
	Event string `json:"event,omitempty"`
}

// eventState marks a state change line of `messages --follow --json`.
const eventState = "state"

// stateText describes an outgoing message's state for people.
func stateText(m api.Message) string {
	if m.State == api.StateStored && m.StoredAt > 0 {
		return "stored at " + plural(m.StoredAt, "mailbox", "mailboxes")
	}
	return string(m.State)
}

// plural is "1 mailbox", "2 mailboxes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func messageJSON(m api.Message) messageLine {
	return messageLine{
		ID:        m.ID,
		Contact:   m.Contact,
		Direction: m.Direction,
		Text:      m.Text,
		SentAt:    m.SentAt.UTC().Format(time.RFC3339),
		State:     m.State,
		Via:       m.Via,
		StoredAt:  m.StoredAt,
		Seq:       m.Seq,

		SessionReset: m.SessionReset,
		Damaged:      m.Damaged,
	}
}

var messagesCommand = &command{
	name:     "messages",
	synopsis: "[--data DIR] [--json] [--follow] [NAME | --group GROUP]",
	summary:  "list messages, all or with NAME or of a group, oldest first",
	detail: "With --follow, keep running and print new messages as they arrive, and\n" +
		"changes of their state, until interrupted. If no node is running, it prints\n" +
		"the stored messages, then waits for `sotto run` (without holding the data\n" +
		"directory) and follows that node. With --json, print one JSON object per\n" +
		"message and line: id, contact, direction, text, sent_at, seq, and state\n" +
		"(sent) or via (received); a state change is the message's line again with\n" +
		"its new state and \"event\":\"state\".\n" +
		"With --group GROUP (its name or at least 4 hex digits of its ID), list that\n" +
		"group's messages in the order the group shows them; with --json, one object\n" +
		"per message: id, group, sender, sender_name, direction, text, sent_at, seq,\n" +
		"and delivered and recipients (sent); with --follow, a sent message whose\n" +
		"delivered count changed is its line again with \"event\":\"delivered\".",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		followFlag := fs.Bool("follow", false, "keep printing new messages and state changes until interrupted")
		group := fs.String("group", "", "list the messages of the group `GROUP` (a name or an ID prefix)")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 1 {
				return usagef("unexpected argument %q", args[1])
			}
			var contact string
			if len(args) == 1 {
				contact = args[0]
			}
			if contact != "" && *group != "" {
				return usagef("give a contact NAME or --group GROUP, not both")
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			release = sync.OnceFunc(release)
			defer release()
			var p printer = &messagePrinter{w: c.stdout, json: *asJSON, terminal: isTerminal(c.stdout), contact: contact}
			if *group != "" {
				g, err := resolveGroup(ctx, b, *group)
				if err != nil {
					return err
				}
				p = newGroupPrinter(c.stdout, *asJSON, g)
			}
			if !*followFlag {
				return p.history(ctx, b)
			}
			if _, running := b.(*api.Client); running {
				return follow(ctx, b, p)
			}
			// No node is running. Following the data directory opened
			// here would hold it, and `sotto run` could not start: print
			// what is stored, let go, and follow the node once one runs.
			if err := p.history(ctx, b); err != nil {
				return err
			}
			release()
			dir, err := c.dataDir(*data)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "No node is running for %s; waiting for one to start (`sotto run --data %s`).\n", dir, dir)
			client, err := waitForSocket(ctx, dir)
			if err != nil {
				if ctx.Err() != nil {
					return nil // interrupted
				}
				return err
			}
			defer client.Close()
			fmt.Fprintf(c.stderr, "A node is running for %s; following it.\n", dir)
			return follow(ctx, client, p)
		}
	},
}

// followPoll is how often `messages --follow` looks for a node to start.
const followPoll = 250 * time.Millisecond

// waitForSocket waits until a node serves the control socket of dir, or
// ctx ends. It only probes the socket: the data directory stays free for
// the node to open.
func waitForSocket(ctx context.Context, dir string) (*api.Client, error) {
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	for {
		client, err := api.Dial(dir)
		if err == nil {
			return client, nil
		}
		if !errors.Is(err, api.ErrNoNode) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// printer prints messages for `sotto messages`: those stored, then
// events.
type printer interface {
	// history prints the stored messages not printed yet.
	history(ctx context.Context, b api.Backend) error
	event(ev api.Event) error
}

// follow prints the messages after those printed so far, then new ones and
// state changes as they come, until ctx ends or the node goes away.
func follow(ctx context.Context, b api.Backend, p printer) error {
	// Subscribe before reading the history, so that nothing falls between
	// them; the seq cursor removes overlap.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := b.Subscribe(ctx)
	if err != nil {
		return err
	}
	if err := p.history(ctx, b); err != nil {
		return err
	}
	for ev := range events {
		if err := p.event(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil // interrupted
	}
	return errors.New("lost the connection to the node")
}

// messagePrinter prints messages and events for `sotto messages`.
type messagePrinter struct {
	w        io.Writer
	json     bool
	terminal bool   // progress lines are only for terminals
	contact  string // only this contact's messages, if set
	last     uint64 // highest seq printed
	progress bool   // a progress line is open
}

// history prints the stored messages, page by page.
func (p *messagePrinter) history(ctx context.Context, b api.Backend) error {
	for {
		page, err := b.Messages(ctx, api.MessageQuery{Contact: p.contact, After: p.last, Limit: api.MaxMessageLimit})
		if err != nil {
			return err
		}
		for _, m := range page {
			if err := p.message(m); err != nil {
				return err
			}
		}
		if len(page) < api.MaxMessageLimit {
			return nil
		}
	}
}

func (p *messagePrinter) event(ev api.Event) error {
	switch ev.Type {
	case api.EventMessage:
		if ev.Message != nil && (p.contact == "" || ev.Message.Contact == p.contact) {
			return p.message(*ev.Message)
		}
	case api.EventState:
		m := ev.Message
		if m == nil || (p.contact != "" && m.Contact != p.contact) {
			return nil
		}
		if p.json {
			line := messageJSON(*m)
			line.Event = eventState
			return printJSON(p.w, line)
		}
		p.endProgress()
		_, err := fmt.Fprintf(p.w, "  (%s to %s: %s)\n", m.ID, clean(m.Contact, true), stateText(*m))
		return err
	case api.EventContactRequest:
		if p.json || ev.Contact == nil {
			return nil
		}
		p.endProgress()
		_, err := fmt.Fprintf(p.w, "  (contact request from %s: see `sotto contact list`)\n", clean(ev.Contact.Name, true))
		return err
	case api.EventKeyChange:
		if p.json || ev.Contact == nil {
			return nil
		}
		p.endProgress()
		name := clean(ev.Contact.Name, true)
		_, err := fmt.Fprintf(p.w, "  (%s's key changed: compare safety numbers with `sotto contact verify %s`)\n", name, name)
		return err
	case api.EventSyncProgress:
		if p.json || !p.terminal || ev.Sync == nil {
			return nil
		}
		fmt.Fprintf(p.w, "\rsyncing mailboxes: %d queried, %d envelopes", ev.Sync.Mailboxes, ev.Sync.Envelopes)
		p.progress = true
		if ev.Sync.Done {
			p.endProgress()
		}
	}
	return nil
}

func (p *messagePrinter) endProgress() {
	if p.progress {
		fmt.Fprintln(p.w)
		p.progress = false
	}
}

// message prints m unless it was printed already.
func (p *messagePrinter) message(m api.Message) error {
	if m.Seq != 0 && m.Seq <= p.last {
		return nil
	}
	p.last = max(p.last, m.Seq)
	if p.json {
		return printJSON(p.w, messageJSON(m))
	}
	p.endProgress()
	if m.SessionReset {
		if _, err := fmt.Fprintf(p.w, "-- %s's device started a new session (a restored backup or a reinstall; the same account key, not a key change) --\n", clean(m.Contact, true)); err != nil {
			return err
		}
	}
	arrow, note := "<", "via "+string(m.Via)
	switch {
	case m.Damaged:
		arrow, note = "?", "damaged record" // its direction was in the record
	case m.Direction == api.DirectionOut:
		arrow, note = ">", stateText(m)
	}
	text := strings.ReplaceAll(clean(m.Text, false), "\n", "\n    ")
	when := "????-??-?? ??:??" // not known: a damaged record
	if !m.SentAt.IsZero() {
		when = m.SentAt.Local().Format("2006-01-02 15:04")
	}
	_, err := fmt.Fprintf(p.w, "%s  %s %s %s  (%s)\n", when, clean(m.Contact, true), arrow, text, note)
	return err
}
