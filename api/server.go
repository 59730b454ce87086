package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxBodyBytes is the largest request body the server reads.
const MaxBodyBytes = 64 << 10

// Timeouts of the server. Event streams lift the read and write timeouts
// and bound each event write with eventWriteTimeout instead.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 5 * time.Second
	eventWriteTimeout = 10 * time.Second
)

// DefaultHeartbeat is how often an idle event stream sends a comment line,
// so that clients and proxies see the connection is alive.
const DefaultHeartbeat = 15 * time.Second

// minTokenLength is the shortest bearer token ServeAuth accepts.
const minTokenLength = 16

// Server serves a Backend over HTTP+JSON.
type Server struct {
	b         Backend
	log       *slog.Logger
	heartbeat time.Duration
	mux       *http.ServeMux
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger for server errors (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithHeartbeat sets the event stream's keep-alive interval
// (default DefaultHeartbeat).
func WithHeartbeat(d time.Duration) Option {
	return func(s *Server) {
		if d > 0 {
			s.heartbeat = d
		}
	}
}

// NewServer returns a server exposing b.
func NewServer(b Backend, opts ...Option) *Server {
	s := &Server{
		b:         b,
		log:       slog.New(slog.DiscardHandler),
		heartbeat: DefaultHeartbeat,
		mux:       http.NewServeMux(),
	}
	for _, o := range opts {
		o(s)
	}
	s.routes()
	return s
}

// Handler returns the API's HTTP handler, without authentication.
func (s *Server) Handler() http.Handler { return s.mux }

// ServeUnix listens on the unix socket at path (see ListenUnix) and serves
// until ctx ends.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	ln, err := ListenUnix(path)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// ServeTCP listens on the loopback address addr (see ListenTCP) and serves
// requests bearing token until ctx ends.
func (s *Server) ServeTCP(ctx context.Context, addr, token string) error {
	if err := checkToken(token); err != nil {
		return err
	}
	ln, err := ListenTCP(addr)
	if err != nil {
		return err
	}
	return s.ServeAuth(ctx, ln, token)
}

// ListenTCP listens on addr, which must be a loopback address
// ("127.0.0.1:PORT", "[::1]:PORT" or "localhost:PORT").
func ListenTCP(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("api: TCP address: %w", err)
	}
	if !IsLoopbackAddr(addr) {
		return nil, fmt.Errorf("api: TCP listener must be on a loopback address, got %q", addr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	return ln, nil
}

// IsLoopbackAddr reports whether addr is HOST:PORT with a loopback HOST
// (an address in 127.0.0.0/8, ::1, or "localhost"), the only addresses
// ListenTCP accepts.
func IsLoopbackAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkToken(token string) error {
	if len(token) < minTokenLength {
		return fmt.Errorf("api: bearer token must be at least %d characters", minTokenLength)
	}
	return nil
}

// Serve serves on ln without authentication until ctx ends, then shuts
// down: event streams end, other requests get shutdownTimeout to finish.
// It closes ln. It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, s.mux)
}

// ServeAuth is Serve for requests that carry "Authorization: Bearer
// <token>"; others get 401.
func (s *Server) ServeAuth(ctx context.Context, ln net.Listener, token string) error {
	if err := checkToken(token); err != nil {
		ln.Close()
		return err
	}
	return s.serve(ctx, ln, requireToken(token, s.mux))
}

type stopKey struct{}

func (s *Server) serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	stop := make(chan struct{}) // closed at shutdown to end event streams
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    MaxBodyBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), stopKey{}, (<-chan struct{})(stop))
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		close(stop)
		return fmt.Errorf("api: serve: %w", err)
	case <-ctx.Done():
	}
	close(stop)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("api: shutdown timed out; closing connections", "err", err)
		srv.Close()
	}
	<-errc
	return nil
}

func requireToken(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 || !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sotto"`)
			writeError(w, &Error{Code: CodeUnauthorized, Message: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// route registers handlers for the methods of one path, plus a fallback
// that answers other methods with a JSON 405.
func (s *Server) route(path string, handlers map[string]http.HandlerFunc) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		if h, ok := handlers[m]; ok {
			s.mux.HandleFunc(m+" "+path, h)
			allow = append(allow, m)
		}
	}
	allowed := strings.Join(allow, ", ")
	s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allowed)
		writeError(w, &Error{Code: CodeMethodNotAllowed,
			Message: fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, path, allowed)})
	})
}

