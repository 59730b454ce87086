package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/sotto-im/sotto/api"
)

// A command is one subcommand. setup defines its flags on fs and returns
// the function that runs it with the positional arguments.
type command struct {
	name     string // "send", "contact add"
	synopsis string // flags and arguments after the name
	summary  string // one line for the command list
	detail   string // more help, may be empty
	setup    func(fs *flag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, c *cli, args []string) error

// backendCall is the runFunc of a command that makes one call to the
// backend: it defines --data and --json on fs, wants exactly n positional
// arguments (missing is the usage error for fewer), and prints what call
// returns as JSON with --json, else with text. The backend stays open until
// the output is written.
func backendCall[T any](fs *flag.FlagSet, n int, missing string,
	call func(ctx context.Context, b api.Backend, args []string) (T, error),
	text func(w io.Writer, v T) error) runFunc {
	data := dataDirFlag(fs)
	asJSON := jsonFlag(fs)
	return func(ctx context.Context, c *cli, args []string) error {
		switch {
		case len(args) < n:
			return usageError{missing}
		case len(args) > n:
			return usagef("unexpected argument %q", args[n])
		}
		b, release, err := c.backend(*data)
		if err != nil {
			return err
		}
		defer release()
		v, err := call(ctx, b, args)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(c.stdout, v)
		}
		return text(c.stdout, v)
	}
}

// commands lists every command, in the order of the usage text.
var commands []*command

func init() {
	commands = []*command{
		initCommand, runCommand, idCommand, inviteCommand,
		contactAddCommand, contactListCommand, contactVerifyCommand,
		groupCreateCommand, groupListCommand, groupInfoCommand, groupAddCommand, groupRemoveCommand,
		groupPromoteCommand, groupRenameCommand, groupLeaveCommand,
		sendCommand, messagesCommand, statusCommand, demoCommand,
		passphraseChangeCommand, compactCommand, backupCommand, restoreCommand, checkCommand,
	}
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const dataDirHelp = "The data directory is --data, else $SOTTO_HOME, else $XDG_DATA_HOME/sotto,\n" +
	"else ~/.local/share/sotto."

// main dispatches args (without the program name) and returns the exit status.
func (c *cli) main(ctx context.Context, args []string) int {
	global, args, err := leadingFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(c.stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "sotto: %v\n", err)
		c.usage(c.stderr)
		return exitUsage
	}
	if len(args) == 0 {
		fmt.Fprintln(c.stderr, "sotto: missing command")
		c.usage(c.stderr)
		return exitUsage
	}
	if args[0] == "help" {
		return c.help(args[1:])
	}
	cmd, rest, err := lookup(args)
	if err != nil {
		group, isGroup := err.(groupError)
		if isGroup && group.help { // "sotto contact --help"
			c.groupUsage(c.stdout, group.name)
			return exitOK
		}
		fmt.Fprintf(c.stderr, "sotto: %v\n", err)
		if isGroup {
			c.groupUsage(c.stderr, group.name)
		} else {
			c.usage(c.stderr)
		}
		return exitUsage
	}
	// The command parses the flags given before its name as its own.
	return c.exec(ctx, cmd, append(global, rest...))
}

// leadingFlags splits off the flags before the command name: --data DIR
// (or --data=DIR), which the command then parses as its own, and --help,
// for which it returns flag.ErrHelp. Other flags belong after the command
// name, since which ones exist, and which take a value, depends on it.
func leadingFlags(args []string) (global, rest []string, err error) {
	for len(args) > 0 {
		arg := args[0]
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-"), "=")
		switch {
		case arg == "-" || arg == "--" || !strings.HasPrefix(arg, "-"):
			return global, args, nil
		case name == "" || strings.HasPrefix(name, "-"):
			return nil, nil, fmt.Errorf("bad flag syntax: %s", arg)
		case name == "h" || name == "help":
			return nil, nil, flag.ErrHelp
		case name == "data" && hasValue:
			global = append(global, "--data="+value)
			args = args[1:]
		case name == "data":
			if len(args) < 2 {
				return nil, nil, errors.New("flag needs an argument: --data")
			}
			global = append(global, "--data="+args[1])
			args = args[2:]
		default:
			return nil, nil, fmt.Errorf("flag --%s goes after the command name (sotto COMMAND --%s ...); "+
				"only --data DIR may come before it", name, name)
		}
	}
	return global, nil, nil
}

// groupError is a missing or unknown subcommand of a group ("contact").
type groupError struct {
	name, msg string
	help      bool
}

func (e groupError) Error() string { return e.msg }

