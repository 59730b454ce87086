package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Session and login limits.
const (
	// SessionLifetime is how long a session cookie stays valid.
	SessionLifetime = 30 * 24 * time.Hour
	// maxLoginCodes bounds the unused login codes kept; the oldest goes
	// first.
	maxLoginCodes = 16
	// minTokenLength is the shortest token New accepts, as the API's.
	minTokenLength = 16
	// maxLoginBody bounds the login form.
	maxLoginBody  = 4 << 10
	sessionIDSize = 16
	loginCodeSize = 32
)

// cookiePrefix starts the session cookie's name; the port follows, since
// browsers share cookies between the ports of one host and two nodes on
// one machine must not overwrite each other's session.
const cookiePrefix = "sotto_session_"

// sessionLabel separates the session MAC from any other use of the token.
const sessionLabel = "sotto ui session v1"

// authMethod says how a request proved who it is.
type authMethod int

const (
	viaNone authMethod = iota
	viaCookie
	viaToken
)

// authenticator checks bearer tokens and session cookies and hands out
// one-time login codes. Sessions are not stored: a cookie is an ID and a
// time under an HMAC keyed by the token, so it survives a restart and
// dies with the token.
type authenticator struct {
	tokenSum [sha256.Size]byte
	key      []byte // HMAC key of session cookies, derived from the token
	now      func() time.Time

	mu    sync.Mutex
	codes [][sha256.Size]byte // hashes of unused login codes, oldest first
}

func newAuthenticator(token string) (*authenticator, error) {
	if len(token) < minTokenLength {
		return nil, fmt.Errorf("ui: the API token must be at least %d characters", minTokenLength)
	}
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte(sessionLabel))
	return &authenticator{tokenSum: sha256.Sum256([]byte(token)), key: mac.Sum(nil), now: time.Now}, nil
}

// tokenMatches compares in constant time (over hashes, so that the
// length of the token does not show either).
func (a *authenticator) tokenMatches(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1
}

// check reports how r is authenticated: a bearer token or a valid
// session cookie for this port.
func (a *authenticator) check(r *http.Request) (authMethod, bool) {
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if a.tokenMatches(got) {
			return viaToken, true
		}
		return viaNone, false
	}
	c, err := r.Cookie(cookieName(r))
	if err != nil {
		return viaNone, false
	}
	if a.sessionValid(c.Value) {
		return viaCookie, true
	}
	return viaNone, false
}

// newCode returns a fresh one-time login code.
func (a *authenticator) newCode() (string, error) {
	buf := make([]byte, loginCodeSize)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("ui: %w", err)
	}
	code := base64.RawURLEncoding.EncodeToString(buf)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.codes) == maxLoginCodes {
		a.codes = a.codes[1:]
	}
	a.codes = append(a.codes, sha256.Sum256([]byte(code)))
	return code, nil
}

// useCode consumes code if it is an unused login code. Every stored code
// is compared, in constant time.
func (a *authenticator) useCode(code string) bool {
	sum := sha256.Sum256([]byte(code))
	a.mu.Lock()
	defer a.mu.Unlock()
	found := -1
	for i, c := range a.codes {
		if subtle.ConstantTimeCompare(c[:], sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return false
	}
	a.codes = append(a.codes[:found], a.codes[found+1:]...)
	return true
}

// newSession returns a cookie value: base64url(id ‖ issued) "." base64url(mac).
func (a *authenticator) newSession() (string, error) {
	payload := make([]byte, sessionIDSize+8)
	if _, err := rand.Read(payload[:sessionIDSize]); err != nil {
		return "", fmt.Errorf("ui: %w", err)
	}
	binary.BigEndian.PutUint64(payload[sessionIDSize:], uint64(a.now().Unix()))
	return base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(a.mac(payload)), nil
}

func (a *authenticator) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write(payload)
	return m.Sum(nil)
}

// sessionValid checks a cookie value's MAC (in constant time) and age.
func (a *authenticator) sessionValid(v string) bool {
	p, s, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p)
	sig, err2 := base64.RawURLEncoding.DecodeString(s)
	if err1 != nil || err2 != nil || len(payload) != sessionIDSize+8 {
		return false
	}
	if !hmac.Equal(sig, a.mac(payload)) {
		return false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(payload[sessionIDSize:])), 0)
	age := a.now().Sub(issued)
	return age >= -time.Minute && age < SessionLifetime
}

// cookieName is the session cookie's name for the port r came in on.
func cookieName(r *http.Request) string {
	port := "80"
	if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if _, p, err := net.SplitHostPort(local.String()); err == nil {
			port = p
		}
	} else if _, p, err := net.SplitHostPort(r.Host); err == nil {
		port = p
	}
	return cookiePrefix + port
}

var errLoginFailed = errors.New("ui: login failed")

// handleLogin signs a browser in: GET with a one-time code (the link
// `sotto run --ui` prints), or POST of the login form with the API token.
// Either sets the session cookie and redirects to the interface.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var err error
	switch r.Method {
	case http.MethodGet:
		code := r.URL.Query().Get("code")
		if code == "" {
			s.loginPage(w, http.StatusOK, "")
			return
		}
		if !s.auth.useCode(code) {
			s.loginPage(w, http.StatusUnauthorized, "This login link was already used or is not valid. Each link signs in once: restart `sotto run --ui` for a new one, or enter the token below.")
			return
		}
	case http.MethodPost:
		if !originAllowed(r, viaNone) {
			refuse(w, r, http.StatusForbidden, "forbidden_origin", "the login form must be sent from this interface's own page (Origin)")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
		if err = r.ParseForm(); err != nil || !s.auth.tokenMatches(strings.TrimSpace(r.PostForm.Get("token"))) {
			s.loginPage(w, http.StatusUnauthorized, "That is not this node's API token. It is the content of the file api.token in the data directory.")
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		refuse(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "use GET with a login link or POST the login form")
		return
	}
	v, err := s.auth.newSession()
	if err != nil {
		s.log.Warn("ui: creating a session", "err", err)
		http.Error(w, errLoginFailed.Error(), http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName(r),
		Value:    v,
		Path:     "/",
		MaxAge:   int(SessionLifetime / time.Second),
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	})
	// A clean URL: the code leaves the address bar and the history.
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// loginPage answers with the login page, which explains how to sign in
// and offers a form for the token; msg, when set, says what went wrong.
func (s *Server) loginPage(w http.ResponseWriter, status int, msg string) {
	page, err := assets.ReadFile("assets/login.html")
	if err != nil {
		http.Error(w, "ui: login page missing from this build", http.StatusInternalServerError)
		return
	}
	out := strings.Replace(string(page), "<!--message-->", html.EscapeString(msg), 1)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write([]byte(out))
}