func (s *Server) routes() {
	s.route("/v1/status", map[string]http.HandlerFunc{"GET": s.handleStatus})
	s.route("/v1/identity", map[string]http.HandlerFunc{"GET": s.handleIdentity})
	s.route("/v1/setup", map[string]http.HandlerFunc{"POST": s.handleSetup})
	s.route("/v1/invite", map[string]http.HandlerFunc{"GET": s.handleInvite})
	s.route("/v1/contacts", map[string]http.HandlerFunc{"GET": s.handleContacts, "POST": s.handleAddContact})
	s.route("/v1/contacts/{name}/verify", map[string]http.HandlerFunc{"POST": s.handleVerify})
	s.route("/v1/contacts/{name}/reject-key", map[string]http.HandlerFunc{"POST": s.handleRejectKey})
	s.route("/v1/messages", map[string]http.HandlerFunc{"GET": s.handleMessages, "POST": s.handleSend})
	s.route("/v1/events", map[string]http.HandlerFunc{"GET": s.handleEvents})
	s.route("/v1/conversations", map[string]http.HandlerFunc{"GET": s.handleConversations})
	s.route("/v1/conversations/{name}/read", map[string]http.HandlerFunc{"POST": s.handleMarkRead})
	s.route("/v1/backup", map[string]http.HandlerFunc{"GET": s.handleBackup})
	s.route("/v1/groups", map[string]http.HandlerFunc{"GET": s.handleGroups, "POST": s.handleCreateGroup})
	s.route("/v1/groups/{id}", map[string]http.HandlerFunc{"GET": s.handleGroupInfo})
	s.route("/v1/groups/{id}/add", map[string]http.HandlerFunc{"POST": s.handleAddToGroup})
	s.route("/v1/groups/{id}/remove", map[string]http.HandlerFunc{"POST": s.handleRemoveFromGroup})
	s.route("/v1/groups/{id}/leave", map[string]http.HandlerFunc{"POST": s.handleLeaveGroup})
	s.route("/v1/groups/{id}/rename", map[string]http.HandlerFunc{"POST": s.handleRenameGroup})
	s.route("/v1/groups/{id}/promote", map[string]http.HandlerFunc{"POST": s.handlePromoteInGroup})
	s.route("/v1/groups/{id}/messages", map[string]http.HandlerFunc{"GET": s.handleGroupMessages, "POST": s.handleSendGroup})
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Code: CodeNotFound, Message: "no such endpoint: " + r.URL.Path})
	})
}

// Request bodies.
type (
	inviteResponse struct {
		Invite string `json:"invite"`
	}
	addContactRequest struct {
		Name   string `json:"name"`
		Invite string `json:"invite"`
	}
	verifyRequest struct {
		Confirm bool `json:"confirm"`
	}
	sendRequest struct {
		Contact string `json:"contact"`
		Text    string `json:"text"`
	}
	setupRequest struct {
		Name string `json:"name"`
	}
	markReadRequest struct {
		Seq uint64 `json:"seq"`
	}
	createGroupRequest struct {
		Name    string   `json:"name"`
		Members []string `json:"members"`
	}
	groupMembersRequest struct {
		Members []string `json:"members"`
	}
	groupMemberRequest struct {
		Member string `json:"member"`
	}
	renameGroupRequest struct {
		Name string `json:"name"`
	}
	sendGroupRequest struct {
		Text string `json:"text"`
	}
)

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.b.Status(r.Context())
	s.reply(w, r, http.StatusOK, st, err)
}

func (s *Server) handleIdentity(w http.ResponseWriter, r *http.Request) {
	id, err := s.b.Identity(r.Context())
	s.reply(w, r, http.StatusOK, id, err)
}

// handleSetup creates the identity of a data directory that has none,
// through a backend that can (Setup); any other backend has one.
func (s *Server) handleSetup(w http.ResponseWriter, r *http.Request) {
	var req setupRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	setup, ok := s.b.(Setup)
	if !ok {
		writeError(w, errIdentityExists)
		return
	}
	id, err := setup.Setup(r.Context(), req.Name)
	s.reply(w, r, http.StatusCreated, id, err)
}

func (s *Server) handleInvite(w http.ResponseWriter, r *http.Request) {
	inv, err := s.b.Invite(r.Context())
	s.reply(w, r, http.StatusOK, inviteResponse{Invite: inv}, err)
}

func (s *Server) handleContacts(w http.ResponseWriter, r *http.Request) {
	cs, err := s.b.Contacts(r.Context())
	if cs == nil {
		cs = []Contact{}
	}
	s.reply(w, r, http.StatusOK, cs, err)
}

