package api

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketName is the control socket's file name in the data directory.
const SocketName = "api.sock"

// MaxSocketPath is the longest socket path used in place. Unix socket
// addresses are limited to 108 bytes on Linux and 104 on the BSDs and
// macOS, including a terminating NUL.
const MaxSocketPath = 100

// probeTimeout bounds the check whether a socket has a listener.
const probeTimeout = time.Second

// Errors about the control socket.
var (
	ErrAlreadyServing = errors.New("api: another process is serving the control socket")
	ErrNoNode         = errors.New("api: no running node")
)

// SocketPath returns the control socket path for a data directory:
// DIR/api.sock. When that path is longer than MaxSocketPath, the socket
// lives instead in a private per-user directory under os.TempDir(),
// "sotto-UID/", named by a hash of the absolute data directory path, so
// that server and client agree on it without configuration.
func SocketPath(dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("api: socket path: %w", err)
	}
	p := filepath.Join(abs, SocketName)
	if len(p) <= MaxSocketPath {
		return p, nil
	}
	sum := sha256.Sum256([]byte(abs))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("sotto-%d", os.Getuid()))
	p = filepath.Join(dir, hex.EncodeToString(sum[:12])+".sock")
	if len(p) > MaxSocketPath {
		return "", fmt.Errorf("api: socket path %s is too long; set TMPDIR to a shorter directory", p)
	}
	return p, nil
}

// ensurePrivateDir creates dir with mode 0700 if needed and checks that it
// is a directory owned by this user that nobody else can enter.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("api: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("api: %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return fmt.Errorf("api: %s belongs to another user", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("api: %w", err)
		}
	}
	return nil
}

// ListenUnix listens on the unix socket at path with file mode 0600. A
// socket file that nobody listens on is stale and replaced; if a process
// answers on it, ListenUnix returns ErrAlreadyServing. The listener removes
// the socket file when closed.
func ListenUnix(path string) (net.Listener, error) {
	if err := ensurePrivateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	// The directory is private, so nobody else can connect in the moment
	// before the mode is narrowed.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a socket with no listener.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("api: %s exists and is not a socket; remove it if it is not needed", path)
	}
	if socketAnswers(path) {
		return fmt.Errorf("%w (%s)", ErrAlreadyServing, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("api: removing stale socket: %w", err)
	}
	return nil
}

// socketAnswers reports whether a process accepts connections on path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
