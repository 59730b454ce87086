package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/sotto-im/sotto/api"
)

var contactAddCommand = &command{
	name:     "contact add",
	synopsis: "[--data DIR] [--json] NAME INVITE",
	summary:  "add a contact under NAME from their invite link",
	setup: func(fs *flag.FlagSet) runFunc {
		return backendCall(fs, 2, "need a NAME and an INVITE", func(ctx context.Context, b api.Backend, args []string) (api.Contact, error) {
			return b.AddContact(ctx, args[0], args[1])
		}, func(w io.Writer, ct api.Contact) error {
			fmt.Fprintf(w, "Added %s (account %s).\n", clean(ct.Name, true), ct.Account)
			fmt.Fprintf(w, "Compare safety numbers with `sotto contact verify %s`.\n", clean(ct.Name, true))
			return nil
		})
	},
}

var contactListCommand = &command{
	name:     "contact list",
	synopsis: "[--data DIR] [--json]",
	summary:  "list contacts and contact requests",
	setup: func(fs *flag.FlagSet) runFunc {
		return backendCall(fs, 0, "", func(ctx context.Context, b api.Backend, _ []string) ([]api.Contact, error) {
			cs, err := b.Contacts(ctx)
			if err == nil && cs == nil {
				cs = []api.Contact{} // --json prints [], not null
			}
			return cs, err
		}, func(w io.Writer, cs []api.Contact) error {
			if len(cs) == 0 {
				fmt.Fprintln(w, "No contacts yet: add one with `sotto contact add NAME INVITE`.")
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tACCOUNT")
			for _, ct := range cs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", clean(ct.Name, true), contactStatus(ct), ct.Account)
			}
			return tw.Flush()
		})
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
	synopsis: "[--data DIR] [--confirm | --reject] [--json] NAME",
	summary:  "show the safety number shared with NAME, or confirm it matches",
	detail: "Compare the number with your contact's, in person or over a channel you trust.\n" +
		"If they match, run the command again with --confirm. If NAME's key changed and the\n" +
		"numbers do not match, --reject drops the new key and keeps the old one.",
	setup: func(fs *flag.FlagSet) runFunc {
		confirm := fs.Bool("confirm", false, "mark NAME as verified: the numbers match")
		reject := fs.Bool("reject", false, "drop NAME's new key and keep the old one: the numbers do not match")
		return backendCall(fs, 1, "need a contact NAME", func(ctx context.Context, b api.Backend, args []string) (api.Verification, error) {
			switch {
			case *confirm && *reject:
				return api.Verification{}, usagef("--confirm and --reject exclude each other")
			case *reject:
				return b.RejectKeyChange(ctx, args[0])
			}
			return b.VerifyContact(ctx, args[0], *confirm)
		}, func(w io.Writer, v api.Verification) error {
			name := clean(v.Contact, true)
			fmt.Fprintf(w, "Safety number with %s:\n\n", name)
			groups := strings.Fields(v.SafetyNumber)
			for i := 0; i < len(groups); i += safetyGroupsPerLine {
				fmt.Fprintf(w, "    %s\n", strings.Join(groups[i:min(i+safetyGroupsPerLine, len(groups))], " "))
			}
			fmt.Fprintln(w)
			switch {
			case *reject:
				fmt.Fprintf(w, "%s's new key is rejected: this is the number of the key you keep, and messages\n"+
					"go to that key again. If %s's device presents the new key again, you are asked again.\n", name, name)
			case *confirm && v.KeyChanged:
				fmt.Fprintf(w, "%s's new key is accepted and verified.\n", name)
			case v.KeyChanged:
				fmt.Fprintf(w, "%s's key CHANGED: this is the number of the new key. If %s sees the same\n"+
					"number, accept the new key with `sotto contact verify %s --confirm`; if not, keep\n"+
					"the old key with `sotto contact verify %s --reject`.\n", name, name, name, name)
			case *confirm:
				fmt.Fprintf(w, "%s is now verified.\n", name)
			case v.Verified:
				fmt.Fprintf(w, "%s is verified.\n", name)
			default:
				fmt.Fprintf(w, "If %s sees the same number, run `sotto contact verify %s --confirm`.\n", name, name)
			}
			return nil
		})
	},
}
