package main

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/sotto-im/sotto/api"
)

// TestMain lets the test binary act as the sotto command in script tests.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"sotto": func() { os.Exit(mainCode()) },
	})
}

// scriptNodeWait bounds how long a script waits for a node to serve its
// control socket.
const scriptNodeWait = 60 * time.Second

// TestScript runs the scripts in testdata/script against the real binary.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			// Keep the data directory inside the script's work directory.
			env.Setenv("SOTTO_HOME", env.WorkDir+"/sotto-home")
			env.Setenv("XDG_DATA_HOME", "")
			// mDNS does not work on loopback; nodes find each other
			// through --bootstrap.
			env.Setenv("SOTTO_NO_MDNS", "1")
			return nil
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitnode": cmdWaitNode,
		},
	})
}

// cmdWaitNode implements "waitnode DIR": wait until a node serves the
// control socket of the data directory DIR.
func cmdWaitNode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitnode DIR")
	}
	dir := ts.MkAbs(args[0])
	ctx, cancel := context.WithTimeout(context.Background(), scriptNodeWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := api.Dial(dir); err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			ts.Fatalf("no node serves %s after %v", dir, scriptNodeWait)
		case <-tick.C:
		}
	}
}
