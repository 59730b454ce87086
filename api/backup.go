package api

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/sotto-im/sotto/node"
)

// Backupper is a Backend that can write a backup of the data directory:
// the node's own backend and a Client of a node's control API
// (GET /v1/backup, an application/octet-stream body). It is not part of
// Backend, so that other backends need not implement it.
type Backupper interface {
	// Backup writes a consistent, encrypted backup to w (see node.Backup).
	Backup(ctx context.Context, w io.Writer) error
}

var (
	_ Backupper = (*nodeBackend)(nil)
	_ Backupper = (*Client)(nil)
)

// Backup implements Backupper.
func (b *nodeBackend) Backup(_ context.Context, w io.Writer) error {
	if err := b.n.Backup(w); err != nil {
		if errors.Is(err, node.ErrNotEncryptedBackup) {
			return &Error{Code: CodeUnavailable, Message: userText(err)}
		}
		return err
	}
	return nil
}

// Backup implements Backupper.
func (c *Client) Backup(ctx context.Context, w io.Writer) error {
	req, err := c.newRequest(ctx, http.MethodGet, "/v1/backup", nil, nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

// writeTracker records whether a response has started.
type writeTracker struct {
	http.ResponseWriter
	wrote bool
}

func (t *writeTracker) Write(p []byte) (int, error) {
	if !t.wrote {
		t.wrote = true
		t.Header().Set("Content-Type", "application/octet-stream")
		t.Header().Set("X-Content-Type-Options", "nosniff")
	}
	return t.ResponseWriter.Write(p)
}

// handleBackup streams a backup from a backend that can write one. An
// error before the first byte is a JSON error; after it, the connection
// is cut, and the client's copy fails its checksum.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	bk, ok := s.b.(Backupper)
	if !ok {
		writeError(w, &Error{Code: CodeUnavailable, Message: "this backend cannot write backups"})
		return
	}
	t := &writeTracker{ResponseWriter: w}
	if err := bk.Backup(r.Context(), t); err != nil {
		if !t.wrote {
			s.reply(w, r, http.StatusOK, nil, err)
			return
		}
		s.log.Warn("api: backup failed after it started", "err", err)
		panic(http.ErrAbortHandler)
	}
}
