package api

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func collectEvents(t testing.TB, stream string) ([]Event, error) {
	ch := make(chan Event, 1024)
	err := readEvents(context.Background(), strings.NewReader(stream), ch)
	close(ch)
	var evs []Event
	for ev := range ch {
		evs = append(evs, ev)
	}
	return evs, err
}

func TestReadEvents(t *testing.T) {
	msg := &Message{ID: "m1", Contact: "bob", Direction: DirectionIn, Text: "hi", Seq: 7}
	tests := []struct {
		name   string
		stream string
		want   []Event
	}{
		{"one", "id: 1\ndata: {\"type\":\"message\",\"message\":{\"id\":\"m1\",\"contact\":\"bob\",\"direction\":\"in\",\"text\":\"hi\",\"sent_at\":\"0001-01-01T00:00:00Z\",\"seq\":7}}\n\n",
			[]Event{{Type: EventMessage, Message: msg}}},
		{"comments and pings skipped", ": sotto events\n\n: ping\n\ndata: {\"type\":\"sync_progress\",\"sync\":{\"mailboxes\":2,\"envelopes\":5,\"done\":true}}\n\n",
			[]Event{{Type: EventSyncProgress, Sync: &SyncProgress{Mailboxes: 2, Envelopes: 5, Done: true}}}},
		{"crlf and no space", "data:{\"type\":\"state\"}\r\n\r\n", []Event{{Type: EventState}}},
		{"multi-line data", "data: {\"type\":\ndata: \"contact_request\"}\n\n", []Event{{Type: EventContactRequest}}},
		{"unknown type kept", "data: {\"type\":\"future\"}\n\n", []Event{{Type: "future"}}},
		{"bad json skipped", "data: {nope\n\ndata: {\"type\":\"state\"}\n\n", []Event{{Type: EventState}}},
		{"unterminated event dropped", "data: {\"type\":\"state\"}\n", nil},
		{"other fields ignored", "event: x\nretry: 10\nid: 3\ndata: {\"type\":\"state\"}\n\n", []Event{{Type: EventState}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := collectEvents(t, tt.stream)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadEventsTooLarge(t *testing.T) {
	stream := "data: " + strings.Repeat("x", MaxEventBytes+1) + "\n\n"
	if _, err := collectEvents(t, stream); err == nil {
		t.Fatal("oversized line accepted")
	}
	half := "data: " + strings.Repeat("x", MaxEventBytes/2+1) + "\n"
	if _, err := collectEvents(t, half+half+"\n"); err != errEventTooLarge {
		t.Fatalf("oversized event: %v, want errEventTooLarge", err)
	}
}

// FuzzReadEvents checks that any stream parses without panicking and that
// every event produced is one the server could have sent.
func FuzzReadEvents(f *testing.F) {
	f.Add("data: {\"type\":\"message\",\"message\":{\"id\":\"a\",\"seq\":1}}\n\n")
	f.Add(": ping\n\nid: 2\ndata: {\"type\":\"state\"}\r\n\r\n")
	f.Add("data: {\"type\":\ndata: \"x\"}\n\ndata:\n\n")
	f.Add("data: {\"sync\":{\"done\":true}}\n\n\n\n:")
	f.Fuzz(func(t *testing.T, stream string) {
		evs, _ := collectEvents(t, stream)
		for _, ev := range evs {
			b, err := json.Marshal(ev)
			if err != nil {
				t.Fatalf("event %+v does not encode: %v", ev, err)
			}
			var back Event
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("event %s does not decode: %v", b, err)
			}
		}
	})
}
