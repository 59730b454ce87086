package ui

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sotto-im/sotto/api"
)

//go:embed assets
var assets embed.FS

// Timeouts of the server. Event streams lift the read and write timeouts
// themselves (see api.Server).
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	shutdownTimeout   = 5 * time.Second
	maxHeaderBytes    = 64 << 10
)

// contentSecurityPolicy allows scripts, styles, images and connections
// from this origin only: no inline script or style, no eval, no frames,
// no plugins, forms posting only here.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Server serves the web interface of one node.
type Server struct {
	b         api.Backend
	api       http.Handler
	auth      *authenticator
	files     http.Handler
	log       *slog.Logger
	heartbeat time.Duration
	mux       *http.ServeMux
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger for server errors (default: discard). No
// token, cookie or login code is ever logged.
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithHeartbeat sets the event stream's keep-alive interval (default
// api.DefaultHeartbeat).
func WithHeartbeat(d time.Duration) Option {
	return func(s *Server) {
		if d > 0 {
			s.heartbeat = d
		}
	}
}

// New returns a server for the interface of b. token is the node's API
// bearer token (api.LoadOrCreateToken): it authenticates API clients and
// keys the session cookies.
func New(b api.Backend, token string, opts ...Option) (*Server, error) {
	auth, err := newAuthenticator(token)
	if err != nil {
		return nil, err
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	s := &Server{
		b:         b,
		auth:      auth,
		files:     http.FileServerFS(sub),
		log:       slog.New(slog.DiscardHandler),
		heartbeat: api.DefaultHeartbeat,
		mux:       http.NewServeMux(),
	}
	for _, o := range opts {
		o(s)
	}
	s.api = api.NewServer(b, api.WithLogger(s.log), api.WithHeartbeat(s.heartbeat)).Handler()
	s.routes()
	return s, nil
}

// Listen listens on addr, which must be a loopback address, as the API's
// TCP listener must.
func Listen(addr string) (net.Listener, error) {
	ln, err := api.ListenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("ui: %s", strings.TrimPrefix(err.Error(), "api: "))
	}
	return ln, nil
}

// LoginURL returns a new one-time login link for the interface at base
// ("http://127.0.0.1:PORT"). Opening it signs the browser in.
func (s *Server) LoginURL(base string) (string, error) {
	code, err := s.auth.newCode()
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(base, "/") + "/login?code=" + code, nil
}

// Handler returns the interface's handler, with every check in place.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// Serve serves on ln until ctx ends, then shuts down: event streams end,
// other requests get shutdownTimeout to finish. It closes ln and returns
// nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, stop := context.WithCancel(context.Background())
	defer stop()
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ui: serve: %w", err)
	case <-ctx.Done():
	}
	stop() // ends the event streams, whose requests live in base
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("ui: shutdown timed out; closing connections", "err", err)
		srv.Close()
	}
	<-errc
	return nil
}

func (s *Server) routes() {
	s.mux.HandleFunc("/v1/", s.api.ServeHTTP)
	s.mux.HandleFunc("GET /invite.svg", s.handleInviteQR)
	s.mux.HandleFunc("GET /{$}", s.handleIndex)
	s.mux.Handle("GET /assets/", http.StripPrefix("/assets/", s.files))
}

// serveHTTP applies the checks in order: headers, Host, login, session
// or token, Origin; then routes.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")

	if !hostAllowed(r) {
		refuse(w, r, http.StatusForbidden, "forbidden_host",
			"this interface answers only to a loopback name (localhost, 127.0.0.1, [::1]) with its own port")
		return
	}
	if r.URL.Path == "/login" {
		s.handleLogin(w, r)
		return
	}
	via, ok := s.auth.check(r)
	if !ok {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sotto"`)
			refuse(w, r, http.StatusUnauthorized, api.CodeUnauthorized,
				"sign in with the login link `sotto run --ui` printed, or send the API token as a bearer token")
			return
		}
		s.loginPage(w, http.StatusUnauthorized, "")
		return
	}
	if changesState(r.Method) && !originAllowed(r, via) {
		refuse(w, r, http.StatusForbidden, "forbidden_origin",
			"requests that change something must come from this interface's own pages (Origin)")
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	b, err := assets.ReadFile("assets/index.html")
	if err != nil {
		http.Error(w, "ui: index missing from this build", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b)
}

// changesState reports whether method may change state: anything but
// GET, HEAD and OPTIONS.
func changesState(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// hostAllowed reports whether the request's Host is a loopback name with
// the port of the connection it came in on. A page of another name that
// resolves to 127.0.0.1 sends its own name and is refused.
func hostAllowed(r *http.Request) bool {
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		host, port = r.Host, "80"
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host != "localhost" {
		ip := net.ParseIP(strings.Trim(host, "[]"))
		if ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return true // not from a listener (a handler test): no port to compare
	}
	_, localPort, err := net.SplitHostPort(local.String())
	return err == nil && port == localPort
}

// originAllowed reports whether a state-changing request comes from this
// server's own pages: its Origin is this server (as the Host named it).
// Browsers send Origin with every such request; a client without one is
// not a browser and is accepted only with the bearer token.
func originAllowed(r *http.Request, via authMethod) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return via == viaToken
	}
	return origin == "http://"+r.Host
}

// refuse answers with an error: JSON, as the API's errors are, for API
// paths, else text.
func refuse(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}
