// Package api is Sotto's local control API: HTTP+JSON over a unix socket in
// the data directory, a server-sent event stream for incoming messages and
// state changes, and a Go client for the command-line tool and for bots.
//
// The package defines the Backend interface that a running node (or an
// offline, store-backed view of a data directory) implements, and the JSON
// types that travel over the socket. Server exposes any Backend; Client
// implements Backend over the socket, so callers use one interface whether
// they talk to a running node or not.
//
// Endpoints (all under the version prefix /v1):
//
//	GET  /v1/status                      Status
//	GET  /v1/identity                    Identity
//	POST /v1/setup                       {"name"} -> Identity (created; only while
//	                                     the data directory has no identity)
//	GET  /v1/invite                      {"invite": "sotto://..."}
//	GET  /v1/contacts                    [Contact]
//	POST /v1/contacts                    {"name", "invite"} -> Contact
//	POST /v1/contacts/{name}/verify      {"confirm"} -> Verification
//	POST /v1/contacts/{name}/reject-key  -> Verification (of the key kept)
//	GET  /v1/messages?contact=&after=&before=&limit=   [Message]
//	POST /v1/messages                    {"contact", "text"} -> Message
//	GET  /v1/conversations               [Conversation]
//	POST /v1/conversations/{name}/read   {"seq"} -> {}
//	GET  /v1/groups                      [Group]
//	POST /v1/groups                      {"name", "members"} -> Group (created)
//	GET  /v1/groups/{id}                 Group
//	POST /v1/groups/{id}/add             {"members"} -> Group
//	POST /v1/groups/{id}/remove          {"member"} -> Group
//	POST /v1/groups/{id}/leave           -> Group
//	POST /v1/groups/{id}/rename          {"name"} -> Group
//	POST /v1/groups/{id}/promote         {"member"} -> Group
//	GET  /v1/groups/{id}/messages?skip=&limit=         [GroupMessage]
//	POST /v1/groups/{id}/messages        {"text"} -> GroupMessage (created)
//	GET  /v1/events                      text/event-stream of Event
//
// A group's {id} is its ID, 64 hex digits; members are named by their
// contact names. Group events (group_message, group) come on the same
// stream as the others.
//
// Errors are JSON objects {"error": "...", "code": "..."} with a 4xx status
// for bad input and a 5xx status otherwise; the client turns them back into
// *Error values.
//
// The unix socket is the access control: it is created with mode 0600 in a
// data directory of mode 0700. An optional TCP listener, for a browser UI,
// accepts only loopback addresses and requires a bearer token.
package api
