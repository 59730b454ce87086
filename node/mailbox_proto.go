package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/protocol"

	sprotocol "github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// MailboxProtocol is the stream protocol of gossip mailboxes: a client
// deposits envelopes, queries the envelopes stored under its tags, and
// deletes what it has durably stored by revealing delete tokens.
//
// A stream carries request/response pairs: the client writes one request
// frame, the mailbox answers with one response frame, and so on until the
// client closes its side. Frames are a 4-byte big-endian length n then n
// bytes: 1 <= n <= MaxMailboxRequestSize for requests and
// 1 <= n <= MaxMailboxResponseSize for responses. All integers are big
// endian.
//
// Requests (first byte: the operation):
//
//	DEPOSIT  0x01 | envelope (1..65536 bytes)
//	QUERY    0x02 | limit u16 | cursor length u8 (0 or 9) | cursor | tag count u16 (1..MaxMailboxQueryTags) | tags (32 bytes each)
//	DELETE   0x03 | tag (32) | token count u16 (1..MaxMailboxDeleteTokens) | tokens (32 bytes each)
//
// Responses start with a status byte and a reason byte (MailboxStatus,
// MailboxReason); a response with status OK carries a body:
//
//	DEPOSIT  status | reason                                  (OK or Duplicate both mean stored)
//	QUERY    status | reason | more u8 (0/1) | cursor length u8 | cursor | count u16 | count × (length u32 | envelope)
//	DELETE   status | reason | deleted u16
//
// A request the mailbox cannot decode is answered BadRequest and the
// mailbox closes the stream; a frame length out of range, a frame that
// stalls, or an idle stream is reset.
const MailboxProtocol protocol.ID = "/sotto/mailbox/1.0.0"

// Limits of the mailbox protocol.
const (
	// MaxMailboxRequestSize bounds a request frame: the largest of a
	// deposit (op + envelope), a query and a delete.
	MaxMailboxRequestSize = 1 + sprotocol.MaxEnvelopeSize
	// MaxMailboxResponseSize bounds a response frame; a query page is cut
	// to fit it.
	MaxMailboxResponseSize = 1 << 20
	// MaxMailboxQueryTags bounds the tags of one query.
	MaxMailboxQueryTags = 256
	// MaxMailboxDeleteTokens bounds the tokens of one delete.
	MaxMailboxDeleteTokens = 256
	// MaxMailboxPage bounds the envelopes of one query page.
	MaxMailboxPage = store.MaxMailboxPage

	mailboxRespHeader   = 2                     // status, reason
	mailboxQueryRespFix = mailboxRespHeader + 4 // more, cursor length, count u16
	maxMailboxCursor    = 255
	mailboxEntryHeader  = 4
)

// Mailbox operations.
const (
	mailboxOpDeposit = 0x01
	mailboxOpQuery   = 0x02
	mailboxOpDelete  = 0x03
)

// MailboxStatus is a mailbox's answer to a request.
type MailboxStatus uint8

// Mailbox statuses.
const (
	MailboxOK          MailboxStatus = 0 // done (deposit: stored)
	MailboxDuplicate   MailboxStatus = 1 // deposit: already stored (counts as stored)
	MailboxRejected    MailboxStatus = 2 // deposit: invalid envelope, do not retry
	MailboxThrottled   MailboxStatus = 3 // over the per-peer rate limit, retry later
	MailboxFull        MailboxStatus = 4 // deposit: tag quota or mailbox full
	MailboxBadRequest  MailboxStatus = 5 // undecodable request
	MailboxUnavailable MailboxStatus = 6 // storage failed, retry later
)

