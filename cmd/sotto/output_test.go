package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/sotto-im/sotto/node"
)

// TestLiveWriter checks the progress line: on a terminal it is drawn with
// a carriage return and erased before the next line (on either stream);
// otherwise only the lines are written.
func TestLiveWriter(t *testing.T) {
	for _, live := range []bool{true, false} {
		var out, errOut bytes.Buffer
		l := newLiveWriter(&out, live)
		fmt.Fprintln(l, "first")
		l.Progress("working… 1s")
		l.Progress("working… 2s\x1b[2J") // text from outside never reaches the terminal raw
		fmt.Fprintln(l.Beside(&errOut), "a log line")
		l.Progress("working… 3s")
		fmt.Fprintln(l, "second")
		l.Progress("working… 4s")
		l.Progress("")
		l.Progress("")

		want := "first\n" +
			eraseLine + "working… 1s" +
			eraseLine + "working… 2s\uFFFD[2J" +
			eraseLine + eraseLine + "working… 3s" +
			eraseLine + "second\n" +
			eraseLine + "working… 4s" +
			eraseLine
		if !live {
			want = "first\nsecond\n"
		}
		if out.String() != want {
			t.Errorf("live=%v: wrote %q, want %q", live, out.String(), want)
		}
		if errOut.String() != "a log line\n" {
			t.Errorf("live=%v: other stream got %q", live, errOut.String())
		}
		if !live && strings.ContainsAny(out.String(), "\r\x1b") {
			t.Errorf("not a terminal, yet control characters: %q", out.String())
		}
	}
}

// TestShowSync checks the mailbox sync lines of `sotto run` on a terminal:
// progress while it runs, a summary when it fetched something, nothing
// left over when it did not.
func TestShowSync(t *testing.T) {
	events := make(chan node.Event, 8)
	events <- node.Event{Type: node.EventMessage}
	events <- node.Event{Type: node.EventSyncProgress, Sync: &node.SyncProgress{Mailboxes: 1}}
	events <- node.Event{Type: node.EventSyncProgress, Sync: &node.SyncProgress{Mailboxes: 1, Done: true}}
	events <- node.Event{Type: node.EventSyncProgress, Sync: &node.SyncProgress{Mailboxes: 2}}
	events <- node.Event{Type: node.EventSyncProgress, Sync: &node.SyncProgress{Mailboxes: 2, Envelopes: 1000}}
	events <- node.Event{Type: node.EventSyncProgress, Sync: &node.SyncProgress{Mailboxes: 2, Envelopes: 1500, Done: true}}
	close(events)
	var out bytes.Buffer
	l := newLiveWriter(&out, true)
	showSync(events, l.Progress, l)
	want := eraseLine + "syncing mailboxes: 0 envelopes from 1 mailbox…" + eraseLine +
		eraseLine + "syncing mailboxes: 0 envelopes from 2 mailboxes…" +
		eraseLine + "syncing mailboxes: 1000 envelopes from 2 mailboxes…" +
		eraseLine + "mailbox sync: 1500 envelopes from 2 mailboxes\n"
	if out.String() != want {
		t.Errorf("wrote %q, want %q", out.String(), want)
	}
}
