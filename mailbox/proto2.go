package mailbox

import (
	"encoding/binary"
	"fmt"

	"github.com/libp2p/go-libp2p/core/protocol"

	sprotocol "github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

// Protocol2 is the version 2 mailbox protocol (protocol/SPEC.md,
// "Mailboxes, version 2"). Frames are as in Protocol. A recipient
// registers the tags it will receive under; a sender pushes a deposit (a
// credential and an envelope) under a registered tag; the recipient
// queries, filters (live pushes on an open stream) and deletes.
//
// Requests (first byte: the operation):
//
//	REGISTER 0x11 | count u16 (1..256) | count × (kind u8 | epoch u64 | tag 32)
//	PUSH     0x12 | deposit
//	QUERY    0x13 | as Protocol's QUERY
//	DELETE   0x14 | as Protocol's DELETE
//	FILTER   0x15 | count u16 (1..256) | tags 32 each
//
// Responses: status | reason, then for OK:
//
//	REGISTER accepted u16 | stamp bits u8
//	PUSH     (nothing; Duplicate also means stored)
//	QUERY    as Protocol's QUERY
//	DELETE   deleted u16
//	FILTER   (nothing), then frames 0x16 | envelope for as long as the stream stays open
const Protocol2 protocol.ID = "/sotto/mailbox/2.0.0"

// Limits of Protocol2.
const (
	// MaxRequestSize2 bounds a version 2 request: PUSH of the largest
	// deposit.
	MaxRequestSize2 = 1 + sprotocol.MaxDepositSize
	// MaxRegistrations bounds the registrations of one REGISTER, and
	// MaxFilterTags the tags of one FILTER.
	MaxRegistrations = 256
	MaxFilterTags    = 256
	// MaxPushFrame bounds a filter push frame.
	MaxPushFrame = 1 + sprotocol.MaxEnvelopeSize

	regEntrySize = 1 + 8 + 32
)

// Version 2 operations.
const (
	opRegister = 0x11
	opPush     = 0x12
	opQuery2   = 0x13
	opDelete2  = 0x14
	opFilter   = 0x15
	opPushed   = 0x16
)

// Registration is one tag a recipient registers with a mailbox.
type Registration = store.MailboxRegistration

// request2 is a decoded version 2 request.
type request2 struct {
	request
	regs    []Registration // REGISTER
	deposit []byte         // PUSH
}

func appendRegisterRequest(b []byte, regs []Registration) []byte {
	b = append(b, opRegister)
	b = binary.BigEndian.AppendUint16(b, uint16(len(regs)))
	for _, r := range regs {
		b = append(b, r.Kind)
		b = binary.BigEndian.AppendUint64(b, r.Epoch)
		b = append(b, r.Tag[:]...)
	}
	return b
}

func appendPushRequest(b, deposit []byte) []byte {
	return append(append(b, opPush), deposit...)
}

func appendFilterRequest(b []byte, tags [][32]byte) []byte {
	b = append(b, opFilter)
	b = binary.BigEndian.AppendUint16(b, uint16(len(tags)))
	for _, t := range tags {
		b = append(b, t[:]...)
	}
	return b
}

// parseRequest2 decodes a version 2 request frame. Tags, tokens and
// registrations are copied; a PUSH's deposit aliases b.
func parseRequest2(b []byte) (*request2, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty request", ErrBadMessage)
	}
	r := &request2{request: request{op: b[0]}}
	p := b[1:]
	var err error
	switch r.op {
	case opRegister:
		if len(p) < 2 {
			return nil, fmt.Errorf("%w: missing registration count", ErrBadMessage)
		}
		n := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if n == 0 || n > MaxRegistrations || len(p) != n*regEntrySize {
			return nil, fmt.Errorf("%w: %d registrations in %d bytes (1..%d)", ErrBadMessage, n, len(p), MaxRegistrations)
		}
		r.regs = make([]Registration, n)
		for i := range r.regs {
			e := p[i*regEntrySize:]
			r.regs[i].Kind = e[0]
			if k := e[0]; k != store.RegPair && k != store.RegIntro {
				return nil, fmt.Errorf("%w: registration kind 0x%02x", ErrBadMessage, k)
			}
			r.regs[i].Epoch = binary.BigEndian.Uint64(e[1:])
			copy(r.regs[i].Tag[:], e[9:])
		}
	case opPush:
		if len(p) == 0 || len(p) > sprotocol.MaxDepositSize {
			return nil, fmt.Errorf("%w: push of %d bytes", ErrBadMessage, len(p))
		}
		// The deposit's own framing (kind, credential length, an
		// envelope after it) is the request's; the envelope and the
		// credential's validity are judged by the mailbox.
		if _, err := sprotocol.ParseDeposit(p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		r.deposit = p
	case opQuery2:
		if err = r.parseQuery(p); err == nil {
			if _, cerr := store.ParseMailboxCursor(r.cursor); cerr != nil {
				err = fmt.Errorf("%w: %w", ErrBadMessage, cerr)
			}
		}
	case opDelete2:
		err = r.parseDelete(p)
	case opFilter:
		r.tags, err = parseKeys(p, MaxFilterTags, "filter tags")
	default:
		return nil, fmt.Errorf("%w: unknown operation %d", ErrBadMessage, r.op)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// parsePushed decodes a filter push frame.
func parsePushed(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != opPushed {
		return nil, fmt.Errorf("%w: filter push frame", ErrBadMessage)
	}
	return b[1:], nil
}