func (s MailboxStatus) String() string {
	switch s {
	case MailboxOK:
		return "ok"
	case MailboxDuplicate:
		return "duplicate"
	case MailboxRejected:
		return "rejected"
	case MailboxThrottled:
		return "throttled"
	case MailboxFull:
		return "full"
	case MailboxBadRequest:
		return "bad-request"
	case MailboxUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("MailboxStatus(%d)", uint8(s))
}

// MailboxReason refines a status.
type MailboxReason uint8

// Reasons for MailboxRejected and MailboxFull.
const (
	ReasonNone       MailboxReason = 0
	ReasonMalformed  MailboxReason = 1 // the envelope does not parse
	ReasonExpired    MailboxReason = 2 // the envelope has expired
	ReasonTTLTooLong MailboxReason = 3 // the expiry is too far ahead
	ReasonTagQuota   MailboxReason = 4 // the tag holds its quota
	ReasonCapacity   MailboxReason = 5 // the envelope exceeds the mailbox's capacity
)

func (r MailboxReason) String() string {
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
	}
	return fmt.Sprintf("MailboxReason(%d)", uint8(r))
}

// Errors of the mailbox protocol. A client call that gets a status other
// than OK returns a *MailboxError, which matches the sentinel of its status
// with errors.Is.
var (
	ErrMailboxRejected    = errors.New("node: mailbox rejected the envelope (do not retry)")
	ErrMailboxThrottled   = errors.New("node: mailbox is throttling this node (retry later)")
	ErrMailboxFull        = errors.New("node: mailbox has no room for the envelope")
	ErrMailboxBadRequest  = errors.New("node: mailbox could not decode the request")
	ErrMailboxUnavailable = errors.New("node: mailbox could not serve the request now (retry later)")
	ErrBadMailboxMessage  = errors.New("node: malformed mailbox protocol message")
)

// MailboxError is a mailbox's refusal of a request.
type MailboxError struct {
	Status MailboxStatus
	Reason MailboxReason
}

func (e *MailboxError) Error() string {
	return fmt.Sprintf("%v (%v)", e.sentinel(), e.Reason)
}

func (e *MailboxError) sentinel() error {
	switch e.Status {
	case MailboxRejected:
		return ErrMailboxRejected
	case MailboxThrottled:
		return ErrMailboxThrottled
	case MailboxFull:
		return ErrMailboxFull
	case MailboxBadRequest:
		return ErrMailboxBadRequest
	case MailboxUnavailable:
		return ErrMailboxUnavailable
	}
	return fmt.Errorf("%w: unknown status %d", ErrBadMailboxMessage, uint8(e.Status))
}

// Unwrap lets errors.Is match the status's sentinel.
func (e *MailboxError) Unwrap() error { return e.sentinel() }

// mailboxRequest is a decoded request.
type mailboxRequest struct {
	op       byte
	envelope []byte     // deposit
	limit    int        // query
	cursor   []byte     // query
	tags     [][32]byte // query
	tag      [32]byte   // delete
	tokens   [][32]byte // delete
}

func appendDepositRequest(b, env []byte) []byte {
	return append(append(b, mailboxOpDeposit), env...)
}

func appendQueryRequest(b []byte, tags [][32]byte, cursor []byte, limit int) []byte {
	b = append(b, mailboxOpQuery)
	b = binary.BigEndian.AppendUint16(b, uint16(limit))
	b = append(b, byte(len(cursor)))
	b = append(b, cursor...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(tags)))
	for _, t := range tags {
		b = append(b, t[:]...)
	}
	return b
}

func appendDeleteRequest(b []byte, tag [32]byte, tokens [][32]byte) []byte {
	b = append(b, mailboxOpDelete)
	b = append(b, tag[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(tokens)))
	for _, t := range tokens {
		b = append(b, t[:]...)
	}
	return b
}

// parseMailboxRequest decodes a request frame. Tags and tokens are copied.
func parseMailboxRequest(b []byte) (*mailboxRequest, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty request", ErrBadMailboxMessage)
	}
	r := &mailboxRequest{op: b[0]}
	p := b[1:]
	switch r.op {
	case mailboxOpDeposit:
		if len(p) == 0 || len(p) > sprotocol.MaxEnvelopeSize {
			return nil, fmt.Errorf("%w: deposit of %d bytes", ErrBadMailboxMessage, len(p))
		}
		r.envelope = p
		return r, nil
	case mailboxOpQuery:
		if len(p) < 3 {
			return nil, fmt.Errorf("%w: short query", ErrBadMailboxMessage)
		}
		r.limit = int(binary.BigEndian.Uint16(p))
		cl := int(p[2])
		p = p[3:]
		if cl != 0 && cl != store.MailboxCursorSize || len(p) < cl+2 {
			return nil, fmt.Errorf("%w: query cursor", ErrBadMailboxMessage)
		}
		if cl > 0 {
			r.cursor = append([]byte(nil), p[:cl]...)
		}
		p = p[cl:]
		var err error
		if r.tags, err = parseKeys(p, MaxMailboxQueryTags, "tags"); err != nil {
			return nil, err
		}
		return r, nil
	case mailboxOpDelete:
		if len(p) < 32 {
			return nil, fmt.Errorf("%w: short delete", ErrBadMailboxMessage)
		}
		copy(r.tag[:], p)
		var err error
		if r.tokens, err = parseKeys(p[32:], MaxMailboxDeleteTokens, "tokens"); err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("%w: unknown operation %d", ErrBadMailboxMessage, r.op)
}

