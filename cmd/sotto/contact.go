package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/sotto-im/sotto/api"
)

var contactAddCommand = &command{
	name:     "contact add",
	synopsis: "[--data DIR] [--json] NAME INVITE",
	summary:  "add a contact under NAME from their invite link",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			switch {
			case len(args) < 2:
				return usagef("need a NAME and an INVITE")
			case len(args) > 2:
				return usagef("unexpected argument %q", args[2])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			ct, err := b.AddContact(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, ct)
			}
			fmt.Fprintf(c.stdout, "Added %s (account %s).\n", clean(ct.Name, true), ct.Account)
			fmt.Fprintf(c.stdout, "Compare safety numbers with `sotto contact verify %s`.\n", clean(ct.Name, true))
			return nil
		}
	},
}

var contactListCommand = &command{
	name:     "contact list",
	synopsis: "[--data DIR] [--json]",
	summary:  "list contacts and contact requests",
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
			cs, err := b.Contacts(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				if cs == nil {
					cs = []api.Contact{}
				}
				return printJSON(c.stdout, cs)
			}
			if len(cs) == 0 {
				fmt.Fprintln(c.stdout, "No contacts yet: add one with `sotto contact add NAME INVITE`.")
				return nil
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tACCOUNT")
			for _, ct := range cs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", clean(ct.Name, true), contactStatus(ct), ct.Account)
			}
			return tw.Flush()
		}
	},
}

func contactStatus(ct api.Contact) string {
	var s []string
	switch {
	case ct.Request:
		s = append(s, "request")
	case ct.Verified:
		s = append(s, "verified")
	default:
		s = append(s, "unverified")
	}
	if ct.KeyChanged {
		s = append(s, "KEY CHANGED")
	}
	return strings.Join(s, ", ")
}

// safetyGroupsPerLine is how many digit groups of a safety number print on
// one line.
const safetyGroupsPerLine = 4

var contactVerifyCommand = &command{
	name:     "contact verify",
	synopsis: "[--data DIR] [--confirm] [--json] NAME",
	summary:  "show the safety number shared with NAME, or confirm it matches",
	detail: "Compare the number with your contact's, in person or over a channel you trust.\n" +
		"If they match, run the command again with --confirm.",
	setup: func(fs *flag.FlagSet) runFunc {
		data := dataDirFlag(fs)
		confirm := fs.Bool("confirm", false, "mark NAME as verified: the numbers match")
		asJSON := jsonFlag(fs)
		return func(ctx context.Context, c *cli, args []string) error {
			switch {
			case len(args) < 1:
				return usagef("need a contact NAME")
			case len(args) > 1:
				return usagef("unexpected argument %q", args[1])
			}
			b, release, err := c.backend(*data)
			if err != nil {
				return err
			}
			defer release()
			v, err := b.VerifyContact(ctx, args[0], *confirm)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(c.stdout, v)
			}
			name := clean(v.Contact, true)
			fmt.Fprintf(c.stdout, "Safety number with %s:\n\n", name)
			groups := strings.Fields(v.SafetyNumber)
			for i := 0; i < len(groups); i += safetyGroupsPerLine {
				fmt.Fprintf(c.stdout, "    %s\n", strings.Join(groups[i:min(i+safetyGroupsPerLine, len(groups))], " "))
			}
			fmt.Fprintln(c.stdout)
			switch {
			case *confirm && v.KeyChanged:
				fmt.Fprintf(c.stdout, "%s's new key is accepted and verified.\n", name)
			case v.KeyChanged:
				fmt.Fprintf(c.stdout, "%s's key CHANGED: this is the number of the new key. If %s sees the same\n"+
					"number, accept the new key with `sotto contact verify %s --confirm`.\n", name, name, name)
			case *confirm:
				fmt.Fprintf(c.stdout, "%s is now verified.\n", name)
			case v.Verified:
				fmt.Fprintf(c.stdout, "%s is verified.\n", name)
			default:
				fmt.Fprintf(c.stdout, "If %s sees the same number, run `sotto contact verify %s --confirm`.\n", name, name)
			}
			return nil
		}
	},
}
