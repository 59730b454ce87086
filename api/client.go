package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits of the client.
const (
	// MaxResponseBytes bounds the body of one response.
	MaxResponseBytes = 64 << 20
	// MaxEventBytes bounds one line of the event stream.
	MaxEventBytes = 1 << 20
	// EventBuffer is the capacity of the channel Subscribe returns.
	EventBuffer = 64

	dialTimeout           = 5 * time.Second
	responseHeaderTimeout = 2 * time.Minute
)

// Client talks to a Server and implements Backend.
type Client struct {
	hc    *http.Client
	base  string
	token string
}

var _ Backend = (*Client)(nil)

// Dial returns a client for the node serving dataDir, or an error wrapping
// ErrNoNode if no process answers on its socket.
func Dial(dataDir string) (*Client, error) {
	path, err := SocketPath(dataDir)
	if err != nil {
		return nil, err
	}
	if !socketAnswers(path) {
		return nil, fmt.Errorf("%w for %s", ErrNoNode, dataDir)
	}
	return NewClient(path), nil
}

// NewClient returns a client for the unix socket at socketPath. It does not
// connect until the first call.
func NewClient(socketPath string) *Client {
	d := net.Dialer{Timeout: dialTimeout}
	return newClient("http://sotto", "", func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", socketPath)
	})
}

// NewTCPClient returns a client for a server's TCP listener at addr
// ("127.0.0.1:PORT") that sends token as a bearer token.
func NewTCPClient(addr, token string) *Client {
	d := net.Dialer{Timeout: dialTimeout}
	return newClient("http://"+addr, token, d.DialContext)
}

func newClient(base, token string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	return &Client{
		hc: &http.Client{Transport: &http.Transport{
			DialContext:           dial,
			ResponseHeaderTimeout: responseHeaderTimeout,
			MaxIdleConns:          4,
			IdleConnTimeout:       idleTimeout,
		}},
		base:  base,
		token: token,
	}
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("api: encoding request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// send performs a request and returns the response if its status is 2xx,
// or the server's error as an *Error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("api: cannot reach the node: %w", err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, readError(resp)
}

// readError decodes an error response.
func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
	var e Error
	if err := json.Unmarshal(b, &e); err != nil || e.Message == "" {
		e = Error{Code: CodeInternal, Message: fmt.Sprintf("api: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))}
	}
	if e.Code == "" {
		e.Code = CodeInternal
	}
	e.Status = resp.StatusCode
	return &e
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(io.LimitReader(resp.Body, MaxResponseBytes))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("api: decoding %s response: %w", path, err)
	}
	return nil
}

// Status implements Backend.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil, &st)
	return st, err
}

// Identity implements Backend.
func (c *Client) Identity(ctx context.Context) (Identity, error) {
	var id Identity
	err := c.do(ctx, http.MethodGet, "/v1/identity", nil, nil, &id)
	return id, err
}

// Invite implements Backend.
func (c *Client) Invite(ctx context.Context) (string, error) {
	var inv inviteResponse
	err := c.do(ctx, http.MethodGet, "/v1/invite", nil, nil, &inv)
	return inv.Invite, err
}

// Contacts implements Backend.
func (c *Client) Contacts(ctx context.Context) ([]Contact, error) {
	var cs []Contact
	err := c.do(ctx, http.MethodGet, "/v1/contacts", nil, nil, &cs)
	return cs, err
}

// AddContact implements Backend.
func (c *Client) AddContact(ctx context.Context, name, invite string) (Contact, error) {
	var ct Contact
	err := c.do(ctx, http.MethodPost, "/v1/contacts", nil, addContactRequest{Name: name, Invite: invite}, &ct)
	return ct, err
}

// Setup creates the identity of the node's data directory, when it has
// none (`sotto run --ui` on a fresh data directory), as `sotto init`
// does; a node that has one answers with CodeIdentityExists.
func (c *Client) Setup(ctx context.Context, name string) (Identity, error) {
	var id Identity
	err := c.do(ctx, http.MethodPost, "/v1/setup", nil, setupRequest{Name: name}, &id)
	return id, err
}

// VerifyContact implements Backend.
func (c *Client) VerifyContact(ctx context.Context, name string, confirm bool) (Verification, error) {
	var v Verification
	err := c.do(ctx, http.MethodPost, "/v1/contacts/"+url.PathEscape(name)+"/verify", nil, verifyRequest{Confirm: confirm}, &v)
	return v, err
}

// RejectKeyChange implements Backend.
func (c *Client) RejectKeyChange(ctx context.Context, name string) (Verification, error) {
	var v Verification
	err := c.do(ctx, http.MethodPost, "/v1/contacts/"+url.PathEscape(name)+"/reject-key", nil, nil, &v)
	return v, err
}

// Send implements Backend.
func (c *Client) Send(ctx context.Context, contact, text string) (Message, error) {
	var m Message
	err := c.do(ctx, http.MethodPost, "/v1/messages", nil, sendRequest{Contact: contact, Text: text}, &m)
	return m, err
}

