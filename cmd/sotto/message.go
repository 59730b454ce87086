package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sotto-im/sotto/api"
)

// maxStdinText bounds a message read from standard input; the API refuses
// larger requests anyway.
const maxStdinText = api.MaxBodyBytes

var sendCommand = &command{
	name:     "send",
	synopsis: "[--data DIR] [--json] NAME TEXT...",
	summary:  "send a message to the contact NAME",
	detail: "The words of TEXT are joined with spaces; TEXT \"-\" reads the message from\n" +
		"standard input. Use -- before a TEXT that starts with a dash.\n" +
		"The command returns once the message is in the outbox; `sotto messages` shows\n" +
		"whether it was sent, stored at mailboxes or delivered.",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) < 2 {
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
	}
}

var messagesCommand = &command{
	name:     "messages",
	synopsis: "[--data DIR] [--json] [--follow] [NAME]",
	summary:  "list messages, all or with NAME, oldest first",
	detail: "With --follow, keep running and print new messages as they arrive (and, as\n" +
		"text, delivery updates) until interrupted. With --json, print one JSON object\n" +
		"per message and line: id, contact, direction, text, sent_at, and state (sent)\n" +
		"or via (received).",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		follow := fs.Bool("follow", false, "keep printing new messages until interrupted")
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 1 {
				return usagef("unexpected argument %q", args[1])
			}
			var contact string
			if len(args) == 1 {
				contact = args[0]
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			p := &messagePrinter{w: c.stdout, json: *asJSON, terminal: isTerminal(c.stdout), contact: contact}
			var events <-chan api.Event
			if *follow {
				// Subscribe before reading the history, so that nothing
				// falls between them; the seq cursor removes overlap.
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				if events, err = b.Subscribe(ctx); err != nil {
					return err
				}
			}
			if err := p.history(ctx, b); err != nil {
				return err
			}
			if !*follow {
				return nil
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
	},
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
		if p.json || m == nil || (p.contact != "" && m.Contact != p.contact) {
			return nil
		}
		p.endProgress()
		state := string(m.State)
		if m.State == api.StateStored && m.StoredAt > 0 {
			state = fmt.Sprintf("stored at %d mailboxes", m.StoredAt)
		}
		_, err := fmt.Fprintf(p.w, "  (%s to %s: %s)\n", m.ID, clean(m.Contact, true), state)
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
	arrow, note := "<", "via "+string(m.Via)
	if m.Direction == api.DirectionOut {
		arrow, note = ">", string(m.State)
		if m.State == api.StateStored && m.StoredAt > 0 {
			note = fmt.Sprintf("stored at %d mailboxes", m.StoredAt)
		}
	}
	text := strings.ReplaceAll(clean(m.Text, false), "\n", "\n    ")
	_, err := fmt.Fprintf(p.w, "%s  %s %s %s  (%s)\n",
		m.SentAt.Local().Format("2006-01-02 15:04"), clean(m.Contact, true), arrow, text, note)
	return err
}
