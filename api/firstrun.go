package api

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/sotto-im/sotto/node"
)

// Setup is implemented by a Backend that serves a data directory with no
// identity yet: Setup creates it, as `sotto init` does. The server
// answers POST /v1/setup through it; a backend without it already has an
// identity.
type Setup interface {
	Setup(ctx context.Context, name string) (Identity, error)
}

// FirstRun is the Backend of a data directory that holds no identity yet,
// which `sotto run --ui` serves so that the user can create one in the
// browser. Until Setup creates the identity, every other method fails
// with CodeNoIdentity; then, until the node runs and SetBackend hands it
// over, with CodeUnavailable; from then on FirstRun is the node's
// backend.
type FirstRun struct {
	dir        string
	passphrase []byte
	created    chan struct{} // closed once Setup created the identity

	mu      sync.Mutex
	setup   bool    // Setup succeeded
	running Backend // the node's backend, once it runs
}

var (
	_ Backend = (*FirstRun)(nil)
	_ Setup   = (*FirstRun)(nil)
)

// NewFirstRun returns the backend of dataDir, which has no identity yet;
// the identity Setup creates has its keys encrypted under passphrase
// unless it is empty.
func NewFirstRun(dataDir string, passphrase []byte) *FirstRun {
	return &FirstRun{dir: dataDir, passphrase: passphrase, created: make(chan struct{})}
}

// Created is closed once Setup has created the identity: the caller then
// opens and starts the node, and hands its backend to SetBackend.
func (f *FirstRun) Created() <-chan struct{} { return f.created }

// SetBackend makes b, the running node's backend, serve every request
// from now on.
func (f *FirstRun) SetBackend(b Backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = b
}

// Setup creates the identity named name in the data directory (account
// key, device key, prekeys), once. It fails with CodeIdentityExists when
// the directory has one already, and with CodeBadRequest for a name the
// node refuses.
func (f *FirstRun) Setup(ctx context.Context, name string) (Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.setup {
		return Identity{}, errIdentityExists
	}
	id, err := node.Init(f.dir, name, f.passphrase)
	if errors.Is(err, node.ErrAlreadyInitialised) {
		// Made meanwhile by another command (`sotto init`): the node can
		// start on it all the same.
		f.setup = true
		close(f.created)
		return Identity{}, errIdentityExists
	}
	if errors.Is(err, node.ErrInvalidName) {
		// The store's message speaks of contacts' names; this is the
		// user's own.
		return Identity{}, BadRequest("%s", strings.Replace(userText(err), "invalid contact name", "invalid name", 1))
	}
	if err != nil {
		return Identity{}, nodeError(err)
	}
	f.setup = true
	close(f.created)
	return Identity{PeerID: id.PeerID, Account: node.Fingerprint(id.Account), Name: id.Name, Addrs: []string{}}, nil
}

// errIdentityExists answers a setup on a data directory that has an
// identity.
var errIdentityExists = &Error{Code: CodeIdentityExists,
	Message: "this node already has an identity; a data directory holds one (use another --data for a second)"}

// backend is the node's backend, or the error that says why there is none.
func (f *FirstRun) backend() (Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.running != nil:
		return f.running, nil
	case f.setup:
		return nil, &Error{Code: CodeUnavailable, Message: "the node is starting with its new identity; try again in a moment"}
	}
	return nil, &Error{Code: CodeNoIdentity,
		Message: "this node has no identity yet: create one first (POST /v1/setup with a name, the web interface's first screen, or `sotto init`)"}
}

func (f *FirstRun) Status(ctx context.Context) (Status, error) {
	b, err := f.backend()
	if err != nil {
		return Status{}, err
	}
	return b.Status(ctx)
}

func (f *FirstRun) Identity(ctx context.Context) (Identity, error) {
	b, err := f.backend()
	if err != nil {
		return Identity{}, err
	}
	return b.Identity(ctx)
}

func (f *FirstRun) Invite(ctx context.Context) (string, error) {
	b, err := f.backend()
	if err != nil {
		return "", err
	}
	return b.Invite(ctx)
}

func (f *FirstRun) Contacts(ctx context.Context) ([]Contact, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.Contacts(ctx)
}

func (f *FirstRun) AddContact(ctx context.Context, name, invite string) (Contact, error) {
	b, err := f.backend()
	if err != nil {
		return Contact{}, err
	}
	return b.AddContact(ctx, name, invite)
}

func (f *FirstRun) VerifyContact(ctx context.Context, name string, confirm bool) (Verification, error) {
	b, err := f.backend()
	if err != nil {
		return Verification{}, err
	}
	return b.VerifyContact(ctx, name, confirm)
}

func (f *FirstRun) RejectKeyChange(ctx context.Context, name string) (Verification, error) {
	b, err := f.backend()
	if err != nil {
		return Verification{}, err
	}
	return b.RejectKeyChange(ctx, name)
}

func (f *FirstRun) Send(ctx context.Context, contact, text string) (Message, error) {
	b, err := f.backend()
	if err != nil {
		return Message{}, err
	}
	return b.Send(ctx, contact, text)
}

func (f *FirstRun) Messages(ctx context.Context, q MessageQuery) ([]Message, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.Messages(ctx, q)
}

func (f *FirstRun) Conversations(ctx context.Context) ([]Conversation, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.Conversations(ctx)
}

func (f *FirstRun) MarkRead(ctx context.Context, contact string, seq uint64) error {
	b, err := f.backend()
	if err != nil {
		return err
	}
	return b.MarkRead(ctx, contact, seq)
}

func (f *FirstRun) Subscribe(ctx context.Context) (<-chan Event, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.Subscribe(ctx)
}

func (f *FirstRun) Groups(ctx context.Context) ([]Group, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.Groups(ctx)
}

func (f *FirstRun) GroupInfo(ctx context.Context, id string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.GroupInfo(ctx, id)
}

func (f *FirstRun) CreateGroup(ctx context.Context, name string, members []string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.CreateGroup(ctx, name, members)
}

func (f *FirstRun) AddToGroup(ctx context.Context, id string, members []string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.AddToGroup(ctx, id, members)
}

func (f *FirstRun) RemoveFromGroup(ctx context.Context, id, member string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.RemoveFromGroup(ctx, id, member)
}

func (f *FirstRun) LeaveGroup(ctx context.Context, id string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.LeaveGroup(ctx, id)
}

func (f *FirstRun) RenameGroup(ctx context.Context, id, name string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.RenameGroup(ctx, id, name)
}

func (f *FirstRun) PromoteInGroup(ctx context.Context, id, member string) (Group, error) {
	b, err := f.backend()
	if err != nil {
		return Group{}, err
	}
	return b.PromoteInGroup(ctx, id, member)
}

func (f *FirstRun) SendGroup(ctx context.Context, id, text string) (GroupMessage, error) {
	b, err := f.backend()
	if err != nil {
		return GroupMessage{}, err
	}
	return b.SendGroup(ctx, id, text)
}

func (f *FirstRun) GroupMessages(ctx context.Context, id string, skip, limit int) ([]GroupMessage, error) {
	b, err := f.backend()
	if err != nil {
		return nil, err
	}
	return b.GroupMessages(ctx, id, skip, limit)
}
