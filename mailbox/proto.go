package mailbox

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/protocol"

	sprotocol "github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Protocol is the stream protocol of gossip mailboxes: a client
// deposits envelopes, queries the envelopes stored under its tags, and
// deletes what it has durably stored by revealing delete tokens.
//
// A stream carries request/response pairs: the client writes one request
// frame, the mailbox answers with one response frame, and so on until the
// client closes its side. Frames are a 4-byte big-endian length n then n
// bytes: 1 <= n <= MaxRequestSize for requests and
// 1 <= n <= MaxResponseSize for responses. All integers are big
// endian.
//
// Requests (first byte: the operation):
//
//	DEPOSIT  0x01 | envelope (1..65536 bytes)
//	QUERY    0x02 | limit u16 | cursor length u8 (0 or 9) | cursor | tag count u16 (1..MaxQueryTags) | tags (32 bytes each)
//	DELETE   0x03 | tag (32) | token count u16 (1..MaxDeleteTokens) | tokens (32 bytes each)
//
// Responses start with a status byte and a reason byte (Status,
// Reason); a response with status OK carries a body:
//
//	DEPOSIT  status | reason                                  (OK or Duplicate both mean stored)
//	QUERY    status | reason | more u8 (0/1) | cursor length u8 | cursor | count u16 | count × (length u32 | envelope)
//	DELETE   status | reason | deleted u16
//
// A request the mailbox cannot decode is answered BadRequest and the
// mailbox closes the stream; a frame length out of range, a frame that
// stalls, or an idle stream is reset.
const Protocol protocol.ID = "/sotto/mailbox/1.0.0"

// Limits of the mailbox protocol.
const (
	// MaxRequestSize bounds a request frame: the largest of a
	// deposit (op + envelope), a query and a delete.
	MaxRequestSize = 1 + sprotocol.MaxEnvelopeSize
	// MaxResponseSize bounds a response frame; a query page is cut
	// to fit it.
	MaxResponseSize = 1 << 20
	// MaxQueryTags bounds the tags of one query.
	MaxQueryTags = 256
	// MaxDeleteTokens bounds the tokens of one delete.
	MaxDeleteTokens = 256
	// MaxPage bounds the envelopes of one query page.
	MaxPage = store.MaxMailboxPage

	respHeader   = 2              // status, reason
	queryRespFix = respHeader + 4 // more, cursor length, count u16
	maxCursor    = 255
	entryHeader  = 4
)

// Mailbox operations.
const (
	opDeposit = 0x01
	opQuery   = 0x02
	opDelete  = 0x03
)

// Status is a mailbox's answer to a request.
type Status uint8

