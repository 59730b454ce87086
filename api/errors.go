package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Error codes carried in error responses. Callers branch on these, not on
// the message text.
const (
	CodeBadRequest       = "bad_request"        // malformed or invalid input
	CodeBadInvite        = "bad_invite"         // the invite link does not parse or verify
	CodeUnknownContact   = "unknown_contact"    // no contact by that name
	CodeContactExists    = "contact_exists"     // a contact by that name already exists
	CodeUnknownGroup     = "unknown_group"      // no group with that ID
	CodeNotGroupMember   = "not_group_member"   // this account left the group or was removed
	CodeNotGroupAdmin    = "not_group_admin"    // the change is for the group's admins
	CodeKeyChanged       = "key_changed"        // the contact's key changed; verify before sending
	CodeUnauthorized     = "unauthorized"       // missing or wrong bearer token
	CodeNotFound         = "not_found"          // no such endpoint
	CodeMethodNotAllowed = "method_not_allowed" // endpoint exists, method does not
	CodeTooLarge         = "too_large"          // request body over MaxBodyBytes
	CodeUnavailable      = "unavailable"        // the backend cannot serve this now
	CodeNoIdentity       = "no_identity"        // the data directory has no identity yet: POST /v1/setup
	CodeIdentityExists   = "identity_exists"    // POST /v1/setup on a node that has an identity
	CodeInternal         = "internal"           // anything else
)

// Error is an error that is safe to show to the user, with a code that
// callers can branch on. Backends return it for conditions the user can
// correct; the server sends it as a JSON body and the client rebuilds it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
	// Status is the HTTP status the error arrived with (client side) or
	// will be sent with (server side, 0 means derived from Code).
	Status int `json:"-"`
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, api.ErrUnknownContact) works on any unknown-contact error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// HTTPStatus is the status the error is sent with.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	switch e.Code {
	case CodeBadRequest, CodeBadInvite:
		return http.StatusBadRequest
	case CodeUnknownContact, CodeUnknownGroup, CodeNotFound:
		return http.StatusNotFound
	case CodeNotGroupMember, CodeNotGroupAdmin:
		return http.StatusForbidden
	case CodeContactExists, CodeKeyChanged, CodeNoIdentity, CodeIdentityExists:
		return http.StatusConflict
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// Sentinel errors for errors.Is; they match any *Error with the same code.
var (
	ErrBadRequest     = &Error{Code: CodeBadRequest, Message: "api: bad request"}
	ErrBadInvite      = &Error{Code: CodeBadInvite, Message: "api: bad invite"}
	ErrUnknownContact = &Error{Code: CodeUnknownContact, Message: "api: unknown contact"}
	ErrContactExists  = &Error{Code: CodeContactExists, Message: "api: contact exists"}
	ErrUnknownGroup   = &Error{Code: CodeUnknownGroup, Message: "api: unknown group"}
	ErrNotGroupMember = &Error{Code: CodeNotGroupMember, Message: "api: not a member of the group"}
	ErrNotGroupAdmin  = &Error{Code: CodeNotGroupAdmin, Message: "api: not an admin of the group"}
	ErrKeyChanged     = &Error{Code: CodeKeyChanged, Message: "api: contact key changed"}
	ErrUnauthorized   = &Error{Code: CodeUnauthorized, Message: "api: unauthorized"}
	ErrNoIdentity     = &Error{Code: CodeNoIdentity, Message: "api: no identity yet"}
	ErrIdentityExists = &Error{Code: CodeIdentityExists, Message: "api: identity exists"}
)

// BadRequest returns a bad_request error with a formatted message.
func BadRequest(format string, args ...any) *Error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// BadInvite returns a bad_invite error explaining why the invite was refused.
func BadInvite(reason string) *Error {
	return &Error{Code: CodeBadInvite, Message: "invalid invite: " + reason}
}

// UnknownContact returns an unknown_contact error naming the contacts that
// do exist, so that the user can correct a typo.
func UnknownContact(name string, known []string) *Error {
	msg := fmt.Sprintf("unknown contact %q", name)
	if len(known) == 0 {
		msg += " (no contacts yet: add one with `sotto contact add NAME INVITE`)"
	} else {
		msg += " (known: " + strings.Join(known, ", ") + ")"
	}
	return &Error{Code: CodeUnknownContact, Message: msg}
}

// ContactExists returns a contact_exists error.
func ContactExists(name string) *Error {
	return &Error{Code: CodeContactExists, Message: fmt.Sprintf("a contact named %q already exists", name)}
}

// asError converts any error into an *Error for the wire. Errors that are
// not *Error become internal errors; their text is passed on, since
// backends keep secrets out of error strings.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}
