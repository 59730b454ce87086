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
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			id, err := b.Identity(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, id)
			}
			printIdentity(c.stdout, id)
			return nil
		}
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
		data := dataDirFlag(fs)
		qr := fs.Bool("qr", false, "also show the invite as a QR code")
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			inv, err := b.Invite(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, inviteJSON{Invite: inv})
			}
			if *qr {
				code, err := inviteQR(inv)
				if err != nil {
					return err
				}
				fmt.Fprint(c.stdout, code)
			}
			fmt.Fprintln(c.stdout, inv)
			return nil
		}
	},
}

var statusCommand = &command{
	name:     "status",
	synopsis: "[--data DIR] [--json]",
	summary:  "show the node's connections, outbox and mailbox",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			st, err := b.Status(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, st)
			}
			fmt.Fprintf(c.stdout, "peer id:          %s\n", st.PeerID)
			fmt.Fprintf(c.stdout, "addresses:        %s\n", orNone(st.Addrs, "\n                  "))
			fmt.Fprintf(c.stdout, "connected peers:  %d\n", st.ConnectedPeers)
			fmt.Fprintf(c.stdout, "outbox pending:   %d\n", st.OutboxPending)
			if st.Mailbox != nil {
				fmt.Fprintf(c.stdout, "mailbox:          %d envelopes, %d bytes\n", st.Mailbox.Envelopes, st.Mailbox.Bytes)
			}
			return nil
		}
	},
}
