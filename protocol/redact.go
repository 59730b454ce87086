package protocol

import (
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// A Ratchet and a Session hold root, chain, header and skipped message
// keys, the ratchet private key and the pairwise tag seed. They format
// without any of them, under every fmt verb (Format) and in slog output
// (LogValue): only the role and the message counters show, never a key or
// an identity.

// phaseName names a ratchet's phase for formatted output.
func phaseName(r *Ratchet) string {
	p, ok := r.phase()
	if !ok {
		return "inconsistent"
	}
	switch p {
	case phaseResponderNew:
		return "responder-new"
	case phaseInitiatorNew:
		return "initiator-new"
	case phaseAwaitingSend:
		return "awaiting-send"
	}
	return "running"
}

// String describes the ratchet's phase and counters; its keys are
// redacted.
func (r Ratchet) String() string {
	b := make([]byte, 0, 128)
	b = append(b, "ratchet{phase="...)
	b = append(b, phaseName(&r)...)
	b = append(b, " ns="...)
	b = strconv.AppendUint(b, uint64(r.ns), 10)
	b = append(b, " pn="...)
	b = strconv.AppendUint(b, uint64(r.pn), 10)
	b = append(b, " nr="...)
	b = strconv.AppendUint(b, uint64(r.nr), 10)
	b = append(b, " skipped="...)
	b = strconv.AppendInt(b, int64(len(r.skipped)), 10)
	b = append(b, " old-chains="...)
	b = strconv.AppendInt(b, int64(len(r.old)), 10)
	b = append(b, " keys=REDACTED}"...)
	return string(b)
}

// GoString is String under %#v.
func (r Ratchet) GoString() string { return "protocol." + r.String() }

// Format writes String (GoString under %#v) for every verb, so that no
// verb prints the fields.
func (r Ratchet) Format(f fmt.State, verb rune) { formatRedacted(f, verb, r.String(), r.GoString()) }

// LogValue is String in slog output.
func (r Ratchet) LogValue() slog.Value { return slog.StringValue(r.String()) }

// String describes the session's role and state; its keys are redacted.
func (s Session) String() string {
	role := "responder"
	if s.initiator {
		role = "initiator"
	}
	pending := ""
	if s.prefix != nil {
		pending = " pending-initial"
	}
	ratchet := "ratchet{none}"
	if s.ratchet != nil {
		ratchet = s.ratchet.String()
	}
	return "session{" + role + pending + " " + ratchet + " keys=REDACTED}"
}

// GoString is String under %#v.
func (s Session) GoString() string { return "protocol." + s.String() }

// Format writes String (GoString under %#v) for every verb, so that no
// verb prints the fields.
func (s Session) Format(f fmt.State, verb rune) { formatRedacted(f, verb, s.String(), s.GoString()) }

// LogValue is String in slog output.
func (s Session) LogValue() slog.Value { return slog.StringValue(s.String()) }

func formatRedacted(f fmt.State, verb rune, s, gs string) {
	if verb == 'v' && f.Flag('#') {
		s = gs
	}
	io.WriteString(f, s)
}