// Messages implements Backend.
func (c *Client) Messages(ctx context.Context, q MessageQuery) ([]Message, error) {
	v := url.Values{}
	if q.Contact != "" {
		v.Set("contact", q.Contact)
	}
	if q.After != 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Before != 0 {
		v.Set("before", strconv.FormatUint(q.Before, 10))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var ms []Message
	err := c.do(ctx, http.MethodGet, "/v1/messages", v, nil, &ms)
	return ms, err
}

// Conversations implements Backend.
func (c *Client) Conversations(ctx context.Context) ([]Conversation, error) {
	var cs []Conversation
	err := c.do(ctx, http.MethodGet, "/v1/conversations", nil, nil, &cs)
	return cs, err
}

// MarkRead implements Backend.
func (c *Client) MarkRead(ctx context.Context, contact string, seq uint64) error {
	var out struct{}
	return c.do(ctx, http.MethodPost, "/v1/conversations/"+url.PathEscape(contact)+"/read", nil, markReadRequest{Seq: seq}, &out)
}

// Groups implements Backend.
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	var gs []Group
	err := c.do(ctx, http.MethodGet, "/v1/groups", nil, nil, &gs)
	return gs, err
}

// groupPath is the path of the group id's endpoint op ("" for the group
// itself).
func groupPath(id, op string) string {
	p := "/v1/groups/" + url.PathEscape(id)
	if op != "" {
		p += "/" + op
	}
	return p
}

// GroupInfo implements Backend.
func (c *Client) GroupInfo(ctx context.Context, id string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodGet, groupPath(id, ""), nil, nil, &g)
	return g, err
}

// CreateGroup implements Backend.
func (c *Client) CreateGroup(ctx context.Context, name string, members []string) (Group, error) {
	if members == nil {
		members = []string{}
	}
	var g Group
	err := c.do(ctx, http.MethodPost, "/v1/groups", nil, createGroupRequest{Name: name, Members: members}, &g)
	return g, err
}

// AddToGroup implements Backend.
func (c *Client) AddToGroup(ctx context.Context, id string, members []string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodPost, groupPath(id, "add"), nil, groupMembersRequest{Members: members}, &g)
	return g, err
}

// RemoveFromGroup implements Backend.
func (c *Client) RemoveFromGroup(ctx context.Context, id, member string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodPost, groupPath(id, "remove"), nil, groupMemberRequest{Member: member}, &g)
	return g, err
}

// LeaveGroup implements Backend.
func (c *Client) LeaveGroup(ctx context.Context, id string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodPost, groupPath(id, "leave"), nil, nil, &g)
	return g, err
}

// RenameGroup implements Backend.
func (c *Client) RenameGroup(ctx context.Context, id, name string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodPost, groupPath(id, "rename"), nil, renameGroupRequest{Name: name}, &g)
	return g, err
}

// PromoteInGroup implements Backend.
func (c *Client) PromoteInGroup(ctx context.Context, id, member string) (Group, error) {
	var g Group
	err := c.do(ctx, http.MethodPost, groupPath(id, "promote"), nil, groupMemberRequest{Member: member}, &g)
	return g, err
}

// SendGroup implements Backend.
func (c *Client) SendGroup(ctx context.Context, id, text string) (GroupMessage, error) {
	var m GroupMessage
	err := c.do(ctx, http.MethodPost, groupPath(id, "messages"), nil, sendGroupRequest{Text: text}, &m)
	return m, err
}

// GroupMessages implements Backend.
func (c *Client) GroupMessages(ctx context.Context, id string, skip, limit int) ([]GroupMessage, error) {
	v := url.Values{}
	if skip != 0 {
		v.Set("skip", strconv.Itoa(skip))
	}
	if limit != 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	var ms []GroupMessage
	err := c.do(ctx, http.MethodGet, groupPath(id, "messages"), v, nil, &ms)
	return ms, err
}

// Subscribe implements Backend. The channel closes when ctx ends or the
// connection to the node is lost.
func (c *Client) Subscribe(ctx context.Context) (<-chan Event, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/events", nil, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("api: event stream has content type %q", ct)
	}
	ch := make(chan Event, EventBuffer)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		readEvents(ctx, resp.Body, ch)
	}()
	return ch, nil
}

// errEventTooLarge reports an event stream line over MaxEventBytes.
var errEventTooLarge = errors.New("api: event too large")

// readEvents parses a server-sent event stream from r and sends each event
// on ch until r ends or ctx is done. Only "data:" fields are used; comments
// and other fields are skipped. It returns what ended the stream.
func readEvents(ctx context.Context, r io.Reader, ch chan<- Event) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxEventBytes)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if len(data) == 0 {
				continue
			}
			var ev Event
			err := json.Unmarshal(data, &ev)
			data = data[:0]
			if err != nil {
				continue // not an event this client understands
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		if string(field) != "data" {
			continue
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if len(data) > 0 {
			data = append(data, '\n')
		}
		if len(data)+len(value) > MaxEventBytes {
			return errEventTooLarge
		}
		data = append(data, value...)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}
