package mailbox

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/sotto-im/sotto/store"
)

func TestMailboxRequestRoundTrip(t *testing.T) {
	tags := [][32]byte{{1}, {2}, {3}}
	tokens := [][32]byte{{9}, {8}}
	cursor := store.MailboxCursor(77)
	tests := []struct {
		name  string
		enc   []byte
		check func(*request) bool
	}{
		{"deposit", appendDepositRequest(nil, []byte{1, 2, 3}), func(r *request) bool {
			return r.op == opDeposit && bytes.Equal(r.envelope, []byte{1, 2, 3})
		}},
		{"query", appendQuery(nil, opQuery, tags, cursor, 42), func(r *request) bool {
			return r.op == opQuery && r.limit == 42 && bytes.Equal(r.cursor, cursor) && slices.Equal(r.tags, tags)
		}},
		{"query from start", appendQuery(nil, opQuery, tags[:1], nil, 0), func(r *request) bool {
			return r.cursor == nil && r.limit == 0 && len(r.tags) == 1
		}},
		{"delete", appendDelete(nil, opDelete, [32]byte{5}, tokens), func(r *request) bool {
			return r.op == opDelete && r.tag == [32]byte{5} && slices.Equal(r.tokens, tokens)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseRequest(tt.enc)
			if err != nil || !tt.check(r) {
				t.Fatalf("parse = %+v, %v", r, err)
			}
		})
	}
}

func TestMailboxRequestRejects(t *testing.T) {
	many := make([][32]byte, MaxQueryTags+1)
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"unknown op", []byte{0x09}},
		{"empty deposit", []byte{opDeposit}},
		{"oversized deposit", append([]byte{opDeposit}, make([]byte, MaxRequestSize)...)},
		{"short query", []byte{opQuery, 0}},
		{"query no tags", appendQuery(nil, opQuery, nil, nil, 1)},
		{"query too many tags", appendQuery(nil, opQuery, many, nil, 1)},
		{"query odd cursor", appendQuery(nil, opQuery, many[:1], []byte{1, 2, 3}, 1)},
		{"query trailing", append(appendQuery(nil, opQuery, many[:1], nil, 1), 0)},
		{"query truncated tag", appendQuery(nil, opQuery, many[:2], nil, 1)[:40]},
		{"short delete", []byte{opDelete, 1}},
		{"delete no tokens", appendDelete(nil, opDelete, [32]byte{}, nil)},
		{"delete too many", appendDelete(nil, opDelete, [32]byte{}, make([][32]byte, MaxDeleteTokens+1))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseRequest(tt.in); !errors.Is(err, ErrBadMessage) {
				t.Fatalf("parse = %v, want ErrBadMessage", err)
			}
		})
	}
}

func TestMailboxResponses(t *testing.T) {
	page := store.MailboxPage{
		Entries: []store.MailboxEntry{{Envelope: []byte("one")}, {Envelope: []byte("two!")}},
		Cursor:  store.MailboxCursor(5),
		More:    true,
	}
	st, body, err := parseResponse(appendQueryResponse(nil, page))
	if err != nil || st != StatusOK {
		t.Fatal(st, err)
	}
	q, err := parseQueryBody(body, 10)
	if err != nil || !q.more || !bytes.Equal(q.cursor, page.Cursor) || len(q.envelopes) != 2 || string(q.envelopes[1]) != "two!" {
		t.Fatalf("query body = %+v, %v", q, err)
	}
	if _, err := parseQueryBody(body, 1); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("more envelopes than the limit: %v", err)
	}
	for _, bad := range [][]byte{body[:len(body)-1], append(bytes.Clone(body), 0), {2, 0, 0, 0}} {
		if _, err := parseQueryBody(bad, 10); !errors.Is(err, ErrBadMessage) {
			t.Errorf("body %x: %v", bad, err)
		}
	}
	statuses := []struct {
		s    Status
		want error
	}{
		{StatusRejected, ErrRejected},
		{StatusThrottled, ErrThrottled},
		{StatusFull, ErrFull},
		{StatusBadRequest, ErrBadRequest},
		{StatusUnavailable, ErrUnavailable},
		{0x42, ErrBadMessage},
	}
	for _, tt := range statuses {
		_, _, err := parseResponse(appendStatus(nil, tt.s, ReasonCapacity))
		if !errors.Is(err, tt.want) {
			t.Errorf("status %v: %v, want %v", tt.s, err, tt.want)
		}
	}
	if _, _, err := parseResponse([]byte{0}); !errors.Is(err, ErrBadMessage) {
		t.Errorf("short response: %v", err)
	}
	if _, _, err := parseResponse([]byte{byte(StatusFull), 0, 1}); !errors.Is(err, ErrBadMessage) {
		t.Errorf("refusal with a body: %v", err)
	}
}

func FuzzParseMailboxRequest(f *testing.F) {
	f.Add(appendDepositRequest(nil, []byte{1, 2, 3}))
	f.Add(appendQuery(nil, opQuery, [][32]byte{{1}, {2}}, store.MailboxCursor(3), 10))
	f.Add(appendDelete(nil, opDelete, [32]byte{4}, [][32]byte{{5}}))
	f.Add([]byte{opQuery, 0xff, 0xff, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		// What parses re-encodes to the same bytes: one encoding per request.
		var enc []byte
		switch r.op {
		case opDeposit:
			enc = appendDepositRequest(nil, r.envelope)
		case opQuery:
			enc = appendQuery(nil, opQuery, r.tags, r.cursor, r.limit)
		case opDelete:
			enc = appendDelete(nil, opDelete, r.tag, r.tokens)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("%x re-encodes as %x", b, enc)
		}
	})
}

func FuzzParseMailboxResponse(f *testing.F) {
	f.Add(appendQueryResponse(nil, store.MailboxPage{Entries: []store.MailboxEntry{{Envelope: []byte("x")}}, Cursor: store.MailboxCursor(1)}))
	f.Add(appendStatus(nil, StatusFull, ReasonTagQuota))
	f.Add([]byte{0, 0, 1, 0, 0, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, body, err := parseResponse(b)
		if err != nil || st != StatusOK {
			return
		}
		q, err := parseQueryBody(body, MaxPage)
		if err != nil {
			return
		}
		page := store.MailboxPage{Cursor: q.cursor, More: q.more}
		for _, e := range q.envelopes {
			page.Entries = append(page.Entries, store.MailboxEntry{Envelope: e})
		}
		if enc := appendQueryResponse(nil, page); !bytes.Equal(enc, b) {
			t.Fatalf("%x re-encodes as %x", b, enc)
		}
	})
}
