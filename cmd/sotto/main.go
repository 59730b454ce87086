// Command sotto is Sotto's command-line tool: it creates an identity, runs
// the node, and talks to a running node over the control socket in the data
// directory to manage contacts and send and read messages.
//
// Exit status: 0 on success (and for --help), 1 on a runtime error, printed
// as one line "sotto: ...", and 2 on a usage error, printed as one line
// followed by the command's usage, both on stderr.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/sotto-im/sotto/node"
)

// defaultApp holds the node-specific hooks of this build. Commands whose
// hook is nil report that they are not available.
var defaultApp = nodeApp()

func main() {
	node.TuneGC()
	os.Exit(mainCode())
}

// mainCode runs the command line of this process and returns its exit
// status.
func mainCode() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &cli{
		app:    defaultApp,
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
	}
	return c.main(ctx, os.Args[1:])
}

// cli is one invocation's environment.
type cli struct {
	app    App
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}