// parseKeys decodes count u16 | count × 32 bytes, with 1 <= count <= max
// and nothing after.
func parseKeys(p []byte, max int, what string) ([][32]byte, error) {
	if len(p) < 2 {
		return nil, fmt.Errorf("%w: missing %s count", ErrBadMailboxMessage, what)
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n == 0 || n > max || len(p) != n*32 {
		return nil, fmt.Errorf("%w: %d %s in %d bytes (1..%d)", ErrBadMailboxMessage, n, what, len(p), max)
	}
	out := make([][32]byte, n)
	for i := range out {
		copy(out[i][:], p[i*32:])
	}
	return out, nil
}

func appendStatus(b []byte, s MailboxStatus, r MailboxReason) []byte {
	return append(b, byte(s), byte(r))
}

// queryResponse is a decoded QUERY response body.
type queryResponse struct {
	more      bool
	cursor    []byte
	envelopes [][]byte
}

// appendQueryResponse encodes an OK query response with the page's
// envelopes; the caller has cut the page to fit MaxMailboxResponseSize.
func appendQueryResponse(b []byte, page store.MailboxPage) []byte {
	b = appendStatus(b, MailboxOK, ReasonNone)
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
// turns a status other than OK and Duplicate into a *MailboxError.
func parseResponse(b []byte) (MailboxStatus, []byte, error) {
	if len(b) < mailboxRespHeader {
		return 0, nil, fmt.Errorf("%w: short response", ErrBadMailboxMessage)
	}
	s, r := MailboxStatus(b[0]), MailboxReason(b[1])
	switch s {
	case MailboxOK, MailboxDuplicate:
		if r != ReasonNone || s == MailboxDuplicate && len(b) != mailboxRespHeader {
			return 0, nil, fmt.Errorf("%w: bad %v response", ErrBadMailboxMessage, s)
		}
		return s, b[mailboxRespHeader:], nil
	case MailboxRejected, MailboxThrottled, MailboxFull, MailboxBadRequest, MailboxUnavailable:
		if len(b) != mailboxRespHeader {
			return 0, nil, fmt.Errorf("%w: trailing bytes after status", ErrBadMailboxMessage)
		}
		return s, nil, &MailboxError{Status: s, Reason: r}
	}
	return 0, nil, fmt.Errorf("%w: unknown status %d", ErrBadMailboxMessage, uint8(s))
}

// parseQueryBody decodes the body of an OK query response.
func parseQueryBody(p []byte, limit int) (*queryResponse, error) {
	bad := func(what string) error { return fmt.Errorf("%w: query response: %s", ErrBadMailboxMessage, what) }
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
	if cl > maxMailboxCursor || len(p) < cl+2 {
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
		if len(p) < mailboxEntryHeader {
			return nil, bad("truncated entry")
		}
		l := binary.BigEndian.Uint32(p)
		p = p[mailboxEntryHeader:]
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

// writeMailboxFrame writes one length-prefixed frame of 1..max bytes.
func writeMailboxFrame(w io.Writer, payload []byte, max int) error {
	if len(payload) == 0 || len(payload) > max {
		return fmt.Errorf("%w: %d", ErrFrameSize, len(payload))
	}
	buf := make([]byte, frameHeaderSize, frameHeaderSize+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	_, err := w.Write(append(buf, payload...))
	return err
}
