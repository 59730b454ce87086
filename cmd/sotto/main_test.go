package main

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary act as the sotto command in script tests.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"sotto": func() { os.Exit(mainCode()) },
	})
}

// TestScript runs the scripts in testdata/script against the real binary
// (this build, without node hooks).
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			// Keep the data directory inside the script's work directory.
			env.Setenv("SOTTO_HOME", env.WorkDir+"/sotto-home")
			env.Setenv("XDG_DATA_HOME", "")
			return nil
		},
	})
}