func (s *Server) handleAddContact(w http.ResponseWriter, r *http.Request) {
	var req addContactRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Name == "" || req.Invite == "" {
		writeError(w, BadRequest("name and invite are required"))
		return
	}
	c, err := s.b.AddContact(r.Context(), req.Name, req.Invite)
	s.reply(w, r, http.StatusCreated, c, err)
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	var req verifyRequest
	if e := decodeBody(w, r, &req, true); e != nil {
		writeError(w, e)
		return
	}
	v, err := s.b.VerifyContact(r.Context(), r.PathValue("name"), req.Confirm)
	s.reply(w, r, http.StatusOK, v, err)
}

func (s *Server) handleRejectKey(w http.ResponseWriter, r *http.Request) {
	if e := decodeBody(w, r, &struct{}{}, true); e != nil {
		writeError(w, e)
		return
	}
	v, err := s.b.RejectKeyChange(r.Context(), r.PathValue("name"))
	s.reply(w, r, http.StatusOK, v, err)
}

func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	q, e := parseMessageQuery(r)
	if e != nil {
		writeError(w, e)
		return
	}
	ms, err := s.b.Messages(r.Context(), q)
	if ms == nil {
		ms = []Message{}
	}
	s.reply(w, r, http.StatusOK, ms, err)
}

func parseMessageQuery(r *http.Request) (MessageQuery, *Error) {
	v := r.URL.Query()
	q := MessageQuery{Contact: v.Get("contact"), Limit: DefaultMessageLimit}
	if a := v.Get("after"); a != "" {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return q, BadRequest("after must be a message seq (a non-negative integer), got %q", a)
		}
		q.After = n
	}
	if b := v.Get("before"); b != "" {
		n, err := strconv.ParseUint(b, 10, 64)
		if err != nil || n == 0 {
			return q, BadRequest("before must be a message seq (a positive integer), got %q", b)
		}
		q.Before = n
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxMessageLimit {
			return q, BadRequest("limit must be an integer from 1 to %d, got %q", MaxMessageLimit, l)
		}
		q.Limit = n
	}
	return q, nil
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	var req sendRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Contact == "" || req.Text == "" {
		writeError(w, BadRequest("contact and text are required"))
		return
	}
	m, err := s.b.Send(r.Context(), req.Contact, req.Text)
	s.reply(w, r, http.StatusCreated, m, err)
}

func (s *Server) handleConversations(w http.ResponseWriter, r *http.Request) {
	cs, err := s.b.Conversations(r.Context())
	if cs == nil {
		cs = []Conversation{}
	}
	s.reply(w, r, http.StatusOK, cs, err)
}

func (s *Server) handleMarkRead(w http.ResponseWriter, r *http.Request) {
	var req markReadRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	err := s.b.MarkRead(r.Context(), r.PathValue("name"), req.Seq)
	s.reply(w, r, http.StatusOK, struct{}{}, err)
}

func (s *Server) handleGroups(w http.ResponseWriter, r *http.Request) {
	gs, err := s.b.Groups(r.Context())
	if gs == nil {
		gs = []Group{}
	}
	s.reply(w, r, http.StatusOK, gs, err)
}

func (s *Server) handleCreateGroup(w http.ResponseWriter, r *http.Request) {
	var req createGroupRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Name == "" {
		writeError(w, BadRequest("name is required"))
		return
	}
	if req.Members == nil {
		req.Members = []string{}
	}
	g, err := s.b.CreateGroup(r.Context(), req.Name, req.Members)
	s.reply(w, r, http.StatusCreated, g, err)
}

// groupID is the request's {id}, or false once the error is written.
func groupID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if _, err := ParseGroupID(id); err != nil {
		writeError(w, asError(err))
		return "", false
	}
	return id, true
}

func (s *Server) handleGroupInfo(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	g, err := s.b.GroupInfo(r.Context(), id)
	s.reply(w, r, http.StatusOK, g, err)
}

func (s *Server) handleAddToGroup(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	var req groupMembersRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if len(req.Members) == 0 {
		writeError(w, BadRequest("members is required: the names of the contacts to add"))
		return
	}
	g, err := s.b.AddToGroup(r.Context(), id, req.Members)
	s.reply(w, r, http.StatusOK, g, err)
}

func (s *Server) handleRemoveFromGroup(w http.ResponseWriter, r *http.Request) {
	s.memberChange(w, r, s.b.RemoveFromGroup)
}