// Mailbox statuses.
const (
	StatusOK          Status = 0 // done (deposit: stored)
	StatusDuplicate   Status = 1 // deposit: already stored (counts as stored)
	StatusRejected    Status = 2 // deposit: invalid envelope, do not retry
	StatusThrottled   Status = 3 // over the per-peer rate limit, retry later
	StatusFull        Status = 4 // deposit: tag quota or mailbox full
	StatusBadRequest  Status = 5 // undecodable request
	StatusUnavailable Status = 6 // storage failed, retry later
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusDuplicate:
		return "duplicate"
	case StatusRejected:
		return "rejected"
	case StatusThrottled:
		return "throttled"
	case StatusFull:
		return "full"
	case StatusBadRequest:
		return "bad-request"
	case StatusUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Reason refines a status.
type Reason uint8

// Reasons for StatusRejected and StatusFull.
const (
	ReasonNone       Reason = 0
	ReasonMalformed  Reason = 1 // the envelope does not parse
	ReasonExpired    Reason = 2 // the envelope has expired
	ReasonTTLTooLong Reason = 3 // the expiry is too far ahead
	ReasonTagQuota   Reason = 4 // the tag holds its quota
	ReasonCapacity   Reason = 5 // the envelope exceeds the mailbox's capacity

	// Version 2 reasons.
	ReasonCredential   Reason = 6  // the write key or its signature does not match
	ReasonStamp        Reason = 7  // the intro stamp is below the difficulty
	ReasonOldProtocol  Reason = 8  // a version 1 deposit at a version 2 mailbox
	ReasonUnregistered Reason = 9  // nobody registered the tag (for this kind)
	ReasonEpoch        Reason = 10 // a registration's epoch is out of range
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonMalformed:
		return "malformed"
	case ReasonExpired:
		return "expired"
	case ReasonTTLTooLong:
		return "ttl-too-long"
	case ReasonTagQuota:
		return "tag-quota"
	case ReasonCapacity:
		return "capacity"
	case ReasonCredential:
		return "credential"
	case ReasonStamp:
		return "stamp"
	case ReasonOldProtocol:
		return "old-protocol: this node runs an older mailbox protocol than the mailbox; upgrade it"
	case ReasonUnregistered:
		return "unregistered"
	case ReasonEpoch:
		return "epoch"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Errors of the mailbox protocol. A client call that gets a status other
// than OK returns a *Error, which matches the sentinel of its status
// with errors.Is.
var (
	ErrRejected    = errors.New("mailbox: mailbox rejected the envelope (do not retry)")
	ErrThrottled   = errors.New("mailbox: mailbox is throttling this node (retry later)")
	ErrFull        = errors.New("mailbox: mailbox has no room for the envelope")
	ErrBadRequest  = errors.New("mailbox: mailbox could not decode the request")
	ErrUnavailable = errors.New("mailbox: mailbox could not serve the request now (retry later)")
	ErrBadMessage  = errors.New("mailbox: malformed mailbox protocol message")
)

// Error is a mailbox's refusal of a request.
type Error struct {
	Status Status
	Reason Reason
}

func (e *Error) Error() string {
	return fmt.Sprintf("%v (%v)", e.sentinel(), e.Reason)
}

func (e *Error) sentinel() error {
	switch e.Status {
	case StatusRejected:
		return ErrRejected
	case StatusThrottled:
		return ErrThrottled
	case StatusFull:
		return ErrFull
	case StatusBadRequest:
		return ErrBadRequest
	case StatusUnavailable:
		return ErrUnavailable
	}
	return fmt.Errorf("%w: unknown status %d", ErrBadMessage, uint8(e.Status))
}

// Unwrap lets errors.Is match the status's sentinel.
func (e *Error) Unwrap() error { return e.sentinel() }

// request is a decoded request.
type request struct {
	op       byte
	envelope []byte     // deposit
	limit    int        // query
	cursor   []byte     // query
	tags     [][32]byte // query
	tag      [32]byte   // delete
	tokens   [][32]byte // delete
}

func appendDepositRequest(b, env []byte) []byte {
	return append(append(b, opDeposit), env...)
}

// appendQuery encodes a query under op (version 1 or 2: same body).
func appendQuery(b []byte, op byte, tags [][32]byte, cursor []byte, limit int) []byte {
	b = append(b, op)
	b = binary.BigEndian.AppendUint16(b, uint16(limit))
	b = append(b, byte(len(cursor)))
	b = append(b, cursor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(tags)))
	for _, t := range tags {
		b = append(b, t[:]...)
	}
	return b
}

// appendDelete encodes a delete under op (version 1 or 2: same body).
func appendDelete(b []byte, op byte, tag [32]byte, tokens [][32]byte) []byte {
	b = append(b, op)
	b = append(b, tag[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(tokens)))
	for _, t := range tokens {
		b = append(b, t[:]...)
	}
	return b
}

// parseRequest decodes a request frame. Tags and tokens are copied.
func parseRequest(b []byte) (*request, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty request", ErrBadMessage)
	}
	r := &request{op: b[0]}
	p := b[1:]
	switch r.op {
	case opDeposit:
		if len(p) == 0 || len(p) > sprotocol.MaxEnvelopeSize {
			return nil, fmt.Errorf("%w: deposit of %d bytes", ErrBadMessage, len(p))
		}
		r.envelope = p
		return r, nil
	case opQuery:
		if err := r.parseQuery(p); err != nil {
			return nil, err
		}
		return r, nil
	case opDelete:
		if err := r.parseDelete(p); err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("%w: unknown operation %d", ErrBadMessage, r.op)
}

// parseQuery decodes a query's body into r.
func (r *request) parseQuery(p []byte) error {
	if len(p) < 3 {
		return fmt.Errorf("%w: short query", ErrBadMessage)
	}
	r.limit = int(binary.BigEndian.Uint16(p))
	cl := int(p[2])
	p = p[3:]
	if cl != 0 && cl != store.MailboxCursorSize || len(p) < cl+2 {
		return fmt.Errorf("%w: query cursor", ErrBadMessage)
	}
	if cl > 0 {
		r.cursor = append([]byte(nil), p[:cl]...)
	}
	var err error
	r.tags, err = parseKeys(p[cl:], MaxQueryTags, "tags")
	return err
}

// parseDelete decodes a delete's body into r.
func (r *request) parseDelete(p []byte) error {
	if len(p) < 32 {
		return fmt.Errorf("%w: short delete", ErrBadMessage)
	}
	copy(r.tag[:], p)
	var err error
	r.tokens, err = parseKeys(p[32:], MaxDeleteTokens, "tokens")
	return err
}

// parseKeys decodes count u16 | count × 32 bytes, with 1 <= count <= max
// and nothing after.
func parseKeys(p []byte, max int, what string) ([][32]byte, error) {
	if len(p) < 2 {
		return nil, fmt.Errorf("%w: missing %s count", ErrBadMessage, what)
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n == 0 || n > max || len(p) != n*32 {
		return nil, fmt.Errorf("%w: %d %s in %d bytes (1..%d)", ErrBadMessage, n, what, len(p), max)
	}
	out := make([][32]byte, n)
	for i := range out {
		copy(out[i][:], p[i*32:])
	}
	return out, nil
}

func appendStatus(b []byte, s Status, r Reason) []byte {
	return append(b, byte(s), byte(r))
}

// queryResponse is a decoded QUERY response body.
type queryResponse struct {
	more      bool
	cursor    []byte
	envelopes [][]byte
}

// appendQueryResponse encodes an OK query response with the page's
// envelopes; the caller has cut the page to fit MaxResponseSize.
func appendQueryResponse(b []byte, page store.MailboxPage) []byte {
	b = appendStatus(b, StatusOK, ReasonNone)
	if page.More {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = append(b, byte(len(page.Cursor)))
	b = append(b, page.Cursor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(page.Entries)))
	for _, e := range page.Entries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.Envelope)))
		b = append(b, e.Envelope...)
	}
	return b
}

