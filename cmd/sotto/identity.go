package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/sotto-im/sotto/api"
)

var idCommand = &command{
	name:     "id",
	synopsis: "[--data DIR] [--json]",
	summary:  "show this device's identity: name, account fingerprint, peer ID, addresses",
	setup: func(fs *flag.FlagSet) runFunc {
		return backendCall(fs, 0, "", func(ctx context.Context, b api.Backend, _ []string) (api.Identity, error) {
			return b.Identity(ctx)
		}, func(w io.Writer, id api.Identity) error {
			printIdentity(w, id)
			return nil
		})
	},
}

func printIdentity(w io.Writer, id api.Identity) {
	fmt.Fprintf(w, "name:       %s\n", clean(id.Name, true))
	fmt.Fprintf(w, "account:    %s\n", id.Account)
	fmt.Fprintf(w, "peer id:    %s\n", id.PeerID)
	fmt.Fprintf(w, "addresses:  %s\n", orNone(id.Addrs, "\n            "))
}

func orNone(list []string, sep string) string {
	if len(list) == 0 {
		return "(none)"
	}
	return strings.Join(list, sep)
}

type inviteJSON struct {
	Invite string `json:"invite"`
}

var inviteCommand = &command{
	name:     "invite",
	synopsis: "[--data DIR] [--qr] [--json]",
	summary:  "print an invite link that others add with `sotto contact add`",
	setup: func(fs *flag.FlagSet) runFunc {
		qr := fs.Bool("qr", false, "also show the invite as a QR code")
		return backendCall(fs, 0, "", func(ctx context.Context, b api.Backend, _ []string) (inviteJSON, error) {
			inv, err := b.Invite(ctx)
			return inviteJSON{Invite: inv}, err
		}, func(w io.Writer, inv inviteJSON) error {
			if *qr {
				code, err := inviteQR(inv.Invite)
				if err != nil {
					return err
				}
				fmt.Fprint(w, code)
			}
			fmt.Fprintln(w, inv.Invite)
			return nil
		})
	},
}

var statusCommand = &command{
	name:     "status",
	synopsis: "[--data DIR] [--json]",
	summary:  "show the node's connections, outbox and mailbox",
	setup: func(fs *flag.FlagSet) runFunc {
		return backendCall(fs, 0, "", func(ctx context.Context, b api.Backend, _ []string) (api.Status, error) {
			return b.Status(ctx)
		}, func(w io.Writer, st api.Status) error {
			fmt.Fprintf(w, "peer id:          %s\n", st.PeerID)
			fmt.Fprintf(w, "addresses:        %s\n", orNone(st.Addrs, "\n                  "))
			reach := st.Reachability
			switch {
			case reach == "private" && len(st.Relays) > 0:
				reach += " (reachable through relays " + strings.Join(st.Relays, ", ") + ")"
			case reach == "private":
				reach += " (no relay yet: contacts reach this node through mailboxes)"
			}
			if reach != "" {
				fmt.Fprintf(w, "reachability:     %s, DHT %s\n", reach, st.DHTMode)
			}
			fmt.Fprintf(w, "connected peers:  %d\n", st.ConnectedPeers)
			for _, c := range st.Connections {
				path := "direct"
				if c.Relayed {
					path = "relayed"
				}
				fmt.Fprintf(w, "                  %s %s %s (%s)\n", c.Peer, c.Direction, c.Addr, path)
			}
			fmt.Fprintf(w, "outbox pending:   %d\n", st.OutboxPending)
			fmt.Fprintf(w, "requests:         %d waiting", st.Requests)
			if st.RequestsDropped > 0 {
				fmt.Fprintf(w, ", %d oldest dropped over the limit", st.RequestsDropped)
			}
			fmt.Fprintln(w)
			if st.Mailbox != nil {
				fmt.Fprintf(w, "mailbox:          %d envelopes, %d bytes\n", st.Mailbox.Envelopes, st.Mailbox.Bytes)
			}
			printStore(w, st.Store)
			return nil
		})
	},
}
