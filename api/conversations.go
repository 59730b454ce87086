package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// ReadMarksFile is the name of the file, in the data directory, where a
// node's backend keeps how far the user has read each conversation.
const ReadMarksFile = "read-marks.json"

// maxReadMarksFile bounds what loading the read marks reads.
const maxReadMarksFile = 4 << 20

// NodeOption configures NodeBackend.
type NodeOption func(*nodeBackend)

// WithReadMarks keeps the read marks (MarkRead) in the file at path, so
// that unread counts survive a restart. Without it they live in memory.
func WithReadMarks(path string) NodeOption {
	return func(b *nodeBackend) { b.marks.path = path }
}

// readMarks maps a contact's account fingerprint (so that a renamed
// contact keeps its mark) to the Seq of the last message read.
type readMarks struct {
	mu     sync.Mutex
	path   string // "" keeps them in memory
	loaded bool
	seq    map[string]uint64
}

// get returns the mark of account.
func (r *readMarks) get(account string) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.load(); err != nil {
		return 0, err
	}
	return r.seq[account], nil
}

// advance moves the mark of account to seq unless it is already further,
// and saves the marks.
func (r *readMarks) advance(account string, seq uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.load(); err != nil {
		return err
	}
	if r.seq[account] >= seq {
		return nil
	}
	r.seq[account] = seq
	return r.save()
}

// load reads the file once. r.mu is held.
func (r *readMarks) load() error {
	if r.loaded {
		return nil
	}
	r.seq = map[string]uint64{}
	if r.path != "" {
		f, err := os.Open(r.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("api: read marks: %w", err)
		default:
			defer f.Close()
			b, err := io.ReadAll(io.LimitReader(f, maxReadMarksFile))
			if err != nil {
				return fmt.Errorf("api: read marks: %w", err)
			}
			if err := json.Unmarshal(b, &r.seq); err != nil {
				return fmt.Errorf("api: read marks in %s are malformed (delete the file to mark everything unread): %w", r.path, err)
			}
		}
	}
	r.loaded = true
	return nil
}

// save writes the file atomically, mode 0600. r.mu is held.
func (r *readMarks) save() error {
	if r.path == "" {
		return nil
	}
	b, err := json.Marshal(r.seq)
	if err != nil {
		return fmt.Errorf("api: read marks: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(r.path), ReadMarksFile+".tmp*")
	if err != nil {
		return fmt.Errorf("api: read marks: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), r.path)
	}
	if err != nil {
		return fmt.Errorf("api: read marks: %w", err)
	}
	return nil
}

// pageFunc returns up to limit messages with Seq greater than after, in
// ascending order.
type pageFunc func(after uint64, limit int) ([]Message, error)

// newestBefore returns the limit newest messages with after < Seq < before,
// in ascending order, from a source that pages only forwards. It reads
// windows of Seq numbers below before, doubling their width until it has
// limit messages or reaches after, so that a dense conversation costs one
// read and a sparse one a few.
func newestBefore(page pageFunc, after, before uint64, limit int) ([]Message, error) {
	var got []Message
	span := uint64(limit)
	for hi := before; hi > after+1 && len(got) < limit; {
		lo := after
		if hi-after > span {
			lo = hi - span
		}
		var chunk []Message
		for cur := lo; ; {
			ms, err := page(cur, MaxMessageLimit)
			if err != nil {
				return nil, err
			}
			full := len(ms) == MaxMessageLimit
			for _, m := range ms {
				if m.Seq >= hi {
					full = false
					break
				}
				chunk = append(chunk, m)
			}
			if !full {
				break
			}
			cur = ms[len(ms)-1].Seq
		}
		got = append(chunk, got...)
		hi = lo + 1 // the window held Seqs lo+1 to hi-1; the next ends at lo
		if span < math.MaxUint64/2 {
			span *= 2
		}
	}
	if len(got) > limit {
		got = got[len(got)-limit:]
	}
	return got, nil
}

// sortConversations puts message requests first, then the conversations
// with the most recent message, then the rest by name.
func sortConversations(cs []Conversation) {
	last := func(c Conversation) uint64 {
		if c.Last == nil {
			return 0
		}
		return c.Last.Seq
	}
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		switch {
		case a.Contact.Request != b.Contact.Request:
			return a.Contact.Request
		case last(a) != last(b):
			return last(a) > last(b)
		}
		return a.Contact.Name < b.Contact.Name
	})
}

// conversations builds the summaries of a backend's contacts from its
// Messages and its read marks.
func conversations(ctx context.Context, contacts []Contact, page func(contact string) pageFunc, marks *readMarks) ([]Conversation, error) {
	out := make([]Conversation, 0, len(contacts))
	for _, c := range contacts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := page(c.Name)
		conv := Conversation{Contact: c}
		last, err := newestBefore(p, 0, math.MaxUint64, 1)
		if err != nil {
			return nil, err
		}
		if len(last) == 1 {
			conv.Last = &last[0]
		}
		if conv.ReadSeq, err = marks.get(c.Account); err != nil {
			return nil, err
		}
		unread, err := p(conv.ReadSeq, MaxUnread)
		if err != nil {
			return nil, err
		}
		for _, m := range unread {
			if m.Direction == DirectionIn {
				conv.Unread++
			}
		}
		out = append(out, conv)
	}
	sortConversations(out)
	return out, nil
}
