// Package ui serves Sotto's web interface on a loopback address: the
// files in assets/ (JavaScript modules and CSS, embedded in the binary)
// and, under /v1/, the control API they call, the same API that bots and
// the command line use.
//
// Nobody but the user may use it. A request is served only when
//
//   - its Host header names a loopback host ("localhost", 127.0.0.0/8,
//     ::1) with the port the request came in on, so that a page of a
//     foreign name that resolves to 127.0.0.1 (DNS rebinding) gets 403;
//   - it carries the session cookie, or the API's bearer token; the
//     cookie comes from a one-time login link (LoginURL) or from the
//     token entered on the login page, and is an HMAC under the token, so
//     a new token ends every session;
//   - for a method that changes state, its Origin is this server's own,
//     so that another site cannot post with the user's cookie (403).
//
// Every response forbids inline script and style, framing and third-party
// origins (Content-Security-Policy), content sniffing and referrers.
package ui