// parseResponse splits a response into status, reason and body, and
// turns a status other than OK and Duplicate into a *Error.
func parseResponse(b []byte) (Status, []byte, error) {
	if len(b) < respHeader {
		return 0, nil, fmt.Errorf("%w: short response", ErrBadMessage)
	}
	s, r := Status(b[0]), Reason(b[1])
	switch s {
	case StatusOK, StatusDuplicate:
		if r != ReasonNone || s == StatusDuplicate && len(b) != respHeader {
			return 0, nil, fmt.Errorf("%w: bad %v response", ErrBadMessage, s)
		}
		return s, b[respHeader:], nil
	case StatusRejected, StatusThrottled, StatusFull, StatusBadRequest, StatusUnavailable:
		if len(b) != respHeader {
			return 0, nil, fmt.Errorf("%w: trailing bytes after status", ErrBadMessage)
		}
		return s, nil, &Error{Status: s, Reason: r}
	}
	return 0, nil, fmt.Errorf("%w: unknown status %d", ErrBadMessage, uint8(s))
}

// parseQueryBody decodes the body of an OK query response.
func parseQueryBody(p []byte, limit int) (*queryResponse, error) {
	bad := func(what string) error { return fmt.Errorf("%w: query response: %s", ErrBadMessage, what) }
	if len(p) < 2 {
		return nil, bad("truncated")
	}
	q := &queryResponse{}
	switch p[0] {
	case 0:
	case 1:
		q.more = true
	default:
		return nil, bad("bad more flag")
	}
	cl := int(p[1])
	p = p[2:]
	if cl > maxCursor || len(p) < cl+2 {
		return nil, bad("truncated cursor")
	}
	q.cursor = append([]byte(nil), p[:cl]...)
	p = p[cl:]
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n > limit {
		return nil, bad(fmt.Sprintf("%d envelopes for a limit of %d", n, limit))
	}
	q.envelopes = make([][]byte, 0, n)
	for range n {
		if len(p) < entryHeader {
			return nil, bad("truncated entry")
		}
		l := binary.BigEndian.Uint32(p)
		p = p[entryHeader:]
		if l == 0 || l > sprotocol.MaxEnvelopeSize || uint64(len(p)) < uint64(l) {
			return nil, bad("entry length")
		}
		q.envelopes = append(q.envelopes, append([]byte(nil), p[:l]...))
		p = p[l:]
	}
	if len(p) != 0 {
		return nil, bad("trailing bytes")
	}
	return q, nil
}