func (s *Server) handlePromoteInGroup(w http.ResponseWriter, r *http.Request) {
	s.memberChange(w, r, s.b.PromoteInGroup)
}

// memberChange serves a change of the group {id} that names one member.
func (s *Server) memberChange(w http.ResponseWriter, r *http.Request, change func(ctx context.Context, id, member string) (Group, error)) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	var req groupMemberRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Member == "" {
		writeError(w, BadRequest("member is required: the contact's name"))
		return
	}
	g, err := change(r.Context(), id, req.Member)
	s.reply(w, r, http.StatusOK, g, err)
}

func (s *Server) handleLeaveGroup(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	if e := decodeBody(w, r, &struct{}{}, true); e != nil {
		writeError(w, e)
		return
	}
	g, err := s.b.LeaveGroup(r.Context(), id)
	s.reply(w, r, http.StatusOK, g, err)
}

func (s *Server) handleRenameGroup(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	var req renameGroupRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Name == "" {
		writeError(w, BadRequest("name is required"))
		return
	}
	g, err := s.b.RenameGroup(r.Context(), id, req.Name)
	s.reply(w, r, http.StatusOK, g, err)
}

func (s *Server) handleSendGroup(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	var req sendGroupRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		writeError(w, e)
		return
	}
	if req.Text == "" {
		writeError(w, BadRequest("text is required"))
		return
	}
	m, err := s.b.SendGroup(r.Context(), id, req.Text)
	s.reply(w, r, http.StatusCreated, m, err)
}

func (s *Server) handleGroupMessages(w http.ResponseWriter, r *http.Request) {
	id, ok := groupID(w, r)
	if !ok {
		return
	}
	v := r.URL.Query()
	skip, limit := 0, DefaultGroupMessageLimit
	if a := v.Get("skip"); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < 0 {
			writeError(w, BadRequest("skip must be a non-negative integer, got %q", a))
			return
		}
		skip = n
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxGroupMessageLimit {
			writeError(w, BadRequest("limit must be an integer from 1 to %d, got %q", MaxGroupMessageLimit, l))
			return
		}
		limit = n
	}
	ms, err := s.b.GroupMessages(r.Context(), id, skip, limit)
	if ms == nil {
		ms = []GroupMessage{}
	}
	s.reply(w, r, http.StatusOK, ms, err)
}

// handleEvents streams events as server-sent events: each event is one
// "data:" line holding the Event's JSON, preceded by an "id:" line counting
// from 1; idle streams get ": ping" comments.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop, _ := ctx.Value(stopKey{}).(<-chan struct{})
	ch, err := s.b.Subscribe(ctx)
	if err != nil {
		s.reply(w, r, 0, nil, err)
		return
	}
	rc := http.NewResponseController(w)
	// The stream outlives the server's read and write timeouts. Writers
	// that do not support deadlines (tests' recorders) ignore this.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
		if _, err := io.WriteString(w, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write(": sotto events\n\n") {
		return
	}
	tick := time.NewTicker(s.heartbeat)
	defer tick.Stop()
	var id uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-tick.C:
			if !write(": ping\n\n") {
				return
			}
		case ev, ok := <-ch:
			if !ok {
				return
			}
			data, err := json.Marshal(ev)
			if err != nil {
				s.log.Warn("api: encoding event", "type", ev.Type, "err", err)
				continue
			}
			id++
			if !write("id: " + strconv.FormatUint(id, 10) + "\ndata: " + string(data) + "\n\n") {
				return
			}
		}
	}
}

// decodeBody reads one JSON object from the request body into v, bounded
// by MaxBodyBytes, rejecting unknown fields and trailing data. An empty
// body is accepted (leaving v zero) only if allowEmpty.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) *Error {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Exactly one JSON value: the next read must be the end.
		if _, terr := dec.Token(); terr != io.EOF {
			err = terr
			if err == nil {
				err = errors.New("unexpected data after the JSON object")
			}
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
	case errors.Is(err, io.EOF) && allowEmpty:
		return nil
	case errors.Is(err, io.EOF):
		return BadRequest("request body is empty; expected a JSON object")
	default:
		return BadRequest("malformed JSON request: %v", err)
	}
}

// reply writes v with status, or the error if err is not nil.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	if err != nil {
		e := asError(err)
		if e.HTTPStatus() >= 500 {
			s.log.Warn("api: request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", err)
		}
		writeError(w, e)
		return
	}
	writeJSON(w, status, v)
}

func writeError(w http.ResponseWriter, e *Error) {
	writeJSON(w, e.HTTPStatus(), e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