// lookup finds the command named by the first one or two words of args.
func lookup(args []string) (*command, []string, error) {
	name := args[0]
	isGroup := false
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd, args[1:], nil
		}
		if strings.HasPrefix(cmd.name, name+" ") {
			isGroup = true
		}
	}
	if !isGroup {
		return nil, nil, fmt.Errorf("unknown command %q", name)
	}
	if len(args) < 2 {
		return nil, nil, groupError{name: name, msg: name + ": missing subcommand"}
	}
	switch args[1] {
	case "-h", "-help", "--help":
		return nil, nil, groupError{name: name, msg: "", help: true}
	}
	for _, cmd := range commands {
		if cmd.name == name+" "+args[1] {
			return cmd, args[2:], nil
		}
	}
	return nil, nil, groupError{name: name, msg: fmt.Sprintf("%s: unknown subcommand %q", name, args[1])}
}

// exec parses the command's flags and runs it.
func (c *cli) exec(ctx context.Context, cmd *command, args []string) int {
	fs := newFlagSet(cmd.name)
	run := cmd.setup(fs)
	args, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		cmd.usage(c.stdout, fs)
		return exitOK
	}
	if err == nil {
		err = run(ctx, c, args)
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue) || isFlagError(err):
		fmt.Fprintf(c.stderr, "sotto %s: %s\n", cmd.name, oneLine(err.Error()))
		cmd.usage(c.stderr, fs)
		return exitUsage
	default:
		fmt.Fprintf(c.stderr, "sotto: %s\n", oneLine(err.Error()))
		return exitFailure
	}
}

// flagError marks an error from the flag package. Its message spells the
// flag with two dashes, as the usage does.
type flagError struct{ err error }

func (e flagError) Error() string { return doubleDash(e.err.Error()) }
func (e flagError) Unwrap() error { return e.err }

// flagName finds the flag's name in the messages of the flag package,
// which spell it "-name" (or "name", for "invalid boolean flag").
var flagName = regexp.MustCompile(`^(flag provided but not defined: |flag needs an argument: |` +
	`invalid boolean value "(?:[^"\\]|\\.)*" for |invalid value "(?:[^"\\]|\\.)*" for flag |invalid boolean flag )-?`)

// doubleDash rewrites a message of the flag package to name the flag as
// "--name".
func doubleDash(msg string) string {
	if m := flagName.FindStringSubmatchIndex(msg); m != nil {
		return msg[:m[3]] + "--" + msg[m[1]:]
	}
	return msg
}

func isFlagError(err error) bool {
	var fe flagError
	return errors.As(err, &fe)
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterspersed parses flags wherever they appear among the positional
// arguments, which it returns in order. Everything after "--" is
// positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, flagError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// oneLine joins a multi-line message into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// help implements "sotto help [COMMAND]".
func (c *cli) help(args []string) int {
	if len(args) == 0 {
		c.usage(c.stdout)
		return exitOK
	}
	cmd, _, err := lookup(args)
	if group, ok := err.(groupError); ok {
		c.groupUsage(c.stdout, group.name)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "sotto help: %v\n", err)
		c.usage(c.stderr)
		return exitUsage
	}
	fs := newFlagSet(cmd.name)
	cmd.setup(fs)
	cmd.usage(c.stdout, fs)
	return exitOK
}

// usage prints the list of commands.
func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, "usage: sotto [--data DIR] COMMAND [flags] [args]\n\nCommands:\n")
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, "\nRun `sotto COMMAND --help` for a command's flags.\n%s\n", dataDirHelp)
}

// groupUsage prints the commands of a group.
func (c *cli) groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "usage: sotto %s SUBCOMMAND [flags] [args]\n\nSubcommands:\n", group)
	for _, cmd := range commands {
		if sub, ok := strings.CutPrefix(cmd.name, group+" "); ok {
			fmt.Fprintf(w, "  %-8s %s\n", sub, cmd.summary)
		}
	}
	fmt.Fprintf(w, "\nRun `sotto %s SUBCOMMAND --help` for a subcommand's flags.\n", group)
}

// usage prints the command's synopsis, help and flags.
func (cmd *command) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: sotto %s %s\n\n%s\n", cmd.name, cmd.synopsis, capitalize(cmd.summary)+".")
	if cmd.detail != "" {
		fmt.Fprintf(w, "\n%s\n", cmd.detail)
	}
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprint(w, "\nFlags:\n")
			first = false
		}
		arg, help := flag.UnquoteUsage(f)
		if arg != "" {
			arg = " " + arg
		}
		fmt.Fprintf(w, "  --%s%s\n        %s\n", f.Name, arg, help)
	})
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// stringList is a flag that may be repeated.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
