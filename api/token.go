package api

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TokenFile is the name of the TCP listener's bearer token file in the data
// directory.
const TokenFile = "api.token"

// TokenSize is the number of random bytes in a bearer token.
const TokenSize = 32

// maxTokenFileSize bounds what LoadOrCreateToken reads.
const maxTokenFileSize = 1 << 10

// ErrBadToken reports a token file that does not hold a valid token.
var ErrBadToken = errors.New("api: token file is malformed")

// LoadOrCreateToken returns the bearer token stored in dataDir/api.token,
// creating it (32 random bytes, unpadded base64url, file mode 0600) if it
// does not exist. A token file readable by others is narrowed to 0600.
func LoadOrCreateToken(dataDir string) (string, error) {
	if err := ensurePrivateDir(dataDir); err != nil {
		return "", err
	}
	path := filepath.Join(dataDir, TokenFile)
	tok, err := readToken(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return tok, err
	}
	buf := make([]byte, TokenSize)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	tok = base64.RawURLEncoding.EncodeToString(buf)
	tmp, err := os.CreateTemp(dataDir, TokenFile+".tmp*")
	if err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", fmt.Errorf("api: %w", err)
	}
	if _, err := tmp.WriteString(tok + "\n"); err != nil {
		tmp.Close()
		return "", fmt.Errorf("api: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("api: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	// Link rather than rename: if another process created the file in the
	// meantime, keep its token.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readToken(path)
		}
		return "", fmt.Errorf("api: %w", err)
	}
	return tok, nil
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	if fi.Size() > maxTokenFileSize {
		return "", fmt.Errorf("%w: %s is too large", ErrBadToken, path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			return "", fmt.Errorf("api: %w", err)
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileSize))
	if err != nil {
		return "", fmt.Errorf("api: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != TokenSize {
		return "", fmt.Errorf("%w: %s (delete it to create a new token)", ErrBadToken, path)
	}
	return tok, nil
}
