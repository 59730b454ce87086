package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
)

// demoTimeout bounds the whole demo in its test.
const demoTimeout = 3 * time.Minute

// TestDemoCommand runs the built binary's `sotto demo` with its output
// piped: it exits 0, narrates every step, prints no control characters
// (the live progress is only for terminals) and removes its data.
func TestDemoCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts seven nodes")
	}
	bin := builtSotto(t)
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), demoTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "SOTTO_DEMO_DEBUG=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sotto demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	text := stdout.String()
	for _, want := range []string{
		"] start the network\n",
		"safety number, the same on both sides",
		"] Alice and Bob message directly\n",
		"via direct",
		"] Alice sends while Bob is away\n",
		"3 of them Alice's messages above",
		"] Bob comes back and syncs\n",
		`"Bring the blue notebook." (via mailbox)`,
		"all 4 of Alice's messages to Bob delivered",
		"message request",
		"] every step succeeded\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	// Each stored message names how many mailboxes hold it, in the right
	// number.
	stored := regexp.MustCompile(`: stored at (1 mailbox|[2-9] mailboxes) after `)
	if n := len(stored.FindAllString(text, -1)); n != 3 {
		t.Errorf("%d lines say where a message is stored, want 3:\n%s", n, text)
	}
	if strings.Contains(text, "1 mailboxes") {
		t.Errorf("demo output says \"1 mailboxes\":\n%s", text)
	}
	for i, r := range text {
		if r != '\n' && unicode.IsControl(r) {
			t.Fatalf("piped demo output has control character %U at byte %d:\n%q", r, i, text)
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("demo wrote to stderr:\n%s", stderr.String())
	}
	left, err := filepath.Glob(filepath.Join(tmp, "sotto-demo-*"))
	if err != nil || len(left) != 0 {
		t.Errorf("demo left %v behind (%v)", left, err)
	}
}
